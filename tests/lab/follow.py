#!/usr/bin/env python3
"""The lab's stand-ins for what AWS and Cilium do with what the leader writes.

Runs inside the lab's `cp` namespace (it reaches the API server and moto there) and
reprograms the other namespaces with `ip -n`:

  * vtep:  watches the CiliumVTEPConfig `hybrid-gateway` (as the Cilium agent does) and
           points the hybrid node's VXLAN path at the gateway it names: for every endpoint,
           `route replace <cidr> via <tunnelEndpoint> dev vx onlink src <pod ip>`, a
           permanent ARP entry <tunnelEndpoint> -> <mac> and an FDB entry <mac> -> <tunnelEndpoint>
           (the previous gateway's ARP/FDB entries are removed);
  * route: polls the emulated VPC route table (DescribeRouteTables in moto) and points the
           VPC host's route for each hybrid pod CIDR at the gateway whose ENI the table names
           (as the VPC router does); no route in the table means no route in the VPC host.

Every change is logged on one line with a wall-clock timestamp (`follow.log` in the lab's
state directory), so a failover can be read back afterwards.
"""
import argparse
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

import boto3


def log(what, msg):
    t = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    print(f"{stamp} {t:.3f} {what}: {msg}", flush=True)


def ip(ns, *args, check=True):
    r = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip -n {ns} {' '.join(args)}: {r.stderr.strip()}")
    return r


def bridge(ns, *args):
    # `bridge` has no -n before iproute2 5.x everywhere; go through ip netns exec.
    return subprocess.run(["ip", "netns", "exec", ns, "bridge", *args], capture_output=True, text=True)


# ----------------------------------------------------------------------------- vtep ---
class Vtep:
    def __init__(self, args):
        self.args = args
        self.url = urllib.parse.urlsplit(args.api_url)
        self.ctx = ssl.create_default_context(cafile=args.ca_file)
        self.token = open(args.token_file).read().strip()
        self.applied = None  # [(cidr, tep, mac)]

    def conn(self, timeout):
        return http.client.HTTPSConnection(self.url.hostname, self.url.port, context=self.ctx, timeout=timeout)

    def request(self, c, path):
        c.request("GET", path, headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"})
        return c.getresponse()

    def apply(self, obj):
        eps = []
        if obj is not None:
            for e in (obj.get("spec") or {}).get("endpoints") or []:
                try:
                    eps.append((e["cidr"], e["tunnelEndpoint"], e["mac"].lower()))
                except KeyError:
                    continue
        if not eps or eps == self.applied:
            return  # Cilium keeps the last good config when the CR goes away
        ns, dev, src = self.args.node_ns, self.args.node_dev, self.args.pod_ip
        old = self.applied or []
        for cidr, tep, mac in eps:
            # New ARP/FDB first, then the route: never a route to an unresolved VTEP.
            ip(ns, "neigh", "replace", tep, "lladdr", mac, "dev", dev, "nud", "permanent")
            r = bridge(ns, "fdb", "replace", mac, "dst", tep, "dev", dev, "self", "permanent")
            if r.returncode != 0:
                raise RuntimeError(f"bridge fdb replace: {r.stderr.strip()}")
            ip(ns, "route", "replace", cidr, "via", tep, "dev", dev, "onlink", "src", src)
        keep = {(t, m) for _, t, m in eps}
        for _, tep, mac in old:
            if (tep, mac) not in keep:
                ip(ns, "neigh", "del", tep, "dev", dev, check=False)
                bridge(ns, "fdb", "del", mac, "dev", dev, "self")
        self.applied = eps
        log("vtep", "node -> " + ", ".join(f"{c} via {t} ({m})" for c, t, m in eps))

    def run(self):
        base = "/apis/cilium.io/v2/ciliumvtepconfigs"
        sel = urllib.parse.quote(f"metadata.name={self.args.vtep_name}")
        while True:
            try:
                c = self.conn(10)
                r = self.request(c, f"{base}?fieldSelector={sel}")
                body = r.read()
                if r.status != 200:
                    raise RuntimeError(f"list: HTTP {r.status} {body[:200]!r}")
                lst = json.loads(body)
                items = lst.get("items") or []
                self.apply(items[0] if items else None)
                rv = lst["metadata"]["resourceVersion"]
                c.close()
                c = self.conn(self.args.watch_timeout + 30)
                r = self.request(c, f"{base}?watch=1&fieldSelector={sel}&resourceVersion={rv}"
                                    f"&timeoutSeconds={self.args.watch_timeout}")
                if r.status != 200:
                    raise RuntimeError(f"watch: HTTP {r.status}")
                while True:
                    line = r.readline()
                    if not line:
                        break
                    ev = json.loads(line)
                    if ev.get("type") == "ERROR":
                        break
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        self.apply(ev["object"])
                c.close()
            except Exception as e:  # the API server restarting, a stale resourceVersion...
                log("vtep", f"error ({e}); retrying")
                time.sleep(0.5)


# ---------------------------------------------------------------------------- route ---
class Route:
    def __init__(self, args, table, vpc_ns):
        self.args = args
        self.table = table
        self.vpc_ns = vpc_ns
        self.ec2 = boto3.client("ec2", endpoint_url=args.moto_url, region_name=args.region,
                                aws_access_key_id="testing", aws_secret_access_key="testing")
        self.eni_ip = dict(kv.split("=", 1) for kv in args.eni)
        self.applied = {}

    def run(self):
        ns = self.vpc_ns
        errors = 0
        while True:
            try:
                rt = self.ec2.describe_route_tables(RouteTableIds=[self.table])["RouteTables"][0]
                errors = 0
                for cidr in self.args.cidr:
                    eni = next((r.get("NetworkInterfaceId") for r in rt.get("Routes", [])
                                if r.get("DestinationCidrBlock") == cidr and r.get("State", "active") == "active"), None)
                    gw = self.eni_ip.get(eni) if eni else None
                    if self.applied.get(cidr, "unset") == gw:
                        continue
                    if gw:
                        ip(ns, "route", "replace", cidr, "via", gw)
                        log("route", f"{ns} {cidr} via {gw} ({eni})")
                    else:
                        ip(ns, "route", "del", cidr, check=False)
                        log("route", f"{ns} {cidr}: no route ({eni or 'none in ' + self.table})")
                    self.applied[cidr] = gw
            except Exception as e:
                errors += 1
                if errors in (1, 10) or errors % 100 == 0:
                    log("route", f"error ({e}); retrying")
            time.sleep(self.args.interval)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api-url", required=True)
    p.add_argument("--ca-file", required=True)
    p.add_argument("--token-file", required=True, help="file holding a bearer token that may read the CR")
    p.add_argument("--vtep-name", default="hybrid-gateway")
    p.add_argument("--watch-timeout", type=int, default=240)
    p.add_argument("--node-ns", required=True)
    p.add_argument("--node-dev", default="vx")
    p.add_argument("--pod-ip", required=True)
    p.add_argument("--moto-url", required=True)
    p.add_argument("--region", default=os.environ.get("AWS_REGION", "us-west-2"))
    p.add_argument("--route-table", action="append", required=True,
                   help="route table to follow; with several, each pairs with the --vpc-ns in the same position")
    p.add_argument("--cidr", action="append", required=True, help="hybrid pod CIDR to follow")
    p.add_argument("--eni", action="append", required=True, metavar="ENI=IP")
    p.add_argument("--vpc-ns", action="append", required=True)
    p.add_argument("--interval", type=float, default=0.1)
    args = p.parse_args()
    log("follow", f"following CiliumVTEPConfig {args.vtep_name} -> {args.node_ns}, "
                  f"route table {args.route_table} -> {args.vpc_ns} every {args.interval}s")
    if len(args.route_table) != len(args.vpc_ns):
        p.error("one --vpc-ns per --route-table")
    threads = [threading.Thread(target=Vtep(args).run, daemon=True)]
    threads += [threading.Thread(target=Route(args, t, n).run, daemon=True)
                for t, n in zip(args.route_table, args.vpc_ns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    sys.exit(main())
