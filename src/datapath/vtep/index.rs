//! The desired state kept across node events, so one event costs its change and not the
//! size of the node set. Exactly what [`Desired::build_with`] makes of the same nodes in
//! [`Rank`] order, rejections (and the owner each one names) included; the property tests
//! in `tests.rs` hold it to that.
//!
//! The rule being kept: nodes are taken oldest first and a node is accepted unless it
//! fails its own checks or clashes (same IP, overlapping pod CIDR) with a node accepted
//! before it. A node's verdict therefore depends only on itself and on the accepted nodes
//! ranked before it that share its IP or overlap its CIDRs. An event re-judges the node it
//! names; whenever a node's accepted claims change (it is admitted, dropped or evicted) the
//! later nodes sharing those claims are re-judged too, in rank order, so a chain of
//! take-overs (the winner leaves, the loser takes over and in turn pushes out a newer node
//! it clashes with, ...) ends where a full rebuild would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use ipnet::Ipv4Net;
use jiff::Timestamp;

use super::{
    node_l2_ops, node_route, overlaps, set_node_route, Desired, HybridNode, NodePolicy, Op, Plan,
    Rejection, RouteStyle, DEL_L2, DEL_ROUTES, SET_L2, SET_ROUTES,
};
use crate::datapath::mac::Mac;

/// A node's place in the conflict order: when two nodes claim the same IP or overlapping
/// pod CIDRs, the one ranked first keeps them. CiliumNodes rank by creation time, then
/// name (`position` 0); a plain list (static file, snapshot) ranks by position.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    pub created: Option<Timestamp>,
    pub position: u64,
    pub name: String,
}

/// A node with its rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    pub rank: Rank,
    pub node: HybridNode,
}

/// One node-level change of the node set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChange {
    /// A node added, or changed (same rank).
    Upsert(Arc<Ranked>),
    /// The node with this rank is gone.
    Remove(Rank),
}

/// The desired state of a node set, kept up to date one change at a time.
#[derive(Debug, Clone)]
pub struct Index {
    policy: NodePolicy,
    nodes: BTreeMap<Rank, Slot>,
    /// Every node by its IP (for duplicate-IP take-overs and own-address changes).
    by_ip: HashMap<Ipv4Addr, BTreeSet<Rank>>,
    /// Every pod CIDR of a node that passed its address and count checks, keyed
    /// `(network, prefix)`: who may be affected when a CIDR is given up or taken.
    by_cidr: BTreeMap<(u32, u8), BTreeSet<Rank>>,
    /// How many `by_cidr` keys have each prefix length: the supernet lookups only try
    /// lengths that exist.
    prefixes: [u32; 33],
    /// Accepted nodes: IP → owner; network → (CIDR, owner). Accepted CIDRs never overlap.
    ip_owner: HashMap<Ipv4Addr, Rank>,
    cidr_owner: BTreeMap<u32, (Ipv4Net, Rank)>,
    desired: Desired,
    rejected: BTreeMap<Rank, Rejection>,
    /// `rejected` as a list, made when first asked for after it changed: passes whose
    /// event changed no rejection hand on the same list without copying it.
    rejected_list: OnceLock<Arc<Vec<Rejection>>>,
}

#[derive(Debug, Clone)]
struct Slot {
    node: Arc<Ranked>,
    /// The CIDRs it holds while accepted (duplicates listed once).
    accepted: Option<Vec<Ipv4Net>>,
    /// Passed the address and count checks: its CIDRs are in `by_cidr`.
    contends: bool,
}

/// One update's bookkeeping: the nodes still to judge, in rank order, and the value each
/// touched desired entry had before, so the plan covers exactly what changed.
#[derive(Default)]
struct Pass {
    work: BTreeSet<Rank>,
    /// Off while building from scratch: every node is queued anyway and no plan is made.
    track: bool,
    routes: BTreeMap<Ipv4Net, Option<Ipv4Addr>>,
    neighbours: BTreeMap<Ipv4Addr, Option<Mac>>,
    fdb: BTreeMap<Mac, Option<Ipv4Addr>>,
}

fn key(c: &Ipv4Net) -> (u32, u8) {
    (u32::from(c.network()), c.prefix_len())
}

impl Index {
    /// An empty node set under `policy`.
    pub fn new(policy: NodePolicy) -> Self {
        Index {
            desired: Desired {
                unreachable: policy.pod_cidrs.iter().copied().collect(),
                ..Desired::default()
            },
            policy,
            nodes: BTreeMap::new(),
            by_ip: HashMap::new(),
            by_cidr: BTreeMap::new(),
            prefixes: [0; 33],
            ip_owner: HashMap::new(),
            cidr_owner: BTreeMap::new(),
            rejected: BTreeMap::new(),
            rejected_list: OnceLock::new(),
        }
    }

    /// The desired state of `nodes` from scratch (what a full pass starts from).
    pub fn build(nodes: impl IntoIterator<Item = Arc<Ranked>>, policy: NodePolicy) -> Self {
        let mut index = Index::new(policy);
        let mut pass = Pass::default();
        for node in nodes {
            index.insert(&mut pass, node);
        }
        index.settle(&mut pass);
        index
    }

    pub fn policy(&self) -> &NodePolicy {
        &self.policy
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Why each rejected node was left out, in rank order.
    pub fn rejected(&self) -> Vec<Rejection> {
        self.rejected.values().cloned().collect()
    }

    /// [`Index::rejected`], shared: the same list (pointer) until a rejection changes.
    pub fn rejected_shared(&self) -> Arc<Vec<Rejection>> {
        self.rejected_list
            .get_or_init(|| Arc::new(self.rejected()))
            .clone()
    }

    fn set_rejected(&mut self, rank: &Rank, rejection: Option<Rejection>) {
        let changed = match rejection {
            Some(r) => self.rejected.insert(rank.clone(), r.clone()) != Some(r),
            None => self.rejected.remove(rank).is_some(),
        };
        if changed {
            self.rejected_list = OnceLock::new();
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Applies `changes` and this host's current addresses; returns the plan that turns
    /// a kernel holding the previous desired state into the new one: exactly what
    /// [`super::diff_known`] would say, at the cost of the change. `style` is the
    /// kernel's as the last dump found it.
    pub fn update(
        &mut self,
        own_addresses: BTreeSet<Ipv4Addr>,
        changes: impl IntoIterator<Item = NodeChange>,
        style: &RouteStyle,
    ) -> Plan {
        let mut pass = Pass {
            track: true,
            ..Pass::default()
        };
        if own_addresses != self.policy.own_addresses {
            let moved: Vec<Ipv4Addr> = own_addresses
                .symmetric_difference(&self.policy.own_addresses)
                .copied()
                .collect();
            self.policy.own_addresses = own_addresses;
            // A node at an address this host gained (or lost) is judged again.
            for ip in moved {
                let ranks: Vec<Rank> = self
                    .by_ip
                    .get(&ip)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for rank in ranks {
                    if let Some(node) = self.nodes.get(&rank).map(|s| s.node.clone()) {
                        self.insert(&mut pass, node);
                    }
                }
            }
        }
        for change in changes {
            match change {
                NodeChange::Upsert(node) => self.insert(&mut pass, node),
                NodeChange::Remove(rank) => self.remove(&mut pass, &rank),
            }
        }
        self.settle(&mut pass);
        self.plan(pass, style)
    }

    /// Puts `node` in (replacing the node of the same rank) and queues it for judging.
    fn insert(&mut self, pass: &mut Pass, ranked: Arc<Ranked>) {
        let rank = ranked.rank.clone();
        if self.nodes.contains_key(&rank) {
            self.remove(pass, &rank);
        }
        let node = &ranked.node;
        self.by_ip.entry(node.ip).or_default().insert(rank.clone());
        let contends = self.policy.check_address(node.ip).is_ok()
            && node.pod_cidrs.len() <= self.policy.max_pod_cidrs;
        if contends {
            for c in &node.pod_cidrs {
                let ranks = self.by_cidr.entry(key(c)).or_default();
                if ranks.is_empty() {
                    self.prefixes[usize::from(c.prefix_len())] += 1;
                }
                ranks.insert(rank.clone());
            }
        }
        self.nodes.insert(
            rank.clone(),
            Slot {
                node: ranked,
                accepted: None,
                contends,
            },
        );
        pass.work.insert(rank);
    }

    /// Takes the node of `rank` out, giving up what it held.
    fn remove(&mut self, pass: &mut Pass, rank: &Rank) {
        let Some(slot) = self.nodes.remove(rank) else {
            return;
        };
        let node = &slot.node.node;
        if let Some(cidrs) = &slot.accepted {
            self.retract(pass, node.ip, cidrs);
            self.wake(pass, rank, node.ip, cidrs);
        }
        if let Some(ranks) = self.by_ip.get_mut(&node.ip) {
            ranks.remove(rank);
            if ranks.is_empty() {
                self.by_ip.remove(&node.ip);
            }
        }
        if slot.contends {
            for c in &node.pod_cidrs {
                if let Some(ranks) = self.by_cidr.get_mut(&key(c)) {
                    ranks.remove(rank);
                    if ranks.is_empty() {
                        self.by_cidr.remove(&key(c));
                        self.prefixes[usize::from(c.prefix_len())] -= 1;
                    }
                }
            }
        }
        self.set_rejected(rank, None);
        pass.work.remove(rank);
    }

    /// Judges the queued nodes in rank order until nothing changes any more. A node is
    /// judged only after every node ranked before it that will change in this update has,
    /// so it sees the accepted set a full rebuild would show it.
    fn settle(&mut self, pass: &mut Pass) {
        while let Some(rank) = pass.work.pop_first() {
            let Some(slot) = self.nodes.get_mut(&rank) else {
                continue;
            };
            let ranked = slot.node.clone();
            let node = &ranked.node;
            let before = slot.accepted.take();
            if let Some(cidrs) = &before {
                self.retract(pass, node.ip, cidrs);
            }
            match self.judge(&rank, node) {
                Ok(cidrs) => {
                    self.evict_clashes(pass, &rank, node.ip, &cidrs);
                    self.admit(pass, &rank, node.ip, &cidrs);
                    self.set_rejected(&rank, None);
                    if before.as_ref() != Some(&cidrs) && pass.track {
                        if let Some(old) = &before {
                            self.wake(pass, &rank, node.ip, old);
                        }
                        self.wake(pass, &rank, node.ip, &cidrs);
                    }
                    if let Some(slot) = self.nodes.get_mut(&rank) {
                        slot.accepted = Some(cidrs);
                    }
                }
                Err(rejection) => {
                    self.set_rejected(&rank, Some(rejection));
                    if let Some(old) = &before {
                        self.wake(pass, &rank, node.ip, old);
                    }
                }
            }
        }
    }

    /// [`Desired::build_with`]'s verdict on one node, against the nodes accepted before it.
    fn judge(&self, rank: &Rank, node: &HybridNode) -> Result<Vec<Ipv4Net>, Rejection> {
        let policy = &self.policy;
        if let Err(problem) = policy.check_address(node.ip) {
            return Err(Rejection::BadAddress {
                node: node.name.clone(),
                ip: node.ip,
                problem,
            });
        }
        if node.pod_cidrs.len() > policy.max_pod_cidrs {
            return Err(Rejection::TooManyPodCidrs {
                node: node.name.clone(),
                count: node.pod_cidrs.len(),
                max: policy.max_pod_cidrs,
            });
        }
        if let Some(owner) = self.ip_owner.get(&node.ip).filter(|o| *o < rank) {
            return Err(Rejection::DuplicateIp {
                node: node.name.clone(),
                ip: node.ip,
                owner: owner.name.clone(),
            });
        }
        let mut accepted: Vec<Ipv4Net> = Vec::with_capacity(node.pod_cidrs.len());
        for cidr in &node.pod_cidrs {
            if !policy
                .pod_cidrs
                .iter()
                .any(|allowed| allowed.contains(cidr))
            {
                return Err(Rejection::OutsidePodCidrs {
                    node: node.name.clone(),
                    cidr: *cidr,
                });
            }
            let clash = self
                .owned_before(cidr, rank)
                .map(|(c, o)| (c, o.name.clone()))
                .or_else(|| {
                    accepted
                        .iter()
                        .find(|a| overlaps(a, cidr))
                        .map(|a| (*a, node.name.clone()))
                });
            if let Some((owner_cidr, owner)) = clash {
                if owner_cidr == *cidr && owner == node.name {
                    continue; // the same CIDR listed twice (as `build_with` reads it)
                }
                return Err(Rejection::OverlappingCidr {
                    node: node.name.clone(),
                    cidr: *cidr,
                    owner,
                    owner_cidr,
                });
            }
            accepted.push(*cidr);
        }
        Ok(accepted)
    }

    /// The accepted CIDR ranked before `rank` that `build_with`'s lookup would find for
    /// `cidr`: the lowest one inside it, else the one containing it. (Accepted CIDRs never
    /// overlap, so the only possible container is the last one starting before `cidr`,
    /// among all accepted CIDRs as among those ranked before.)
    fn owned_before(&self, cidr: &Ipv4Net, rank: &Rank) -> Option<(Ipv4Net, &Rank)> {
        let (start, end) = (u32::from(cidr.network()), u32::from(cidr.broadcast()));
        if let Some((_, (c, o))) = self
            .cidr_owner
            .range(start..=end)
            .find(|(_, (_, o))| o < rank)
        {
            return Some((*c, o));
        }
        self.cidr_owner
            .range(..start)
            .next_back()
            .filter(|(_, (c, o))| c.contains(cidr) && o < rank)
            .map(|(_, (c, o))| (*c, o))
    }

    /// A node being admitted pushes out the later accepted nodes it clashes with; they are
    /// judged again (and now lose to it).
    fn evict_clashes(&mut self, pass: &mut Pass, rank: &Rank, ip: Ipv4Addr, cidrs: &[Ipv4Net]) {
        let mut losers: BTreeSet<Rank> = BTreeSet::new();
        if let Some(owner) = self.ip_owner.get(&ip) {
            losers.insert(owner.clone());
        }
        for cidr in cidrs {
            let (start, end) = (u32::from(cidr.network()), u32::from(cidr.broadcast()));
            losers.extend(
                self.cidr_owner
                    .range(start..=end)
                    .map(|(_, (_, o))| o.clone()),
            );
            if let Some((_, (c, o))) = self.cidr_owner.range(..start).next_back() {
                if c.contains(cidr) {
                    losers.insert(o.clone());
                }
            }
        }
        for loser in losers {
            debug_assert!(&loser > rank, "a clash ranked before was judged first");
            let Some(slot) = self.nodes.get_mut(&loser) else {
                continue;
            };
            let node = slot.node.clone();
            if let Some(held) = slot.accepted.take() {
                self.retract(pass, node.node.ip, &held);
                self.wake(pass, &loser, node.node.ip, &held);
            }
            pass.work.insert(loser);
        }
    }

    /// Queues every node ranked after `rank` that shares `ip` or overlaps one of `cidrs`:
    /// their verdict (or the owner their rejection names) may change.
    fn wake(&self, pass: &mut Pass, rank: &Rank, ip: Ipv4Addr, cidrs: &[Ipv4Net]) {
        let mut queue = |ranks: &BTreeSet<Rank>| {
            for r in ranks.range((std::ops::Bound::Excluded(rank), std::ops::Bound::Unbounded)) {
                pass.work.insert(r.clone());
            }
        };
        if let Some(ranks) = self.by_ip.get(&ip) {
            queue(ranks);
        }
        for cidr in cidrs {
            let (start, end) = (u32::from(cidr.network()), u32::from(cidr.broadcast()));
            // Everything starting inside it...
            for (_, ranks) in self.by_cidr.range((start, 0)..=(end, 32)) {
                queue(ranks);
            }
            // ... and everything containing it.
            for len in 0..cidr.prefix_len() {
                if self.prefixes[usize::from(len)] == 0 {
                    continue;
                }
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                if let Some(ranks) = self.by_cidr.get(&(start & mask, len)) {
                    queue(ranks);
                }
            }
        }
    }

    fn admit(&mut self, pass: &mut Pass, rank: &Rank, ip: Ipv4Addr, cidrs: &[Ipv4Net]) {
        self.ip_owner.insert(ip, rank.clone());
        let mac = Mac::for_node(ip);
        self.set_neighbour(pass, ip, Some(mac));
        self.set_fdb(pass, mac, Some(ip));
        for cidr in cidrs {
            self.cidr_owner
                .insert(u32::from(cidr.network()), (*cidr, rank.clone()));
            self.set_route(pass, *cidr, Some(ip));
        }
    }

    fn retract(&mut self, pass: &mut Pass, ip: Ipv4Addr, cidrs: &[Ipv4Net]) {
        self.ip_owner.remove(&ip);
        let mac = Mac::for_node(ip);
        self.set_neighbour(pass, ip, None);
        self.set_fdb(pass, mac, None);
        for cidr in cidrs {
            self.cidr_owner.remove(&u32::from(cidr.network()));
            self.set_route(pass, *cidr, None);
        }
    }

    fn set_route(&mut self, pass: &mut Pass, dst: Ipv4Net, via: Option<Ipv4Addr>) {
        if pass.track {
            let was = self.desired.routes.get(&dst).copied();
            pass.routes.entry(dst).or_insert(was);
        }
        match via {
            Some(via) => self.desired.routes.insert(dst, via),
            None => self.desired.routes.remove(&dst),
        };
    }

    fn set_neighbour(&mut self, pass: &mut Pass, ip: Ipv4Addr, mac: Option<Mac>) {
        if pass.track {
            let was = self.desired.neighbours.get(&ip).copied();
            pass.neighbours.entry(ip).or_insert(was);
        }
        match mac {
            Some(mac) => self.desired.neighbours.insert(ip, mac),
            None => self.desired.neighbours.remove(&ip),
        };
    }

    fn set_fdb(&mut self, pass: &mut Pass, mac: Mac, dst: Option<Ipv4Addr>) {
        if pass.track {
            let was = self.desired.fdb.get(&mac).copied();
            pass.fdb.entry(mac).or_insert(was);
        }
        match dst {
            Some(dst) => self.desired.fdb.insert(mac, dst),
            None => self.desired.fdb.remove(&mac),
        };
    }

    /// The ops for the entries this update touched whose value differs from before, in
    /// the order [`super::diff_known`] emits them.
    fn plan(&self, pass: Pass, style: &RouteStyle) -> Plan {
        let mut plan = Plan::default();
        for (dst, was) in pass.routes {
            match (was, self.desired.routes.get(&dst).copied()) {
                (Some(via), None) => {
                    plan.phases[DEL_ROUTES].push(Op::DelRoute(node_route(dst, via, style)))
                }
                (was, Some(via)) if was != Some(via) => {
                    plan.phases[SET_ROUTES].push(set_node_route(dst, via, style))
                }
                _ => {}
            }
        }
        for (ip, was) in pass.neighbours {
            let now = self.desired.neighbours.get(&ip).copied();
            if was != now {
                node_l2_ops(&mut plan, ip, now, style);
            }
        }
        for (mac, was) in pass.fdb {
            match (was, self.desired.fdb.get(&mac).copied()) {
                (Some(dst), None) => plan.phases[DEL_L2].push(Op::DelFdb {
                    mac,
                    dst: Some(dst),
                }),
                (was, Some(dst)) if was != Some(dst) => {
                    plan.phases[SET_L2].push(Op::SetFdb { mac, dst })
                }
                _ => {}
            }
        }
        plan
    }
}
