//! Per-AZ mode's shards: which managed route table, and which VPC subnet's return path,
//! belongs to which Availability Zone — a pure function of what EC2 says ([`layout`]),
//! and the two paginated, bounded reads that feed it ([`read_vpc`]).
//!
//! A managed table belongs to the AZ of the subnets explicitly associated with it. A table
//! whose subnets span AZs, the VPC's main table (it serves every subnet without an explicit
//! association, in any AZ), a table associated with an internet or virtual private gateway
//! (edge association: it routes traffic entering the VPC, from any AZ) and a table with no
//! subnet at all belong to the default shard. Every gateway computes the same layout from
//! the same EC2 state, so two shards never claim one table.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;
use ipnet::Ipv4Net;

use crate::aws::describe_sdk_error;
use crate::config::RouteTableTag;

/// A shard: the default one, or one Availability Zone's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shard {
    Default,
    Zone(String),
}

impl Shard {
    /// The shard's Lease: `<lease_name>-<az>`; the default shard keeps `lease_name`, so a
    /// switch between modes keeps one record (and one term) for it.
    pub fn lease_name(&self, lease_name: &str) -> String {
        match self {
            Shard::Default => lease_name.to_string(),
            Shard::Zone(az) => format!("{lease_name}-{az}"),
        }
    }

    /// The Lease a gateway in this shard's AZ renews while it is ready to lead it (see
    /// `daemon::per_az`); none for the default shard, which has no home.
    pub fn claim_lease_name(&self, lease_name: &str) -> Option<String> {
        match self {
            Shard::Default => None,
            Shard::Zone(az) => Some(format!("{lease_name}-{az}-home")),
        }
    }

    /// The shard's DynamoDB lock item (`election.dynamodb.key`): `<key>-<az>`; the default
    /// shard keeps `key`, so a switch between modes keeps one item (and one term) for it,
    /// as the Lease does.
    pub fn lock_key(&self, key: &str) -> String {
        match self {
            Shard::Default => key.to_string(),
            Shard::Zone(az) => format!("{key}-{az}"),
        }
    }

    /// `default` or the AZ name: status, metrics and the CiliumVTEPConfig's names.
    pub fn name(&self) -> &str {
        match self {
            Shard::Default => "default",
            Shard::Zone(az) => az,
        }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A route table as the layout needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableInfo {
    pub id: String,
    /// The VPC's main route table.
    pub main: bool,
    /// Associated with an internet or virtual private gateway (ingress routing).
    pub edge: bool,
    /// Subnets explicitly associated with it.
    pub subnets: Vec<String>,
    pub tags: Vec<(String, String)>,
}

/// A subnet as the layout needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetInfo {
    pub id: String,
    pub az: String,
    pub cidr: Ipv4Net,
}

/// What per-AZ mode does with a VPC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// Managed tables per shard. The default shard is always present (possibly empty).
    pub tables: BTreeMap<Shard, Vec<String>>,
    /// Every subnet inside `gateway.vpc_cidrs` and the shard whose leader its return
    /// traffic goes through: the shard of the managed table it is explicitly associated
    /// with, else (main table, unmanaged or multi-AZ table) the default shard. The same
    /// gateway then carries a zone's traffic both ways.
    pub subnets: Vec<(Ipv4Net, Shard)>,
    /// Managed ids EC2 did not return (deleted, another VPC).
    pub missing: Vec<String>,
}

impl Layout {
    /// The shards with an AZ.
    pub fn zones(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().filter_map(|s| match s {
            Shard::Zone(az) => Some(az.as_str()),
            Shard::Default => None,
        })
    }

    pub fn tables_of(&self, shard: &Shard) -> &[String] {
        self.tables.get(shard).map_or(&[], Vec::as_slice)
    }

    /// Whether the CiliumVTEPConfig can say per subnet which gateway to return through:
    /// at most `max` endpoints (Cilium's BPF map holds 8) and one prefix length for all
    /// (the `v2` shape applies one `cidrMask` to every endpoint). `Err` says why not.
    pub fn endpoints_expressible(&self, max: usize) -> Result<(), String> {
        if self.subnets.is_empty() {
            return Err("no subnet of the VPC lies inside gateway.vpc_cidrs".into());
        }
        if self.subnets.len() > max {
            return Err(format!(
                "{} subnets inside gateway.vpc_cidrs, and Cilium takes at most {max} VTEP endpoints",
                self.subnets.len()
            ));
        }
        let lens: BTreeSet<u8> = self.subnets.iter().map(|(c, _)| c.prefix_len()).collect();
        if lens.len() > 1 {
            let shown: Vec<String> = lens.iter().map(|l| format!("/{l}")).collect();
            return Err(format!(
                "the subnets inside gateway.vpc_cidrs have prefix lengths {}, and Cilium applies one cidrMask to every VTEP endpoint",
                shown.join(", ")
            ));
        }
        Ok(())
    }
}

/// Which tables are managed: by id, or by tag (the selection of `[aws]`).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ids: Vec<String>,
    pub tag: Option<RouteTableTag>,
}

impl Selection {
    fn selects(&self, t: &TableInfo) -> bool {
        self.ids.contains(&t.id)
            || self
                .tag
                .as_ref()
                .is_some_and(|tag| t.tags.iter().any(|(k, v)| *k == tag.key && *v == tag.value))
    }
}

/// The layout of one VPC: `tables` and `subnets` are every table and subnet of it,
/// `selection` the managed ones, `vpc_cidrs` the CIDRs whose subnets get endpoints.
pub fn layout(
    tables: &[TableInfo],
    subnets: &[SubnetInfo],
    selection: &Selection,
    vpc_cidrs: &[Ipv4Net],
) -> Layout {
    let az_of: BTreeMap<&str, &str> = subnets
        .iter()
        .map(|s| (s.id.as_str(), s.az.as_str()))
        .collect();
    let mut out = Layout::default();
    out.tables.insert(Shard::Default, Vec::new());
    // The shard of every table (managed or not) with explicit subnets, for the subnets.
    let mut shard_of_subnet: BTreeMap<&str, Shard> = BTreeMap::new();
    for t in tables {
        let managed = selection.selects(t);
        let shard = shard_of_table(t, &az_of);
        if managed {
            out.tables
                .entry(shard.clone())
                .or_default()
                .push(t.id.clone());
        }
        for s in &t.subnets {
            let shard = if managed {
                shard.clone()
            } else {
                Shard::Default
            };
            shard_of_subnet.insert(s.as_str(), shard);
        }
    }
    for ids in out.tables.values_mut() {
        ids.sort();
    }
    out.missing = selection
        .ids
        .iter()
        .filter(|id| !tables.iter().any(|t| &t.id == *id))
        .cloned()
        .collect();
    let mut subs: Vec<(Ipv4Net, Shard)> = subnets
        .iter()
        .filter(|s| vpc_cidrs.iter().any(|v| v.contains(&s.cidr)))
        .map(|s| {
            let shard = shard_of_subnet
                .get(s.id.as_str())
                .cloned()
                .unwrap_or(Shard::Default);
            (s.cidr, shard)
        })
        .collect();
    subs.sort();
    subs.dedup();
    out.subnets = subs;
    out
}

fn shard_of_table(t: &TableInfo, az_of: &BTreeMap<&str, &str>) -> Shard {
    if t.main || t.edge || t.subnets.is_empty() {
        return Shard::Default;
    }
    let azs: BTreeSet<Option<&&str>> = t.subnets.iter().map(|s| az_of.get(s.as_str())).collect();
    match azs.into_iter().collect::<Vec<_>>()[..] {
        [Some(az)] => Shard::Zone((*az).to_string()),
        // Several AZs, or a subnet EC2 did not describe (we cannot tell its AZ).
        _ => Shard::Default,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    #[error("{call}: {cause}")]
    Call { call: &'static str, cause: String },
}

/// DescribeRouteTables' and DescribeSubnets' page limit.
const PAGE: i32 = 100;

/// Every route table and subnet of `vpc_id`: two paginated calls, each page bounded by
/// `timeout`. Read by every gateway, leader or not (reads only).
pub async fn read_vpc(
    ec2: &Client,
    vpc_id: &str,
    timeout: Duration,
) -> Result<(Vec<TableInfo>, Vec<SubnetInfo>), ShardsError> {
    let vpc = || Filter::builder().name("vpc-id").values(vpc_id).build();
    let mut tables = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let call = ec2
            .describe_route_tables()
            .filters(vpc())
            .max_results(PAGE)
            .set_next_token(token.take())
            .send();
        let resp = bounded("DescribeRouteTables", timeout, call).await?;
        for rt in resp.route_tables() {
            let Some(id) = rt.route_table_id() else {
                continue;
            };
            let mut t = TableInfo {
                id: id.to_string(),
                ..TableInfo::default()
            };
            for a in rt.associations() {
                if a.main() == Some(true) {
                    t.main = true;
                } else if let Some(s) = a.subnet_id() {
                    t.subnets.push(s.to_string());
                } else if a.gateway_id().is_some() {
                    t.edge = true;
                }
            }
            t.tags = rt
                .tags()
                .iter()
                .filter_map(|tag| Some((tag.key()?.to_string(), tag.value()?.to_string())))
                .collect();
            tables.push(t);
        }
        token = resp
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let mut subnets = Vec::new();
    loop {
        let call = ec2
            .describe_subnets()
            .filters(vpc())
            .max_results(PAGE)
            .set_next_token(token.take())
            .send();
        let resp = bounded("DescribeSubnets", timeout, call).await?;
        for s in resp.subnets() {
            let (Some(id), Some(az), Some(cidr)) =
                (s.subnet_id(), s.availability_zone(), s.cidr_block())
            else {
                continue;
            };
            // An unparsable CIDR from EC2 is skipped: that subnet gets no endpoint.
            if let Ok(cidr) = cidr.parse() {
                subnets.push(SubnetInfo {
                    id: id.to_string(),
                    az: az.to_string(),
                    cidr,
                });
            }
        }
        token = resp
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    Ok((tables, subnets))
}

async fn bounded<T, E, R>(
    call: &'static str,
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, aws_sdk_ec2::error::SdkError<E, R>>>,
) -> Result<T, ShardsError>
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(ShardsError::Call {
            call,
            cause: describe_sdk_error(&e),
        }),
        Err(_) => Err(ShardsError::Call {
            call,
            cause: format!("no answer within {timeout:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(id: &str, subnets: &[&str]) -> TableInfo {
        TableInfo {
            id: id.into(),
            subnets: subnets.iter().map(|s| s.to_string()).collect(),
            tags: vec![("managed".into(), "yes".into())],
            ..TableInfo::default()
        }
    }

    fn subnet(id: &str, az: &str, cidr: &str) -> SubnetInfo {
        SubnetInfo {
            id: id.into(),
            az: az.into(),
            cidr: cidr.parse().unwrap(),
        }
    }

    fn vpc() -> Vec<SubnetInfo> {
        vec![
            subnet("subnet-a1", "us-east-1a", "10.250.1.0/24"),
            subnet("subnet-a2", "us-east-1a", "10.250.2.0/24"),
            subnet("subnet-b1", "us-east-1b", "10.250.11.0/24"),
            subnet("subnet-c1", "us-east-1c", "10.250.21.0/24"),
            subnet("subnet-x", "us-east-1a", "172.31.0.0/24"),
        ]
    }

    fn by_tag() -> Selection {
        Selection {
            ids: vec![],
            tag: Some(RouteTableTag {
                key: "managed".into(),
                value: "yes".into(),
            }),
        }
    }

    fn cidrs() -> Vec<Ipv4Net> {
        vec!["10.250.0.0/16".parse().unwrap()]
    }

    #[test]
    fn a_table_belongs_to_the_az_of_its_subnets_the_rest_to_the_default_shard() {
        let mut main = table("rtb-main", &[]);
        main.main = true;
        let mut edge = table("rtb-edge", &[]);
        edge.edge = true;
        let mut unmanaged = table("rtb-other", &["subnet-c1"]);
        unmanaged.tags.clear();
        let tables = vec![
            table("rtb-a", &["subnet-a1", "subnet-a2"]),
            table("rtb-b", &["subnet-b1"]),
            table("rtb-span", &["subnet-a1", "subnet-b1"]),
            table("rtb-unknown-subnet", &["subnet-gone"]),
            table("rtb-empty", &[]),
            main,
            edge,
            unmanaged,
        ];
        let l = layout(&tables, &vpc(), &by_tag(), &cidrs());
        let zone = |z: &str| Shard::Zone(z.into());
        assert_eq!(l.tables_of(&zone("us-east-1a")), ["rtb-a"]);
        assert_eq!(l.tables_of(&zone("us-east-1b")), ["rtb-b"]);
        assert_eq!(
            l.tables_of(&Shard::Default),
            [
                "rtb-edge",
                "rtb-empty",
                "rtb-main",
                "rtb-span",
                "rtb-unknown-subnet"
            ]
        );
        assert!(
            l.tables_of(&zone("us-east-1c")).is_empty(),
            "an unmanaged table makes no shard"
        );
        assert_eq!(l.zones().collect::<Vec<_>>(), ["us-east-1a", "us-east-1b"]);
    }

    #[test]
    fn subnets_return_through_the_shard_of_their_table() {
        let tables = vec![
            table("rtb-a", &["subnet-a1"]),
            table("rtb-b", &["subnet-b1"]),
        ];
        let l = layout(&tables, &vpc(), &by_tag(), &cidrs());
        let zone = |z: &str| Shard::Zone(z.into());
        assert_eq!(
            l.subnets,
            vec![
                ("10.250.1.0/24".parse().unwrap(), zone("us-east-1a")),
                // On the main table (no explicit association): default shard.
                ("10.250.2.0/24".parse().unwrap(), Shard::Default),
                ("10.250.11.0/24".parse().unwrap(), zone("us-east-1b")),
                ("10.250.21.0/24".parse().unwrap(), Shard::Default),
            ],
            "172.31.0.0/24 lies outside gateway.vpc_cidrs"
        );
        assert_eq!(l.endpoints_expressible(8), Ok(()));
        assert!(l
            .endpoints_expressible(3)
            .unwrap_err()
            .contains("at most 3"));
    }

    #[test]
    fn mixed_prefix_lengths_cannot_be_one_cidr_mask() {
        let mut subnets = vpc();
        subnets.push(subnet("subnet-big", "us-east-1b", "10.250.128.0/20"));
        let l = layout(&[], &subnets, &by_tag(), &cidrs());
        let why = l.endpoints_expressible(8).unwrap_err();
        assert!(
            why.contains("/20, /24") && why.contains("cidrMask"),
            "{why}"
        );
    }

    #[test]
    fn selection_by_id_reports_missing_ids() {
        let sel = Selection {
            ids: vec!["rtb-a".into(), "rtb-gone".into()],
            tag: None,
        };
        let mut a = table("rtb-a", &["subnet-a1"]);
        a.tags.clear();
        let l = layout(&[a, table("rtb-b", &["subnet-b1"])], &vpc(), &sel, &cidrs());
        assert_eq!(l.tables_of(&Shard::Zone("us-east-1a".into())), ["rtb-a"]);
        assert!(l.tables_of(&Shard::Zone("us-east-1b".into())).is_empty());
        assert_eq!(l.missing, ["rtb-gone"]);
    }

    #[test]
    fn lease_names() {
        assert_eq!(Shard::Default.lease_name("hgw"), "hgw");
        assert_eq!(
            Shard::Zone("us-east-1a".into()).lease_name("hgw"),
            "hgw-us-east-1a"
        );
        assert_eq!(Shard::Default.lock_key("c/hgw"), "c/hgw");
        assert_eq!(
            Shard::Zone("us-east-1a".into()).lock_key("c/hgw"),
            "c/hgw-us-east-1a"
        );
        assert_eq!(Shard::Default.claim_lease_name("hgw"), None);
        assert_eq!(
            Shard::Zone("us-east-1a".into())
                .claim_lease_name("hgw")
                .as_deref(),
            Some("hgw-us-east-1a-home")
        );
    }
}
