//! Watches hybrid CiliumNodes and publishes the set the datapath must program.
//!
//! The published set changes only when a node's datapath-relevant fields change (IP, pod
//! CIDRs, membership), so status churn never reaches the kernel. Until the first full list
//! has arrived nothing is published, and while the API server is unreachable the last set
//! stays in force: the kernel is never flushed because of an outage.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use ipnet::IpNet;
use jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::datapath::node_list::RankedNodes;
use crate::datapath::{HybridNode, NodeChange, NodeList, Rank, Ranked};

pub const HYBRID_LABEL: &str = "eks.amazonaws.com/compute-type=hybrid";

/// The hybrid nodes to program, oldest first: when two nodes conflict, the one that was
/// there first keeps its traffic. Each publication carries its node-level change from
/// the one before, so the datapath applies an event as that change.
pub type NodeSet = Arc<NodeList>;

/// Counters for operators (exported as metrics by the telemetry part).
#[derive(Debug, Default)]
pub struct NodeWatchStats {
    /// Nodes skipped because their CiliumNode could not be used (counted once per reason).
    pub malformed_skipped: AtomicU64,
    /// Watch errors (disconnects, 410 Gone, refused connections) recovered from.
    pub watch_errors: AtomicU64,
}

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("cilium.io", "v2", "CiliumNode"))
}

/// Turns a CiliumNode into what the datapath needs, or says why it cannot.
pub fn parse(obj: &DynamicObject) -> Result<HybridNode, String> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let spec = obj.data.get("spec").ok_or("has no spec")?;
    let ip = internal_ipv4(spec)?;
    let mut pod_cidrs = Vec::new();
    let mut saw_ipv6 = false;
    let cidrs = spec
        .pointer("/ipam/podCIDRs")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for c in cidrs {
        let text = c
            .as_str()
            .ok_or_else(|| format!("pod CIDR {c} is not a string"))?;
        match text.parse::<IpNet>() {
            Ok(IpNet::V4(net)) if net.trunc() == net => pod_cidrs.push(net),
            Ok(IpNet::V4(net)) => {
                return Err(format!(
                    "pod CIDR {text} has host bits set (did Cilium mean {}?)",
                    net.trunc()
                ))
            }
            Ok(IpNet::V6(_)) => saw_ipv6 = true,
            Err(_) => return Err(format!("pod CIDR {text:?} is not a CIDR")),
        }
    }
    if pod_cidrs.is_empty() && saw_ipv6 {
        return Err("has only IPv6 pod CIDRs; the gateway tunnels IPv4 only".into());
    }
    let probe_ip = cilium_internal_ipv4(spec);
    Ok(HybridNode {
        name,
        ip,
        pod_cidrs,
        probe_ip,
    })
}

/// The node's first IPv4 `CiliumInternalIP` (the address of its `cilium_host`, inside its
/// pod CIDR): reachable only through the node's VTEP, so an echo to it tests the tunnel.
/// Optional: a node without one is simply not probed.
fn cilium_internal_ipv4(spec: &Value) -> Option<Ipv4Addr> {
    spec.get("addresses")?
        .as_array()?
        .iter()
        .filter(|a| a.get("type").and_then(Value::as_str) == Some("CiliumInternalIP"))
        .filter_map(|a| a.get("ip").and_then(Value::as_str))
        .find_map(|text| text.parse::<Ipv4Addr>().ok())
}

fn internal_ipv4(spec: &Value) -> Result<Ipv4Addr, String> {
    let addrs = spec
        .get("addresses")
        .and_then(Value::as_array)
        .ok_or("has no spec.addresses")?;
    let internal: Vec<&str> = addrs
        .iter()
        .filter(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .filter_map(|a| a.get("ip").and_then(Value::as_str))
        .collect();
    if internal.is_empty() {
        return Err("has no InternalIP in spec.addresses".into());
    }
    let mut bad = None;
    for text in &internal {
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => return Ok(v4),
            Ok(IpAddr::V6(_)) => {}
            Err(_) => bad = Some(*text),
        }
    }
    Err(match bad {
        Some(text) => format!("InternalIP {text:?} is not an IP address"),
        None => "has only IPv6 InternalIPs; the gateway tunnels IPv4 only".into(),
    })
}

/// One CiliumNode as the watch remembers it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    created: Option<Timestamp>,
    parsed: Result<HybridNode, String>,
}

fn entry(obj: &DynamicObject) -> Entry {
    Entry {
        created: obj.metadata.creation_timestamp.as_ref().map(|t| t.0),
        parsed: parse(obj),
    }
}

impl Entry {
    /// The node with its place in the conflict order, if it is usable.
    fn ranked(&self, name: &str) -> Option<Arc<Ranked>> {
        let node = self.parsed.as_ref().ok()?;
        Some(Arc::new(Ranked {
            rank: rank(self.created, name),
            node: node.clone(),
        }))
    }
}

/// Oldest first, then by name.
fn rank(created: Option<Timestamp>, name: &str) -> Rank {
    Rank {
        created,
        position: 0,
        name: name.to_string(),
    }
}

/// The watch's view of the cluster, and what it has told operators about bad nodes.
pub struct NodeTracker {
    nodes: HashMap<String, Entry>,
    /// The usable nodes in conflict order, kept as events arrive: a publication copies
    /// pointers, it neither sorts nor clones nodes.
    ordered: RankedNodes,
    /// Filled during a (re-)list; swapped in whole when it completes, so nodes deleted
    /// while we were disconnected disappear too.
    relist: Option<HashMap<String, Entry>>,
    synced: bool,
    /// What was last published: the base of the next publication's change.
    published: Option<NodeSet>,
    warned: HashMap<String, String>,
    stats: Arc<NodeWatchStats>,
}

impl NodeTracker {
    pub fn new(stats: Arc<NodeWatchStats>) -> Self {
        NodeTracker {
            nodes: HashMap::new(),
            ordered: RankedNodes::default(),
            relist: None,
            synced: false,
            published: None,
            warned: HashMap::new(),
            stats,
        }
    }

    /// Applies one watch event; returns the new set when the programmable state changed.
    pub fn apply(&mut self, event: Event<DynamicObject>) -> Option<NodeSet> {
        let changes = match event {
            Event::Init => {
                self.relist = Some(HashMap::new());
                return None;
            }
            Event::InitApply(obj) => {
                if let (Some(buf), Some(name)) = (self.relist.as_mut(), obj.metadata.name.clone()) {
                    buf.insert(name, entry(&obj));
                }
                return None;
            }
            Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let changed = !self.synced || programmable(&self.nodes) != programmable(&fresh);
                self.nodes = fresh;
                self.synced = true;
                self.warned.retain(|n, _| self.nodes.contains_key(n));
                let names: Vec<String> = self.nodes.keys().cloned().collect();
                for name in names {
                    self.warn_if_rejected(&name);
                }
                if !changed {
                    return None;
                }
                let mut ordered: Vec<Arc<Ranked>> = self
                    .nodes
                    .iter()
                    .filter_map(|(name, e)| e.ranked(name))
                    .collect();
                ordered.sort_unstable_by(|a, b| a.rank.cmp(&b.rank));
                self.ordered = RankedNodes::from_sorted(ordered);
                // A whole new list: whoever kept the previous one compares the two.
                return Some(self.publish(None));
            }
            Event::Apply(obj) => {
                let name = obj.metadata.name.clone()?;
                let new = entry(&obj);
                let old = self.nodes.insert(name.clone(), new.clone());
                self.warn_if_rejected(&name);
                let was = old.as_ref().and_then(|e| e.parsed.as_ref().ok());
                let moved = old.as_ref().is_some_and(|o| o.created != new.created);
                if was == new.parsed.as_ref().ok() && !moved {
                    return None;
                }
                let mut changes = Vec::new();
                if let Some(old) = old.as_ref().and_then(|o| o.ranked(&name)) {
                    if moved || new.parsed.is_err() {
                        self.ordered.remove(&old.rank);
                        changes.push(NodeChange::Remove(old.rank.clone()));
                    }
                }
                if let Some(node) = new.ranked(&name) {
                    self.ordered.insert(node.clone());
                    changes.push(NodeChange::Upsert(node));
                }
                changes
            }
            Event::Delete(obj) => {
                let name = obj.metadata.name.as_deref()?;
                self.warned.remove(name);
                let removed = self.nodes.remove(name)?;
                let gone = removed.ranked(name)?;
                self.ordered.remove(&gone.rank);
                vec![NodeChange::Remove(gone.rank.clone())]
            }
        };
        self.synced.then(|| self.publish(Some(changes)))
    }

    /// The usable nodes as a new publication; `changes` turn the previous one into it.
    fn publish(&mut self, changes: Option<Vec<NodeChange>>) -> NodeSet {
        let delta = match (&self.published, changes) {
            (Some(before), Some(changes)) => Some((before.id(), changes)),
            _ => None,
        };
        let set = Arc::new(NodeList::from_ranked(self.ordered.clone(), delta));
        self.published = Some(set.clone());
        set
    }

    /// The usable nodes as last published (an empty list before the first).
    pub fn node_set(&self) -> NodeSet {
        self.published
            .clone()
            .unwrap_or_else(|| Arc::new(NodeList::new(Vec::new(), None)))
    }

    /// One warning per node per distinct reason, not one per event.
    fn warn_if_rejected(&mut self, name: &str) {
        match self.nodes.get(name).map(|e| &e.parsed) {
            Some(Err(why)) => {
                if self.warned.get(name) != Some(why) {
                    tracing::warn!(node = %name, "skipping CiliumNode {name}: {why}");
                    self.stats.malformed_skipped.fetch_add(1, Ordering::Relaxed);
                    self.warned.insert(name.to_string(), why.clone());
                }
            }
            _ => {
                self.warned.remove(name);
            }
        }
    }
}

/// The part of the node map the datapath sees: usable nodes with their age.
fn programmable(
    nodes: &HashMap<String, Entry>,
) -> BTreeMap<&str, (Option<Timestamp>, &HybridNode)> {
    nodes
        .iter()
        .filter_map(|(k, e)| e.parsed.as_ref().ok().map(|n| (k.as_str(), (e.created, n))))
        .collect()
}

/// Runs the watch until `cancel`, publishing every change of the node set on `sink`
/// (`None` until the first list completes).
pub async fn run(
    client: kube::Client,
    sink: watch::Sender<Option<NodeSet>>,
    stats: Arc<NodeWatchStats>,
    cancel: CancellationToken,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &api_resource());
    // Short server-side timeouts make a silently dead connection show up within a minute.
    let config = watcher::Config::default().labels(HYBRID_LABEL).timeout(30);
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut tracker = NodeTracker::new(stats.clone());
    let mut failing = false;
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = events.next() => next,
        };
        match next {
            Some(Ok(event)) => {
                // Init arrives before the list is even tried: only a finished list or a
                // real event proves the API answers again.
                if failing && !matches!(event, Event::Init | Event::InitApply(_)) {
                    tracing::info!("CiliumNode watch recovered");
                    failing = false;
                }
                if let Some(set) = tracker.apply(event) {
                    sink.send_replace(Some(set));
                }
            }
            Some(Err(e)) => {
                stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(
                        "CiliumNode watch failed, keeping the kernel as it is and retrying: {}",
                        crate::telemetry::explain::explain(&e)
                    );
                    failing = true;
                }
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests;
