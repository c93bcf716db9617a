//! `[datapath]`: how the kernel state is kept matching the hybrid nodes.

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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatapath {
    pub resync_interval: Option<Spanned<String>>,
    pub filter: Option<bool>,
}

impl Validator<'_> {
    pub(super) fn datapath(&self, raw: RawDatapath) -> Result<DatapathConfig, ConfigError> {
        let resync_interval = match raw.resync_interval {
            None => Duration::from_secs(30),
            Some(d) => self.duration("datapath.resync_interval", d, Duration::from_secs(1))?,
        };
        Ok(DatapathConfig {
            resync_interval,
            filter: raw.filter.unwrap_or(true),
        })
    }
}
