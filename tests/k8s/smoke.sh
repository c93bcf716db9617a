#!/usr/bin/env bash
# Smoke test for the real-API-server harness (tests/k8s/apiserver.sh) and the
# shipped RBAC (packaging/kubernetes/rbac.yaml):
#   up -> admin creates CiliumNode / CiliumVTEPConfig (+ status subresource) ->
#   daemon identity does what hybrid-gateway needs and is refused the rest ->
#   pause/resume -> down (also on failure, via trap).
# Requires `apiserver.sh build` to have run. Exits non-zero on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
API="$HERE/apiserver.sh"
DIR=$(mktemp -d "${TMPDIR:-/tmp}/hgw-k8s-smoke.XXXXXX")
OUT="$DIR.out"
FAILS=0
PASSES=0

cleanup() {
    "$API" down "$DIR" || echo "smoke: WARNING: down failed" >&2
    rm -f "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pass() { PASSES=$((PASSES + 1)); printf 'ok   %s\n' "$1"; }
fail() { FAILS=$((FAILS + 1)); printf 'FAIL %s\n' "$1" >&2; }

# req TOKEN METHOD PATH [BODY [CONTENT_TYPE]] -> prints HTTP status, body in $OUT
req() {
    local token=$1 method=$2 path=$3 body=${4-} ctype=${5:-application/json}
    local args=(-sS -o "$OUT" -w '%{http_code}' --max-time 20 --cacert "$K8S_CA_FILE"
        -H "Authorization: Bearer $token" -H 'Accept: application/json' -X "$method")
    [[ -n $body ]] && args+=(-H "Content-Type: $ctype" --data-binary "$body")
    curl "${args[@]}" "$K8S_API_URL$path"
}

# expect DESC CODE TOKEN METHOD PATH [BODY [CONTENT_TYPE]]
expect() {
    local desc=$1 want=$2 got
    shift 2
    got=$(req "$@") || got="curl-error"
    if [[ $got == "$want" ]]; then
        pass "$desc ($got)"
    else
        fail "$desc: want HTTP $want, got $got: $(head -c 300 "$OUT" 2>/dev/null | tr '\n' ' ')"
    fi
}

# jcheck DESC PY_EXPR WANT: evaluate PY_EXPR with d = JSON body of the last request
jcheck() {
    local desc=$1 expr=$2 want=$3 got
    got=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$OUT" "$expr" 2>&1) || true
    if [[ $got == "$want" ]]; then
        pass "$desc"
    else
        fail "$desc: $expr = '$got', want '$want'"
    fi
}

jget() { python3 -c 'import json,sys; print(eval(sys.argv[2], {"d": json.load(open(sys.argv[1]))}))' "$OUT" "$1"; }

# --- up --------------------------------------------------------------------------
t0=$SECONDS
ENV_FILE=$("$API" up "$DIR")
echo "smoke: up took $((SECONDS - t0))s, env: $ENV_FILE"
set -a
# shellcheck disable=SC1090
. "$ENV_FILE"
set +a
for v in K8S_API_URL K8S_ADMIN_KUBECONFIG K8S_DAEMON_KUBECONFIG K8S_CA_FILE K8S_ADMIN_TOKEN \
    K8S_DAEMON_TOKEN K8S_KUBECTL ETCD_PID APISERVER_PID; do
    [[ -n ${!v:-} ]] || { fail "env file lacks $v"; exit 1; }
done

ADMIN=$K8S_ADMIN_TOKEN
DAEMON=$K8S_DAEMON_TOKEN
NS=$K8S_NAMESPACE
CN=/apis/cilium.io/v2/ciliumnodes
VT=/apis/cilium.io/v2/ciliumvtepconfigs
LEASES=/apis/coordination.k8s.io/v1/namespaces/$NS/leases
kadmin() { "$K8S_KUBECTL" --kubeconfig "$K8S_ADMIN_KUBECONFIG" "$@"; }
kdaemon() { "$K8S_KUBECTL" --kubeconfig "$K8S_DAEMON_KUBECONFIG" "$@"; }

expect "unknown token is rejected" 401 not-a-token GET /api/v1/namespaces

# --- admin: CiliumNode --------------------------------------------------------------
expect "admin creates CiliumNode" 201 "$ADMIN" POST "$CN" '{
  "apiVersion": "cilium.io/v2", "kind": "CiliumNode",
  "metadata": {"name": "hybrid-node-a"},
  "spec": {
    "addresses": [{"type": "InternalIP", "ip": "10.80.0.10"},
                  {"type": "CiliumInternalIP", "ip": "10.85.0.1"}],
    "ipam": {"podCIDRs": ["10.85.0.0/24"], "pool": {}, "pre-allocate": 8},
    "eni": {"vpc-id": "vpc-123"},
    "instance-id": "mi-0123456789abcdef0"
  }
}'
expect "admin gets CiliumNode" 200 "$ADMIN" GET "$CN/hybrid-node-a"
jcheck "CiliumNode spec.addresses kept" 'd["spec"]["addresses"][0]["ip"]' 10.80.0.10
jcheck "CiliumNode spec.ipam.podCIDRs kept" 'd["spec"]["ipam"]["podCIDRs"]' "['10.85.0.0/24']"
jcheck "CiliumNode unknown spec fields preserved" 'd["spec"]["eni"]["vpc-id"], d["spec"]["ipam"]["pre-allocate"]' "('vpc-123', 8)"
expect "admin writes CiliumNode status" 200 "$ADMIN" PATCH "$CN/hybrid-node-a/status" \
    '{"status": {"ipam": {"operator-status": {"error": ""}, "used": {}}}}' application/merge-patch+json
jcheck "CiliumNode status stored" '"ipam" in d["status"]' True
expect "CiliumNode schema is enforced" 422 "$ADMIN" POST "$CN" \
    '{"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": "bad"}, "spec": {"addresses": "10.0.0.1"}}'
if kadmin get ciliumnodes 2>&1 | grep -q '10.80.0.10'; then
    pass "kubectl (admin) lists CiliumNodes with InternalIP column"
else
    fail "kubectl (admin) get ciliumnodes: $(kadmin get ciliumnodes 2>&1 | tr '\n' ' ')"
fi

# --- admin: CiliumVTEPConfig + status subresource ----------------------------------
expect "admin creates CiliumVTEPConfig" 201 "$ADMIN" POST "$VT" '{
  "apiVersion": "cilium.io/v2", "kind": "CiliumVTEPConfig",
  "metadata": {"name": "admin-vtep"},
  "spec": {"endpoints": [{"name": "gw-a", "tunnelEndpoint": "10.0.1.10",
                          "cidr": "10.0.0.0/16", "mac": "02:00:0a:00:01:0a"}]}
}'
jcheck "CiliumVTEPConfig spec.cidrMask defaulted" 'd["spec"]["cidrMask"]' 255.255.255.0
expect "admin writes CiliumVTEPConfig status via /status" 200 "$ADMIN" PATCH "$VT/admin-vtep/status" '{
  "status": {"endpointCount": 1,
             "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": "",
                             "lastTransitionTime": "2026-01-01T00:00:00Z"}],
             "endpointStatuses": [{"name": "gw-a", "synced": true}],
             "someFutureField": {"x": 1}}
}' application/merge-patch+json
expect "admin reads CiliumVTEPConfig" 200 "$ADMIN" GET "$VT/admin-vtep"
jcheck "CiliumVTEPConfig status stored" 'd["status"]["endpointCount"], d["status"]["conditions"][0]["status"]' "(1, 'True')"
# Cilium's published schema is structural without x-kubernetes-preserve-unknown-fields:
# a status field it does not know is pruned, as on a real cluster.
jcheck "CiliumVTEPConfig unknown status fields pruned (Cilium's schema)" '"someFutureField" in d["status"]' False
expect "status change through the main resource is accepted" 200 "$ADMIN" PATCH "$VT/admin-vtep" \
    '{"status": {"endpointCount": 5}}' application/merge-patch+json
jcheck "... but ignored (status subresource)" 'd["status"]["endpointCount"]' 1
expect "empty strings are valid in typed fields (Go 1.19 zero-value fix)" 200 "$ADMIN" PATCH "$VT/admin-vtep/status" \
    '{"status": {"endpointStatuses": [{"name": "gw-a", "synced": false, "error": ""}]}}' application/merge-patch+json
expect "CiliumVTEPConfig schema is enforced (bad mac)" 422 "$ADMIN" POST "$VT" '{
  "apiVersion": "cilium.io/v2", "kind": "CiliumVTEPConfig", "metadata": {"name": "bad"},
  "spec": {"endpoints": [{"name": "x", "tunnelEndpoint": "10.0.1.10", "cidr": "10.0.0.0/16", "mac": "zz"}]}}'

# --- daemon identity: allowed --------------------------------------------------------
if kdaemon get ciliumnodes -o name 2>&1 | grep -qx 'ciliumnode.cilium.io/hybrid-node-a'; then
    pass "kubectl (daemon kubeconfig) lists CiliumNodes"
else
    fail "kubectl (daemon) get ciliumnodes: $(kdaemon get ciliumnodes -o name 2>&1 | tr '\n' ' ')"
fi
expect "daemon lists CiliumNodes" 200 "$DAEMON" GET "$CN"
jcheck "daemon sees the CiliumNode" '[i["metadata"]["name"] for i in d["items"]]' "['hybrid-node-a']"
expect "daemon may not get a single CiliumNode (it lists and watches)" 403 "$DAEMON" GET "$CN/hybrid-node-a"
expect "daemon watches CiliumNodes" 200 "$DAEMON" GET "$CN?watch=1&timeoutSeconds=1&allowWatchBookmarks=true"
expect "daemon creates CiliumVTEPConfig" 201 "$DAEMON" POST "$VT" '{
  "apiVersion": "cilium.io/v2", "kind": "CiliumVTEPConfig",
  "metadata": {"name": "hybrid-gateway"},
  "spec": {"endpoints": [{"name": "gw-a", "tunnelEndpoint": "10.0.1.10",
                          "cidr": "10.0.0.0/16", "mac": "02:00:0a:00:01:0a"}]}
}'
rv=$(jget 'd["metadata"]["resourceVersion"]' 2>/dev/null || echo 0)
expect "daemon may not update CiliumVTEPConfig with PUT (it uses server-side apply)" 403 "$DAEMON" PUT "$VT/hybrid-gateway" "{
  \"apiVersion\": \"cilium.io/v2\", \"kind\": \"CiliumVTEPConfig\",
  \"metadata\": {\"name\": \"hybrid-gateway\", \"resourceVersion\": \"$rv\"},
  \"spec\": {\"endpoints\": [{\"name\": \"gw-a\", \"tunnelEndpoint\": \"10.0.1.11\",
                          \"cidr\": \"10.0.0.0/16\", \"mac\": \"02:00:0a:00:01:0b\"}]}
}"
expect "daemon patches CiliumVTEPConfig" 200 "$DAEMON" PATCH "$VT/hybrid-gateway" \
    '{"spec": {"cidrMask": "255.255.0.0"}}' application/merge-patch+json
jcheck "patched CiliumVTEPConfig" 'd["spec"]["cidrMask"], d["spec"]["endpoints"][0]["tunnelEndpoint"]' "('255.255.0.0', '10.0.1.10')"
expect "daemon applies CiliumVTEPConfig (server-side apply)" 200 "$DAEMON" PATCH "$VT/hybrid-gateway?fieldManager=hybrid-gateway&force=true" \
    '{"apiVersion": "cilium.io/v2", "kind": "CiliumVTEPConfig", "metadata": {"name": "hybrid-gateway"}, "spec": {"endpoints": [{"name": "gw-a", "tunnelEndpoint": "10.0.1.12", "cidr": "10.0.0.0/16", "mac": "02:00:0a:00:01:0c"}]}}' application/apply-patch+yaml
expect "daemon gets CiliumVTEPConfig" 200 "$DAEMON" GET "$VT/hybrid-gateway"
expect "daemon lists CiliumVTEPConfigs" 200 "$DAEMON" GET "$VT"
expect "daemon watches CiliumVTEPConfigs" 200 "$DAEMON" GET "$VT?watch=1&timeoutSeconds=1"

CRDS=/apis/apiextensions.k8s.io/v1/customresourcedefinitions
expect "daemon gets the CiliumVTEPConfig CRD (served shape)" 200 "$DAEMON" GET "$CRDS/ciliumvtepconfigs.cilium.io"
expect "daemon watches the CiliumVTEPConfig CRD by name" 200 "$DAEMON" GET "$CRDS?fieldSelector=metadata.name%3Dciliumvtepconfigs.cilium.io&watch=1&timeoutSeconds=1"
expect "daemon dry-runs a CiliumVTEPConfig create (shape probe without CRD access)" 201 "$DAEMON" POST "$VT?dryRun=All" '{
  "apiVersion": "cilium.io/v2", "kind": "CiliumVTEPConfig",
  "metadata": {"name": "hybrid-gateway-shape-probe"},
  "spec": {"cidrMask": "255.255.0.0", "endpoints": [{"name": "probe", "tunnelEndpoint": "192.0.2.1",
                          "cidr": "192.0.2.0/24", "mac": "02:00:00:00:00:01"}]}
}'

expect "daemon creates Lease" 201 "$DAEMON" POST "$LEASES" "{
  \"apiVersion\": \"coordination.k8s.io/v1\", \"kind\": \"Lease\",
  \"metadata\": {\"name\": \"hybrid-gateway-leader\", \"namespace\": \"$NS\"},
  \"spec\": {\"holderIdentity\": \"gw-a\", \"leaseDurationSeconds\": 15}
}"
expect "daemon gets Lease" 200 "$DAEMON" GET "$LEASES/hybrid-gateway-leader"
rv=$(jget 'd["metadata"]["resourceVersion"]' 2>/dev/null || echo 0)
lease_body() { # lease_body RV HOLDER RENEW_TIME
    printf '{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
  "metadata": {"name": "hybrid-gateway-leader", "namespace": "%s", "resourceVersion": "%s"},
  "spec": {"holderIdentity": "%s", "leaseDurationSeconds": 15, "renewTime": "%s"}}' "$NS" "$1" "$2" "$3"
}
expect "daemon renews Lease (update)" 200 "$DAEMON" PUT "$LEASES/hybrid-gateway-leader" \
    "$(lease_body "$rv" gw-a 2026-01-01T00:00:01.000000Z)"
jcheck "Lease renewed" 'd["spec"]["renewTime"]' 2026-01-01T00:00:01.000000Z
expect "stale Lease update conflicts" 409 "$DAEMON" PUT "$LEASES/hybrid-gateway-leader" \
    "$(lease_body "$rv" gw-b 2026-01-01T00:00:02.000000Z)"

expect "daemon lists its Lease by name" 200 "$DAEMON" GET "$LEASES?fieldSelector=metadata.name%3Dhybrid-gateway-leader"
expect "daemon watches its Lease by name" 200 "$DAEMON" GET "$LEASES?fieldSelector=metadata.name%3Dhybrid-gateway-leader&watch=1&timeoutSeconds=1"
# Health-aware leadership: each gateway publishes its tunnel score in its own Lease and
# watches the others' by label (issue 15).
expect "daemon lists the health score Leases by label" 200 "$DAEMON" GET "$LEASES?labelSelector=hybrid-gateway.io%2Fhealth-of%3Dhybrid-gateway-leader"
expect "daemon watches the health score Leases by label" 200 "$DAEMON" GET "$LEASES?labelSelector=hybrid-gateway.io%2Fhealth-of%3Dhybrid-gateway-leader&watch=1&timeoutSeconds=1"
expect "daemon creates its health score Lease" 201 "$DAEMON" POST "$LEASES" "{
  \"apiVersion\": \"coordination.k8s.io/v1\", \"kind\": \"Lease\",
  \"metadata\": {\"name\": \"hybrid-gateway-leader-health-gw-a\", \"namespace\": \"$NS\",
               \"labels\": {\"hybrid-gateway.io/health-of\": \"hybrid-gateway-leader\"},
               \"annotations\": {\"hybrid-gateway.io/tunnel-health-ratio\": \"1.0000\"}},
  \"spec\": {\"holderIdentity\": \"gw-a\", \"leaseDurationSeconds\": 3}
}"

now=$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)
expect "daemon may not create core/v1 Events (it emits none)" 403 "$DAEMON" POST "/api/v1/namespaces/$NS/events" "{
  \"apiVersion\": \"v1\", \"kind\": \"Event\",
  \"metadata\": {\"name\": \"hybrid-gateway.smoke1\", \"namespace\": \"$NS\"},
  \"involvedObject\": {\"apiVersion\": \"coordination.k8s.io/v1\", \"kind\": \"Lease\", \"namespace\": \"$NS\", \"name\": \"hybrid-gateway\"},
  \"reason\": \"Smoke\", \"message\": \"smoke test\", \"type\": \"Normal\", \"count\": 1,
  \"source\": {\"component\": \"hybrid-gateway\"}
}"
expect "daemon may not patch core/v1 Events" 403 "$DAEMON" PATCH "/api/v1/namespaces/$NS/events/hybrid-gateway.smoke1" \
    '{"count": 2}' application/merge-patch+json
expect "daemon may not create events.k8s.io/v1 Events" 403 "$DAEMON" POST "/apis/events.k8s.io/v1/namespaces/$NS/events" "{
  \"apiVersion\": \"events.k8s.io/v1\", \"kind\": \"Event\",
  \"metadata\": {\"name\": \"hybrid-gateway.smoke2\", \"namespace\": \"$NS\"},
  \"eventTime\": \"$now\", \"reportingController\": \"hybrid-gateway\", \"reportingInstance\": \"gw-a\",
  \"action\": \"Smoke\", \"reason\": \"Smoke\", \"type\": \"Normal\", \"note\": \"smoke test\",
  \"regarding\": {\"apiVersion\": \"coordination.k8s.io/v1\", \"kind\": \"Lease\", \"namespace\": \"$NS\", \"name\": \"hybrid-gateway\"}
}"

# --- daemon identity: forbidden --------------------------------------------------------
expect "daemon may not delete CiliumNodes" 403 "$DAEMON" DELETE "$CN/hybrid-node-a"
expect "daemon may not patch CiliumNodes" 403 "$DAEMON" PATCH "$CN/hybrid-node-a" \
    '{"spec": {"instance-id": "x"}}' application/merge-patch+json
expect "daemon may not create CiliumNodes" 403 "$DAEMON" POST "$CN" \
    '{"apiVersion": "cilium.io/v2", "kind": "CiliumNode", "metadata": {"name": "evil"}, "spec": {}}'
expect "daemon may not delete CiliumVTEPConfigs" 403 "$DAEMON" DELETE "$VT/hybrid-gateway"
expect "daemon may not write CiliumVTEPConfig status" 403 "$DAEMON" PATCH "$VT/admin-vtep/status" \
    '{"status": {"endpointCount": 0}}' application/merge-patch+json
expect "daemon may not list secrets in its namespace" 403 "$DAEMON" GET "/api/v1/namespaces/$NS/secrets"
expect "daemon may not list secrets cluster-wide" 403 "$DAEMON" GET /api/v1/secrets
expect "daemon may not read configmaps in kube-system" 403 "$DAEMON" GET /api/v1/namespaces/kube-system/configmaps
expect "daemon may not list Leases cluster-wide" 403 "$DAEMON" GET /apis/coordination.k8s.io/v1/leases
expect "daemon may not list Leases in kube-system" 403 "$DAEMON" GET /apis/coordination.k8s.io/v1/namespaces/kube-system/leases
expect "daemon may not delete its Lease" 403 "$DAEMON" DELETE "$LEASES/hybrid-gateway-leader"
expect "daemon may not create Leases outside its namespace" 403 "$DAEMON" POST /apis/coordination.k8s.io/v1/namespaces/default/leases \
    '{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "x"}, "spec": {}}'
expect "daemon may not list nodes" 403 "$DAEMON" GET /api/v1/nodes
expect "daemon may not read other CRDs" 403 "$DAEMON" GET "$CRDS/ciliumnodes.cilium.io"
expect "daemon may not list all CRDs" 403 "$DAEMON" GET "$CRDS"
expect "daemon may not change the CiliumVTEPConfig CRD" 403 "$DAEMON" PATCH "$CRDS/ciliumvtepconfigs.cilium.io" \
    '{"metadata": {"labels": {"x": "y"}}}' application/merge-patch+json
if [[ $(kdaemon auth can-i delete ciliumnodes.cilium.io 2>/dev/null || true) == no ]]; then
    pass "kubectl auth can-i (daemon) delete ciliumnodes: no"
else
    fail "kubectl auth can-i (daemon) delete ciliumnodes should be 'no'"
fi

# --- pause / resume ------------------------------------------------------------------------
"$API" pause "$DIR"
if curl -fsS --max-time 2 --cacert "$K8S_CA_FILE" -H "Authorization: Bearer $ADMIN" "$K8S_API_URL/readyz" >/dev/null 2>&1; then
    fail "paused kube-apiserver still answers"
else
    pass "paused kube-apiserver does not answer"
fi
"$API" resume "$DIR"
ok=0
for _ in $(seq 1 50); do
    if curl -fsS --max-time 2 --cacert "$K8S_CA_FILE" -H "Authorization: Bearer $ADMIN" "$K8S_API_URL/readyz" >/dev/null 2>&1; then
        ok=1
        break
    fi
    sleep 0.2
done
if ((ok)); then pass "resumed kube-apiserver answers /readyz"; else fail "kube-apiserver did not come back after resume"; fi

# --- down --------------------------------------------------------------------------------------
"$API" pause "$DIR" # down must also stop a paused apiserver
t0=$SECONDS
"$API" down "$DIR"
echo "smoke: down took $((SECONDS - t0))s"
alive() { [[ -e /proc/$1 ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }
if alive "$APISERVER_PID" || alive "$ETCD_PID"; then fail "processes survive down"; else pass "down stopped etcd and kube-apiserver"; fi
if [[ -e $DIR ]]; then fail "down left $DIR behind"; else pass "down removed $DIR"; fi
if "$API" down "$DIR"; then pass "second down is a no-op"; else fail "second down failed"; fi

echo "smoke: $PASSES passed, $FAILS failed"
((FAILS == 0))
