//! The kernel side of the gateway: forwarding sysctls, the VXLAN device and the per-node
//! routes, ARP and FDB entries on it.

pub mod error;
pub mod filter;
pub mod filter_events;
pub mod mac;
pub mod netlink;
pub mod nexthop;
pub mod nft_elements;
pub mod node_list;
pub mod pass_times;
pub mod raw_netlink;
pub mod sysctl;
pub mod vtep;
pub mod vxlan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

pub use error::{DatapathError, Result};

/// What a [`Repair`] can be (its `what`): the `what` label of `datapath_repairs_total`.
pub const REPAIRS: [&str; 3] = ["device", "sysctl", "filter"];
pub use filter::FilterSpec;
pub use mac::Mac;
pub use netlink::{ApplyReport, LinkEvents, Netlink};
pub use node_list::NodeList;
pub use pass_times::PassTimes;
pub use sysctl::SysctlChange;
pub use vtep::{
    AddressProblem, Desired, HybridNode, Index, NodeChange, NodePolicy, Rank, Ranked, Rejection,
};
pub use vxlan::{Device, DeviceAction};

use crate::config::{Config, VxlanConfig};
use crate::telemetry::status as telemetry_live;

/// The set-up datapath: a netlink socket, the device, and the reconciler state.
pub struct Datapath {
    nl: Netlink,
    /// Replaced when a pass had to recreate the device (someone deleted it).
    device: std::sync::Mutex<Device>,
    vxlan: VxlanConfig,
    node_ip: Ipv4Addr,
    /// What nodes must satisfy; each pass sets the pod CIDRs it is given and this host's
    /// current addresses.
    policy: NodePolicy,
    /// The nftables filter's fixed part (`None`: `[datapath] filter = false`).
    filter: Option<FilterSpec>,
    /// What the last passes left in the kernel, so a node event costs its change only.
    known: std::sync::Mutex<Known>,
    /// The nfnetlink socket node events change the filter's node set over, kept open
    /// (see [`nft_elements`]); `None` until first used and after an error.
    elements: tokio::sync::Mutex<Option<nft_elements::ElementSocket>>,
}

/// The kernel as this process last left it. Cleared whenever a write failed: the next
/// pass then reads the kernel again.
#[derive(Default)]
struct Known {
    /// Routes, ARP and FDB: exactly this [`Desired`] was applied without an error (passes
    /// given a plain slice of nodes).
    vtep: Option<Desired>,
    /// The same for passes given a [`NodeList`]: its desired state, kept so the next
    /// list's changes cost only themselves, and the list it reflects.
    index: Option<(Box<Index>, Arc<NodeList>)>,
    /// The filter table was last written (or found) as this spec.
    filter: Option<FilterSpec>,
}

/// How much of the kernel a pass looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything read back and compared: the device, the sysctls, every route, ARP and
    /// FDB entry, the filter table. For the resync, link events and after errors.
    Full,
    /// Only the node set's change, against what the previous passes left (falls back to a
    /// read of the entries when that is not known). For node and configuration events.
    Changes,
}

/// Something a pass found broken and put right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// `device`, `sysctl` or `filter`: the `what` label of `datapath_repairs_total`.
    pub what: &'static str,
    pub detail: String,
}

/// What a pass did to the nftables filter.
#[derive(Debug, Default)]
pub struct FilterReport {
    /// Counter name → (packets, bytes), as read at the start of the pass.
    pub counters: BTreeMap<String, (u64, u64)>,
    /// What had drifted and was rewritten (empty when only the node set changed).
    pub repaired: Vec<String>,
    /// The table was rewritten (node set change or repair).
    pub written: bool,
}

/// What one reconcile pass found and did.
#[derive(Debug)]
pub struct Reconciled {
    /// Entries the kernel should hold (routes + ARP + FDB + unreachable).
    pub desired_entries: usize,
    /// Nodes programmed (accepted), routes (pod CIDRs) and FDB entries wanted.
    pub nodes: usize,
    pub routes: usize,
    pub fdb: usize,
    /// Shared with the desired state kept for the next pass: the same list (pointer) as
    /// the previous pass's when no rejection changed.
    pub rejected: Arc<Vec<Rejection>>,
    pub report: ApplyReport,
    /// `None` when the filter is off, or when it could not be read (the error is in
    /// `report.errors`).
    pub filter: Option<FilterReport>,
    /// Drift found and repaired in this pass (device, sysctls, filter).
    pub repairs: Vec<Repair>,
    pub elapsed: Duration,
    /// Where `elapsed` went, step by step.
    pub times: PassTimes,
}

impl Datapath {
    /// Host sysctls, then the device (created, adopted or repaired). Returns the sysctl
    /// changes made so the caller can report them.
    pub async fn setup(config: &Config, node_ip: Ipv4Addr) -> Result<(Self, Vec<SysctlChange>)> {
        let mut changes = sysctl::ensure_host()?;
        let nl = Netlink::open()?;
        let device = vxlan::ensure(&nl, &config.vxlan, node_ip).await?;
        if let Some(w) = &device.mtu_warning {
            tracing::warn!(device = %device.name, underlay = %device.underlay, "{w}");
        }
        changes.extend(device.sysctls.iter().cloned());
        changes.extend(sysctl::ensure_interface(&device.underlay, false)?);
        let policy = NodePolicy::from_config(config, node_ip);
        let filter = if config.datapath.filter {
            let base = FilterSpec {
                device: device.name.clone(),
                port: config.vxlan.port,
                tunnel_mtu: device.mtu,
                nodes: BTreeSet::new(),
                pod_cidrs: config.gateway.hybrid_pod_cidrs.clone(),
                vpc_cidrs: config.gateway.vpc_cidrs.clone(),
            };
            install_filter(&nl, &device, &base).await?;
            Some(base)
        } else {
            filter::delete().await?;
            None
        };
        Ok((
            Datapath {
                nl,
                device: std::sync::Mutex::new(device),
                vxlan: config.vxlan.clone(),
                node_ip,
                policy,
                filter,
                known: std::sync::Mutex::new(Known::default()),
                elements: tokio::sync::Mutex::new(None),
            },
            changes,
        ))
    }

    /// The device as the last pass left it.
    pub fn device(&self) -> Device {
        self.device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The device and the forwarding sysctls as the kernel holds them now, without
    /// repairing anything: a few netlink and /proc/sys reads, cheap enough for every
    /// `/readyz` and scrape. The filter is not read here (that costs an `nft` run); its
    /// drift is found by the full passes.
    pub async fn live(&self) -> telemetry_live::Live {
        let device = self.device();
        let mut problems = Vec::new();
        let device_up = match self.nl.link(&device.name).await {
            Ok(Some(l)) if l.alias.as_deref() != Some(vxlan::DEVICE_ALIAS) => {
                problems.push(format!(
                    "{} is not the device this daemon made",
                    device.name
                ));
                false
            }
            Ok(Some(l)) if !l.up => {
                problems.push(format!("{} is down", device.name));
                false
            }
            Ok(Some(_)) => true,
            Ok(None) => {
                problems.push(format!("{} is missing", device.name));
                false
            }
            Err(e) => {
                problems.push(e.to_string());
                false
            }
        };
        let wants = [
            ("net.ipv4.ip_forward".to_string(), "1"),
            (format!("net.ipv4.conf.{}.forwarding", device.underlay), "1"),
        ];
        for (key, want) in wants {
            match sysctl::read(&key) {
                Ok(v) if v == want => {}
                Ok(v) => problems.push(format!("{key} is {v}")),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if device_up {
            let key = format!("net.ipv4.conf.{}.forwarding", device.name);
            match sysctl::read(&key) {
                Ok(v) if v == "1" => {}
                Ok(v) => problems.push(format!("{key} is {v}")),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if sysctl::read("net.ipv4.conf.all.rp_filter").is_ok_and(|v| v == "1") {
            problems.push("net.ipv4.conf.all.rp_filter is 1 (strict)".into());
        }
        telemetry_live::Live {
            device_up,
            problems,
        }
    }

    /// Link notifications about the device, to run a pass (and so a repair) at once.
    pub fn link_events(&self) -> Result<LinkEvents> {
        LinkEvents::open()
    }

    /// Notifications of the filter table's deletions (flushed, deleted), to run a pass
    /// (and so a repair) at once; `None` when the filter is off.
    pub fn filter_events(&self) -> Option<Result<filter_events::FilterEvents>> {
        self.filter.as_ref()?;
        Some(
            filter_events::FilterEvents::open().map_err(|source| DatapathError::Io {
                context: "subscribing to nftables notifications".into(),
                source,
            }),
        )
    }

    /// The device exists, is ours, up and right; forwarding and rp_filter still hold.
    /// Whatever drifted is put right and listed.
    async fn check_host(&self) -> Result<(Device, Vec<Repair>)> {
        let mut repairs = Vec::new();
        let device = vxlan::ensure(&self.nl, &self.vxlan, self.node_ip).await?;
        match &device.action {
            DeviceAction::Adopted => {}
            DeviceAction::Created => repairs.push(Repair {
                what: "device",
                detail: format!("{} was gone; created again", device.name),
            }),
            other => repairs.push(Repair {
                what: "device",
                detail: format!("{} {other}", device.name),
            }),
        }
        // A freshly created device's sysctls are set-up, not drift.
        let mut sysctls = if device.action == DeviceAction::Created {
            Vec::new()
        } else {
            device.sysctls.clone()
        };
        sysctls.extend(sysctl::ensure_host()?);
        sysctls.extend(sysctl::ensure_interface(&device.underlay, false)?);
        repairs.extend(sysctls.into_iter().map(|c| Repair {
            what: "sysctl",
            detail: c.to_string(),
        }));
        *self.device.lock().unwrap_or_else(|p| p.into_inner()) = device.clone();
        Ok((device, repairs))
    }

    /// Makes the kernel match `nodes`: reads what is there, diffs, applies only the
    /// difference. Failed entries are in the report and are retried by the next pass.
    /// `pod_cidrs` is `gateway.hybrid_pod_cidrs` as the running configuration has it.
    /// A [`Scope::Full`] pass: the device, sysctls and filter are checked too.
    pub async fn reconcile(
        &self,
        nodes: &[HybridNode],
        pod_cidrs: &[Ipv4Net],
    ) -> Result<Reconciled> {
        self.reconcile_scoped(nodes, pod_cidrs, Scope::Full).await
    }

    /// [`Datapath::reconcile`] looking only as far as `scope` says.
    pub async fn reconcile_scoped(
        &self,
        nodes: &[HybridNode],
        pod_cidrs: &[Ipv4Net],
        scope: Scope,
    ) -> Result<Reconciled> {
        self.pass(Input::Slice(nodes), pod_cidrs, scope).await
    }

    /// [`Datapath::reconcile_scoped`] for a published node list: a [`Scope::Changes`]
    /// pass after one that applied an earlier list without errors applies the node-level
    /// changes between the two to the desired state it kept, so its CPU work, like its
    /// kernel work, is the size of the change. A full pass rebuilds the desired state
    /// from scratch and compares it with everything the kernel holds.
    pub async fn reconcile_set(
        &self,
        set: &Arc<NodeList>,
        pod_cidrs: &[Ipv4Net],
        scope: Scope,
    ) -> Result<Reconciled> {
        self.pass(Input::Set(set), pod_cidrs, scope).await
    }

    async fn pass(
        &self,
        input: Input<'_>,
        pod_cidrs: &[Ipv4Net],
        scope: Scope,
    ) -> Result<Reconciled> {
        let started = Instant::now();
        let mut times = PassTimes::default();
        let known = std::mem::take(&mut *self.known.lock().unwrap_or_else(|p| p.into_inner()));
        let mut t = times.step("known state", started);
        let (device, mut repairs, known) = match scope {
            Scope::Full => {
                let (device, repairs) = self.check_host().await?;
                t = times.step("host check", t);
                (device, repairs, Known::default())
            }
            Scope::Changes => (self.device(), Vec::new(), known),
        };
        // Addresses come and go (a second ENI, a container bridge): a node may never claim
        // one this host holds right now.
        let own = self.nl.local_ipv4s().await?;
        t = times.step("own addresses", t);
        let mut policy = self.policy.clone();
        policy.pod_cidrs = pod_cidrs.to_vec();
        policy.own_addresses.extend(own);
        // `known_plan`: a plan relative to what this process last applied (not to a fresh
        // read of the kernel), so its neighbour ops are the node set's change. `None`: the
        // kernel is read and compared.
        let (state, known_plan) = match input {
            Input::Slice(nodes) => {
                let (desired, rejected) = Desired::build_with(nodes, &policy);
                t = times.step("desired state (build)", t);
                let plan = known
                    .vtep
                    .as_ref()
                    .map(|before| vtep::diff_known(before, &desired, &self.nl.route_style()));
                (State::Plain(desired, Arc::new(rejected)), plan)
            }
            Input::Set(set) => match known.index {
                Some((mut index, before)) if index.policy().pod_cidrs == policy.pod_cidrs => {
                    let changes = set.changes_since(&before);
                    t = times.step("node list change", t);
                    drop(before);
                    t = times.step("previous list dropped", t);
                    let plan = index.update(policy.own_addresses, changes, &self.nl.route_style());
                    (State::Indexed(index, set.clone()), Some(plan))
                }
                _ => {
                    let index = Box::new(Index::build(set.ranked().cloned(), policy.clone()));
                    t = times.step("desired state (build)", t);
                    (State::Indexed(index, set.clone()), None)
                }
            },
        };
        let desired = state.desired();
        // The filter learns a new node before its routes exist and forgets a removed one
        // before they go: its VXLAN is accepted exactly while the gateway forwards to it.
        // It runs alongside the kernel dump, and then alongside the new nodes' ARP, FDB and
        // nexthop entries (`apply_gated`), never alongside a route change.
        let mut filter_times = PassTimes::default();
        let (mut report, (filter, filter_known, filter_errors)) = {
            let filter = self.filter_pass(
                known.filter,
                scope,
                known_plan.as_ref(),
                desired,
                pod_cidrs,
                &mut filter_times,
            );
            let mut filter = std::pin::pin!(futures::future::maybe_done(filter));
            let dumped;
            let plan = match &known_plan {
                Some(plan) => {
                    t = times.step("plan (against the known state)", t);
                    plan
                }
                None => {
                    let dump = std::pin::pin!(self.nl.read_vtep(device.index));
                    let actual = match futures::future::select(dump, filter.as_mut()).await {
                        futures::future::Either::Left((actual, _)) => actual,
                        futures::future::Either::Right(((), dump)) => dump.await,
                    };
                    // A failed dump ends the pass, but not a filter write half done.
                    let actual = match actual {
                        Ok(actual) => actual,
                        Err(e) => {
                            filter.as_mut().await;
                            return Err(e);
                        }
                    };
                    dumped = vtep::diff(desired, &actual);
                    t = times.step("kernel dump + diff (the filter alongside)", t);
                    &dumped
                }
            };
            let report = if plan.is_empty() {
                filter.as_mut().await;
                ApplyReport::default()
            } else {
                self.nl
                    .apply_gated(device.index, plan, &mut times, filter.as_mut())
                    .await
                    .0
            };
            // Always done here: awaited above, or the gate `apply_gated` waited for.
            (report, filter.as_mut().take_output().unwrap_or_default())
        };
        times.steps.extend(filter_times.steps);
        times.requests.extend(filter_times.requests);
        t = times.step("netlink apply", t);
        if let Some(f) = &filter {
            repairs.extend(f.repaired.iter().map(|d| Repair {
                what: "filter",
                detail: d.clone(),
            }));
        }
        let (nodes_n, routes, fdb, entries) = (
            desired.neighbours.len(),
            desired.routes.len(),
            desired.fdb.len(),
            desired.entry_count(),
        );
        let rejected = state.rejected();
        t = times.step("rejected list", t);
        let clean = report.errors.is_empty();
        let (vtep, index) = match state {
            State::Plain(desired, _) => (clean.then_some(desired), None),
            State::Indexed(index, set) => (None, clean.then_some((index, set))),
        };
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = Known {
            vtep,
            index,
            filter: filter_known,
        };
        times.step("keep state", t);
        report.add_errors += filter_errors.len();
        report.errors.extend(filter_errors);
        let elapsed = started.elapsed();
        tracing::debug!(
            ?scope,
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            "pass steps: {times}"
        );
        Ok(Reconciled {
            desired_entries: entries,
            nodes: nodes_n,
            routes,
            fdb,
            rejected,
            report,
            filter,
            repairs,
            elapsed,
            times,
        })
    }
}

impl Datapath {
    /// The filter's part of a pass: the node set's change as elements when the plan is
    /// the node set's change (`known_plan`), else the table compared with `desired` and
    /// rewritten where it differs. Returns what it did, the spec the table now has (None
    /// after an error) and its errors.
    async fn filter_pass(
        &self,
        known_filter: Option<FilterSpec>,
        scope: Scope,
        known_plan: Option<&vtep::Plan>,
        desired: &Desired,
        pod_cidrs: &[Ipv4Net],
        times: &mut PassTimes,
    ) -> (Option<FilterReport>, Option<FilterSpec>, Vec<DatapathError>) {
        let Some(base) = &self.filter else {
            return (None, None, Vec::new());
        };
        let started = Instant::now();
        let mut elements = self.elements.lock().await;
        let synced = match (known_filter, known_plan) {
            // Reading the table back costs an `nft` run and a JSON parse of every
            // element: node events only write when the node set changed, and only the
            // elements that did.
            (Some(mut spec), Some(plan))
                if scope == Scope::Changes && spec.pod_cidrs == pod_cidrs =>
            {
                let (added, removed) = node_changes(plan, &mut spec.nodes);
                let r = write_filter_nodes(&mut elements, &spec, &added, &removed, times).await;
                (spec, r)
            }
            (before, _) => {
                let spec = FilterSpec {
                    nodes: desired.neighbours.keys().copied().collect(),
                    pod_cidrs: pod_cidrs.to_vec(),
                    ..base.clone()
                };
                let r = match &before {
                    Some(before) if scope == Scope::Changes => {
                        write_filter_if_changed(&mut elements, before, &spec, times).await
                    }
                    _ => sync_filter(&spec).await,
                };
                (spec, r)
            }
        };
        drop(elements);
        times.add("filter", started.elapsed());
        match synced {
            (spec, Ok(r)) => (Some(r), Some(spec), Vec::new()),
            (_, Err(e)) => (None, None, vec![e]),
        }
    }
}

/// What a pass is given: a plain slice (rebuilt and compared whole every time) or a
/// published list (applied as its change when the previous list is known).
enum Input<'a> {
    Slice(&'a [HybridNode]),
    Set(&'a Arc<NodeList>),
}

/// The desired state a pass worked out, in the form the next pass will start from.
enum State {
    Plain(Desired, Arc<Vec<Rejection>>),
    Indexed(Box<Index>, Arc<NodeList>),
}

impl State {
    fn desired(&self) -> &Desired {
        match self {
            State::Plain(d, _) => d,
            State::Indexed(i, _) => i.desired(),
        }
    }

    fn rejected(&self) -> Arc<Vec<Rejection>> {
        match self {
            State::Plain(_, r) => r.clone(),
            State::Indexed(i, _) => i.rejected_shared(),
        }
    }
}

/// The filter's node set follows the ARP entries: the nodes a plan (made against the
/// known state) adds and removes, applied to `nodes`.
fn node_changes(
    plan: &vtep::Plan,
    nodes: &mut BTreeSet<Ipv4Addr>,
) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for op in plan.ops() {
        match op {
            vtep::Op::SetNeighbour { ip, .. } if nodes.insert(*ip) => added.push(*ip),
            vtep::Op::DelNeighbour { ip } if nodes.remove(ip) => removed.push(*ip),
            _ => {}
        }
    }
    (added, removed)
}

/// At start: keep the table a previous process left (its node set is what the kernel
/// forwards to now) and fix only what drifted; with no table yet, fill the node set from
/// the FDB entries on the device, so turning the filter on never cuts a working node off.
async fn install_filter(nl: &Netlink, device: &Device, base: &FilterSpec) -> Result<()> {
    let current = filter::read().await?;
    let nodes: BTreeSet<Ipv4Addr> = match &current {
        Some(state) => state
            .sets
            .get("nodes")
            .map(|s| s.iter().map(|n| n.addr()).collect())
            .unwrap_or_default(),
        None => nl
            .read_vtep(device.index)
            .await?
            .fdb
            .iter()
            .filter_map(|e| e.dst)
            .collect(),
    };
    let spec = FilterSpec {
        nodes,
        ..base.clone()
    };
    match current {
        Some(state) if state.drift(&spec).is_empty() => Ok(()),
        Some(state) => {
            tracing::info!(drift = ?state.drift(&spec), "rewriting nftables table ip {}", filter::TABLE);
            filter::apply(&spec).await
        }
        None => {
            tracing::info!(
                nodes = spec.nodes.len(),
                "creating nftables table ip {}",
                filter::TABLE
            );
            filter::apply(&spec).await
        }
    }
}

/// Rewrites the table (atomically) when the node set or the pod CIDRs differ from what was
/// last written; reads nothing. Drift is the full pass's business.
async fn write_filter_if_changed(
    elements: &mut Option<nft_elements::ElementSocket>,
    before: &FilterSpec,
    spec: &FilterSpec,
    times: &mut PassTimes,
) -> Result<FilterReport> {
    if before == spec {
        return Ok(FilterReport::default());
    }
    let only_nodes = before.device == spec.device
        && before.port == spec.port
        && before.tunnel_mtu == spec.tunnel_mtu
        && before.pod_cidrs == spec.pod_cidrs
        && before.vpc_cidrs == spec.vpc_cidrs;
    if !only_nodes {
        filter::apply(spec).await?;
        return Ok(FilterReport {
            written: true,
            ..FilterReport::default()
        });
    }
    let added: Vec<Ipv4Addr> = spec.nodes.difference(&before.nodes).copied().collect();
    let removed: Vec<Ipv4Addr> = before.nodes.difference(&spec.nodes).copied().collect();
    write_filter_nodes(elements, spec, &added, &removed, times).await
}

/// Adds and removes node elements (the table otherwise as last written, now `spec`) in one
/// transaction; nothing when there are none.
async fn write_filter_nodes(
    elements: &mut Option<nft_elements::ElementSocket>,
    spec: &FilterSpec,
    added: &[Ipv4Addr],
    removed: &[Ipv4Addr],
    times: &mut PassTimes,
) -> Result<FilterReport> {
    let mut report = FilterReport::default();
    if added.is_empty() && removed.is_empty() {
        return Ok(report);
    }
    report.written = true;
    match filter::update_nodes(elements, added, removed, times).await {
        Ok(()) => return Ok(report),
        // Not as last written (someone changed it): the whole table, atomically.
        Err(e) => tracing::debug!("node set update refused ({e}); rewriting the table"),
    }
    let t = Instant::now();
    filter::apply(spec).await?;
    times.add("filter: table rewritten (batch refused)", t.elapsed());
    Ok(report)
}

/// Makes the table match `spec`, rewriting it (atomically) only when something differs.
async fn sync_filter(spec: &FilterSpec) -> Result<FilterReport> {
    let mut report = FilterReport::default();
    match filter::read().await? {
        None => report
            .repaired
            .push(format!("table ip {} was missing", filter::TABLE)),
        Some(state) => {
            report.repaired = state.drift(spec);
            report.written = !state.nodes_match(spec);
            report.counters = state.counters;
        }
    }
    if !report.repaired.is_empty() || report.written {
        filter::apply(spec).await?;
        report.written = true;
    }
    Ok(report)
}
