use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hybrid_gateway::config::{Config, DEFAULT_PATH};
use hybrid_gateway::daemon;

/// Connects an Amazon EKS cluster's VPC to pods on EKS Hybrid Nodes over VXLAN.
#[derive(Parser)]
#[command(name = "hybrid-gateway", version, disable_version_flag = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon (normally started by systemd).
    Run {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Program hybrid nodes from this TOML file instead of watching Kubernetes
        /// (labs, and emergencies when the API server is gone). Re-read on SIGHUP.
        #[arg(long, value_name = "FILE")]
        static_nodes: Option<PathBuf>,
    },
    /// Validate a configuration file: exit 0 and print a summary, or print the error.
    CheckConfig {
        #[arg(default_value = DEFAULT_PATH)]
        path: PathBuf,
    },
    /// Show the local daemon's view (role, leader, term, nodes, route tables, last errors);
    /// exits 0 only when it is ready.
    Status {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Print the VXLAN device MAC that a gateway with this node IP uses (the `mac` of its
    /// CiliumVTEPConfig entry).
    VtepMac { node_ip: std::net::Ipv4Addr },
    /// Print the version.
    Version,
}

/// The keys without which the daemon has nothing to do. The shipped config has them
/// commented out, so a host that boots with the package installed but not configured stops
/// here: exit 78 (the unit's RestartPreventExitStatus, no restart loop), no API called.
const REQUIRED: [&str; 2] = ["vpc_cidrs", "hybrid_pod_cidrs"];

/// "not configured: set gateway.vpc_cidrs and ... in PATH" when a required key is absent.
/// A file that does not parse is left to `Config::load`, which names the line.
fn not_configured(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let gateway = table.get("gateway").and_then(toml::Value::as_table);
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|k| gateway.is_none_or(|g| !g.contains_key(**k)))
        .map(|k| format!("gateway.{k}"))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "not configured: set {} in {}",
            missing.join(" and "),
            path.display()
        )
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CheckConfig { path } | Command::Run { config: path, .. } = &cli.command {
        if let Some(msg) = not_configured(path) {
            eprintln!("{msg}");
            return ExitCode::from(daemon::EXIT_CONFIG);
        }
    }
    match cli.command {
        Command::Version => {
            println!("hybrid-gateway {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Status { config } => {
            let config = match Config::load_or_exit(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let code = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(hybrid_gateway::telemetry::status_client::run(&config)))
                .unwrap_or(3);
            ExitCode::from(code)
        }
        Command::VtepMac { node_ip } => {
            println!("{}", hybrid_gateway::datapath::Mac::for_gateway(node_ip));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { path } => match Config::load_or_exit(&path) {
            Ok(config) => {
                println!("{}", config.summary());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run {
            config,
            static_nodes,
        } => daemon::main(&config, static_nodes.as_deref()),
    }
}
