#!/usr/bin/env bash
# Smoke test of the AWS test peers: up -> seed -> checks -> down (always).
# Needs `tests/aws/peers.sh install` first.  Exits non-zero on any failure.
# SMOKE_BIND_ADDR=ADDR binds the peers there (e.g. inside `ip netns exec`).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS="$HERE/peers.sh"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/hgw-aws-smoke.XXXXXX")"
PIDS=()

teardown() {
  local rc=$?
  "$PEERS" down "$DIR" || rc=1
  # down must have stopped every peer it started
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then echo "smoke: pid $pid survived down" >&2; rc=1; fi
  done
  "$PEERS" down "$DIR" || { echo "smoke: second down failed" >&2; rc=1; }
  if (( rc )); then echo "smoke: FAIL" >&2; else echo "smoke: PASS" >&2; fi
  exit "$rc"
}
trap teardown EXIT

"$PEERS" up "$DIR" ${SMOKE_BIND_ADDR:-}   # e.g. a namespace address
SEED="$("$PEERS" seed "$DIR" --route-tables 3 --foreign-route 10.201.0.0/16)"
set -a; . "$DIR/env"; set +a
PIDS=("$MOTO_PID" "$FAULT_PROXY_PID" "$IMDS_GW_A_PID" "$DYNAMODB_PID")

# A second IMDS for gw-b, selected by instance id, posing as a Local Zone.
GW_B_ID="$("$PEERS" py -c 'import json,sys; print(json.load(sys.stdin)["instances"]["gw-b"]["instance_id"])' <<<"$SEED")"
"$PEERS" imds "$DIR" gw-b "$GW_B_ID" --availability-zone us-west-2-lax-1a --region us-west-2 >/dev/null
set -a; . "$DIR/env"; set +a
PIDS+=("$IMDS_GW_B_PID")

SEED="$SEED" "$PEERS" py - <<'PYEOF'
import json, os, urllib.error, urllib.request
from datetime import datetime, timezone

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

seed = json.loads(os.environ["SEED"])
failures = []

def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)

def http(method, url, headers=None, data=None):
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)

# ---- IMDS: token required, values agree with moto
def imds_checks(base, name, want_az, want_region):
    md = base + "/latest/meta-data/"
    check(http("GET", md + "instance-id")[0] == 401, f"{name}: GET without token -> 401")
    check(http("GET", md + "instance-id", {"X-aws-ec2-metadata-token": "bogus"})[0] == 401, f"{name}: bad token -> 401")
    check(http("PUT", base + "/latest/api/token", data=b"")[0] == 400, f"{name}: token PUT without TTL -> 400")
    st, tok, hdrs = http("PUT", base + "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}, b"")
    check(st == 200 and tok and hdrs.get("X-aws-ec2-metadata-token-ttl-seconds") == "21600",
          f"{name}: token PUT -> 200 with TTL header")
    get = lambda p: http("GET", md + p, {"X-aws-ec2-metadata-token": tok})[1]

    ec2 = boto3.client("ec2", endpoint_url=os.environ["MOTO_URL"])
    inst = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": [name]}])["Reservations"][0]["Instances"][0]
    eni = next(n for n in inst["NetworkInterfaces"] if n["Attachment"]["DeviceIndex"] == 0)
    mac = get("mac")
    check(get("instance-id") == inst["InstanceId"] == seed["instances"][name]["instance_id"], f"{name}: instance-id")
    check(mac == eni["MacAddress"], f"{name}: mac")
    check(get("local-ipv4") == eni["PrivateIpAddress"], f"{name}: local-ipv4")
    check(get(f"network/interfaces/macs/{mac}/interface-id") == eni["NetworkInterfaceId"], f"{name}: interface-id")
    check(mac + "/" in get("network/interfaces/macs/").splitlines(), f"{name}: macs listing")
    check(get("placement/availability-zone") == want_az, f"{name}: availability-zone = {want_az}")
    check(get("placement/region") == want_region, f"{name}: region = {want_region}")
    role = get("iam/security-credentials/")
    creds = json.loads(get("iam/security-credentials/" + role))
    exp = datetime.strptime(creds["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    check(creds["AccessKeyId"] == "testing" and exp > datetime.now(timezone.utc), f"{name}: role credentials")

imds_checks(os.environ["IMDS_GW_A_URL"], "gw-a", seed["instances"]["gw-a"]["az"], "us-west-2")
check(os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == os.environ["IMDS_GW_A_URL"], "default IMDS is gw-a")
imds_checks(os.environ["IMDS_GW_B_URL"], "gw-b", "us-west-2-lax-1a", "us-west-2")

# botocore's own IMDS credential provider (the SDK path) against our server
from botocore.credentials import InstanceMetadataProvider
from botocore.utils import InstanceMetadataFetcher
c = InstanceMetadataProvider(InstanceMetadataFetcher(
    timeout=2, num_attempts=1, config={"ec2_metadata_service_endpoint": os.environ["IMDS_GW_A_URL"]})).load()
check(c is not None and c.access_key == "testing", "botocore IMDS credential provider")

# ---- fault proxy: counting and injection.  boto3 picks AWS_ENDPOINT_URL_EC2 up itself.
proxy = os.environ["FAULT_PROXY_URL"]
check(os.environ["AWS_ENDPOINT_URL_EC2"] == proxy, "EC2 endpoint is the proxy")
ec2 = boto3.client("ec2", config=Config(retries={"total_max_attempts": 1}))
calls = lambda: json.loads(http("GET", proxy + "/__calls")[1])
fault = lambda **kw: http("POST", proxy + "/__fault", {"Content-Type": "application/json"}, json.dumps(kw).encode())

http("POST", proxy + "/__reset", data=b"")
rts = ec2.describe_route_tables(Filters=[{"Name": "tag:hybrid-gateway.io/managed", "Values": ["true"]}])["RouteTables"]
check(sorted(r["RouteTableId"] for r in rts) == sorted(seed["route_tables"]), "managed route tables by tag")
check(calls() == {"DescribeRouteTables": 1}, f"/__calls counts DescribeRouteTables: {calls()}")

rt, cidr = seed["route_tables"][1], "10.200.0.0/16"
eni_a, eni_b = seed["instances"]["gw-a"]["eni_id"], seed["instances"]["gw-b"]["eni_id"]
ec2.create_route(RouteTableId=rt, DestinationCidrBlock=cidr, NetworkInterfaceId=eni_a)
fault(action="ReplaceRoute", status=503, code="RequestLimitExceeded", count=1)
try:
    ec2.replace_route(RouteTableId=rt, DestinationCidrBlock=cidr, NetworkInterfaceId=eni_b)
    check(False, "injected 503 returned")
except ClientError as e:
    check(e.response["Error"]["Code"] == "RequestLimitExceeded"
          and e.response["ResponseMetadata"]["HTTPStatusCode"] == 503, f"injected 503 returned: {e}")
ec2.replace_route(RouteTableId=rt, DestinationCidrBlock=cidr, NetworkInterfaceId=eni_b)
routes = ec2.describe_route_tables(RouteTableIds=[rt])["RouteTables"][0]["Routes"]
check(any(r.get("DestinationCidrBlock") == cidr and r.get("NetworkInterfaceId") == eni_b for r in routes),
      "ReplaceRoute passed through after the fault")
fault(action="*", status=500, code="InternalError", count=1)
try:
    ec2.describe_route_tables(RouteTableIds=[rt])
    check(False, "wildcard 500 returned")
except ClientError as e:
    check(e.response["Error"]["Code"] == "InternalError", "wildcard 500 InternalError returned")
c = calls()
check(c == {"DescribeRouteTables": 3, "CreateRoute": 1, "ReplaceRoute": 2}, f"call counts: {c}")
check(json.loads(http("GET", proxy + "/__faults")[1])["pending"] == [], "no pending faults left")
foreign = next(r for r in ec2.describe_route_tables(RouteTableIds=[seed["foreign_route"]["route_table_id"]])
               ["RouteTables"][0]["Routes"] if r.get("DestinationCidrBlock") == "10.201.0.0/16")
check(foreign.get("TransitGatewayId") == seed["foreign_route"]["transit_gateway_id"], "foreign TGW route seeded")

# ---- DynamoDB Local: conditional writes
ddb = boto3.client("dynamodb")  # AWS_ENDPOINT_URL_DYNAMODB
table = seed["lock_table"]
desc = ddb.describe_table(TableName=table)["Table"]
check(desc["KeySchema"] == [{"AttributeName": "lock_key", "KeyType": "HASH"}], "lock table key schema")
ttl = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
check(ttl.get("AttributeName") == "expires_at", f"TTL attribute: {ttl}")
item = {"lock_key": {"S": "leader"}, "owner": {"S": "gw-a"}, "rvn": {"S": "r1"}, "fence": {"N": "1"},
        "lease_duration_ms": {"N": "10000"}, "released": {"BOOL": False}, "expires_at": {"N": "4102444800"}}
ddb.put_item(TableName=table, Item=item, ConditionExpression="attribute_not_exists(lock_key)")
try:
    ddb.put_item(TableName=table, Item=dict(item, owner={"S": "gw-b"}),
                 ConditionExpression="attribute_not_exists(lock_key) OR rvn = :r",
                 ExpressionAttributeValues={":r": {"S": "stale"}},
                 ReturnValuesOnConditionCheckFailure="ALL_OLD")
    check(False, "conditional put on a held lock fails")
except ClientError as e:
    check(e.response["Error"]["Code"] == "ConditionalCheckFailedException"
          and e.response.get("Item", {}).get("owner") == {"S": "gw-a"},
          "ConditionalCheckFailedException with ALL_OLD item")
ddb.put_item(TableName=table, Item=dict(item, owner={"S": "gw-b"}, rvn={"S": "r2"}, fence={"N": "2"}),
             ConditionExpression="rvn = :r", ExpressionAttributeValues={":r": {"S": "r1"}})
got = ddb.get_item(TableName=table, Key={"lock_key": {"S": "leader"}}, ConsistentRead=True)["Item"]
check(got["owner"]["S"] == "gw-b" and got["fence"]["N"] == "2", "takeover with the right rvn")

if failures:
    raise SystemExit(f"{len(failures)} check(s) failed")
PYEOF
