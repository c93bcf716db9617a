#!/usr/bin/env bash
# Terraform tests. With a terraform (or tofu) binary on PATH: `fmt -check`, and
# `init -backend=false` + `validate` of terraform/examples/basic (which includes the module)
# when the provider registry is reachable - it is not on the test machines, which is
# reported as a skip, not a failure. Always: terraform/tests/test_terraform.py (python-hcl2
# wiring assertions, template rendering checked by `hybrid-gateway check-config`, and - with
# a terraform binary - the variable validations evaluated by terraform itself).
#
#   terraform/tests/test_terraform.sh          # last line: "N passed, M failed"
set -euo pipefail
# shellcheck source=packaging/tests/lib.sh
source "$(dirname "$0")/../../packaging/tests/lib.sh"
cd "$HGW_REPO"

apt_need shellcheck
tools_venv
tmp="$(mktemp -d /tmp/hgw-tftest.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
export TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1 TF_CLI_CONFIG_FILE="$tmp/terraformrc"
: >"$TF_CLI_CONFIG_FILE"

tf="$(command -v terraform || command -v tofu || true)"
if [[ -n "$tf" ]]; then
  log "$("$tf" version | head -n1) at $tf"
  check "terraform fmt -check -recursive terraform/" "$tf" fmt -check -recursive -diff terraform/
  cp -r terraform "$tmp/"
  if "$tf" -chdir="$tmp/terraform/examples/basic" init -backend=false -input=false -no-color >"$tmp/init.log" 2>&1; then
    check "terraform validate (examples/basic + module)" "$tf" -chdir="$tmp/terraform/examples/basic" validate -no-color
  elif grep -Eq "registry.terraform.io|registry.opentofu.org|Failed to query available provider packages|could not connect" "$tmp/init.log"; then
    echo "skip - terraform init/validate: the hashicorp/aws provider cannot be downloaded here ($(grep -Eo 'lookup [^ ]+ on [^:]+:[0-9]+: [a-z ]+|dial tcp[^│]*' "$tmp/init.log" | head -n1 | tr -s ' '))"
  else
    check "terraform init -backend=false" false
    sed 's/^/       /' "$tmp/init.log"
  fi
else
  echo "skip - terraform fmt/init/validate: no terraform or tofu binary on PATH (none is installable from the reachable registries)"
fi

# The daemon binary for check-config on the rendered configs: $HGW_BIN, else cargo's output,
# else the one in the packages under test.
if [[ -z "${HGW_BIN:-}" ]]; then
  target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || true)"
  for b in "$target_dir/debug/hybrid-gateway" "$target_dir/release/hybrid-gateway"; do
    if [[ -n "$target_dir" && -x "$b" ]]; then export HGW_BIN="$b"; break; fi
  done
fi
if [[ -z "${HGW_BIN:-}" && -n "${HGW_PACKAGES_DIR:-}" ]] && find_packages "$HGW_PACKAGES_DIR" 2>/dev/null; then
  dpkg-deb --fsys-tarfile "$DEB_BASE" | tar -xO ./usr/bin/hybrid-gateway >"$tmp/hybrid-gateway"
  chmod 0755 "$tmp/hybrid-gateway"
  export HGW_BIN="$tmp/hybrid-gateway"
fi

log "terraform/tests/test_terraform.py${HGW_BIN:+ (check-config: $HGW_BIN)}"
py_out="$("$HGW_TOOLS_VENV/bin/python" terraform/tests/test_terraform.py 2>&1)" && py_rc=0 || py_rc=$?
printf '%s\n' "$py_out" | sed '$d'
last="$(tail -n1 <<<"$py_out")"
if [[ "$last" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
  PASSED=$((PASSED + BASH_REMATCH[1]))
  FAILED=$((FAILED + BASH_REMATCH[2]))
  ((py_rc == 0 || BASH_REMATCH[2] > 0)) || FAILED=$((FAILED + 1))
else
  echo "test_terraform.py did not finish (exit $py_rc)"
  FAILED=$((FAILED + 1))
fi

summary
((FAILED == 0))
