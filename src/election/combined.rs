//! Election with two stores: the Kubernetes Lease decides who may *try*, the DynamoDB lock
//! decides who *acts*. Two independent stores cannot give both safety and availability
//! under partitions, so safety wins:
//!
//! - a gateway acts only while it holds the DynamoDB lock, and stops `renew_deadline`
//!   after its last successful renewal began — before anyone else may take it over;
//! - it may try for the DynamoDB lock only while it holds the Lease, or while the
//!   Kubernetes API is unreachable from it;
//! - if it can reach Kubernetes and sees another valid holder of the Lease, it steps down;
//! - it keeps renewing the Lease whenever it can, so `kubectl get lease` shows the truth;
//! - holding the Lease without obtaining the DynamoDB lock for one lease duration makes it
//!   release the Lease (and sit out one lease duration), so a gateway that can reach
//!   DynamoDB is never blocked by one that cannot.
//!
//! The Lease and the lock run in two loops so a hanging Kubernetes API can never delay a
//! lock renewal: the Lease loop publishes what it last learned, the lock loop reads it.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::advisor::{Advisor, HealthInputs, Patience};
use super::decide::{self, Change, Lease, LockAction, LockState};
use super::health::LeaderVerdict;
use super::{jitter, ElectionPublisher, Elector, ErrorLog, LockError, LockStore};

#[derive(Debug, Clone)]
struct LeaseView {
    lease: Lease,
    holder: Option<String>,
    at: Instant,
}

/// The two contenders of one gateway.
pub struct Combined<K, D> {
    pub lease: Elector<K>,
    pub lock: Elector<D>,
}

impl<K: LockStore, D: LockStore> Combined<K, D> {
    /// Releases both, lock first: once the lock is free another gateway may act at once.
    pub async fn release(
        &mut self,
        limit: Duration,
    ) -> (Result<bool, LockError>, Result<bool, LockError>) {
        let lock = tokio::time::timeout(limit, self.lock.release(Timestamp::now()))
            .await
            .unwrap_or_else(|_| Err(LockError::Unreachable("release timed out".into())));
        let lease = tokio::time::timeout(limit, self.lease.release(Timestamp::now()))
            .await
            .unwrap_or_else(|_| Err(LockError::Unreachable("release timed out".into())));
        (lock, lease)
    }
}

async fn lease_round<K: LockStore>(
    lease: &mut Elector<K>,
    limit: Duration,
    errors: &mut ErrorLog,
) -> Lease {
    match tokio::time::timeout(limit, lease.try_acquire_or_renew(Timestamp::now())).await {
        Ok(Ok(true)) => Lease::Held,
        Ok(Ok(false)) => Lease::OtherHolds,
        // An API that keeps answering with an error (RBAC) is reachable: it must not count
        // as a partition that lets us go for the lock alone.
        Ok(Err(e @ LockError::Store(_))) => {
            errors.report(&e);
            Lease::OtherHolds
        }
        Ok(Err(e)) => {
            errors.report(&e);
            Lease::Unreachable
        }
        Err(_) => Lease::Unreachable,
    }
}

/// A Lease contender that may not campaign (see [`HealthInputs::may_campaign`]) only reads
/// the Lease, so its expiry clock keeps running; it reports the Lease as not its own.
async fn lease_observe<K: LockStore>(
    lease: &mut Elector<K>,
    limit: Duration,
    errors: &mut ErrorLog,
) -> Lease {
    match tokio::time::timeout(limit, lease.observe_only()).await {
        Ok(Ok(())) | Ok(Err(LockError::Store(_))) => Lease::OtherHolds,
        Ok(Err(e)) => {
            errors.report(&e);
            Lease::Unreachable
        }
        Err(_) => Lease::Unreachable,
    }
}

/// Whether this gateway, not holding the Lease, may go for it: see
/// [`HealthInputs::may_campaign`] (a holder whose lease ran out is presumed dead), for at
/// most a lease duration of a free Lease ([`Patience`]).
fn may_campaign<K: LockStore>(
    lease: &Elector<K>,
    health: &HealthInputs,
    patience: &mut Patience,
    now: Instant,
) -> bool {
    if lease.is_leader() {
        return true;
    }
    let expired = lease.other_lease_expires_in(now) == Some(Duration::ZERO);
    let expired_holder = lease.observed_holder().filter(|_| expired);
    let vetoed = !health.may_campaign(expired_holder, now);
    let free = lease.observed_holder().is_none() || expired;
    patience.campaign(vetoed, free, now, lease.timings().lease_duration)
}

/// Keeps the Lease (acquire, renew, give up on request) and publishes what it learns.
/// `hand_over` is `give_up` for a voluntary handover (only the log differs).
#[allow(clippy::too_many_arguments)]
async fn lease_loop<K: LockStore>(
    lease: &mut Elector<K>,
    view: watch::Sender<LeaseView>,
    give_up: Arc<Notify>,
    hand_over: Arc<Notify>,
    health: Option<HealthInputs>,
    wake: Option<Arc<Notify>>,
    cancel: CancellationToken,
) {
    let t = lease.timings();
    let mut errors = ErrorLog {
        store: lease.store().describe(),
        last: None,
    };
    let mut cooldown_until: Option<Instant> = None;
    let mut patience = Patience::default();
    loop {
        let cooling = cooldown_until.is_some_and(|u| Instant::now() < u);
        let l = if cooling {
            Lease::OtherHolds
        } else if health
            .as_ref()
            .is_some_and(|h| !may_campaign(lease, h, &mut patience, Instant::now()))
        {
            lease_observe(lease, t.renew_deadline, &mut errors).await
        } else {
            lease_round(lease, t.renew_deadline, &mut errors).await
        };
        view.send_replace(LeaseView {
            lease: l,
            holder: lease.observed_holder().map(str::to_string),
            at: Instant::now(),
        });
        let mut pause = if l == Lease::Held {
            t.retry_period
        } else {
            jitter(t.retry_period)
        };
        if let Some(expiry) = lease.other_lease_expires_in(Instant::now()) {
            pause = pause.min(expiry + Duration::from_millis(5));
        }
        if let Some(u) = cooldown_until.filter(|_| cooling) {
            pause = pause.min(u.saturating_duration_since(Instant::now()));
        }
        // The watch is for a gateway that does not hold the Lease: it sees a release at
        // once. The holder must not listen: its own renewal rings the bell, which would
        // renew again at once, a write loop as fast as the API server answers (found by
        // the fault harness's record: a Lease write every 6 ms).
        let held = l == Lease::Held;
        let woken = async {
            match &wake {
                Some(n) if !held => n.notified().await,
                _ => std::future::pending().await,
            }
        };
        let voluntary = tokio::select! {
            _ = tokio::time::sleep(pause) => continue,
            _ = woken => continue,
            _ = give_up.notified() => false,
            _ = hand_over.notified() => true,
            _ = cancel.cancelled() => return,
        };
        // The lock loop must stop going for the lock before the Lease is gone.
        view.send_replace(LeaseView {
            lease: Lease::OtherHolds,
            holder: None,
            at: Instant::now(),
        });
        if voluntary {
            tracing::info!(
                identity = lease.identity(),
                "handed the DynamoDB lock over: releasing the Lease for the healthier gateway"
            );
        } else {
            tracing::warn!(
                identity = lease.identity(),
                "holding the Lease but not the DynamoDB lock for {:?}: releasing the Lease",
                t.lease_duration
            );
        }
        if let Ok(Err(e)) =
            tokio::time::timeout(t.renew_deadline, lease.release(Timestamp::now())).await
        {
            errors.report(&e);
        }
        cooldown_until = Some(Instant::now() + t.lease_duration);
    }
}

/// Campaigns until `cancel`. Returns with Standby published and nothing released: the
/// caller stops leader work, then calls [`Combined::release`].
pub async fn run<K: LockStore, D: LockStore>(
    c: &mut Combined<K, D>,
    publisher: &ElectionPublisher,
    wake: Option<Arc<Notify>>,
    cancel: CancellationToken,
) {
    run_advised(c, publisher, wake, None, cancel).await
}

/// [`run`], yielding to a healthier gateway when `health` is given: the lock holder hands
/// the lock over (released once its hold has run out), then the Lease; a gateway far below
/// a fresh peer does not go for the Lease.
pub async fn run_advised<K: LockStore, D: LockStore>(
    c: &mut Combined<K, D>,
    publisher: &ElectionPublisher,
    wake: Option<Arc<Notify>>,
    health: Option<&mut Advisor>,
    cancel: CancellationToken,
) {
    let t = c.lease.timings();
    let lock_t = c.lock.timings();
    let (view_tx, view_rx) = watch::channel(LeaseView {
        lease: Lease::Unknown,
        holder: None,
        at: Instant::now(),
    });
    let give_up = Arc::new(Notify::new());
    let hand_over = Arc::new(Notify::new());
    let lease_cancel = cancel.child_token();
    let Combined { lease, lock } = c;
    let lease_task = lease_loop(
        lease,
        view_tx,
        give_up.clone(),
        hand_over.clone(),
        health.as_ref().map(|h| h.inputs().clone()),
        wake,
        lease_cancel.clone(),
    );
    let bells = Bells { give_up, hand_over };
    let lock_task = lock_loop(lock, t, lock_t, publisher, view_rx, bells, health, cancel);
    tokio::join!(lease_task, async {
        lock_task.await;
        lease_cancel.cancel();
    });
}

/// How the lock loop asks the Lease loop to release the Lease.
struct Bells {
    /// Held the Lease a whole lock lease without the lock.
    give_up: Arc<Notify>,
    /// Handed the lock over to a healthier gateway.
    hand_over: Arc<Notify>,
}

/// The DynamoDB lock's side. Only I/O and publishing here; every rule is in
/// [`decide::LockState`].
#[allow(clippy::too_many_arguments)]
async fn lock_loop<D: LockStore>(
    lock: &mut Elector<D>,
    t: super::Timings,
    lock_t: super::Timings,
    publisher: &ElectionPublisher,
    mut view: watch::Receiver<LeaseView>,
    bells: Bells,
    mut health: Option<&mut Advisor>,
    cancel: CancellationToken,
) {
    let mut errors = ErrorLog {
        store: lock.store().describe(),
        last: None,
    };
    let mut state = LockState::new(t, lock_t);
    // After a voluntary handover the lock is not taken again (the Lease is still ours
    // for a moment) until the healthier gateway has had its turn.
    let mut sit_out_until: Option<Instant> = None;
    loop {
        if cancel.is_cancelled() {
            publisher.standby(lock.observed_holder());
            return;
        }
        let v = view.borrow_and_update().clone();
        let started = Instant::now();
        let lease = decide::judge_lease(v.lease, v.at, started, &t);
        let mut action = state.action(lease, lock.is_leader(), started);
        if matches!(action, LockAction::Try { .. })
            && !state.acting()
            && sit_out_until.is_some_and(|u| started < u)
        {
            action = LockAction::Observe;
        }
        let round = perform(lock, &action, lock_t, publisher, &mut errors).await;
        let plan = state.settle(
            &action,
            lease,
            v.holder.as_deref(),
            started,
            round,
            Instant::now(),
        );
        publish(lock, publisher, &plan.change, &action, &state, &v, lease);
        if matches!(plan.change, Change::Became { .. } | Change::Extended { .. }) {
            errors.last = None;
        }
        if let Some(at) = plan.release_at {
            if !release_at(lock, at, lock_t, &cancel, &mut errors).await {
                continue;
            }
        }
        if plan.give_up_lease {
            bells.give_up.notify_one();
        }
        match (health.as_deref_mut(), state.acting()) {
            (Some(h), true) => {
                if let LeaderVerdict::HandOver { to, own, peer } = h.leader_round(Instant::now()) {
                    publisher.standby(None);
                    tracing::warn!(
                        identity = lock.identity(),
                        to,
                        "handing leadership over: tunnel health {:.0} % here against {:.0} % at {to} for the hold-down; releasing the lock once this term's writes can no longer land",
                        own * 100.0,
                        peer * 100.0
                    );
                    let at = state.hand_over(Instant::now());
                    sit_out_until = Some(at + t.lease_duration);
                    if !release_at(lock, at, lock_t, &cancel, &mut errors).await {
                        continue;
                    }
                    bells.hand_over.notify_one();
                    h.handed_over(&to, own, peer, Instant::now());
                    continue;
                }
            }
            (Some(h), false) => h.not_leading(),
            (None, _) => {}
        }
        let pause = state.pause(
            jitter(lock_t.retry_period),
            Instant::now(),
            lock.other_lease_expires_in(Instant::now()),
        );
        let term_wanted = async {
            match state.acting() {
                true => publisher.term_requested().await,
                false => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            // A change of the Lease (e.g. we just got it, or lost it) is acted on at once.
            r = view.changed() => if r.is_err() { return },
            // Leader work needs a higher term: renew now.
            _ = term_wanted => {}
            _ = cancel.cancelled() => {}
        }
    }
}

/// The store I/O an action calls for: a round on the lock when trying, a read when
/// observing, nothing otherwise.
async fn perform<D: LockStore>(
    lock: &mut Elector<D>,
    action: &LockAction,
    lock_t: super::Timings,
    publisher: &ElectionPublisher,
    errors: &mut ErrorLog,
) -> Option<decide::Round> {
    match action {
        LockAction::Try { limit } => {
            lock.raise_term(publisher.term_floor());
            Some(super::round(lock, *limit, errors).await)
        }
        LockAction::Observe => {
            // Keep watching the lock: should this gateway get the Lease, its expiry
            // clock for the old holder's lock is already running.
            if let Ok(Err(e)) =
                tokio::time::timeout(lock_t.renew_deadline, lock.observe_only()).await
            {
                errors.report(&e);
            }
            None
        }
        LockAction::StepDown | LockAction::Wait => None,
    }
}

/// Publishes what a decision changed: leader until a new instant, or standby.
fn publish<D: LockStore>(
    lock: &Elector<D>,
    publisher: &ElectionPublisher,
    change: &Change,
    action: &LockAction,
    state: &LockState,
    view: &LeaseView,
    lease: Lease,
) {
    match change {
        Change::None => {
            if !state.acting() && !lock.is_leader() && matches!(action, LockAction::Try { .. }) {
                publisher.standby(lock.observed_holder());
            } else if *action == LockAction::Observe {
                publisher.standby(view.holder.as_deref());
            }
        }
        Change::Became { until } => {
            let term = lock.observed_term().unwrap_or(0);
            publisher.leader(Timestamp::now(), term, *until);
            tracing::info!(identity = lock.identity(), term, lease = ?lease, "became leader (holding the DynamoDB lock)");
        }
        Change::Extended { until } => {
            let term = lock.observed_term().unwrap_or(0);
            publisher.leader(Timestamp::now(), term, *until);
        }
        Change::SteppedDown(why) => {
            let holder = match why {
                decide::StepDown::LeaseHeldBy(h) => h.clone(),
                _ => lock
                    .observed_holder()
                    .filter(|h| *h != lock.identity())
                    .map(str::to_string),
            };
            publisher.standby(holder.as_deref());
            tracing::warn!(identity = lock.identity(), "stepped down: {why}");
        }
    }
}

/// Frees the lock for the Lease holder at `at`, once nothing of ours can still be sent,
/// rather than at its expiry. `false`: cancelled while waiting (nothing released; the
/// caller's shutdown path releases).
async fn release_at<D: LockStore>(
    lock: &mut Elector<D>,
    at: Instant,
    lock_t: super::Timings,
    cancel: &CancellationToken,
    errors: &mut ErrorLog,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(at) => {}
        _ = cancel.cancelled() => return false,
    }
    if let Ok(Err(e)) =
        tokio::time::timeout(lock_t.renew_deadline, lock.release(Timestamp::now())).await
    {
        errors.report(&e);
    }
    true
}
