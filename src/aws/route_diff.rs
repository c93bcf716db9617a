//! The pure half of the route-table reconciler: from what the tables hold, the CIDRs we
//! want and whom we trust, decide every write. No I/O, so each ownership rule is covered
//! by unit tests.
//!
//! The contract: in a managed table, every desired CIDR routes to `target` (this gateway's
//! primary ENI), and every other route to `target` is ours to delete. Routes we may not
//! take over (see [`Takeover`]) are left alone and reported.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use ipnet::Ipv4Net;

pub use crate::config::Takeover;

/// Where an existing route sends traffic, as DescribeRouteTables reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A network interface; EC2 adds the instance when the ENI is attached to one.
    Eni {
        id: String,
        instance: Option<String>,
    },
    /// An instance without an ENI id in the answer.
    Instance(String),
    /// The VPC's own `local` route.
    Local,
    TransitGateway(String),
    /// `vgw-...`
    VpnGateway(String),
    /// Any other `GatewayId` (internet gateway, gateway endpoint).
    Gateway(String),
    NatGateway(String),
    Peering(String),
    /// Egress-only IGW, carrier or local gateway, Cloud WAN, ...
    Other(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Eni {
                id,
                instance: Some(i),
            } => write!(f, "{id} ({i})"),
            Target::Eni { id, instance: None } => f.write_str(id),
            Target::Instance(i) => write!(f, "instance {i}"),
            Target::Local => f.write_str("local"),
            Target::TransitGateway(id) => write!(f, "transit gateway {id}"),
            Target::VpnGateway(id) => write!(f, "VPN gateway {id}"),
            Target::Gateway(id) => write!(f, "gateway {id}"),
            Target::NatGateway(id) => write!(f, "NAT gateway {id}"),
            Target::Peering(id) => write!(f, "peering connection {id}"),
            Target::Other(what) => f.write_str(what),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRoute {
    pub destination: Ipv4Net,
    pub target: Target,
    /// Put there by VGW route propagation, not by CreateRoute.
    pub propagated: bool,
    /// EC2 says the target is gone (state `blackhole`).
    pub blackhole: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTable {
    pub id: String,
    /// IPv4 CIDR routes only: IPv6 and prefix-list routes can never be ours.
    pub routes: Vec<ObservedRoute>,
}

/// Gateways whose routes `takeover = "owned"` may replace: every ENI and instance of our
/// Auto Scaling group and of `aws.gateway_instance_ids`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trusted {
    pub enis: HashSet<String>,
    pub instances: HashSet<String>,
}

impl Trusted {
    fn covers(&self, target: &Target) -> bool {
        match target {
            Target::Eni { id, instance } => {
                self.enis.contains(id)
                    || instance
                        .as_ref()
                        .is_some_and(|i| self.instances.contains(i))
            }
            Target::Instance(i) => self.instances.contains(i),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WriteKind {
    Create,
    Replace,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub table: String,
    pub cidr: Ipv4Net,
    pub kind: WriteKind,
    /// What the route pointed at before (Replace, Delete).
    pub previous: Option<Target>,
}

/// Why a route for a desired CIDR was not taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Points at something that is not a gateway of ours (`takeover = "owned"`).
    Foreign,
    /// Propagated by a VPN gateway (`takeover = "owned"`).
    Propagated,
    /// The VPC's local route: never ours, whatever `takeover` says.
    Local,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Foreign => {
                "points at a target that is not a hybrid gateway (takeover = \"owned\")"
            }
            Reason::Propagated => "is propagated by a VPN gateway (takeover = \"owned\")",
            Reason::Local => "is the VPC's local route",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftAlone {
    pub table: String,
    pub cidr: Ipv4Net,
    pub target: Target,
    pub reason: Reason,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub left_alone: Vec<LeftAlone>,
    /// (table, CIDR) pairs already right.
    pub unchanged: usize,
}

/// Routes for desired CIDRs that point at another ENI or instance: the ownership guard
/// needs to know whether they belong to a gateway. Empty means no lookup is needed.
pub fn needs_trust(tables: &[ObservedTable], desired: &[Ipv4Net], target: &str) -> bool {
    let desired: HashSet<_> = desired.iter().collect();
    tables.iter().flat_map(|t| &t.routes).any(|r| {
        desired.contains(&r.destination)
            && !r.propagated
            && !r.blackhole
            && match &r.target {
                Target::Eni { id, .. } => id != target,
                Target::Instance(_) => true,
                _ => false,
            }
    })
}

pub fn plan(
    tables: &[ObservedTable],
    desired: &[Ipv4Net],
    target: &str,
    takeover: Takeover,
    trusted: &Trusted,
) -> Plan {
    let wanted: BTreeSet<Ipv4Net> = desired.iter().copied().collect();
    let mut out = Plan::default();
    for table in tables {
        // Per destination: the static route (at most one) and whether one is propagated.
        let mut by_dest: BTreeMap<Ipv4Net, (Option<&ObservedRoute>, Option<&ObservedRoute>)> =
            BTreeMap::new();
        for r in &table.routes {
            let slot = by_dest.entry(r.destination).or_default();
            if r.propagated {
                slot.1 = Some(r);
            } else {
                slot.0 = Some(r);
            }
        }
        let write = |cidr: Ipv4Net, kind, previous: Option<&Target>| Write {
            table: table.id.clone(),
            cidr,
            kind,
            previous: previous.cloned(),
        };
        let leave = |cidr: Ipv4Net, target: &Target, reason| LeftAlone {
            table: table.id.clone(),
            cidr,
            target: target.clone(),
            reason,
        };

        for &cidr in &wanted {
            match by_dest.get(&cidr).copied().unwrap_or_default() {
                (Some(r), _) => {
                    let ours = matches!(&r.target, Target::Eni { id, .. } if id == target);
                    if ours && !r.blackhole {
                        out.unchanged += 1;
                    } else if r.target == Target::Local {
                        out.left_alone.push(leave(cidr, &r.target, Reason::Local));
                    } else if ours
                        || r.blackhole
                        || takeover == Takeover::Any
                        || trusted.covers(&r.target)
                    {
                        out.writes
                            .push(write(cidr, WriteKind::Replace, Some(&r.target)));
                    } else {
                        out.left_alone.push(leave(cidr, &r.target, Reason::Foreign));
                    }
                }
                // Only a propagated route: a static one takes precedence over it in EC2,
                // so "any" creates ours next to it; "owned" leaves the VPN's route be.
                (None, Some(p)) if takeover == Takeover::Owned => {
                    out.left_alone
                        .push(leave(cidr, &p.target, Reason::Propagated));
                }
                (None, _) => out.writes.push(write(cidr, WriteKind::Create, None)),
            }
        }

        // Our routes for CIDRs no longer wanted (removed from the config, or everything on
        // cleanup). Only static routes to exactly our ENI: nothing else is provably ours.
        for (cidr, (stat, _)) in &by_dest {
            if let Some(r) = stat {
                if !wanted.contains(cidr)
                    && matches!(&r.target, Target::Eni { id, .. } if id == target)
                {
                    out.writes
                        .push(write(*cidr, WriteKind::Delete, Some(&r.target)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "eni-aaaa";
    const PEER: &str = "eni-bbbb";

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn eni(id: &str) -> Target {
        Target::Eni {
            id: id.into(),
            instance: None,
        }
    }

    fn route(dest: &str, target: Target) -> ObservedRoute {
        ObservedRoute {
            destination: net(dest),
            target,
            propagated: false,
            blackhole: false,
        }
    }

    fn table(routes: Vec<ObservedRoute>) -> Vec<ObservedTable> {
        let mut all = vec![route("10.250.0.0/16", Target::Local)];
        all.extend(routes);
        vec![ObservedTable {
            id: "rtb-1".into(),
            routes: all,
        }]
    }

    fn trusted_peer() -> Trusted {
        Trusted {
            enis: [PEER.to_string()].into(),
            instances: ["i-peer".to_string()].into(),
        }
    }

    fn kinds(p: &Plan) -> Vec<(String, WriteKind)> {
        p.writes
            .iter()
            .map(|w| (w.cidr.to_string(), w.kind))
            .collect()
    }

    const A: &str = "192.168.32.0/23";
    const B: &str = "192.168.34.0/23";

    #[test]
    fn creates_missing_and_keeps_right_ones() {
        let p = plan(
            &table(vec![route(A, eni(ME))]),
            &[net(A), net(B)],
            ME,
            Takeover::Owned,
            &Trusted::default(),
        );
        assert_eq!(kinds(&p), [(B.to_string(), WriteKind::Create)]);
        assert_eq!(p.unchanged, 1);
        assert!(p.left_alone.is_empty());
    }

    #[test]
    fn replaces_a_trusted_gateway_route() {
        let t = table(vec![route(A, eni(PEER))]);
        assert!(needs_trust(&t, &[net(A)], ME));
        let p = plan(&t, &[net(A)], ME, Takeover::Owned, &trusted_peer());
        assert_eq!(kinds(&p), [(A.to_string(), WriteKind::Replace)]);
        assert_eq!(p.writes[0].previous, Some(eni(PEER)));
        // Trusted by the instance EC2 reports for the ENI, too.
        let by_instance = table(vec![route(
            A,
            Target::Eni {
                id: "eni-other".into(),
                instance: Some("i-peer".into()),
            },
        )]);
        let p = plan(
            &by_instance,
            &[net(A)],
            ME,
            Takeover::Owned,
            &trusted_peer(),
        );
        assert_eq!(kinds(&p), [(A.to_string(), WriteKind::Replace)]);
    }

    #[test]
    fn foreign_routes_are_left_alone_under_owned() {
        for target in [
            Target::TransitGateway("tgw-1".into()),
            Target::VpnGateway("vgw-1".into()),
            Target::Peering("pcx-1".into()),
            Target::NatGateway("nat-1".into()),
            eni("eni-unknown"),
        ] {
            let p = plan(
                &table(vec![route(A, target.clone())]),
                &[net(A)],
                ME,
                Takeover::Owned,
                &trusted_peer(),
            );
            assert!(p.writes.is_empty(), "{target}: {p:?}");
            assert_eq!(p.left_alone.len(), 1);
            assert_eq!(p.left_alone[0].reason, Reason::Foreign);
            assert_eq!(p.left_alone[0].target, target);
        }
    }

    #[test]
    fn any_takes_over_everything_but_local() {
        let t = table(vec![route(A, Target::TransitGateway("tgw-1".into()))]);
        let p = plan(&t, &[net(A)], ME, Takeover::Any, &Trusted::default());
        assert_eq!(kinds(&p), [(A.to_string(), WriteKind::Replace)]);
        let p = plan(
            &t,
            &[net("10.250.0.0/16")],
            ME,
            Takeover::Any,
            &Trusted::default(),
        );
        assert!(p.writes.is_empty());
        assert_eq!(p.left_alone[0].reason, Reason::Local);
    }

    #[test]
    fn blackholes_are_replaced_under_owned() {
        let mut r = route(A, eni("eni-deleted"));
        r.blackhole = true;
        let t = table(vec![r]);
        assert!(!needs_trust(&t, &[net(A)], ME));
        let p = plan(&t, &[net(A)], ME, Takeover::Owned, &Trusted::default());
        assert_eq!(kinds(&p), [(A.to_string(), WriteKind::Replace)]);
        // Our own route turned blackhole (ENI recreated under the same id is impossible,
        // but EC2 may report it while the ENI detaches): rewrite it.
        let mut r = route(A, eni(ME));
        r.blackhole = true;
        let p = plan(
            &table(vec![r]),
            &[net(A)],
            ME,
            Takeover::Owned,
            &Trusted::default(),
        );
        assert_eq!(kinds(&p), [(A.to_string(), WriteKind::Replace)]);
    }

    #[test]
    fn propagated_routes() {
        let mut r = route(A, Target::VpnGateway("vgw-1".into()));
        r.propagated = true;
        let t = table(vec![r]);
        let p = plan(&t, &[net(A)], ME, Takeover::Owned, &Trusted::default());
        assert!(p.writes.is_empty());
        assert_eq!(p.left_alone[0].reason, Reason::Propagated);
        let p = plan(&t, &[net(A)], ME, Takeover::Any, &Trusted::default());
        assert_eq!(kinds(&p), [(A.to_string(), WriteKind::Create)]);
    }

    #[test]
    fn removed_cidrs_lose_only_our_routes() {
        let t = table(vec![
            route(A, eni(ME)),
            route(B, eni(ME)),
            route("10.9.0.0/16", eni(PEER)),
            route("10.8.0.0/16", Target::TransitGateway("tgw-1".into())),
        ]);
        let p = plan(&t, &[net(A)], ME, Takeover::Any, &trusted_peer());
        assert_eq!(kinds(&p), [(B.to_string(), WriteKind::Delete)]);
        // Cleanup: nothing wanted, every route to us goes; the local route never does.
        let p = plan(&t, &[], ME, Takeover::Owned, &Trusted::default());
        assert_eq!(
            kinds(&p),
            [
                (A.to_string(), WriteKind::Delete),
                (B.to_string(), WriteKind::Delete)
            ]
        );
    }

    #[test]
    fn many_tables_are_planned_independently() {
        let tables: Vec<ObservedTable> = (0..3)
            .map(|i| ObservedTable {
                id: format!("rtb-{i}"),
                routes: if i == 1 {
                    vec![route(A, eni(ME))]
                } else {
                    vec![]
                },
            })
            .collect();
        let p = plan(
            &tables,
            &[net(A), net(B)],
            ME,
            Takeover::Owned,
            &Trusted::default(),
        );
        assert_eq!(p.writes.len(), 5);
        assert_eq!(p.unchanged, 1);
        assert!(!needs_trust(&tables, &[net(A), net(B)], ME));
    }
}
