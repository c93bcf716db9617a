#!/usr/bin/env bash
# Per-AZ failover and handback loss in the lab (`lab.sh up --per-az` first): ICMP echo
# every 50 ms from each AZ's VPC host to the hybrid pod while gw-a's instance is lost
# (`lab.sh cut gw-a`: link down, its daemon cut off) and then returns (daemon restarted,
# link up). Prints, per trial, the echoes lost in AZ a (whose gateway failed: lost × 50 ms is
# the gap) and in AZ b (whose gateway did not), for the failover and for the handback.
#
#   sudo HGW_LAB_DIR=… HGW_LAB_PREFIX=… tests/lab/per_az_trials.sh [TRIALS=10]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
trials=${1:-10}
state=${HGW_LAB_DIR:-/run/hybrid-gateway-lab}
set -a; . "$state/lab.env"; set +a
((PER_AZ)) || { echo "the lab is not in per-AZ mode (lab.sh up --per-az)" >&2; exit 1; }
lab() { "$here/lab.sh" "$@"; }
window=14 # seconds of echoes per phase
# lost NS: echoes lost in a $window s run of 50 ms echoes from namespace NS (in the background)
pings() { # pings OUT_A OUT_B
  ip netns exec "$NS_VPC" ping -n -i 0.05 -W 1 -w "$window" "$POD_IP" >"$1" 2>&1 &
  ip netns exec "$NS_VPC_B" ping -n -i 0.05 -W 1 -w "$window" "$POD_IP" >"$2" 2>&1 &
}
lost() { # lost FILE: transmitted - received
  awk '/packets transmitted/ {print $1 - $4}' "$1"
}
via() { ip -n "$1" route show 192.168.32.0/23 | awk '{print $3}'; }
out=$(mktemp -d)
printf 'trial  failover: lost in AZ a (gap ms)  lost in AZ b   handback: lost in AZ a  lost in AZ b\n'
for ((t = 1; t <= trials; t++)); do
  [[ $(via "$NS_VPC") == "$GW_A_IP" && $(via "$NS_VPC_B") == "$GW_B_IP" ]] \
    || { echo "trial $t: not in steady state (AZ a via $(via "$NS_VPC"), AZ b via $(via "$NS_VPC_B"))" >&2; exit 1; }
  pings "$out/fa" "$out/fb"
  sleep 1
  lab cut gw-a
  wait
  [[ $(via "$NS_VPC") == "$GW_B_IP" ]] || { echo "trial $t: AZ a did not move to gw-b" >&2; exit 1; }
  fa=$(lost "$out/fa") fb=$(lost "$out/fb")
  lab kill gw-a >/dev/null 2>&1 || true
  pings "$out/ha" "$out/hb"
  sleep 1
  lab start gw-a
  wait
  ha=$(lost "$out/ha") hb=$(lost "$out/hb")
  printf '%5d  %9d (%5d ms)            %12d   %22d  %12d\n' "$t" "$fa" $((fa * 50)) "$fb" "$ha" "$hb"
  # The handback must have happened within the window.
  [[ $(via "$NS_VPC") == "$GW_A_IP" ]] || { echo "trial $t: AZ a was not handed back to gw-a" >&2; exit 1; }
done
rm -rf "$out"
