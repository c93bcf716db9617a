#!/usr/bin/env python3
"""Seed moto (EC2) and DynamoDB Local with a hybrid-gateway test world.

Reads endpoints from the environment written by `peers.sh up` (MOTO_URL, so
seeding is not counted by the fault proxy, and AWS_ENDPOINT_URL_DYNAMODB).
Each run creates a fresh VPC; run it once per `up`.

EC2:
  * VPC 10.250.0.0/16; subnets 10.250.1.0/24 in <region>a, 10.250.2.0/24 in <region>b
  * --route-tables N route tables in the VPC, tagged hybrid-gateway.io/managed=true
    (and Name=hgw-rt-<i>); not associated with subnets
  * instances gw-a (subnet a) and gw-b (subnet b), tags Name=<name> and
    aws:autoscaling:groupName=hybrid-gw-asg; each has its primary ENI
    (DeviceIndex 0), source/dest check left ON as on a fresh instance
  * --go-gateway CIDR: one more instance, go-gw (subnet a, in another Auto Scaling
    group: the node group the Helm-deployed Go gateway runs on), and in every managed
    table a route CIDR -> its primary ENI, as the Go gateway leaves them (migration lab)
  * --foreign-route CIDR: a route in the first managed table to a transit
    gateway (moto supports CreateTransitGateway + CreateRoute TransitGatewayId),
    for the "never overwrite a route we do not own" test

DynamoDB lock table (--lock-table, default hybrid-gateway-lock), on-demand:
  partition key  lock_key          S    one item per lock
  attributes     owner             S    holder identity (e.g. instance id)
                 rvn               S    record version number, new on every write;
                                        writers condition on the rvn they read
                 fence             N    fencing token, +1 on every acquisition
                 lease_duration_ms N    lease length the holder promised
                 released          BOOL true after a clean release
                 acquire_time      S    RFC 3339, informational
                 renew_time        S    RFC 3339, informational
                 expires_at        N    epoch seconds; TTL attribute, used for
                                        garbage collection only (TTL deletion is
                                        lazy, never for lock correctness)

Prints one JSON object on stdout:
  {"region", "vpc_id", "vpc_cidr",
   "subnets": [{"subnet_id", "az", "cidr"}...],
   "route_tables": ["rtb-..."...],
   "instances": {"gw-a": {"instance_id", "eni_id", "mac", "private_ip", "az",
                          "subnet_id"}, "gw-b": {...}},
   "foreign_route": null | {"route_table_id", "cidr", "transit_gateway_id"},
   "lock_table": "hybrid-gateway-lock" | null}
"""
import argparse
import json
import os
import sys

import boto3

MANAGED_TAG = "hybrid-gateway.io/managed"
ASG = "hybrid-gw-asg"
AMI = "ami-12345678"  # moto accepts any well-formed AMI id


def client(service, url, region):
    return boto3.client(service, endpoint_url=url, region_name=region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def tags(resource, **kv):
    return [{"ResourceType": resource, "Tags": [{"Key": k, "Value": v} for k, v in kv.items()]}]


GO_ASG = "eks-go-gateway-nodes"


def seed_ec2(ec2, region, n_tables, foreign_cidr, go_cidr=None):
    vpc = ec2.create_vpc(CidrBlock="10.250.0.0/16", TagSpecifications=tags("vpc", Name="hgw-vpc"))["Vpc"]
    subnets = []
    for i, az in enumerate([region + "a", region + "b"], start=1):
        sn = ec2.create_subnet(VpcId=vpc["VpcId"], CidrBlock=f"10.250.{i}.0/24", AvailabilityZone=az)["Subnet"]
        subnets.append({"subnet_id": sn["SubnetId"], "az": az, "cidr": sn["CidrBlock"]})

    tables = []
    for i in range(n_tables):
        rt = ec2.create_route_table(VpcId=vpc["VpcId"], TagSpecifications=tags(
            "route-table", **{"Name": f"hgw-rt-{i}", MANAGED_TAG: "true"}))["RouteTable"]
        tables.append(rt["RouteTableId"])

    instances = {}
    fleet = [("gw-a", subnets[0], ASG), ("gw-b", subnets[1], ASG)]
    if go_cidr:
        fleet.append(("go-gw", subnets[0], GO_ASG))
    for name, sn, asg in fleet:
        inst = ec2.run_instances(
            ImageId=AMI, InstanceType="t3.micro", MinCount=1, MaxCount=1, SubnetId=sn["subnet_id"],
            TagSpecifications=tags("instance", **{"Name": name, "aws:autoscaling:groupName": asg}),
        )["Instances"][0]
        eni = next(n for n in inst["NetworkInterfaces"] if n["Attachment"]["DeviceIndex"] == 0)
        instances[name] = {
            "instance_id": inst["InstanceId"], "eni_id": eni["NetworkInterfaceId"],
            "mac": eni["MacAddress"], "private_ip": eni["PrivateIpAddress"],
            "az": inst["Placement"]["AvailabilityZone"], "subnet_id": sn["subnet_id"],
        }

    if go_cidr:
        for t in tables:
            ec2.create_route(RouteTableId=t, DestinationCidrBlock=go_cidr,
                             NetworkInterfaceId=instances["go-gw"]["eni_id"])

    foreign = None
    if foreign_cidr:
        if not tables:
            sys.exit("seed.py: --foreign-route needs --route-tables >= 1")
        tgw = ec2.create_transit_gateway(Description="foreign owner")["TransitGateway"]["TransitGatewayId"]
        ec2.create_route(RouteTableId=tables[0], DestinationCidrBlock=foreign_cidr, TransitGatewayId=tgw)
        foreign = {"route_table_id": tables[0], "cidr": foreign_cidr, "transit_gateway_id": tgw}

    return {"region": region, "vpc_id": vpc["VpcId"], "vpc_cidr": vpc["CidrBlock"], "subnets": subnets,
            "route_tables": tables, "instances": instances, "foreign_route": foreign}


def seed_lock_table(ddb, name):
    ddb.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "lock_key", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "lock_key", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--route-tables", type=int, default=2, metavar="N")
    p.add_argument("--foreign-route", metavar="CIDR", help="TGW route in the first managed table")
    p.add_argument("--go-gateway", metavar="CIDR", help="a Go gateway instance and routes CIDR -> it")
    p.add_argument("--lock-table", default="hybrid-gateway-lock")
    p.add_argument("--no-lock-table", action="store_true")
    args = p.parse_args()

    region = os.environ.get("AWS_REGION", "us-west-2")
    out = seed_ec2(client("ec2", os.environ["MOTO_URL"], region), region, args.route_tables, args.foreign_route,
                   args.go_gateway)
    out["lock_table"] = None
    if not args.no_lock_table:
        seed_lock_table(client("dynamodb", os.environ["AWS_ENDPOINT_URL_DYNAMODB"], region), args.lock_table)
        out["lock_table"] = args.lock_table
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
