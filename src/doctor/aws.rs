//! The AWS side: IMDS, the VPC's CIDR blocks, the source/destination check, the managed
//! route tables (found, in this VPC, writable by a `DryRun` write), per-AZ mode's layout
//! and the DynamoDB table.

use aws_config::SdkConfig;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use ipnet::Ipv4Net;

use super::{Check, CALL_TIMEOUT};
use crate::aws::imds::{self, Identity, ImdsSettings, Overrides};
use crate::aws::{eni, sdk_config, SdkSettings};
use crate::config::{Config, ElectionMode};

/// What the Kubernetes checks reuse (an EKS token is signed with these credentials).
pub struct Aws {
    pub sdk: SdkConfig,
    pub ec2: aws_sdk_ec2::Client,
    pub identity: Identity,
}

/// AWS is checked when the configuration uses it (route tables, the DynamoDB lock, or
/// the node IP from IMDS); otherwise the checks say so and are skipped.
pub async fn checks(config: &Config, out: &mut Vec<Check>) -> Option<Aws> {
    let used = config.aws.manages_routes()
        || config.election.dynamodb.is_some()
        || config.gateway.node_ip.is_none()
        || config.kubernetes.eks.is_some();
    if !used {
        out.push(Check::skip(
            "imds",
            "not used: gateway.node_ip is set and nothing in the configuration needs AWS",
        ));
        return None;
    }
    // Fewer attempts than the daemon's start-up: a doctor should answer quickly.
    let settings = ImdsSettings {
        attempts: 2,
        ..ImdsSettings::default()
    };
    let client = imds::client(&settings);
    let overrides = Overrides {
        region: config.aws.region.clone(),
        node_ip: config.gateway.node_ip,
    };
    let identity = match Identity::discover(&client, &overrides, &settings).await {
        Ok(i) => i,
        Err(e) => {
            out.push(Check::fail(
                "imds",
                e.to_string(),
                "require IMDSv2 with a hop limit of at least 1 on this instance \
                 (aws ec2 modify-instance-metadata-options --http-tokens required --http-endpoint enabled)",
            ));
            return None;
        }
    };
    out.push(Check::ok(
        "imds",
        format!(
            "instance {} in {} ({}), ENI {}, VPC {}",
            identity.instance_id,
            identity.availability_zone,
            identity.region,
            identity.primary_eni,
            identity.vpc_id
        ),
    ));
    match imds::vpc_cidr_blocks(&client, &identity.mac, &settings).await {
        Ok(blocks) => out.extend(vpc_cidrs(config, &identity.vpc_id, &blocks)),
        Err(e) => out.push(Check::fail(
            "vpc_cidrs",
            format!("the VPC's CIDR blocks are not readable from IMDS: {e}"),
            "check IMDS (see the imds check)",
        )),
    }
    let sdk = sdk_config(
        &identity.region,
        &SdkSettings {
            max_attempts: 2,
            ..SdkSettings::default()
        },
    )
    .await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    out.push(
        match eni::read(&ec2, &identity.primary_eni, CALL_TIMEOUT).await {
            Ok(false) => Check::ok(
                "source_dest_check",
                format!("disabled on {}", identity.primary_eni),
            ),
            Ok(true) if config.aws.manage_source_dest_check => Check::warn(
                "source_dest_check",
                format!("enabled on {}: the gateway cannot forward until the daemon turns it off at start", identity.primary_eni),
                "start the daemon (it needs ec2:ModifyNetworkInterfaceAttribute) or disable it yourself",
            ),
            Ok(true) => Check::fail(
                "source_dest_check",
                format!("enabled on {} and aws.manage_source_dest_check = false: forwarded packets are dropped", identity.primary_eni),
                format!("aws ec2 modify-network-interface-attribute --network-interface-id {} --no-source-dest-check", identity.primary_eni),
            ),
            Err(e) => Check::fail(
                "source_dest_check",
                e.to_string(),
                "grant ec2:DescribeNetworkInterfaces (packaging/iam-policy.json)",
            ),
        },
    );
    out.extend(route_tables(config, &ec2, &identity).await);
    if config.election.mode == ElectionMode::PerAz {
        out.extend(super::per_az::checks(config, &ec2, &identity).await);
    }
    if let Some(d) = &config.election.dynamodb {
        let table = dynamodb_table(&sdk, &d.table).await;
        let active = table.status == super::Status::Ok;
        out.push(table);
        if active {
            out.push(dynamodb_write(&sdk, &d.table, &identity.instance_id).await);
        }
    }
    Some(Aws { sdk, ec2, identity })
}

/// Every VPC block must be in `gateway.vpc_cidrs` (else hybrid pods cannot reach it: the
/// CiliumVTEPConfig and the filter only cover the configured ones); a configured CIDR
/// outside the VPC is suspicious; hybrid pod CIDRs must not overlap the VPC.
pub fn vpc_cidrs(config: &Config, vpc: &str, blocks: &[Ipv4Net]) -> Vec<Check> {
    let configured = &config.gateway.vpc_cidrs;
    let list = |v: &[Ipv4Net]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing: Vec<Ipv4Net> = blocks
        .iter()
        .filter(|b| !configured.iter().any(|c| c.contains(*b)))
        .copied()
        .collect();
    let outside: Vec<Ipv4Net> = configured
        .iter()
        .filter(|c| !blocks.iter().any(|b| b.contains(*c)))
        .copied()
        .collect();
    let mut out = Vec::new();
    out.push(if !missing.is_empty() {
        Check::fail(
            "vpc_cidrs",
            format!(
                "{vpc} has {} which gateway.vpc_cidrs ({}) does not cover: hybrid pods cannot reach it",
                list(&missing),
                list(configured)
            ),
            format!("set gateway.vpc_cidrs = [{}]", quoted(blocks)),
        )
    } else if !outside.is_empty() {
        Check::warn(
            "vpc_cidrs",
            format!("gateway.vpc_cidrs has {} outside {vpc} ({})", list(&outside), list(blocks)),
            "remove it unless it is reached through the VPC (peering, transit gateway)",
        )
    } else {
        Check::ok("vpc_cidrs", format!("{vpc}: {} all configured", list(blocks)))
    });
    let overlapping: Vec<String> = config
        .gateway
        .hybrid_pod_cidrs
        .iter()
        .flat_map(|p| {
            blocks
                .iter()
                .filter(move |b| b.contains(p) || p.contains(*b))
                .map(move |b| format!("{p} overlaps {b}"))
        })
        .collect();
    out.push(if overlapping.is_empty() {
        Check::ok(
            "pod_cidr_overlap",
            format!(
                "hybrid pod CIDRs {} do not overlap {vpc}",
                list(&config.gateway.hybrid_pod_cidrs)
            ),
        )
    } else {
        Check::fail(
            "pod_cidr_overlap",
            format!("{} (in {vpc})", overlapping.join(", ")),
            "give the hybrid nodes' Cilium IPAM pod CIDRs outside the VPC, and set gateway.hybrid_pod_cidrs to them",
        )
    });
    out
}

fn quoted(v: &[Ipv4Net]) -> String {
    v.iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each configured (or tagged) table: found, in this VPC, and writable — a `DryRun`
/// CreateRoute/ReplaceRoute of the first hybrid pod CIDR to the primary ENI, which EC2
/// authorizes and then refuses with `DryRunOperation` without changing anything.
async fn route_tables(
    config: &Config,
    ec2: &aws_sdk_ec2::Client,
    identity: &Identity,
) -> Vec<Check> {
    let mut ids: Vec<String> = config.aws.route_table_ids.clone();
    if let Some(tag) = &config.aws.route_table_tag {
        let call = ec2
            .describe_route_tables()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name(format!("tag:{}", tag.key))
                    .values(&tag.value)
                    .build(),
            )
            .send();
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(r)) => ids.extend(
                r.route_tables()
                    .iter()
                    .filter_map(|t| t.route_table_id().map(String::from)),
            ),
            Ok(Err(e)) => {
                return vec![Check::fail(
                    "route_tables",
                    format!(
                        "listing tables tagged {}={}: {}",
                        tag.key,
                        tag.value,
                        crate::aws::describe_sdk_error(&e)
                    ),
                    "grant ec2:DescribeRouteTables (packaging/iam-policy.json)",
                )]
            }
            Err(_) => {
                return vec![Check::fail(
                    "route_tables",
                    format!("EC2 did not answer within {CALL_TIMEOUT:?}"),
                    "check the route to the EC2 endpoint",
                )]
            }
        }
    }
    if ids.is_empty() {
        return vec![Check::skip("route_tables", "no route tables are managed")];
    }
    ids.sort();
    ids.dedup();
    let mut out = Vec::new();
    for id in ids {
        out.push(route_table(config, ec2, identity, &id).await);
    }
    out
}

async fn route_table(
    config: &Config,
    ec2: &aws_sdk_ec2::Client,
    identity: &Identity,
    id: &str,
) -> Check {
    let name = format!("route_table {id}");
    let call = ec2.describe_route_tables().route_table_ids(id).send();
    let table = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(r)) => r.route_tables().first().cloned(),
        Ok(Err(e)) if e.code() == Some("InvalidRouteTableID.NotFound") => None,
        Ok(Err(e)) => {
            return Check::fail(
                &name,
                crate::aws::describe_sdk_error(&e),
                "grant ec2:DescribeRouteTables (packaging/iam-policy.json)",
            )
        }
        Err(_) => {
            return Check::fail(
                &name,
                format!("EC2 did not answer within {CALL_TIMEOUT:?}"),
                "check the route to the EC2 endpoint",
            )
        }
    };
    let Some(table) = table else {
        return Check::fail(
            &name,
            format!("not found in {}", identity.region),
            "remove it from aws.route_table_ids, or correct the id",
        );
    };
    if table.vpc_id() != Some(identity.vpc_id.as_str()) {
        return Check::fail(
            &name,
            format!(
                "in {} but this gateway is in {}: the daemon leaves it alone",
                table.vpc_id().unwrap_or("an unknown VPC"),
                identity.vpc_id
            ),
            "remove it from aws.route_table_ids (gateways only route their own VPC)",
        );
    }
    let Some(cidr) = config.gateway.hybrid_pod_cidrs.first() else {
        return Check::ok(&name, format!("found in {}", identity.vpc_id));
    };
    let cidr = cidr.to_string();
    // ReplaceRoute with DryRun, to the target the route has now: real EC2 authorizes it and
    // answers DryRunOperation without acting; an endpoint that ignores DryRun (moto) makes
    // a no-op write. With no route yet, to our ENI: EC2 still answers DryRunOperation.
    let current = table
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some(cidr.as_str()));
    let mut call = ec2
        .replace_route()
        .dry_run(true)
        .route_table_id(id)
        .destination_cidr_block(&cidr);
    call = match current {
        None => call.network_interface_id(&identity.primary_eni),
        Some(r) => {
            if let Some(v) = r.network_interface_id() {
                call.network_interface_id(v)
            } else if let Some(v) = r.transit_gateway_id() {
                call.transit_gateway_id(v)
            } else if let Some(v) = r.gateway_id() {
                call.gateway_id(v)
            } else if let Some(v) = r.vpc_peering_connection_id() {
                call.vpc_peering_connection_id(v)
            } else if let Some(v) = r.nat_gateway_id() {
                call.nat_gateway_id(v)
            } else {
                return Check::ok(
                    &name,
                    format!("in {}; {cidr} has a target this check cannot re-state, writability not probed", identity.vpc_id),
                );
            }
        }
    };
    match tokio::time::timeout(CALL_TIMEOUT, call.send()).await {
        Ok(Err(e)) if e.code() == Some("DryRunOperation") => Check::ok(
            &name,
            format!("in {}, ReplaceRoute {cidr} allowed (DryRun)", identity.vpc_id),
        ),
        Ok(Err(e)) if e.code() == Some("UnauthorizedOperation") => Check::fail(
            &name,
            format!("ReplaceRoute {cidr} refused: {}", crate::aws::describe_sdk_error(&e)),
            format!("grant ec2:CreateRoute and ec2:ReplaceRoute on {id} to the instance role (packaging/iam-policy.json)"),
        ),
        Ok(Ok(_)) => Check::ok(
            &name,
            format!("in {}, ReplaceRoute {cidr} allowed (this endpoint ignored DryRun: the route was re-set to its current target)", identity.vpc_id),
        ),
        Ok(Err(e)) => Check::warn(
            &name,
            format!("ReplaceRoute {cidr} (DryRun): {}", crate::aws::describe_sdk_error(&e)),
            "look at the error; the leader's route sync logs the same",
        ),
        Err(_) => Check::fail(
            &name,
            format!("EC2 did not answer within {CALL_TIMEOUT:?}"),
            "check the route to the EC2 endpoint",
        ),
    }
}

async fn dynamodb_table(sdk: &SdkConfig, table: &str) -> Check {
    let name = format!("dynamodb {table}");
    let client = aws_sdk_dynamodb::Client::new(sdk);
    let call = client.describe_table().table_name(table).send();
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(r)) => {
            let status = r
                .table()
                .and_then(|t| t.table_status())
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|| "unknown".into());
            if status == "ACTIVE" {
                Check::ok(&name, "the lock table exists and is ACTIVE")
            } else {
                Check::warn(&name, format!("status {status}"), "wait for it to become ACTIVE")
            }
        }
        Ok(Err(e)) => Check::fail(
            &name,
            crate::aws::describe_sdk_error(&e),
            "create the table (terraform/) or grant dynamodb:DescribeTable, GetItem, PutItem, UpdateItem",
        ),
        Err(_) => Check::fail(
            &name,
            format!("DynamoDB did not answer within {CALL_TIMEOUT:?}"),
            "check the route to the DynamoDB endpoint",
        ),
    }
}

/// May this host write lock items? A PutItem whose condition cannot hold (the probe item
/// never exists) is refused by DynamoDB *after* authorization: ConditionalCheckFailed
/// proves the permission and the route to the table, and nothing is stored.
async fn dynamodb_write(sdk: &SdkConfig, table: &str, instance: &str) -> Check {
    use aws_sdk_dynamodb::types::AttributeValue;
    let name = format!("dynamodb {table} write");
    let client = aws_sdk_dynamodb::Client::new(sdk);
    let call = client
        .put_item()
        .table_name(table)
        .item(
            crate::election::dynamodb::KEY,
            AttributeValue::S(format!("hybrid-gateway-doctor-probe/{instance}")),
        )
        .condition_expression("attribute_exists(#k)")
        .expression_attribute_names("#k", crate::election::dynamodb::KEY)
        .send();
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Err(e))
            if e
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Check::ok(&name, "PutItem allowed (probed with a condition that cannot hold: nothing stored)")
        }
        Ok(Ok(_)) => Check::fail(
            &name,
            "a conditional PutItem that cannot succeed succeeded: this endpoint ignores conditions, and the lock cannot be safe on it",
            "point election.dynamodb at real DynamoDB (or DynamoDB Local)",
        ),
        Ok(Err(e)) => Check::fail(
            &name,
            crate::aws::describe_sdk_error(&e),
            "grant dynamodb:GetItem and dynamodb:PutItem on the table (packaging/iam-policy.json)",
        ),
        Err(_) => Check::fail(
            &name,
            format!("DynamoDB did not answer within {CALL_TIMEOUT:?}"),
            "check the route to the DynamoDB endpoint",
        ),
    }
}

/// The instance id in an election identity (`i-0123…_suffix`), if it is one.
pub fn instance_of(identity: &str) -> Option<&str> {
    let id = identity.split('_').next()?;
    (id.starts_with("i-") && id.len() > 2).then_some(id)
}

/// The gateways we can know of (this one, `aws.gateway_instance_ids`, the Lease holder,
/// the members of this instance's Auto Scaling group) and their Availability Zones: all
/// in one zone is a warning (a zone outage takes them all), this one alone is a warning
/// (no standby).
pub async fn gateways(config: &Config, aws: &Aws, holder: Option<&str>) -> Check {
    let me = &aws.identity.instance_id;
    let mut ids: Vec<String> = vec![me.clone()];
    ids.extend(config.aws.gateway_instance_ids.iter().cloned());
    ids.extend(holder.and_then(instance_of).map(String::from));
    ids.extend(asg_members(&aws.ec2, me).await);
    ids.sort();
    ids.dedup();
    // By filter, not by InstanceIds: one id that does not exist (a gateway terminated
    // long ago, still listed in the config) fails an InstanceIds call as a whole.
    let call = aws
        .ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-id")
                .set_values(Some(ids))
                .build(),
        )
        .send();
    let found: Vec<(String, String, bool)> = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(r)) => r
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| {
                let running = i
                    .state()
                    .and_then(|s| s.name())
                    .is_none_or(|n| n.as_str() == "running" || n.as_str() == "pending");
                let az = i.placement()?.availability_zone()?.to_string();
                Some((i.instance_id()?.to_string(), az, running))
            })
            .collect(),
        Ok(Err(e)) => {
            return Check::fail(
                "gateways",
                crate::aws::describe_sdk_error(&e),
                "grant ec2:DescribeInstances (packaging/iam-policy.json)",
            )
        }
        Err(_) => {
            return Check::fail(
                "gateways",
                format!("EC2 did not answer within {CALL_TIMEOUT:?}"),
                "check the route to the EC2 endpoint",
            )
        }
    };
    let zones: Vec<(String, String)> = found
        .iter()
        .filter(|(_, _, running)| *running)
        .map(|(i, az, _)| (i.clone(), az.clone()))
        .collect();
    let verdict = gateways_verdict(me, &zones);
    let stale = stale_ids(&config.aws.gateway_instance_ids, &found);
    if stale.is_empty() {
        return verdict;
    }
    // Not a failure: route takeover only reads the list. But a listed gateway that is not
    // running is no standby, and the list is what an operator trusts.
    Check::warn(
        "gateways",
        format!(
            "{}; aws.gateway_instance_ids lists {}",
            verdict.detail,
            stale.join(", ")
        ),
        format!(
            "remove {} from aws.gateway_instance_ids{}",
            if stale.len() == 1 { "it" } else { "them" },
            verdict
                .fix
                .as_deref()
                .map(|f| format!("; {f}"))
                .unwrap_or_default()
        ),
    )
}

/// The configured gateway ids that are not a running instance, each with why.
pub fn stale_ids(configured: &[String], found: &[(String, String, bool)]) -> Vec<String> {
    configured
        .iter()
        .filter_map(|id| match found.iter().find(|(i, _, _)| i == id) {
            None => Some(format!("{id}, which does not exist")),
            Some((_, _, false)) => Some(format!("{id}, which is not running")),
            Some(_) => None,
        })
        .collect()
}

/// The verdict on the gateways found (instance, AZ), `me` among them.
pub fn gateways_verdict(me: &str, zones: &[(String, String)]) -> Check {
    let list = zones
        .iter()
        .map(|(i, az)| {
            if i == me {
                format!("{i} ({az}, this one)")
            } else {
                format!("{i} ({az})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut azs: Vec<&str> = zones.iter().map(|(_, az)| az.as_str()).collect();
    azs.sort_unstable();
    azs.dedup();
    match (zones.len(), azs.len()) {
        (0 | 1, _) => Check::warn(
            "gateways",
            format!("only this gateway is known: {list}; nothing takes over when it fails"),
            "run at least two gateways (the Auto Scaling group's desired capacity), or list them in aws.gateway_instance_ids",
        ),
        (_, 1) => Check::warn(
            "gateways",
            format!("all in {}: {list}; one zone's outage takes every gateway", azs[0]),
            "spread the Auto Scaling group over subnets in two or more Availability Zones",
        ),
        _ => Check::ok("gateways", format!("{} in {} zones: {list}", zones.len(), azs.len())),
    }
}

/// The instances of this instance's Auto Scaling group (by its `aws:autoscaling:groupName`
/// tag, read with DescribeInstances: the policy grants no DescribeTags), if it has one;
/// empty when that cannot be read.
async fn asg_members(ec2: &aws_sdk_ec2::Client, me: &str) -> Vec<String> {
    use aws_sdk_ec2::types::Filter;
    const TAG: &str = "aws:autoscaling:groupName";
    let mine = ec2.describe_instances().instance_ids(me).send();
    let group = match tokio::time::timeout(CALL_TIMEOUT, mine).await {
        Ok(Ok(r)) => r
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .flat_map(|i| i.tags())
            .find(|t| t.key() == Some(TAG))
            .and_then(|t| t.value().map(String::from)),
        _ => None,
    };
    let Some(group) = group else {
        return Vec::new();
    };
    let call = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{TAG}"))
                .values(group)
                .build(),
        )
        .send();
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(r)) => r
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| i.instance_id().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}
