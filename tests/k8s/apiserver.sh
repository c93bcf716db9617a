#!/usr/bin/env bash
# Real Kubernetes API server (kube-apiserver v1.20.2 + etcd) for hybrid-gateway tests.
#
# No registry reachable from CI ships a kube-apiserver binary, so `build` compiles
# it from Debian bookworm's `kubernetes` source package (full upstream tree with
# vendor/) using Debian's Go 1.19, all without touching the system apt config.
#
# Subcommands:
#   install               apt-get install the host tools `build`/`up` need (root).
#   build                 compile/cache kube-apiserver + kubectl, extract etcd (idempotent).
#   up DIR [BIND_ADDR]    start etcd + kube-apiserver in DIR on free ports (default bind
#                         127.0.0.1), install CRD fixtures + packaging/kubernetes/rbac.yaml,
#                         write DIR/{env,admin.kubeconfig,daemon.kubeconfig}; prints DIR/env.
#   down DIR              stop both processes and remove DIR (safe to repeat).
#   pause DIR | resume DIR
#                         SIGSTOP / SIGCONT kube-apiserver (simulated API outage).
#
# Identities (token auth file DIR/pki/tokens.csv, RBAC authorizer):
#   admin           user `admin`, group `system:masters`           -> DIR/admin.kubeconfig
#   hybrid-gateway  user `hybrid-gateway`, group `hybrid-gateway`  -> DIR/daemon.kubeconfig
#     The shipped RBAC binds the *group* `hybrid-gateway`: in EKS the gateway's IAM
#     role is mapped to that group by an access entry, here the token carries it.
#
# Build fixes applied to the vendored sources (both needed for Go 1.19):
#   - vendor/github.com/modern-go/reflect2 replaced by Debian's 1.0.2 (else the
#     apiserver faults in mapiternext on the first custom-resource create);
#   - OpenAPI type validator: only nil is null (kube-openapi#230); else any ""
#     in a typed CR field is rejected with 422 "must be of type string: null".
#
# DIR/env holds plain KEY=VALUE lines (values shell-quoted); use
# `set -a; . DIR/env; set +a` to export them. Keys: K8S_DIR K8S_API_URL
# K8S_API_HOST K8S_API_PORT K8S_BIND_ADDR K8S_CA_FILE K8S_ADMIN_KUBECONFIG
# K8S_DAEMON_KUBECONFIG K8S_ADMIN_TOKEN K8S_DAEMON_TOKEN K8S_DAEMON_USER
# K8S_DAEMON_GROUP K8S_NAMESPACE K8S_KUBECTL ETCD_URL ETCD_PORT ETCD_PEER_PORT
# ETCD_PID APISERVER_PID. Logs: DIR/etcd.log, DIR/kube-apiserver.log.
# If `up` fails it stops what it started and keeps DIR (logs) for `down`.
#
# Environment:
#   HYBRID_GW_CACHE            cache root (default ~/.cache/hybrid-gateway); binaries in
#                              $HYBRID_GW_CACHE/k8s/bin
#   HYBRID_GW_K8S_KEEP_WORK=1  keep the build tree after a successful build
#   HYBRID_GW_K8S_READY_TIMEOUT seconds to wait for etcd / kube-apiserver (default 90)
set -euo pipefail

readonly K8S_VERSION=v1.20.2
readonly DEBIAN_MIRROR=http://deb.debian.org/debian
readonly DEBIAN_SUITE=bookworm
readonly DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
readonly GO_PKGS=(golang-1.19-go golang-1.19-src etcd-server rsync libpopt0 golang-github-modern-go-reflect2-dev)
readonly DAEMON_USER=hybrid-gateway
readonly DAEMON_GROUP=hybrid-gateway
readonly DAEMON_NAMESPACE=hybrid-gateway
readonly MARKER=.hybrid-gateway-k8s
# Bump when the build recipe changes: cached binaries with another stamp are rebuilt.
readonly BUILD_STAMP="kube-apiserver $K8S_VERSION; go 1.19; reflect2 1.0.2; openapi zero-value fix"

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly REPO_ROOT
readonly CRD_DIR="$REPO_ROOT/tests/fixtures/crds"
readonly RBAC_FILE="$REPO_ROOT/packaging/kubernetes/rbac.yaml"
readonly CACHE_ROOT="${HYBRID_GW_CACHE:-${HOME:?set HOME or HYBRID_GW_CACHE}/.cache/hybrid-gateway}"
readonly K8S_CACHE="$CACHE_ROOT/k8s"
readonly BIN_DIR="$K8S_CACHE/bin"
readonly WORK="$K8S_CACHE/work"
readonly READY_TIMEOUT="${HYBRID_GW_K8S_READY_TIMEOUT:-90}"

log() { printf '[apiserver.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# ---------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------
cmd_install() {
    [[ $(id -u) -eq 0 ]] || die "install must run as root (it uses apt-get install)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update </dev/null
    # (apt, dpkg, tar, gzip, coreutils, findutils are essential and always present.)
    # debian-archive-keyring: verifies the private deb/deb-src lists `build` uses
    # patch/xz-utils: unpack and patch the source tree; make: kubernetes' build entry
    # openssl: certificates, tokens; curl: health probes; python3: free-port picking
    # util-linux: flock. --no-upgrade: never upgrade what the machine already has.
    apt-get install -y --no-install-recommends --no-upgrade \
        ca-certificates curl debian-archive-keyring make openssl patch procps \
        python3 util-linux xz-utils </dev/null
}

# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------
binaries_ok() {
    [[ -f $BIN_DIR/BUILD_STAMP && $(<"$BIN_DIR/BUILD_STAMP") == "$BUILD_STAMP" ]] || return 1
    [[ -x $BIN_DIR/kube-apiserver && -x $BIN_DIR/kubectl && -x $BIN_DIR/etcd ]] || return 1
    "$BIN_DIR/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes $K8S_VERSION" || return 1
    "$BIN_DIR/kubectl" version --client --short 2>/dev/null | grep -q "$K8S_VERSION" || return 1
    "$BIN_DIR/etcd" --version >/dev/null 2>&1 || return 1
    # The client-go election peer (tests/interop.rs) is built from the same tree, which is
    # deleted after the build: a missing or stale peer means building again.
    [[ -x $BIN_DIR/clientgo-peer && -f $BIN_DIR/clientgo-peer.stamp ]] || return 1
    [[ $(<"$BIN_DIR/clientgo-peer.stamp") == $(sha256sum "$REPO_ROOT/tests/k8s/clientgo-peer/main.go" | cut -d' ' -f1) ]] || return 1
}

cmd_build() {
    mkdir -p "$K8S_CACHE"
    # Serialize concurrent builds (parallel CI jobs sharing one cache).
    exec 9>"$K8S_CACHE/build.lock"
    flock 9
    if binaries_ok; then
        log "cached binaries OK in $BIN_DIR"
        return 0
    fi
    local t0=$SECONDS
    for c in apt-get dpkg tar patch make find; do
        command -v "$c" >/dev/null || die "missing '$c'; run '$0 install' first"
    done
    [[ -r $DEBIAN_KEYRING ]] || die "missing $DEBIAN_KEYRING; run '$0 install' first"

    rm -rf "$WORK"
    mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/archives/partial" "$WORK/dl" "$WORK/root" "$WORK/tools"

    # Private apt configuration: only our list, our lists dir, our cache dir.
    cat >"$WORK/apt/sources.list" <<EOF
deb [signed-by=$DEBIAN_KEYRING] $DEBIAN_MIRROR $DEBIAN_SUITE main
deb-src [signed-by=$DEBIAN_KEYRING] $DEBIAN_MIRROR $DEBIAN_SUITE main
EOF
    local apt_opts=(
        -o "Dir::Etc::SourceList=$WORK/apt/sources.list"
        -o "Dir::Etc::SourceParts=/nonexistent"
        -o "Dir::State::Lists=$WORK/apt/lists"
        -o "Dir::Cache::Archives=$WORK/apt/archives"
        -o "Dir::Cache::pkgcache="
        -o "Dir::Cache::srcpkgcache="
        -o "APT::Sandbox::User=root"
        -q
    )
    log "fetching package lists ($DEBIAN_SUITE, private apt state)"
    apt-get "${apt_opts[@]}" update </dev/null >&2
    log "downloading kubernetes source package and ${GO_PKGS[*]}"
    (cd "$WORK/dl" && apt-get "${apt_opts[@]}" source --download-only kubernetes </dev/null >&2)
    (cd "$WORK/dl" && apt-get "${apt_opts[@]}" download "${GO_PKGS[@]}" </dev/null >&2)

    local deb
    for deb in "$WORK"/dl/*.deb; do
        dpkg -x "$deb" "$WORK/root"
    done

    local goroot="$WORK/root/usr/lib/go-1.19"
    [[ -x $goroot/bin/go ]] || die "go toolchain not found in $goroot"
    # golang-1.19-go links GOROOT/src etc. into /usr/share/go-1.19 with absolute
    # symlinks; point them into the private root instead.
    local l tgt
    for l in "$goroot"/*; do
        if [[ -L $l ]]; then
            tgt=$(readlink "$l")
            if [[ $tgt == /* ]]; then
                ln -sfn "$WORK/root$tgt" "$l"
            fi
        fi
    done
    [[ -f $goroot/src/runtime/proc.go ]] || die "go sources not found under $goroot/src"
    "$goroot/bin/go" version >&2

    # rsync is required by kubernetes' build scripts.
    if ! command -v rsync >/dev/null; then
        cat >"$WORK/tools/rsync" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$WORK/root/usr/lib/x86_64-linux-gnu:$WORK/root/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$WORK/root/usr/bin/rsync" "\$@"
EOF
        chmod +x "$WORK/tools/rsync"
        "$WORK/tools/rsync" --version >/dev/null || die "private rsync does not run"
    fi

    log "unpacking source tree"
    local orig src
    orig=$(find "$WORK/dl" -maxdepth 1 -name 'kubernetes_*.orig.tar.gz' | head -n1)
    [[ -n $orig ]] || die "kubernetes orig tarball not downloaded"
    mkdir -p "$WORK/src"
    tar -xzf "$orig" -C "$WORK/src"
    src=$(find "$WORK/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
    [[ -d $src/vendor ]] || die "unexpected source layout in $orig"
    # Apply Debian's patches (security fixes) like dpkg-source -x would.
    tar -xJf "$(find "$WORK/dl" -maxdepth 1 -name 'kubernetes_*.debian.tar.xz' | head -n1)" -C "$src"
    local p
    if [[ -f $src/debian/patches/series ]]; then
        while read -r p _; do
            [[ -z $p || $p == \#* ]] && continue
            log "applying debian patch $p"
            patch -d "$src" -p1 --forward --quiet <"$src/debian/patches/$p" >&2
        done <"$src/debian/patches/series"
    fi

    # Required fix: vendored reflect2 v1.0.1 faults in mapiternext under Go 1.19
    # (apiserver dies on the first custom-resource create). Use Debian's 1.0.2.
    local r2_new="$WORK/root/usr/share/gocode/src/github.com/modern-go/reflect2"
    local r2_vend="$src/vendor/github.com/modern-go/reflect2"
    [[ -d $r2_new && -d $r2_vend ]] || die "reflect2 sources missing"
    find "$r2_vend" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
    find "$r2_new" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
        -exec cp {} "$r2_vend/" \;

    # Required fix: the vendored OpenAPI validators treat every zero value ("" etc.)
    # as null when built with Go >= 1.16, so CRs with an empty string in a typed
    # field get a 422 ("must be of type string: null"). Upstream fix (kube-openapi
    # #230, kubernetes #99804, shipped in 1.21): only a real nil is null.
    local f
    for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go \
        vendor/github.com/go-openapi/validate/type.go; do
        sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$src/$f"
        grep -q 'reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data))' "$src/$f" && die "zero-value fix did not apply to $f"
    done

    log "compiling kube-apiserver + kubectl (several minutes)"
    mkdir -p "$WORK/gocache"
    (
        cd "$src"
        export PATH="$goroot/bin:$WORK/tools:$PATH"
        export GOROOT="$goroot" GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 \
            GOCACHE="$WORK/gocache" \
            KUBE_GIT_VERSION="$K8S_VERSION" KUBE_GIT_TREE_STATE=clean
        nice -n 10 make WHAT="cmd/kube-apiserver cmd/kubectl" </dev/null >&2
    )

    mkdir -p "$BIN_DIR"
    local b
    for b in kube-apiserver kubectl; do
        install -m 0755 "$src/_output/bin/$b" "$BIN_DIR/.$b.tmp"
        mv -f "$BIN_DIR/.$b.tmp" "$BIN_DIR/$b"
    done
    install -m 0755 "$WORK/root/usr/bin/etcd" "$BIN_DIR/.etcd.tmp"
    mv -f "$BIN_DIR/.etcd.tmp" "$BIN_DIR/etcd"
    printf '%s\n' "$BUILD_STAMP" >"$BIN_DIR/BUILD_STAMP"

    # While the tree and its Go are here: the client-go leader-election peer.
    HGW_K8S_TREE="$src" HGW_GOROOT="$goroot" "$REPO_ROOT/tests/k8s/clientgo.sh" build >/dev/null
    binaries_ok || die "built binaries do not run"
    if [[ ${HYBRID_GW_K8S_KEEP_WORK:-0} != 1 ]]; then
        rm -rf "$WORK"
    fi
    log "built in $((SECONDS - t0))s: $("$BIN_DIR/kube-apiserver" --version), etcd $("$BIN_DIR/etcd" --version | head -n1 | awk '{print $3}')"
}

# ---------------------------------------------------------------------------
# up / down / pause / resume
# ---------------------------------------------------------------------------
abs_dir() { (cd "$1" && pwd -P); }

# is_running PIDFILE EXPECT: pid from PIDFILE alive (not zombie) and its
# command line mentions EXPECT (guards against pid reuse). Prints the pid.
is_running() {
    local pidfile=$1 expect=$2 pid state
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$expect" || return 1
    printf '%s\n' "$pid"
}

free_ports() { # free_ports HOST N -> N distinct free TCP ports on HOST
    python3 - "$1" "$2" <<'EOF'
import socket, sys
host, n = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
socks = []
for _ in range(n):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.bind((host, 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_for() { # wait_for WHAT PIDFILE EXPECT LOG CMD...
    local what=$1 pidfile=$2 expect=$3 logf=$4
    shift 4
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ! "$@" >/dev/null 2>&1; do
        if ! is_running "$pidfile" "$expect" >/dev/null; then
            log "$what exited during startup; last log lines:"
            tail -n 30 "$logf" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$what not ready after ${READY_TIMEOUT}s; last log lines:"
            tail -n 30 "$logf" >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

write_kubeconfig() { # write_kubeconfig FILE USER TOKEN SERVER CA_FILE
    local file=$1 user=$2 token=$3 server=$4 ca
    ca=$(base64 -w0 <"$5")
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hybrid-gateway-test
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: $user
  user:
    token: $token
contexts:
- name: $user@hybrid-gateway-test
  context:
    cluster: hybrid-gateway-test
    user: $user
    namespace: $DAEMON_NAMESPACE
current-context: $user@hybrid-gateway-test
EOF
    chmod 0600 "$file"
}

find_kubectl() {
    if [[ -x $BIN_DIR/kubectl ]]; then
        printf '%s\n' "$BIN_DIR/kubectl"
    elif command -v kubectl >/dev/null; then
        command -v kubectl
    else
        return 1
    fi
}

cmd_up() {
    [[ $# -ge 1 && $# -le 2 ]] || usage
    local bind=${2:-127.0.0.1}
    local etcd_bin=$BIN_DIR/etcd apiserver_bin=$BIN_DIR/kube-apiserver kubectl
    [[ -x $etcd_bin && -x $apiserver_bin ]] || die "binaries missing in $BIN_DIR; run '$0 build' first"
    kubectl=$(find_kubectl) || die "no kubectl in $BIN_DIR or PATH; run '$0 build' first"
    for c in openssl curl python3 base64; do
        command -v "$c" >/dev/null || die "missing '$c'; run '$0 install' first"
    done
    [[ -f $RBAC_FILE ]] || die "missing $RBAC_FILE"
    [[ -d $CRD_DIR ]] || die "missing $CRD_DIR"

    mkdir -p "$1"
    local dir
    dir=$(abs_dir "$1")
    if [[ -e $dir/$MARKER ]]; then
        if is_running "$dir/etcd.pid" "$dir" >/dev/null || is_running "$dir/kube-apiserver.pid" "$dir" >/dev/null; then
            die "$dir is already up; run '$0 down $dir' first"
        fi
    elif [[ -n $(ls -A "$dir") ]]; then
        die "$dir is not empty and was not created by '$0 up'"
    fi
    : >"$dir/$MARKER"
    # On any failure stop what was started; DIR (logs) stays until `down DIR`.
    # shellcheck disable=SC2064 # expand $dir now
    trap "up_failed $(printf '%q' "$dir")" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local t0=$SECONDS

    # Hosts: the URL host must be connectable; a wildcard bind is reached via loopback.
    local host=$bind advertise=$bind
    case $bind in
        0.0.0.0) host=127.0.0.1 advertise= ;;
        ::) host=::1 advertise= ;;
    esac
    local urlhost=$host
    [[ $host == *:* ]] && urlhost="[$host]"

    local ports etcd_port etcd_peer_port api_port
    ports=$(free_ports "$bind" 3) || die "cannot bind to $bind"
    read -r etcd_port etcd_peer_port api_port <<<"$ports"

    # --- PKI: CA, serving cert, service-account keys, tokens ------------------
    local pki=$dir/pki
    mkdir -p "$pki"
    chmod 0700 "$pki"
    local sans="IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    [[ $host != 127.0.0.1 ]] && sans="$sans,IP:$host"
    [[ -n $advertise && $advertise != "$host" ]] && sans="$sans,IP:$advertise"
    (
        cd "$pki"
        openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -keyout ca.key -out ca.crt -days 3650 -subj "/CN=hybrid-gateway-test-ca" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
        cat >apiserver.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=$sans
EOF
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key \
            -set_serial "0x$(openssl rand -hex 16)" -days 3650 \
            -extfile apiserver.ext -out apiserver.crt 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    )
    local admin_token daemon_token
    admin_token=$(openssl rand -hex 24)
    daemon_token=$(openssl rand -hex 24)
    # token,user,uid,"group1,group2"
    cat >"$pki/tokens.csv" <<EOF
$admin_token,admin,admin,"system:masters"
$daemon_token,$DAEMON_USER,$DAEMON_USER,"$DAEMON_GROUP"
EOF
    chmod 0600 "$pki"/*

    # --- etcd ------------------------------------------------------------------
    local etcd_url="http://$urlhost:$etcd_port" etcd_peer_url="http://$urlhost:$etcd_peer_port"
    log "starting etcd on $etcd_url"
    "$etcd_bin" \
        --name default \
        --data-dir "$dir/etcd-data" \
        --listen-client-urls "http://$([[ $bind == *:* ]] && echo "[$bind]" || echo "$bind"):$etcd_port" \
        --advertise-client-urls "$etcd_url" \
        --listen-peer-urls "http://$([[ $bind == *:* ]] && echo "[$bind]" || echo "$bind"):$etcd_peer_port" \
        --initial-advertise-peer-urls "$etcd_peer_url" \
        --initial-cluster "default=$etcd_peer_url" \
        --unsafe-no-fsync \
        </dev/null >"$dir/etcd.log" 2>&1 &
    local etcd_pid=$!
    echo "$etcd_pid" >"$dir/etcd.pid"
    wait_for etcd "$dir/etcd.pid" "$dir" "$dir/etcd.log" \
        sh -c "curl -fsS --max-time 2 '$etcd_url/health' | grep -q '\"health\":\"true\"'" \
        || die "etcd failed to start (see $dir/etcd.log)"

    # --- kube-apiserver --------------------------------------------------------
    local api_url="https://$urlhost:$api_port"
    local extra=()
    [[ -n $advertise ]] && extra+=(--advertise-address="$advertise")
    log "starting kube-apiserver on $api_url"
    "$apiserver_bin" \
        --etcd-servers="$etcd_url" \
        --bind-address="$bind" \
        --secure-port="$api_port" \
        --insecure-port=0 \
        "${extra[@]}" \
        --tls-cert-file="$pki/apiserver.crt" \
        --tls-private-key-file="$pki/apiserver.key" \
        --client-ca-file="$pki/ca.crt" \
        --token-auth-file="$pki/tokens.csv" \
        --authorization-mode=RBAC \
        --anonymous-auth=false \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$pki/sa.pub" \
        --service-account-signing-key-file="$pki/sa.key" \
        --api-audiences=https://kubernetes.default.svc \
        --service-cluster-ip-range=10.96.0.0/24 \
        --endpoint-reconciler-type=none \
        --profiling=false \
        </dev/null >"$dir/kube-apiserver.log" 2>&1 &
    local api_pid=$!
    echo "$api_pid" >"$dir/kube-apiserver.pid"
    wait_for kube-apiserver "$dir/kube-apiserver.pid" "$dir" "$dir/kube-apiserver.log" \
        curl -fsS --max-time 2 --cacert "$pki/ca.crt" -H "Authorization: Bearer $admin_token" "$api_url/readyz" \
        || die "kube-apiserver failed to start (see $dir/kube-apiserver.log)"
    log "kube-apiserver ready after $((SECONDS - t0))s"

    write_kubeconfig "$dir/admin.kubeconfig" admin "$admin_token" "$api_url" "$pki/ca.crt"
    write_kubeconfig "$dir/daemon.kubeconfig" "$DAEMON_USER" "$daemon_token" "$api_url" "$pki/ca.crt"

    # --- fixtures: CRDs, namespace, shipped RBAC --------------------------------
    local k=("$kubectl" --kubeconfig "$dir/admin.kubeconfig" --request-timeout=30s)
    "${k[@]}" apply -f "$CRD_DIR" >&2
    local crds
    crds=$(cd "$CRD_DIR" && find . -maxdepth 1 -name '*.yaml' -printf 'crd/%f\n' | sed 's/\.yaml$//' | sort)
    # shellcheck disable=SC2086 # one word per CRD
    "${k[@]}" wait --for=condition=Established --timeout=60s $crds >&2
    "${k[@]}" create namespace "$DAEMON_NAMESPACE" --dry-run=client -o yaml | "${k[@]}" apply -f - >&2
    "${k[@]}" apply -f "$RBAC_FILE" >&2

    # --- env ---------------------------------------------------------------------
    {
        echo "# generated by tests/k8s/apiserver.sh up; load with: set -a; . $dir/env; set +a"
        printf 'K8S_DIR=%q\n' "$dir"
        printf 'K8S_API_URL=%q\n' "$api_url"
        printf 'K8S_API_HOST=%q\n' "$host"
        printf 'K8S_API_PORT=%q\n' "$api_port"
        printf 'K8S_BIND_ADDR=%q\n' "$bind"
        printf 'K8S_CA_FILE=%q\n' "$pki/ca.crt"
        printf 'K8S_ADMIN_KUBECONFIG=%q\n' "$dir/admin.kubeconfig"
        printf 'K8S_DAEMON_KUBECONFIG=%q\n' "$dir/daemon.kubeconfig"
        printf 'K8S_ADMIN_TOKEN=%q\n' "$admin_token"
        printf 'K8S_DAEMON_TOKEN=%q\n' "$daemon_token"
        printf 'K8S_DAEMON_USER=%q\n' "$DAEMON_USER"
        printf 'K8S_DAEMON_GROUP=%q\n' "$DAEMON_GROUP"
        printf 'K8S_NAMESPACE=%q\n' "$DAEMON_NAMESPACE"
        printf 'K8S_KUBECTL=%q\n' "$kubectl"
        printf 'ETCD_URL=%q\n' "$etcd_url"
        printf 'ETCD_PORT=%q\n' "$etcd_port"
        printf 'ETCD_PEER_PORT=%q\n' "$etcd_peer_port"
        printf 'ETCD_PID=%q\n' "$etcd_pid"
        printf 'APISERVER_PID=%q\n' "$api_pid"
    } >"$dir/env.tmp"
    mv -f "$dir/env.tmp" "$dir/env"
    trap - EXIT INT TERM
    log "up in $((SECONDS - t0))s"
    printf '%s\n' "$dir/env"
}

up_failed() { # EXIT trap of cmd_up
    local rc=$?
    ((rc != 0)) || return 0
    log "up failed; stopping the processes it started (logs kept in $1; '$0 down $1' removes it)"
    stop_pidfile "$1/kube-apiserver.pid" "$1" kube-apiserver || true
    stop_pidfile "$1/etcd.pid" "$1" etcd || true
    exit "$rc"
}

stop_pidfile() { # stop_pidfile PIDFILE EXPECT NAME
    local pidfile=$1 expect=$2 name=$3 pid i
    pid=$(is_running "$pidfile" "$expect") || { rm -f "$pidfile"; return 0; }
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true # a paused process must run to handle SIGTERM
    for ((i = 0; i < 50; i++)); do
        is_running "$pidfile" "$expect" >/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    log "$name did not exit after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        is_running "$pidfile" "$expect" >/dev/null || { rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    die "$name (pid $pid) still running"
}

cmd_down() {
    [[ $# -eq 1 ]] || usage
    [[ -d $1 ]] || return 0
    local dir
    dir=$(abs_dir "$1")
    if [[ ! -e $dir/$MARKER ]]; then
        if [[ -z $(ls -A "$dir") ]]; then
            rmdir "$dir"
            return 0
        fi
        die "$dir was not created by '$0 up'; not removing it"
    fi
    stop_pidfile "$dir/kube-apiserver.pid" "$dir" kube-apiserver
    stop_pidfile "$dir/etcd.pid" "$dir" etcd
    rm -rf "$dir"
}

signal_apiserver() { # signal_apiserver SIG DIR
    local sig=$1 dir pid
    [[ -d $2 ]] || die "$2 does not exist"
    dir=$(abs_dir "$2")
    pid=$(is_running "$dir/kube-apiserver.pid" "$dir") || die "kube-apiserver in $dir is not running"
    kill "-$sig" "$pid"
}

cmd_pause() { [[ $# -eq 1 ]] || usage; signal_apiserver STOP "$1"; }
cmd_resume() { [[ $# -eq 1 ]] || usage; signal_apiserver CONT "$1"; }

main() {
    [[ $# -ge 1 ]] || usage
    local cmd=$1
    shift
    case $cmd in
        install) cmd_install "$@" ;;
        build) cmd_build "$@" ;;
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        pause) cmd_pause "$@" ;;
        resume) cmd_resume "$@" ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
