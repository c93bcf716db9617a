#!/usr/bin/env bash
# Builds the client-go leader-election peer (tests/k8s/clientgo-peer/main.go) from the
# vendored client-go (v0.20.2) of the kube-apiserver source tree, offline, in GOPATH mode
# (module mode answers "updates to go.mod needed"), and caches the binary.
#
#   clientgo.sh build   → prints the binary's path
#
# `tests/k8s/apiserver.sh build` builds it while it has the source tree and Go 1.19
# unpacked (and rebuilds when this peer's source changed); called without a tree, this
# script asks apiserver.sh to do so. HGW_K8S_TREE / HGW_GOROOT point at a kept copy.
set -euo pipefail

CACHE_ROOT="${HYBRID_GW_CACHE:-$HOME/.cache/hybrid-gateway}"
WORK="$CACHE_ROOT/k8s/work"
BIN="$CACHE_ROOT/k8s/bin/clientgo-peer"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC="$HERE/clientgo-peer/main.go"

die() { echo "[clientgo.sh] error: $*" >&2; exit 1; }

build() {
    local stamp
    stamp=$(sha256sum "$SRC" | cut -d' ' -f1)
    if [[ -x $BIN && -f $BIN.stamp && $(cat "$BIN.stamp") == "$stamp" ]]; then
        echo "$BIN"; return
    fi
    local tree="${HGW_K8S_TREE:-}" goroot="${HGW_GOROOT:-$WORK/root/usr/lib/go-1.19}"
    [[ -n $tree ]] || tree=$(find "$WORK/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' 2>/dev/null | head -n1)
    if [[ -z $tree && -z ${HGW_K8S_TREE:-} ]]; then
        # No tree (apiserver.sh deletes it after building): its build builds this peer too,
        # and a missing or stale peer makes it build again (once, under its lock).
        "$HERE/apiserver.sh" build >&2
        if [[ -x $BIN && -f $BIN.stamp && $(cat "$BIN.stamp") == "$stamp" ]]; then
            echo "$BIN"; return
        fi
    fi
    [[ -n $tree && -d $tree/vendor/k8s.io/client-go ]] || die "no kubernetes source tree (run HYBRID_GW_K8S_KEEP_WORK=1 tests/k8s/apiserver.sh build, or set HGW_K8S_TREE)"
    [[ -x $goroot/bin/go ]] || die "no Go 1.19 at $goroot (set HGW_GOROOT)"
    [[ -f $tree/vendor/github.com/modern-go/reflect2/go_above_118.go ]] \
        || die "the tree lacks the reflect2 1.0.2 replacement of apiserver.sh"
    # global: the EXIT trap runs after this function returned
    GOPATH_DIR=$(mktemp -d)
    trap 'rm -rf "$GOPATH_DIR"' EXIT
    mkdir -p "$GOPATH_DIR/src/k8s.io" "$tree/cmd/hgw-clientgo-peer"
    ln -s "$tree" "$GOPATH_DIR/src/k8s.io/kubernetes"
    cp "$SRC" "$tree/cmd/hgw-clientgo-peer/main.go"
    mkdir -p "$(dirname "$BIN")"
    (
        cd "$GOPATH_DIR/src/k8s.io/kubernetes"
        GOPATH="$GOPATH_DIR" GO111MODULE=off GOROOT="$goroot" CGO_ENABLED=0 GOFLAGS= \
            GOCACHE="$CACHE_ROOT/k8s/clientgo-gocache" \
            nice -n 10 "$goroot/bin/go" build -o "$BIN.tmp" ./cmd/hgw-clientgo-peer
    )
    mv -f "$BIN.tmp" "$BIN"
    echo "$stamp" >"$BIN.stamp"
    echo "$BIN"
}

case "${1:-}" in
    build) build ;;
    *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
