//! Where each gateway's tunnel health lives so the others can read it, with nothing but the
//! Kubernetes API the election already uses: one small Lease per gateway in the election's
//! namespace, `<lease_name>-health-<stable id>`, labelled [`LABEL`]` = <lease_name>`.
//!
//! - `holderIdentity` is the gateway's election identity, so a reader knows whose score is
//!   the Lease holder's;
//! - `renewTime` moves at every publication (every `publish_interval`): the heartbeat.
//!   Readers judge freshness by *their own* clock, from when they saw the record change,
//!   never by comparing the writer's timestamp with theirs;
//! - the annotation [`RATIO`] is the score (share of hybrid nodes whose tunnel answers);
//!   absent means no opinion (no probe round yet, probes off, or the gateway stopping).
//!
//! Only the Kubernetes Lease carries scores, also when the DynamoDB lock is in use: health
//! only ever moves leadership between gateways that can all reach the API (a voluntary
//! handover goes through the Lease), and a score in the lock item would change the item's
//! version under every renewal, or cost a second item's writes per gateway per second.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::health::PeerScore;
use super::lease::classify;
use super::LockError;
use crate::probe::health::Score;

/// Groups the score Leases of one election (value: the election Lease's name).
pub const LABEL: &str = "hybrid-gateway.io/health-of";
/// The score, a share from 0 to 1.
pub const RATIO: &str = "hybrid-gateway.io/tunnel-health-ratio";

/// The score Lease of the gateway whose stable identity (instance id, hostname or
/// `election.identity`) is `stable`: the same across restarts, so a restarted gateway
/// overwrites its own record instead of leaving one behind.
pub fn lease_name(election_lease: &str, stable: &str) -> String {
    let id: String = stable
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let id = id.trim_matches('-');
    let mut name = format!(
        "{election_lease}-health-{}",
        if id.is_empty() { "gateway" } else { id }
    );
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_string()
}

/// The label value for `election_lease` (label values are at most 63 characters).
pub fn label_value(election_lease: &str) -> String {
    let mut v = election_lease.to_string();
    v.truncate(63);
    v.trim_end_matches(['-', '.']).to_string()
}

/// This gateway's score Lease: the only writer of it.
pub struct ScoreLease {
    api: Api<Lease>,
    name: String,
    label: String,
    identity: String,
    timeout: Duration,
    /// The resourceVersion of our last write, presented on the next (a replace must carry
    /// one); `None`: read it first.
    version: Option<String>,
}

impl ScoreLease {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        election_lease: &str,
        stable: &str,
        identity: &str,
        timeout: Duration,
    ) -> Self {
        ScoreLease {
            api: Api::namespaced(client, namespace),
            name: lease_name(election_lease, stable),
            label: label_value(election_lease),
            identity: identity.to_string(),
            timeout,
            version: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lease(&self, ratio: Option<f64>, stale_after: Duration) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(BTreeMap::from([(LABEL.to_string(), self.label.clone())])),
                annotations: ratio
                    .map(|r| BTreeMap::from([(RATIO.to_string(), format!("{r:.4}"))])),
                resource_version: self.version.clone(),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                // For `kubectl get lease`: how long the score counts after this renewal.
                lease_duration_seconds: Some(stale_after.as_secs_f64().ceil() as i32),
                renew_time: Some(MicroTime(jiff::Timestamp::now())),
                ..LeaseSpec::default()
            }),
        }
    }

    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = kube::Result<T>>,
    ) -> Result<T, kube::Error> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(kube::Error::Service(
                format!("no answer within {:?}", self.timeout).into(),
            )),
        }
    }

    /// Publishes `ratio` (`None`: no opinion) with a fresh `renewTime`. One replace when we
    /// know the version; after a conflict or at the start, a read first (create if absent).
    pub async fn write(
        &mut self,
        ratio: Option<f64>,
        stale_after: Duration,
    ) -> Result<(), LockError> {
        if self.version.is_none() {
            self.version = match self.call(self.api.get_opt(&self.name)).await {
                Ok(Some(l)) => l.metadata.resource_version,
                Ok(None) => {
                    let mut fresh = self.lease(ratio, stale_after);
                    fresh.metadata.resource_version = None;
                    let made = self
                        .call(self.api.create(&PostParams::default(), &fresh))
                        .await
                        .map_err(classify)?;
                    self.version = made.metadata.resource_version;
                    return Ok(());
                }
                Err(e) => return Err(classify(e)),
            };
        }
        let lease = self.lease(ratio, stale_after);
        match self
            .call(self.api.replace(&self.name, &PostParams::default(), &lease))
            .await
        {
            Ok(l) => {
                self.version = l.metadata.resource_version;
                Ok(())
            }
            Err(e) => {
                // Someone edited or deleted it: read again next time.
                self.version = None;
                Err(classify(e))
            }
        }
    }
}

/// Publishes this gateway's score every `interval` until `cancel`, then once more without
/// a score so the others stop counting it at once (a stopping gateway's score must not
/// keep a standby from campaigning).
pub async fn publish(
    mut lease: ScoreLease,
    score: watch::Receiver<Option<Score>>,
    interval: Duration,
    stale_after: Duration,
    cancel: CancellationToken,
) {
    let mut last_error: Option<String> = None;
    loop {
        let ratio = score.borrow().and_then(|s| s.ratio());
        match lease.write(ratio, stale_after).await {
            Ok(()) => last_error = None,
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(&text) {
                    tracing::warn!(
                        lease = lease.name(),
                        "publishing the tunnel health score: {text}"
                    );
                    last_error = Some(text);
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    if let Err(e) = lease.write(None, stale_after).await {
        tracing::debug!("withdrawing the tunnel health score: {e}");
    }
}

/// One peer's record as this reader last saw it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    identity: String,
    ratio: Option<f64>,
    renew: Option<String>,
}

/// What the reader keeps per score Lease: the record, when it last changed by our clock,
/// and whether we have seen it change at all.
struct Tracked {
    seen: Seen,
    changed_at: Instant,
    /// A record seen only once may be a dead gateway's leftover: it counts from its first
    /// change (one publication later for a live peer).
    alive: bool,
}

fn seen(lease: &Lease) -> Option<(String, Seen)> {
    let name = lease.metadata.name.clone()?;
    let spec = lease.spec.as_ref()?;
    let ratio = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RATIO))
        .and_then(|r| r.parse::<f64>().ok())
        .filter(|r| (0.0..=1.0).contains(r));
    Some((
        name,
        Seen {
            identity: spec.holder_identity.clone().unwrap_or_default(),
            ratio,
            renew: spec.renew_time.as_ref().map(|t| t.0.to_string()),
        },
    ))
}

/// The other gateways' scores: every score Lease of this election but our own, as
/// [`PeerScore`]s for the rules (only records seen changing, with a score).
#[derive(Default)]
pub struct PeerBook {
    own: String,
    peers: BTreeMap<String, Tracked>,
}

impl PeerBook {
    pub fn new(own_lease: &str) -> Self {
        PeerBook {
            own: own_lease.to_string(),
            peers: BTreeMap::new(),
        }
    }

    /// Takes in a record read at `now`.
    pub fn saw(&mut self, lease: &Lease, now: Instant) {
        let Some((name, s)) = seen(lease) else {
            return;
        };
        if name == self.own {
            return;
        }
        match self.peers.get_mut(&name) {
            Some(t) if t.seen == s => {}
            Some(t) => {
                t.seen = s;
                t.changed_at = now;
                t.alive = true;
            }
            None => {
                self.peers.insert(
                    name,
                    Tracked {
                        seen: s,
                        changed_at: now,
                        alive: false,
                    },
                );
            }
        }
    }

    pub fn gone(&mut self, lease: &Lease) {
        if let Some(name) = &lease.metadata.name {
            self.peers.remove(name);
        }
    }

    pub fn scores(&self) -> Vec<PeerScore> {
        self.peers
            .values()
            .filter(|t| t.alive)
            .filter_map(|t| {
                Some(PeerScore {
                    identity: t.seen.identity.clone(),
                    ratio: t.seen.ratio?,
                    seen_changed_at: t.changed_at,
                })
            })
            .collect()
    }
}

/// Watches the score Leases of the election `election_lease` and publishes the peers'
/// scores (all but `own_lease`) after every change.
pub fn watch_peers(
    client: kube::Client,
    namespace: &str,
    election_lease: &str,
    own_lease: &str,
    cancel: CancellationToken,
) -> (watch::Receiver<Vec<PeerScore>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Vec::new());
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let config = watcher::Config::default()
        .labels(&format!("{LABEL}={}", label_value(election_lease)))
        .timeout(30);
    let own = own_lease.to_string();
    let task = tokio::spawn(async move {
        let mut book = PeerBook::new(&own);
        let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = events.next() => ev,
            };
            let now = Instant::now();
            match ev {
                Some(Ok(Event::Apply(l) | Event::InitApply(l))) => book.saw(&l, now),
                Some(Ok(Event::Delete(l))) => book.gone(&l),
                Some(Ok(Event::Init | Event::InitDone)) => {}
                Some(Err(e)) => tracing::debug!("health score watch: {e}"),
                None => return,
            }
            tx.send_replace(book.scores());
        }
    });
    (rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, holder: &str, ratio: Option<&str>, renew_s: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: ratio.map(|r| BTreeMap::from([(RATIO.to_string(), r.to_string())])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(
                    jiff::Timestamp::from_second(1_800_000_000 + renew_s).unwrap(),
                )),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn names_are_dns_subdomains_stable_per_host() {
        assert_eq!(
            lease_name("hybrid-gateway-leader", "i-0abc123"),
            "hybrid-gateway-leader-health-i-0abc123"
        );
        assert_eq!(
            lease_name("gw", "Host_Name.example"),
            "gw-health-host-name-example"
        );
        assert_eq!(lease_name("gw", "__"), "gw-health-gateway");
        assert!(lease_name(&"a".repeat(250), "x").len() <= 253);
        assert_eq!(
            label_value(&format!("{}-b", "a".repeat(62))),
            "a".repeat(62)
        );
    }

    #[test]
    fn a_peer_counts_from_its_first_change_and_never_ourselves() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut book = PeerBook::new("l-health-me");
        // A leftover of a dead gateway (listed once, never changing) does not count.
        book.saw(&lease("l-health-old", "old_1", Some("1.0"), 0), t0);
        book.saw(&lease("l-health-me", "me_1", Some("0.1"), 0), t0);
        book.saw(&lease("l-health-b", "b_1", Some("0.9"), 0), t0);
        assert!(book.scores().is_empty());
        // The same record again (a relist) is no change either.
        book.saw(&lease("l-health-b", "b_1", Some("0.9"), 0), t0 + s);
        assert!(book.scores().is_empty());
        book.saw(&lease("l-health-b", "b_1", Some("0.9"), 1), t0 + 2 * s);
        assert_eq!(
            book.scores(),
            vec![PeerScore {
                identity: "b_1".into(),
                ratio: 0.9,
                seen_changed_at: t0 + 2 * s
            }]
        );
        // Withdrawn (stopping) or nonsense: no opinion.
        book.saw(&lease("l-health-b", "b_1", None, 2), t0 + 3 * s);
        assert!(book.scores().is_empty());
        book.saw(&lease("l-health-b", "b_1", Some("7"), 3), t0 + 4 * s);
        assert!(book.scores().is_empty());
        book.saw(&lease("l-health-b", "b_2", Some("0.5"), 4), t0 + 5 * s);
        assert_eq!(book.scores().len(), 1);
        book.gone(&lease("l-health-b", "b_2", None, 0));
        assert!(book.scores().is_empty());
    }
}
