//! One shard's contender in per-AZ mode: the shard's Lease alone, or — with
//! `[election.dynamodb]` — the shard's Lease plus the shard's own DynamoDB lock item.
//!
//! Either way it is run by the very election active/standby runs ([`election::run`],
//! [`combined::run`]): there is no second implementation, so that mode's rules hold per
//! shard — with the lock, a gateway acts only while it holds the shard's lock item and
//! stops `renew_deadline` after its last renewal began; it tries for the lock only while
//! it holds the shard's Lease (or cannot reach Kubernetes); the term that fences the
//! shard's route and CiliumVTEPConfig writes is the lock item's.
//!
//! Keys: the default shard keeps `election.lease_name` and `election.dynamodb.key`; an AZ
//! shard uses `<lease_name>-<az>` and `<key>-<az>` ([`Shard::lease_name`],
//! [`Shard::lock_key`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::aws::shards::Shard;
use crate::config::DynamoDbLockConfig;
use crate::election::combined::{self, Combined};
use crate::election::dynamodb::DynamoDbLockStore;
use crate::election::{self, lease::LeaseLock, ElectionPublisher, Elector, LockError, Timings};

/// What every shard's contender is built from.
pub(super) struct ShardStores {
    pub kube: kube::Client,
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub timings: Timings,
    /// One lock store call.
    pub request_timeout: Duration,
    /// The lock table and the configured key (the default shard's), with its client.
    pub dynamodb: Option<(aws_sdk_dynamodb::Client, DynamoDbLockConfig)>,
}

/// Boxed: an elector is several hundred bytes, and sessions move them around.
pub(super) enum ShardElector {
    Lease(Box<Elector<LeaseLock>>),
    Combined(Box<Combined<LeaseLock, DynamoDbLockStore>>),
}

impl ShardElector {
    pub fn new(stores: &ShardStores, shard: &Shard) -> ShardElector {
        let lease = Elector::new(
            LeaseLock::new(
                stores.kube.clone(),
                &stores.namespace,
                &shard.lease_name(&stores.lease_name),
                stores.request_timeout,
            ),
            stores.identity.clone(),
            stores.timings,
        );
        match &stores.dynamodb {
            None => ShardElector::Lease(Box::new(lease)),
            Some((client, d)) => {
                // As active/standby builds it: the lock's own lease, the same other timings.
                let lock = Elector::new(
                    DynamoDbLockStore::new(
                        client.clone(),
                        &d.table,
                        shard.lock_key(&d.key),
                        stores.request_timeout,
                    ),
                    stores.identity.clone(),
                    Timings {
                        lease_duration: d.lease_duration,
                        ..stores.timings
                    },
                );
                ShardElector::Combined(Box::new(Combined { lease, lock }))
            }
        }
    }

    /// Campaigns until `cancel`; returns with Standby published and nothing released.
    pub async fn run(
        &mut self,
        publisher: &ElectionPublisher,
        wake: Option<Arc<Notify>>,
        cancel: CancellationToken,
    ) {
        match self {
            ShardElector::Lease(e) => election::run(e, publisher, wake, cancel).await,
            ShardElector::Combined(c) => combined::run(c, publisher, wake, cancel).await,
        }
    }

    /// Reads the shard's stores without trying to take them (a visitor not campaigning),
    /// so the expiry clocks run from the holder's last renewal of each; at most `limit`.
    pub async fn observe(&mut self, limit: Duration) {
        match self {
            ShardElector::Lease(e) => {
                let _ = tokio::time::timeout(limit, e.observe_only()).await;
            }
            ShardElector::Combined(c) => {
                let Combined { lease, lock } = &mut **c;
                let _ = tokio::join!(
                    tokio::time::timeout(limit, lease.observe_only()),
                    tokio::time::timeout(limit, lock.observe_only()),
                );
            }
        }
    }

    /// Who acts for the shard as last seen: the lock's holder with DynamoDB, else the
    /// Lease's.
    pub fn holder(&self) -> Option<&str> {
        match self {
            ShardElector::Lease(e) => e.observed_holder(),
            ShardElector::Combined(c) => c.lock.observed_holder(),
        }
    }

    /// Gives up what this gateway holds (the lock first: once it is free another gateway
    /// may act at once), each call within `limit`. Only after the leader work stopped.
    pub async fn release(&mut self, limit: Duration, shard: &Shard) {
        let say =
            |what: &str, r: Result<Result<bool, LockError>, tokio::time::error::Elapsed>| match r {
                Ok(Ok(true)) => tracing::info!(%shard, "released the shard's {what}"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%shard, "could not release the shard's {what} ({e}); it expires")
                }
                Err(_) => {
                    tracing::warn!(%shard, "releasing the shard's {what} timed out; it expires")
                }
            };
        match self {
            ShardElector::Lease(e) => say(
                "Lease",
                tokio::time::timeout(limit, e.release(jiff::Timestamp::now())).await,
            ),
            ShardElector::Combined(c) => {
                let (lock, lease) = c.release(limit).await;
                // `Combined::release` bounds each call itself.
                say("DynamoDB lock", Ok(lock));
                say("Lease", Ok(lease));
            }
        }
    }
}
