# Shared helpers of the packaging tests (sourced, not run).
# shellcheck shell=bash

HGW_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HGW_TOOLS_VENV="${HGW_TOOLS_VENV:-$HOME/.cache/hybrid-gateway/venv-tools}"
export PATH="$HOME/.cargo/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

PASSED=0
FAILED=0
FAILED_NAMES=()

# check NAME COMMAND...: run COMMAND, count it as passed (exit 0) or failed.
check() {
  local name="$1"
  shift
  local out rc=0
  out="$("$@" 2>&1)" || rc=$?
  if ((rc == 0)); then
    PASSED=$((PASSED + 1))
    echo "ok   - $name"
  else
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
    echo "FAIL - $name (exit $rc)"
    [[ -z "$out" ]] || printf '%s\n' "$out" | tail -n 20 | sed 's/^/       /'
  fi
}

# contains NEEDLE HAYSTACK: fixed-string search.
contains() { grep -qF -- "$1" <<<"$2"; }
not_contains() { ! grep -qF -- "$1" <<<"$2"; }

summary() {
  echo
  if ((FAILED)); then
    echo "failed checks:"
    printf '  - %s\n' "${FAILED_NAMES[@]}"
  fi
  echo "$PASSED passed, $FAILED failed"
}

log() { echo "== $*"; }

# apt_need PKG...: install the Debian packages whose commands are missing (CI on a fresh
# machine); a no-op when everything is there.
apt_need() {
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# tools_venv: the Python venv with ansible-core, python-hcl2 and PyYAML (pinned), created once.
tools_venv() {
  local req="$HGW_REPO/packaging/tests/requirements-tools.txt"
  local stamp="$HGW_TOOLS_VENV/.requirements.sha256"
  local want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [[ ! -x "$HGW_TOOLS_VENV/bin/python" ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt_need python3-venv
    log "creating $HGW_TOOLS_VENV"
    /usr/bin/python3 -m venv "$HGW_TOOLS_VENV" 2>/dev/null || python3 -m venv "$HGW_TOOLS_VENV"
    "$HGW_TOOLS_VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
    echo "$want" >"$stamp"
  fi
}

# find_packages DIR: sets DEB_BASE/RPM_BASE (lowest version) from a directory of packages.
find_packages() {
  local dir="$1"
  DEB_BASE="$(find "$dir" -maxdepth 1 -name 'hybrid-gateway_*_amd64.deb' | sort -V | head -n1)"
  RPM_BASE="$(find "$dir" -maxdepth 1 -name 'hybrid-gateway-*.x86_64.rpm' | sort -V | head -n1)"
  [[ -n "$DEB_BASE" && -n "$RPM_BASE" ]] || {
    echo "no hybrid-gateway .deb/.rpm (x86_64) in $dir" >&2
    return 1
  }
  DEB_BASE="$(realpath "$DEB_BASE")"
  RPM_BASE="$(realpath "$RPM_BASE")"
}
