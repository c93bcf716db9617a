//! Picking the one gateway that acts for all: a client-go-faithful elector over a lock
//! store (the Kubernetes Lease; optionally a DynamoDB lock), and the loop that publishes
//! "am I leader, since when, which term" for leader-only work to follow.

pub mod advisor;
pub mod combined;
pub mod decide;
pub mod dynamodb;
pub mod elector;
mod handle;
pub mod health;
pub mod lease;
pub mod record;
pub mod scores;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use advisor::{Advisor, Patience};
use decide::{Change, Hold, Next, Round};
pub use elector::{Elector, Timings};
pub use handle::Term;
use health::LeaderVerdict;
pub use record::{LeaderRecord, LockError, LockStore, Observed};

use crate::config::JITTER_FACTOR;

/// Leadership as leader-only work sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// Not acting. `leader` is the holder we last saw, if any.
    Standby { leader: Option<String> },
    /// Acting since `since`, in term `term` (the lock's transition count).
    Leader { since: Timestamp, term: u32 },
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader { .. })
    }
}

/// What the election publishes. Leader work waits on `leadership` and, before every
/// external write, re-reads [`ElectionHandle::current`] (term and time left) so no write
/// can outlive the lease or carry a term that is no longer ours.
#[derive(Clone)]
pub struct ElectionHandle {
    pub leadership: watch::Receiver<Leadership>,
    deadline: watch::Receiver<Option<Instant>>,
    terms: Arc<TermRequests>,
}

/// Leader work asking the election to move the store's term above one it saw elsewhere.
#[derive(Debug, Default)]
struct TermRequests {
    floor: AtomicU32,
    bell: Notify,
}

impl ElectionHandle {
    /// Time left before this process must stop acting; zero when not leader.
    pub fn remaining(&self) -> Duration {
        match *self.deadline.borrow() {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::ZERO,
        }
    }

    /// Leadership as of now: the term we act in and the time left, or `None` when not
    /// acting. Read it right before each write, never once per term of office: a
    /// Standby → Leader flap between two writes changes the term.
    pub fn current(&self) -> Option<(u32, Duration)> {
        // The publisher clears the deadline before it publishes Standby: time left read
        // first and a Leader read second belong to one term of office.
        let left = self.remaining();
        match &*self.leadership.borrow() {
            Leadership::Leader { term, .. } if !left.is_zero() => Some((*term, left)),
            _ => None,
        }
    }

    /// Asks the election to raise the store's term above `seen` (a term found on an
    /// object we fence with) at its next renewal, which it makes at once. Only the holder
    /// of the store's current version can do that, so a deposed leader asking gets
    /// nothing: its conditional write fails and it steps down.
    pub fn raise_term_above(&self, seen: u32) {
        self.terms
            .floor
            .fetch_max(seen.saturating_add(1), Ordering::SeqCst);
        self.terms.bell.notify_one();
    }
}

/// The publishing side, owned by [`run`].
pub struct ElectionPublisher {
    leadership: watch::Sender<Leadership>,
    deadline: watch::Sender<Option<Instant>>,
    terms: Arc<TermRequests>,
}

pub fn channel() -> (ElectionPublisher, ElectionHandle) {
    let (ltx, lrx) = watch::channel(Leadership::Standby { leader: None });
    let (dtx, drx) = watch::channel(None);
    let terms = Arc::new(TermRequests::default());
    (
        ElectionPublisher {
            leadership: ltx,
            deadline: dtx,
            terms: terms.clone(),
        },
        ElectionHandle {
            leadership: lrx,
            deadline: drx,
            terms,
        },
    )
}

impl ElectionPublisher {
    fn standby(&self, leader: Option<&str>) {
        // Deadline first: a writer checking `remaining()` must never see time left once
        // we decided to stop.
        self.deadline.send_replace(None);
        let next = Leadership::Standby {
            leader: leader.map(str::to_string),
        };
        self.leadership.send_if_modified(|cur| {
            let changed = *cur != next;
            *cur = next.clone();
            changed
        });
    }

    /// Acting until `until` in `term`. A term raised during office is published as such;
    /// `since` stays that of the office.
    fn leader(&self, since: Timestamp, term: u32, until: Instant) {
        if let Leadership::Leader { term: cur, .. } = &*self.leadership.borrow() {
            if *cur != term {
                // The old term's writers must not see time left under the new term's
                // deadline before they see the term change: clear, retitle, then extend.
                self.deadline.send_replace(None);
            }
        }
        self.leadership.send_if_modified(|cur| match cur {
            Leadership::Leader { term: t, .. } if *t == term => false,
            Leadership::Leader { term: t, .. } => {
                *t = term;
                true
            }
            Leadership::Standby { .. } => {
                *cur = Leadership::Leader { since, term };
                true
            }
        });
        self.deadline.send_replace(Some(until));
    }

    /// The lowest term leader work asked for (see [`ElectionHandle::raise_term_above`]).
    fn term_floor(&self) -> u32 {
        self.terms.floor.load(Ordering::SeqCst)
    }

    /// Resolves when leader work asks for a higher term.
    async fn term_requested(&self) {
        self.terms.bell.notified().await
    }
}

/// client-go's wait.Jitter: between `d` and `d × (1 + JITTER_FACTOR)`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 + fastrand::f64() * JITTER_FACTOR)
}

/// Campaigns until `cancel`, leading whenever the lock allows. Never gives up and never
/// ends the process: a lost lease means standby and campaigning again. Returns with leader
/// work told to stop (Standby published) but the lock *not* released: the caller releases
/// it once leader work has actually stopped. `wake` (e.g. a watch on the Lease) makes a
/// standby retry at once when the record changes, instead of at its next poll.
///
/// Only I/O and publishing here; every rule is in [`decide::solo`].
pub async fn run<S: LockStore>(
    elector: &mut Elector<S>,
    publisher: &ElectionPublisher,
    wake: Option<Arc<Notify>>,
    cancel: CancellationToken,
) {
    run_advised(elector, publisher, wake, None, cancel).await
}

/// [`run`], with leadership that yields to a healthier gateway when `health` is given
/// (issue 15): a leader clearly worse than a fresh peer for the hold-down hands over
/// ([`hand_over`]); a standby far below a peer does not campaign.
pub async fn run_advised<S: LockStore>(
    elector: &mut Elector<S>,
    publisher: &ElectionPublisher,
    wake: Option<Arc<Notify>>,
    mut health: Option<&mut Advisor>,
    cancel: CancellationToken,
) {
    let t = elector.timings();
    let mut errors = ErrorLog {
        store: elector.store().describe(),
        last: None,
    };
    let mut hold = Hold::Standby;
    // After a voluntary handover: no campaigning until then, the healthier peer goes first.
    let mut sit_out_until: Option<Instant> = None;
    let mut patience = Patience::default();
    loop {
        if cancel.is_cancelled() {
            publisher.standby(elector.observed_holder());
            return;
        }
        let started = Instant::now();
        let plan = match decide::round_limit(hold, started, &t) {
            None => decide::deadline_passed(),
            Some(limit) => {
                let campaign = hold != Hold::Standby
                    || health.as_deref().is_none_or(|h| {
                        may_campaign(elector, h, sit_out_until, &mut patience, started)
                    });
                let round = if campaign {
                    elector.raise_term(publisher.term_floor());
                    round(elector, limit, &mut errors).await
                } else {
                    observe(elector, limit, &mut errors).await
                };
                decide::solo(hold, started, Instant::now(), round, &t)
            }
        };
        hold = plan.hold;
        publish(elector, publisher, &plan.change, &mut errors);
        if let (Some(h), Hold::Leading { until }) = (health.as_deref_mut(), hold) {
            if let LeaderVerdict::HandOver { to, own, peer } = h.leader_round(Instant::now()) {
                if !hand_over(elector, publisher, until, &to, own, peer, &cancel).await {
                    return;
                }
                h.handed_over(&to, own, peer, Instant::now());
                hold = Hold::Standby;
                sit_out_until = Some(Instant::now() + t.lease_duration);
                continue;
            }
        } else if let Some(h) = health.as_deref_mut() {
            h.not_leading();
        }
        let pause = match plan.next {
            Next::At(at) => at.saturating_duration_since(Instant::now()),
            Next::Poll => decide::poll_pause(
                jitter(t.retry_period),
                elector.other_lease_expires_in(Instant::now()),
            ),
        };
        // A standby retries when the Lease changes; a leader renews at once when leader
        // work needs a higher term.
        let woken = async {
            match (&wake, hold) {
                (Some(n), Hold::Standby) => n.notified().await,
                (_, Hold::Leading { .. }) => publisher.term_requested().await,
                (None, Hold::Standby) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = woken => {}
            _ = cancel.cancelled() => {}
        }
    }
}

/// Whether this standby goes for the lock this round: not while sitting out after its own
/// handover, nor while a fresh peer is far healthier (the holder whose lease ran out by
/// our clock excepted: see [`advisor::HealthInputs::may_campaign`]) — for at most a lease
/// duration of a free lock ([`Patience`]).
fn may_campaign<S: LockStore>(
    elector: &Elector<S>,
    health: &Advisor,
    sit_out_until: Option<Instant>,
    patience: &mut Patience,
    now: Instant,
) -> bool {
    if sit_out_until.is_some_and(|u| now < u) {
        return false;
    }
    let expired = elector.other_lease_expires_in(now) == Some(Duration::ZERO);
    let expired_holder = elector.observed_holder().filter(|_| expired);
    let vetoed = !health.inputs().may_campaign(expired_holder, now);
    let free = elector.observed_holder().is_none() || expired;
    patience.campaign(vetoed, free, now, elector.timings().lease_duration)
}

/// A voluntary handover, the way a stop gives leadership up: Standby published first (no
/// write starts after it: every write asks for time left in this term), then the lock
/// released only once the hold has run out, so every write admitted before has finished
/// or passed its deadline (the rule of the leadership issue). `false`: cancelled while
/// waiting; the caller's stop path releases.
async fn hand_over<S: LockStore>(
    elector: &mut Elector<S>,
    publisher: &ElectionPublisher,
    until: Instant,
    to: &str,
    own: f64,
    peer: f64,
    cancel: &CancellationToken,
) -> bool {
    publisher.standby(None);
    tracing::warn!(
        identity = elector.identity(),
        to,
        "handing leadership over: tunnel health {:.0} % here against {:.0} % at {to} for the hold-down; releasing once this term's writes can no longer land",
        own * 100.0,
        peer * 100.0
    );
    tokio::select! {
        _ = tokio::time::sleep_until(until) => {}
        _ = cancel.cancelled() => return false,
    }
    let limit = elector.timings().renew_deadline;
    match tokio::time::timeout(limit, elector.release(Timestamp::now())).await {
        Ok(Ok(_)) => tracing::info!(identity = elector.identity(), "released the Lease for {to}"),
        Ok(Err(e)) => {
            tracing::warn!("could not release the Lease ({e}); {to} takes over when it expires")
        }
        Err(_) => tracing::warn!("releasing the Lease timed out; {to} takes over when it expires"),
    }
    true
}

/// A standby that may not campaign still reads the lock, so its expiry clock for the
/// holder keeps running.
async fn observe<S: LockStore>(
    elector: &mut Elector<S>,
    limit: Duration,
    errors: &mut ErrorLog,
) -> Round {
    match tokio::time::timeout(limit, elector.observe_only()).await {
        Ok(Ok(())) => Round::Lost,
        Ok(Err(e)) => {
            errors.report(&e);
            Round::Failed
        }
        Err(_) => Round::TimedOut,
    }
}

/// One try-acquire-or-renew within `limit`, errors logged.
async fn round<S: LockStore>(
    elector: &mut Elector<S>,
    limit: Duration,
    errors: &mut ErrorLog,
) -> Round {
    match tokio::time::timeout(limit, elector.try_acquire_or_renew(Timestamp::now())).await {
        Ok(Ok(true)) => Round::Held,
        Ok(Ok(false)) => Round::Lost,
        Ok(Err(e)) => {
            errors.report(&e);
            Round::Failed
        }
        Err(_) => {
            errors.report(&LockError::Unreachable(format!(
                "no answer within {limit:?}"
            )));
            Round::TimedOut
        }
    }
}

/// Publishes a decision of the Lease-only loop and logs it.
fn publish<S: LockStore>(
    elector: &Elector<S>,
    publisher: &ElectionPublisher,
    change: &Change,
    errors: &mut ErrorLog,
) {
    match change {
        Change::None => {
            if !elector.is_leader() {
                publisher.standby(elector.observed_holder());
            }
        }
        Change::Became { until } => {
            let term = elector.observed_term().unwrap_or(0);
            publisher.leader(Timestamp::now(), term, *until);
            tracing::info!(identity = elector.identity(), term, "became leader");
            errors.last = None;
        }
        Change::Extended { until } => {
            let term = elector.observed_term().unwrap_or(0);
            publisher.leader(Timestamp::now(), term, *until);
            errors.last = None;
        }
        Change::SteppedDown(why) => {
            publisher.standby(
                elector
                    .observed_holder()
                    .filter(|h| *h != elector.identity()),
            );
            tracing::warn!(
                identity = elector.identity(),
                term = elector.observed_term().unwrap_or(0),
                "stepped down: {why}; still forwarding, campaigning again"
            );
        }
    }
}

/// Logs an election error once, not once per retry, until it changes or clears.
struct ErrorLog {
    store: String,
    last: Option<String>,
}

impl ErrorLog {
    fn report(&mut self, e: &LockError) {
        let text = e.to_string();
        if self.last.as_deref() != Some(&text) {
            tracing::warn!(lock = %self.store, "leader election: {text}");
            self.last = Some(text);
        }
    }
}
