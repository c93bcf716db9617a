//! The combined election (Kubernetes Lease + DynamoDB lock) under partitions: two gateways,
//! each reaching the real kube-apiserver and the real DynamoDB Local through its own
//! cuttable proxy, driven through every combination of {Kubernetes, DynamoDB} ×
//! {reachable, unreachable} per gateway, with crashes in between. Asserts that at no
//! instant two gateways act, and that a leader exists whenever a live gateway can reach
//! DynamoDB. "Acting" is sampled twice: from each gateway's published leadership, and
//! from what arrived at the peers — each gateway runs the real CiliumVTEPConfig writer,
//! and its proxies record every lock write and CR write with its sender, on which the
//! no-write-after-deposition invariant of tests/faults.rs is asserted.
//! Needs root and the cached apiserver build.

#[path = "support/aws.rs"]
mod peers;
#[path = "support/record.rs"]
mod record;
#[path = "support/recorder.rs"]
mod recorder;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hybrid_gateway::aws::{sdk_config, SdkSettings};
use hybrid_gateway::election::combined::{self, Combined};
use hybrid_gateway::election::dynamodb::DynamoDbLockStore;
use hybrid_gateway::election::lease::{self, LeaseLock};
use hybrid_gateway::election::{self as el, ElectionHandle, Elector, Timings};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use hybrid_gateway::datapath::Mac;
use hybrid_gateway::k8s::vtep_config;
use recorder::{Peer, Recorder, RecordingProxy as CutProxy};
use support::k8s::ApiServer;

const T: Timings = Timings {
    lease_duration: Duration::from_secs(1),
    renew_deadline: Duration::from_millis(600),
    retry_period: Duration::from_millis(250),
};
/// Enough for the slowest legal path to a new leader: a Lease holder that cannot reach
/// DynamoDB gives the Lease up after one lease, the other takes it, then waits out the
/// old lock's lease as it observed it.
const SETTLE: Duration = Duration::from_secs(6);

type Gw = Combined<LeaseLock, DynamoDbLockStore>;
/// Who the overlap monitor watches: name, published leadership, process alive.
type Watched = Arc<Mutex<Vec<(&'static str, ElectionHandle, bool)>>>;

struct Gateway {
    name: &'static str,
    k8s: CutProxy,
    ddb: CutProxy,
    handle: ElectionHandle,
    cancel: CancellationToken,
    task: Option<JoinHandle<Gw>>,
    writer: JoinHandle<()>,
}

impl Gateway {
    fn acting(&self) -> bool {
        self.task.is_some()
            && self.handle.leadership.borrow().is_leader()
            && self.handle.remaining() > Duration::ZERO
    }
}

struct World {
    server: ApiServer,
    table: String,
    apiserver: std::net::SocketAddr,
    dynamodb: std::net::SocketAddr,
    generation: u32,
    recorder: Arc<Recorder>,
}

impl World {
    /// A gateway's recording proxies to the API server (TLS both ways) and DynamoDB.
    fn proxies(&self, name: &str) -> (CutProxy, CutProxy) {
        let pki = self.server.dir.join("pki");
        let r = || self.recorder.clone();
        (
            CutProxy::start(name, Peer::Kube, self.apiserver, None, Some(&pki), r()),
            CutProxy::start(name, Peer::Dynamo, self.dynamodb, None, None, r()),
        )
    }
}

async fn gateway(w: &mut World, name: &'static str, k8s: CutProxy, ddb: CutProxy) -> Gateway {
    w.generation += 1;
    let identity = format!("{name}_{}", w.generation);
    let kc = kube::config::Kubeconfig::read_from(w.server.daemon_kubeconfig()).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.cluster_url = format!("https://{}", k8s.addr).parse().unwrap();
    cfg.connect_timeout = Some(Duration::from_millis(300));
    cfg.read_timeout = Some(Duration::from_secs(40));
    let kube = kube::Client::try_from(cfg).unwrap();
    let (writer_kube, writer_identity) = (kube.clone(), identity.clone());
    let sdk = sdk_config("us-west-2", &SdkSettings::default()).await;
    let ddb_conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .endpoint_url(format!("http://{}", ddb.addr))
        .build();
    let ddb_client = aws_sdk_dynamodb::Client::from_conf(ddb_conf);
    let mut c = Combined {
        lease: Elector::new(
            LeaseLock::new(
                kube.clone(),
                "hybrid-gateway",
                "hybrid-gateway-leader",
                Duration::from_millis(400),
            ),
            identity.clone(),
            T,
        ),
        lock: Elector::new(
            DynamoDbLockStore::new(
                ddb_client,
                &w.table,
                "hybrid-gateway-leader",
                Duration::from_millis(400),
            ),
            identity,
            T,
        ),
    };
    let (publisher, handle) = el::channel();
    let cancel = CancellationToken::new();
    let (wake, watch) = lease::watch_changes(
        kube,
        "hybrid-gateway",
        "hybrid-gateway-leader",
        cancel.clone(),
    );
    let cc = cancel.clone();
    let task = tokio::spawn(async move {
        combined::run(&mut c, &publisher, Some(wake), cc).await;
        watch.abort();
        c
    });
    // The real CR writer: what it sends while it believes it leads is in the record.
    let ip = if name == "A" {
        "10.250.1.4"
    } else {
        "10.250.2.4"
    };
    let spec = vtep_config::VtepSpec::new(
        ip.parse().unwrap(),
        Mac::for_gateway(ip.parse().unwrap()),
        vec!["10.250.0.0/16".parse().unwrap()],
    );
    let writer = tokio::spawn(vtep_config::run(
        writer_kube,
        spec,
        writer_identity,
        handle.clone(),
        Duration::from_millis(300),
        tokio::sync::watch::channel(None).0,
        cancel.clone(),
    ));
    Gateway {
        name,
        k8s,
        ddb,
        handle,
        cancel,
        task: Some(task),
        writer,
    }
}

/// Kills a gateway without releasing anything, and starts a fresh process in its place.
async fn crash_and_restart(w: &mut World, g: Gateway) -> Gateway {
    if let Some(t) = &g.task {
        t.abort();
    }
    g.writer.abort();
    g.cancel.cancel();
    let (k8s, ddb, name) = (g.k8s, g.ddb, g.name);
    gateway(w, name, k8s, ddb).await
}

fn leaders(gws: &[&Gateway]) -> Vec<&'static str> {
    gws.iter().filter(|g| g.acting()).map(|g| g.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_two_leaders_under_any_partition_and_a_leader_whenever_dynamodb_is_reachable() {
    let server = ApiServer::start();
    let aws = peers::Peers::start();
    aws.export_sdk_env();
    let seed = aws.seed(&["--route-tables", "0", "--lock-table", "hgw-partition"]);
    let table = seed["lock_table"].as_str().unwrap().to_string();
    let apiserver: std::net::SocketAddr = format!("127.0.0.1:{}", server.env["K8S_API_PORT"])
        .parse()
        .unwrap();
    let dynamodb: std::net::SocketAddr = aws
        .var("AWS_ENDPOINT_URL_DYNAMODB")
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let mut w = World {
        server,
        table,
        apiserver,
        dynamodb,
        generation: 0,
        recorder: Recorder::new(),
    };

    let mut a = {
        let (k, d) = w.proxies("A");
        gateway(&mut w, "A", k, d).await
    };
    let mut b = {
        let (k, d) = w.proxies("B");
        gateway(&mut w, "B", k, d).await
    };

    // Sample who acts every 5 ms for the whole test.
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let shared: Watched = Arc::new(Mutex::new(Vec::new()));
    let refresh = |shared: &Watched, a: &Gateway, b: &Gateway| {
        *shared.lock().unwrap() = vec![
            (a.name, a.handle.clone(), a.task.is_some()),
            (b.name, b.handle.clone(), b.task.is_some()),
        ];
    };
    refresh(&shared, &a, &b);
    let monitor = {
        let (shared, violations) = (shared.clone(), violations.clone());
        tokio::spawn(async move {
            loop {
                let acting: Vec<&str> = shared
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, h, alive)| {
                        *alive
                            && h.leadership.borrow().is_leader()
                            && h.remaining() > Duration::ZERO
                    })
                    .map(|(n, _, _)| *n)
                    .collect();
                if acting.len() > 1 {
                    violations
                        .lock()
                        .unwrap()
                        .push(format!("{acting:?} both acting at {:?}", Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let mut results = Vec::new();
    for combo in 0u8..16 {
        let (a_k8s, a_ddb, b_k8s, b_ddb) = (
            combo & 8 == 0,
            combo & 4 == 0,
            combo & 2 == 0,
            combo & 1 == 0,
        );
        // Crash whoever leads every fourth step, and start it again.
        if combo % 4 == 3 {
            if a.acting() {
                a = crash_and_restart(&mut w, a).await;
            } else if b.acting() {
                b = crash_and_restart(&mut w, b).await;
            }
            refresh(&shared, &a, &b);
        }
        a.k8s.set_cut(!a_k8s);
        a.ddb.set_cut(!a_ddb);
        b.k8s.set_cut(!b_k8s);
        b.ddb.set_cut(!b_ddb);
        let someone_can = a_ddb || b_ddb;
        let start = Instant::now();
        let mut got = None;
        while start.elapsed() < SETTLE {
            let l = leaders(&[&a, &b]);
            if someone_can && l.len() == 1 && got.is_none() {
                got = Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let at_end = leaders(&[&a, &b]);
        let line = format!(
            "A(k8s {}, ddb {}) B(k8s {}, ddb {}): leader at end {:?}, first single leader after {:?}",
            up(a_k8s),
            up(a_ddb),
            up(b_k8s),
            up(b_ddb),
            at_end,
            got
        );
        println!("{line}");
        if someone_can && at_end.len() != 1 {
            w.recorder
                .dump(&std::env::temp_dir().join("hgw-partition.record"));
        }
        if someone_can {
            assert_eq!(
                at_end.len(),
                1,
                "no leader although a gateway reaches DynamoDB: {line}"
            );
        } else {
            assert!(
                at_end.is_empty(),
                "a gateway acts without reaching DynamoDB: {line}"
            );
        }
        results.push(line);
    }
    monitor.abort();
    let v = violations.lock().unwrap().clone();
    assert!(
        v.is_empty(),
        "two gateways acted at once: {v:?}\n{}",
        results.join("\n")
    );
    for g in [a, b] {
        g.cancel.cancel();
        g.writer.abort();
        if let Some(t) = g.task {
            t.abort();
        }
    }
    // Acting as the peers saw it: every CR write came from the lock holder of its time.
    let events = w.recorder.events();
    let acquisitions = record::acquisitions(&events, &record::Kind::LockWrite);
    let cr_writes = events.iter().filter(|e| e.kind.is_effect()).count();
    println!(
        "record: {} lock acquisitions, {cr_writes} CR writes; {}",
        acquisitions.len(),
        record::summary(&events)
    );
    assert!(
        cr_writes >= 2 && acquisitions.len() >= 2,
        "the record shows too little to judge: {}",
        record::summary(&events)
    );
    // Renewals at the renewal rate (retry period 250 ms: four a second), not in a loop.
    let secs = w.recorder.now().as_secs_f64();
    for g in ["A", "B"] {
        for kind in [record::Kind::LeaseWrite, record::Kind::LockWrite] {
            let n = events
                .iter()
                .filter(|e| e.gw == g && e.kind == kind)
                .count();
            assert!(
                n as f64 <= 12.0 * secs,
                "{g} made {n} {kind:?}s in {secs:.0} s: an election write loop"
            );
        }
    }
    let v = record::violations(&events, &record::Kind::LockWrite);
    assert!(
        v.is_empty(),
        "a write from a deposed lock holder reached the API server:\n{}\n{}",
        v.join("\n"),
        results.join("\n")
    );
}

fn up(b: bool) -> &'static str {
    if b {
        "up"
    } else {
        "cut"
    }
}
