//! `[election.health]`: leadership that yields to a gateway whose tunnels are clearly
//! healthier (the rules: `election::health`; the scores: `election::scores`).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Span;
use super::{ConfigError, Validator};

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Publish this gateway's tunnel health and let it move leadership. Off: no score is
    /// published and leadership follows liveness alone (a gateway without probes,
    /// `probe.target = "none"`, has no score and moves nothing either way).
    pub enabled: bool,
    /// A peer must reach this much larger a share of the nodes before anything moves.
    pub margin: f64,
    /// Once below by `margin`, back within this of the peer counts as recovered.
    pub recover_margin: f64,
    /// How long a leader must stay `margin` below a fresh peer before it hands over.
    pub hold_down: Duration,
    /// At most one voluntary handover per gateway per this.
    pub min_between_handovers: Duration,
    /// How often a gateway republishes its score (its heartbeat for the others).
    pub publish_interval: Duration,
    /// A peer's score counts while the reader saw it change within this.
    pub stale_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            margin: 0.25,
            recover_margin: 0.1,
            hold_down: Duration::from_secs(3),
            min_between_handovers: Duration::from_secs(60),
            publish_interval: Duration::from_secs(1),
            stale_after: Duration::from_millis(2500),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub enabled: Option<bool>,
    pub margin: Option<Spanned<f64>>,
    pub recover_margin: Option<Spanned<f64>>,
    pub hold_down: Option<Spanned<String>>,
    pub min_between_handovers: Option<Spanned<String>>,
    pub publish_interval: Option<Spanned<String>>,
    pub stale_after: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn health(&self, raw: RawHealth) -> Result<HealthConfig, ConfigError> {
        let d = HealthConfig::default();
        let share = |key: &str, v: Option<Spanned<f64>>, default: f64, min_exclusive: bool| {
            v.map(|v| {
                let span = v.span();
                let n = v.into_inner();
                let ok = n <= 1.0 && if min_exclusive { n > 0.0 } else { n >= 0.0 };
                if ok {
                    Ok((Some(span), n))
                } else {
                    Err(self.invalid(
                        key,
                        &span,
                        n,
                        "must be a share of the hybrid nodes, from 0 to 1 (0.25: a quarter of them)",
                    ))
                }
            })
            .unwrap_or(Ok((None, default)))
        };
        let (margin_span, margin) = share("election.health.margin", raw.margin, d.margin, true)?;
        let (recover_span, recover_margin) = share(
            "election.health.recover_margin",
            raw.recover_margin,
            d.recover_margin,
            false,
        )?;
        if recover_margin >= margin {
            let (key, span, shown) = match (&recover_span, &margin_span) {
                (Some(s), _) => ("election.health.recover_margin", s, recover_margin),
                (None, Some(s)) => ("election.health.margin", s, margin),
                _ => unreachable!("defaults are consistent"),
            };
            return Err(self.invalid(
                key,
                span,
                shown,
                format!("recover_margin ({recover_margin}) must be less than margin ({margin}): the gap between them is the hysteresis that keeps a wobbling score from restarting the hold-down"),
            ));
        }
        let spanned = |key: &str, v: Option<Spanned<String>>, default: Duration, min: Duration| {
            v.map(|v| Ok::<_, ConfigError>((Some(v.span()), self.duration(key, v, min)?)))
                .unwrap_or(Ok((None, default)))
        };
        let ms = Duration::from_millis;
        let (publish_span, publish_interval) = spanned(
            "election.health.publish_interval",
            raw.publish_interval,
            d.publish_interval,
            ms(100),
        )?;
        let (stale_span, stale_after) = spanned(
            "election.health.stale_after",
            raw.stale_after,
            d.stale_after,
            ms(200),
        )?;
        let (hold_span, hold_down) = spanned(
            "election.health.hold_down",
            raw.hold_down,
            d.hold_down,
            ms(100),
        )?;
        let (min_span, min_between_handovers) = spanned(
            "election.health.min_between_handovers",
            raw.min_between_handovers,
            d.min_between_handovers,
            ms(100),
        )?;
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let pick = |a: &Option<Span>, ka: &'static str, b: &Option<Span>, kb: &'static str| {
            match (a, b) {
                (Some(s), _) => Some((ka, s.clone())),
                (None, Some(s)) => Some((kb, s.clone())),
                // Only defaults, which are consistent.
                _ => None,
            }
        };
        // One lost or late publication must not make a live peer look stale.
        if stale_after < publish_interval * 2 {
            let (key, span) = pick(
                &stale_span,
                "election.health.stale_after",
                &publish_span,
                "election.health.publish_interval",
            )
            .unwrap_or(("election.health.stale_after", 0..0));
            return Err(self.invalid(
                key,
                &span,
                format!("\"{}\"", fmt(if key.ends_with("stale_after") { stale_after } else { publish_interval })),
                format!(
                    "stale_after ({}) must be at least twice publish_interval ({}): one late publication must not make a live peer's score look stale",
                    fmt(stale_after),
                    fmt(publish_interval)
                ),
            ));
        }
        // A dead peer's last score must go stale before a hold-down can end on it: a new
        // leader (which took over from that peer) would otherwise hand over to the dead.
        if hold_down <= stale_after {
            let (key, span) = pick(
                &hold_span,
                "election.health.hold_down",
                &stale_span,
                "election.health.stale_after",
            )
            .unwrap_or(("election.health.hold_down", 0..0));
            return Err(self.invalid(
                key,
                &span,
                format!("\"{}\"", fmt(if key.ends_with("hold_down") { hold_down } else { stale_after })),
                format!(
                    "hold_down ({}) must be longer than stale_after ({}): a crashed peer's last score must go stale before a hold-down can end in a handover to it",
                    fmt(hold_down),
                    fmt(stale_after)
                ),
            ));
        }
        if min_between_handovers < hold_down {
            let (key, span) = pick(
                &min_span,
                "election.health.min_between_handovers",
                &hold_span,
                "election.health.hold_down",
            )
            .unwrap_or(("election.health.hold_down", 0..0));
            return Err(self.invalid(
                key,
                &span,
                format!(
                    "\"{}\"",
                    fmt(if key.ends_with("hold_down") {
                        hold_down
                    } else {
                        min_between_handovers
                    })
                ),
                format!(
                    "min_between_handovers ({}) must be at least hold_down ({})",
                    fmt(min_between_handovers),
                    fmt(hold_down)
                ),
            ));
        }
        Ok(HealthConfig {
            enabled: raw.enabled.unwrap_or(d.enabled),
            margin,
            recover_margin,
            hold_down,
            min_between_handovers,
            publish_interval,
            stale_after,
        })
    }
}
