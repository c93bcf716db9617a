use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hybrid_gateway::config::{Config, DEFAULT_PATH};
use hybrid_gateway::daemon;

/// Connects an Amazon EKS cluster's VPC to pods on EKS Hybrid Nodes over VXLAN.
#[derive(Parser)]
#[command(name = "hybrid-gateway", version)]
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
        /// One JSON object instead of text (same exit codes).
        #[arg(long)]
        json: bool,
    },
    /// Check everything the gateway depends on, read-only: configuration, IMDS and the
    /// VPC's CIDRs, source/destination check, route tables (DryRun writes), per-AZ mode's
    /// shards and CiliumVTEPConfig layout, the DynamoDB table, Kubernetes RBAC, the Cilium CRDs, the Lease, this host's sysctls, device and
    /// filter, and the path MTU to every hybrid node. One line per check (ok / WARN / FAIL
    /// with the fix); exits 1 when any check fails.
    Doctor {
        #[arg(long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// One JSON object instead of text (same exit code).
        #[arg(long)]
        json: bool,
    },
    /// Print the VXLAN device MAC that a gateway with this node IP uses (the `mac` of its
    /// CiliumVTEPConfig entry).
    VtepMac { node_ip: std::net::Ipv4Addr },
    /// Print the version.
    Version,
    /// Write a shell completion script or the man page, generated from this definition
    /// (the packages ship both; run at package build time).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Subcommand)]
enum Generate {
    /// A completion script for SHELL, on stdout.
    Completions { shell: clap_complete::Shell },
    /// The man page (roff, section 8), on stdout.
    Man,
}

/// Completions and the man page come from the same clap definition as the parser, so they
/// cannot drift from it.
fn generate(what: Generate) -> std::io::Result<()> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    match what {
        Generate::Completions { shell } => {
            clap_complete::generate(shell, &mut cmd, "hybrid-gateway", &mut out);
            Ok(())
        }
        Generate::Man => clap_mangen::Man::new(cmd).section("8").render(&mut out),
    }
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
        Command::Generate { what } => match generate(what) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Doctor { config, json } => {
            let code = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map(|rt| rt.block_on(hybrid_gateway::doctor::run(&config, json)))
                .unwrap_or(1);
            ExitCode::from(code)
        }
        Command::Status { config, json } => {
            let config = match Config::load_or_exit(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let code = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(hybrid_gateway::telemetry::status_client::run(&config, json)))
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
                // check-config stays offline: the shards come from the VPC's tables and
                // subnets, which only doctor (and the daemon at start) read.
                if config.election.mode == hybrid_gateway::config::ElectionMode::PerAz {
                    println!(
                        "election.mode = per-az: the shards and the per-subnet CiliumVTEPConfig depend on the VPC's route tables and subnets, which check-config does not read; run `hybrid-gateway doctor` on a gateway to judge them"
                    );
                }
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
