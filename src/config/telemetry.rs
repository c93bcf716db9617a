//! `[metrics]`, `[health]` and `[log]`: how operators observe the daemon.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Validator};

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Prometheus text on `/metrics`.
    pub metrics_listen: SocketAddr,
    /// `/healthz`, `/readyz` and `/status` (what `hybrid-gateway status` reads).
    pub health_listen: SocketAddr,
    /// `RUST_LOG`-style filter; the `RUST_LOG` environment variable wins when set.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 10080)),
            health_listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            log_level: "info".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub level: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn telemetry(
        &self,
        metrics: Option<RawListen>,
        health: Option<RawListen>,
        log: Option<RawLog>,
    ) -> Result<TelemetryConfig, ConfigError> {
        let mut t = TelemetryConfig::default();
        if let Some(l) = metrics.and_then(|m| m.listen) {
            t.metrics_listen = self.listen("metrics.listen", l)?;
        }
        if let Some(l) = health.and_then(|h| h.listen) {
            t.health_listen = self.listen("health.listen", l)?;
        }
        if t.metrics_listen == t.health_listen {
            return Err(ConfigError::Invalid {
                path: self.path.to_path_buf(),
                line: 1,
                key: "health.listen".into(),
                value: format!("\"{}\"", t.health_listen),
                why: "metrics.listen and health.listen must differ".into(),
            });
        }
        if let Some(level) = log.and_then(|l| l.level) {
            t.log_level = self.check("log.level", level, |level| {
                match tracing_subscriber::EnvFilter::builder().parse(&level) {
                    Ok(_) => Ok(level),
                    Err(e) => Err(format!("not a log filter ({e}); write e.g. \"info\" or \"info,hybrid_gateway=debug\"")),
                }
            })?;
        }
        Ok(t)
    }

    fn listen(&self, key: &str, value: Spanned<String>) -> Result<SocketAddr, ConfigError> {
        self.check(key, value, |v| {
            v.parse().map_err(|_| "not an address:port; write e.g. \"127.0.0.1:10080\" (0.0.0.0 exposes it to the VPC)".to_string())
        })
    }
}
