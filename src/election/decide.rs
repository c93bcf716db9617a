//! The election's decisions, as pure functions of what the stores said, the leadership
//! deadline and the time. The loops in [`super::run`] and [`super::combined`] only do the
//! I/O these functions ask for and publish what they return, so every rule here is
//! unit-tested with paused time (`decide/tests.rs`) without a store.

use std::time::Duration;

use tokio::time::Instant;

use super::Timings;

/// How one try-acquire-or-renew round against a store ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// We hold the record after this round.
    Held,
    /// The store answered: someone else validly holds it, or won the race to it.
    Lost,
    /// The store answered with an error: says nothing about who holds it.
    Failed,
    /// No answer within the round's limit.
    TimedOut,
}

/// Whether this contender acts, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Standby,
    /// Acting until `until`: the start of the last successful renewal + renew deadline.
    Leading {
        until: Instant,
    },
}

impl Hold {
    pub fn until(self) -> Option<Instant> {
        match self {
            Hold::Standby => None,
            Hold::Leading { until } => Some(until),
        }
    }
}

/// Why a leader stopped acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepDown {
    /// No successful renewal within the renew deadline.
    Deadline,
    /// The store named someone else.
    OtherHolder,
    /// Combined mode: the Kubernetes API answered and another gateway holds the Lease.
    LeaseHeldBy(Option<String>),
}

impl std::fmt::Display for StepDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepDown::Deadline => f.write_str("could not renew within the renew deadline"),
            StepDown::OtherHolder => f.write_str("the lock is now held by another gateway"),
            StepDown::LeaseHeldBy(h) => write!(
                f,
                "the Lease is held by {}",
                h.as_deref().unwrap_or("someone else")
            ),
        }
    }
}

/// What the loop must publish after a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    None,
    /// Start acting until `until`.
    Became {
        until: Instant,
    },
    /// Keep acting, now until `until`.
    Extended {
        until: Instant,
    },
    /// Stop acting at once.
    SteppedDown(StepDown),
}

/// When the loop runs its next round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// At this instant (a leader's renewal schedule).
    At(Instant),
    /// After a jittered retry period, earlier if woken or the other holder's lease runs out.
    Poll,
}

/// A decision: the new hold, what to publish, when to run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub hold: Hold,
    pub change: Change,
    pub next: Next,
}

/// The time a round may take, or `None` when the hold has already run out and the
/// leader must step down without asking the store.
pub fn round_limit(hold: Hold, started: Instant, t: &Timings) -> Option<Duration> {
    match hold {
        Hold::Standby => Some(t.renew_deadline),
        Hold::Leading { until } if started >= until => None,
        Hold::Leading { until } => Some((until - started).min(t.renew_deadline)),
    }
}

/// The Lease-only contender (client-go's loop): standby tries every retry period, the
/// leader renews every retry period and stops acting once `renew_deadline` has passed
/// since the start of its last successful renewal. `now` is when the round ended.
pub fn solo(hold: Hold, started: Instant, now: Instant, round: Round, t: &Timings) -> Plan {
    match (hold, round) {
        (Hold::Standby, Round::Held) => Plan {
            hold: Hold::Leading {
                until: started + t.renew_deadline,
            },
            change: Change::Became {
                until: started + t.renew_deadline,
            },
            next: Next::At(started + t.retry_period),
        },
        (Hold::Standby, _) => Plan {
            hold: Hold::Standby,
            change: Change::None,
            next: Next::Poll,
        },
        (Hold::Leading { .. }, Round::Held) => Plan {
            hold: Hold::Leading {
                until: started + t.renew_deadline,
            },
            change: Change::Extended {
                until: started + t.renew_deadline,
            },
            next: Next::At(started + t.retry_period),
        },
        (Hold::Leading { .. }, Round::Lost) => stepped_down(StepDown::OtherHolder),
        // The limit was the time left: no answer means the hold is over.
        (Hold::Leading { .. }, Round::TimedOut) => stepped_down(StepDown::Deadline),
        // A transient error: keep acting on the old deadline, try again a retry period on
        // (the loop never sleeps past `until`, where `round_limit` ends the hold).
        (Hold::Leading { until }, Round::Failed) => Plan {
            hold,
            change: Change::None,
            next: Next::At((now + t.retry_period).min(until)),
        },
    }
}

/// A leader whose hold ran out before it could ask the store.
pub fn deadline_passed() -> Plan {
    stepped_down(StepDown::Deadline)
}

fn stepped_down(why: StepDown) -> Plan {
    Plan {
        hold: Hold::Standby,
        change: Change::SteppedDown(why),
        next: Next::Poll,
    }
}

/// A standby's pause: the jittered retry period, but no later than a few ms past the
/// moment the other holder's lease runs out by our clock, so the attempt is not early.
pub fn poll_pause(jittered: Duration, other_expires_in: Option<Duration>) -> Duration {
    match other_expires_in {
        Some(e) => jittered.min(e + Duration::from_millis(5)),
        None => jittered,
    }
}

/// Combined mode: what the Lease loop last learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// No round has finished yet: do not go for the lock on a guess.
    Unknown,
    /// We hold it.
    Held,
    /// The API answered and someone else validly holds it.
    OtherHolds,
    /// The API did not answer (or answered with an outage).
    Unreachable,
}

/// The Lease loop's report as the lock loop must judge it `now`: a first round that takes
/// longer than the renew deadline, or news older than a lease, say the API does not answer.
pub fn judge_lease(lease: Lease, reported_at: Instant, now: Instant, t: &Timings) -> Lease {
    let age = now.saturating_duration_since(reported_at);
    match lease {
        Lease::Unknown if age <= t.renew_deadline => Lease::Unknown,
        Lease::Unknown => Lease::Unreachable,
        _ if age > t.lease_duration => Lease::Unreachable,
        l => l,
    }
}

/// Combined mode: what the lock loop does this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAction {
    /// Nothing until the first Lease round reports.
    Wait,
    /// Not our turn: only read the lock, so our expiry clock for its holder keeps running.
    Observe,
    /// Another gateway holds the Lease while we act or hold the lock: stop acting now
    /// (publish), then give the lock up once our own writes can no longer land.
    StepDown,
    /// Acquire or renew the lock within `limit`.
    Try { limit: Duration },
}

/// The lock loop's memory between rounds.
#[derive(Debug, Clone)]
pub struct LockState {
    /// The Lease's timings.
    t: Timings,
    /// The lock's timings (its lease may be longer).
    lock_t: Timings,
    /// When the current hold ends (start of the last successful renewal + renew deadline).
    pub acting_until: Option<Instant>,
    /// Since when we have held the Lease without acting.
    lease_without_lock_since: Option<Instant>,
}

/// What the lock loop must do after a round, besides publishing `change`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockPlan {
    pub change: Change,
    /// Free the lock (it names us) no earlier than this instant: a stepped-down leader's
    /// writes were admitted only with time left before its hold ended, so none can still
    /// be sent after it.
    pub release_at: Option<Instant>,
    /// Give the Lease up: held for a whole lock lease without getting the lock.
    pub give_up_lease: bool,
}

impl LockState {
    pub fn new(t: Timings, lock_t: Timings) -> Self {
        LockState {
            t,
            lock_t,
            acting_until: None,
            lease_without_lock_since: None,
        }
    }

    pub fn acting(&self) -> bool {
        self.acting_until.is_some()
    }

    /// Which store call this round makes. `holds_lock`: the lock record names us.
    pub fn action(&self, lease: Lease, holds_lock: bool, now: Instant) -> LockAction {
        let lock_t = &self.lock_t;
        match lease {
            Lease::OtherHolds if self.acting() || holds_lock => LockAction::StepDown,
            Lease::OtherHolds => LockAction::Observe,
            Lease::Unknown => LockAction::Wait,
            Lease::Held | Lease::Unreachable => LockAction::Try {
                limit: self.acting_until.map_or(lock_t.renew_deadline, |u| {
                    u.saturating_duration_since(now).min(lock_t.renew_deadline)
                }),
            },
        }
    }

    /// Folds the round's outcome in. `round` is `Some` only after [`LockAction::Try`];
    /// `holder` is who the Lease loop saw holding the Lease; `now` is when the round ended.
    pub fn settle(
        &mut self,
        action: &LockAction,
        lease: Lease,
        holder: Option<&str>,
        started: Instant,
        round: Option<Round>,
        now: Instant,
    ) -> LockPlan {
        let (t, lock_t) = (self.t, self.lock_t);
        let mut change = Change::None;
        let mut release_at = None;
        match (action, round) {
            (LockAction::StepDown, _) => {
                // Our writes end by the hold's end at the latest; free the lock after that.
                release_at = Some(self.acting_until.map_or(now, |u| u.max(now)));
                self.acting_until = None;
                change = Change::SteppedDown(StepDown::LeaseHeldBy(holder.map(str::to_string)));
            }
            (LockAction::Try { .. }, Some(Round::Held)) => {
                let until = started + lock_t.renew_deadline;
                change = if self.acting() {
                    Change::Extended { until }
                } else {
                    Change::Became { until }
                };
                self.acting_until = Some(until);
            }
            (LockAction::Try { .. }, Some(Round::Lost)) if self.acting() => {
                // The lock names someone else while we act: stop now, not at the deadline.
                self.acting_until = None;
                change = Change::SteppedDown(StepDown::OtherHolder);
            }
            _ => {}
        }
        // Stop acting the moment the hold runs out, whatever else happened.
        if self.acting_until.is_some_and(|u| now >= u) {
            self.acting_until = None;
            change = Change::SteppedDown(StepDown::Deadline);
        }
        // A Lease holder that cannot get the lock gives the Lease up after a lock lease
        // plus a round, so a lock that is just about to expire is taken, not abandoned.
        let mut give_up_lease = false;
        if lease == Lease::Held && !self.acting() {
            let since = *self.lease_without_lock_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= lock_t.lease_duration + t.retry_period {
                give_up_lease = true;
                self.lease_without_lock_since = None;
            }
        } else {
            self.lease_without_lock_since = None;
        }
        LockPlan {
            change,
            release_at,
            give_up_lease,
        }
    }

    /// A voluntary handover: stop acting now. Returns when the lock may be freed: once the
    /// hold has run out, as after a step-down.
    pub fn hand_over(&mut self, now: Instant) -> Instant {
        let at = self.acting_until.map_or(now, |u| u.max(now));
        self.acting_until = None;
        at
    }

    /// How long the lock loop sleeps (a Lease change wakes it earlier): a leader renews
    /// every lock retry period and never sleeps past its hold; a contender polls at the
    /// Lease's pace and tries the moment the lock's holder runs out.
    pub fn pause(
        &self,
        jittered_lock_retry: Duration,
        now: Instant,
        other_expires_in: Option<Duration>,
    ) -> Duration {
        let (t, lock_t) = (&self.t, &self.lock_t);
        let mut pause = match self.acting_until {
            Some(u) => lock_t.retry_period.min(u.saturating_duration_since(now)),
            None => jittered_lock_retry.min(t.retry_period),
        };
        if let Some(e) = other_expires_in {
            pause = pause.min(e + Duration::from_millis(5));
        }
        pause
    }
}

#[cfg(test)]
mod tests;
