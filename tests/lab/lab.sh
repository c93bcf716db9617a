#!/usr/bin/env bash
# The local lab: a VPC host, a gateway running hybrid-gateway, and a hybrid node with its
# own VXLAN VTEP and a pod address, each in its own network namespace. Packets from the
# VPC host reach the pod only through the gateway's tunnel.
#
#   sudo tests/lab/lab.sh up      build, start, ping once, print what to try
#   sudo tests/lab/lab.sh down    stop the daemon, remove the namespaces
#
# The hybrid nodes come from a static nodes file for now; the Kubernetes API server, the
# AWS emulators and the second gateway join the lab with their issues.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${HGW_LAB_DIR:-/run/hybrid-gateway-lab}
ns_vpc=hgwlab-vpc ns_gw=hgwlab-gw ns_node=hgwlab-node
gw_ip=10.99.0.1 node_ip=10.99.0.2 pod_ip=192.168.32.10

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

down() {
  if [[ -f $state/daemon.pid ]]; then
    kill "$(cat "$state/daemon.pid")" 2>/dev/null || true
  fi
  for ns in $ns_vpc $ns_gw $ns_node; do
    if ip netns list | grep -qw "$ns"; then
      for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
  done
  rm -rf "$state"
}

up() {
  [[ $(id -u) == 0 ]] || { echo "run as root: the lab creates network namespaces" >&2; exit 1; }
  for tool in ip bridge ping; do
    command -v $tool >/dev/null || { echo "missing $tool: apt-get install -y iproute2 iputils-ping" >&2; exit 1; }
  done
  down
  (cd "$repo" && cargo build --quiet)
  bin=${CARGO_TARGET_DIR:-$repo/target}/debug/hybrid-gateway
  mkdir -p "$state"

  for ns in $ns_vpc $ns_gw $ns_node; do ip netns add $ns; nsx $ns ip link set lo up; done
  ip link add e0 netns $ns_vpc type veth peer name e1 netns $ns_gw
  ip link add u0 netns $ns_gw type veth peer name u1 netns $ns_node
  nsx $ns_vpc ip addr add 10.250.0.10/24 dev e0; nsx $ns_vpc ip link set e0 up
  nsx $ns_vpc ip route add 192.168.32.0/23 via 10.250.0.1
  nsx $ns_gw ip addr add 10.250.0.1/24 dev e1; nsx $ns_gw ip link set e1 up
  nsx $ns_gw ip addr add $gw_ip/24 dev u0; nsx $ns_gw ip link set u0 up
  nsx $ns_node ip addr add $node_ip/24 dev u1; nsx $ns_node ip link set u1 up

  # The hybrid node, doing what Cilium does with the gateway's CiliumVTEPConfig entry.
  gw_mac=$("$bin" vtep-mac "$gw_ip")
  node_mac=$(printf '02:00:%02x:%02x:%02x:%02x' ${node_ip//./ })
  nsx $ns_node ip link add vx type vxlan id 2 dstport 8472 local $node_ip nolearning
  nsx $ns_node ip link set vx address "$node_mac" up
  nsx $ns_node ip addr add $pod_ip/32 dev lo
  nsx $ns_node ip route add 10.250.0.0/16 via $gw_ip dev vx onlink src $pod_ip
  nsx $ns_node ip neigh add $gw_ip lladdr "$gw_mac" dev vx nud permanent
  nsx $ns_node bridge fdb add "$gw_mac" dst $gw_ip dev vx self permanent

  cat >"$state/config.toml" <<CONF
[gateway]
node_ip = "$gw_ip"
vpc_cidrs = ["10.250.0.0/16"]
hybrid_pod_cidrs = ["192.168.32.0/23"]
[datapath]
resync_interval = "5s"
CONF
  cat >"$state/nodes.toml" <<NODES
[[node]]
name = "hybrid-node-1"
ip = "$node_ip"
pod_cidrs = ["192.168.32.0/25"]
NODES
  ip netns exec $ns_gw "$bin" run --config "$state/config.toml" --static-nodes "$state/nodes.toml" \
    >"$state/daemon.log" 2>&1 &
  echo $! >"$state/daemon.pid"

  for _ in $(seq 100); do
    nsx $ns_gw ip route show dev hybrid_vxlan0 2>/dev/null | grep -q 192.168.32.0/25 && break
    sleep 0.1
  done
  echo "--- gateway datapath"
  nsx $ns_gw ip route show dev hybrid_vxlan0
  nsx $ns_gw ip route show type unreachable
  nsx $ns_gw ip neigh show dev hybrid_vxlan0
  nsx $ns_gw bridge fdb show dev hybrid_vxlan0
  echo "--- ping VPC host -> hybrid pod $pod_ip through the tunnel"
  nsx $ns_vpc ping -c 3 -i 0.2 -W 2 $pod_ip
  cat <<HELP

The lab is up. Try:
  ip netns exec $ns_vpc ping $pod_ip                 # VPC host -> pod, via the gateway's VXLAN tunnel
  tail -f $state/daemon.log                          # the daemon's log
  \$EDITOR $state/nodes.toml; kill -HUP \$(cat $state/daemon.pid)   # change the hybrid nodes
  kill \$(cat $state/daemon.pid)                      # stop it: the ping keeps working (entries are kept)
  sudo $0 down                                       # remove everything
HELP
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
