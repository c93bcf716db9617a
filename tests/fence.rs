//! The CiliumVTEPConfig fence against store resets (finding 4 of issue 10), on the real
//! kube-apiserver (and DynamoDB Local for the combined mode): the CR's term annotation
//! came from the Lease's `leaseTransitions` or the lock's `fence`, both of which restart
//! at 0 when their record is recreated, which used to fence every later leader out for
//! good. Each scenario asserts, from an admin-side record of every state the CR went
//! through, that a legitimate new leader takes the CR over within seconds, that the CR's
//! term never goes backwards, and that once a leader's write landed no earlier leader's
//! write lands after it. Needs root and the cached apiserver build.

#[path = "support/aws.rs"]
mod peers;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hybrid_gateway::aws::{sdk_config, SdkSettings};
use hybrid_gateway::datapath::Mac;
use hybrid_gateway::election::combined::{self, Combined};
use hybrid_gateway::election::dynamodb::DynamoDbLockStore;
use hybrid_gateway::election::lease::{self, LeaseLock};
use hybrid_gateway::election::{self as el, ElectionHandle, Elector, Timings};
use hybrid_gateway::k8s::vtep_config;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{DeleteParams, DynamicObject, ObjectMeta, PostParams};
use kube::Api;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use support::k8s::{client, ApiServer};

const NS: &str = "hybrid-gateway";
const LEASE: &str = "hybrid-gateway-leader";
const T: Timings = Timings {
    lease_duration: Duration::from_secs(3),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_secs(1),
};
/// How soon a legitimate new leader must own the CR: its election (at most a lease when
/// it must wait out the old holder) plus a few rounds of raising the term and writing.
const TAKEOVER: Duration = Duration::from_secs(8);

enum Contest {
    Lease(JoinHandle<Elector<LeaseLock>>),
    Combined(JoinHandle<Combined<LeaseLock, DynamoDbLockStore>>),
}

/// One gateway in-process: an election (Lease, or Lease + DynamoDB lock) and the real
/// CiliumVTEPConfig writer, with its own clients.
struct Gw {
    identity: String,
    ip: &'static str,
    handle: ElectionHandle,
    cancel: CancellationToken,
    contest: Contest,
    writer: JoinHandle<()>,
}

impl Gw {
    async fn start(
        server: &ApiServer,
        identity: &str,
        ip: &'static str,
        ddb: Option<(&aws_sdk_dynamodb::Client, &str)>,
    ) -> Gw {
        let kube = client(&server.daemon_kubeconfig()).await;
        let lease_el = Elector::new(
            LeaseLock::new(kube.clone(), NS, LEASE, Duration::from_secs(1)),
            identity.to_string(),
            T,
        );
        let (publisher, handle) = el::channel();
        let cancel = CancellationToken::new();
        let (wake, watch) = lease::watch_changes(kube.clone(), NS, LEASE, cancel.clone());
        let c = cancel.clone();
        let contest = match ddb {
            None => Contest::Lease(tokio::spawn(async move {
                let mut e = lease_el;
                el::run(&mut e, &publisher, Some(wake), c).await;
                watch.abort();
                e
            })),
            Some((client, table)) => {
                let lock = Elector::new(
                    DynamoDbLockStore::new(client.clone(), table, LEASE, Duration::from_secs(1)),
                    identity.to_string(),
                    T,
                );
                let mut both = Combined {
                    lease: lease_el,
                    lock,
                };
                Contest::Combined(tokio::spawn(async move {
                    combined::run(&mut both, &publisher, Some(wake), c).await;
                    watch.abort();
                    both
                }))
            }
        };
        let spec = vtep_config::VtepSpec::new(
            ip.parse().unwrap(),
            Mac::for_gateway(ip.parse().unwrap()),
            vec!["10.250.0.0/16".parse().unwrap()],
        );
        let writer = tokio::spawn(vtep_config::run(
            kube,
            spec,
            identity.to_string(),
            handle.clone(),
            Duration::from_millis(900),
            tokio::sync::watch::channel(None).0,
            cancel.clone(),
        ));
        Gw {
            identity: identity.to_string(),
            ip,
            handle,
            cancel,
            contest,
            writer,
        }
    }

    fn leads(&self) -> bool {
        self.handle.leadership.borrow().is_leader()
    }

    /// Process death: nothing released.
    fn crash(self) {
        match &self.contest {
            Contest::Lease(t) => t.abort(),
            Contest::Combined(t) => t.abort(),
        }
        self.writer.abort();
        self.cancel.cancel();
    }

    /// Graceful: standby, writer stopped, then the lock(s) released.
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.writer.await;
        match self.contest {
            Contest::Lease(t) => {
                let mut e = t.await.unwrap();
                e.release(jiff::Timestamp::now()).await.unwrap();
            }
            Contest::Combined(t) => {
                let mut both = t.await.unwrap();
                let (lock, lease) = both.release(Duration::from_secs(1)).await;
                lock.unwrap();
                lease.unwrap();
            }
        }
    }
}

/// Every distinct (leader, term, tunnel endpoint) the CR showed, sampled every 10 ms
/// from the admin side.
struct CrHistory {
    seen: Arc<Mutex<Vec<(String, u32, String)>>>,
    task: JoinHandle<()>,
}

impl CrHistory {
    fn start(api: Api<DynamicObject>) -> CrHistory {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(Some(o)) = api.get_opt(vtep_config::NAME).await {
                    let a = o.metadata.annotations.clone().unwrap_or_default();
                    let entry = (
                        a.get(vtep_config::LEADER_ANNOTATION)
                            .cloned()
                            .unwrap_or_default(),
                        a.get(vtep_config::TERM_ANNOTATION)
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(0),
                        o.data["spec"]["endpoints"][0]["tunnelEndpoint"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    );
                    let mut seen = s.lock().unwrap();
                    if seen.last() != Some(&entry) {
                        seen.push(entry);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        CrHistory { seen, task }
    }

    fn current(&self) -> Option<(String, u32, String)> {
        self.seen.lock().unwrap().last().cloned()
    }

    /// Waits until the CR names `g` (annotation and endpoint); returns how long it took.
    async fn until_names(&self, g: &Gw, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if let Some((leader, _, ip)) = self.current() {
                if leader == g.identity && ip == g.ip {
                    return start.elapsed();
                }
            }
            assert!(
                start.elapsed() < limit,
                "the CR never named {} within {limit:?}: history {:?}",
                g.identity,
                self.seen.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The CR's term never went down, and once another leader's write landed, no write
    /// of an earlier leader landed again.
    fn assert_monotonic(&self) {
        let seen = self.seen.lock().unwrap();
        for pair in seen.windows(2) {
            assert!(
                pair[1].1 >= pair[0].1,
                "the CR's term went backwards: {pair:?} in {seen:?}"
            );
        }
        let mut leaders: Vec<&str> = Vec::new();
        for (leader, _, _) in seen.iter() {
            if leaders.last() != Some(&leader.as_str()) {
                assert!(
                    !leaders.contains(&leader.as_str()),
                    "{leader} wrote again after a newer leader: {seen:?}"
                );
                leaders.push(leader);
            }
        }
    }
}

impl Drop for CrHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn lease_transitions(leases: &Api<Lease>) -> u32 {
    leases
        .get(LEASE)
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions
        .unwrap_or(0) as u32
}

/// A Lease with history, as a long-lived cluster has: transitions at 7, nobody holding.
async fn seed_lease(leases: &Api<Lease>) {
    let l = Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            lease_transitions: Some(7),
            ..LeaseSpec::default()
        }),
    };
    leases.create(&PostParams::default(), &l).await.unwrap();
}

/// `kubectl delete lease` after the leader died: the next leader's Lease starts again at
/// term 0, below the term on the CR. It must still take the CR over, within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_does_not_lock_the_next_leader_out() {
    let server = ApiServer::start();
    let admin = client(&server.admin_kubeconfig()).await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), NS);
    let crs: Api<DynamicObject> = Api::all_with(admin, &vtep_config::api_resource());
    seed_lease(&leases).await;
    let history = CrHistory::start(crs);

    let a = Gw::start(&server, "gw-a_1", "10.250.3.1", None).await;
    history.until_names(&a, TAKEOVER).await;
    assert_eq!(history.current().unwrap().1, 8);
    a.crash();
    leases
        .delete(LEASE, &DeleteParams::default())
        .await
        .unwrap();

    let b = Gw::start(&server, "gw-b_1", "10.250.3.2", None).await;
    let took = history.until_names(&b, TAKEOVER).await;
    println!(
        "new leader owned the CR {took:?} after it started; history {:?}",
        history.seen.lock().unwrap()
    );
    let (_, term, _) = history.current().unwrap();
    assert!(
        term > 8,
        "the CR's term must move above the old one, is {term}"
    );
    assert_eq!(
        lease_transitions(&leases).await,
        term,
        "the new Lease's term must have been raised to the CR's"
    );
    history.assert_monotonic();
    b.stop().await;
}

/// The Lease deleted under a *running* leader, and a new gateway starting right then: for
/// a moment both believe they lead. Whoever wins the recreated Lease must end up owning
/// the CR, and the CR must never go back to the other once the winner wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_deleted_under_a_running_leader_never_lets_the_loser_overwrite_the_winner() {
    let server = ApiServer::start();
    let admin = client(&server.admin_kubeconfig()).await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), NS);
    let crs: Api<DynamicObject> = Api::all_with(admin, &vtep_config::api_resource());
    seed_lease(&leases).await;
    let history = CrHistory::start(crs);

    for round in 0..3 {
        let a = Gw::start(&server, &format!("gw-a_{round}"), "10.250.3.1", None).await;
        history.until_names(&a, TAKEOVER).await;
        leases
            .delete(LEASE, &DeleteParams::default())
            .await
            .unwrap();
        let b = Gw::start(&server, &format!("gw-b_{round}"), "10.250.3.2", None).await;
        assert!(
            wait_for(TAKEOVER, || a.leads() != b.leads()).await,
            "round {round}: no single leader after the Lease was deleted"
        );
        // Let both settle, then whoever leads must own the CR.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let winner = if a.leads() { &a } else { &b };
        let took = history.until_names(winner, TAKEOVER).await;
        println!(
            "round {round}: {} leads and owns the CR ({took:?} after settling)",
            winner.identity
        );
        history.assert_monotonic();
        a.stop().await;
        b.stop().await;
    }
    println!("history {:?}", history.seen.lock().unwrap());
}

/// Combined mode: the lock item deleted (or expired by TTL), and a fleet switched from
/// Lease-only to combined and back. Each time the term's source restarts (lock fence 0,
/// or a Lease below the lock's fence), and each time the next leader takes the CR over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_item_deletion_and_mode_switches_do_not_lock_the_next_leader_out() {
    let server = ApiServer::start();
    let aws = peers::Peers::start();
    aws.export_sdk_env();
    let seed = aws.seed(&["--route-tables", "0", "--lock-table", "hgw-fence"]);
    let table = seed["lock_table"].as_str().unwrap().to_string();
    let ddb =
        aws_sdk_dynamodb::Client::new(&sdk_config("us-west-2", &SdkSettings::default()).await);
    let admin = client(&server.admin_kubeconfig()).await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), NS);
    let crs: Api<DynamicObject> = Api::all_with(admin, &vtep_config::api_resource());
    seed_lease(&leases).await;
    let history = CrHistory::start(crs);

    // Lease-only first: the CR gets the Lease's term (8).
    let a = Gw::start(&server, "gw-a_1", "10.250.3.1", None).await;
    history.until_names(&a, TAKEOVER).await;
    assert_eq!(history.current().unwrap().1, 8);
    a.stop().await;

    // Switched to combined: the lock item is new (fence 0).
    let b = Gw::start(&server, "gw-b_1", "10.250.3.2", Some((&ddb, &table))).await;
    let took = history.until_names(&b, TAKEOVER).await;
    println!("Lease-only -> combined: CR taken over in {took:?}");
    let after_switch = history.current().unwrap().1;
    assert!(after_switch > 8);
    b.crash();

    // The lock item deleted while nobody runs (TTL, table recreated): fence restarts.
    ddb.delete_item()
        .table_name(&table)
        .key(
            "lock_key",
            aws_sdk_dynamodb::types::AttributeValue::S(LEASE.into()),
        )
        .send()
        .await
        .unwrap();
    let c = Gw::start(&server, "gw-c_1", "10.250.3.3", Some((&ddb, &table))).await;
    let took = history.until_names(&c, TAKEOVER).await;
    println!("lock item deleted: CR taken over in {took:?}");
    assert!(history.current().unwrap().1 > after_switch);
    c.stop().await;

    // Back to Lease-only: the Lease's term is below the lock's fence on the CR.
    let d = Gw::start(&server, "gw-d_1", "10.250.3.4", None).await;
    let took = history.until_names(&d, TAKEOVER).await;
    println!("combined -> Lease-only: CR taken over in {took:?}");
    history.assert_monotonic();
    println!("history {:?}", history.seen.lock().unwrap());
    d.stop().await;
}
