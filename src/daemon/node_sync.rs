//! Keeps the kernel matching the latest hybrid node set: a [`Target`] the reconcile driver
//! runs on every change of the nodes or the configuration, every
//! `datapath.resync_interval` (drift repair), and with backoff after failures.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::node_snapshot::Keeper;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::datapath::{filter, Datapath, DatapathError, Reconciled, Rejection, Scope};
use crate::k8s::cilium_nodes::NodeSet;
use crate::reconcile::{self, Outcome, Target, Wakeups};
use crate::telemetry::Telemetry;

/// After a failed pass: 200-400 ms, doubling, at most 30 s.
pub const BACKOFF: Backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(30));

pub struct NodeSync {
    pub datapath: Arc<Datapath>,
    pub nodes: watch::Receiver<Option<NodeSet>>,
    pub config: watch::Receiver<Arc<Config>>,
    pub telemetry: Telemetry,
    reporter: Reporter,
    /// Set by the link and nftables notification streams: the next pass looks at
    /// everything.
    link_event: Arc<AtomicBool>,
    /// When the last full pass (device, sysctls, every entry, the filter) ran and whether
    /// the last pass went wrong: both call for the next pass to be full.
    last_full: Option<Instant>,
    last_failed: bool,
    /// Records each set applied without errors (Kubernetes mode with a state directory).
    snapshot: Option<Keeper>,
}

impl NodeSync {
    pub fn new(
        datapath: Arc<Datapath>,
        nodes: watch::Receiver<Option<NodeSet>>,
        config: watch::Receiver<Arc<Config>>,
        telemetry: Telemetry,
        snapshot: Option<Keeper>,
    ) -> Self {
        NodeSync {
            datapath,
            nodes,
            config,
            telemetry,
            reporter: Reporter::default(),
            link_event: Arc::new(AtomicBool::new(false)),
            last_full: None,
            last_failed: false,
            snapshot,
        }
    }

    /// Until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut wakeups = Wakeups::new()
            .on_change(self.nodes.clone())
            .on_change(self.config.clone());
        // The device deleted, set down or changed by someone else: repair it now, not at
        // the next resync.
        match self.datapath.link_events() {
            Ok(events) => {
                let dp = self.datapath.clone();
                let flag = self.link_event.clone();
                wakeups = wakeups.on_stream(futures::stream::unfold(
                    (events, dp, flag),
                    |(mut events, dp, flag)| async move {
                        let d = dp.device();
                        if events.next(&d.name, d.index).await.is_none() {
                            // A lost subscription must not stop the node sync: the
                            // resync still repairs.
                            std::future::pending::<()>().await;
                        }
                        flag.store(true, Ordering::SeqCst);
                        Some(((), (events, dp, flag)))
                    },
                ));
            }
            Err(e) => tracing::warn!(
                "no link notifications ({e}); the device is checked at every resync only"
            ),
        }
        // The filter table flushed or deleted (the node set's elements aside): the same.
        match self.datapath.filter_events() {
            Some(Ok(events)) => {
                let flag = self.link_event.clone();
                wakeups = wakeups.on_stream(futures::stream::unfold(
                    (events, flag),
                    |(mut events, flag)| async move {
                        if let Err(e) = events.next(filter::TABLE).await {
                            tracing::warn!(
                                "nftables notifications lost ({e}); the filter is checked at every resync only"
                            );
                            std::future::pending::<()>().await;
                        }
                        flag.store(true, Ordering::SeqCst);
                        Some(((), (events, flag)))
                    },
                ));
            }
            Some(Err(e)) => tracing::warn!(
                "no nftables notifications ({e}); the filter is checked at every resync only"
            ),
            None => {}
        }
        reconcile::drive(&mut self, &mut wakeups, BACKOFF, &cancel).await;
    }
}

impl Target for NodeSync {
    type Error = DatapathError;

    async fn pass(&mut self) -> Result<Outcome, DatapathError> {
        let config_changed = self.config.has_changed().unwrap_or(true);
        let config = self.config.borrow_and_update().clone();
        // Nothing is programmed before the first full node list: an empty set at start-up
        // would flush a kernel that is still forwarding for the previous process.
        let Some(set) = self.nodes.borrow_and_update().clone() else {
            return Ok(Outcome::idle());
        };
        let resync = config.datapath.resync_interval;
        let link_event = self.link_event.swap(false, Ordering::SeqCst);
        // A node event only costs its change; everything is read back and compared on
        // the resync, on link events, after anything went wrong and when the
        // configuration changed.
        let full = link_event
            || config_changed
            || self.last_failed
            || self.last_full.is_none_or(|t| t.elapsed() >= resync);
        let scope = if full { Scope::Full } else { Scope::Changes };
        self.last_failed = true;
        let r = self
            .datapath
            .reconcile_set(&set, &config.gateway.hybrid_pod_cidrs, scope)
            .await?;
        if full {
            self.last_full = Some(Instant::now());
        }
        self.reporter.report(&r);
        self.telemetry.datapath_reconciled(&r);
        let changes = r.report.changes() as u64;
        self.last_failed = !r.report.errors.is_empty();
        if let (false, Some(k)) = (self.last_failed, &self.snapshot) {
            k.applied(&set);
        }
        Ok(if r.report.errors.is_empty() {
            let since_full = self.last_full.map_or(Duration::ZERO, |t| t.elapsed());
            Outcome::resync(changes, resync.saturating_sub(since_full))
        } else {
            Outcome::retry(changes)
        })
    }

    fn failed(&mut self, e: &DatapathError) {
        tracing::warn!("reconcile failed, retrying: {e}");
        self.telemetry.datapath_failed(e);
    }
}

/// Logs what a reconcile changed, once; stays quiet on no-op passes and repeats a
/// rejected node's warning only when the reason changes.
#[derive(Default)]
struct Reporter {
    rejected: HashSet<String>,
    /// The list `rejected` was made from.
    last: Option<Arc<Vec<Rejection>>>,
}

impl Reporter {
    fn report(&mut self, r: &Reconciled) {
        let rep = &r.report;
        if rep.changes() > 0 {
            tracing::info!(
                routes_set = rep.routes_set,
                routes_deleted = rep.routes_deleted,
                arp_set = rep.neighbours_set,
                arp_deleted = rep.neighbours_deleted,
                fdb_set = rep.fdb_set,
                fdb_deleted = rep.fdb_deleted,
                nexthops_set = rep.nexthops_set,
                nexthops_deleted = rep.nexthops_deleted,
                entries = r.desired_entries,
                elapsed_ms = r.elapsed.as_millis() as u64,
                "datapath reconciled"
            );
        }
        for e in &rep.errors {
            tracing::warn!("{e}");
        }
        for repair in &r.repairs {
            tracing::warn!(
                what = repair.what,
                "datapath drifted, repaired: {}",
                repair.detail
            );
        }
        // The same list as last time (no rejection changed): nothing new to say, and a
        // node event does not pay for every rejected node.
        if self
            .last
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, &r.rejected))
        {
            return;
        }
        let now: HashSet<String> = r.rejected.iter().map(ToString::to_string).collect();
        for rej in r.rejected.iter() {
            let text = rej.to_string();
            if !self.rejected.contains(&text) {
                tracing::warn!(node = rej.node(), "skipping node: {text}");
            }
        }
        self.rejected = now;
        self.last = Some(r.rejected.clone());
    }
}
