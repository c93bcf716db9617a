//! client-go's leader election, on any [`LockStore`].
//!
//! The rules that make it safe, copied from client-go on purpose:
//! - a contender judges a holder's lease by its *own* monotonic clock, counted from when it
//!   last saw the record change — never by the holder's `renewTime` (hosts' clocks differ);
//! - every write presents the version it read, so two contenders cannot both win;
//! - the leader stops acting `renew_deadline` after the start of its last successful renew,
//!   which is before anyone else may consider the lease expired (`lease_duration` after
//!   they saw that renew).

use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

use super::record::{LeaderRecord, LockError, LockStore, Observed};

/// The three timings of client-go's LeaderElectionConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// One contender: its identity, its store and what it last saw there.
pub struct Elector<S> {
    store: S,
    identity: String,
    timings: Timings,
    observed: Option<Observed>,
    /// Local monotonic time at which `observed` was first seen in its current version.
    observed_at: Option<Instant>,
    /// See [`Elector::raise_term`].
    term_floor: u32,
}

impl<S: LockStore> Elector<S> {
    pub fn new(store: S, identity: String, timings: Timings) -> Self {
        Elector {
            store,
            identity,
            timings,
            observed: None,
            observed_at: None,
            term_floor: 0,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// The holder of the record as last seen (empty when released).
    pub fn observed_holder(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .map(|o| o.record.holder.as_str())
            .filter(|h| !h.is_empty())
    }

    /// The term (transition count) of the record as last seen.
    pub fn observed_term(&self) -> Option<u32> {
        self.observed.as_ref().map(|o| o.record.transitions)
    }

    /// How long until the lease of another holder, as we observed it, runs out; `None` if
    /// nobody else holds it. Lets a standby try at the earliest moment instead of waiting
    /// for its next poll.
    pub fn other_lease_expires_in(&self, now: Instant) -> Option<Duration> {
        let o = self.observed.as_ref()?;
        if o.record.holder.is_empty() || o.record.holder == self.identity {
            return None;
        }
        Some((self.observed_at? + o.record.lease_duration).saturating_duration_since(now))
    }

    /// True if the last record we saw names us.
    pub fn is_leader(&self) -> bool {
        self.observed_holder() == Some(self.identity.as_str())
    }

    /// Takes in a record just read (or just written), stamped with the local time *now*,
    /// after the call returned — as client-go stamps `observedTime` after `Get`. A stamp
    /// taken before a slow read would start the expiry clock before a renewal the read
    /// may already show, and a standby could take over while the leader still acts.
    ///
    /// The clock restarts only when the record changes, not its version: an edit of a
    /// label on the Lease is no renewal (client-go compares the record too).
    fn observe(&mut self, observed: Observed) {
        let same = self
            .observed
            .as_ref()
            .is_some_and(|o| o.record == observed.record);
        if !same {
            self.observed_at = Some(Instant::now());
        }
        self.observed = Some(observed);
    }

    /// The lowest term the next write of ours may carry: see [`Elector::raise_term`].
    fn term_at_least(&self, t: u32) -> u32 {
        t.max(self.term_floor)
    }

    /// Makes every later acquisition or renewal write a term (transition count) of at
    /// least `floor`. The leader-only work asks for this when the object it fences with
    /// carries a term at least ours (the record was recreated, or the mode switched): the
    /// store's term then moves above it with a conditional write, which only the holder
    /// of the current version can make.
    pub fn raise_term(&mut self, floor: u32) {
        self.term_floor = self.term_floor.max(floor);
    }

    /// Whether the observed holder's lease is still running by our clock.
    fn lease_valid(&self, now: Instant) -> bool {
        match (&self.observed, self.observed_at) {
            (Some(o), Some(at)) => at + o.record.lease_duration > now,
            _ => false,
        }
    }

    fn record(&self, wall: Timestamp) -> LeaderRecord {
        LeaderRecord {
            holder: self.identity.clone(),
            lease_duration: self.timings.lease_duration,
            acquire_time: Some(wall),
            renew_time: Some(wall),
            transitions: 0,
        }
    }

    /// Reads the record without trying to take it, so a contender that may not compete
    /// yet still starts its expiry clock from the holder's last renewal.
    pub async fn observe_only(&mut self) -> Result<(), LockError> {
        if let Some(current) = self.store.get().await? {
            self.observe(current);
        }
        Ok(())
    }

    /// client-go's tryAcquireOrRenew: `Ok(true)` if we hold the lock after this call.
    pub async fn try_acquire_or_renew(&mut self, wall: Timestamp) -> Result<bool, LockError> {
        let mut desired = self.record(wall);

        // Fast path for the leader: write on top of what we last wrote, no read needed.
        // A conflict means someone else wrote (or the record is gone): do a full read.
        if self.is_leader() && self.lease_valid(Instant::now()) {
            if let Some(prev) = self.observed.clone() {
                desired.acquire_time = prev.record.acquire_time;
                desired.transitions = self.term_at_least(prev.record.transitions);
                match self.store.update(&prev, &desired).await {
                    Ok(o) => {
                        self.observe(o);
                        return Ok(true);
                    }
                    Err(LockError::Conflict) => {}
                    Err(e) => return Err(e),
                }
            }
        }

        let Some(current) = self.store.get().await? else {
            // The record is gone (deleted by hand, TTL, a new table). If we saw someone
            // else hold it and their lease is still running by our clock, they may still
            // act: wait for it to run out, as for a record that still named them.
            let other_may_act =
                self.observed.as_ref().is_some_and(|o| {
                    !o.record.holder.is_empty() && o.record.holder != self.identity
                }) && self.lease_valid(Instant::now());
            if other_may_act {
                return Ok(false);
            }
            desired.transitions = self.term_at_least(
                self.observed
                    .as_ref()
                    .map_or(0, |o| o.record.transitions.wrapping_add(1)),
            );
            return match self.store.create(&desired).await {
                Ok(o) => {
                    self.observe(o);
                    Ok(true)
                }
                // Someone created it between our read and write: they won this round.
                Err(LockError::Conflict) => Ok(false),
                Err(e) => Err(e),
            };
        };
        self.observe(current.clone());
        let held_by_other =
            !current.record.holder.is_empty() && current.record.holder != self.identity;
        if held_by_other && self.lease_valid(Instant::now()) {
            return Ok(false);
        }
        if current.record.holder == self.identity {
            desired.acquire_time = current.record.acquire_time;
            desired.transitions = self.term_at_least(current.record.transitions);
        } else {
            desired.transitions = self.term_at_least(current.record.transitions.wrapping_add(1));
        }
        match self.store.update(&current, &desired).await {
            Ok(o) => {
                self.observe(o);
                Ok(true)
            }
            Err(LockError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lock up so the next contender need not wait for expiry: an empty holder
    /// with a 1 s lease, transitions kept. Only call after leader work has stopped.
    ///
    /// A renewal that timed out may still have landed, leaving us a version behind: on a
    /// conflict, re-read once and release what still names us.
    pub async fn release(&mut self, wall: Timestamp) -> Result<bool, LockError> {
        if !self.is_leader() {
            return Ok(false);
        }
        let Some(prev) = self.observed.clone() else {
            return Ok(false);
        };
        let released = |prev: &Observed| LeaderRecord {
            holder: String::new(),
            lease_duration: Duration::from_secs(1),
            acquire_time: Some(wall),
            renew_time: Some(wall),
            transitions: prev.record.transitions,
        };
        let o = match self.store.update(&prev, &released(&prev)).await {
            Err(LockError::Conflict) => {
                let Some(current) = self.store.get().await? else {
                    return Ok(false);
                };
                if current.record.holder != self.identity {
                    self.observe(current);
                    return Ok(false);
                }
                self.store.update(&current, &released(&current)).await?
            }
            r => r?,
        };
        self.observe(o);
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
