//! What the kernel should hold for a set of hybrid nodes, and the smallest set of changes
//! that gets it there. Pure: no I/O, so every corner is unit-tested without root.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::mac::Mac;

mod index;
pub use index::{Index, NodeChange, Rank, Ranked};

/// Routes we write carry this protocol number so a dump can tell our unreachable routes
/// from anyone else's (`ip route show proto 158`).
pub const ROUTE_PROTOCOL: u8 = 158;
/// The id of node `ip`'s nexthop object: its address as a number. Deterministic, so a
/// restarted daemon finds the objects it made; never 0 (0.0.0.0/8 is rejected).
pub fn nexthop_id(ip: Ipv4Addr) -> u32 {
    u32::from(ip)
}

/// How a node's routes name it: by its nexthop object where the kernel has them (see
/// [`super::nexthop`] for why), else by gateway as before. Read with every kernel dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteStyle {
    /// The kernel has nexthop objects (Linux ≥ 5.3).
    pub nexthops: bool,
    /// Ids held by nexthop objects that are not ours: they are never touched, and a node
    /// whose id is among them is routed by gateway.
    pub foreign: BTreeSet<u32>,
}

impl RouteStyle {
    /// Gateway routes only: a kernel without nexthop objects.
    pub fn gateways() -> Self {
        RouteStyle::default()
    }

    /// Nexthop objects, none of them someone else's.
    #[cfg(test)]
    pub fn nexthops() -> Self {
        RouteStyle {
            nexthops: true,
            foreign: BTreeSet::new(),
        }
    }

    /// The nexthop id node `ip`'s routes use, or `None` for a gateway route.
    pub fn nhid(&self, ip: Ipv4Addr) -> Option<u32> {
        let id = nexthop_id(ip);
        (self.nexthops && !self.foreign.contains(&id)).then_some(id)
    }
}

/// Metric of the catch-all unreachable routes: higher than the per-node routes (metric 0),
/// so a node whose pod CIDR equals a whole configured range still wins.
pub const UNREACHABLE_METRIC: u32 = 4242;

/// One hybrid node as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HybridNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidrs: Vec<Ipv4Net>,
    /// An address behind the node's VTEP that answers ICMP echo (its `CiliumInternalIP`):
    /// what the tunnel prober pings. Not trusted: the prober uses it only inside the node's
    /// own pod CIDRs, so an echo to it can only go through the tunnel.
    pub probe_ip: Option<Ipv4Addr>,
}

/// Pod CIDRs one node may claim. Cilium's cluster-pool hands out one or a few per node; a
/// CiliumNode listing hundreds is a mistake or an attempt to grab address space, and each
/// one costs a route.
pub const MAX_POD_CIDRS_PER_NODE: usize = 64;

/// What a node's address and pod CIDRs must satisfy, besides not clashing with other nodes.
/// Every Cilium agent can write CiliumNodes, so nothing in one is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePolicy {
    /// `gateway.hybrid_pod_cidrs`: node pod CIDRs must lie inside; node IPs must not.
    pub pod_cidrs: Vec<Ipv4Net>,
    /// `gateway.vpc_cidrs`: a node IP inside would divert VPC traffic into the tunnel.
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// `gateway.remote_node_cidrs`: when not empty, node IPs must lie inside.
    pub remote_node_cidrs: Vec<Ipv4Net>,
    /// Every IPv4 address of this host (the gateway's `node_ip` among them).
    pub own_addresses: BTreeSet<Ipv4Addr>,
    pub max_pod_cidrs: usize,
}

impl NodePolicy {
    /// Every check the configuration asks for, for a gateway at `node_ip` (the pass adds
    /// the host's other addresses as it finds them).
    pub fn from_config(config: &crate::config::Config, node_ip: Ipv4Addr) -> Self {
        NodePolicy {
            pod_cidrs: config.gateway.hybrid_pod_cidrs.clone(),
            vpc_cidrs: config.gateway.vpc_cidrs.clone(),
            remote_node_cidrs: config.gateway.remote_node_cidrs.clone(),
            own_addresses: [node_ip].into(),
            max_pod_cidrs: MAX_POD_CIDRS_PER_NODE,
        }
    }

    /// Only the checks that need no configuration beyond the hybrid pod CIDRs.
    pub fn for_pod_cidrs(pod_cidrs: &[Ipv4Net]) -> Self {
        NodePolicy {
            pod_cidrs: pod_cidrs.to_vec(),
            vpc_cidrs: Vec::new(),
            remote_node_cidrs: Vec::new(),
            own_addresses: BTreeSet::new(),
            max_pod_cidrs: MAX_POD_CIDRS_PER_NODE,
        }
    }

    /// Whether `ip` may be a hybrid node's tunnel endpoint. The first problem found wins.
    pub fn check_address(&self, ip: Ipv4Addr) -> Result<(), AddressProblem> {
        let inside = |nets: &[Ipv4Net]| nets.iter().find(|n| n.contains(&ip)).copied();
        let o = ip.octets();
        if o[0] == 0 {
            // 0.0.0.0/8 is "this network": never a unicast destination.
            return Err(AddressProblem::Unspecified);
        }
        if ip.is_loopback() {
            return Err(AddressProblem::Loopback);
        }
        if ip.is_multicast() {
            return Err(AddressProblem::Multicast);
        }
        if ip.is_broadcast() {
            return Err(AddressProblem::Broadcast);
        }
        if o[0] >= 240 {
            return Err(AddressProblem::Reserved);
        }
        if ip.is_link_local() {
            // 169.254.169.254 is the instance metadata service among others.
            return Err(AddressProblem::LinkLocal);
        }
        if self.own_addresses.contains(&ip) {
            return Err(AddressProblem::OwnAddress);
        }
        if let Some(net) = inside(&self.vpc_cidrs) {
            return Err(AddressProblem::InsideVpc(net));
        }
        if let Some(net) = inside(&self.pod_cidrs) {
            return Err(AddressProblem::InsidePodCidrs(net));
        }
        if !self.remote_node_cidrs.is_empty() && inside(&self.remote_node_cidrs).is_none() {
            return Err(AddressProblem::OutsideRemoteNodeCidrs);
        }
        Ok(())
    }
}

/// Why an address cannot be a hybrid node's tunnel endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressProblem {
    Unspecified,
    Loopback,
    Multicast,
    Broadcast,
    Reserved,
    LinkLocal,
    OwnAddress,
    InsideVpc(Ipv4Net),
    InsidePodCidrs(Ipv4Net),
    OutsideRemoteNodeCidrs,
}

impl AddressProblem {
    /// The `reason` label of the `nodes_rejected` gauge.
    pub fn reason(&self) -> &'static str {
        match self {
            AddressProblem::Unspecified => "unspecified_address",
            AddressProblem::Loopback => "loopback_address",
            AddressProblem::Multicast => "multicast_address",
            AddressProblem::Broadcast => "broadcast_address",
            AddressProblem::Reserved => "reserved_address",
            AddressProblem::LinkLocal => "link_local_address",
            AddressProblem::OwnAddress => "gateway_address",
            AddressProblem::InsideVpc(_) => "address_inside_vpc_cidrs",
            AddressProblem::InsidePodCidrs(_) => "address_inside_hybrid_pod_cidrs",
            AddressProblem::OutsideRemoteNodeCidrs => "address_outside_remote_node_cidrs",
        }
    }
}

impl fmt::Display for AddressProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressProblem::Unspecified => f.write_str("is an unspecified (0.0.0.0/8) address"),
            AddressProblem::Loopback => f.write_str("is a loopback address"),
            AddressProblem::Multicast => f.write_str("is a multicast address"),
            AddressProblem::Broadcast => f.write_str("is the limited broadcast address"),
            AddressProblem::Reserved => f.write_str("is in the reserved range 240.0.0.0/4"),
            AddressProblem::LinkLocal => {
                f.write_str("is a link-local address (169.254.0.0/16, instance metadata)")
            }
            AddressProblem::OwnAddress => f.write_str("is an address of this gateway"),
            AddressProblem::InsideVpc(net) => write!(f, "is inside gateway.vpc_cidrs ({net})"),
            AddressProblem::InsidePodCidrs(net) => {
                write!(f, "is inside gateway.hybrid_pod_cidrs ({net})")
            }
            AddressProblem::OutsideRemoteNodeCidrs => {
                f.write_str("is outside gateway.remote_node_cidrs")
            }
        }
    }
}

/// Why a node was left out of the desired state. The other nodes are unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    BadAddress {
        node: String,
        ip: Ipv4Addr,
        problem: AddressProblem,
    },
    TooManyPodCidrs {
        node: String,
        count: usize,
        max: usize,
    },
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
            Rejection::BadAddress { node, .. }
            | Rejection::TooManyPodCidrs { node, .. }
            | Rejection::DuplicateIp { node, .. }
            | Rejection::OverlappingCidr { node, .. }
            | Rejection::OutsidePodCidrs { node, .. } => node,
        }
    }

    /// The `reason` label of the `nodes_rejected` gauge.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::BadAddress { problem, .. } => problem.reason(),
            Rejection::TooManyPodCidrs { .. } => "too_many_pod_cidrs",
            Rejection::DuplicateIp { .. } => "duplicate_address",
            Rejection::OverlappingCidr { .. } => "overlapping_pod_cidr",
            Rejection::OutsidePodCidrs { .. } => "pod_cidr_outside_hybrid_pod_cidrs",
        }
    }

    /// Every `reason` label, so the gauge can show zeros instead of vanishing series.
    pub const REASONS: [&'static str; 14] = [
        "unspecified_address",
        "loopback_address",
        "multicast_address",
        "broadcast_address",
        "reserved_address",
        "link_local_address",
        "gateway_address",
        "address_inside_vpc_cidrs",
        "address_inside_hybrid_pod_cidrs",
        "address_outside_remote_node_cidrs",
        "too_many_pod_cidrs",
        "duplicate_address",
        "overlapping_pod_cidr",
        "pod_cidr_outside_hybrid_pod_cidrs",
    ];
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::BadAddress { node, ip, problem } => {
                write!(f, "node {node}: InternalIP {ip} {problem}")
            }
            Rejection::TooManyPodCidrs { node, count, max } => {
                write!(
                    f,
                    "node {node}: lists {count} pod CIDRs, more than the {max} a node may claim"
                )
            }
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
        Self::build_with(nodes, &NodePolicy::for_pod_cidrs(pod_cidrs))
    }

    /// [`Desired::build`] with every address check of `policy`: a node whose IP could
    /// steer traffic to the gateway itself, the VPC, a multicast group or the metadata
    /// service is rejected as a whole before it can claim anything.
    pub fn build_with(nodes: &[HybridNode], policy: &NodePolicy) -> (Desired, Vec<Rejection>) {
        let pod_cidrs = &policy.pod_cidrs;
        let mut desired = Desired {
            unreachable: pod_cidrs.iter().copied().collect(),
            ..Desired::default()
        };
        let mut rejected = Vec::new();
        let mut ip_owner: HashMap<Ipv4Addr, &str> = HashMap::with_capacity(nodes.len());
        // network address → (cidr, owner); lets overlap checks run in O(log n) per CIDR.
        let mut cidr_owner: BTreeMap<u32, (Ipv4Net, &str)> = BTreeMap::new();

        'nodes: for node in nodes {
            if let Err(problem) = policy.check_address(node.ip) {
                rejected.push(Rejection::BadAddress {
                    node: node.name.clone(),
                    ip: node.ip,
                    problem,
                });
                continue;
            }
            if node.pod_cidrs.len() > policy.max_pod_cidrs {
                rejected.push(Rejection::TooManyPodCidrs {
                    node: node.name.clone(),
                    count: node.pod_cidrs.len(),
                    max: policy.max_pod_cidrs,
                });
                continue;
            }
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
                cidr_owner.insert(u32::from(cidr.network()), (cidr, &node.name));
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

/// An accepted CIDR that overlaps `cidr`: a subnet of it (the first accepted network
/// inside its range) or a supernet of it. Accepted CIDRs never overlap each other, so the
/// only one that can contain `cidr` is the one starting last at or before it: two range
/// lookups, whatever the prefix length. Keys are `u32` so the comparisons stay cheap.
fn overlapping<'a>(
    owned: &BTreeMap<u32, (Ipv4Net, &'a str)>,
    cidr: &Ipv4Net,
) -> Option<(Ipv4Net, &'a str)> {
    let (start, end) = (u32::from(cidr.network()), u32::from(cidr.broadcast()));
    if let Some((_, v)) = owned.range(start..=end).next() {
        return Some(*v);
    }
    owned
        .range(..start)
        .next_back()
        .map(|(_, v)| *v)
        .filter(|(c, _)| c.contains(cidr))
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
    /// A unicast route out of our device (directly, or by one of our nexthop objects).
    Device {
        gateway: Option<Ipv4Addr>,
        onlink: bool,
        universe: bool,
        /// The nexthop object it goes by (`nhid`), if any.
        nhid: Option<u32>,
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

/// A nexthop object the daemon owns: one on our device, or one carrying
/// [`ROUTE_PROTOCOL`] (not a group, blackhole or FDB nexthop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNexthop {
    pub id: u32,
    pub gateway: Option<Ipv4Addr>,
    pub on_device: bool,
    pub onlink: bool,
    pub protocol: u8,
}

/// What the kernel holds on (or for) our device, as read by netlink dumps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Actual {
    pub routes: Vec<KernelRoute>,
    pub neighbours: Vec<KernelNeighbour>,
    pub fdb: Vec<KernelFdb>,
    pub nexthops: Vec<KernelNexthop>,
    /// How routes should name their node, as this dump found the kernel.
    pub style: RouteStyle,
}

/// One kernel change. Every add is a create-or-replace, so a plan is safe to re-run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `nhid: Some` routes by node `via`'s nexthop object, `None` by gateway `via`.
    SetRoute {
        dst: Ipv4Net,
        via: Ipv4Addr,
        nhid: Option<u32>,
    },
    SetUnreachable {
        dst: Ipv4Net,
    },
    DelRoute(KernelRoute),
    SetNeighbour {
        ip: Ipv4Addr,
        mac: Mac,
    },
    DelNeighbour {
        ip: Ipv4Addr,
    },
    SetFdb {
        mac: Mac,
        dst: Ipv4Addr,
    },
    DelFdb {
        mac: Mac,
        dst: Option<Ipv4Addr>,
    },
    /// Node `via`'s nexthop object `id`: `via <via> dev <device> onlink`.
    SetNexthop {
        id: u32,
        via: Ipv4Addr,
    },
    DelNexthop {
        id: u32,
    },
}

/// The changes, in four phases that must run in order so no packet meets a half-built
/// path: stale routes go first (nothing new is sent toward a node being removed), then
/// ARP/FDB and nexthop objects for new or changed nodes, then their routes, then stale
/// ARP/FDB entries and nexthop objects (deleting a nexthop deletes routes still using it).
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
    diff_nexthops(desired, actual, &mut plan);
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
                nhid,
            } if route.metric == 0 => {
                match desired.routes.get(&route.dst) {
                    // The first route for a wanted prefix is kept and, if wrong, replaced in
                    // place (a gateway route left by an older version becomes a route by
                    // nexthop without a moment without a route); any further one is a
                    // duplicate.
                    Some(via) if seen_routes.insert(route.dst) => {
                        let want = actual.style.nhid(*via);
                        let correct = route.protocol == ROUTE_PROTOCOL
                            && *universe
                            && match want {
                                Some(id) => *nhid == Some(id),
                                None => nhid.is_none() && *gateway == Some(*via) && *onlink,
                            };
                        if !correct {
                            plan.phases[SET_ROUTES].push(Op::SetRoute {
                                dst: route.dst,
                                via: *via,
                                nhid: want,
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
            plan.phases[SET_ROUTES].push(set_node_route(*dst, *via, &actual.style));
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

/// One nexthop object per node whose routes go by one: wrong ones replaced in place (their
/// routes follow), missing ones added before the routes that use them, ours that no node
/// wants removed last.
fn diff_nexthops(desired: &Desired, actual: &Actual, plan: &mut Plan) {
    let wanted: BTreeMap<u32, Ipv4Addr> = desired
        .neighbours
        .keys()
        .filter_map(|ip| actual.style.nhid(*ip).map(|id| (id, *ip)))
        .collect();
    let mut seen = BTreeSet::new();
    for nh in &actual.nexthops {
        match wanted.get(&nh.id) {
            Some(via) => {
                let correct = nh.on_device
                    && nh.onlink
                    && nh.gateway == Some(*via)
                    && nh.protocol == ROUTE_PROTOCOL;
                if seen.insert(nh.id) && !correct {
                    plan.phases[SET_L2].push(Op::SetNexthop {
                        id: nh.id,
                        via: *via,
                    });
                }
            }
            None => plan.phases[DEL_L2].push(Op::DelNexthop { id: nh.id }),
        }
    }
    for (id, via) in wanted {
        if !seen.contains(&id) {
            plan.phases[SET_L2].push(Op::SetNexthop { id, via });
        }
    }
}

/// The route a plan made against a known state deletes: node `via`'s route to `dst`, as
/// [`RouteStyle`] wrote it.
pub(super) fn node_route(dst: Ipv4Net, via: Ipv4Addr, style: &RouteStyle) -> KernelRoute {
    KernelRoute {
        dst,
        metric: 0,
        protocol: ROUTE_PROTOCOL,
        kind: KernelRouteKind::Device {
            gateway: Some(via),
            onlink: true,
            universe: true,
            nhid: style.nhid(via),
        },
    }
}

/// Node `via`'s route to `dst`, naming it as [`RouteStyle`] says.
pub(super) fn set_node_route(dst: Ipv4Net, via: Ipv4Addr, style: &RouteStyle) -> Op {
    Op::SetRoute {
        dst,
        via,
        nhid: style.nhid(via),
    }
}

/// The ops a node's arrival (`mac: Some`) or departure makes on its ARP entry and, where
/// its routes go by one, its nexthop object.
pub(super) fn node_l2_ops(plan: &mut Plan, ip: Ipv4Addr, mac: Option<Mac>, style: &RouteStyle) {
    let nhid = style.nhid(ip);
    match mac {
        Some(mac) => {
            plan.phases[SET_L2].push(Op::SetNeighbour { ip, mac });
            if let Some(id) = nhid {
                plan.phases[SET_L2].push(Op::SetNexthop { id, via: ip });
            }
        }
        None => {
            plan.phases[DEL_L2].push(Op::DelNeighbour { ip });
            if let Some(id) = nhid {
                plan.phases[DEL_L2].push(Op::DelNexthop { id });
            }
        }
    }
}

/// The plan that turns a kernel known to hold exactly `old` (a previous [`Desired`] applied
/// without errors) into `new`, without reading the kernel: what a node event costs is the
/// size of its change, not of the node set. Walks the two ordered maps side by side, so it
/// is O(n) in comparisons but allocates only for the ops it returns.
/// `style` is the kernel's as the last dump found it.
pub fn diff_known(old: &Desired, new: &Desired, style: &RouteStyle) -> Plan {
    let mut plan = Plan::default();
    merge(&old.routes, &new.routes, |dst, was, now| match (was, now) {
        (Some(via), None) => {
            plan.phases[DEL_ROUTES].push(Op::DelRoute(node_route(*dst, *via, style)))
        }
        (_, Some(via)) => plan.phases[SET_ROUTES].push(set_node_route(*dst, *via, style)),
        (None, None) => {}
    });
    let unit = |set: &BTreeSet<Ipv4Net>| -> BTreeMap<Ipv4Net, ()> {
        set.iter().map(|n| (*n, ())).collect()
    };
    if old.unreachable != new.unreachable {
        merge(
            &unit(&old.unreachable),
            &unit(&new.unreachable),
            |dst, was, now| match (was, now) {
                (Some(()), None) => plan.phases[DEL_ROUTES].push(Op::DelRoute(KernelRoute {
                    dst: *dst,
                    metric: UNREACHABLE_METRIC,
                    protocol: ROUTE_PROTOCOL,
                    kind: KernelRouteKind::Unreachable,
                })),
                (None, Some(())) => plan.phases[SET_ROUTES].push(Op::SetUnreachable { dst: *dst }),
                _ => {}
            },
        );
    }
    // A node's MAC follows from its IP: an entry only ever appears or goes.
    merge(&old.neighbours, &new.neighbours, |ip, _, now| {
        node_l2_ops(&mut plan, *ip, now.copied(), style)
    });
    merge(&old.fdb, &new.fdb, |mac, was, now| match (was, now) {
        (Some(dst), None) => plan.phases[DEL_L2].push(Op::DelFdb {
            mac: *mac,
            dst: Some(*dst),
        }),
        // A replace rewrites the entry's one destination in place.
        (_, Some(dst)) => plan.phases[SET_L2].push(Op::SetFdb {
            mac: *mac,
            dst: *dst,
        }),
        (None, None) => {}
    });
    plan
}

/// Calls `f(key, old, new)` for every key whose value differs between `old` and `new`
/// (absent on one side counts as different), in key order.
fn merge<K: Ord, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    mut f: impl FnMut(&K, Option<&V>, Option<&V>),
) {
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some((k, v)), None) => {
                f(k, Some(v), None);
                a.next();
            }
            (None, Some((k, v))) => {
                f(k, None, Some(v));
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    f(ka, Some(va), None);
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    f(kb, None, Some(vb));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        f(ka, Some(va), Some(vb));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests;
