//! `hybrid-gateway run`: set the datapath up, keep it matching the hybrid nodes, and take
//! part in the election; the leader keeps the CiliumVTEPConfig right.

mod node_sync;
mod static_nodes;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jiff::Timestamp;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::datapath::{Datapath, Mac};
use crate::election::{self, lease::LeaseLock, Elector, Timings};
use crate::k8s::cilium_nodes::{self, NodeSet, NodeWatchStats};
use crate::k8s::{client, vtep_config};

/// sysexits' EX_CONFIG: the unit file's RestartPreventExitStatus keeps systemd from
/// restart-looping on a configuration only a human can fix.
pub const EXIT_CONFIG: u8 = 78;

/// Everything must be down this long after SIGTERM (systemd's stop timeout is longer).
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(4);

pub fn main(config_path: &Path, static_nodes: Option<&Path>) -> ExitCode {
    init_logging();
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// This process's election identity: stable per host, plus a per-process suffix so two
/// processes on one host (an upgrade overlapping a stop) never share it.
fn identity(config: &Config) -> String {
    let base = config.election.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "gateway".into())
    });
    format!("{base}_{:08x}", fastrand::u32(..))
}

async fn run(config: Config, static_nodes: Option<PathBuf>) -> anyhow::Result<()> {
    tracing::info!("{}", config.summary());
    let node_ip = config
        .gateway
        .node_ip
        .context("gateway.node_ip is not set; this build cannot look it up from IMDS yet, so set it to the instance's primary private IPv4")?;

    let (datapath, changes) = Datapath::setup(&config, node_ip)
        .await
        .context("setting up the datapath")?;
    for change in &changes {
        tracing::info!(sysctl = %change.key, "changed {change}");
    }
    let device = datapath.device().clone();
    tracing::info!(device = %device.name, ifindex = device.index, mac = %device.mac, mtu = device.mtu, underlay = %device.underlay, "VXLAN device {}", device.action);

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    let cancel = CancellationToken::new();
    let (nodes_tx, nodes_rx) = watch::channel::<Option<NodeSet>>(None);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    tasks.push(tokio::spawn(node_sync::run(
        datapath,
        nodes_rx,
        config.datapath.resync_interval,
        cancel.clone(),
    )));

    let mut leadership = None;
    match &static_nodes {
        Some(path) => {
            nodes_tx.send_replace(Some(Arc::new(load_nodes(path)?)));
            tracing::info!(
                "hybrid nodes from {}; no Kubernetes, no election",
                path.display()
            );
        }
        None => {
            let kube = client::connect(&config.kubernetes, None)
                .await
                .context("connecting to Kubernetes")?;
            let stats = Arc::new(NodeWatchStats::default());
            tasks.push(tokio::spawn(cilium_nodes::run(
                kube.clone(),
                nodes_tx.clone(),
                stats,
                cancel.clone(),
            )));
            leadership = Some(Leadership::start(&config, kube, node_ip, device.mac));
        }
    }

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => if let Some(path) = &static_nodes {
                match load_nodes(path) {
                    Ok(n) => { tracing::info!(nodes = n.len(), "reloaded {}", path.display()); nodes_tx.send_replace(Some(Arc::new(n))); }
                    Err(e) => tracing::error!("{e:#}; keeping the previous node list"),
                }
            },
        }
    }

    tracing::info!("stopping; the device and its entries stay so traffic keeps flowing");
    let stop = async {
        if let Some(l) = leadership {
            l.stop().await;
        }
        cancel.cancel();
        for t in tasks {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_BUDGET, stop).await.is_err() {
        tracing::warn!("parts did not stop within {SHUTDOWN_BUDGET:?}; exiting anyway");
    }
    Ok(())
}

/// The election and the leader-only work that follows it.
struct Leadership {
    election: JoinHandle<Elector<LeaseLock>>,
    election_cancel: CancellationToken,
    leader_work: Vec<JoinHandle<()>>,
    leader_cancel: CancellationToken,
    request_timeout: Duration,
}

impl Leadership {
    fn start(config: &Config, kube: kube::Client, node_ip: std::net::Ipv4Addr, mac: Mac) -> Self {
        let e = &config.election;
        let id = identity(config);
        tracing::info!(identity = %id, lease = %format!("{}/{}", e.namespace, e.lease_name), "joining the election");
        let timings = Timings {
            lease_duration: e.lease_duration,
            renew_deadline: e.renew_deadline,
            retry_period: e.retry_period,
        };
        let request_timeout = config.kubernetes.request_timeout.min(e.renew_deadline);
        let lock = LeaseLock::new(kube.clone(), &e.namespace, &e.lease_name, request_timeout);
        let mut elector = Elector::new(lock, id.clone(), timings);
        let (publisher, handle) = election::channel();
        let election_cancel = CancellationToken::new();
        let leader_cancel = CancellationToken::new();

        let (wake, lease_watch) = election::lease::watch_changes(
            kube.clone(),
            &e.namespace,
            &e.lease_name,
            election_cancel.clone(),
        );
        let c = election_cancel.clone();
        let election = tokio::spawn(async move {
            election::run(&mut elector, &publisher, Some(wake), c).await;
            elector
        });
        let spec = vtep_config::VtepSpec {
            tunnel_endpoint: node_ip,
            mac,
            vpc_cidrs: config.gateway.vpc_cidrs.clone(),
        };
        let vtep = tokio::spawn(vtep_config::run(
            kube,
            spec,
            id,
            handle,
            request_timeout,
            leader_cancel.clone(),
        ));
        Leadership {
            election,
            election_cancel,
            leader_work: vec![vtep, lease_watch],
            leader_cancel,
            request_timeout,
        }
    }

    /// Standby first, then leader work stopped, then the Lease released: the next leader
    /// can start at once and never overlaps with us.
    async fn stop(self) {
        self.election_cancel.cancel();
        let elector = self.election.await;
        self.leader_cancel.cancel();
        for t in self.leader_work {
            let _ = t.await;
        }
        if let Ok(mut elector) = elector {
            match tokio::time::timeout(self.request_timeout, elector.release(Timestamp::now()))
                .await
            {
                Ok(Ok(true)) => tracing::info!(identity = elector.identity(), "released the Lease"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    "could not release the Lease ({e}); the standby takes over when it expires"
                ),
                Err(_) => tracing::warn!(
                    "releasing the Lease timed out; the standby takes over when it expires"
                ),
            }
        }
    }
}

fn load_nodes(path: &Path) -> anyhow::Result<Vec<crate::datapath::HybridNode>> {
    static_nodes::load(path)
        .with_context(|| format!("reading static nodes from {}", path.display()))
}
