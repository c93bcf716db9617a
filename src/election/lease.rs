//! The `coordination.k8s.io/v1` Lease as a [`LockStore`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::Api;

use super::record::{LeaderRecord, LockError, LockStore, Observed};

pub struct LeaseLock {
    api: Api<Lease>,
    namespace: String,
    name: String,
    timeout: Duration,
    /// Metadata of the Lease as last seen, carried into replaces.
    kept: std::sync::Mutex<Option<Kept>>,
}

impl LeaseLock {
    pub fn new(client: kube::Client, namespace: &str, name: &str, timeout: Duration) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            timeout,
            kept: std::sync::Mutex::new(None),
        }
    }

    fn lease(&self, record: &LeaderRecord, resource_version: Option<String>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(record.holder.clone()),
                // Whole seconds on the wire; round up so observers never wait less than we mean.
                lease_duration_seconds: Some(record.lease_duration.as_secs_f64().ceil() as i32),
                acquire_time: record.acquire_time.map(MicroTime),
                renew_time: record.renew_time.map(MicroTime),
                lease_transitions: Some(record.transitions as i32),
                ..LeaseSpec::default()
            }),
        }
    }

    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = kube::Result<T>>,
    ) -> Result<T, LockError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(LockError::Unreachable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

impl LeaseLock {
    /// The record of a Lease just read or written; remembers its metadata for the next
    /// replace.
    fn observed(&self, lease: Lease) -> Result<Observed, LockError> {
        if let Ok(mut k) = self.kept.lock() {
            *k = Some(Kept {
                labels: lease.metadata.labels.clone(),
                annotations: lease.metadata.annotations.clone(),
                owner_references: lease.metadata.owner_references.clone(),
            });
        }
        observed(lease)
    }
}

/// What a Lease carries besides its spec that a replace must not drop.
#[derive(Debug, Clone, Default)]
struct Kept {
    labels: Option<std::collections::BTreeMap<String, String>>,
    annotations: Option<std::collections::BTreeMap<String, String>>,
    owner_references: Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
}

fn observed(lease: Lease) -> Result<Observed, LockError> {
    let version = lease
        .metadata
        .resource_version
        .ok_or_else(|| LockError::Store("the Lease has no resourceVersion".into()))?;
    let spec = lease.spec.unwrap_or_default();
    Ok(Observed {
        record: LeaderRecord {
            holder: spec.holder_identity.unwrap_or_default(),
            lease_duration: Duration::from_secs(
                spec.lease_duration_seconds.unwrap_or(0).max(0) as u64
            ),
            acquire_time: spec.acquire_time.map(|t| t.0),
            renew_time: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0).max(0) as u32,
        },
        version,
    })
}

/// 409 is the optimistic-concurrency answer; 5xx, 429 and transport errors are outages;
/// anything else (403 above all) is a setup problem worth a distinct message.
pub(crate) fn classify(e: kube::Error) -> LockError {
    match e {
        kube::Error::Api(s) if s.code == 409 => LockError::Conflict,
        kube::Error::Api(s) if s.code >= 500 || s.code == 429 => {
            LockError::Unreachable(format!("{} {}", s.code, s.message))
        }
        kube::Error::Api(s) => LockError::Store(format!("{} {}: {}", s.code, s.reason, s.message)),
        other => LockError::Unreachable(crate::telemetry::explain::explain(&other)),
    }
}

impl LockStore for LeaseLock {
    async fn get(&self) -> Result<Option<Observed>, LockError> {
        self.call(self.api.get_opt(&self.name))
            .await?
            .map(|l| self.observed(l))
            .transpose()
    }

    async fn create(&self, record: &LeaderRecord) -> Result<Observed, LockError> {
        let lease = self.lease(record, None);
        self.observed(
            self.call(self.api.create(&PostParams::default(), &lease))
                .await?,
        )
    }

    async fn update(
        &self,
        previous: &Observed,
        record: &LeaderRecord,
    ) -> Result<Observed, LockError> {
        let mut lease = self.lease(record, Some(previous.version.clone()));
        // A replace sends the whole object: carry the labels, annotations and owners the
        // Lease had when we last saw it, or they would be dropped. If they changed since,
        // the resourceVersion makes this a 409 and the next round reads them afresh.
        if let Some(kept) = self.kept.lock().ok().and_then(|k| k.clone()) {
            lease.metadata.labels = kept.labels;
            lease.metadata.annotations = kept.annotations;
            lease.metadata.owner_references = kept.owner_references;
        }
        let params = PostParams::default();
        let call = self.api.replace(&self.name, &params, &lease);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(lease)) => self.observed(lease),
            // Deleted since we read it: for us, as good as someone else having written.
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => Err(LockError::Conflict),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(LockError::Unreachable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    fn describe(&self) -> String {
        format!("Lease {}/{}", self.namespace, self.name)
    }
}

/// Watches the Lease and rings the returned bell on every change, so a standby sees a
/// release (or a renewal) as it happens rather than at its next poll.
pub fn watch_changes(
    client: kube::Client,
    namespace: &str,
    name: &str,
    cancel: CancellationToken,
) -> (Arc<Notify>, tokio::task::JoinHandle<()>) {
    let bell = Arc::new(Notify::new());
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(30);
    let b = bell.clone();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                ev = events.next() => match ev {
                    Some(Ok(_)) => b.notify_one(),
                    Some(Err(e)) => tracing::debug!("Lease watch: {e}"),
                    None => return,
                },
            }
        }
    });
    (bell, task)
}
