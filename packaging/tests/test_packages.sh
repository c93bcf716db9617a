#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted $1 in expected script text and bash -c bodies
# Package tests: build the .deb and .rpm (or take them from $HGW_PACKAGES_DIR), install the
# .deb on this machine with dpkg (install, upgrade twice, remove, purge) and the .rpm with
# rpm (install, upgrade, erase, in a throw-away rpm database), and check files, conffile
# handling, the maintainer scripts' effects on their "systemd is not running" path (this
# machine's case) and lintian. Needs root. Leaves the machine as it found it.
#
#   sudo packaging/tests/test_packages.sh
#   HGW_PACKAGES_DIR=target/packages packaging/tests/test_packages.sh   # prebuilt packages
#   HGW_PROFILE=release ...                                             # default: dev
#
# Last line: "N passed, M failed".
set -euo pipefail
# shellcheck source=packaging/tests/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$HGW_REPO"

[[ $EUID -eq 0 ]] || { echo "run as root (dpkg -i)" >&2; exit 2; }

UNIT=hybrid-gateway.service
WANTS=/etc/systemd/system/multi-user.target.wants/$UNIT
tmp="$(mktemp -d /tmp/hgw-pkgtest.XXXXXX)"
rpmdb="$tmp/rpmdb"
user_existed=0
getent passwd hybrid-gateway >/dev/null && user_existed=1
group_existed=0
getent group hybrid-gateway >/dev/null && group_existed=1

cleanup() {
  local rc=$?
  set +e
  if dpkg-query -W -f='${Status}' hybrid-gateway 2>/dev/null | grep -qv "not-installed"; then
    dpkg -P hybrid-gateway >/dev/null 2>&1
  fi
  if [[ -d "$rpmdb" ]] && rpm -q --dbpath "$rpmdb" hybrid-gateway >/dev/null 2>&1; then
    rpm -e --nodeps --dbpath "$rpmdb" hybrid-gateway >/dev/null 2>&1
  fi
  # What the rpm (no purge) or an interrupted run may leave behind. Preflight made sure none
  # of it existed before.
  rm -rf /etc/hybrid-gateway /var/lib/hybrid-gateway /usr/share/hybrid-gateway \
    /usr/share/doc/hybrid-gateway /usr/share/licenses/hybrid-gateway
  rm -f /usr/bin/hybrid-gateway /usr/lib/systemd/system/$UNIT /usr/lib/sysusers.d/hybrid-gateway.conf \
    /etc/iproute2/rt_protos.d/hybrid-gateway.conf* "$WANTS" /etc/systemd/system/$UNIT
  if ((!user_existed)) && getent passwd hybrid-gateway >/dev/null; then userdel hybrid-gateway; fi
  if ((!group_existed)) && getent group hybrid-gateway >/dev/null; then groupdel hybrid-gateway; fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT

# --- preflight: refuse to touch a machine that has a real installation ----------------------
if dpkg-query -W -f='${Status}' hybrid-gateway 2>/dev/null | grep -q "installed\|config-files"; then
  echo "hybrid-gateway is installed on this machine (dpkg): not testing over it" >&2
  exit 2
fi
for p in /etc/hybrid-gateway /usr/bin/hybrid-gateway /usr/lib/systemd/system/$UNIT /var/lib/hybrid-gateway; do
  [[ ! -e "$p" ]] || { echo "$p exists: not testing over an existing installation" >&2; exit 2; }
done

apt_need rpm lintian systemd iproute2 binutils util-linux

# --- packages ------------------------------------------------------------------------------
cargo_version="$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print([p for p in json.load(sys.stdin)["packages"] if p["name"]=="hybrid-gateway"][0]["version"])')"
profile="${HGW_PROFILE:-dev}"
if [[ -n "${HGW_PACKAGES_DIR:-}" ]]; then
  log "using prebuilt packages from $HGW_PACKAGES_DIR"
  find_packages "$HGW_PACKAGES_DIR"
  cp "$DEB_BASE" "$RPM_BASE" "$tmp/"
else
  log "building packages (profile $profile)"
  packaging/build.sh --profile "$profile" --out "$tmp/base"
  find_packages "$tmp/base"
fi
base_version="$(dpkg-deb -f "$DEB_BASE" Version)"
base_upstream="${base_version%-*}"
# The upgrade: the same binary repackaged with the next patch version (cargo deb
# --deb-version / cargo generate-rpm version override, through build.sh --version).
IFS=. read -r maj min pat <<<"${base_upstream%%[~+]*}"
up_version="$maj.$min.$((pat + 1))"
log "building upgrade packages $up_version from the base package's binary"
dpkg-deb --fsys-tarfile "$DEB_BASE" | tar -xO ./usr/bin/hybrid-gateway >"$tmp/hybrid-gateway"
chmod 0755 "$tmp/hybrid-gateway"
packaging/build.sh --binary "$tmp/hybrid-gateway" --version "$up_version" --out "$tmp/up" >/dev/null
DEB_UP="$(find "$tmp/up" -name '*.deb')"
RPM_UP="$(find "$tmp/up" -name '*.rpm')"
log "base: $DEB_BASE ($base_version)"
log "upgrade: $DEB_UP"

# A third .deb whose packaged default config differs: the real conffile conflict case.
repack="$tmp/repack"
dpkg-deb -R "$DEB_UP" "$repack"
printf '\n# (test: default changed in %s)\n' "$up_version-2" >>"$repack/etc/hybrid-gateway/config.toml"
sed -i "s/^Version: .*/Version: $up_version-2/" "$repack/DEBIAN/control"
DEB_UP2="$tmp/hybrid-gateway_${up_version}-2_amd64.deb"
dpkg-deb --root-owner-group -b "$repack" "$DEB_UP2" >/dev/null
rm -rf "$repack"

# --- the .deb: static checks -----------------------------------------------------------------
log "deb: contents and lintian"
contents="$(dpkg-deb -c "$DEB_BASE")"
for f in ./usr/bin/hybrid-gateway ./usr/lib/systemd/system/$UNIT ./usr/lib/sysusers.d/hybrid-gateway.conf \
  ./etc/hybrid-gateway/config.toml ./etc/iproute2/rt_protos.d/hybrid-gateway.conf \
  ./usr/share/hybrid-gateway/rbac.yaml ./usr/share/hybrid-gateway/rbac-per-az.yaml ./usr/share/doc/hybrid-gateway/README.md \
  ./usr/share/doc/hybrid-gateway/copyright ./usr/share/doc/hybrid-gateway/config.toml.example \
  ./usr/share/doc/hybrid-gateway/sbom.cdx.json ./usr/share/doc/hybrid-gateway/runbook.md \
  ./usr/share/hybrid-gateway/grafana-dashboard.json ./usr/share/hybrid-gateway/alerts.yml \
  ./usr/share/bash-completion/completions/hybrid-gateway ./usr/share/zsh/vendor-completions/_hybrid-gateway \
  ./usr/share/fish/vendor_completions.d/hybrid-gateway.fish ./usr/share/man/man8/hybrid-gateway.8.gz; do
  check "deb contains $f" contains " $f" "$contents"
done
# The SBOM: CycloneDX 1.5, this version, every crate of the binary with purl, licence and
# the SHA-256 Cargo.lock pins; dev-dependencies (tokio's test-util user, etc.) excluded.
dpkg-deb --fsys-tarfile "$DEB_BASE" | tar -xO ./usr/share/doc/hybrid-gateway/sbom.cdx.json >"$tmp/sbom.json"
check "deb SBOM: CycloneDX 1.5 for hybrid-gateway ${base_version%-*}, crates with purl/licence/SHA-256, graph" python3 - "$tmp/sbom.json" "${base_version%-*}" <<'PY'
import json, sys, tomllib
b = json.load(open(sys.argv[1]))
assert b["bomFormat"] == "CycloneDX" and b["specVersion"] == "1.5", b.get("specVersion")
m = b["metadata"]["component"]
assert m["name"] == "hybrid-gateway" and m["version"] == sys.argv[2], m
comps = {c["name"]: c for c in b["components"]}
lock = {p["name"]: p for p in tomllib.load(open("Cargo.lock", "rb"))["package"]}
for name in ("tokio", "rtnetlink", "aws-sdk-ec2", "kube-client", "axum", "hyper"):
    c = comps[name]
    assert c["scope"] == "required" and c["purl"] == f"pkg:cargo/{name}@{c['version']}", c
    assert c["licenses"] and c["hashes"][0]["content"] == lock[name]["checksum"], c
assert all("licenses" in c for c in comps.values()), [n for n, c in comps.items() if "licenses" not in c]
refs = {d["ref"] for d in b["dependencies"]}
assert f"pkg:cargo/hybrid-gateway@{sys.argv[2]}" in refs and len(refs) == len(b["components"]) + 1
PY
for f in packaging/*.json packaging/*.yaml packaging/kubernetes/*.yaml; do
  [[ -e "$f" ]] || continue
  check "deb ships $f as /usr/share/hybrid-gateway/$(basename "$f")" contains " ./usr/share/hybrid-gateway/$(basename "$f")" "$contents"
done
check "deb binary is -rwxr-xr-x 0/0" contains "-rwxr-xr-x 0/0" "$(grep ' ./usr/bin/hybrid-gateway$' <<<"$contents")"
check "deb version is Cargo.toml's ($cargo_version-1)" test "$base_version" = "$cargo_version-1"
check "deb conffiles list config.toml and rt_protos.d" bash -c "dpkg-deb --ctrl-tarfile '$DEB_BASE' | tar -xO ./conffiles | sort | tr '\n' ' ' | grep -qx '/etc/hybrid-gateway/config.toml /etc/iproute2/rt_protos.d/hybrid-gateway.conf '"
check "deb Depends names libc6, systemd, procps (ExecReload's /bin/kill) and nftables (the packet filter)" bash -c "dpkg-deb -f '$DEB_BASE' Depends | grep -q 'libc6' && dpkg-deb -f '$DEB_BASE' Depends | grep -qw systemd && dpkg-deb -f '$DEB_BASE' Depends | grep -qw procps && dpkg-deb -f '$DEB_BASE' Depends | grep -qw nftables"
lintian_out="$(lintian --fail-on error "$DEB_BASE" 2>&1)" && lintian_rc=0 || lintian_rc=$?
printf '%s\n' "$lintian_out" | grep -E '^[EW]:' | sed 's/^/       lintian /' || true
check "lintian: no errors" test "$lintian_rc" -eq 0
check "lintian: no E: tags" not_contains "E: hybrid-gateway" "$lintian_out"

# --- install ---------------------------------------------------------------------------------
log "dpkg -i $(basename "$DEB_BASE")"
out="$(dpkg -i "$DEB_BASE" 2>&1)" && rc=0 || rc=$?
printf '%s\n' "$out" | sed 's/^/       /'
check "dpkg -i succeeds" test "$rc" -eq 0
check "postinst took the no-systemd path" contains "hybrid-gateway: systemd is not running: skipped daemon-reload and try-restart" "$out"
check "dpkg status: installed $base_version" test "$(dpkg-query -W -f='${Status} ${Version}' hybrid-gateway)" = "install ok installed $base_version"
check "/usr/bin/hybrid-gateway 0755 root:root" test "$(stat -c '%a %U:%G' /usr/bin/hybrid-gateway)" = "755 root:root"
check "hybrid-gateway version prints $base_upstream" contains "$base_upstream" "$(/usr/bin/hybrid-gateway version)"
check "unit file 0644 in /usr/lib/systemd/system" test "$(stat -c '%a' /usr/lib/systemd/system/$UNIT)" = 644
check "unit file is the repo's" cmp /usr/lib/systemd/system/$UNIT systemd/$UNIT
check "config.toml 0644 root:root" test "$(stat -c '%a %U:%G' /etc/hybrid-gateway/config.toml)" = "644 root:root"
check "config.toml is a conffile (dpkg-query)" contains "/etc/hybrid-gateway/config.toml" "$(dpkg-query -W -f='${Conffiles}' hybrid-gateway)"
check "rbac.yaml shipped unchanged" cmp /usr/share/hybrid-gateway/rbac.yaml packaging/kubernetes/rbac.yaml
check "rbac-per-az.yaml shipped unchanged" cmp /usr/share/hybrid-gateway/rbac-per-az.yaml packaging/kubernetes/rbac-per-az.yaml
if [[ -f packaging/iam-policy.json ]]; then
  check "iam-policy.json shipped unchanged" cmp /usr/share/hybrid-gateway/iam-policy.json packaging/iam-policy.json
fi
check "copyright points at common-licenses" grep -q /usr/share/common-licenses/Apache-2.0 /usr/share/doc/hybrid-gateway/copyright
check "alert rules shipped unchanged" cmp /usr/share/hybrid-gateway/alerts.yml monitoring/alerts.yml
check "dashboard shipped unchanged" cmp /usr/share/hybrid-gateway/grafana-dashboard.json monitoring/grafana-dashboard.json
# Generated from the installed binary's CLI: they name its subcommands.
check "bash completion knows 'status' and --json" bash -c "grep -q 'status' /usr/share/bash-completion/completions/hybrid-gateway && grep -q -- '--json' /usr/share/bash-completion/completions/hybrid-gateway"
check "man page is section 8 and documents check-config" bash -c "zcat /usr/share/man/man8/hybrid-gateway.8.gz | grep -q '^.TH hybrid-gateway 8' && zcat /usr/share/man/man8/hybrid-gateway.8.gz | grep -q 'check.-config'"
check "rt_protos.d maps 158 to hybrid-gateway" grep -qE '^158[[:space:]]+hybrid-gateway$' /etc/iproute2/rt_protos.d/hybrid-gateway.conf
check "ip knows 'proto hybrid-gateway'" ip route show table all proto hybrid-gateway
check "postinst created system user hybrid-gateway (sysusers)" bash -c 'u=$(getent passwd hybrid-gateway) && [ "$(echo "$u" | cut -d: -f3)" -lt 1000 ] && echo "$u" | grep -q nologin'
# (deb-systemd-helper on Debian 12 writes the /lib spelling; merged /usr makes it the same file.)
check "postinst enabled the unit (multi-user.target.wants)" test "$(readlink -f "$WANTS")" = "$(readlink -f /usr/lib/systemd/system/$UNIT)"
check "service not started (no process)" bash -c '! pgrep -x hybrid-gateway'
# Installed but not configured: the required keys are commented out; exit 78 (no restart loop).
check "installed default is \"not configured\" (check-config exit 78, names the keys)" bash -c \
  'out=$(/usr/bin/hybrid-gateway check-config /etc/hybrid-gateway/config.toml 2>&1); [ $? = 78 ] && grep -qx "not configured: set gateway.vpc_cidrs and gateway.hybrid_pod_cidrs in /etc/hybrid-gateway/config.toml" <<<"$out"'
check "systemd-analyze verify passes on the installed unit" systemd-analyze verify /usr/lib/systemd/system/$UNIT
# The unit's privilege model for real: user hybrid-gateway with only CAP_NET_ADMIN (ambient,
# bounding set) writes a forwarding sysctl and creates a VXLAN device, in a throw-away netns.
check "user hybrid-gateway + CAP_NET_ADMIN only: sysctl write and VXLAN device" \
  unshare --net setpriv --reuid=hybrid-gateway --regid=hybrid-gateway --clear-groups \
  --inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin --bounding-set=-all,+net_admin \
  sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward && ip link add hgwtest0 type vxlan id 2 dstport 8472 && ip link set hgwtest0 up'

# --- operator edit, then upgrade ---------------------------------------------------------------
log "edit the conffile, then dpkg -i --force-confold $(basename "$DEB_UP")"
sed -i 's/^resync_interval = "30s"/resync_interval = "45s"/' /etc/hybrid-gateway/config.toml
sed -i -E 's/^# (vpc_cidrs|hybrid_pod_cidrs) = /\1 = /' /etc/hybrid-gateway/config.toml
echo '# operator edit (test_packages.sh)' >>/etc/hybrid-gateway/config.toml
check "edited config still valid" /usr/bin/hybrid-gateway check-config /etc/hybrid-gateway/config.toml
out="$(dpkg -i --force-confold "$DEB_UP" 2>&1 </dev/null)" && rc=0 || rc=$?
printf '%s\n' "$out" | sed 's/^/       /'
check "upgrade succeeds" test "$rc" -eq 0
check "upgraded to $up_version-1" test "$(dpkg-query -W -f='${Version}' hybrid-gateway)" = "$up_version-1"
check "upgrade postinst took the no-systemd path (no try-restart)" contains "systemd is not running: skipped daemon-reload and try-restart" "$out"
check "operator edit survived the upgrade" grep -qx '# operator edit (test_packages.sh)' /etc/hybrid-gateway/config.toml
check "edited value survived the upgrade" grep -qx 'resync_interval = "45s"' /etc/hybrid-gateway/config.toml
check "unit still enabled after upgrade" test -L "$WANTS"

log "upgrade to a package whose default config changed: dpkg -i --force-confold $(basename "$DEB_UP2")"
out="$(dpkg -i --force-confold "$DEB_UP2" 2>&1 </dev/null)" && rc=0 || rc=$?
printf '%s\n' "$out" | sed 's/^/       /'
check "upgrade with changed default succeeds non-interactively" test "$rc" -eq 0
check "operator edit kept over the changed default" grep -qx '# operator edit (test_packages.sh)' /etc/hybrid-gateway/config.toml
check "new default left as config.toml.dpkg-dist" grep -q "test: default changed" /etc/hybrid-gateway/config.toml.dpkg-dist

# --- remove, purge -----------------------------------------------------------------------------
log "dpkg -r hybrid-gateway"
out="$(dpkg -r hybrid-gateway 2>&1)" && rc=0 || rc=$?
printf '%s\n' "$out" | sed 's/^/       /'
check "dpkg -r succeeds" test "$rc" -eq 0
check "prerm took the no-systemd path (no stop) and disabled" contains "systemd is not running: skipped stop; unit disabled" "$out"
check "postrm took the no-systemd path" contains "systemd is not running: skipped daemon-reload" "$out"
check "unit disabled (wants symlink gone)" test ! -e "$WANTS" -a ! -L "$WANTS"
check "binary and unit removed" test ! -e /usr/bin/hybrid-gateway -a ! -e /usr/lib/systemd/system/$UNIT
check "config kept after remove" grep -qx '# operator edit (test_packages.sh)' /etc/hybrid-gateway/config.toml
check "dpkg status: config-files" contains "config-files" "$(dpkg-query -W -f='${Status}' hybrid-gateway)"

log "dpkg -P hybrid-gateway"
mkdir -p /var/lib/hybrid-gateway
echo "not a conffile" >/etc/hybrid-gateway/eks-ca.pem
out="$(dpkg -P hybrid-gateway 2>&1)" && rc=0 || rc=$?
printf '%s\n' "$out" | sed 's/^/       /'
check "dpkg -P succeeds" test "$rc" -eq 0
check "purge removed /etc/hybrid-gateway (also non-conffiles)" test ! -e /etc/hybrid-gateway
check "purge removed /var/lib/hybrid-gateway" test ! -e /var/lib/hybrid-gateway
check "purge removed the rt_protos.d conffile" test ! -e /etc/iproute2/rt_protos.d/hybrid-gateway.conf
check "purge left no unit mask or symlink" bash -c "! find /etc/systemd/system -name '$UNIT' | grep -q ."
check "package fully gone from dpkg" bash -c "! dpkg-query -W -f='\${Status}' hybrid-gateway 2>/dev/null | grep -q 'installed\|config-files'"

check "system user kept after purge (Debian convention)" getent passwd hybrid-gateway
# The rpm part below must create the user itself.
if ((!user_existed)); then userdel hybrid-gateway; fi
if ((!group_existed)) && getent group hybrid-gateway >/dev/null; then groupdel hybrid-gateway; fi

# --- the .rpm: static checks -------------------------------------------------------------------
log "rpm: contents, %config(noreplace), scriptlets"
rpm_files="$(rpm -qlp "$RPM_BASE" 2>/dev/null)"
for f in /usr/bin/hybrid-gateway /usr/lib/systemd/system/$UNIT /usr/lib/sysusers.d/hybrid-gateway.conf \
  /etc/hybrid-gateway/config.toml /etc/iproute2/rt_protos.d/hybrid-gateway.conf \
  /usr/share/hybrid-gateway/rbac.yaml /usr/share/hybrid-gateway/rbac-per-az.yaml /usr/share/doc/hybrid-gateway/README.md /usr/share/doc/hybrid-gateway/config.toml.example \
  /usr/share/licenses/hybrid-gateway/LICENSE /usr/share/doc/hybrid-gateway/sbom.cdx.json \
  /usr/share/doc/hybrid-gateway/runbook.md /usr/share/hybrid-gateway/grafana-dashboard.json /usr/share/hybrid-gateway/alerts.yml \
  /usr/share/bash-completion/completions/hybrid-gateway /usr/share/zsh/site-functions/_hybrid-gateway \
  /usr/share/fish/vendor_completions.d/hybrid-gateway.fish /usr/share/man/man8/hybrid-gateway.8.gz; do
  check "rpm contains $f" grep -qx "$f" <<<"$rpm_files"
done
for f in packaging/*.json packaging/*.yaml packaging/kubernetes/*.yaml; do
  [[ -e "$f" ]] || continue
  check "rpm ships $f" grep -qx "/usr/share/hybrid-gateway/$(basename "$f")" <<<"$rpm_files"
done
check "rpm -qpc lists config.toml and rt_protos.d" test "$(rpm -qpc "$RPM_BASE" 2>/dev/null | sort | tr '\n' ' ')" = "/etc/hybrid-gateway/config.toml /etc/iproute2/rt_protos.d/hybrid-gateway.conf "
check "config.toml is %config(noreplace)" test "$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$RPM_BASE" 2>/dev/null | grep ' /etc/hybrid-gateway/config.toml$' | cut -d' ' -f1)" = cn
check "rpm version is Cargo.toml's" test "$(rpm -qp --qf '%{VERSION}-%{RELEASE}.%{ARCH}' "$RPM_BASE" 2>/dev/null)" = "$cargo_version-1.x86_64"
check "rpm binary mode 0755" contains "-rwxr-xr-x" "$(rpm -qlvp "$RPM_BASE" 2>/dev/null | grep ' /usr/bin/hybrid-gateway$')"
check "rpm requires systemd" grep -qx systemd <<<"$(rpm -qpR "$RPM_BASE" 2>/dev/null)"
check "rpm requires /usr/bin/kill (ExecReload)" grep -qx /usr/bin/kill <<<"$(rpm -qpR "$RPM_BASE" 2>/dev/null)"
check "rpm requires nftables (the packet filter)" grep -qx nftables <<<"$(rpm -qpR "$RPM_BASE" 2>/dev/null)"
scripts="$(rpm -qp --scripts "$RPM_BASE" 2>/dev/null)"
post="$(sed -n '/^postinstall scriptlet/,/^preuninstall scriptlet/p' <<<"$scripts")"
preun="$(sed -n '/^preuninstall scriptlet/,/^postuninstall scriptlet/p' <<<"$scripts")"
postun="$(sed -n '/^postuninstall scriptlet/,$p' <<<"$scripts")"
check "%post creates the user (sysusers)" contains "systemd-sysusers /usr/lib/sysusers.d/hybrid-gateway.conf" "$post"
check "%post enables on first install only (\$1 -eq 1)" contains 'if [ "$1" -eq 1 ]; then' "$post"
check "%post enables the unit" contains "systemctl --no-reload enable hybrid-gateway.service" "$post"
check "%post never starts the service" bash -c "! grep -v echo <<<\"\$1\" | grep -Eq 'systemctl (--[a-z-]+ )*(start|restart|try-restart|enable --now)'" _ "$post"
check "%post daemon-reloads only under systemd" contains "[ -d /run/systemd/system ]" "$post"
check "%preun stops+disables on removal only (\$1 -eq 0)" bash -c "grep -qF 'if [ \"\$1\" -eq 0 ]; then' <<<\"\$1\" && grep -qF 'disable --now hybrid-gateway.service' <<<\"\$1\"" _ "$preun"
check "%postun try-restarts on upgrade (\$1 -ge 1)" bash -c "grep -qF 'if [ \"\$1\" -ge 1 ]; then' <<<\"\$1\" && grep -qF 'systemctl try-restart hybrid-gateway.service' <<<\"\$1\"" _ "$postun"
check "%postun guarded by /run/systemd/system" contains "[ -d /run/systemd/system ]" "$postun"
for s in post preun postun; do
  check "%$s is valid sh" sh -n <(sed '1d' <<<"${!s}")
done

# --- the .rpm for real: install, upgrade, erase (own rpm database) -----------------------------
log "rpm -i / -U / -e (rpm database in $rpmdb)"
mkdir -p "$rpmdb"
rpm_install() { rpm --dbpath "$rpmdb" --force-debian --nodeps "$@"; }
out="$(rpm_install -i "$RPM_BASE" 2>&1)" && rc=0 || rc=$?
printf '%s\n' "$out" | sed 's/^/       /'
check "rpm -i succeeds" test "$rc" -eq 0
check "%post took the no-systemd path" contains "systemd is not running: skipped daemon-reload (unit enabled for the next boot)" "$out"
check "rpm: unit enabled on first install" test -L "$WANTS"
check "rpm: user exists" getent passwd hybrid-gateway
check "rpm: installed default is \"not configured\" (check-config exit 78)" bash -c \
  '/usr/bin/hybrid-gateway check-config /etc/hybrid-gateway/config.toml >/dev/null 2>&1; [ $? = 78 ]'
echo '# operator edit (rpm)' >>/etc/hybrid-gateway/config.toml
out="$(rpm_install -U "$RPM_UP" 2>&1)" && rc=0 || rc=$?
printf '%s\n' "$out" | sed 's/^/       /'
check "rpm -U succeeds" test "$rc" -eq 0
check "rpm upgraded to $up_version" test "$(rpm -q --dbpath "$rpmdb" --qf '%{VERSION}' hybrid-gateway)" = "$up_version"
check "%postun (upgrade) took the no-systemd path" contains "skipped daemon-reload and try-restart" "$out"
check "rpm: edit kept across upgrade (noreplace)" grep -qx '# operator edit (rpm)' /etc/hybrid-gateway/config.toml
out="$(rpm --dbpath "$rpmdb" --force-debian --nodeps -e hybrid-gateway 2>&1)" && rc=0 || rc=$?
printf '%s\n' "$out" | sed 's/^/       /'
check "rpm -e succeeds" test "$rc" -eq 0
check "%preun (removal) took the no-systemd path" contains "systemd is not running: skipped stop; unit disabled" "$out"
check "rpm: unit disabled on erase" test ! -e "$WANTS" -a ! -L "$WANTS"
check "rpm: binary removed" test ! -e /usr/bin/hybrid-gateway
check "rpm: edited config saved as config.toml.rpmsave" grep -qx '# operator edit (rpm)' /etc/hybrid-gateway/config.toml.rpmsave

summary
((FAILED == 0))
