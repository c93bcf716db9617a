#!/usr/bin/env bash
# shellcheck disable=SC2016 # single-quoted bash -c bodies
# Packaging CI stage: builds the packages once, then runs
#   packaging/tests/test_packages.sh      .deb install/upgrade/remove/purge, .rpm, lintian
#   terraform/tests/test_terraform.sh     Terraform module and example
#   packaging/ansible/tests/test_ansible.sh   Ansible role (real local run) and SSM document
# plus static checks of the packaging scripts. Needs root (dpkg -i); leaves the machine as
# it found it.
#
#   sudo packaging/tests/run_all.sh                       # builds with the dev profile
#   HGW_PROFILE=release packaging/tests/run_all.sh
#   HGW_PACKAGES_DIR=target/packages packaging/tests/run_all.sh   # prebuilt packages
#
# Last line: "N passed, M failed" (the sum over all suites); exit 1 when anything failed.
set -euo pipefail
# shellcheck source=packaging/tests/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$HGW_REPO"

tmp="$(mktemp -d /tmp/hgw-runall.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT

apt_need rpm lintian shellcheck systemd iproute2 binutils util-linux python3-apt

if [[ -z "${HGW_PACKAGES_DIR:-}" ]]; then
  log "packaging/build.sh --profile ${HGW_PROFILE:-dev}"
  packaging/build.sh --profile "${HGW_PROFILE:-dev}" --out "$tmp/packages"
  export HGW_PACKAGES_DIR="$tmp/packages"
fi
find_packages "$HGW_PACKAGES_DIR"
dpkg-deb --fsys-tarfile "$DEB_BASE" | tar -xO ./usr/bin/hybrid-gateway >"$tmp/hybrid-gateway"
chmod 0755 "$tmp/hybrid-gateway"
export HGW_BIN="${HGW_BIN:-$tmp/hybrid-gateway}"

TOTAL_PASSED=0
TOTAL_FAILED=0
SUITES=()
add_suite() { # NAME PASSED FAILED
  TOTAL_PASSED=$((TOTAL_PASSED + $2))
  TOTAL_FAILED=$((TOTAL_FAILED + $3))
  SUITES+=("$(printf '%-42s %4s passed, %s failed' "$1" "$2" "$3")")
}

# --- static checks of the packaging sources --------------------------------------------------
log "static checks"
check "shellcheck: build.sh and the test scripts" shellcheck -x packaging/build.sh packaging/tests/*.sh \
  packaging/ansible/tests/test_ansible.sh terraform/tests/test_terraform.sh tests/systemd/test_systemd.sh tests/systemd/box.sh .ci/run
check "shellcheck: deb maintainer scripts" shellcheck -s sh packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm
check "shellcheck: rpm scriptlets" shellcheck -s sh packaging/rpm/post_install.sh packaging/rpm/pre_uninstall.sh packaging/rpm/post_uninstall.sh
check "deb maintainer scripts carry the #DEBHELPER# token once" \
  bash -c 'for f in packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm; do [ "$(grep -c "#DEBHELPER#" "$f")" = 1 ] || exit 1; done'
# systemd-analyze verify needs ExecStart= to exist: verify a copy pointing at the packaged binary.
mkdir -p "$tmp/unit"
sed "s#^ExecStart=/usr/bin/hybrid-gateway #ExecStart=$HGW_BIN #" systemd/hybrid-gateway.service >"$tmp/unit/hybrid-gateway.service"
check "systemd-analyze verify systemd/hybrid-gateway.service (ExecStart -> packaged binary)" \
  systemd-analyze verify "$tmp/unit/hybrid-gateway.service"
check "unit: no ProtectKernelTunables/PrivateNetwork/ProcSubset (the daemon writes /proc/sys/net)" \
  bash -c '! grep -Eq "^(ProtectKernelTunables|PrivateNetwork|ProcSubset)=" systemd/hybrid-gateway.service'
check "unit: bad config (exit 78) does not restart-loop" grep -qx "RestartPreventExitStatus=78" systemd/hybrid-gateway.service
check "unit: LimitCORE=0 (no core with credentials) and a LimitNOFILE" \
  bash -c 'grep -qx "LimitCORE=0" systemd/hybrid-gateway.service && grep -Eqx "LimitNOFILE=[0-9]+" systemd/hybrid-gateway.service'
check "SBOM generator parses (packaging/sbom.py)" python3 -c "import ast, sys; ast.parse(open(sys.argv[1]).read())" packaging/sbom.py
add_suite "static checks" "$PASSED" "$FAILED"

# --- suites -------------------------------------------------------------------------------------
for suite in packaging/tests/test_packages.sh terraform/tests/test_terraform.sh packaging/ansible/tests/test_ansible.sh; do
  log "$suite"
  "$suite" 2>&1 | tee "$tmp/suite.log" && rc=0 || rc=$?
  last="$(tail -n1 "$tmp/suite.log")"
  if [[ "$last" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    p="${BASH_REMATCH[1]}" f="${BASH_REMATCH[2]}"
    ((rc == 0 || f > 0)) || f=$((f + 1))
  else
    echo "$suite did not finish (exit $rc)"
    p=0 f=1
  fi
  add_suite "$suite" "$p" "$f"
done

echo
echo "== summary"
printf '%s\n' "${SUITES[@]}"
echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed"
((TOTAL_FAILED == 0))
