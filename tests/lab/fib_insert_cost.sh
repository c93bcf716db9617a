#!/usr/bin/env bash
# What the kernel charges for the routes a gateway programs, without the daemon: 5,000
# IPv4 routes through `ip -batch` into a fresh namespace, three ways -
#   1. via 5,000 distinct gateways (one per hybrid node, as the daemon and `ip -batch`
#      baselines program them today);
#   2. via one gateway;
#   3. as 5,000 nexthop objects plus 5,000 routes by `nhid`.
# 1 is several times 2 and 3: the kernel's fib_info hash leaves the gateway out, so every
# route via another hybrid node shares one bucket and each insert walks all the others.
# This is why the cold start against `ip -batch` (benches/vtep_reconcile.rs) is bound by the
# kernel on both sides, and what nexthop objects would change.
#
#   sudo tests/lab/fib_insert_cost.sh [ROUTES=5000]
set -euo pipefail
n=${1:-5000}
ns=hgw-fib-$$
tmp=$(mktemp -d)
trap 'ip netns del "$ns" 2>/dev/null || true; rm -rf "$tmp"' EXIT
fresh() { # each case starts from an empty table in a new namespace
  ip netns del "$ns" 2>/dev/null || true
  ip netns add "$ns"
  ip -n "$ns" link add d0 type veth peer name d1
  ip -n "$ns" link set d0 up
  ip -n "$ns" link set d1 up
  ip -n "$ns" addr add 10.9.0.1/16 dev d0
}
for ((i = 0; i < n; i++)); do
  printf 'route replace 172.%d.%d.0/24 via 10.9.%d.%d dev d0 onlink proto 158\n' $((16 + i / 256)) $((i % 256)) $((i / 250)) $((2 + i % 250))
done >"$tmp/distinct"
for ((i = 0; i < n; i++)); do
  printf 'route replace 173.%d.%d.0/24 via 10.9.0.2 dev d0 onlink proto 158\n' $((16 + i / 256)) $((i % 256))
done >"$tmp/same"
{
  for ((i = 0; i < n; i++)); do
    printf 'nexthop replace id %d via 10.9.%d.%d dev d0 onlink proto 158\n' $((i + 1)) $((i / 250)) $((2 + i % 250))
  done
  for ((i = 0; i < n; i++)); do
    printf 'route replace 174.%d.%d.0/24 nhid %d proto 158\n' $((16 + i / 256)) $((i % 256)) $((i + 1))
  done
} >"$tmp/nexthops"
timed() { # timed LABEL FILE
  local t0 t1
  fresh
  t0=$(date +%s%N)
  ip -n "$ns" -batch "$2"
  t1=$(date +%s%N)
  printf '%-44s %6d ms\n' "$1" $(((t1 - t0) / 1000000))
}
timed "$n routes via $n distinct gateways" "$tmp/distinct"
timed "$n routes via one gateway" "$tmp/same"
timed "$n nexthop objects + $n routes by nhid" "$tmp/nexthops"
# One more case shows the bucket: routes via one gateway, added after the distinct ones.
ip -n "$ns" -batch "$tmp/distinct"
t0=$(date +%s%N)
ip -n "$ns" -batch "$tmp/same"
t1=$(date +%s%N)
printf '%-44s %6d ms\n' "$n routes via one gateway, after case 1's" $(((t1 - t0) / 1000000))
uname -r
