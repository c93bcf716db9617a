//! The health rules ([`super::health`]) as the election loops ask them: this gateway's
//! score from its tunnel probes, the peers' scores from [`super::scores`], and the
//! leader's memory between rounds. Reads channels only; the loops do the I/O.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::health::{self, HealthGate, HealthRules, LeaderVerdict, PeerScore};
use crate::probe::health::Score;

/// What the rules read: cheap to clone (the combined election's Lease loop asks whether
/// it may campaign, its lock loop whether to hand over).
#[derive(Clone)]
pub struct HealthInputs {
    own: watch::Receiver<Option<Score>>,
    peers: watch::Receiver<Vec<PeerScore>>,
    rules: HealthRules,
}

/// A voluntary handover, for logs and `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Handover {
    pub to: String,
    pub own: f64,
    pub peer: f64,
    pub at: jiff::Timestamp,
}

impl std::fmt::Display for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "handed over at {}: tunnel health {:.0} % against {:.0} % at {}",
            self.at.round(jiff::Unit::Second).unwrap_or(self.at),
            self.own * 100.0,
            self.peer * 100.0,
            self.to
        )
    }
}

impl HealthInputs {
    pub fn new(
        own: watch::Receiver<Option<Score>>,
        peers: watch::Receiver<Vec<PeerScore>>,
        rules: HealthRules,
    ) -> Self {
        HealthInputs { own, peers, rules }
    }

    fn own(&self) -> Option<f64> {
        self.own.borrow().and_then(|s| s.ratio())
    }

    /// Whether a standby may go for the lock now. `presumed_dead`: the holder whose lease
    /// ran out by our clock. Its last score does not count: a standby's probe replies
    /// come back through the leader's VTEP (Cilium sends the VPC to one gateway), so when
    /// the leader dies the standby looks down *because* of it, and must still take over.
    pub fn may_campaign(&self, presumed_dead: Option<&str>, now: Instant) -> bool {
        let peers: Vec<PeerScore> = self
            .peers
            .borrow()
            .iter()
            .filter(|p| Some(p.identity.as_str()) != presumed_dead)
            .cloned()
            .collect();
        health::may_campaign(self.own(), &peers, now, &self.rules)
    }
}

/// A standby's veto, bounded: a healthier peer gets the first go at a free lock (watching
/// it, the peer takes it within milliseconds), but if it has not taken it within
/// `patience`, this gateway campaigns anyway: a worse leader beats none (the peer's
/// process may publish scores yet fail to campaign).
#[derive(Debug, Default)]
pub struct Patience {
    since: Option<Instant>,
}

impl Patience {
    /// Whether to campaign this round. `vetoed`: the rules say not to; `lock_free`: nobody
    /// validly holds the lock by our clock (released, expired, never written).
    pub fn campaign(
        &mut self,
        vetoed: bool,
        lock_free: bool,
        now: Instant,
        patience: Duration,
    ) -> bool {
        if !vetoed || !lock_free {
            self.since = None;
            return !vetoed;
        }
        let since = *self.since.get_or_insert(now);
        let out_of_patience = now.saturating_duration_since(since) >= patience;
        if out_of_patience {
            tracing::warn!(
                "a healthier gateway has left the lock free for {patience:?}: campaigning anyway"
            );
        }
        out_of_patience
    }
}

/// The leader's side: the rules' memory and what it last did.
pub struct Advisor {
    inputs: HealthInputs,
    gate: HealthGate,
    handovers: watch::Sender<Option<Handover>>,
}

impl Advisor {
    pub fn new(inputs: HealthInputs, handovers: watch::Sender<Option<Handover>>) -> Self {
        Advisor {
            inputs,
            gate: HealthGate::default(),
            handovers,
        }
    }

    pub fn inputs(&self) -> &HealthInputs {
        &self.inputs
    }

    /// One leader round: hand over, or stay.
    pub fn leader_round(&mut self, now: Instant) -> LeaderVerdict {
        let own = self.inputs.own();
        let peers = self.inputs.peers.borrow().clone();
        self.gate.leader(own, &peers, now, &self.inputs.rules)
    }

    /// The release was made (or tried: either way this office is over).
    pub fn handed_over(&mut self, to: &str, own: f64, peer: f64, now: Instant) {
        self.gate.handed_over(now);
        self.handovers.send_replace(Some(Handover {
            to: to.to_string(),
            own,
            peer,
            at: jiff::Timestamp::now(),
        }));
    }

    /// A leader round after leadership was lost (not handed over): forget the hold-down.
    pub fn not_leading(&mut self) {
        self.gate.not_leading();
    }
}
