//! Interop with client-go: the Go reference gateway elects with client-go's
//! `tools/leaderelection` on the same `coordination.k8s.io/v1` Lease, so during a
//! migration both fleets meet on one Lease. A client-go elector (built from the vendored
//! client-go of the apiserver source tree: `tests/k8s/clientgo.sh`) and the daemon's
//! elector compete on the real kube-apiserver: never both leading, and graceful and crash
//! handovers both ways. Needs root and the cached apiserver build.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hybrid_gateway::datapath::Mac;
use hybrid_gateway::election::{self, lease::LeaseLock, ElectionHandle, Elector, Timings};
use hybrid_gateway::k8s::vtep_config;
use kube::api::{DynamicObject, PostParams};
use kube::Api;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use support::k8s::{client, ApiServer};

const NS: &str = "hybrid-gateway";
const LEASE: &str = "hybrid-gateway-leader";
const T: Timings = Timings {
    lease_duration: Duration::from_secs(3),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_secs(1),
};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Leading intervals (wall-clock seconds) per contender; an open interval ends at +inf.
#[derive(Default)]
struct Timeline {
    intervals: Vec<(String, f64, Option<f64>)>,
}

impl Timeline {
    fn start(&mut self, who: &str, at: f64) {
        self.intervals.push((who.to_string(), at, None));
    }
    fn stop(&mut self, who: &str, at: f64) {
        if let Some(i) = self
            .intervals
            .iter_mut()
            .rev()
            .find(|(w, _, end)| w == who && end.is_none())
        {
            i.2 = Some(at);
        }
    }
    fn leading(&self, who: &str) -> bool {
        self.intervals
            .iter()
            .any(|(w, _, end)| w == who && end.is_none())
    }
    fn started_after(&self, who: &str, after: f64) -> Option<f64> {
        self.intervals
            .iter()
            .find(|(w, s, _)| w == who && *s >= after)
            .map(|(_, s, _)| *s)
    }
    /// Pairs of intervals of different contenders that overlap.
    fn overlaps(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, (a, s1, e1)) in self.intervals.iter().enumerate() {
            for (b, s2, e2) in &self.intervals[i + 1..] {
                let (e1, e2) = (e1.unwrap_or(f64::MAX), e2.unwrap_or(f64::MAX));
                if a != b && *s1 < e2 && *s2 < e1 {
                    out.push(format!("{a} [{s1:.3}, {e1:.3}) and {b} [{s2:.3}, {e2:.3})"));
                }
            }
        }
        out
    }
}

type Shared = Arc<Mutex<Timeline>>;

/// The client-go peer as a child process; its transitions go into the timeline.
struct GoPeer {
    identity: String,
    child: Child,
    reader: std::thread::JoinHandle<()>,
}

fn peer_binary() -> String {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/k8s/clientgo.sh"
    ))
    .arg("build")
    .output()
    .expect("running tests/k8s/clientgo.sh");
    assert!(
        out.status.success(),
        "building the client-go peer failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GoPeer {
    fn start(bin: &str, server: &ApiServer, identity: &str, timeline: Shared) -> GoPeer {
        let mut child = Command::new(bin)
            .arg(format!(
                "--kubeconfig={}",
                server.daemon_kubeconfig().display()
            ))
            .arg(format!("--identity={identity}"))
            .args(["--namespace", NS, "--name", LEASE])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the client-go peer");
        let stdout = child.stdout.take().unwrap();
        let me = identity.to_string();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut f = line.split_whitespace();
                let (Some(t), Some(what)) = (f.next(), f.next()) else {
                    continue;
                };
                let Ok(t) = t.parse::<f64>() else { continue };
                match what {
                    "started-leading" => timeline.lock().unwrap().start(&me, t),
                    "stopped-leading" => timeline.lock().unwrap().stop(&me, t),
                    _ => {}
                }
            }
        });
        GoPeer {
            identity: identity.to_string(),
            child,
            reader,
        }
    }

    /// SIGTERM: client-go releases the Lease (ReleaseOnCancel).
    fn stop(mut self, timeline: &Shared) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = self.reader.join();
        // A process that exited no longer acts, whatever it printed.
        timeline.lock().unwrap().stop(&self.identity, now());
    }

    /// SIGKILL: nothing released; it stopped acting at the kill.
    fn crash(mut self, timeline: &Shared) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        timeline.lock().unwrap().stop(&self.identity, now());
    }
}

/// The daemon's elector in-process, with the Lease watch as in the daemon; a sampler
/// turns its published leadership into timeline intervals.
struct Daemon {
    identity: String,
    cancel: CancellationToken,
    task: JoinHandle<Elector<LeaseLock>>,
    sampler: JoinHandle<()>,
    /// The CiliumVTEPConfig writer, when started as a gateway.
    writer: Option<JoinHandle<()>>,
}

impl Daemon {
    async fn start(server: &ApiServer, identity: &str, timeline: Shared) -> Daemon {
        Self::start_as(server, identity, None, timeline).await
    }

    /// The elector plus the leader's CiliumVTEPConfig writer (served-shape look-up
    /// included) for `spec`, as in the daemon.
    async fn start_as(
        server: &ApiServer,
        identity: &str,
        spec: Option<vtep_config::VtepSpec>,
        timeline: Shared,
    ) -> Daemon {
        let kube = client(&server.daemon_kubeconfig()).await;
        let mut e = Elector::new(
            LeaseLock::new(kube.clone(), NS, LEASE, Duration::from_secs(1)),
            identity.to_string(),
            T,
        );
        let (publisher, handle) = election::channel();
        let cancel = CancellationToken::new();
        let (wake, watch) = election::lease::watch_changes(kube.clone(), NS, LEASE, cancel.clone());
        let c = cancel.clone();
        let task = tokio::spawn(async move {
            election::run(&mut e, &publisher, Some(wake), c).await;
            watch.abort();
            e
        });
        let writer = spec.map(|spec| {
            tokio::spawn(vtep_config::run(
                kube.clone(),
                spec,
                identity.to_string(),
                handle.clone(),
                Duration::from_secs(1),
                tokio::sync::watch::channel(None).0,
                cancel.clone(),
            ))
        });
        let sampler = tokio::spawn(sample(identity.to_string(), handle, timeline));
        Daemon {
            identity: identity.to_string(),
            cancel,
            task,
            sampler,
            writer,
        }
    }

    async fn stop(self, timeline: &Shared) {
        self.cancel.cancel();
        let mut e = self.task.await.unwrap();
        if let Some(w) = self.writer {
            let _ = w.await;
        }
        self.sampler.abort();
        timeline.lock().unwrap().stop(&self.identity, now());
        e.release(jiff::Timestamp::now()).await.unwrap();
    }

    fn crash(self, timeline: &Shared) {
        self.task.abort();
        if let Some(w) = &self.writer {
            w.abort();
        }
        self.cancel.cancel();
        self.sampler.abort();
        timeline.lock().unwrap().stop(&self.identity, now());
    }
}

async fn sample(who: String, h: ElectionHandle, timeline: Shared) {
    let mut was = false;
    loop {
        let is = h.leadership.borrow().is_leader() && h.remaining() > Duration::ZERO;
        if is != was {
            let mut t = timeline.lock().unwrap();
            if is {
                t.start(&who, now());
            } else {
                t.stop(&who, now());
            }
            was = is;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_go_and_the_daemon_share_one_lease_and_hand_over_both_ways() {
    let bin = tokio::task::spawn_blocking(peer_binary).await.unwrap();
    let server = ApiServer::start();
    let tl: Shared = Arc::default();
    let leading = |who: &str| tl.lock().unwrap().leading(who);
    let limit = Duration::from_secs(10);
    let mut report = Vec::new();

    // client-go first, the daemon as its standby.
    let go1 = GoPeer::start(&bin, &server, "go-1", tl.clone());
    assert!(
        until(limit, || leading("go-1")).await,
        "client-go never led"
    );
    let d1 = Daemon::start(&server, "rs-1", tl.clone()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!leading("rs-1"), "the daemon took a Lease client-go renews");

    // Graceful client-go → daemon.
    let t = now();
    go1.stop(&tl);
    assert!(
        until(limit, || leading("rs-1")).await,
        "the daemon never took over"
    );
    let took = tl.lock().unwrap().started_after("rs-1", t).unwrap() - t;
    report.push(format!("graceful client-go -> daemon: {took:.3} s"));

    // Graceful daemon → client-go.
    let go2 = GoPeer::start(&bin, &server, "go-2", tl.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!leading("go-2"), "client-go took a Lease the daemon renews");
    let t = now();
    d1.stop(&tl).await;
    assert!(
        until(limit, || leading("go-2")).await,
        "client-go never took over"
    );
    let took = tl.lock().unwrap().started_after("go-2", t).unwrap() - t;
    report.push(format!("graceful daemon -> client-go: {took:.3} s"));

    // Crash client-go → daemon.
    let d2 = Daemon::start(&server, "rs-2", tl.clone()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!leading("rs-2"));
    let t = now();
    go2.crash(&tl);
    assert!(
        until(limit, || leading("rs-2")).await,
        "the daemon never took over a crashed client-go"
    );
    let took = tl.lock().unwrap().started_after("rs-2", t).unwrap() - t;
    report.push(format!("crash client-go -> daemon: {took:.3} s"));

    // Crash daemon → client-go.
    let go3 = GoPeer::start(&bin, &server, "go-3", tl.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!leading("go-3"));
    let t = now();
    d2.crash(&tl);
    assert!(
        until(limit, || leading("go-3")).await,
        "client-go never took over a crashed daemon"
    );
    let took = tl.lock().unwrap().started_after("go-3", t).unwrap() - t;
    report.push(format!("crash daemon -> client-go: {took:.3} s"));
    go3.stop(&tl);

    for r in &report {
        println!("{r}");
    }
    let overlaps = tl.lock().unwrap().overlaps();
    assert!(overlaps.is_empty(), "both led at once: {overlaps:?}");
}

/// Every version of the CiliumVTEPConfig a watch sees, with the wall-clock time it arrived.
type Versions = Arc<Mutex<Vec<(f64, serde_json::Value)>>>;

fn record_versions(api: Api<DynamicObject>) -> (JoinHandle<()>, Versions) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let seen: Versions = Arc::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let cfg =
            watcher::Config::default().fields(&format!("metadata.name={}", vtep_config::NAME));
        let mut stream = watcher::watcher(api, cfg).boxed();
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
                s.lock().unwrap().push((now(), o.data["spec"].clone()));
            }
        }
    });
    (task, seen)
}

fn duplicate_cidr(spec: &serde_json::Value) -> Option<String> {
    let mut seen = std::collections::BTreeSet::new();
    spec["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["cidr"].as_str().unwrap_or_default().to_string())
        .find(|c| !seen.insert(c.clone()))
}

/// Migrating from the Helm-deployed Go gateway, as the README's guide does it: the Go
/// gateway (a client-go elector on the reference's Lease) leads and has written the
/// CiliumVTEPConfig its way (its own field manager, create then a plain Update, endpoint
/// `vpc-gateway` with its node IP and MAC). Our two gateways join the same Lease and stay
/// standby (writing nothing) while it renews. The Go leader then dies without releasing
/// the Lease (the reference never releases): one of ours takes the Lease after it
/// expires and the object in the same pass. Every version of the object a watch sees
/// holds no duplicate CIDR; it ends with exactly our endpoint; never two leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_from_the_go_gateway_takes_the_lease_and_the_object_without_duplicates() {
    let t0 = std::time::Instant::now();
    let bin = tokio::task::spawn_blocking(peer_binary).await.unwrap();
    let server = ApiServer::start();
    let admin = client(&server.admin_kubeconfig()).await;
    let api: Api<DynamicObject> = Api::all_with(admin, &vtep_config::api_resource());
    let tl: Shared = Arc::default();
    let leading = |who: &str| tl.lock().unwrap().leading(who);
    let limit = Duration::from_secs(10);
    let vpc = "10.250.0.0/16";

    // The Go gateway leads and writes its object (controller-runtime Create, then a plain
    // Update on its next start).
    let go = GoPeer::start(&bin, &server, "go-gw-a", tl.clone());
    assert!(
        until(limit, || leading("go-gw-a")).await,
        "client-go never led"
    );
    let go_ip = "10.250.8.8";
    let go_mac = Mac::for_gateway(go_ip.parse().unwrap()).to_string();
    let go_obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumVTEPConfig",
        "metadata": {"name": vtep_config::NAME},
        "spec": {"endpoints": [{"name": "vpc-gateway", "tunnelEndpoint": go_ip, "cidr": vpc, "mac": go_mac}]},
    }))
    .unwrap();
    let go_manager = PostParams {
        field_manager: Some("eks-hybrid-nodes-gateway".into()),
        ..PostParams::default()
    };
    let o = api.create(&go_manager, &go_obj).await.unwrap();
    // As stored: the schema's default fills `cidrMask` (255.255.255.0) the Go gateway
    // does not write.
    let go_obj = api
        .replace(vtep_config::NAME, &go_manager, &o)
        .await
        .unwrap();
    println!("as the Go gateway left it: {}", go_obj.data["spec"]);
    let (recorder, versions) = record_versions(api.clone());

    // Our gateways join as standbys: nothing written while the Go gateway renews.
    let ours = [("gw-a", "10.250.3.111"), ("gw-b", "10.250.3.112")];
    let mut daemons = Vec::new();
    for (id, ip) in ours {
        let ip4 = ip.parse().unwrap();
        let spec =
            vtep_config::VtepSpec::new(ip4, Mac::for_gateway(ip4), vec![vpc.parse().unwrap()]);
        daemons.push(Daemon::start_as(&server, id, Some(spec), tl.clone()).await);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !leading("gw-a") && !leading("gw-b"),
        "a standby took the Go gateway's Lease"
    );
    let before = api.get(vtep_config::NAME).await.unwrap();
    assert_eq!(
        before.data["spec"], go_obj.data["spec"],
        "a standby wrote the object"
    );

    // The Go gateway stops as the reference does (helm uninstall / node loss: the Lease is
    // not released).
    let killed = now();
    go.crash(&tl);
    assert!(
        until(limit, || leading("gw-a") || leading("gw-b")).await,
        "none of ours took over"
    );
    let (new_id, new_ip) = *ours.iter().find(|(id, _)| leading(id)).unwrap();
    let led = tl.lock().unwrap().started_after(new_id, killed).unwrap();
    let want = json!({"cidrMask": "255.255.0.0", "endpoints": [{"name": "vpc-gateway", "tunnelEndpoint": new_ip, "cidr": vpc, "mac": Mac::for_gateway(new_ip.parse().unwrap()).to_string()}]});
    assert!(
        until(limit, || versions.lock().unwrap().last().map(|v| &v.1)
            == Some(&want))
        .await,
        "the object never became ours: {:?}",
        versions.lock().unwrap().last()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = api.get(vtep_config::NAME).await.unwrap();
    assert_eq!(
        after.data["spec"], want,
        "the object does not end with exactly our endpoint"
    );
    recorder.abort();

    let versions = versions.lock().unwrap().clone();
    let written = versions
        .iter()
        .find(|(_, spec)| spec == &want)
        .map(|(t, _)| *t)
        .unwrap();
    println!("migration timeline (seconds after the Go leader was killed):");
    println!("  {:>7.3}  Go gateway killed (Lease not released)", 0.0);
    println!(
        "  {:>7.3}  {new_id} leads (Lease expired and taken)",
        led - killed
    );
    for (t, spec) in &versions {
        println!("  {:>7.3}  CiliumVTEPConfig spec: {spec}", t - killed);
    }
    println!(
        "  {:>7.3}  CiliumVTEPConfig holds {new_id}'s endpoint",
        written - killed
    );
    for (i, (_, spec)) in versions.iter().enumerate() {
        assert_eq!(
            duplicate_cidr(spec),
            None,
            "version {i} has a duplicate CIDR: {spec}"
        );
    }
    for d in daemons {
        d.stop(&tl).await;
    }
    let overlaps = tl.lock().unwrap().overlaps();
    assert!(overlaps.is_empty(), "two leaders at once: {overlaps:?}");
    println!("wall time: {:?}", t0.elapsed());
}
