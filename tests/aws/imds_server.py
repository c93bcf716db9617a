#!/usr/bin/env python3
"""IMDSv2 emulator for one emulated gateway instance, backed by moto's state.

moto's built-in metadata serves fixed values and ignores the token, so tests
could not tell an IMDSv1 client from an IMDSv2 one, nor check that the values
the daemon reads agree with what EC2 says.  This server:

  * requires the session token: PUT /latest/api/token (with the
    X-aws-ec2-metadata-token-ttl-seconds header, 1..21600) returns one; any GET
    without a valid X-aws-ec2-metadata-token header answers 401;
  * resolves "self" in moto (by --instance-id, or by --self-tag KEY=VALUE) and
    serves that instance's id, primary ENI (DeviceIndex 0) MAC / private IP /
    ENI id, AZ and region;
  * serves an instance-profile role with static test credentials so the AWS
    SDK's default credential chain works (legacy and "-extended" paths).

Run one per emulated gateway, each on its own port.  Values are re-read from
moto at most every --cache-seconds, so tests may change moto and see IMDS follow.

--region / --availability-zone override what is served, e.g. an AZ of
"us-west-2-lax-1a" with region "us-west-2" proves the daemon reads
placement/region instead of trimming the AZ name.
"""
import argparse
import datetime as dt
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

MAX_TTL = 21600
TOKEN_HDR = "X-aws-ec2-metadata-token"
TTL_HDR = "X-aws-ec2-metadata-token-ttl-seconds"


class NotFound(Exception):
    pass


class Self:
    """Looks up the selected instance in moto, caching the answer briefly."""

    def __init__(self, args):
        self.args = args
        self.ec2 = boto3.client(
            "ec2", endpoint_url=args.moto_url, region_name=args.aws_region,
            aws_access_key_id="testing", aws_secret_access_key="testing")
        self.lock = threading.Lock()
        self.cached, self.cached_at = None, 0.0

    def get(self):
        with self.lock:
            if self.cached is None or time.monotonic() - self.cached_at > self.args.cache_seconds:
                self.cached = self._fetch()
                self.cached_at = time.monotonic()
            return self.cached

    def _fetch(self):
        if self.args.instance_id:
            kw = {"InstanceIds": [self.args.instance_id]}
        else:
            key, _, value = self.args.self_tag.partition("=")
            kw = {"Filters": [
                {"Name": f"tag:{key}", "Values": [value]},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
            ]}
        try:
            res = self.ec2.describe_instances(**kw)["Reservations"]
        except self.ec2.exceptions.ClientError as e:
            raise NotFound(str(e))
        insts = [i for r in res for i in r["Instances"]]
        if not insts:
            raise NotFound(f"no instance matches {kw}")
        if len(insts) > 1:
            raise NotFound(f"{len(insts)} instances match {kw}; selector must be unique")
        inst = insts[0]
        enis = sorted(inst.get("NetworkInterfaces", []), key=lambda n: n["Attachment"]["DeviceIndex"])
        if not enis or enis[0]["Attachment"]["DeviceIndex"] != 0:
            raise NotFound(f"{inst['InstanceId']} has no primary ENI")
        vpc_cidrs = {}
        for vpc in self.ec2.describe_vpcs(VpcIds=list({n["VpcId"] for n in enis}))["Vpcs"]:
            vpc_cidrs[vpc["VpcId"]] = [a["CidrBlock"] for a in vpc.get("CidrBlockAssociationSet", [])] or [vpc["CidrBlock"]]
        return {
            "instance": inst,
            "enis": enis,
            "vpc_cidrs": vpc_cidrs,
            "az": self.args.availability_zone or inst["Placement"]["AvailabilityZone"],
            "region": self.args.region or self.args.aws_region,
        }


def metadata(args, s, path):
    """Returns the body for a /latest/... path, or raises NotFound."""
    inst, enis = s["instance"], s["enis"]
    primary = enis[0]
    now = dt.datetime.now(dt.timezone.utc)
    creds = {
        "Code": "Success",
        "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Type": "AWS-HMAC",
        "AccessKeyId": "testing",
        "SecretAccessKey": "testing",
        "Token": "testing",
        "Expiration": (now + dt.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    md = "/latest/meta-data/"
    fixed = {
        md + "instance-id": inst["InstanceId"],
        md + "instance-type": inst.get("InstanceType", "t3.micro"),
        md + "ami-id": inst.get("ImageId", ""),
        md + "mac": primary["MacAddress"],
        md + "local-ipv4": primary["PrivateIpAddress"],
        md + "placement/": "availability-zone\nregion",
        md + "placement/availability-zone": s["az"],
        md + "placement/region": s["region"],
        md + "network/interfaces/macs/": "\n".join(n["MacAddress"] + "/" for n in enis),
        md + "iam/security-credentials/": args.role,
        md + "iam/security-credentials/" + args.role: json.dumps(creds, indent=2),
        md + "iam/security-credentials-extended/": args.role,
        md + "iam/security-credentials-extended/" + args.role:
            json.dumps(dict(creds, AccountId=args.account_id), indent=2),
        "/latest/dynamic/instance-identity/document": json.dumps({
            "accountId": args.account_id, "instanceId": inst["InstanceId"],
            "availabilityZone": s["az"], "region": s["region"],
            "privateIp": primary["PrivateIpAddress"], "imageId": inst.get("ImageId", ""),
            "instanceType": inst.get("InstanceType", "t3.micro"),
        }, indent=2),
    }
    if path in fixed:
        return fixed[path]
    prefix = md + "network/interfaces/macs/"
    if path.startswith(prefix):
        mac, _, leaf = path[len(prefix):].partition("/")
        for n in enis:
            if n["MacAddress"] != mac:
                continue
            per_mac = {
                "interface-id": n["NetworkInterfaceId"],
                "local-ipv4s": "\n".join(p["PrivateIpAddress"] for p in n.get("PrivateIpAddresses", [])) or n["PrivateIpAddress"],
                "subnet-id": n["SubnetId"],
                "vpc-id": n["VpcId"],
                "device-number": str(n["Attachment"]["DeviceIndex"]),
                "vpc-ipv4-cidr-block": s["vpc_cidrs"].get(n["VpcId"], [""])[0],
                "vpc-ipv4-cidr-blocks": "\n".join(s["vpc_cidrs"].get(n["VpcId"], [])),
            }
            if leaf == "":
                return "\n".join(per_mac)
            if leaf in per_mac:
                return per_mac[leaf]
    raise NotFound(path)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's IMDS client expects
    tokens = {}                    # token -> expiry (monotonic)
    tokens_lock = threading.Lock()

    def reply(self, code, body="", headers=None):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def drain(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)

    def do_PUT(self):
        self.drain()
        if self.path != "/latest/api/token":
            return self.reply(404, "Not Found")
        try:
            ttl = int(self.headers.get(TTL_HDR, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TTL:
            return self.reply(400, "Missing or Invalid Parameters")
        token = secrets.token_urlsafe(32)
        with self.tokens_lock:
            self.tokens[token] = time.monotonic() + ttl
        self.reply(200, token, {TTL_HDR: str(ttl)})

    def do_GET(self):
        self.drain()
        token = self.headers.get(TOKEN_HDR)
        with self.tokens_lock:
            valid = token is not None and self.tokens.get(token, 0) > time.monotonic()
        if not valid:
            return self.reply(401, "Unauthorized")
        path = self.path.split("?", 1)[0]
        try:
            self.reply(200, metadata(self.server.args, self.server.self_.get(), path))
        except NotFound as e:
            self.log_message("404 %s: %s", path, e)
            self.reply(404, "Not Found")
        except Exception as e:  # moto unreachable etc.: visible to the test, not fatal
            self.log_message("500 %s: %r", path, e)
            self.reply(500, "Internal Server Error")

    def do_POST(self):
        self.drain()
        self.reply(405, "Method Not Allowed")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--moto-url", required=True, help="moto itself (not the fault proxy)")
    sel = p.add_mutually_exclusive_group(required=True)
    sel.add_argument("--instance-id")
    sel.add_argument("--self-tag", help="KEY=VALUE, e.g. Name=gw-a")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--aws-region", default="us-west-2", help="region to query moto in")
    p.add_argument("--region", help="placement/region to serve (default: --aws-region)")
    p.add_argument("--availability-zone", help="placement/availability-zone to serve (default: the instance's)")
    p.add_argument("--role", default="hybrid-gateway-test-role")
    p.add_argument("--account-id", default="123456789012")
    p.add_argument("--cache-seconds", type=float, default=1.0)
    args = p.parse_args()

    srv = ThreadingHTTPServer((args.bind, args.port), Handler)
    srv.daemon_threads = True
    srv.args, srv.self_ = args, Self(args)
    port = srv.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)  # atomic: readers never see a partial file
    print(f"imds_server listening on {args.bind}:{port}", file=sys.stderr, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
