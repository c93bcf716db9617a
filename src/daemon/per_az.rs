//! `[election] mode = "per-az"`: every Availability Zone's route tables form a shard with
//! its own Lease, and each shard's leader does the leader work for that shard only — its
//! tables pointed at its own ENI, its subnets' CiliumVTEPConfig entries naming it.
//!
//! Each shard's election is the unchanged client-go elector ([`election::run`]) on the
//! shard's Lease, so its rules hold per shard: a standby judges expiry by its own clock,
//! leader work re-reads the shard's term and time left before every write, and a clean
//! stop publishes standby, stops the work, then releases.
//!
//! **Home preference.** A gateway campaigns at once for the default shard and for the
//! shard of its own AZ (its *home*). For any other AZ's shard it is a *visitor*: it only
//! reads that shard's Lease (so its expiry clock runs from the holder's last renewal) and
//! the AZ's *claim* Lease (`<lease_name>-<az>-home`), which every gateway of that AZ
//! campaigns for, with the same elector, once it is ready (device up, first node sync
//! applied). The visitor campaigns for the shard only while the claim is vacant — released,
//! or not renewed for a lease duration by the visitor's own clock — i.e. no gateway of the
//! AZ is up; and it hands the shard back once the claim is held again: standby, leader
//! work stopped, the shard's Lease released, so the home gateway (waiting on a watch of
//! that Lease) takes it within milliseconds. The claim only decides who may *campaign*;
//! who may *act* is still decided by the shard's Lease alone, so a wrong view of the claim
//! can delay a takeover or a handback but never make two writers. During a handback both
//! gateways carry every hybrid node's tunnel, so packets routed to either are forwarded.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::aws_side::{AwsSideError, SharedAws};
use super::node_sync::BACKOFF;
use super::shard_elector::{ShardElector, ShardStores};
use crate::aws::shards::{self, Layout, Selection, Shard};
use crate::aws::{RouteError, RouteTables};
use crate::backoff::Backoff;
use crate::config::{Config, JITTER_FACTOR};
use crate::datapath::Mac;
use crate::election::{self, lease::LeaseLock, ElectionHandle, Elector, Term, Timings};
use crate::k8s::vtep_observer::{self, ByShard, Observed};
use crate::k8s::vtep_shape::{self, Served};
use crate::k8s::vtep_shards::{self, CrPlan, ShardVtep};
use crate::reconcile::{self, Outcome, Target, Wakeups};
use crate::telemetry::Telemetry;

/// One EC2 read page of the layout (not leader work: no leadership bound applies).
const LAYOUT_CALL_TIMEOUT: Duration = Duration::from_secs(5);
const LAYOUT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

pub struct PerAzInputs {
    pub kube: kube::Client,
    pub identity: String,
    pub node_ip: Ipv4Addr,
    pub mac: Mac,
    pub aws: SharedAws,
    pub config: watch::Receiver<Arc<Config>>,
    pub telemetry: Telemetry,
    /// With `[election.dynamodb]`: every shard's election takes its own lock item too.
    pub dynamodb: Option<aws_sdk_dynamodb::Client>,
}

/// What every shard's parts share.
struct Shared {
    inputs: PerAzInputs,
    namespace: String,
    lease_name: String,
    timings: Timings,
    /// What each shard's contender is built from.
    stores: ShardStores,
    /// One lock store call (see [`crate::config::ElectionConfig::store_timeout`]).
    request_timeout: Duration,
    home_az: String,
    layout: watch::Receiver<Option<Arc<Layout>>>,
    plan: watch::Receiver<Option<CrPlan>>,
    served: watch::Receiver<Served>,
    /// The shards this gateway campaigns for now (home, or visiting), with their
    /// leadership: a final stop deletes the routes of those it leads.
    contending: std::sync::Mutex<Vec<(Shard, ElectionHandle)>>,
}

/// The running per-AZ election: the layout reader, the served-shape look-up, and one
/// session per shard.
pub struct PerAz {
    cancel: CancellationToken,
    manager: JoinHandle<Vec<Session>>,
    background: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl PerAz {
    /// `home_az`: this gateway's AZ (IMDS).
    pub fn start(config: &Config, inputs: PerAzInputs, home_az: String) -> PerAz {
        let e = &config.election;
        let cancel = CancellationToken::new();
        let (layout_tx, layout) = watch::channel(None);
        let (plan_tx, plan) = watch::channel(None);
        let (shape_tx, served) = watch::channel(Served::Unknown);
        let request_timeout = e.store_timeout(config.kubernetes.request_timeout);
        let mut background = vec![
            tokio::spawn(read_layouts(
                inputs.aws.clone(),
                inputs.config.clone(),
                layout_tx,
                plan_tx,
                cancel.clone(),
            )),
            tokio::spawn(vtep_shape::run(
                inputs.kube.clone(),
                request_timeout,
                shape_tx,
                cancel.clone(),
            )),
            tokio::spawn(super::leader::follow_shape(
                served.clone(),
                inputs.telemetry.clone(),
                cancel.clone(),
            )),
        ];
        // What the CR names, read on every gateway: whole (as in active/standby) and per
        // shard, judged against each shard's leader.
        let (observed_tx, observed) = watch::channel(Observed::Unknown);
        let (by_shard_tx, by_shard) = watch::channel(None);
        background.extend([
            tokio::spawn(vtep_observer::run_by_shard(
                inputs.kube.clone(),
                served.clone(),
                observed_tx,
                Some(by_shard_tx),
                cancel.clone(),
            )),
            tokio::spawn(super::leader::follow_observed(
                observed,
                inputs.node_ip,
                inputs.telemetry.clone(),
                cancel.clone(),
            )),
            tokio::spawn(follow_observed_shards(
                by_shard,
                inputs.node_ip,
                inputs.telemetry.clone(),
                cancel.clone(),
            )),
        ]);
        let timings = Timings {
            lease_duration: e.lease_duration,
            renew_deadline: e.renew_deadline,
            retry_period: e.retry_period,
        };
        let dynamodb = match (&e.dynamodb, inputs.dynamodb.clone()) {
            (Some(d), Some(client)) => Some((client, d.clone())),
            _ => None,
        };
        match &dynamodb {
            Some((_, d)) => {
                tracing::info!(identity = %inputs.identity, home = %home_az, lease = %format!("{}/{}", e.namespace, e.lease_name), table = %d.table, key = %d.key, "joining the per-AZ election (a Lease and a DynamoDB lock item per shard)")
            }
            None => {
                tracing::info!(identity = %inputs.identity, home = %home_az, lease = %format!("{}/{}", e.namespace, e.lease_name), "joining the per-AZ election (a Lease per shard)")
            }
        }
        let stores = ShardStores {
            kube: inputs.kube.clone(),
            namespace: e.namespace.clone(),
            lease_name: e.lease_name.clone(),
            identity: inputs.identity.clone(),
            timings,
            request_timeout,
            dynamodb,
        };
        let shared = Arc::new(Shared {
            inputs,
            namespace: e.namespace.clone(),
            lease_name: e.lease_name.clone(),
            timings,
            stores,
            request_timeout,
            home_az,
            layout,
            plan,
            served,
            contending: std::sync::Mutex::new(Vec::new()),
        });
        let manager = tokio::spawn(manage(shared.clone(), cancel.clone()));
        PerAz {
            cancel,
            manager,
            background,
            shared,
        }
    }

    /// Every shard as a clean stop of active/standby: standby, leader work stopped, then
    /// the Leases released (claims first, so a visitor campaigns as soon as it can).
    ///
    /// `final_stop` (package removal, not a restart) with `aws.cleanup_on_shutdown` first
    /// deletes this gateway's VPC routes in the tables of every shard it leads, while it
    /// still leads each, as active/standby does for its tables.
    pub async fn stop(self, final_stop: bool) {
        if final_stop {
            self.shared.clean_up_led_shards().await;
        }
        self.cancel.cancel();
        let sessions = self.manager.await.unwrap_or_default();
        futures::future::join_all(sessions.into_iter().map(Session::stop)).await;
        for t in self.background {
            let _ = t.await;
        }
    }
}

impl Shared {
    /// Final stop: every shard led here, its tables' routes to this gateway's ENI deleted
    /// (each write within the shard's leadership, as any leader work), all at once.
    async fn clean_up_led_shards(&self) {
        let led: Vec<(Shard, ElectionHandle)> = self
            .contending
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, h)| h.leadership.borrow().is_leader())
            .collect();
        let cleanups = led.iter().map(|(shard, handle)| async move {
            match self.clean_up(shard, handle).await {
                Ok(None) => {}
                Ok(Some(report)) => tracing::info!(
                    %shard,
                    deleted = report.deleted(),
                    "final stop: deleted this gateway's VPC routes in the shard's tables"
                ),
                Err(e) => tracing::warn!(
                    %shard,
                    "final stop: could not delete this gateway's VPC routes in the shard's tables: {e}"
                ),
            }
        });
        futures::future::join_all(cleanups).await;
    }

    /// `None`: the shard has no tables (or no layout was read).
    async fn clean_up(
        &self,
        shard: &Shard,
        handle: &ElectionHandle,
    ) -> Result<Option<crate::aws::SyncReport>, ShardRoutesError> {
        let config = self.inputs.config.borrow().clone();
        let tables = match self.layout.borrow().as_ref() {
            Some(l) => l.tables_of(shard).to_vec(),
            None => return Ok(None),
        };
        if tables.is_empty() {
            return Ok(None);
        }
        let aws = self
            .inputs
            .aws
            .get_or_discover(&config)
            .await
            .map_err(ShardRoutesError::Aws)?;
        aws.route_tables_for(&config, tables)
            .cleanup(&aws.identity.primary_eni, handle)
            .await
            .map(Some)
            .map_err(ShardRoutesError::Routes)
    }
}

/// Mirrors whom each shard's CiliumVTEPConfig entries name into the shard gauges and the
/// status of the shards this gateway takes part in — on every change of the object, and
/// every second (a change of leadership changes the judgement, not the object).
async fn follow_observed_shards(
    mut by_shard: watch::Receiver<ByShard>,
    me: Ipv4Addr,
    telemetry: Telemetry,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let now = by_shard.borrow_and_update().clone();
        let known: Vec<String> = telemetry
            .status
            .snapshot()
            .shards
            .into_iter()
            .map(|s| s.shard)
            .collect();
        let mut all: std::collections::BTreeSet<&str> = known.iter().map(String::as_str).collect();
        if let Some(m) = &now {
            all.extend(m.keys().map(String::as_str));
        }
        for shard in all {
            let names = now
                .as_ref()
                .map(|m| m.get(shard).map_or(&[][..], Vec::as_slice));
            let in_status = known.iter().any(|k| k == shard);
            telemetry.shard_vtepconfig_observed(shard, names, me, in_status);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = by_shard.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// Reads the VPC's tables and subnets every `aws.resync_interval` (and after a reload),
/// publishing the layout and the CiliumVTEPConfig plan when they change. Every gateway
/// reads, leader or not: a takeover then starts from a known layout.
async fn read_layouts(
    aws: SharedAws,
    mut config: watch::Receiver<Arc<Config>>,
    layout_tx: watch::Sender<Option<Arc<Layout>>>,
    plan_tx: watch::Sender<Option<CrPlan>>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    let mut said: Option<Result<(), String>> = None;
    loop {
        let c = config.borrow_and_update().clone();
        let wait = match read_layout(&aws, &c).await {
            Ok(layout) => {
                failures = 0;
                let per_subnet = layout.endpoints_expressible(vtep_shards::MAX_ENDPOINTS);
                if said.as_ref() != Some(&per_subnet) {
                    match &per_subnet {
                        Ok(()) => tracing::info!(
                            subnets = layout.subnets.len(),
                            "per-AZ CiliumVTEPConfig: one endpoint per subnet, each naming its shard's leader"
                        ),
                        Err(why) => tracing::warn!(
                            "per-AZ CiliumVTEPConfig not possible: {why}; the default shard's leader writes the CiliumVTEPConfig alone (hybrid → VPC traffic returns through it: asymmetric paths, see README \"Per-AZ mode\")"
                        ),
                    }
                    said = Some(per_subnet.clone());
                }
                if !layout.missing.is_empty() {
                    tracing::warn!(missing = ?layout.missing, "route tables in aws.route_table_ids not found in this VPC");
                }
                let layout = Arc::new(layout);
                let changed = layout_tx.send_if_modified(|cur| {
                    let same = cur.as_deref() == Some(&*layout);
                    if !same {
                        *cur = Some(layout.clone());
                    }
                    !same
                });
                if changed {
                    for (shard, tables) in &layout.tables {
                        tracing::info!(%shard, ?tables, "per-AZ shard");
                    }
                    plan_tx.send_replace(Some(CrPlan { layout, per_subnet }));
                }
                c.aws.resync_interval
            }
            Err(e) => {
                failures += 1;
                tracing::warn!("per-AZ layout: {e}; retrying");
                LAYOUT_BACKOFF.delay(failures - 1)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            r = config.changed() => if r.is_err() { return },
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum LayoutError {
    #[error("{0}")]
    Aws(#[source] AwsSideError),
    #[error("{0}")]
    Ec2(#[source] shards::ShardsError),
}

async fn read_layout(aws: &SharedAws, config: &Config) -> Result<Layout, LayoutError> {
    let side = aws
        .get_or_discover(config)
        .await
        .map_err(LayoutError::Aws)?;
    let ec2 = aws_sdk_ec2::Client::new(&side.sdk);
    let (tables, subnets) = shards::read_vpc(&ec2, &side.identity.vpc_id, LAYOUT_CALL_TIMEOUT)
        .await
        .map_err(LayoutError::Ec2)?;
    let selection = Selection {
        ids: config.aws.route_table_ids.clone(),
        tag: config.aws.route_table_tag.clone(),
    };
    Ok(shards::layout(
        &tables,
        &subnets,
        &selection,
        &config.gateway.vpc_cidrs,
    ))
}

/// Starts a session for every shard the layout shows (the default shard at once), as they
/// appear, and stops the session of an AZ shard the layout no longer has (no managed table
/// in that AZ any more): it leaves the shard's election — standby, leader work stopped,
/// its Lease and claim released — rather than renewing an empty shard until restart. A
/// shard that comes back gets a fresh session. Returns the sessions on `cancel` for a
/// clean stop.
async fn manage(shared: Arc<Shared>, cancel: CancellationToken) -> Vec<Session> {
    let mut sessions: Vec<Session> = vec![Session::start(&shared, Shard::Default, &cancel)];
    let mut layout = shared.layout.clone();
    loop {
        // Nothing is stopped before a layout has been read.
        let zones: Option<Vec<String>> = layout
            .borrow_and_update()
            .as_ref()
            .map(|l| l.zones().map(str::to_string).collect());
        if let Some(zones) = zones {
            let (kept, gone): (Vec<Session>, Vec<Session>) =
                sessions.into_iter().partition(|s| match &s.shard {
                    Shard::Default => true,
                    Shard::Zone(az) => zones.contains(az),
                });
            sessions = kept;
            for s in gone {
                let shard = s.shard.clone();
                tracing::info!(%shard, "no managed route table in {shard} any more: leaving its shard's election");
                s.stop().await;
                shared.inputs.telemetry.shard_gone(shard.name());
            }
            for az in zones {
                let shard = Shard::Zone(az);
                if !sessions.iter().any(|s| s.shard == shard) {
                    sessions.push(Session::start(&shared, shard, &cancel));
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return sessions,
            r = layout.changed() => if r.is_err() { return sessions },
        }
    }
}

/// This gateway's part in one shard.
struct Session {
    shard: Shard,
    kind: SessionKind,
    /// Stops a visitor's part alone (a child of the manager's cancel).
    cancel: CancellationToken,
}

enum SessionKind {
    /// The default shard, or this gateway's own AZ (with its claim).
    Home {
        contender: Contender,
        claim: Option<Claim>,
    },
    /// Another AZ's shard: campaigns only while no gateway of that AZ claims it.
    Visitor(JoinHandle<()>),
}

impl Session {
    fn start(shared: &Arc<Shared>, shard: Shard, cancel: &CancellationToken) -> Session {
        let cancel = cancel.child_token();
        let kind =
            match &shard {
                Shard::Zone(az) if *az != shared.home_az => SessionKind::Visitor(tokio::spawn(
                    visit(shared.clone(), shard.clone(), cancel.clone()),
                )),
                _ => {
                    let claim = match &shard {
                        Shard::Zone(_) => Some(Claim::start(shared, &shard)),
                        Shard::Default => None,
                    };
                    let elector = ShardElector::new(&shared.stores, &shard);
                    SessionKind::Home {
                        contender: Contender::start(shared, &shard, elector, None, true),
                        claim,
                    }
                }
            };
        Session {
            shard,
            kind,
            cancel,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        match self.kind {
            SessionKind::Home { contender, claim } => {
                if let Some(c) = claim {
                    c.stop().await;
                }
                contender.stop().await;
            }
            // The visitor stops (and releases) on its cancel itself.
            SessionKind::Visitor(t) => {
                let _ = t.await;
            }
        }
    }
}

/// One shard's election and leader work, stopped as active/standby stops.
struct Contender {
    shared: Arc<Shared>,
    shard: Shard,
    contest: JoinHandle<ShardElector>,
    election_cancel: CancellationToken,
    work: Vec<JoinHandle<()>>,
    work_cancel: CancellationToken,
    request_timeout: Duration,
}

impl Contender {
    /// Campaigns with `elector` (a visitor's has been watching the Lease, so its expiry
    /// clock already runs). `wake`: a watch on the shard's Lease; one is started if none.
    fn start(
        shared: &Arc<Shared>,
        shard: &Shard,
        mut elector: ShardElector,
        wake: Option<Arc<Notify>>,
        home: bool,
    ) -> Contender {
        let election_cancel = CancellationToken::new();
        let work_cancel = CancellationToken::new();
        let (publisher, handle) = election::channel();
        let mut work = Vec::new();
        let wake = wake.unwrap_or_else(|| {
            let (wake, watch) = election::lease::watch_changes(
                shared.inputs.kube.clone(),
                &shared.namespace,
                &shard.lease_name(&shared.lease_name),
                election_cancel.clone(),
            );
            work.push(watch);
            wake
        });
        let c = election_cancel.clone();
        let contest = tokio::spawn(async move {
            elector.run(&publisher, Some(wake), c).await;
            elector
        });
        work.extend(leader_work(shared, shard, &handle, home, &work_cancel));
        if let Ok(mut c) = shared.contending.lock() {
            c.retain(|(s, _)| s != shard);
            c.push((shard.clone(), handle));
        }
        Contender {
            shared: shared.clone(),
            shard: shard.clone(),
            contest,
            election_cancel,
            work,
            work_cancel,
            request_timeout: shared.request_timeout,
        }
    }

    /// Standby first, then the shard's leader work stopped, then its Lease released; gives
    /// the elector back (a visitor keeps watching with it).
    async fn stop(self) -> Option<ShardElector> {
        if let Ok(mut c) = self.shared.contending.lock() {
            c.retain(|(s, _)| *s != self.shard);
        }
        self.election_cancel.cancel();
        let elector = self.contest.await.ok();
        self.work_cancel.cancel();
        for t in self.work {
            let _ = t.await;
        }
        let mut elector = elector?;
        elector.release(self.request_timeout, &self.shard).await;
        Some(elector)
    }
}

/// The shard's leader work (each part only while this gateway leads the shard) and the
/// status that follows its leadership.
fn leader_work(
    shared: &Arc<Shared>,
    shard: &Shard,
    handle: &ElectionHandle,
    home: bool,
    cancel: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let i = &shared.inputs;
    let config = i.config.borrow().clone();
    let spec = ShardVtep {
        shard: shard.clone(),
        tunnel_endpoint: i.node_ip,
        mac: i.mac,
        vpc_cidrs: config.gateway.vpc_cidrs.clone(),
        node_selector: config.kubernetes.vtep_node_selector.clone(),
        shape: vtep_shape::Shape::V2 { cidr_mask: true },
    };
    let routes = ShardRoutes {
        shared: shared.clone(),
        shard: shard.clone(),
    };
    let (blocked, blocked_rx) = watch::channel(None);
    vec![
        tokio::spawn(vtep_shards::run(
            i.kube.clone(),
            spec,
            i.identity.clone(),
            handle.clone(),
            shared.request_timeout,
            shared.served.clone(),
            shared.plan.clone(),
            blocked,
            cancel.clone(),
        )),
        // Why the shard's entries cannot be written, into the shard's readiness.
        tokio::spawn(super::leader::follow_fence(
            handle.clone(),
            blocked_rx,
            Some(shard.to_string()),
            i.telemetry.clone(),
            cancel.clone(),
        )),
        tokio::spawn(routes.run(handle.clone(), cancel.clone())),
        tokio::spawn(follow(
            handle.clone(),
            shard.to_string(),
            home,
            shared.stores.dynamodb.is_some(),
            i.telemetry.clone(),
            cancel.clone(),
        )),
    ]
}

/// `lock_in_use`: with DynamoDB, leading a shard means holding its lock item, and
/// `dynamodb_lock_held` says whether this gateway holds any shard's.
async fn follow(
    mut handle: ElectionHandle,
    shard: String,
    home: bool,
    lock_in_use: bool,
    telemetry: Telemetry,
    cancel: CancellationToken,
) {
    loop {
        let l = handle.leadership.borrow_and_update().clone();
        telemetry.shard_leadership(&shard, home, &l);
        if lock_in_use {
            let m = &telemetry.metrics;
            m.dynamodb_lock_held.set(m.leader_is_active.get());
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = handle.leadership.changed() => if r.is_err() { return },
        }
    }
}

/// A gateway's claim on its own AZ's shard: a Lease (`<lease_name>-<az>-home`) it
/// campaigns for with the ordinary elector once it is ready to forward. Held: a gateway of
/// the AZ is up, and visitors hand the shard back.
struct Claim {
    task: JoinHandle<Option<Elector<LeaseLock>>>,
    cancel: CancellationToken,
    request_timeout: Duration,
}

impl Claim {
    fn start(shared: &Arc<Shared>, shard: &Shard) -> Claim {
        let cancel = CancellationToken::new();
        let name = shard
            .claim_lease_name(&shared.lease_name)
            .unwrap_or_else(|| shard.lease_name(&shared.lease_name));
        let mut elector = Elector::new(
            LeaseLock::new(
                shared.inputs.kube.clone(),
                &shared.namespace,
                &name,
                shared.request_timeout,
            ),
            shared.inputs.identity.clone(),
            shared.timings,
        );
        let status = shared.inputs.telemetry.status.clone();
        let c = cancel.clone();
        let task = tokio::spawn(async move {
            // Ready to forward: the device is up and the hybrid nodes are programmed. Before
            // that a handback would send the zone's traffic into a tunnel with no entries.
            loop {
                let s = status.snapshot();
                if s.device_up && s.nodes_synced && s.identity_known {
                    break;
                }
                tokio::select! {
                    _ = c.cancelled() => return None,
                    _ = status.changed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            tracing::info!(claim = %name, "ready: claiming this AZ's shard");
            let (publisher, _handle) = election::channel();
            election::run(&mut elector, &publisher, None, c).await;
            Some(elector)
        });
        Claim {
            task,
            cancel,
            request_timeout: shared.request_timeout,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        if let Ok(Some(mut e)) = self.task.await {
            let _ =
                tokio::time::timeout(self.request_timeout, e.release(jiff::Timestamp::now())).await;
        }
    }
}

/// A visitor's part in another AZ's shard: watch the AZ's claim and the shard's Lease;
/// campaign while the claim is vacant, hand the shard back when it is held again.
async fn visit(shared: Arc<Shared>, shard: Shard, cancel: CancellationToken) {
    let Some(claim_name) = shard.claim_lease_name(&shared.lease_name) else {
        return;
    };
    let kube = &shared.inputs.kube;
    let t = shared.timings;
    let mut claim = Elector::new(
        LeaseLock::new(
            kube.clone(),
            &shared.namespace,
            &claim_name,
            shared.request_timeout,
        ),
        shared.inputs.identity.clone(),
        t,
    );
    let watch_cancel = cancel.child_token();
    let (claim_bell, claim_watch) = election::lease::watch_changes(
        kube.clone(),
        &shared.namespace,
        &claim_name,
        watch_cancel.clone(),
    );
    let (shard_bell, shard_watch) = election::lease::watch_changes(
        kube.clone(),
        &shared.namespace,
        &shard.lease_name(&shared.lease_name),
        watch_cancel.clone(),
    );
    let mut watcher = Some(ShardElector::new(&shared.stores, &shard));
    let mut running: Option<Contender> = None;
    let started = Instant::now();
    let status = &shared.inputs.telemetry;
    status.shard_leadership(
        shard.name(),
        false,
        &election::Leadership::Standby { leader: None },
    );
    loop {
        // What the claim says, by our clock: `None` when it could not be read (nothing
        // changes on an unknown).
        let claimed = match tokio::time::timeout(shared.request_timeout, claim.observe_only()).await
        {
            Ok(Ok(())) => Some(claim_held(&claim)),
            Ok(Err(e)) => {
                tracing::debug!(shard = %shard, "reading the claim: {e}");
                None
            }
            Err(_) => None,
        };
        // While not campaigning, keep the shard's Lease (and lock) observed so the expiry
        // clocks run from the holder's last renewal, not from the moment we start.
        if let Some(w) = watcher.as_mut() {
            w.observe(shared.request_timeout).await;
            let leader = w.holder().map(str::to_string);
            status.shard_leadership(
                shard.name(),
                false,
                &election::Leadership::Standby { leader },
            );
        }
        // A grace of one lease duration after start: a gateway of the AZ starting with us
        // gets to claim first.
        let grace_over = started.elapsed() >= t.lease_duration;
        match visit_step(claimed, running.is_some(), grace_over) {
            VisitStep::Campaign => {
                if let Some(elector) = watcher.take() {
                    tracing::info!(shard = %shard, "no gateway of {shard} claims its shard: campaigning for it");
                    running = Some(Contender::start(
                        &shared,
                        &shard,
                        elector,
                        Some(shard_bell.clone()),
                        false,
                    ));
                }
            }
            VisitStep::HandBack => {
                let home = claim.observed_holder().unwrap_or("?").to_string();
                tracing::info!(shard = %shard, home = %home, "a gateway of {shard} is ready: handing its shard back");
                if let Some(c) = running.take() {
                    watcher = c
                        .stop()
                        .await
                        .or_else(|| Some(ShardElector::new(&shared.stores, &shard)));
                }
            }
            VisitStep::Stay => {}
        }
        // Next look: when the claim runs out by our clock, on any change of the claim (and
        // of the shard's Lease while watching it), or after a jittered retry period.
        let pause = claim
            .other_lease_expires_in(Instant::now())
            .filter(|d| !d.is_zero())
            .map_or(jitter(t.retry_period), |d| d.min(jitter(t.retry_period)));
        let pause = if grace_over {
            pause
        } else {
            pause.min(t.lease_duration.saturating_sub(started.elapsed()))
        };
        let shard_wake = async {
            if watcher.is_some() {
                shard_bell.notified().await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = claim_bell.notified() => {}
            _ = shard_wake => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
    if let Some(c) = running.take() {
        c.stop().await;
    }
    watch_cancel.cancel();
    let _ = claim_watch.await;
    let _ = shard_watch.await;
}

/// What a visitor does after looking at the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VisitStep {
    /// Start campaigning for the shard (its Lease still decides).
    Campaign,
    /// Stop campaigning: standby, leader work stopped, the shard's Lease released.
    HandBack,
    Stay,
}

/// The visitor's rule. `claimed`: whether a gateway of the AZ holds its claim by our clock
/// (`None`: the claim could not be read, and nothing changes on an unknown); `running`:
/// whether we campaign now; `grace_over`: one lease duration since our start.
fn visit_step(claimed: Option<bool>, running: bool, grace_over: bool) -> VisitStep {
    match (claimed, running) {
        (Some(false), false) if grace_over => VisitStep::Campaign,
        (Some(true), true) => VisitStep::HandBack,
        _ => VisitStep::Stay,
    }
}

/// Whether a gateway holds the claim, by our clock: a holder whose lease has not run out
/// since we saw it renew. Released (empty holder), never written, or expired: vacant.
fn claim_held(claim: &Elector<LeaseLock>) -> bool {
    claim
        .other_lease_expires_in(Instant::now())
        .is_some_and(|d| !d.is_zero())
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 + fastrand::f64() * JITTER_FACTOR)
}

/// Route sync of one shard's tables to this gateway's ENI, while it leads the shard.
#[derive(Clone)]
struct ShardRoutes {
    shared: Arc<Shared>,
    shard: Shard,
}

#[derive(Debug, thiserror::Error)]
enum ShardRoutesError {
    #[error("{0}")]
    Aws(#[source] AwsSideError),
    #[error("{0}")]
    Routes(#[source] RouteError),
}

impl ShardRoutes {
    async fn run(self, election: ElectionHandle, cancel: CancellationToken) {
        let start = |term: Term| {
            let wakeups = Wakeups::new()
                .on_change(self.shared.inputs.config.clone())
                .on_change(self.shared.layout.clone());
            (
                ShardTermSync {
                    routes: self.clone(),
                    term,
                    layout: self.shared.layout.clone(),
                    built: None,
                },
                wakeups,
            )
        };
        reconcile::while_leading(&election, start, BACKOFF, &cancel).await;
    }
}

/// One shard's route sync in one term.
struct ShardTermSync {
    routes: ShardRoutes,
    term: Term,
    layout: watch::Receiver<Option<Arc<Layout>>>,
    /// The writer for the tables and configuration it was built from.
    built: Option<(Vec<String>, Arc<Config>, RouteTables)>,
}

impl Target for ShardTermSync {
    type Error = ShardRoutesError;

    async fn pass(&mut self) -> Result<Outcome, ShardRoutesError> {
        let shared = &self.routes.shared;
        let shard = &self.routes.shard;
        let config = shared.inputs.config.borrow().clone();
        let Some(layout) = self.layout.borrow_and_update().clone() else {
            return Ok(Outcome::idle());
        };
        let tables = layout.tables_of(shard).to_vec();
        let telemetry = &shared.inputs.telemetry;
        if tables.is_empty() {
            telemetry.shard_tables(shard.name(), &[], Some(0));
            return Ok(Outcome::idle());
        }
        let aws = shared
            .inputs
            .aws
            .get_or_discover(&config)
            .await
            .map_err(ShardRoutesError::Aws)?;
        let routes = match self.built.take() {
            Some((t, c, r)) if t == tables && Arc::ptr_eq(&c, &config) => r,
            _ => {
                tracing::info!(shard = %shard, term = self.term.number(), ?tables, "VPC route sync of the shard's tables");
                aws.route_tables_for(&config, tables.clone())
            }
        };
        let routes = &self
            .built
            .insert((tables.clone(), config.clone(), routes))
            .2;
        let report = routes
            .sync(
                &config.gateway.hybrid_pod_cidrs,
                &aws.identity.primary_eni,
                &self.term,
            )
            .await
            .map_err(ShardRoutesError::Routes)?;
        let in_sync = report.tables.iter().filter(|t| !t.degraded()).count();
        telemetry.shard_tables(shard.name(), &tables, Some(in_sync));
        let changes = u64::from(report.created() + report.replaced() + report.deleted());
        if report.converged() {
            Ok(Outcome::resync(changes, config.aws.resync_interval))
        } else {
            Ok(Outcome::retry(changes))
        }
    }

    fn failed(&mut self, e: &ShardRoutesError) {
        self.routes.shared.inputs.telemetry.routes_failed(
            &format!("shard {}: {e}", self.routes.shard),
            self.term.is_current(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_visitor_campaigns_only_while_the_claim_is_vacant_and_hands_back_when_it_is_held() {
        use VisitStep::*;
        // Vacant claim: campaign, but not in the grace after start.
        assert_eq!(visit_step(Some(false), false, true), Campaign);
        assert_eq!(visit_step(Some(false), false, false), Stay);
        // A gateway of the AZ is ready: hand back if we campaign, else keep away.
        assert_eq!(visit_step(Some(true), true, true), HandBack);
        assert_eq!(visit_step(Some(true), true, false), HandBack);
        assert_eq!(visit_step(Some(true), false, true), Stay);
        // Still vacant while we campaign: keep going.
        assert_eq!(visit_step(Some(false), true, true), Stay);
        // The claim could not be read: nothing changes, either way.
        assert_eq!(visit_step(None, true, true), Stay);
        assert_eq!(visit_step(None, false, true), Stay);
    }
}
