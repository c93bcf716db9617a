//! Health-aware leadership, the rules alone (issue 15, item 2): when a leader whose tunnels
//! are clearly worse than a peer's should hand over, and when a gateway should not campaign.
//! Pure functions of (own score, peers' scores with when each was last seen to change,
//! now), like [`super::decide`]; the caller owns the clock, the publication of scores and
//! the release (which is the graceful release of a stop: the leadership safety rules apply
//! unchanged).
//!
//! Wired by [`super::advisor`] (which reads the scores [`super::scores`] publishes) into
//! the election loops.
//!
//! A peer's score counts only while fresh by the *reader's* monotonic clock (when the
//! reader last saw it change), never by a time the peer wrote: no clock is compared across
//! hosts. No opinion (no score of our own, no fresh peer) means no health-based move.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::HealthConfig;

/// The knobs, with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthRules {
    /// A peer must reach this many more nodes (share, 0–1) before anything moves: equally
    /// bad gateways (a site outage) never trade places.
    pub margin: f64,
    /// Once below by `margin`, a leader counts as healthy again only when within this of
    /// the peer (hysteresis: a score wobbling around the margin does not restart the clock).
    pub recover_margin: f64,
    /// A peer's score counts while the reader saw it change within this.
    pub stale_after: Duration,
    /// A leader hands over after being `margin` below a fresh peer for this long.
    pub hold_down: Duration,
    /// At most one voluntary handover per this, whatever the scores do.
    pub min_between_handovers: Duration,
}

impl From<&HealthConfig> for HealthRules {
    fn from(c: &HealthConfig) -> Self {
        HealthRules {
            margin: c.margin,
            recover_margin: c.recover_margin,
            stale_after: c.stale_after,
            hold_down: c.hold_down,
            min_between_handovers: c.min_between_handovers,
        }
    }
}

impl Default for HealthRules {
    fn default() -> Self {
        (&HealthConfig::default()).into()
    }
}

/// A peer's published score as this gateway last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerScore {
    pub identity: String,
    pub ratio: f64,
    /// When this reader last saw the peer's record change (its own clock).
    pub seen_changed_at: Instant,
}

/// What a leader should do about its health.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaderVerdict {
    Stay,
    /// Below `peer` by the margin for the whole hold-down: release, as on a stop.
    HandOver {
        to: String,
        own: f64,
        peer: f64,
    },
}

/// The leader's memory between rounds: since when it has been clearly worse, and when it
/// last handed over.
#[derive(Debug, Clone, Default)]
pub struct HealthGate {
    below_since: Option<Instant>,
    last_handover: Option<Instant>,
}

/// The healthiest peer whose score is fresh at `now`.
pub fn best_fresh_peer<'a>(
    peers: &'a [PeerScore],
    now: Instant,
    rules: &HealthRules,
) -> Option<&'a PeerScore> {
    peers
        .iter()
        .filter(|p| now.saturating_duration_since(p.seen_changed_at) <= rules.stale_after)
        .max_by(|a, b| a.ratio.total_cmp(&b.ratio))
}

impl HealthGate {
    /// One leader round.
    pub fn leader(
        &mut self,
        own: Option<f64>,
        peers: &[PeerScore],
        now: Instant,
        rules: &HealthRules,
    ) -> LeaderVerdict {
        let (Some(own), Some(best)) = (own, best_fresh_peer(peers, now, rules)) else {
            self.below_since = None;
            return LeaderVerdict::Stay;
        };
        let gap = best.ratio - own;
        match self.below_since {
            None if gap >= rules.margin => self.below_since = Some(now),
            Some(_) if gap < rules.recover_margin => self.below_since = None,
            _ => {}
        }
        let Some(since) = self.below_since else {
            return LeaderVerdict::Stay;
        };
        let held = now.saturating_duration_since(since) >= rules.hold_down;
        let spaced = self
            .last_handover
            .is_none_or(|t| now.saturating_duration_since(t) >= rules.min_between_handovers);
        // Between the margins (after falling below): keep waiting, do not hand over yet.
        if held && spaced && gap >= rules.margin {
            LeaderVerdict::HandOver {
                to: best.identity.clone(),
                own,
                peer: best.ratio,
            }
        } else {
            LeaderVerdict::Stay
        }
    }

    /// The handover happened (the release was made).
    pub fn handed_over(&mut self, now: Instant) {
        self.last_handover = Some(now);
        self.below_since = None;
    }

    /// Not leading (any more): a later term starts its own hold-down.
    pub fn not_leading(&mut self) {
        self.below_since = None;
    }
}

/// Whether a standby may campaign: not while a fresh peer is better by the margin (it
/// would only win to hand over again). Without an opinion, yes.
pub fn may_campaign(
    own: Option<f64>,
    peers: &[PeerScore],
    now: Instant,
    rules: &HealthRules,
) -> bool {
    match (own, best_fresh_peer(peers, now, rules)) {
        (Some(own), Some(best)) => best.ratio - own < rules.margin,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn peer(ratio: f64, seen: Instant) -> PeerScore {
        PeerScore {
            identity: "gw-b".into(),
            ratio,
            seen_changed_at: seen,
        }
    }

    #[test]
    fn a_leader_clearly_worse_for_the_hold_down_hands_over_once() {
        let r = HealthRules::default();
        let t0 = Instant::now();
        let mut g = HealthGate::default();
        let at = |s: u64| t0 + S * s as u32;
        // Tunnel broken on the leader only: 0 % against the peer's 100 %.
        assert_eq!(
            g.leader(Some(0.0), &[peer(1.0, at(0))], at(0), &r),
            LeaderVerdict::Stay
        );
        assert_eq!(
            g.leader(Some(0.0), &[peer(1.0, at(2))], at(2), &r),
            LeaderVerdict::Stay
        );
        assert_eq!(
            g.leader(Some(0.0), &[peer(1.0, at(3))], at(3), &r),
            LeaderVerdict::HandOver {
                to: "gw-b".into(),
                own: 0.0,
                peer: 1.0
            }
        );
        g.handed_over(at(3));
        // Leading again soon after (the peer died, say) and still worse: no second
        // voluntary handover within the minimum interval.
        for s in 4..63 {
            assert_eq!(
                g.leader(Some(0.0), &[peer(1.0, at(s))], at(s), &r),
                LeaderVerdict::Stay,
                "at {s} s"
            );
        }
        assert!(matches!(
            g.leader(Some(0.0), &[peer(1.0, at(63))], at(63), &r),
            LeaderVerdict::HandOver { .. }
        ));
    }

    #[test]
    fn equally_bad_stale_or_unknown_scores_move_nobody() {
        let r = HealthRules::default();
        let t0 = Instant::now();
        let later = t0 + S * 30;
        let mut g = HealthGate::default();
        // Site outage: both at 0 %.
        for s in 0..30 {
            let now = t0 + S * s;
            assert_eq!(
                g.leader(Some(0.0), &[peer(0.0, now)], now, &r),
                LeaderVerdict::Stay
            );
            assert!(may_campaign(Some(0.0), &[peer(0.0, now)], now, &r));
        }
        // A peer better by less than the margin.
        assert_eq!(
            g.leader(Some(0.8), &[peer(1.0, later)], later, &r),
            LeaderVerdict::Stay
        );
        // A peer whose record stopped changing (dead, or cut off from Kubernetes) is ignored.
        let stale = peer(1.0, t0);
        let mut g = HealthGate::default();
        for s in 0..10 {
            assert_eq!(
                g.leader(Some(0.0), std::slice::from_ref(&stale), later + S * s, &r),
                LeaderVerdict::Stay
            );
        }
        assert!(may_campaign(Some(0.0), &[stale], later, &r));
        // No score of our own (probes off, first rounds): health plays no part.
        assert_eq!(
            g.leader(None, &[peer(1.0, later)], later, &r),
            LeaderVerdict::Stay
        );
        assert!(may_campaign(None, &[peer(1.0, later)], later, &r));
    }

    #[test]
    fn hysteresis_a_score_wobbling_around_the_margin_does_not_restart_the_clock() {
        let r = HealthRules::default();
        let t0 = Instant::now();
        let mut g = HealthGate::default();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(
            g.leader(Some(0.7), &[peer(1.0, at(0))], at(0), &r),
            LeaderVerdict::Stay
        );
        // Back to 0.2 below (between the margins): still counting, no handover while there.
        assert_eq!(
            g.leader(Some(0.8), &[peer(1.0, at(1500))], at(1500), &r),
            LeaderVerdict::Stay
        );
        assert_eq!(
            g.leader(Some(0.8), &[peer(1.0, at(3500))], at(3500), &r),
            LeaderVerdict::Stay
        );
        // Clearly below again after the hold-down, counted from the first fall.
        assert!(matches!(
            g.leader(Some(0.7), &[peer(1.0, at(3600))], at(3600), &r),
            LeaderVerdict::HandOver { .. }
        ));
        // Recovering to within the recover margin resets the clock.
        let mut g = HealthGate::default();
        g.leader(Some(0.7), &[peer(1.0, at(0))], at(0), &r);
        g.leader(Some(0.95), &[peer(1.0, at(1000))], at(1000), &r);
        assert_eq!(
            g.leader(Some(0.7), &[peer(1.0, at(3100))], at(3100), &r),
            LeaderVerdict::Stay
        );
    }

    #[test]
    fn a_standby_far_below_a_fresh_peer_does_not_campaign() {
        let r = HealthRules::default();
        let now = Instant::now();
        assert!(!may_campaign(Some(0.0), &[peer(1.0, now)], now, &r));
        assert!(may_campaign(Some(0.9), &[peer(1.0, now)], now, &r));
        assert!(may_campaign(Some(1.0), &[peer(0.0, now)], now, &r));
    }
}
