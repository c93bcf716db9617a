//! Lease election between two contenders with separate clients, against a real
//! kube-apiserver, using the daemon's least-privilege identity. Needs root (for the
//! apiserver harness) and the cached apiserver build.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hybrid_gateway::election::{
    self, lease::LeaseLock, ElectionHandle, Elector, Leadership, Timings,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
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

struct Contender {
    handle: ElectionHandle,
    cancel: CancellationToken,
    task: JoinHandle<Elector<LeaseLock>>,
}

async fn contender(server: &ApiServer, name: &'static str) -> Contender {
    let kube = client(&server.daemon_kubeconfig()).await;
    let lock = LeaseLock::new(kube.clone(), NS, LEASE, Duration::from_secs(1));
    let mut elector = Elector::new(lock, format!("{name}_test"), T);
    let (publisher, handle) = election::channel();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    // As the daemon does: a watch on the Lease wakes the standby when it changes.
    let (wake, watch) = election::lease::watch_changes(kube, NS, LEASE, cancel.clone());
    let task = tokio::spawn(async move {
        election::run(&mut elector, &publisher, Some(wake), c).await;
        watch.abort();
        elector
    });
    Contender {
        handle,
        cancel,
        task,
    }
}

impl Contender {
    fn leads(&self) -> bool {
        self.handle.leadership.borrow().is_leader()
    }

    /// Graceful stop: standby, then release.
    async fn stop(self) {
        self.cancel.cancel();
        let mut e = self.task.await.unwrap();
        e.release(jiff::Timestamp::now()).await.unwrap();
    }

    /// Crash: the task dies, nothing is released.
    fn crash(self) {
        self.task.abort();
        self.cancel.cancel(); // stops the Lease watch too, as process death would
    }
}

/// Watches every contender's published state and records any instant at which two
/// claimed leadership at once.
fn overlap_monitor(
    handles: Vec<(&'static str, ElectionHandle)>,
) -> (Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let violations = Arc::new(Mutex::new(Vec::new()));
    let v = violations.clone();
    let task = tokio::spawn(async move {
        loop {
            let leaders: Vec<&str> = handles
                .iter()
                .filter(|(_, h)| {
                    h.leadership.borrow().is_leader() && h.remaining() > Duration::ZERO
                })
                .map(|(n, _)| *n)
                .collect();
            if leaders.len() > 1 {
                v.lock()
                    .unwrap()
                    .push(format!("{leaders:?} at {:?}", Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (violations, task)
}

async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

async fn lease(server: &ApiServer) -> Lease {
    let admin = client(&server.admin_kubeconfig()).await;
    kube::Api::<Lease>::namespaced(admin, NS)
        .get(LEASE)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_then_crash_and_graceful_takeovers() {
    let server = ApiServer::start();
    let a = contender(&server, "a").await;
    assert!(
        wait_for(Duration::from_secs(5), || a.leads())
            .await
            .is_some(),
        "a never led"
    );
    let b = contender(&server, "b").await;
    let (violations, monitor) =
        overlap_monitor(vec![("a", a.handle.clone()), ("b", b.handle.clone())]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.leads() && !b.leads(), "exactly one leader expected");
    assert_eq!(
        *b.handle.leadership.borrow(),
        Leadership::Standby {
            leader: Some("a_test".into())
        }
    );
    let l = lease(&server).await.spec.unwrap();
    assert_eq!(
        (l.holder_identity.as_deref(), l.lease_transitions),
        (Some("a_test"), Some(0))
    );

    // Crash: b takes over about one lease duration after it last saw a renew.
    a.crash();
    let took = wait_for(Duration::from_secs(10), || b.leads())
        .await
        .expect("b never took over after a crash");
    println!("takeover after crash: {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "took over before the lease could have expired: {took:?}"
    );
    assert!(
        took <= T.lease_duration + Duration::from_secs(1),
        "crash takeover slower than lease + 1 s: {took:?}"
    );
    assert_eq!(
        lease(&server).await.spec.unwrap().lease_transitions,
        Some(1)
    );

    // Graceful: a new contender waits; b stops and releases; c leads within a retry period.
    let c = contender(&server, "c").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!c.leads());
    let handles = c.handle.clone();
    let t0 = Instant::now();
    b.stop().await;
    let took = wait_for(Duration::from_secs(5), || {
        handles.leadership.borrow().is_leader()
    })
    .await
    .expect("c never took over");
    println!(
        "takeover after graceful stop: {:?} (release took {:?})",
        took,
        t0.elapsed() - took
    );
    assert!(
        took <= T.retry_period,
        "graceful takeover slower than one retry period: {took:?}"
    );
    assert_eq!(
        lease(&server).await.spec.unwrap().lease_transitions,
        Some(2)
    );
    c.stop().await;
    monitor.abort();
    assert!(
        violations.lock().unwrap().is_empty(),
        "two leaders at once: {:?}",
        violations.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outage_makes_the_leader_step_down_and_nobody_acts() {
    let server = ApiServer::start();
    let a = contender(&server, "a").await;
    assert!(wait_for(Duration::from_secs(5), || a.leads())
        .await
        .is_some());
    let b = contender(&server, "b").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (violations, monitor) =
        overlap_monitor(vec![("a", a.handle.clone()), ("b", b.handle.clone())]);

    server.pause();
    let stepped = wait_for(Duration::from_secs(5), || !a.leads())
        .await
        .expect("leader kept acting without the API");
    println!("leader stepped down {stepped:?} after the outage began");
    assert!(
        stepped <= T.renew_deadline + Duration::from_millis(300),
        "{stepped:?}"
    );
    // Longer than the renew deadline and the lease: nobody may act.
    for _ in 0..40 {
        assert!(!a.leads() && !b.leads(), "someone acted during the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.resume();
    let back = wait_for(Duration::from_secs(10), || a.leads() || b.leads())
        .await
        .expect("no leader after the API came back");
    println!("a leader again {back:?} after the API came back");
    monitor.abort();
    assert!(
        violations.lock().unwrap().is_empty(),
        "{:?}",
        violations.lock().unwrap()
    );
    a.crash();
    b.crash();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_edited_to_another_holder_makes_the_leader_step_down() {
    let server = ApiServer::start();
    let a = contender(&server, "a").await;
    assert!(wait_for(Duration::from_secs(5), || a.leads())
        .await
        .is_some());
    let admin = client(&server.admin_kubeconfig()).await;
    let api = kube::Api::<Lease>::namespaced(admin, NS);
    let patch = serde_json::json!({"spec": {"holderIdentity": "operator-override"}});
    api.patch(LEASE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let stepped = wait_for(Duration::from_secs(4), || !a.leads())
        .await
        .expect("leader ignored the hand edit");
    assert!(stepped <= T.retry_period.mul_f64(1.5), "{stepped:?}");
    assert_eq!(
        *a.handle.leadership.borrow(),
        Leadership::Standby {
            leader: Some("operator-override".into())
        }
    );
    // It keeps campaigning and gets the lease back once the foreign holder's lease expires.
    let back = wait_for(Duration::from_secs(8), || a.leads())
        .await
        .expect("never competed again");
    assert!(
        back >= Duration::from_secs(2),
        "took a valid foreign lease: {back:?}"
    );
    a.crash();
}
