#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted bash -c bodies
# The .deb under a real systemd: a Debian box booted with systemd-nspawn (systemd 252 as its
# PID 1, see tests/systemd/box.sh), the package installed with dpkg, the daemon run by the
# shipped unit with its shipped hardening, and a "hybrid node" (a VXLAN VTEP as Cilium has
# it) in a network namespace on the other end of the box's veth. Kubernetes is not the
# point here: the daemon runs in its static-nodes mode (a drop-in adds --static-nodes), so
# the box needs no API server, IMDS or EC2.
#
#   sudo tests/systemd/test_systemd.sh                    # packages built from the dev binary
#   HGW_PACKAGES_DIR=DIR tests/systemd/test_systemd.sh    # prebuilt hybrid-gateway_*.deb
#
# Needs root, network access to deb.debian.org the first time (debootstrap; the root file
# system is cached under ~/.cache/hybrid-gateway/systemd-box). Prints one line per assertion
# and `systemd-analyze security` for the unit; last line "N passed, M failed".
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=packaging/tests/lib.sh
source "$here/../../packaging/tests/lib.sh"
# shellcheck source=tests/systemd/box.sh
source "$here/box.sh"
cd "$HGW_REPO"

[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 2; }

# Addresses (inside the box and the node namespace only).
GW_IP=10.99.0.1 NODE_IP=10.99.0.2 NODE2_IP=10.99.0.3
VPC_CIDR=10.250.0.0/16 VPC_SRC=10.250.0.10
POD_CIDR=192.168.32.0/25 POD_IP=192.168.32.10 POD2_CIDR=192.168.33.0/25
DEV=hybrid_vxlan0
NAME="hgwsd$$"
NODE_NS="hgwsd-node-$$"
UNIT=hybrid-gateway.service

tmp="$(mktemp -d /tmp/hgw-systemd.XXXXXX)"
cleanup() {
  local rc=$?
  set +e
  box_halt
  ip netns del "$NODE_NS" 2>/dev/null
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT

box_tools
apt_need iproute2 binutils

# --- packages: the base .deb and an upgrade (same binary, next patch version) -------------
mkdir -p "$tmp/pkg"
if [[ -z "${HGW_PACKAGES_DIR:-}" ]]; then
  # The binary `cargo test` built (same features): no second build (see packaging/build.sh).
  log "packaging/build.sh --profile dev --no-build"
  packaging/build.sh --profile dev --no-build --out "$tmp/base" >/dev/null
  HGW_PACKAGES_DIR="$tmp/base"
fi
base_deb="$(find "$HGW_PACKAGES_DIR" -maxdepth 1 -name 'hybrid-gateway_*_amd64.deb' | sort -V | head -n1)"
[[ -n "$base_deb" ]] || { echo "no hybrid-gateway_*_amd64.deb in $HGW_PACKAGES_DIR" >&2; exit 2; }
cp "$base_deb" "$tmp/pkg/base.deb"
base_version="$(dpkg-deb -f "$base_deb" Version)"
base_upstream="${base_version%-*}"
IFS=. read -r maj min pat <<<"${base_upstream%%[~+]*}"
up_version="$maj.$min.$((pat + 1))"
dpkg-deb --fsys-tarfile "$base_deb" | tar -xO ./usr/bin/hybrid-gateway >"$tmp/hybrid-gateway"
chmod 0755 "$tmp/hybrid-gateway"
packaging/build.sh --binary "$tmp/hybrid-gateway" --version "$up_version" --out "$tmp/up" >/dev/null
cp "$tmp/up/hybrid-gateway_${up_version}-1_amd64.deb" "$tmp/pkg/up.deb"

# --- the configuration the test installs (static-nodes mode, no AWS, no Kubernetes) --------
cat >"$tmp/pkg/config.toml" <<EOF
[gateway]
node_ip = "$GW_IP"
vpc_cidrs = ["$VPC_CIDR"]
hybrid_pod_cidrs = ["192.168.32.0/23"]

[health]
listen = "127.0.0.1:8088"
EOF
cat >"$tmp/pkg/nodes.toml" <<EOF
[[node]]
name = "hybrid-1"
ip = "$NODE_IP"
pod_cidrs = ["$POD_CIDR"]
EOF
cat >"$tmp/pkg/nodes2.toml" <<EOF
[[node]]
name = "hybrid-1"
ip = "$NODE_IP"
pod_cidrs = ["$POD_CIDR"]

[[node]]
name = "hybrid-2"
ip = "$NODE2_IP"
pod_cidrs = ["$POD2_CIDR"]
EOF
# Only ExecStart changes; everything else (user, capabilities, sandbox) is the shipped unit.
cat >"$tmp/pkg/static.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/usr/bin/hybrid-gateway run --config /etc/hybrid-gateway/config.toml --static-nodes /etc/hybrid-gateway/nodes.toml
EOF

# --- boot ----------------------------------------------------------------------------------
log "booting the box"
box_boot "$NAME" "$tmp/pkg"
# `check` runs its commands in child shells: they need `box` and the box's PID.
export BOX_PID
export -f box

# The hybrid node: the host end of the box's veth, moved into a namespace of its own, with a
# VXLAN VTEP whose MAC is the per-node MAC the gateway uses (Cilium's datapath ignores the
# inner MAC; a Linux VXLAN device drops frames for another MAC).
ip netns add "$NODE_NS"
ip link set "ve-$NAME" netns "$NODE_NS"
nsn() { ip netns exec "$NODE_NS" "$@"; }
nsn ip link set lo up
nsn ip addr add "$NODE_IP/24" dev "ve-$NAME"
nsn ip link set "ve-$NAME" up
box ip addr add "$GW_IP/24" dev host0
box ip link set host0 up
# The VPC-side source of the pings (a VPC address on the gateway itself).
box ip addr add "$VPC_SRC/32" dev lo
gw_mac="$("$tmp/hybrid-gateway" vtep-mac "$GW_IP")"
node_mac="$(printf '02:00:%02x:%02x:%02x:%02x' ${NODE_IP//./ })"
nsn ip link add vx type vxlan id 2 dstport 8472 local "$NODE_IP" nolearning
nsn ip link set vx address "$node_mac" up
nsn ip addr add "$POD_IP/32" dev lo
nsn ip route add "$VPC_CIDR" via "$GW_IP" dev vx onlink
nsn ip neigh replace "$GW_IP" lladdr "$gw_mac" dev vx nud permanent
nsn bridge fdb append "$gw_mac" dev vx dst "$GW_IP" self permanent

# Inputs the daemon must change (proves it wrote the sysctl itself).
box sysctl -qw net.ipv4.ip_forward=0

# --- install ------------------------------------------------------------------------------
log "dpkg -i $(basename "$base_deb") (version $base_version) in the box"
install_out="$(box dpkg -i /mnt/pkg/base.deb 2>&1)"
check "install: postinst says installed and enabled, not started" \
  contains "installed and enabled, not started" "$install_out"
check "install: unit enabled, not started" \
  bash -c '[[ "$(box systemctl is-enabled hybrid-gateway)" == enabled && "$(box systemctl is-active hybrid-gateway)" == inactive ]]'
check "install: system user hybrid-gateway created (sysusers)" box getent passwd hybrid-gateway

# --- not configured = not running ------------------------------------------------------------
# The shipped config has the required keys commented out: a boot before configuration must
# not call any API, and must not restart-loop (StartLimitIntervalSec=0 would loop forever).
log "systemctl start with the shipped (unconfigured) config"
nc_rc=0
box systemctl start hybrid-gateway >/dev/null 2>&1 || nc_rc=$?
sleep 5
check "not configured: start fails with exit status 78 (EX_CONFIG)" \
  bash -c '[[ '"$nc_rc"' != 0 && "$(box systemctl show -p ExecMainStatus --value hybrid-gateway)" == 78 ]]'
check "not configured: journal says \"not configured: set gateway.vpc_cidrs and gateway.hybrid_pod_cidrs in /etc/hybrid-gateway/config.toml\"" \
  bash -c 'box journalctl -u hybrid-gateway -o cat --no-pager | grep -qF "not configured: set gateway.vpc_cidrs and gateway.hybrid_pod_cidrs in /etc/hybrid-gateway/config.toml"'
check "not configured: no restart loop (failed, NRestarts=0 five seconds later)" \
  bash -c '[[ "$(box systemctl is-active hybrid-gateway)" == failed && "$(box systemctl show -p NRestarts --value hybrid-gateway)" == 0 ]]'
box systemctl reset-failed hybrid-gateway

# --- configure and start --------------------------------------------------------------------
box install -m 0644 /mnt/pkg/config.toml /etc/hybrid-gateway/config.toml
box install -m 0644 /mnt/pkg/nodes.toml /etc/hybrid-gateway/nodes.toml
box mkdir -p /etc/systemd/system/$UNIT.d
box install -m 0644 /mnt/pkg/static.conf /etc/systemd/system/$UNIT.d/static.conf
box systemctl daemon-reload

log "systemctl start"
start_rc=0
box systemctl start hybrid-gateway || start_rc=$?
# Sampled the instant `systemctl start` returned: Type=notify makes it wait for READY=1,
# which the daemon sends only once the device is up and the first node sync is applied.
readyz_now="$(box bash -c 'exec 3<>/dev/tcp/127.0.0.1/8088 && printf "GET /readyz HTTP/1.0\r\n\r\n" >&3 && cat <&3' 2>&1 || true)"
route_now="$(box ip route show "$POD_CIDR" 2>&1 || true)"
check "start: systemctl start succeeded" test "$start_rc" -eq 0
check "start: returned only after READY (active, /readyz 200 and the node route in place at that instant)" \
  bash -c '[[ "$(box systemctl show -p ActiveState --value hybrid-gateway)" == active ]] && grep -q "200 OK" <<<"$1" && grep -q "via '"$NODE_IP"' dev '"$DEV"'" <<<"$2"' _ "$readyz_now" "$route_now"
check "start: journal has READY (\"ready:\") before systemd's \"Started\"" \
  bash -c 'box journalctl -u hybrid-gateway -o cat --no-pager | grep -n -e "^ready:" -e "^Started " | head -n2 | tr "\n" " " | grep -Eq "^[0-9]+:ready:.* [0-9]+:Started "'

status_out="$(box systemctl status hybrid-gateway --no-pager -l 2>&1 || true)"
check "systemctl status shows the daemon's STATUS= line" \
  bash -c 'grep -E "^ +Status: \"" <<<"$1" | grep -q "1 hybrid node"' _ "$status_out"
check "hybrid-gateway status (CLI) exits 0: ready" box hybrid-gateway status
check "hybrid-gateway status --json: ready and reachable" \
  bash -c 'box hybrid-gateway status --json | python3 -c "import json,sys; d=json.load(sys.stdin); assert d[\"ready\"] and d[\"reachable\"], d"'
check "hybrid-gateway --version names the installed version" \
  bash -c '[[ "$(box hybrid-gateway --version)" == "hybrid-gateway $1" ]]' _ "${base_version%-*}"
check "man page and bash completion installed" \
  box test -s /usr/share/man/man8/hybrid-gateway.8.gz -a -s /usr/share/bash-completion/completions/hybrid-gateway

main_pid="$(box systemctl show -p MainPID --value hybrid-gateway)"
check "runs as user hybrid-gateway" bash -c '[[ "$(box ps -o user= -p '"$main_pid"')" == hybrid-gateway ]]'
# CAP_NET_ADMIN is bit 12: 0x1000. Effective, permitted and ambient hold it and nothing else;
# the bounding set too (CapabilityBoundingSet=CAP_NET_ADMIN).
caps="$(box grep -E '^Cap(Eff|Prm|Amb|Bnd):' /proc/"$main_pid"/status)"
check "only CAP_NET_ADMIN: CapEff/CapPrm/CapAmb/CapBnd = 0x1000" \
  bash -c '[[ "$(grep -c "0000000000001000$" <<<"$1")" == 4 ]]' _ "$caps"
check "NoNewPrivileges and seccomp filter active in the running process" \
  bash -c 'box grep -Eq "^NoNewPrivs:\s+1" /proc/'"$main_pid"'/status && box grep -Eq "^Seccomp:\s+2" /proc/'"$main_pid"'/status'
# Half a request, then silence: the health listener closes it at its header-read timeout (5 s)
# instead of holding the connection forever.
check "health listener cuts a slow client (half a request) within 10 s" \
  box timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/8088; printf "GET /healthz HTTP/1.1\r\nHost: x\r\n" >&3; cat <&3 >/dev/null'
limits="$(box cat /proc/"$main_pid"/limits)"
check "LimitCORE=0 and LimitNOFILE=4096 in force (no core with credentials on a watchdog abort)" \
  bash -c 'grep -Eq "^Max core file size +0 +0 " <<<"$1" && grep -Eq "^Max open files +4096 +4096 " <<<"$1"' _ "$limits"
link="$(box ip -d link show "$DEV" 2>&1 || true)"
check "under the hardening it created the VXLAN device (VNI 2, port 8472, local $GW_IP)" \
  bash -c 'grep -q "vxlan id 2 local '"$GW_IP"' .*dstport 8472" <<<"$1"' _ "$link"
check "it programmed the nexthop object and route by it (proto hybrid-gateway), ARP and FDB entry for the node" \
  bash -c 'box ip nexthop show dev '"$DEV"' | grep -Eq "^id [0-9]+ via '"$NODE_IP"' dev '"$DEV"' .*onlink" &&
    box ip route show proto 158 | grep -Eq "^'"$POD_CIDR"' nhid [0-9]+ via '"$NODE_IP"' dev '"$DEV"' .*onlink" &&
    box ip neigh show dev '"$DEV"' | grep -q "^'"$NODE_IP"' lladdr '"$node_mac"' PERMANENT" &&
    box bridge fdb show dev '"$DEV"' | grep -q "^'"$node_mac"' dst '"$NODE_IP"' self permanent"'
check "it wrote the sysctls (ip_forward 0 -> 1, forwarding on $DEV)" \
  bash -c '[[ "$(box sysctl -n net.ipv4.ip_forward)" == 1 && "$(box sysctl -n net.ipv4.conf.'"$DEV"'.forwarding)" == 1 ]]'
check "packets cross the tunnel: VPC address -> hybrid pod and back (3/3)" \
  box ping -c 3 -i 0.2 -W 1 -I "$VPC_SRC" "$POD_IP"
check "under the hardening it loaded its packet filter (nft table ip hybrid_gateway, node $NODE_IP allowed)" \
  bash -c 'box nft list table ip hybrid_gateway | grep -q "'"$NODE_IP"'"'

journal_json="$(box journalctl -u hybrid-gateway -o json --no-pager 2>&1)"
check "journalctl -u: structured fields (DEVICE, IFINDEX on the device line; TARGET, PRIORITY)" \
  bash -c 'python3 -c "
import json, sys
lines = [json.loads(l) for l in sys.stdin if l.startswith(\"{\")]
dev = [l for l in lines if l.get(\"DEVICE\") == \"'"$DEV"'\" and l.get(\"IFINDEX\") and \"TARGET\" in l and \"PRIORITY\" in l]
sys.exit(0 if dev else 1)
" <<<"$1"' _ "$journal_json"
ifindex="$(box cat /sys/class/net/$DEV/ifindex)"

# --- reload ------------------------------------------------------------------------------
log "systemctl reload (a second hybrid node)"
box install -m 0644 /mnt/pkg/nodes2.toml /etc/hybrid-gateway/nodes.toml
reload_rc=0
box systemctl reload hybrid-gateway || reload_rc=$?
# systemd 252's ExecReload=/bin/kill -HUP is asynchronous: wait for the new route.
wait_for() { # SECONDS COMMAND...
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
check "reload: systemctl reload succeeded (/bin/kill from procps; the .deb depends on it)" \
  bash -c '[[ '"$reload_rc"' == 0 ]] && dpkg-deb -f "$1" Depends | grep -q procps' _ "$base_deb"
check "reload: the new node's route appears, same process" \
  bash -c 'wait_for() { local d=$((SECONDS + $1)); shift; until "$@" >/dev/null 2>&1; do ((SECONDS < d)) || return 1; sleep 0.2; done; }
    wait_for 10 bash -c "box ip route show '"$POD2_CIDR"' | grep -q \"via '"$NODE2_IP"'\"" &&
    [[ "$(box systemctl show -p MainPID --value hybrid-gateway)" == '"$main_pid"' ]]'

# --- watchdog ---------------------------------------------------------------------------------
log "SIGSTOP the daemon: the watchdog (WatchdogSec=10) must kill and restart it"
restarts_before="$(box systemctl show -p NRestarts --value hybrid-gateway)"
box kill -STOP "$main_pid"
wd_ok=0
deadline=$((SECONDS + 40))
while ((SECONDS < deadline)); do
  new_pid="$(box systemctl show -p MainPID --value hybrid-gateway)"
  if [[ "$new_pid" != "$main_pid" && "$new_pid" != 0 && "$(box systemctl is-active hybrid-gateway)" == active ]]; then
    wd_ok=1
    break
  fi
  sleep 0.5
done
check "watchdog: stopped daemon killed and restarted (new MainPID, NRestarts +1, active)" \
  bash -c '(('"$wd_ok"')) && (( $(box systemctl show -p NRestarts --value hybrid-gateway) == '"$restarts_before"' + 1 ))'
check "watchdog: journal says \"Watchdog timeout\"" \
  bash -c 'box journalctl -u hybrid-gateway --no-pager | grep -q "Watchdog timeout"'
check "watchdog: the restarted daemon adopted the device (same ifindex $ifindex)" \
  bash -c '[[ "$(box cat /sys/class/net/'"$DEV"'/ifindex)" == '"$ifindex"' ]] &&
    box journalctl -u hybrid-gateway -o cat --no-pager | grep -q "VXLAN device adopted"'
main_pid="$(box systemctl show -p MainPID --value hybrid-gateway)"

# --- upgrade under traffic ------------------------------------------------------------------
log "upgrade to $up_version while pinging across the tunnel"
box ping -i 0.05 -W 1 -I "$VPC_SRC" "$POD_IP" >"$tmp/ping.log" 2>&1 &
ping_pid=$!
sleep 1
upgrade_out="$(box dpkg -i /mnt/pkg/up.deb 2>&1)" && upgrade_rc=0 || upgrade_rc=$?
sleep 1
box pkill -INT -x ping || true
wait "$ping_pid" 2>/dev/null || true
ping_summary="$(grep -E "packets transmitted" "$tmp/ping.log" || true)"
echo "       upgrade ping: $ping_summary"
check "upgrade: dpkg -i of $up_version succeeded; postinst says restarted" \
  bash -c '[[ '"$upgrade_rc"' == 0 ]] && grep -q "upgraded from '"$base_version"'" <<<"$1"' _ "$upgrade_out"
check "upgrade: try-restart happened (new MainPID, active, version $up_version installed)" \
  bash -c 'p="$(box systemctl show -p MainPID --value hybrid-gateway)"; [[ "$p" != '"$main_pid"' && "$p" != 0 && "$(box systemctl is-active hybrid-gateway)" == active ]] &&
    [[ "$(box dpkg-query -W -f="\${Version}" hybrid-gateway)" == '"$up_version"'-1 ]]'
check "upgrade: no ping lost across the tunnel (0% loss, >= 20 sent)" \
  bash -c 'grep -Eq "^([2-9][0-9]|[0-9]{3,}) packets transmitted, \1 received" <<<"$1"' _ "$ping_summary"
check "upgrade: device kept (same ifindex)" \
  bash -c '[[ "$(box cat /sys/class/net/'"$DEV"'/ifindex)" == '"$ifindex"' ]]'

# --- stop ---------------------------------------------------------------------------------------
log "systemctl stop"
box systemctl stop hybrid-gateway
check "stop: unit inactive (clean exit, not failed)" \
  bash -c '[[ "$(box systemctl is-active hybrid-gateway)" == inactive ]]'
check "stop: device, route and traffic kept (a restart loses nothing)" \
  bash -c '[[ "$(box cat /sys/class/net/'"$DEV"'/ifindex)" == '"$ifindex"' ]] && box ip route show '"$POD_CIDR"' | grep -q via &&
    box ping -c 2 -i 0.2 -W 1 -I '"$VPC_SRC $POD_IP"''

# --- security score ---------------------------------------------------------------------------
security="$(box systemd-analyze security --no-pager hybrid-gateway 2>&1 || true)"
score_line="$(grep -E "Overall exposure level" <<<"$security" || true)"
echo "       systemd-analyze security hybrid-gateway: ${score_line:-<none>}"
check "systemd-analyze security: a score was computed" test -n "$score_line"
if [[ -n "${HGW_SYSTEMD_REPORT:-}" ]]; then
  printf '%s\n' "$security" >"$HGW_SYSTEMD_REPORT"
fi

# --- remove and purge ---------------------------------------------------------------------------
log "start again, then dpkg -r and dpkg -P"
box systemctl start hybrid-gateway
box dpkg -r hybrid-gateway >"$tmp/remove.log" 2>&1 && remove_rc=0 || remove_rc=$?
check "remove: succeeded; the unit is stopped and no longer enabled; binary gone; config kept" \
  bash -c '[[ '"$remove_rc"' == 0 ]] && ! box systemctl is-active -q hybrid-gateway &&
    ! box test -e /usr/bin/hybrid-gateway && ! box test -e /etc/systemd/system/multi-user.target.wants/'"$UNIT"' &&
    box test -f /etc/hybrid-gateway/config.toml'
filter_after_remove=gone
box nft list table ip hybrid_gateway >/dev/null 2>&1 && filter_after_remove=kept
box dpkg -P hybrid-gateway >/dev/null 2>&1 && purge_rc=0 || purge_rc=$?
check "purge: succeeded; /etc/hybrid-gateway and /var/lib/hybrid-gateway removed; systemd forgot the unit" \
  bash -c '[[ '"$purge_rc"' == 0 ]] && ! box test -e /etc/hybrid-gateway/config.toml && ! box test -e /var/lib/hybrid-gateway &&
    ! box systemctl cat '"$UNIT"' >/dev/null 2>&1'
check "remove kept the packet filter; purge deleted it (only our table)" \
  bash -c '[[ "$1" == kept ]] && ! box nft list table ip hybrid_gateway >/dev/null 2>&1' _ "$filter_after_remove"

summary
((FAILED == 0))
