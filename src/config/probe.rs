//! `[probe]`: the end-to-end tunnel probes every gateway sends to each hybrid node.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Validator};

/// What a gateway pings behind each node's VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeTarget {
    /// The node's `CiliumInternalIP` (Cilium's router address, inside its pod CIDR): the
    /// echo crosses the tunnel both ways, so it fails when the VXLAN path does.
    CiliumInternalIp,
    /// No probes; the gateway has no tunnel health (health-aware leadership is off for it).
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    pub target: ProbeTarget,
    /// One round (one echo to every node) per interval.
    pub interval: Duration,
    /// An echo not answered within this counts as lost. Less than `interval`: the sends of a
    /// round are spread over `interval - timeout`, so a round always ends before the next.
    pub timeout: Duration,
    /// Consecutive answered rounds before a node that was down counts as up again.
    pub rise: u32,
    /// Consecutive lost rounds before a node counts as down.
    pub fall: u32,
    /// Echoes awaiting their answer at any moment, at most.
    pub max_in_flight: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            target: ProbeTarget::CiliumInternalIp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            max_in_flight: 1024,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    pub target: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub max_in_flight: Option<Spanned<i64>>,
}

impl Validator<'_> {
    pub(super) fn probe(&self, raw: RawProbe) -> Result<ProbeConfig, ConfigError> {
        let d = ProbeConfig::default();
        let target = match raw.target {
            None => d.target,
            Some(t) => self.check("probe.target", t, |text| match text.as_str() {
                "cilium-internal-ip" => Ok(ProbeTarget::CiliumInternalIp),
                "none" => Ok(ProbeTarget::None),
                _ => Err("must be \"cilium-internal-ip\" (ping each node's CiliumInternalIP through the tunnel) or \"none\"".into()),
            })?,
        };
        let interval = match raw.interval {
            None => d.interval,
            Some(v) => self.duration("probe.interval", v, Duration::from_millis(100))?,
        };
        let timeout = match raw.timeout {
            None => d.timeout.min(interval / 2),
            Some(v) => {
                let span = v.span();
                let shown = format!("{:?}", v.get_ref());
                let t = self.duration("probe.timeout", v, Duration::from_millis(10))?;
                if t >= interval {
                    return Err(self.invalid(
                        "probe.timeout",
                        &span,
                        shown,
                        format!(
                            "must be less than probe.interval ({}): a round's echoes are sent over interval - timeout and must be answered before the next round",
                            humantime::format_duration(interval)
                        ),
                    ));
                }
                t
            }
        };
        let count = |key: &str, v: Option<Spanned<i64>>, default: u32| match v {
            None => Ok(default),
            Some(v) => self.check(key, v, |n| {
                u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| "must be a whole number from 1 to 100 (rounds)".to_string())
            }),
        };
        let rise = count("probe.rise", raw.rise, d.rise)?;
        let fall = count("probe.fall", raw.fall, d.fall)?;
        let max_in_flight = match raw.max_in_flight {
            None => d.max_in_flight,
            Some(v) => self.check("probe.max_in_flight", v, |n| {
                usize::try_from(n)
                    .ok()
                    .filter(|n| (1..=60_000).contains(n))
                    .ok_or_else(|| {
                        "must be from 1 to 60000 (echo sequence numbers are 16 bits)".to_string()
                    })
            })?,
        };
        Ok(ProbeConfig {
            target,
            interval,
            timeout,
            rise,
            fall,
            max_in_flight,
        })
    }
}
