//! `[datapath]`: how the kernel state is kept matching the hybrid nodes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Validator};

#[derive(Debug, Clone, PartialEq)]
pub struct DatapathConfig {
    /// How often the kernel state is re-read and repaired even when nothing changed.
    pub resync_interval: Duration,
    /// The daemon's own nftables table (VXLAN only from nodes, tunnel only to the VPC, MSS
    /// clamping). On by default; off removes the table.
    pub filter: bool,
    /// Where the last applied node set is kept for a cold boot without the API. `None`:
    /// systemd's `$STATE_DIRECTORY` (StateDirectory=, /var/lib/hybrid-gateway) when set,
    /// else no snapshot.
    pub state_dir: Option<PathBuf>,
    /// How long start-up waits for the first CiliumNode list before it programs the
    /// snapshot instead.
    pub cold_start_wait: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatapath {
    pub resync_interval: Option<Spanned<String>>,
    pub filter: Option<bool>,
    pub state_dir: Option<PathBuf>,
    pub cold_start_wait: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn datapath(&self, raw: RawDatapath) -> Result<DatapathConfig, ConfigError> {
        let resync_interval = match raw.resync_interval {
            None => Duration::from_secs(30),
            Some(d) => self.duration("datapath.resync_interval", d, Duration::from_secs(1))?,
        };
        let cold_start_wait = match raw.cold_start_wait {
            None => Duration::from_secs(5),
            Some(d) => self.duration("datapath.cold_start_wait", d, Duration::ZERO)?,
        };
        Ok(DatapathConfig {
            resync_interval,
            filter: raw.filter.unwrap_or(true),
            state_dir: raw.state_dir,
            cold_start_wait,
        })
    }
}
