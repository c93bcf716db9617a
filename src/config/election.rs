//! `[election]`: the Lease (and optional DynamoDB lock) that picks the one acting gateway.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::health::{HealthConfig, RawHealth};
use super::validate::Span;
use super::{ConfigError, Validator};

/// client-go's JitterFactor: retries wait between retry_period and 1.2 × retry_period.
pub const JITTER_FACTOR: f64 = 1.2;

#[derive(Debug, Clone, PartialEq)]
pub struct ElectionConfig {
    pub namespace: String,
    pub lease_name: String,
    /// Stable part of this gateway's identity; default: instance id or hostname. A
    /// per-process suffix is always appended.
    pub identity: Option<String>,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub dynamodb: Option<DynamoDbLockConfig>,
    /// `[election.health]`: yielding to a gateway with clearly healthier tunnels.
    pub health: HealthConfig,
    pub mode: ElectionMode,
}

/// `election.mode`: one leader for everything, or one per Availability Zone shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ElectionMode {
    /// One gateway leads every managed route table and the whole CiliumVTEPConfig.
    #[default]
    ActiveStandby,
    /// Every AZ's route tables (and its subnets' CiliumVTEPConfig endpoints) form a shard
    /// with a Lease of its own, preferably led by a gateway in that AZ (README "Per-AZ
    /// mode").
    PerAz,
}

impl ElectionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ElectionMode::ActiveStandby => "active-standby",
            ElectionMode::PerAz => "per-az",
        }
    }
}

impl ElectionConfig {
    /// The bound of one call to a lock store (the Lease, the DynamoDB lock):
    /// `kubernetes.request_timeout`, but at most half the renew deadline so a failed
    /// renewal can be retried once before the deadline.
    pub fn store_timeout(&self, request_timeout: Duration) -> Duration {
        request_timeout.min(self.renew_deadline / 2)
    }
}

impl Default for ElectionConfig {
    fn default() -> Self {
        // The reference gateway's timings: 3 s lease, 2 s renew deadline, 1 s retry.
        ElectionConfig {
            namespace: "hybrid-gateway".into(),
            lease_name: "hybrid-gateway-leader".into(),
            identity: None,
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_secs(1),
            dynamodb: None,
            health: HealthConfig::default(),
            mode: ElectionMode::ActiveStandby,
        }
    }
}

/// The DynamoDB lock that fences leadership when configured (see the README).
#[derive(Debug, Clone, PartialEq)]
pub struct DynamoDbLockConfig {
    pub table: String,
    pub key: String,
    pub lease_duration: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawElection {
    pub namespace: Option<Spanned<String>>,
    pub lease_name: Option<Spanned<String>>,
    pub identity: Option<Spanned<String>>,
    pub lease_duration: Option<Spanned<String>>,
    pub renew_deadline: Option<Spanned<String>>,
    pub retry_period: Option<Spanned<String>>,
    pub dynamodb: Option<Spanned<RawDynamoDb>>,
    pub health: Option<RawHealth>,
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDynamoDb {
    pub table: Spanned<String>,
    pub key: Option<Spanned<String>>,
    pub lease_duration: Option<Spanned<String>>,
}

impl Validator<'_> {
    /// `request_timeout` is `kubernetes.request_timeout`, which bounds the lock stores' calls
    /// (see [`ElectionConfig::store_timeout`]); `manages_routes`: whether `[aws]` selects
    /// route tables (per-AZ mode shards them, so it needs some).
    pub(super) fn election(
        &self,
        raw: RawElection,
        request_timeout: Duration,
        manages_routes: bool,
    ) -> Result<ElectionConfig, ConfigError> {
        let mut e = ElectionConfig::default();
        let mode_span = raw.mode.as_ref().map(Spanned::span);
        if let Some(mode) = raw.mode {
            e.mode = self.check("election.mode", mode, |m| match m.as_str() {
                "active-standby" => Ok(ElectionMode::ActiveStandby),
                "per-az" => Ok(ElectionMode::PerAz),
                _ => Err("must be \"active-standby\" (one leader for every route table, the default) or \"per-az\" (one leader per Availability Zone)".into()),
            })?;
        }
        if let (ElectionMode::PerAz, Some(span)) = (e.mode, &mode_span) {
            if !manages_routes {
                return Err(self.invalid(
                    "election.mode",
                    span,
                    "\"per-az\"",
                    "per-AZ mode shards the managed VPC route tables by Availability Zone, and none are selected: set aws.route_table_ids or aws.route_table_tag, or use mode = \"active-standby\"",
                ));
            }
        }
        if let Some(ns) = raw.namespace {
            e.namespace = self.check("election.namespace", ns, |ns| dns_label(&ns).map(|()| ns))?;
        }
        if let Some(name) = raw.lease_name {
            e.lease_name = self.check("election.lease_name", name, |name| {
                dns_subdomain(&name).map(|()| name)
            })?;
        }
        if let Some(id) = raw.identity {
            e.identity = Some(self.non_empty(
                "election.identity",
                id,
                "remove the key to use the instance id",
            )?);
        }
        let min = Duration::from_millis(100);
        // Spans are kept: the consistency checks below point at the key the operator wrote.
        let spanned = |key: &str, d: Option<Spanned<String>>| {
            d.map(|d| Ok::<_, ConfigError>((d.span(), self.duration(key, d, min)?)))
                .transpose()
        };
        let lease: Option<(Span, Duration)> =
            spanned("election.lease_duration", raw.lease_duration)?;
        let renew = spanned("election.renew_deadline", raw.renew_deadline)?;
        let retry = spanned("election.retry_period", raw.retry_period)?;
        if let Some((_, d)) = &lease {
            e.lease_duration = *d;
        }
        if let Some((_, d)) = &renew {
            e.renew_deadline = *d;
        }
        if let Some((_, d)) = &retry {
            e.retry_period = *d;
        }
        // Point at whichever of the two keys the operator actually wrote.
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        if e.lease_duration <= e.renew_deadline {
            let (key, span) = match (&lease, &renew) {
                (Some((s, _)), _) => ("election.lease_duration", s.clone()),
                (None, Some((s, _))) => ("election.renew_deadline", s.clone()),
                _ => unreachable!("defaults are consistent"),
            };
            return Err(self.invalid(
                key,
                &span,
                format!("\"{}\"", if key.ends_with("lease_duration") { fmt(e.lease_duration) } else { fmt(e.renew_deadline) }),
                format!(
                    "lease_duration ({}) must be longer than renew_deadline ({}): a leader must give up before others may take over",
                    fmt(e.lease_duration),
                    fmt(e.renew_deadline)
                ),
            ));
        }
        if e.renew_deadline.as_secs_f64() <= JITTER_FACTOR * e.retry_period.as_secs_f64() {
            let (key, span) = match (&renew, &retry) {
                (Some((s, _)), _) => ("election.renew_deadline", s.clone()),
                (None, Some((s, _))) => ("election.retry_period", s.clone()),
                _ => unreachable!("defaults are consistent"),
            };
            return Err(self.invalid(
                key,
                &span,
                format!("\"{}\"", if key.ends_with("renew_deadline") { fmt(e.renew_deadline) } else { fmt(e.retry_period) }),
                format!(
                    "renew_deadline ({}) must be longer than 1.2 × retry_period ({}), or one jittered retry could miss the deadline",
                    fmt(e.renew_deadline),
                    fmt(e.retry_period)
                ),
            ));
        }
        // A standby's expiry clock starts when its read returns, but a read may be
        // answered up to one store call after it was sent: the time between the leader's
        // stop (renew deadline) and anyone's takeover (lease duration) must cover one
        // store call, or a slow read can leave no margin (issue 10, finding 1).
        let store = e.store_timeout(request_timeout);
        if e.lease_duration - e.renew_deadline < store {
            let (key, span, shown) = match (&renew, &lease) {
                (Some((s, _)), _) => ("election.renew_deadline", s.clone(), e.renew_deadline),
                (None, Some((s, _))) => ("election.lease_duration", s.clone(), e.lease_duration),
                _ => unreachable!("defaults are consistent"),
            };
            return Err(self.invalid(
                key,
                &span,
                format!("\"{}\"", fmt(shown)),
                format!(
                    "lease_duration ({}) minus renew_deadline ({}) must be at least the lock store's request timeout ({}: kubernetes.request_timeout, at most half the renew deadline), or a standby's slow read leaves no margin before it takes over",
                    fmt(e.lease_duration),
                    fmt(e.renew_deadline),
                    fmt(store)
                ),
            ));
        }
        e.health = self.health(raw.health.unwrap_or_default())?;
        if let Some(d) = raw.dynamodb {
            let d = d.into_inner();
            let table = self.check("election.dynamodb.table", d.table, |table| {
                if table.trim().is_empty() {
                    Err("cannot be empty: the lock table's name".into())
                } else if !(3..=255).contains(&table.len())
                    || !table
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                {
                    Err(
                        "DynamoDB table names are 3-255 characters of a-z, A-Z, 0-9, '_', '-', '.'"
                            .into(),
                    )
                } else {
                    Ok(table)
                }
            })?;
            let key = match d.key {
                Some(k) => self.non_empty(
                    "election.dynamodb.key",
                    k,
                    "the lock item's key, e.g. \"hybrid-gateway-leader\"",
                )?,
                None => e.lease_name.clone(),
            };
            let lease_duration = match d.lease_duration {
                None => e.lease_duration,
                Some(ld) => {
                    let span = ld.span();
                    let v = self.duration("election.dynamodb.lease_duration", ld, min)?;
                    if v < e.renew_deadline + store {
                        return Err(self.invalid(
                            "election.dynamodb.lease_duration",
                            &span,
                            format!("\"{}\"", fmt(v)),
                            format!(
                                "must be longer than election.renew_deadline ({}) by at least the lock store's request timeout ({})",
                                fmt(e.renew_deadline),
                                fmt(store)
                            ),
                        ));
                    }
                    v
                }
            };
            e.dynamodb = Some(DynamoDbLockConfig {
                table,
                key,
                lease_duration,
            });
        }
        Ok(e)
    }
}

fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("a Kubernetes namespace is 1-63 characters of a-z, 0-9 and '-', starting and ending alphanumeric".into())
    }
}

fn dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 253 && s.split('.').all(|part| dns_label(part).is_ok());
    if ok {
        Ok(())
    } else {
        Err("a Lease name is a DNS subdomain: lower-case a-z, 0-9, '-' and '.', at most 253 characters".into())
    }
}
