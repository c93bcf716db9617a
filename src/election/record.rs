//! The leader record every lock store keeps, and the store interface the elector drives.
//! One shape for the Kubernetes Lease and the DynamoDB item, so one state machine serves both.

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;

/// What a lock store holds. Times are informational (for humans and `kubectl`): expiry is
/// always judged on the observer's own monotonic clock, never by comparing hosts' clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRecord {
    /// Empty when nobody holds the lock (never held, or released on shutdown).
    pub holder: String,
    pub lease_duration: Duration,
    pub acquire_time: Option<Timestamp>,
    pub renew_time: Option<Timestamp>,
    /// Bumped on every change of holder: the leadership term, usable as a fencing token.
    pub transitions: u32,
}

/// A record together with the store's version of it (resourceVersion, record version
/// number), which every update must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub record: LeaderRecord,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else wrote first (HTTP 409, ConditionalCheckFailed): re-read and decide again.
    #[error("the lock record changed underneath us")]
    Conflict,
    /// The store could not be reached or did not answer in time.
    #[error("lock store unreachable: {0}")]
    Unreachable(String),
    /// The store answered with an error that retrying will not fix by itself (e.g. RBAC).
    #[error("lock store error: {0}")]
    Store(String),
}

/// A place that holds one [`LeaderRecord`] with optimistic concurrency. Implementations put
/// their own timeout on every call.
pub trait LockStore: Send + Sync {
    /// The current record, or `None` when it does not exist yet.
    fn get(&self) -> impl Future<Output = Result<Option<Observed>, LockError>> + Send;
    /// Creates the record; [`LockError::Conflict`] if it already exists.
    fn create(
        &self,
        record: &LeaderRecord,
    ) -> impl Future<Output = Result<Observed, LockError>> + Send;
    /// Replaces the record only if it is still at `previous.version`;
    /// [`LockError::Conflict`] otherwise.
    fn update(
        &self,
        previous: &Observed,
        record: &LeaderRecord,
    ) -> impl Future<Output = Result<Observed, LockError>> + Send;
    /// For logs: e.g. `Lease hybrid-gateway/hybrid-gateway-leader`.
    fn describe(&self) -> String;
}
