//! Keeps the kernel matching the latest hybrid node set: on every change, on every resync
//! tick (drift repair), and with jittered backoff after failures.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::config::Config;
use crate::datapath::{Datapath, Reconciled};
use crate::k8s::cilium_nodes::NodeSet;
use crate::telemetry::{DaemonStatus, Metrics};

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Where a reconcile pass reports to.
#[derive(Clone)]
pub struct Observers {
    pub status: Arc<DaemonStatus>,
    pub metrics: Arc<Metrics>,
}

pub async fn run(
    datapath: Arc<Datapath>,
    mut nodes: watch::Receiver<Option<NodeSet>>,
    mut config: watch::Receiver<Arc<Config>>,
    obs: Observers,
    cancel: CancellationToken,
) {
    let mut reporter = Reporter::default();
    let mut failures = 0u32;
    loop {
        let resync = {
            let c = config.borrow_and_update();
            datapath.set_pod_cidrs(c.gateway.hybrid_pod_cidrs.clone());
            c.datapath.resync_interval
        };
        // Nothing is programmed before the first full node list: an empty set at start-up
        // would flush a kernel that is still forwarding for the previous process.
        let Some(set) = nodes.borrow_and_update().clone() else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = nodes.changed() => if r.is_err() { return },
            }
            continue;
        };
        let wait = match datapath.reconcile(&set).await {
            Ok(r) => {
                reporter.report(&r);
                obs.metrics.record_apply(&r.report);
                obs.metrics
                    .reconcile_duration_seconds
                    .observe(r.elapsed.as_secs_f64());
                obs.metrics.hybrid_nodes_configured.set(r.nodes as i64);
                obs.metrics.record_rejections(&r.rejected);
                if let Some(f) = &r.filter {
                    obs.metrics.record_filter(f);
                    for what in &f.repaired {
                        tracing::warn!("nftables filter drifted, repaired: {what}");
                    }
                }
                obs.metrics.vxlan_route_count.set(r.routes as i64);
                obs.metrics.vxlan_fdb_entries.set(r.fdb as i64);
                for e in &r.report.errors {
                    obs.status.error(e.to_string());
                }
                let clean = r.report.errors.is_empty();
                obs.status.update(|s| {
                    s.nodes_programmed = r.nodes;
                    s.nodes_synced |= clean;
                });
                obs.metrics
                    .ready
                    .set(i64::from(obs.status.snapshot().ready()));
                if r.report.errors.is_empty() {
                    failures = 0;
                    resync
                } else {
                    failures += 1;
                    backoff(failures)
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!("reconcile failed, retrying: {e}");
                obs.status.error(format!("reconcile: {e}"));
                backoff(failures)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            r = nodes.changed() => if r.is_err() { return },
            r = config.changed() => if r.is_err() { return },
        }
    }
}

/// Exponential backoff with jitter, capped.
pub fn backoff(failures: u32) -> Duration {
    let ceiling = RETRY_MIN
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(RETRY_MAX);
    ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Logs what a reconcile changed, once; stays quiet on no-op passes and repeats a
/// rejected node's warning only when the reason changes.
#[derive(Default)]
struct Reporter {
    rejected: Vec<String>,
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
                entries = r.desired_entries,
                elapsed_ms = r.elapsed.as_millis() as u64,
                "datapath reconciled"
            );
        }
        for e in &rep.errors {
            tracing::warn!("{e}");
        }
        let now: Vec<String> = r.rejected.iter().map(ToString::to_string).collect();
        for (rej, text) in r.rejected.iter().zip(&now) {
            if !self.rejected.contains(text) {
                tracing::warn!(node = rej.node(), "skipping node: {text}");
            }
        }
        self.rejected = now;
    }
}
