//! `hybrid-gateway run`: set the datapath up, then keep it matching the hybrid nodes.

mod static_nodes;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::datapath::{Datapath, HybridNode, Reconciled};

/// sysexits' EX_CONFIG: the unit file's RestartPreventExitStatus keeps systemd from
/// restart-looping on a configuration only a human can fix.
pub const EXIT_CONFIG: u8 = 78;

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

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
    let device = datapath.device();
    tracing::info!(device = %device.name, ifindex = device.index, mac = %device.mac, mtu = device.mtu, underlay = %device.underlay, "VXLAN device {}", device.action);

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    let Some(path) = static_nodes else {
        tracing::warn!("no hybrid node source: existing routes, ARP and FDB entries on the device are kept as they are");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping; the device and its entries stay so traffic keeps flowing");
        return Ok(());
    };

    let mut nodes = load_nodes(&path)?;
    let mut reporter = Reporter::default();
    let mut failures = 0u32;
    loop {
        let wait = match datapath.reconcile(&nodes).await {
            Ok(r) => {
                reporter.report(&r);
                if r.report.errors.is_empty() {
                    failures = 0;
                    config.datapath.resync_interval
                } else {
                    failures += 1;
                    backoff(failures)
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!("reconcile failed, retrying: {e}");
                backoff(failures)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = hup.recv() => match load_nodes(&path) {
                Ok(n) => { nodes = n; tracing::info!(nodes = nodes.len(), "reloaded {}", path.display()); }
                Err(e) => tracing::error!("{e:#}; keeping the previous node list"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping; the device and its entries stay so traffic keeps flowing");
    Ok(())
}

fn load_nodes(path: &Path) -> anyhow::Result<Vec<HybridNode>> {
    static_nodes::load(path)
        .with_context(|| format!("reading static nodes from {}", path.display()))
}

/// Exponential backoff with full jitter, capped.
fn backoff(failures: u32) -> Duration {
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
