//! What the kernel should hold for a set of hybrid nodes, and the smallest set of changes
//! that gets it there. Pure: no I/O, so every corner is unit-tested without root.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::mac::Mac;

/// Routes we write carry this protocol number so a dump can tell our unreachable routes
/// from anyone else's (`ip route show proto 158`).
pub const ROUTE_PROTOCOL: u8 = 158;
/// Metric of the catch-all unreachable routes: higher than the per-node routes (metric 0),
/// so a node whose pod CIDR equals a whole configured range still wins.
pub const UNREACHABLE_METRIC: u32 = 4242;

/// One hybrid node as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HybridNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidrs: Vec<Ipv4Net>,
}

/// Why a node was left out of the desired state. The other nodes are unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    DuplicateIp {
        node: String,
        ip: Ipv4Addr,
        owner: String,
    },
    OverlappingCidr {
        node: String,
        cidr: Ipv4Net,
        owner: String,
        owner_cidr: Ipv4Net,
    },
    OutsidePodCidrs {
        node: String,
        cidr: Ipv4Net,
    },
}

impl Rejection {
    pub fn node(&self) -> &str {
        match self {
            Rejection::DuplicateIp { node, .. }
            | Rejection::OverlappingCidr { node, .. }
            | Rejection::OutsidePodCidrs { node, .. } => node,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::DuplicateIp { node, ip, owner } => {
                write!(f, "node {node}: IP {ip} is already used by node {owner}")
            }
            Rejection::OverlappingCidr {
                node,
                cidr,
                owner,
                owner_cidr,
            } => {
                write!(
                    f,
                    "node {node}: pod CIDR {cidr} overlaps {owner_cidr} of node {owner}"
                )
            }
            Rejection::OutsidePodCidrs { node, cidr } => {
                write!(
                    f,
                    "node {node}: pod CIDR {cidr} is outside gateway.hybrid_pod_cidrs"
                )
            }
        }
    }
}

/// The kernel state the daemon wants on its VXLAN device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Pod CIDR → node IP (`<cidr> via <ip> dev hybrid_vxlan0 onlink`).
    pub routes: BTreeMap<Ipv4Net, Ipv4Addr>,
    /// Node IP → node MAC (permanent ARP entry).
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    /// Node MAC → node IP (`self permanent` FDB entry).
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
    /// Catch-all `unreachable` routes for the configured hybrid pod CIDRs.
    pub unreachable: BTreeSet<Ipv4Net>,
}

impl Desired {
    /// Builds the desired state from `nodes`, in their order: a node that conflicts with one
    /// accepted before it is rejected as a whole, so a misconfigured node can never steal
    /// traffic from a working one. CIDRs outside `pod_cidrs` are refused because a route for
    /// them could capture VPC or Internet traffic.
    pub fn build(nodes: &[HybridNode], pod_cidrs: &[Ipv4Net]) -> (Desired, Vec<Rejection>) {
        let mut desired = Desired {
            unreachable: pod_cidrs.iter().copied().collect(),
            ..Desired::default()
        };
        let mut rejected = Vec::new();
        let mut ip_owner: HashMap<Ipv4Addr, &str> = HashMap::with_capacity(nodes.len());
        // network address → (cidr, owner); lets overlap checks run in O(log n) per CIDR.
        let mut cidr_owner: BTreeMap<Ipv4Addr, (Ipv4Net, &str)> = BTreeMap::new();

        'nodes: for node in nodes {
            if let Some(owner) = ip_owner.get(&node.ip) {
                rejected.push(Rejection::DuplicateIp {
                    node: node.name.clone(),
                    ip: node.ip,
                    owner: owner.to_string(),
                });
                continue;
            }
            let mut accepted: Vec<Ipv4Net> = Vec::with_capacity(node.pod_cidrs.len());
            for cidr in &node.pod_cidrs {
                if !pod_cidrs.iter().any(|allowed| allowed.contains(cidr)) {
                    rejected.push(Rejection::OutsidePodCidrs {
                        node: node.name.clone(),
                        cidr: *cidr,
                    });
                    continue 'nodes;
                }
                let clash = overlapping(&cidr_owner, cidr)
                    .map(|(c, o)| (c, o.to_string()))
                    .or_else(|| {
                        accepted
                            .iter()
                            .find(|a| overlaps(a, cidr))
                            .map(|a| (*a, node.name.clone()))
                    });
                if let Some((owner_cidr, owner)) = clash {
                    if owner_cidr == *cidr && owner == node.name {
                        continue; // the same CIDR listed twice on one node
                    }
                    rejected.push(Rejection::OverlappingCidr {
                        node: node.name.clone(),
                        cidr: *cidr,
                        owner,
                        owner_cidr,
                    });
                    continue 'nodes;
                }
                accepted.push(*cidr);
            }
            ip_owner.insert(node.ip, &node.name);
            let mac = Mac::for_node(node.ip);
            desired.neighbours.insert(node.ip, mac);
            desired.fdb.insert(mac, node.ip);
            for cidr in accepted {
                cidr_owner.insert(cidr.network(), (cidr, &node.name));
                desired.routes.insert(cidr, node.ip);
            }
        }
        (desired, rejected)
    }

    pub fn entry_count(&self) -> usize {
        self.routes.len() + self.neighbours.len() + self.fdb.len() + self.unreachable.len()
    }
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// An accepted CIDR that overlaps `cidr`: a supernet of it (one lookup per shorter prefix)
/// or a subnet of it (a range scan over its addresses).
fn overlapping<'a>(
    owned: &BTreeMap<Ipv4Addr, (Ipv4Net, &'a str)>,
    cidr: &Ipv4Net,
) -> Option<(Ipv4Net, &'a str)> {
    if let Some((_, v)) = owned.range(cidr.network()..=cidr.broadcast()).next() {
        return Some(*v);
    }
    (0..cidr.prefix_len()).find_map(|len| {
        let sup = Ipv4Net::new(cidr.network(), len).ok()?.trunc();
        owned
            .get(&sup.network())
            .filter(|(c, _)| c.contains(cidr))
            .copied()
    })
}

/// A route the kernel holds that the daemon owns: any IPv4 route in the main table whose
/// output device is ours, or an `unreachable` route carrying [`ROUTE_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: Ipv4Net,
    pub metric: u32,
    pub protocol: u8,
    pub kind: KernelRouteKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelRouteKind {
    /// A unicast route out of our device.
    Device {
        gateway: Option<Ipv4Addr>,
        onlink: bool,
        universe: bool,
    },
    Unreachable,
}

/// An IPv4 neighbour entry on our device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNeighbour {
    pub ip: Ipv4Addr,
    pub mac: Option<Mac>,
    pub permanent: bool,
}

/// A VXLAN FDB entry on our device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFdb {
    pub mac: Mac,
    pub dst: Option<Ipv4Addr>,
    pub permanent: bool,
}

/// What the kernel holds on (or for) our device, as read by netlink dumps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Actual {
    pub routes: Vec<KernelRoute>,
    pub neighbours: Vec<KernelNeighbour>,
    pub fdb: Vec<KernelFdb>,
}

/// One kernel change. Every add is a create-or-replace, so a plan is safe to re-run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    SetRoute { dst: Ipv4Net, via: Ipv4Addr },
    SetUnreachable { dst: Ipv4Net },
    DelRoute(KernelRoute),
    SetNeighbour { ip: Ipv4Addr, mac: Mac },
    DelNeighbour { ip: Ipv4Addr },
    SetFdb { mac: Mac, dst: Ipv4Addr },
    DelFdb { mac: Mac, dst: Option<Ipv4Addr> },
}

/// The changes, in four phases that must run in order so no packet meets a half-built
/// path: stale routes go first (nothing new is sent toward a node being removed), then
/// ARP/FDB for new or changed nodes, then their routes, then stale ARP/FDB entries.
/// Ops within a phase are independent and may run concurrently.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub phases: [Vec<Op>; 4],
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.phases.iter().all(Vec::is_empty)
    }

    pub fn len(&self) -> usize {
        self.phases.iter().map(Vec::len).sum()
    }

    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.phases.iter().flatten()
    }
}

const DEL_ROUTES: usize = 0;
const SET_L2: usize = 1;
const SET_ROUTES: usize = 2;
const DEL_L2: usize = 3;

/// The smallest plan that turns `actual` into `desired`: correct entries are left alone,
/// wrong ones replaced, missing ones added and everything else we own removed.
pub fn diff(desired: &Desired, actual: &Actual) -> Plan {
    let mut plan = Plan::default();
    diff_routes(desired, actual, &mut plan);
    diff_neighbours(desired, actual, &mut plan);
    diff_fdb(desired, actual, &mut plan);
    plan
}

fn diff_routes(desired: &Desired, actual: &Actual, plan: &mut Plan) {
    let mut seen_routes = BTreeSet::new();
    let mut seen_unreachable = BTreeSet::new();
    for route in &actual.routes {
        let keep = match &route.kind {
            KernelRouteKind::Device {
                gateway,
                onlink,
                universe,
            } if route.metric == 0 => {
                match desired.routes.get(&route.dst) {
                    // The first route for a wanted prefix is kept and, if wrong, replaced in
                    // place; any further one is a duplicate.
                    Some(via) if seen_routes.insert(route.dst) => {
                        let correct = route.protocol == ROUTE_PROTOCOL
                            && *gateway == Some(*via)
                            && *onlink
                            && *universe;
                        if !correct {
                            plan.phases[SET_ROUTES].push(Op::SetRoute {
                                dst: route.dst,
                                via: *via,
                            });
                        }
                        true
                    }
                    _ => false,
                }
            }
            KernelRouteKind::Unreachable if route.metric == UNREACHABLE_METRIC => {
                desired.unreachable.contains(&route.dst) && seen_unreachable.insert(route.dst)
            }
            _ => false,
        };
        if keep {
            continue;
        }
        plan.phases[DEL_ROUTES].push(Op::DelRoute(route.clone()));
    }
    for (dst, via) in &desired.routes {
        if !seen_routes.contains(dst) {
            plan.phases[SET_ROUTES].push(Op::SetRoute {
                dst: *dst,
                via: *via,
            });
        }
    }
    for dst in &desired.unreachable {
        if !seen_unreachable.contains(dst) {
            plan.phases[SET_ROUTES].push(Op::SetUnreachable { dst: *dst });
        }
    }
}

fn diff_neighbours(desired: &Desired, actual: &Actual, plan: &mut Plan) {
    let mut seen = BTreeSet::new();
    for n in &actual.neighbours {
        match desired.neighbours.get(&n.ip) {
            Some(mac) => {
                seen.insert(n.ip);
                if !(n.permanent && n.mac == Some(*mac)) {
                    plan.phases[SET_L2].push(Op::SetNeighbour {
                        ip: n.ip,
                        mac: *mac,
                    });
                }
            }
            None => plan.phases[DEL_L2].push(Op::DelNeighbour { ip: n.ip }),
        }
    }
    for (ip, mac) in &desired.neighbours {
        if !seen.contains(ip) {
            plan.phases[SET_L2].push(Op::SetNeighbour { ip: *ip, mac: *mac });
        }
    }
}

fn diff_fdb(desired: &Desired, actual: &Actual, plan: &mut Plan) {
    // A VXLAN FDB entry may hold several destinations for one MAC: group them first.
    let mut by_mac: BTreeMap<Mac, Vec<&KernelFdb>> = BTreeMap::new();
    for e in &actual.fdb {
        by_mac.entry(e.mac).or_default().push(e);
    }
    for (mac, entries) in &by_mac {
        let want = desired.fdb.get(mac);
        if let Some(dst) = want {
            let exact = entries.len() == 1 && entries[0].dst == Some(*dst) && entries[0].permanent;
            if exact {
                continue;
            }
            // Replacing rewrites the entry's first destination in place; extra or wrong
            // destinations left over are removed afterwards.
            plan.phases[SET_L2].push(Op::SetFdb {
                mac: *mac,
                dst: *dst,
            });
        }
        for e in entries {
            if want.is_none() || e.dst != want.copied() {
                plan.phases[DEL_L2].push(Op::DelFdb {
                    mac: *mac,
                    dst: e.dst,
                });
            }
        }
    }
    for (mac, dst) in &desired.fdb {
        if !by_mac.contains_key(mac) {
            plan.phases[SET_L2].push(Op::SetFdb {
                mac: *mac,
                dst: *dst,
            });
        }
    }
}

#[cfg(test)]
mod tests;
