//! Picking the one gateway that acts for all: a client-go-faithful elector over a lock
//! store (the Kubernetes Lease; optionally a DynamoDB lock), and the loop that publishes
//! "am I leader, since when, which term" for leader-only work to follow.

pub mod combined;
pub mod dynamodb;
pub mod elector;
mod handle;
pub mod lease;
pub mod record;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use elector::{Elector, Timings};
pub use handle::Term;
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
/// external write, checks [`ElectionHandle::remaining`] so no write can outlive the lease.
#[derive(Clone)]
pub struct ElectionHandle {
    pub leadership: watch::Receiver<Leadership>,
    deadline: watch::Receiver<Option<Instant>>,
}

impl ElectionHandle {
    /// Time left before this process must stop acting; zero when not leader.
    pub fn remaining(&self) -> Duration {
        match *self.deadline.borrow() {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::ZERO,
        }
    }
}

/// The publishing side, owned by [`run`].
pub struct ElectionPublisher {
    leadership: watch::Sender<Leadership>,
    deadline: watch::Sender<Option<Instant>>,
}

pub fn channel() -> (ElectionPublisher, ElectionHandle) {
    let (ltx, lrx) = watch::channel(Leadership::Standby { leader: None });
    let (dtx, drx) = watch::channel(None);
    (
        ElectionPublisher {
            leadership: ltx,
            deadline: dtx,
        },
        ElectionHandle {
            leadership: lrx,
            deadline: drx,
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

    fn leader(&self, since: Timestamp, term: u32, until: Instant) {
        self.deadline.send_replace(Some(until));
        self.leadership.send_if_modified(|cur| {
            if cur.is_leader() {
                return false;
            }
            *cur = Leadership::Leader { since, term };
            true
        });
    }

    fn extend(&self, until: Instant) {
        self.deadline.send_replace(Some(until));
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
pub async fn run<S: LockStore>(
    elector: &mut Elector<S>,
    publisher: &ElectionPublisher,
    wake: Option<Arc<Notify>>,
    cancel: CancellationToken,
) {
    let t = elector.timings();
    let store = elector.store().describe();
    let mut errors = ErrorLog { store, last: None };
    loop {
        // Standby: try to acquire, every jittered retry period or when woken.
        let acquired_at = loop {
            if cancel.is_cancelled() {
                publisher.standby(elector.observed_holder());
                return;
            }
            let started = Instant::now();
            match tokio::time::timeout(
                t.renew_deadline,
                elector.try_acquire_or_renew(started, Timestamp::now()),
            )
            .await
            {
                Ok(Ok(true)) => break started,
                Ok(Ok(false)) => publisher.standby(elector.observed_holder()),
                Ok(Err(e)) => errors.report(&e),
                Err(_) => errors.report(&LockError::Unreachable(format!(
                    "no answer within {:?}",
                    t.renew_deadline
                ))),
            }
            let woken = async {
                match &wake {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            let mut pause = jitter(t.retry_period);
            if let Some(expiry) = elector.other_lease_expires_in(Instant::now()) {
                // A few ms past the expiry we measured, so the attempt is not early.
                pause = pause.min(expiry + Duration::from_millis(5));
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = woken => {}
                _ = cancel.cancelled() => {}
            }
        };

        let term = elector.observed_term().unwrap_or(0);
        let mut valid_until = acquired_at + t.renew_deadline;
        publisher.leader(Timestamp::now(), term, valid_until);
        tracing::info!(identity = elector.identity(), term, "became leader");
        errors.last = None;

        // Leading: renew every retry period; stop acting when the renew deadline passes.
        let mut next = acquired_at + t.retry_period;
        let reason = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next.min(valid_until)) => {}
                _ = cancel.cancelled() => {
                    publisher.standby(Some(elector.identity()));
                    return;
                }
            }
            let started = Instant::now();
            if started >= valid_until {
                break format!(
                    "could not renew within the renew deadline ({:?})",
                    t.renew_deadline
                );
            }
            match tokio::time::timeout(
                valid_until - started,
                elector.try_acquire_or_renew(started, Timestamp::now()),
            )
            .await
            {
                Ok(Ok(true)) => {
                    valid_until = started + t.renew_deadline;
                    publisher.extend(valid_until);
                    next = started + t.retry_period;
                    errors.last = None;
                }
                Ok(Ok(false)) => {
                    break format!(
                        "the lock is now held by {}",
                        elector.observed_holder().unwrap_or("nobody")
                    )
                }
                Ok(Err(e)) => {
                    errors.report(&e);
                    next = Instant::now() + t.retry_period;
                }
                Err(_) => {
                    break format!(
                        "could not renew within the renew deadline ({:?})",
                        t.renew_deadline
                    )
                }
            }
        };
        publisher.standby(
            elector
                .observed_holder()
                .filter(|h| *h != elector.identity()),
        );
        tracing::warn!(
            identity = elector.identity(),
            term,
            "stepped down: {reason}; still forwarding, campaigning again"
        );
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
