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
}

impl<S: LockStore> Elector<S> {
    pub fn new(store: S, identity: String, timings: Timings) -> Self {
        Elector {
            store,
            identity,
            timings,
            observed: None,
            observed_at: None,
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

    fn observe(&mut self, observed: Observed, now: Instant) {
        if self.observed.as_ref() != Some(&observed) {
            self.observed = Some(observed);
            self.observed_at = Some(now);
        }
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
    pub async fn observe_only(&mut self, now: Instant) -> Result<(), LockError> {
        if let Some(current) = self.store.get().await? {
            self.observe(current, now);
        }
        Ok(())
    }

    /// client-go's tryAcquireOrRenew: `Ok(true)` if we hold the lock after this call.
    /// `now` is the local monotonic time *before* the call started.
    pub async fn try_acquire_or_renew(
        &mut self,
        now: Instant,
        wall: Timestamp,
    ) -> Result<bool, LockError> {
        let mut desired = self.record(wall);

        // Fast path for the leader: write on top of what we last wrote, no read needed.
        // A conflict means someone else wrote: fall through to a full read.
        if self.is_leader() && self.lease_valid(now) {
            if let Some(prev) = self.observed.clone() {
                desired.acquire_time = prev.record.acquire_time;
                desired.transitions = prev.record.transitions;
                match self.store.update(&prev, &desired).await {
                    Ok(o) => {
                        self.observe(o, now);
                        return Ok(true);
                    }
                    Err(LockError::Conflict) => {}
                    Err(e) => return Err(e),
                }
            }
        }

        let Some(current) = self.store.get().await? else {
            return match self.store.create(&desired).await {
                Ok(o) => {
                    self.observe(o, now);
                    Ok(true)
                }
                // Someone created it between our read and write: they won this round.
                Err(LockError::Conflict) => Ok(false),
                Err(e) => Err(e),
            };
        };
        self.observe(current.clone(), now);
        let held_by_other =
            !current.record.holder.is_empty() && current.record.holder != self.identity;
        if held_by_other && self.lease_valid(now) {
            return Ok(false);
        }
        if current.record.holder == self.identity {
            desired.acquire_time = current.record.acquire_time;
            desired.transitions = current.record.transitions;
        } else {
            desired.transitions = current.record.transitions.wrapping_add(1);
        }
        match self.store.update(&current, &desired).await {
            Ok(o) => {
                self.observe(o, now);
                Ok(true)
            }
            Err(LockError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lock up so the next contender need not wait for expiry: an empty holder
    /// with a 1 s lease, transitions kept. Only call after leader work has stopped.
    pub async fn release(&mut self, wall: Timestamp) -> Result<bool, LockError> {
        if !self.is_leader() {
            return Ok(false);
        }
        let Some(prev) = self.observed.clone() else {
            return Ok(false);
        };
        let record = LeaderRecord {
            holder: String::new(),
            lease_duration: Duration::from_secs(1),
            acquire_time: Some(wall),
            renew_time: Some(wall),
            transitions: prev.record.transitions,
        };
        let o = self.store.update(&prev, &record).await?;
        self.observe(o, Instant::now());
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
