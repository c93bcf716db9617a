# A Debian box booted by systemd-nspawn with systemd as its PID 1, for tests that need a real
# service manager (Type=notify, STATUS=, the watchdog, the unit's hardening, journald, the
# maintainer scripts with systemd running). Sourced, not run; needs root.
#
# The recipe is the one verified in docs (reference/test-peers.md): this machine's PID 1 is
# not systemd, machined and the system bus are absent, so the box is booted with
# --register=no --keep-unit from a cgroup of its own and entered with nsenter.
#
#   box_tools                    apt-get install systemd-container (pinned to the host's systemd
#                                version: a newer one would upgrade the host's systemd) and
#                                debootstrap, when missing
#   box_rootfs                   print the cached root file system (debootstrapped once, ~1 min,
#                                ~220 MB, under $HYBRID_GW_CACHE/systemd-box/)
#   box_boot NAME BIND_DIR       boot an ephemeral copy (--ephemeral: every boot starts from the
#                                cached tree) with BIND_DIR read-only at /mnt/pkg and a veth whose
#                                host end is ve-NAME; sets BOX_PID (PID 1 of the box), BOX_NSPAWN_PID
#                                and waits until systemd reports running or degraded
#   box ARGS...                  run a command inside the box (all its namespaces)
#   box_halt                     clean poweroff (SIGRTMIN+4), wait, remove the cgroups
# shellcheck shell=bash

HYBRID_GW_CACHE="${HYBRID_GW_CACHE:-$HOME/.cache/hybrid-gateway}"
# Bump when the package list or the setup below changes: a rootfs with another stamp is rebuilt.
BOX_STAMP="bookworm minbase; systemd systemd-sysv dbus iproute2 iputils-ping procps adduser nftables; networkd host0; v2"
BOX_DEBIAN_MIRROR="${BOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BOX_PID=""
BOX_NSPAWN_PID=""
BOX_NAME=""
BOX_LOG=""

box_log() { printf '[box] %s\n' "$*" >&2; }

box_tools() {
  local host_version missing=()
  host_version="$(dpkg-query -W -f='${Version}' systemd)"
  [[ "$(dpkg-query -W -f='${Status} ${Version}' systemd-container 2>/dev/null)" == "install ok installed $host_version" ]] ||
    missing+=("systemd-container=$host_version")
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    box_log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

box_rootfs() {
  local dir="$HYBRID_GW_CACHE/systemd-box"
  local root="$dir/rootfs"
  mkdir -p "$dir"
  (
    # One debootstrap at a time; a concurrent caller waits and then finds the cache.
    exec 9>"$dir/.lock"
    flock 9
    if [[ "$(cat "$root/.hgw-box-stamp" 2>/dev/null)" != "$BOX_STAMP" ]]; then
      box_log "debootstrap bookworm into $root (once; about a minute)"
      rm -rf "$root" "$root.tmp"
      debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,iproute2,iputils-ping,procps,adduser,nftables \
        bookworm "$root.tmp" "$BOX_DEBIAN_MIRROR" >"$dir/debootstrap.log" 2>&1 ||
        { tail -n 20 "$dir/debootstrap.log" >&2; exit 1; }
      # host0 (the box's end of the veth) gets its address from the test, not from DHCP:
      # networkd only brings the link up, so network-online.target does not wait for DHCP.
      mkdir -p "$root.tmp/etc/systemd/network"
      printf '[Match]\nName=host0\n\n[Link]\nRequiredForOnline=no\n\n[Network]\nLinkLocalAddressing=no\nIPv6AcceptRA=no\nKeepConfiguration=yes\n' \
        >"$root.tmp/etc/systemd/network/80-host0.network"
      systemctl --root="$root.tmp" enable systemd-networkd >/dev/null 2>&1
      # Nothing on the console to log in to; no getty restarts in the journal.
      systemctl --root="$root.tmp" mask console-getty.service getty@.service >/dev/null 2>&1 || true
      echo hgw-box >"$root.tmp/etc/hostname"
      echo "$BOX_STAMP" >"$root.tmp/.hgw-box-stamp"
      mv "$root.tmp" "$root"
    fi
  ) || return 1
  echo "$root"
}

# Move the calling shell into cgroup CG (both hierarchies when v1 "systemd" is mounted).
_box_cgroup_enter() {
  local cg="$1" d
  for d in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
    [[ -e "$d/cgroup.procs" ]] || continue
    mkdir -p "$d/$cg"
    echo "$BASHPID" >"$d/$cg/cgroup.procs"
  done
}

_box_cgroup_remove() {
  local cg="$1" d
  for d in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
    [[ -d "$d/$cg" ]] || continue
    # Children first (the box's own hierarchy below it).
    find "$d/$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

box_boot() {
  local name="$1" bind="$2" root deadline state
  root="$(box_rootfs)"
  BOX_NAME="$name"
  BOX_LOG="$(mktemp /tmp/hgw-box-console.XXXXXX)"
  (
    _box_cgroup_enter "machine-$name"
    exec systemd-nspawn -D "$root" --ephemeral --machine="$name" --boot --network-veth \
      --register=no --keep-unit --console=read-only --bind-ro="$bind:/mnt/pkg" \
      </dev/null >"$BOX_LOG" 2>&1
  ) &
  BOX_NSPAWN_PID=$!
  deadline=$((SECONDS + 30))
  until BOX_PID="$(pgrep -P "$BOX_NSPAWN_PID" 2>/dev/null | head -n1)" && [[ -n "$BOX_PID" ]] &&
    [[ "$(readlink "/proc/$BOX_PID/exe" 2>/dev/null)" == */systemd ]]; do
    kill -0 "$BOX_NSPAWN_PID" 2>/dev/null || { cat "$BOX_LOG" >&2; box_log "systemd-nspawn exited"; return 1; }
    ((SECONDS < deadline)) || { box_log "no systemd in the box after 30 s"; return 1; }
    sleep 0.1
  done
  # network-online.target waits for carrier on host0: bring the host end up now.
  ip link set "ve-$name" up 2>/dev/null || true
  deadline=$((SECONDS + 60))
  until state="$(box systemctl is-system-running 2>/dev/null)"; [[ "$state" == running || "$state" == degraded ]]; do
    ((SECONDS < deadline)) || { box_log "box not up after 60 s (state: $state)"; box systemctl --failed --no-pager >&2 || true; return 1; }
    sleep 0.2
  done
  box_log "box $name up (PID 1 = $BOX_PID, state $state)"
}

box() {
  nsenter -t "$BOX_PID" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

box_halt() {
  [[ -n "$BOX_NSPAWN_PID" ]] || return 0
  if [[ -n "$BOX_PID" ]] && kill -0 "$BOX_PID" 2>/dev/null; then
    kill -s SIGRTMIN+4 "$BOX_PID" 2>/dev/null || true
  fi
  local deadline=$((SECONDS + 20))
  while kill -0 "$BOX_NSPAWN_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  kill -0 "$BOX_NSPAWN_PID" 2>/dev/null && kill -9 "$BOX_NSPAWN_PID" 2>/dev/null
  wait "$BOX_NSPAWN_PID" 2>/dev/null || true
  _box_cgroup_remove "machine-$BOX_NAME"
  rm -f "$BOX_LOG"
  BOX_NSPAWN_PID="" BOX_PID=""
}
