//! Per-AZ mode's layout (`[election] mode = "per-az"`), judged from what EC2 says now: the
//! shards the gateways will compute (`aws::shards`, the same function and reads as the
//! daemon's), and whether the CiliumVTEPConfig can name a gateway per subnet or falls back
//! to the default shard's leader. `check-config` makes no AWS call, so this is where the
//! layout is judged before a start.

use super::{Check, CALL_TIMEOUT};
use crate::aws::imds::Identity;
use crate::aws::shards::{self, Layout, Selection, Shard};
use crate::config::Config;
use crate::k8s::vtep_shards::MAX_ENDPOINTS;

pub async fn checks(config: &Config, ec2: &aws_sdk_ec2::Client, identity: &Identity) -> Vec<Check> {
    let (tables, subnets) =
        match shards::read_vpc(ec2, &identity.vpc_id, CALL_TIMEOUT).await {
            Ok(v) => v,
            Err(e) => {
                return vec![Check::fail(
                "per_az_shards",
                format!("reading {}'s route tables and subnets: {e}", identity.vpc_id),
                "grant ec2:DescribeRouteTables and ec2:DescribeSubnets (packaging/iam-policy.json)",
            )]
            }
        };
    let selection = Selection {
        ids: config.aws.route_table_ids.clone(),
        tag: config.aws.route_table_tag.clone(),
    };
    let layout = shards::layout(&tables, &subnets, &selection, &config.gateway.vpc_cidrs);
    verdict(&layout, &identity.availability_zone)
}

/// The two verdicts on a layout, for a gateway in `home_az`.
pub fn verdict(layout: &Layout, home_az: &str) -> Vec<Check> {
    vec![shards_verdict(layout, home_az), vtep_verdict(layout)]
}

fn shards_verdict(layout: &Layout, home_az: &str) -> Check {
    const NAME: &str = "per_az_shards";
    let shown = layout
        .tables
        .iter()
        .map(|(shard, tables)| {
            let tables = if tables.is_empty() {
                "no table".to_string()
            } else {
                tables.join(", ")
            };
            match shard {
                Shard::Zone(az) if az == home_az => format!("{az} (this gateway's): {tables}"),
                shard => format!("{shard}: {tables}"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let zones: Vec<&str> = layout.zones().collect();
    if zones.is_empty() {
        Check::warn(
            NAME,
            format!(
                "{shown}: no managed table is explicitly associated with subnets of one AZ only, so every table is in the default shard and one gateway leads them all, as in active/standby"
            ),
            "associate each managed route table explicitly with subnets of a single Availability Zone (README \"Per-AZ mode\")",
        )
    } else if !zones.contains(&home_az) {
        Check::warn(
            NAME,
            format!(
                "{shown}: no shard in this gateway's AZ {home_az}: it leads only the default shard, or another AZ's while no gateway of that AZ is up"
            ),
            format!(
                "run this gateway in an AZ with a managed table ({}), or associate a managed route table with subnets of {home_az}",
                zones.join(", ")
            ),
        )
    } else {
        Check::ok(NAME, shown)
    }
}

fn vtep_verdict(layout: &Layout) -> Check {
    const NAME: &str = "per_az_vtep_config";
    match layout.endpoints_expressible(MAX_ENDPOINTS) {
        Ok(()) => Check::ok(
            NAME,
            format!(
                "one endpoint per subnet, each naming its shard's leader: {}",
                layout
                    .subnets
                    .iter()
                    .map(|(cidr, shard)| format!("{cidr} → {shard}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        // Not a failure: the daemon runs, with the documented fallback.
        Err(why) => Check::warn(
            NAME,
            format!(
                "{why}: the default shard's leader writes the CiliumVTEPConfig alone, so hybrid → VPC traffic of every zone returns through it (asymmetric paths, more cross-AZ traffic)"
            ),
            format!(
                "keep the subnets inside gateway.vpc_cidrs at most {MAX_ENDPOINTS} and of one prefix length (narrow gateway.vpc_cidrs, or re-plan the subnets); or keep the fallback and let the workloads' and the gateways' security groups allow the hybrid pod CIDRs (README \"Per-AZ mode\")"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn layout(zones: &[(&str, &[&str])], subnets: &[(&str, Shard)]) -> Layout {
        let mut l = Layout::default();
        l.tables.insert(Shard::Default, vec![]);
        for (az, t) in zones {
            l.tables.insert(
                Shard::Zone(az.to_string()),
                t.iter().map(|s| s.to_string()).collect(),
            );
        }
        l.subnets = subnets
            .iter()
            .map(|(c, s)| (c.parse().unwrap(), s.clone()))
            .collect();
        l
    }

    #[test]
    fn the_shards_are_shown_and_a_gateway_without_one_is_warned() {
        let z = |s: &str| Shard::Zone(s.into());
        let l = layout(
            &[("us-west-2a", &["rtb-1"]), ("us-west-2b", &["rtb-2"])],
            &[
                ("10.0.1.0/24", z("us-west-2a")),
                ("10.0.2.0/24", z("us-west-2b")),
            ],
        );
        let v = verdict(&l, "us-west-2a");
        assert_eq!(v[0].status, Status::Ok, "{}", v[0].line());
        assert_eq!(
            v[0].detail,
            "default: no table; us-west-2a (this gateway's): rtb-1; us-west-2b: rtb-2"
        );
        assert_eq!(v[1].status, Status::Ok, "{}", v[1].line());
        assert!(v[1]
            .detail
            .contains("10.0.1.0/24 → us-west-2a, 10.0.2.0/24 → us-west-2b"));

        let elsewhere = verdict(&l, "us-west-2c");
        assert_eq!(elsewhere[0].status, Status::Warn);
        assert!(elsewhere[0]
            .detail
            .contains("no shard in this gateway's AZ us-west-2c"));

        let none = verdict(
            &layout(&[], &[("10.0.1.0/24", Shard::Default)]),
            "us-west-2a",
        );
        assert_eq!(none[0].status, Status::Warn);
        assert!(none[0]
            .line()
            .contains("fix: associate each managed route table"));
    }

    #[test]
    fn a_vpc_cilium_cannot_express_per_subnet_is_warned_with_the_fallback() {
        let l = layout(
            &[("us-west-2a", &["rtb-1"])],
            &[
                ("10.0.1.0/24", Shard::Zone("us-west-2a".into())),
                ("10.0.128.0/20", Shard::Default),
            ],
        );
        let v = verdict(&l, "us-west-2a");
        assert_eq!(v[1].status, Status::Warn, "{}", v[1].line());
        assert!(v[1].detail.contains("/20, /24"), "{}", v[1].line());
        assert!(v[1].detail.contains("default shard's leader writes"));
        assert!(v[1].fix.as_deref().unwrap().contains("security groups"));
    }
}
