#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted snippets for python/bash -c
# Rollout tests: the Ansible playbook (syntax check, then real runs with connection: local
# against this machine: install the built .deb, template and validate the config, idempotence,
# a rejected invalid config, an upgrade) and the SSM Command document (YAML schema,
# bash -n and shellcheck of its script, and a real run of that script against this machine).
# Needs root. Leaves the machine as it found it.
#
#   sudo packaging/ansible/tests/test_ansible.sh
#   HGW_PACKAGES_DIR=target/packages packaging/ansible/tests/test_ansible.sh
#
# Last line: "N passed, M failed".
set -euo pipefail
# shellcheck source=packaging/tests/lib.sh
source "$(dirname "$0")/../../tests/lib.sh"
cd "$HGW_REPO"

[[ $EUID -eq 0 ]] || { echo "run as root (installs the .deb)" >&2; exit 2; }

tmp="$(mktemp -d /tmp/hgw-ansibletest.XXXXXX)"
user_existed=0
getent passwd hybrid-gateway >/dev/null && user_existed=1
group_existed=0
getent group hybrid-gateway >/dev/null && group_existed=1
cleanup() {
  local rc=$?
  set +e
  if dpkg-query -W -f='${Status}' hybrid-gateway 2>/dev/null | grep -q "installed\|config-files"; then
    dpkg -P hybrid-gateway >/dev/null 2>&1
  fi
  rm -rf /etc/hybrid-gateway /var/lib/hybrid-gateway /var/tmp/hybrid-gateway.deb
  if ((!user_existed)) && getent passwd hybrid-gateway >/dev/null; then userdel hybrid-gateway; fi
  if ((!group_existed)) && getent group hybrid-gateway >/dev/null; then groupdel hybrid-gateway; fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT

if dpkg-query -W -f='${Status}' hybrid-gateway 2>/dev/null | grep -q "installed\|config-files"; then
  echo "hybrid-gateway is installed on this machine: not testing over it" >&2
  exit 2
fi
[[ ! -e /etc/hybrid-gateway ]] || { echo "/etc/hybrid-gateway exists: not testing over it" >&2; exit 2; }
[[ ! -e /var/tmp/hybrid-gateway.deb ]] || { echo "/var/tmp/hybrid-gateway.deb exists: not testing over it" >&2; exit 2; }

apt_need shellcheck systemd python3-apt
tools_venv
export PATH="$HGW_TOOLS_VENV/bin:$PATH"
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_LOCALHOST_WARNING=0
export ANSIBLE_LOCAL_TEMP="$tmp/ansible-local" ANSIBLE_REMOTE_TEMP="$tmp/ansible-remote"
export ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3  # the host's python (python3-apt) for the apt module
export ANSIBLE_STDOUT_CALLBACK=default ANSIBLE_CALLBACK_RESULT_FORMAT=yaml

# --- packages ------------------------------------------------------------------------------
if [[ -n "${HGW_PACKAGES_DIR:-}" ]]; then
  find_packages "$HGW_PACKAGES_DIR"
else
  packaging/build.sh --profile "${HGW_PROFILE:-dev}" --out "$tmp/base" >/dev/null
  find_packages "$tmp/base"
fi
base_version="$(dpkg-deb -f "$DEB_BASE" Version)"
IFS=. read -r maj min pat <<<"${base_version%%[-~+]*}"
up_version="$maj.$min.$((pat + 1))"
dpkg-deb --fsys-tarfile "$DEB_BASE" | tar -xO ./usr/bin/hybrid-gateway >"$tmp/hybrid-gateway"
chmod 0755 "$tmp/hybrid-gateway"
packaging/build.sh --binary "$tmp/hybrid-gateway" --version "$up_version" --out "$tmp/up" >/dev/null
DEB_UP="$(find "$tmp/up" -name '*.deb')"

# --- playbook: syntax ------------------------------------------------------------------------
systemd_running=false
[[ -d /run/systemd/system ]] && systemd_running=true
cat >"$tmp/inventory.ini" <<EOF
[hybrid_gateways]
# As root already: no sudo needed (and none may be installed).
localhost ansible_connection=local ansible_become=false
EOF
cat >"$tmp/vars.yml" <<EOF
hybrid_gateway_package_path: $DEB_BASE
hybrid_gateway_package_sha256: $(sha256sum "$DEB_BASE" | cut -d' ' -f1)
# systemd is not PID 1 on the test machines: install and configure, skip restart/wait.
hybrid_gateway_manage_service: $systemd_running
hybrid_gateway_files:
  - path: /etc/hybrid-gateway/eks-ca.pem
    content: "-----BEGIN CERTIFICATE-----\nMIIB (test)\n-----END CERTIFICATE-----\n"
hybrid_gateway_config:
  gateway:
    node_ip: 10.250.3.111
    vpc_cidrs: ["10.250.0.0/16", "100.64.0.0/16"]
    hybrid_pod_cidrs: ["192.168.32.0/23"]
  vxlan:
    vni: 2
    mtu: 0
  kubernetes:
    eks:
      cluster_name: my-cluster
      endpoint: https://0123456789ABCDEF.gr7.us-west-2.eks.amazonaws.com
      ca_file: /etc/hybrid-gateway/eks-ca.pem
  election:
    namespace: hybrid-gateway
    dynamodb:
      table: hybrid-gateway-lock
  aws:
    region: us-west-2
    route_table_tag: hybrid-gateway.io/managed=true
    cleanup_on_shutdown: false
EOF
playbook() { ansible-playbook -i "$tmp/inventory.ini" packaging/ansible/site.yml -e "@$tmp/vars.yml" "$@"; }
recap() { grep -E '^localhost +:' <<<"$1"; }

log "ansible-playbook --syntax-check"
check "site.yml --syntax-check" playbook --syntax-check
check "site.yml rolls out one gateway at a time (serial: 1)" \
  "$HGW_TOOLS_VENV/bin/python" -c 'import yaml,sys; p=yaml.safe_load(open("packaging/ansible/site.yml")); sys.exit(0 if p[0]["serial"]==1 and p[0]["max_fail_percentage"]==0 else 1)'
check "role validates the config with check-config" \
  grep -q 'validate: hybrid-gateway check-config %s' packaging/ansible/roles/hybrid_gateway/tasks/main.yml
check "role waits for 'hybrid-gateway status' until rc == 0" \
  bash -c 'grep -q "command: hybrid-gateway status" "$1" && grep -q "until: hybrid_gateway_status.rc == 0" "$1"' _ packaging/ansible/roles/hybrid_gateway/tasks/main.yml

# --- playbook: real runs on this machine -----------------------------------------------------
log "ansible-playbook (connection: local): install $(basename "$DEB_BASE")"
out="$(playbook 2>&1)" && rc=0 || rc=$?
printf '%s\n' "$out" | tail -n 25 | sed 's/^/       /'
check "first run succeeds" test "$rc" -eq 0
check "first run changed something, failed nothing" bash -c 'grep -Eq "changed=[1-9]" <<<"$1" && grep -q "failed=0" <<<"$1"' _ "$(recap "$out")"
check "package installed ($base_version)" test "$(dpkg-query -W -f='${Status} ${Version}' hybrid-gateway 2>/dev/null)" = "install ok installed $base_version"
check "config.toml 0644 root:root" test "$(stat -c '%a %U:%G' /etc/hybrid-gateway/config.toml 2>/dev/null)" = "644 root:root"
check "templated config has exactly the given values" "$HGW_TOOLS_VENV/bin/python" - "$tmp/vars.yml" <<'PY'
import sys, tomllib, yaml
want = yaml.safe_load(open(sys.argv[1]))["hybrid_gateway_config"]
have = tomllib.load(open("/etc/hybrid-gateway/config.toml", "rb"))
assert have == want, f"{have} != {want}"
PY
check "templated config passes check-config" hybrid-gateway check-config /etc/hybrid-gateway/config.toml
check "extra file written" grep -q "MIIB (test)" /etc/hybrid-gateway/eks-ca.pem
if [[ "$systemd_running" == false ]]; then
  check "restart and wait skipped without systemd" contains "service not managed (hybrid_gateway_manage_service=false)" "$out"
fi

log "second run: idempotent"
out="$(playbook 2>&1)" && rc=0 || rc=$?
check "second run succeeds with changed=0" bash -c '[ "$1" -eq 0 ] && grep -q "changed=0" <<<"$2"' _ "$rc" "$(recap "$out")"

log "invalid config: rejected by validate, old file kept"
cp /etc/hybrid-gateway/config.toml "$tmp/config.before"
out="$(playbook -e '{"hybrid_gateway_config": {"gateway": {"vpc_cidrs": ["10.250.0.0/33"], "hybrid_pod_cidrs": ["192.168.32.0/23"]}}}' 2>&1)" && rc=0 || rc=$?
check "invalid config fails the run" test "$rc" -ne 0
check "failure comes from check-config (names the key)" contains "gateway.vpc_cidrs" "$out"
check "old config untouched" cmp /etc/hybrid-gateway/config.toml "$tmp/config.before"

log "upgrade with the wrong SHA-256: refused, nothing installed"
out="$(playbook -e "hybrid_gateway_package_path=$DEB_UP" 2>&1)" && rc=0 || rc=$?
check "wrong SHA-256 fails the run before installing" \
  bash -c '[ "$1" -ne 0 ] && grep -q "not the expected" <<<"$2" && ! grep -A1 "Install or upgrade the package (apt)" <<<"$2" | grep -q "^changed:"' _ "$rc" "$out"
check "package still $base_version after the refused upgrade" test "$(dpkg-query -W -f='${Version}' hybrid-gateway 2>/dev/null)" = "$base_version"
check "role has no disable_gpg_check" bash -c '! grep -rq disable_gpg_check packaging/ansible/roles packaging/ansible/site.yml'

log "upgrade to $(basename "$DEB_UP") through the playbook"
out="$(playbook -e "hybrid_gateway_package_path=$DEB_UP" -e "hybrid_gateway_package_sha256=$(sha256sum "$DEB_UP" | cut -d' ' -f1)" 2>&1)" && rc=0 || rc=$?
printf '%s\n' "$out" | grep -E 'TASK|changed:|ok:|fatal' | tail -n 30 | sed 's/^/       /'
check "upgrade run succeeds" test "$rc" -eq 0
check "package upgraded to $up_version-1" test "$(dpkg-query -W -f='${Version}' hybrid-gateway 2>/dev/null)" = "$up_version-1"
check "config unchanged by the upgrade" cmp /etc/hybrid-gateway/config.toml "$tmp/config.before"
check "upgrade reported by the package task only" bash -c 'grep -A1 "Install or upgrade the package (apt)" <<<"$1" | grep -q "^changed:" && grep -A1 "Write /etc/hybrid-gateway/config.toml" <<<"$1" | grep -q "^ok:"' _ "$out"

dpkg -P hybrid-gateway >/dev/null
rm -rf /etc/hybrid-gateway /var/lib/hybrid-gateway /var/tmp/hybrid-gateway.deb

# --- SSM document ------------------------------------------------------------------------------
log "SSM document packaging/ssm/hybrid-gateway-upgrade.yaml"
doc=packaging/ssm/hybrid-gateway-upgrade.yaml
check "SSM document: schema 2.2, one aws:runShellScript step, typed parameters" "$HGW_TOOLS_VENV/bin/python" - "$doc" <<'PY'
import re, sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
assert d["schemaVersion"] == "2.2", d["schemaVersion"]
assert d["description"]
steps = d["mainSteps"]
assert [s["action"] for s in steps] == ["aws:runShellScript"], steps
assert steps[0]["precondition"] == {"StringEquals": ["platformType", "Linux"]}
params = d["parameters"]
for name, p in params.items():
    assert p["type"] == "String" and p.get("description"), name
    assert "allowedPattern" in p, f"{name}: no allowedPattern (values are pasted into a shell script)"
    if "default" in p:
        assert re.fullmatch(p["allowedPattern"], p["default"]), f"{name}: default fails its own pattern"
script = "\n".join(steps[0]["inputs"]["runCommand"])
used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", script))
assert used == set(params), f"used {used} vs declared {set(params)}"
PY

# The script with the parameters substituted as SSM does (textually).
render_ssm() {
  "$HGW_TOOLS_VENV/bin/python" - "$doc" "$@" <<'PY'
import re, sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
vals = {k: v.get("default", "") for k, v in d["parameters"].items()}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    assert re.fullmatch(d["parameters"][k]["allowedPattern"], v), f"{k}={v!r} fails allowedPattern"
    vals[k] = v
script = "\n".join(d["mainSteps"][0]["inputs"]["runCommand"])
print(re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: vals[m[1]], script))
PY
}
cfg_b64="$(base64 -w0 "$tmp/config.before")"
base_sha="$(sha256sum "$DEB_BASE" | cut -d' ' -f1)"
render_ssm "PackageUrl=https://example.com/hybrid-gateway_0.1.0-1_amd64.deb" "PackageSha256=$base_sha" "ConfigBase64=$cfg_b64" >"$tmp/ssm.sh"
check "SSM script: bash -n" bash -n "$tmp/ssm.sh"
check "SSM script: shellcheck" shellcheck -s bash "$tmp/ssm.sh"
rejects() { ! render_ssm "$@" >/dev/null 2>&1; }
check "SSM allowedPattern rejects \$( ) in PackageUrl" rejects 'PackageUrl=https://x/$(id).deb'
check "SSM allowedPattern rejects a quote in PackageUrl" rejects "PackageUrl=https://x/a'b.deb"
check "SSM allowedPattern rejects ; in ConfigBase64" rejects 'PackageUrl=https://x/a.deb' 'ConfigBase64=abc;id' 
check "SSM allowedPattern rejects a PackageSha256 that is not 64 hex digits" rejects 'PackageUrl=https://x/a.deb' 'PackageSha256=abc'
check "SSM script verifies the SHA-256 before installing" bash -c 'a=$(grep -n "sha256sum -c" "$1" | head -1 | cut -d: -f1); b=$(grep -n "apt-get install" "$1" | head -1 | cut -d: -f1); [ -n "$a" ] && [ -n "$b" ] && [ "$a" -lt "$b" ]' _ "$tmp/ssm.sh"
check "SSM script validates the config before installing it" bash -c 'a=$(grep -n "check-config" "$1" | head -1 | cut -d: -f1); b=$(grep -n "install -m 0644" "$1" | head -1 | cut -d: -f1); [ -n "$a" ] && [ -n "$b" ] && [ "$a" -lt "$b" ]' _ "$tmp/ssm.sh"

# Real run of the SSM script on this machine: file:// package, config from base64, no systemd.
log "SSM script, real run (file:// package, config, no systemd)"
# A package whose hash is not the one given (the upgrade's file under the base's hash):
# nothing is installed.
render_ssm "PackageUrl=file://$DEB_UP" "PackageSha256=$base_sha" "ConfigBase64=$cfg_b64" "ManageService=auto" >"$tmp/ssm-badsha.sh"
out="$(bash "$tmp/ssm-badsha.sh" 2>&1)" && rc=0 || rc=$?
check "SSM script refuses a package with the wrong SHA-256 (exit != 0, says why)" \
  bash -c '[ "$1" -ne 0 ] && grep -q "is not the expected" <<<"$2"' _ "$rc" "$out"
check "SSM script installed nothing after the hash mismatch" \
  bash -c '! dpkg-query -W -f="\${Status}" hybrid-gateway 2>/dev/null | grep -q "install ok installed"'
render_ssm "PackageUrl=file://$DEB_BASE" "PackageSha256=$base_sha" "ConfigBase64=$cfg_b64" "ManageService=auto" >"$tmp/ssm-local.sh"
out="$(bash "$tmp/ssm-local.sh" 2>&1)" && rc=0 || rc=$?
printf '%s\n' "$out" | tail -n 8 | sed 's/^/       /'
check "SSM script succeeds" test "$rc" -eq 0
check "SSM script installed the package" test "$(dpkg-query -W -f='${Status}' hybrid-gateway 2>/dev/null)" = "install ok installed"
check "SSM script wrote the validated config" cmp /etc/hybrid-gateway/config.toml "$tmp/config.before"
check "SSM script skipped restart/wait without systemd" contains "systemd is not running" "$out"
bad_b64="$(printf '[gateway]\nvpc_cidrs = ["nope"]\nhybrid_pod_cidrs = []\n' | base64 -w0)"
render_ssm "PackageUrl=file://$DEB_BASE" "PackageSha256=$base_sha" "ConfigBase64=$bad_b64" "ManageService=auto" >"$tmp/ssm-bad.sh"
out="$(bash "$tmp/ssm-bad.sh" 2>&1)" && rc=0 || rc=$?
check "SSM script refuses an invalid config (exit != 0)" test "$rc" -ne 0
check "SSM script kept the old config" cmp /etc/hybrid-gateway/config.toml "$tmp/config.before"

summary
((FAILED == 0))
