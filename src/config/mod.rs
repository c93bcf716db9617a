//! The daemon's one TOML file: parsing, defaults and validation.
//!
//! Every rejection names the key, the value, the line and what to do about it, because the
//! person reading it is an operator looking at `journalctl` or an Ansible `validate:` failure.

mod aws;
mod datapath;
mod election;
mod error;
mod gateway;
mod health;
mod kubernetes;
mod probe;
mod telemetry;
mod validate;
mod vxlan;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
#[cfg(test)]
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;

pub use aws::{AwsConfig, RouteTableTag, Takeover};
pub use datapath::DatapathConfig;
pub use election::{DynamoDbLockConfig, ElectionConfig, JITTER_FACTOR};
pub use error::ConfigError;
pub use gateway::{GatewayConfig, MAX_VPC_CIDRS};
pub use health::HealthConfig;
pub use kubernetes::{EksConfig, KubernetesConfig};
pub use probe::{ProbeConfig, ProbeTarget};
pub use telemetry::TelemetryConfig;
use validate::Validator;
pub use vxlan::{VxlanConfig, DEFAULT_INTERFACE, DEFAULT_PORT, DEFAULT_VNI};

pub const DEFAULT_PATH: &str = "/etc/hybrid-gateway/config.toml";

/// sysexits' EX_CONFIG: the unit file's RestartPreventExitStatus keeps systemd from
/// restart-looping on a configuration only a human can fix.
pub const EXIT_CONFIG: u8 = 78;

/// Validated configuration. Construct with [`Config::load`] or [`Config::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub gateway: GatewayConfig,
    pub vxlan: VxlanConfig,
    pub datapath: DatapathConfig,
    pub kubernetes: KubernetesConfig,
    pub election: ElectionConfig,
    pub probe: ProbeConfig,
    pub telemetry: TelemetryConfig,
    pub aws: AwsConfig,
}

/// The file's shape as serde sees it. Each section's raw type lives beside it; values that
/// need semantic checks stay `Spanned` so a rejection can name the line they are on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: gateway::RawGateway,
    vxlan: Option<vxlan::RawVxlan>,
    datapath: Option<datapath::RawDatapath>,
    kubernetes: Option<kubernetes::RawKubernetes>,
    election: Option<election::RawElection>,
    probe: Option<probe::RawProbe>,
    metrics: Option<telemetry::RawListen>,
    health: Option<telemetry::RawListen>,
    log: Option<telemetry::RawLog>,
    aws: Option<aws::RawAws>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// [`Config::load`] for a command that cannot go on without the file: a rejection is
    /// printed to stderr (logging is not set up yet; systemd puts stderr in the journal) and
    /// becomes [`EXIT_CONFIG`].
    pub fn load_or_exit(path: &Path) -> Result<Self, ExitCode> {
        Self::load(path).map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        })
    }

    /// Parses and validates `text`; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::syntax(path, text, &e))?;
        let v = Validator { path, text };
        let kubernetes = v.kubernetes(raw.kubernetes.unwrap_or_default())?;
        let request_timeout = kubernetes.request_timeout;
        Ok(Config {
            path: path.to_path_buf(),
            gateway: v.gateway(raw.gateway)?,
            vxlan: v.vxlan(raw.vxlan.unwrap_or_default())?,
            datapath: v.datapath(raw.datapath.unwrap_or_default())?,
            kubernetes,
            election: v.election(raw.election.unwrap_or_default(), request_timeout)?,
            probe: v.probe(raw.probe.unwrap_or_default())?,
            telemetry: v.telemetry(raw.metrics, raw.health, raw.log)?,
            aws: v.aws(raw.aws.unwrap_or_default())?,
        })
    }

    /// One line for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let join = |v: &[Ipv4Net]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{}: ok: node_ip={} vpc_cidrs={} hybrid_pod_cidrs={} vxlan={} vni={} port={} mtu={}",
            self.path.display(),
            self.gateway
                .node_ip
                .map_or_else(|| "imds".to_string(), |ip| ip.to_string()),
            join(&self.gateway.vpc_cidrs),
            join(&self.gateway.hybrid_pod_cidrs),
            self.vxlan.interface,
            self.vxlan.vni,
            self.vxlan.port,
            self.vxlan.mtu.map_or_else(
                || format!(
                    "{} (underlay_mtu {})",
                    self.vxlan.underlay_mtu - crate::datapath::vxlan::VXLAN_OVERHEAD,
                    self.vxlan.underlay_mtu
                ),
                |m| m.to_string()
            ),
        )
    }
}

#[cfg(test)]
mod tests;
