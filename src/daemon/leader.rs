//! The election this gateway takes part in — the Lease alone, or the Lease plus the
//! DynamoDB lock — and the leader-only work that follows it.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::route_sync::RouteSync;
use crate::config::Config;
use crate::datapath::Mac;
use crate::election::advisor::{Advisor, Handover, HealthInputs};
use crate::election::combined::{self, Combined};
use crate::election::dynamodb::DynamoDbLockStore;
use crate::election::health::{HealthRules, PeerScore};
use crate::election::{self, lease::LeaseLock, scores, ElectionHandle, Elector, Timings};
use crate::k8s::{vtep_config, vtep_observer, vtep_shape};
use crate::telemetry::Telemetry;

enum Contest {
    Lease(JoinHandle<Elector<LeaseLock>>),
    Combined(JoinHandle<Combined<LeaseLock, DynamoDbLockStore>>),
}

pub struct Election {
    contest: Contest,
    election_cancel: CancellationToken,
    leader_work: Vec<JoinHandle<()>>,
    leader_cancel: CancellationToken,
    request_timeout: Duration,
    handle: ElectionHandle,
    routes: Option<RouteSync>,
}

pub struct LeaderInputs {
    pub kube: kube::Client,
    /// The election identity (per process) and the host's stable one (names its score Lease).
    pub identity: String,
    pub stable_identity: String,
    /// This gateway's tunnel health, from the prober.
    pub tunnel_score: tokio::sync::watch::Receiver<Option<crate::probe::health::Score>>,
    pub node_ip: Ipv4Addr,
    pub mac: Mac,
    pub dynamodb: Option<aws_sdk_dynamodb::Client>,
    pub routes: Option<RouteSync>,
    pub telemetry: Telemetry,
}

impl Election {
    pub fn start(config: &Config, mut inputs: LeaderInputs) -> Self {
        let e = &config.election;
        // Half the renew deadline: a write must fit in the leadership time a renewal leaves.
        let request_timeout = e.store_timeout(config.kubernetes.request_timeout);
        let (publisher, handle) = election::channel();
        let election_cancel = CancellationToken::new();
        let leader_cancel = CancellationToken::new();
        let (wake, lease_watch) = election::lease::watch_changes(
            inputs.kube.clone(),
            &e.namespace,
            &e.lease_name,
            election_cancel.clone(),
        );
        let dynamodb = inputs.dynamodb.take();
        let mut leader_work = vec![lease_watch];
        let advisor = e.health.enabled.then(|| {
            let (advisor, tasks) = start_health(config, &inputs, request_timeout, &election_cancel);
            leader_work.extend(tasks);
            advisor
        });
        let contest = spawn_contest(
            config,
            &inputs,
            dynamodb,
            request_timeout,
            publisher,
            wake,
            advisor,
            election_cancel.clone(),
        );
        let lock_in_use = matches!(contest, Contest::Combined(_));
        let routes = inputs.routes.clone();
        leader_work.extend(spawn_leader_work(
            config,
            inputs,
            &handle,
            request_timeout,
            lock_in_use,
            &leader_cancel,
        ));
        Election {
            contest,
            election_cancel,
            leader_work,
            leader_cancel,
            request_timeout,
            handle,
            routes,
        }
    }

    /// Standby first, then leader work stopped, then the locks released: the next leader
    /// can start at once and never overlaps with us.
    /// `final_stop` (package removal, not a restart) with `aws.cleanup_on_shutdown` first
    /// deletes this gateway's VPC routes, while it still leads.
    pub async fn stop(self, final_stop: bool) {
        if final_stop && self.handle.leadership.borrow().is_leader() {
            if let Some(r) = &self.routes {
                match r.cleanup(&self.handle).await {
                    Ok(None) => {}
                    Ok(Some(report)) => tracing::info!(
                        deleted = report.deleted(),
                        "final stop: deleted this gateway's VPC routes"
                    ),
                    Err(e) => tracing::warn!(
                        "final stop: could not delete this gateway's VPC routes: {e}"
                    ),
                }
            }
        }
        self.election_cancel.cancel();
        let contest = match self.contest {
            Contest::Lease(t) => t.await.ok().map(Ok),
            Contest::Combined(t) => t.await.ok().map(Err),
        };
        self.leader_cancel.cancel();
        for t in self.leader_work {
            let _ = t.await;
        }
        match contest {
            Some(Ok(mut lease)) => match tokio::time::timeout(
                self.request_timeout,
                lease.release(jiff::Timestamp::now()),
            )
            .await
            {
                Ok(Ok(true)) => tracing::info!(identity = lease.identity(), "released the Lease"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    "could not release the Lease ({e}); the standby takes over when it expires"
                ),
                Err(_) => tracing::warn!(
                    "releasing the Lease timed out; the standby takes over when it expires"
                ),
            },
            Some(Err(mut both)) => {
                let (lock, lease) = both.release(self.request_timeout).await;
                match lock {
                    Ok(true) => tracing::info!("released the DynamoDB lock"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("could not release the DynamoDB lock ({e}); the standby takes over when it expires"),
                }
                match lease {
                    Ok(true) => tracing::info!("released the Lease"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("could not release the Lease ({e})"),
                }
            }
            None => {}
        }
    }
}

/// Health-aware leadership: this gateway's score published in its score Lease, the
/// peers' watched, and what the election does with them mirrored into status and metrics.
/// The tasks end with `cancel` (the election's: the score is withdrawn as the gateway stops).
fn start_health(
    config: &Config,
    inputs: &LeaderInputs,
    request_timeout: Duration,
    cancel: &CancellationToken,
) -> (Advisor, Vec<JoinHandle<()>>) {
    let e = &config.election;
    let h = &e.health;
    let own = scores::ScoreLease::new(
        inputs.kube.clone(),
        &e.namespace,
        &e.lease_name,
        &inputs.stable_identity,
        &inputs.identity,
        request_timeout,
    );
    let own_name = own.name().to_string();
    let publish = tokio::spawn(scores::publish(
        own,
        inputs.tunnel_score.clone(),
        h.publish_interval,
        h.stale_after,
        cancel.clone(),
    ));
    let (peers, watch) = scores::watch_peers(
        inputs.kube.clone(),
        &e.namespace,
        &e.lease_name,
        &own_name,
        cancel.clone(),
    );
    let (handovers, handovers_rx) = tokio::sync::watch::channel(None);
    let follow = tokio::spawn(follow_health(
        peers.clone(),
        handovers_rx,
        h.stale_after,
        inputs.telemetry.clone(),
        cancel.clone(),
    ));
    let inputs = HealthInputs::new(inputs.tunnel_score.clone(), peers, HealthRules::from(h));
    (
        Advisor::new(inputs, handovers),
        vec![publish, watch, follow],
    )
}

/// Mirrors the peers' scores (fresh ones, every second: freshness is a matter of time)
/// and the last voluntary handover into status and metrics.
async fn follow_health(
    mut peers: tokio::sync::watch::Receiver<Vec<PeerScore>>,
    mut handovers: tokio::sync::watch::Receiver<Option<Handover>>,
    stale_after: Duration,
    telemetry: Telemetry,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let now = tokio::time::Instant::now();
        let fresh: Vec<PeerScore> = peers
            .borrow_and_update()
            .iter()
            .filter(|p| now.saturating_duration_since(p.seen_changed_at) <= stale_after)
            .cloned()
            .collect();
        let last = handovers.borrow_and_update().clone();
        telemetry.peer_health(&fresh, last.as_ref());
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            r = peers.changed() => if r.is_err() { return },
            r = handovers.changed() => if r.is_err() { return },
        }
    }
}

/// The election itself: the Lease alone, or the Lease plus the DynamoDB lock.
#[allow(clippy::too_many_arguments)]
fn spawn_contest(
    config: &Config,
    inputs: &LeaderInputs,
    dynamodb: Option<aws_sdk_dynamodb::Client>,
    request_timeout: Duration,
    publisher: election::ElectionPublisher,
    wake: Arc<Notify>,
    mut advisor: Option<Advisor>,
    cancel: CancellationToken,
) -> Contest {
    let e = &config.election;
    let timings = Timings {
        lease_duration: e.lease_duration,
        renew_deadline: e.renew_deadline,
        retry_period: e.retry_period,
    };
    let lease = Elector::new(
        LeaseLock::new(
            inputs.kube.clone(),
            &e.namespace,
            &e.lease_name,
            request_timeout,
        ),
        inputs.identity.clone(),
        timings,
    );
    let name = format!("{}/{}", e.namespace, e.lease_name);
    match (&e.dynamodb, dynamodb) {
        (Some(d), Some(client)) => {
            tracing::info!(identity = %inputs.identity, lease = %name, table = %d.table, "joining the election (Lease + DynamoDB lock)");
            let lock_t = Timings {
                lease_duration: d.lease_duration,
                ..timings
            };
            let lock = Elector::new(
                DynamoDbLockStore::new(client, &d.table, &d.key, request_timeout),
                inputs.identity.clone(),
                lock_t,
            );
            let mut both = Combined { lease, lock };
            Contest::Combined(tokio::spawn(async move {
                combined::run_advised(&mut both, &publisher, Some(wake), advisor.as_mut(), cancel)
                    .await;
                both
            }))
        }
        _ => {
            tracing::info!(identity = %inputs.identity, lease = %name, "joining the election (Lease)");
            let mut lease = lease;
            Contest::Lease(tokio::spawn(async move {
                election::run_advised(&mut lease, &publisher, Some(wake), advisor.as_mut(), cancel)
                    .await;
                lease
            }))
        }
    }
}

/// What the leader does (each part only while leading), and the status that follows it.
fn spawn_leader_work(
    config: &Config,
    inputs: LeaderInputs,
    handle: &ElectionHandle,
    request_timeout: Duration,
    lock_in_use: bool,
    cancel: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let spec = vtep_config::VtepSpec {
        node_selector: config.kubernetes.vtep_node_selector.clone(),
        ..vtep_config::VtepSpec::new(inputs.node_ip, inputs.mac, config.gateway.vpc_cidrs.clone())
    };
    let (fenced, fenced_rx) = tokio::sync::watch::channel(None);
    // The served CiliumVTEPConfig shape, looked up on every gateway (leader or not) so
    // `status` shows it before a takeover needs it.
    let (shape_tx, shape_rx) = tokio::sync::watch::channel(vtep_shape::Served::Unknown);
    // What the CR names, read on every gateway: a CR left on a non-leader shows on all.
    let (observed_tx, observed_rx) = tokio::sync::watch::channel(vtep_observer::Observed::Unknown);
    let mut work = vec![
        tokio::spawn(vtep_shape::run(
            inputs.kube.clone(),
            request_timeout,
            shape_tx,
            cancel.clone(),
        )),
        tokio::spawn(follow_shape(
            shape_rx.clone(),
            inputs.telemetry.clone(),
            cancel.clone(),
        )),
        tokio::spawn(vtep_observer::run(
            inputs.kube.clone(),
            shape_rx.clone(),
            observed_tx,
            cancel.clone(),
        )),
        tokio::spawn(follow_observed(
            observed_rx,
            inputs.node_ip,
            inputs.telemetry.clone(),
            cancel.clone(),
        )),
        tokio::spawn(vtep_config::run_with_shape(
            inputs.kube,
            spec,
            inputs.identity,
            handle.clone(),
            request_timeout,
            shape_rx,
            fenced,
            cancel.clone(),
        )),
        tokio::spawn(follow_fence(
            handle.clone(),
            fenced_rx,
            None,
            inputs.telemetry.clone(),
            cancel.clone(),
        )),
    ];
    if let Some(r) = inputs.routes {
        work.push(tokio::spawn(r.run(handle.clone(), cancel.clone())));
    }
    work.push(tokio::spawn(follow(
        handle.clone(),
        lock_in_use,
        inputs.telemetry,
        cancel.clone(),
    )));
    work
}

/// Mirrors leadership into the status line and metrics.
/// `lock_in_use`: with the DynamoDB lock, leading means holding it.
async fn follow(
    mut handle: ElectionHandle,
    lock_in_use: bool,
    telemetry: Telemetry,
    cancel: CancellationToken,
) {
    loop {
        let l = handle.leadership.borrow_and_update().clone();
        telemetry.leadership(&l, lock_in_use);
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = handle.leadership.changed() => if r.is_err() { return },
        }
    }
}

/// Mirrors the served CiliumVTEPConfig shape into `status`.
pub(super) async fn follow_shape(
    mut served: tokio::sync::watch::Receiver<vtep_shape::Served>,
    telemetry: Telemetry,
    cancel: CancellationToken,
) {
    loop {
        let now = served.borrow_and_update().describe();
        telemetry.status.update(|s| s.vtepconfig_shape = Some(now));
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = served.changed() => if r.is_err() { return },
        }
    }
}

/// Mirrors what the CiliumVTEPConfig names into `status` and the `vtepconfig_read` /
/// `vtepconfig_names_me` gauges.
pub(super) async fn follow_observed(
    mut observed: tokio::sync::watch::Receiver<vtep_observer::Observed>,
    me: Ipv4Addr,
    telemetry: Telemetry,
    cancel: CancellationToken,
) {
    loop {
        let now = observed.borrow_and_update().clone();
        let names_me = now.names(me);
        let m = &telemetry.metrics;
        m.vtepconfig_read.set(i64::from(names_me.is_some()));
        m.vtepconfig_names_me.set(i64::from(names_me == Some(true)));
        let line = now.describe();
        telemetry.status.update(|s| s.vtepconfig_names = Some(line));
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = observed.changed() => if r.is_err() { return },
        }
    }
}

/// Mirrors why the leader cannot write the CiliumVTEPConfig (fenced, no shape we write
/// is served, or no room for our endpoints) into readiness, and the fence into the `vtepconfig_fenced` gauge; only a
/// leader can be blocked. `shard` (per-AZ mode): the shard whose leadership `handle` is;
/// its status entry and `shard_vtepconfig_*` gauges are the ones set.
pub(super) async fn follow_fence(
    mut handle: ElectionHandle,
    mut blocked: tokio::sync::watch::Receiver<Option<vtep_config::Blocked>>,
    shard: Option<String>,
    telemetry: Telemetry,
    cancel: CancellationToken,
) {
    loop {
        let why = blocked
            .borrow_and_update()
            .clone()
            .filter(|_| handle.leadership.borrow_and_update().is_leader());
        let (fenced, unserved) = match why {
            Some(vtep_config::Blocked::Fenced(w)) => (Some(w), None),
            Some(
                vtep_config::Blocked::NotServed(w) | vtep_config::Blocked::TooManyEndpoints(w),
            ) => (None, Some(w)),
            None => (None, None),
        };
        if let Some(shard) = &shard {
            telemetry.shard_vtepconfig_blocked(shard, fenced, unserved);
        } else {
            telemetry
                .metrics
                .vtepconfig_fenced
                .set(i64::from(fenced.is_some()));
            telemetry.status.update(|s| {
                s.vtepconfig_fenced = fenced;
                s.vtepconfig_unserved = unserved;
            });
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = blocked.changed() => if r.is_err() { return },
            r = handle.leadership.changed() => if r.is_err() { return },
        }
    }
}
