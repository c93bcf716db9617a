//! `hybrid-gateway run`: set the datapath up, keep it matching the hybrid nodes, and take
//! part in the election; the leader keeps the CiliumVTEPConfig and the VPC routes right.
//!
//! [`run`] reads as the daemon's life: identify and set up, start the parts, handle
//! signals (reload), shut down. The parts share one cloneable [`Context`].

mod aws_side;
mod leader;
mod node_snapshot;
mod node_sync;
mod per_az;
mod reload;
mod route_sync;
mod shard_elector;
mod static_nodes;
mod supervisor;
mod systemd;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use aws_side::{AwsSide, SharedAws};
use node_sync::NodeSync;
use route_sync::RouteSync;
use supervisor::supervise;

use crate::config::Config;
pub use crate::config::EXIT_CONFIG;
use crate::datapath::{Datapath, Mac, NodeList};
use crate::k8s::cilium_nodes::{self, NodeSet, NodeWatchStats};
use crate::k8s::client;
use crate::probe::{health::Score, Prober};
use crate::telemetry::{self, DaemonStatus, GatewayInfo, Metrics, Telemetry};

/// Created by the package's removal script just before it stops the service.
const FINAL_STOP_MARKER: &str = "/run/hybrid-gateway/final-stop";

/// Everything must be down this long after SIGTERM (systemd's stop timeout is longer).
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(4);

pub fn main(config_path: &Path, static_nodes: Option<&Path>) -> ExitCode {
    let config = match Config::load_or_exit(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::logging::init(&config.telemetry.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, static_nodes.map(Path::to_path_buf))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            // A device in the way is for a person to fix: a restart loop would not help.
            let operator = e.chain().any(|c| {
                c.downcast_ref::<crate::datapath::DatapathError>()
                    .is_some_and(crate::datapath::DatapathError::needs_operator)
            });
            if operator {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(config: Config, static_nodes: Option<PathBuf>) -> anyhow::Result<()> {
    tracing::info!("{}", config.summary());
    let (ctx, datapath) = set_up(config, static_nodes.is_some()).await?;
    let mut signals = Signals::install()?;
    // The snapshot is of the Kubernetes node set; a static file is its own record.
    let snapshot = match static_nodes {
        Some(_) => None,
        None => snapshot_dir(&ctx.config()).map(|dir| {
            let keeper = node_snapshot::Keeper::start(dir.clone(), ctx.cancel.clone());
            (dir, keeper)
        }),
    };
    let mut daemon = Daemon {
        ctx,
        tasks: Vec::new(),
        election: None,
        per_az: None,
        static_nodes,
        snapshot,
    };
    daemon.serve_telemetry().await?;
    daemon.start_node_sync(datapath);
    daemon.start_prober();
    daemon.start_node_source().await?;
    while signals.next().await == Wanted::Reload {
        daemon.reload();
    }
    daemon.shut_down().await;
    Ok(())
}

/// What the daemon's parts share. Cheap to clone.
#[derive(Clone)]
struct Context {
    /// This process's election identity.
    identity: String,
    /// This host's identity, the same across restarts.
    stable_identity: String,
    node_ip: Ipv4Addr,
    /// The VXLAN device's MAC, the one the CiliumVTEPConfig advertises.
    mac: Mac,
    aws: SharedAws,
    telemetry: Telemetry,
    node_stats: Arc<NodeWatchStats>,
    /// The running configuration; a reload publishes the keys it applies live.
    config: watch::Sender<Arc<Config>>,
    /// The hybrid nodes, from Kubernetes or the static file; `None` until the first list.
    nodes: watch::Sender<Option<NodeSet>>,
    /// This gateway's tunnel health after each probe round (`None`: no opinion).
    tunnel_score: watch::Sender<Option<Score>>,
    cancel: CancellationToken,
}

impl Context {
    fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    fn status(&self) -> Arc<DaemonStatus> {
        self.telemetry.status.clone()
    }
}

/// Who we are, and the datapath set up: what every part needs before it can start.
async fn set_up(config: Config, static_mode: bool) -> anyhow::Result<(Context, Arc<Datapath>)> {
    let (aws, node_ip, instance) = identify(&config, static_mode).await?;
    let identity = election_identity(&instance);
    let (datapath, changes) = Datapath::setup(&config, node_ip)
        .await
        .context("setting up the datapath")?;
    for change in &changes {
        tracing::info!(sysctl = %change.key, "changed {change}");
    }
    let device = datapath.device();
    tracing::info!(device = %device.name, ifindex = device.index, mac = %device.mac, mtu = device.mtu, underlay = %device.underlay, "VXLAN device {}", device.action);
    let node_stats = Arc::new(NodeWatchStats::default());
    let telemetry = Telemetry {
        status: Arc::new(DaemonStatus::new(&identity)),
        metrics: Arc::new(Metrics::new(
            &gateway_info(&config, &instance, node_ip, &device),
            node_stats.clone(),
        )),
    };
    let datapath = Arc::new(datapath);
    let dp = datapath.clone();
    telemetry
        .status
        .set_live_check(telemetry::status::LiveCheck(Arc::new(move || {
            let dp = dp.clone();
            Box::pin(async move { dp.live().await })
        })));
    telemetry.metrics.vxlan_interface_up.set(1);
    telemetry.status.update(|s| {
        s.device_up = true;
        s.identity_known = true;
    });
    let ctx = Context {
        identity,
        stable_identity: instance.clone(),
        node_ip,
        mac: device.mac,
        aws,
        telemetry,
        node_stats,
        config: watch::Sender::new(Arc::new(config)),
        nodes: watch::Sender::new(None),
        tunnel_score: watch::Sender::new(None),
        cancel: CancellationToken::new(),
    };
    Ok((ctx, datapath))
}

/// AWS (IMDS; config values win) when something needs it, this gateway's address and
/// its stable identity.
async fn identify(
    config: &Config,
    static_mode: bool,
) -> anyhow::Result<(SharedAws, Ipv4Addr, String)> {
    let aws = if needs_aws(config) && !static_mode {
        SharedAws::discovered(AwsSide::discover(config).await?)
    } else {
        SharedAws::default()
    };
    let node_ip = match (aws.get(), config.gateway.node_ip) {
        (Some(a), _) => a.identity.local_ipv4,
        (None, Some(ip)) => ip,
        (None, None) => anyhow::bail!(
            "gateway.node_ip is not set and AWS is not used; set it to this gateway's VPC address"
        ),
    };
    let id = stable_identity(config, aws.get().map(|a| a.identity.instance_id.as_str()));
    Ok((aws, node_ip, id))
}

/// This host's identity, the same across restarts (metrics labels keep their series):
/// `election.identity`, else the instance id, else the hostname.
fn stable_identity(config: &Config, instance_id: Option<&str>) -> String {
    config
        .election
        .identity
        .clone()
        .or_else(|| instance_id.map(str::to_string))
        .unwrap_or_else(hostname)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "gateway".into())
}

/// This process's election identity: the stable one plus a per-process suffix, so two
/// processes on one host (an upgrade overlapping a stop) never share it.
fn election_identity(stable: &str) -> String {
    format!("{stable}_{:08x}", fastrand::u32(..))
}

/// `hybrid_gateway_info`'s labels.
fn gateway_info(
    config: &Config,
    instance: &str,
    node_ip: Ipv4Addr,
    device: &crate::datapath::Device,
) -> GatewayInfo {
    GatewayInfo {
        instance: instance.to_string(),
        node_ip,
        node_name: hostname(),
        vxlan_interface: device.name.clone(),
        primary_nic: device.underlay.clone(),
        vpc_cidrs: config.gateway.vpc_cidrs.clone(),
        pod_cidrs: config.gateway.hybrid_pod_cidrs.clone(),
    }
}

/// AWS is needed at start-up for VPC routes, the DynamoDB lock, or to learn the node IP.
/// (Route tables added later by a reload discover it then.)
fn needs_aws(config: &Config) -> bool {
    config.aws.manages_routes()
        || config.election.dynamodb.is_some()
        || config.gateway.node_ip.is_none()
}

/// The running daemon: the shared context, its tasks, and the election (Kubernetes mode).
struct Daemon {
    ctx: Context,
    tasks: Vec<JoinHandle<()>>,
    election: Option<leader::Election>,
    /// Per-AZ mode's shards (instead of `election`).
    per_az: Option<per_az::PerAz>,
    static_nodes: Option<PathBuf>,
    /// The state directory and the writer of the node set snapshot in it (Kubernetes mode
    /// with a state directory).
    snapshot: Option<(PathBuf, node_snapshot::Keeper)>,
}

impl Daemon {
    /// `/metrics`, `/healthz`, `/readyz`, `/status`, and systemd's READY/STATUS/WATCHDOG.
    /// Bound before anything else starts, so a taken port fails start-up.
    async fn serve_telemetry(&mut self) -> anyhow::Result<()> {
        let t = self.ctx.config().telemetry.clone();
        let (metrics, status) = (&self.ctx.telemetry.metrics, &self.ctx.telemetry.status);
        for (addr, router) in [
            (
                t.metrics_listen,
                telemetry::server::metrics_router(metrics.clone(), status.clone()),
            ),
            (
                t.health_listen,
                telemetry::server::health_router(metrics.clone(), status.clone()),
            ),
        ] {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let c = self.ctx.cancel.clone();
            self.tasks.push(tokio::spawn(async move {
                if let Err(e) = telemetry::server::serve(listener, router, c).await {
                    tracing::error!("HTTP server on {addr}: {e}");
                }
            }));
        }
        let cancel = &self.ctx.cancel;
        self.tasks.push(tokio::spawn(systemd::status_notifier(
            status.clone(),
            cancel.clone(),
        )));
        self.tasks.push(tokio::spawn(systemd::watchdog(
            status.clone(),
            cancel.clone(),
        )));
        Ok(())
    }

    /// The kernel follows the node set and the configuration.
    fn start_node_sync(&mut self, datapath: Arc<Datapath>) {
        let ctx = self.ctx.clone();
        let keeper = self.snapshot.as_ref().map(|(_, k)| k.clone());
        self.tasks.push(supervise(
            "datapath",
            ctx.status(),
            ctx.cancel.clone(),
            move || {
                NodeSync::new(
                    datapath.clone(),
                    ctx.nodes.subscribe(),
                    ctx.config.subscribe(),
                    ctx.telemetry.clone(),
                    keeper.clone(),
                )
                .run(ctx.cancel.clone())
            },
        ));
    }

    /// Tunnel probes to every hybrid node, leader or not.
    fn start_prober(&mut self) {
        let ctx = self.ctx.clone();
        self.tasks.push(supervise(
            "tunnel-probes",
            ctx.status(),
            ctx.cancel.clone(),
            move || {
                Prober {
                    nodes: ctx.nodes.subscribe(),
                    config: ctx.config.subscribe(),
                    telemetry: ctx.telemetry.clone(),
                    score: ctx.tunnel_score.clone(),
                }
                .run(ctx.cancel.clone())
            },
        ));
    }

    /// Where the hybrid nodes come from: the static file, or Kubernetes (and then the
    /// election and the leader's work too).
    async fn start_node_source(&mut self) -> anyhow::Result<()> {
        let Some(path) = self.static_nodes.clone() else {
            return self.start_kubernetes().await;
        };
        self.ctx
            .nodes
            .send_replace(Some(Arc::new(NodeList::from_nodes(load_nodes(&path)?))));
        tracing::info!(
            "hybrid nodes from {}; no Kubernetes, no election",
            path.display()
        );
        Ok(())
    }

    async fn start_kubernetes(&mut self) -> anyhow::Result<()> {
        let config = self.ctx.config();
        let kube = client::connect(&config.kubernetes, self.ctx.aws.get().map(|a| &a.sdk))
            .await
            .context("connecting to Kubernetes")?;
        let (ctx, k) = (self.ctx.clone(), kube.clone());
        self.tasks.push(supervise(
            "ciliumnode-watch",
            ctx.status(),
            ctx.cancel.clone(),
            move || {
                cilium_nodes::run(
                    k.clone(),
                    ctx.nodes.clone(),
                    ctx.node_stats.clone(),
                    ctx.cancel.clone(),
                )
            },
        ));
        if let Some((dir, keeper)) = self.snapshot.clone() {
            self.tasks.push(tokio::spawn(cold_start(
                self.ctx.clone(),
                dir,
                keeper,
                config.datapath.cold_start_wait,
            )));
        }
        if config.election.mode == crate::config::ElectionMode::PerAz {
            return self.start_per_az(&config, kube);
        }
        let ctx = &self.ctx;
        let routes = RouteSync {
            aws: ctx.aws.clone(),
            config: ctx.config.subscribe(),
            telemetry: ctx.telemetry.clone(),
        };
        self.election = Some(leader::Election::start(
            &config,
            leader::LeaderInputs {
                kube,
                identity: ctx.identity.clone(),
                stable_identity: ctx.stable_identity.clone(),
                tunnel_score: ctx.tunnel_score.subscribe(),
                node_ip: ctx.node_ip,
                mac: ctx.mac,
                dynamodb: ctx.aws.get().map(|a| aws_sdk_dynamodb::Client::new(&a.sdk)),
                routes: Some(routes),
                telemetry: ctx.telemetry.clone(),
            },
        ));
        Ok(())
    }

    /// `[election] mode = "per-az"`: one election per AZ shard instead of one for all.
    fn start_per_az(&mut self, config: &Config, kube: kube::Client) -> anyhow::Result<()> {
        let ctx = &self.ctx;
        // Per-AZ mode manages route tables (config validation), so AWS was discovered.
        let home = ctx
            .aws
            .get()
            .map(|a| a.identity.availability_zone.clone())
            .context("per-AZ mode needs this gateway's Availability Zone from IMDS")?;
        self.per_az = Some(per_az::PerAz::start(
            config,
            per_az::PerAzInputs {
                kube,
                identity: ctx.identity.clone(),
                node_ip: ctx.node_ip,
                mac: ctx.mac,
                aws: ctx.aws.clone(),
                config: ctx.config.subscribe(),
                telemetry: ctx.telemetry.clone(),
                dynamodb: ctx.aws.get().map(|a| aws_sdk_dynamodb::Client::new(&a.sdk)),
            },
            home,
        ));
        Ok(())
    }

    /// SIGHUP: the static node file again, and the configuration's live keys.
    fn reload(&mut self) {
        systemd::reloading();
        if let Some(path) = &self.static_nodes {
            match load_nodes(path) {
                Ok(n) => {
                    tracing::info!(nodes = n.len(), "reloaded {}", path.display());
                    self.ctx
                        .nodes
                        .send_replace(Some(Arc::new(NodeList::from_nodes(n))));
                }
                Err(e) => tracing::error!("{e:#}; keeping the previous node list"),
            }
        }
        let running = self.ctx.config();
        match Config::load(&running.path) {
            Err(e) => {
                tracing::error!("new configuration rejected, keeping the running one: {e}");
                self.ctx.status().error(format!("reload rejected: {e}"));
            }
            Ok(new) => {
                if let Some(applied) = reload::apply(&running, &new) {
                    let pod_cidrs = applied.gateway.hybrid_pod_cidrs.clone();
                    self.ctx
                        .telemetry
                        .metrics
                        .update_info(|g| g.pod_cidrs = pod_cidrs);
                    self.ctx.config.send_replace(Arc::new(applied));
                }
            }
        }
        systemd::reloaded();
    }

    /// Leadership handed over first, then every part stopped, within the budget. The
    /// device and its entries stay: traffic keeps flowing until the next process.
    async fn shut_down(self) {
        systemd::stopping();
        // The package's removal script leaves this marker; a restart or upgrade does not.
        let final_stop = self.ctx.config().aws.cleanup_on_shutdown
            && std::fs::remove_file(FINAL_STOP_MARKER).is_ok();
        tracing::info!(
            final_stop,
            "stopping; the device and its entries stay so traffic keeps flowing"
        );
        let Daemon {
            ctx,
            tasks,
            election,
            per_az,
            ..
        } = self;
        let stop = async move {
            if let Some(e) = election {
                e.stop(final_stop).await;
            }
            if let Some(p) = per_az {
                p.stop(final_stop).await;
            }
            ctx.cancel.cancel();
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_BUDGET, stop).await.is_err() {
            tracing::warn!("parts did not stop within {SHUTDOWN_BUDGET:?}; exiting anyway");
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Reload,
    Stop,
}

/// SIGTERM / SIGINT (stop) and SIGHUP (reload), installed once the datapath is set up
/// (before that, a SIGTERM simply ends the process).
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    async fn next(&mut self) -> Wanted {
        tokio::select! {
            _ = self.term.recv() => Wanted::Stop,
            _ = self.int.recv() => Wanted::Stop,
            _ = self.hup.recv() => Wanted::Reload,
        }
    }
}

/// `datapath.state_dir`, else systemd's `$STATE_DIRECTORY` (the first, if it lists
/// several); `None`: no snapshot.
fn snapshot_dir(config: &Config) -> Option<PathBuf> {
    let dir = config.datapath.state_dir.clone().or_else(|| {
        std::env::var_os("STATE_DIRECTORY")
            .and_then(|v| std::env::split_paths(&v).next())
            .filter(|p| !p.as_os_str().is_empty())
    });
    match &dir {
        None => tracing::info!(
            "no state directory (datapath.state_dir, $STATE_DIRECTORY): no node set snapshot for a cold boot without the Kubernetes API"
        ),
        Some(d) => {
            if let Err(e) = std::fs::create_dir_all(d) {
                tracing::warn!("state directory {}: {e}", d.display());
            }
        }
    }
    dir
}

/// Start-up without the Kubernetes API: if the first CiliumNode list has not come within
/// `wait`, program the snapshot of the last applied set (never an empty one), and say so
/// until the watch lists and its set replaces it (nodes gone from it are then removed).
async fn cold_start(ctx: Context, dir: PathBuf, keeper: node_snapshot::Keeper, wait: Duration) {
    let mut rx = ctx.nodes.subscribe();
    let listed = tokio::select! {
        _ = ctx.cancel.cancelled() => return,
        r = tokio::time::timeout(wait, rx.wait_for(Option::is_some)) => r.is_ok(),
    };
    if listed {
        return;
    }
    let policy = crate::datapath::NodePolicy::from_config(&ctx.config(), ctx.node_ip);
    let d = dir.clone();
    let loaded = match tokio::task::spawn_blocking(move || node_snapshot::load(&d, &policy)).await {
        Ok(Ok(Some(l))) => l,
        Ok(Ok(None)) => {
            tracing::warn!(
                "no CiliumNode list within {wait:?} and no node set snapshot in {}: nothing is programmed until the Kubernetes API answers",
                dir.display()
            );
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!("no CiliumNode list within {wait:?}; snapshot refused: {e}; nothing is programmed until the Kubernetes API answers");
            ctx.status().error(format!("snapshot refused: {e}"));
            return;
        }
        Err(e) => {
            tracing::warn!("reading the node set snapshot: {e}");
            return;
        }
    };
    keeper.mark_loaded(&loaded.nodes);
    let published = ctx.nodes.send_if_modified(|cur| {
        if cur.is_some() {
            return false; // the live list won the race
        }
        *cur = Some(loaded.nodes.clone());
        true
    });
    if !published {
        return;
    }
    rx.borrow_and_update();
    tracing::warn!(
        nodes = loaded.nodes.len(),
        "no CiliumNode list within {wait:?}: programming the node set snapshot from {} (age {}) until the Kubernetes API answers",
        dir.display(),
        humantime::format_duration(loaded.age())
    );
    ctx.status()
        .update(|s| s.nodes_from_snapshot = Some(loaded.written_at));
    tokio::select! {
        _ = ctx.cancel.cancelled() => return,
        _ = rx.changed() => {}
    }
    ctx.status().update(|s| s.nodes_from_snapshot = None);
    tracing::info!("the live CiliumNode set replaces the snapshot");
}

fn load_nodes(path: &Path) -> anyhow::Result<Vec<crate::datapath::HybridNode>> {
    static_nodes::load(path)
        .with_context(|| format!("reading static nodes from {}", path.display()))
}
