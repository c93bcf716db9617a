//! `hybrid-gateway run`: set the datapath up, keep it matching the hybrid nodes, and take
//! part in the election; the leader keeps the CiliumVTEPConfig right.

mod aws_side;
mod leader;
mod node_sync;
mod reload;
mod route_sync;
mod static_nodes;
mod supervisor;
mod systemd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use aws_side::AwsSide;
use supervisor::supervise;

use crate::config::Config;
use crate::datapath::Datapath;
use crate::k8s::cilium_nodes::{self, NodeSet, NodeWatchStats};
use crate::k8s::client;
use crate::telemetry::{self, DaemonStatus, Metrics};

/// sysexits' EX_CONFIG: the unit file's RestartPreventExitStatus keeps systemd from
/// restart-looping on a configuration only a human can fix.
pub const EXIT_CONFIG: u8 = 78;

/// Created by the package's removal script just before it stops the service.
const FINAL_STOP_MARKER: &str = "/run/hybrid-gateway/final-stop";

/// Everything must be down this long after SIGTERM (systemd's stop timeout is longer).
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(4);

pub fn main(config_path: &Path, static_nodes: Option<&Path>) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
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

/// This process's election identity: stable per host (instance id, else hostname), plus a
/// per-process suffix so two processes on one host (an upgrade overlapping a stop) never
/// share it.
fn identity(config: &Config, instance_id: Option<&str>) -> String {
    let base = config
        .election
        .identity
        .clone()
        .or_else(|| instance_id.map(str::to_string))
        .unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "gateway".into())
        });
    format!("{base}_{:08x}", fastrand::u32(..))
}

/// AWS is needed for VPC routes, the DynamoDB lock, or to learn the node IP.
fn needs_aws(config: &Config) -> bool {
    !config.aws.route_table_ids.is_empty()
        || config.aws.route_table_tag.is_some()
        || config.election.dynamodb.is_some()
        || config.gateway.node_ip.is_none()
}

async fn run(mut config: Config, static_nodes: Option<PathBuf>) -> anyhow::Result<()> {
    tracing::info!("{}", config.summary());
    let cancel = CancellationToken::new();

    // Who we are: IMDS (config values win), or the config alone when AWS is not used.
    let aws = if needs_aws(&config) && static_nodes.is_none() {
        Some(AwsSide::discover(&config).await?)
    } else {
        None
    };
    let node_ip = match (&aws, config.gateway.node_ip) {
        (Some(a), _) => a.identity.local_ipv4,
        (None, Some(ip)) => ip,
        (None, None) => anyhow::bail!(
            "gateway.node_ip is not set and AWS is not used; set it to this gateway's VPC address"
        ),
    };
    let id = identity(
        &config,
        aws.as_ref().map(|a| a.identity.instance_id.as_str()),
    );
    let status = Arc::new(DaemonStatus::new(&id));

    let (datapath, changes) = Datapath::setup(&config, node_ip)
        .await
        .context("setting up the datapath")?;
    for change in &changes {
        tracing::info!(sysctl = %change.key, "changed {change}");
    }
    let device = datapath.device().clone();
    tracing::info!(device = %device.name, ifindex = device.index, mac = %device.mac, mtu = device.mtu, underlay = %device.underlay, "VXLAN device {}", device.action);
    let node_stats = Arc::new(NodeWatchStats::default());
    let metrics = Arc::new(Metrics::new(&id, &device.name, node_stats.clone()));
    metrics.vxlan_interface_up.set(1);
    status.update(|s| {
        s.device_up = true;
        s.identity_known = true;
    });

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let t = &config.telemetry;
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
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = telemetry::server::serve(listener, router, c).await {
                tracing::error!("HTTP server on {addr}: {e}");
            }
        }));
    }
    tasks.push(tokio::spawn(systemd::status_notifier(
        status.clone(),
        cancel.clone(),
    )));
    tasks.push(tokio::spawn(systemd::watchdog(
        status.clone(),
        cancel.clone(),
    )));

    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    let (nodes_tx, nodes_rx) = watch::channel::<Option<NodeSet>>(None);
    let datapath = Arc::new(datapath);
    let obs = node_sync::Observers {
        status: status.clone(),
        metrics: metrics.clone(),
    };
    {
        let (dp, rx, cfg, obs, c) = (
            datapath.clone(),
            nodes_rx.clone(),
            config_rx.clone(),
            obs.clone(),
            cancel.clone(),
        );
        tasks.push(supervise(
            "datapath",
            status.clone(),
            cancel.clone(),
            move || node_sync::run(dp.clone(), rx.clone(), cfg.clone(), obs.clone(), c.clone()),
        ));
    }

    let mut election = None;
    match &static_nodes {
        Some(path) => {
            nodes_tx.send_replace(Some(Arc::new(load_nodes(path)?)));
            tracing::info!(
                "hybrid nodes from {}; no Kubernetes, no election",
                path.display()
            );
        }
        None => {
            let kube = client::connect(&config.kubernetes, aws.as_ref().map(|a| &a.sdk))
                .await
                .context("connecting to Kubernetes")?;
            {
                let (k, tx, st, c) = (
                    kube.clone(),
                    nodes_tx.clone(),
                    node_stats.clone(),
                    cancel.clone(),
                );
                tasks.push(supervise(
                    "ciliumnode-watch",
                    status.clone(),
                    cancel.clone(),
                    move || cilium_nodes::run(k.clone(), tx.clone(), st.clone(), c.clone()),
                ));
            }
            let routes = aws
                .as_ref()
                .and_then(|a| a.route_sync(&config_rx, status.clone(), metrics.clone()));
            election = Some(leader::Election::start(
                &config,
                leader::LeaderInputs {
                    kube,
                    identity: id.clone(),
                    node_ip,
                    mac: device.mac,
                    dynamodb: aws.as_ref().map(|a| aws_sdk_dynamodb::Client::new(&a.sdk)),
                    routes,
                    status: status.clone(),
                    metrics: metrics.clone(),
                },
            ));
        }
    }

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                systemd::reloading();
                if let Some(path) = &static_nodes {
                    match load_nodes(path) {
                        Ok(n) => { tracing::info!(nodes = n.len(), "reloaded {}", path.display()); nodes_tx.send_replace(Some(Arc::new(n))); }
                        Err(e) => tracing::error!("{e:#}; keeping the previous node list"),
                    }
                }
                match Config::load(&config.path) {
                    Err(e) => {
                        tracing::error!("new configuration rejected, keeping the running one: {e}");
                        status.error(format!("reload rejected: {e}"));
                    }
                    Ok(new) => {
                        let (live, restart) = reload::classify(&config, &new);
                        if live.is_empty() && restart.is_empty() {
                            tracing::info!("configuration unchanged");
                        }
                        if !restart.is_empty() {
                            tracing::warn!(keys = ?restart, "these changes need `systemctl restart hybrid-gateway` (the datapath is kept across restarts); running with the old values");
                        }
                        if !live.is_empty() {
                            // Only the live-applicable keys move forward; the others keep
                            // their running values until a restart.
                            let mut applied = config.clone();
                            applied.gateway.hybrid_pod_cidrs = new.gateway.hybrid_pod_cidrs.clone();
                            applied.datapath = new.datapath.clone();
                            applied.aws.route_table_ids = new.aws.route_table_ids.clone();
                            applied.aws.route_table_tag = new.aws.route_table_tag.clone();
                            applied.aws.takeover = new.aws.takeover;
                            applied.aws.gateway_instance_ids = new.aws.gateway_instance_ids.clone();
                            applied.aws.resync_interval = new.aws.resync_interval;
                            applied.aws.cleanup_on_shutdown = new.aws.cleanup_on_shutdown;
                            config = applied;
                            config_tx.send_replace(Arc::new(config.clone()));
                            tracing::info!(keys = ?live, "configuration reloaded");
                        }
                    }
                }
                systemd::reloaded();
            }
        }
    }

    systemd::stopping();
    // The package's removal script leaves this marker; a restart or upgrade does not.
    let final_stop =
        config.aws.cleanup_on_shutdown && std::fs::remove_file(FINAL_STOP_MARKER).is_ok();
    tracing::info!(
        final_stop,
        "stopping; the device and its entries stay so traffic keeps flowing"
    );
    let stop = async {
        if let Some(e) = election {
            e.stop(final_stop).await;
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

fn load_nodes(path: &Path) -> anyhow::Result<Vec<crate::datapath::HybridNode>> {
    static_nodes::load(path)
        .with_context(|| format!("reading static nodes from {}", path.display()))
}
