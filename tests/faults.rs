//! Fault injection that observes effects (issue 10, item 2): two real `hybrid-gateway run`
//! processes, each in its own network namespace, each reaching the kube-apiserver, moto
//! (EC2), DynamoDB Local and its IMDS only through proxies of its own that listen on its
//! namespace's loopback. The proxies record, on one clock, every request that reaches a
//! peer: who sent it, when it arrived, what it was (Lease and lock writes with the holder
//! they set, CiliumVTEPConfig writes, EC2 route writes) and what the peer answered; and
//! they delay, stall, drop or fail selected requests.
//!
//! The safety invariant is asserted from that record alone (`record::violations`): no
//! mutation from gateway X arrives after another gateway's acquisition that follows X's
//! last acquisition. Liveness after each scenario: the CiliumVTEPConfig and every managed
//! route table name the current leader within [`BOUND`].
//!
//! Needs root, the cached apiserver build and the AWS peers (tests/aws/peers.sh).

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/aws.rs"]
mod peers;
#[path = "support/record.rs"]
mod record;
#[path = "support/recorder.rs"]
mod recorder;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::Api;

use record::{Event, Kind};
use recorder::{Effect, Rule};

const NS: &str = "hybrid-gateway";
const LEASE: &str = "hybrid-gateway-leader";
const CIDR: &str = "192.168.32.0/23";
/// The daemons' election timings (the reference's and the defaults).
const LEASE_DURATION: Duration = Duration::from_secs(3);
/// The daemons' `aws.resync_interval` (the smallest accepted).
const RESYNC: Duration = Duration::from_secs(5);
/// Liveness: after a scenario heals, the CR and every managed route table name the current
/// leader within a lease (a dead holder is waited out) + a route resync (a drifted table
/// is repaired) + 4 s for the election rounds, the writes and a loaded machine.
const BOUND: Duration = Duration::from_secs(12);
/// How many times each scenario runs.
const RUNS: usize = 3;

// ------------------------------------------------------------------ invariant tests ---

fn ev(at_ms: u64, gw: &str, kind: Kind, holder: Option<&str>) -> Event {
    Event {
        at: Duration::from_millis(at_ms),
        gw: gw.to_string(),
        kind,
        holder: holder.map(String::from),
        status: 200,
        faulted: false,
        detail: "test".to_string(),
    }
}

#[test]
fn invariant_holds_for_a_clean_handover() {
    let r = vec![
        ev(0, "gw-a", Kind::LeaseWrite, Some("gw-a_1")),
        ev(10, "gw-a", Kind::Route, None),
        ev(1000, "gw-a", Kind::LeaseWrite, Some("gw-a_1")),
        ev(1500, "gw-a", Kind::Cr, None),
        ev(5000, "gw-b", Kind::LeaseWrite, Some("gw-b_1")),
        ev(5100, "gw-b", Kind::Route, None),
        // gw-a's renewal conflicts (409): not an acquisition, and not an effect.
        Event {
            status: 409,
            ..ev(5200, "gw-a", Kind::LeaseWrite, Some("gw-a_1"))
        },
        ev(9000, "gw-a", Kind::LeaseWrite, Some("gw-a_2")),
        ev(9100, "gw-a", Kind::Cr, None),
    ];
    assert_eq!(
        record::violations(&r, &Kind::LeaseWrite),
        Vec::<String>::new()
    );
    assert_eq!(
        record::acquisitions(&r, &Kind::LeaseWrite)
            .iter()
            .map(|(_, g)| g.as_str())
            .collect::<Vec<_>>(),
        ["gw-a", "gw-b", "gw-a"]
    );
}

#[test]
fn invariant_catches_a_write_from_a_deposed_leader() {
    let r = vec![
        ev(0, "gw-a", Kind::LeaseWrite, Some("gw-a_1")),
        ev(5000, "gw-b", Kind::LeaseWrite, Some("gw-b_1")),
        // Sent before the takeover, arrived after it: the finding-2 write.
        ev(5001, "gw-a", Kind::Route, None),
    ];
    let v = record::violations(&r, &Kind::LeaseWrite);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("after gw-b acquired"), "{v:?}");
    // The same with the lock as the authority: Lease writes then decide nothing.
    let lock: Vec<Event> = r
        .iter()
        .map(|e| Event {
            kind: if e.kind == Kind::LeaseWrite {
                Kind::LockWrite
            } else {
                e.kind.clone()
            },
            ..e.clone()
        })
        .collect();
    assert_eq!(record::violations(&lock, &Kind::LockWrite).len(), 1);
    assert_eq!(
        record::violations(&r, &Kind::LockWrite).len(),
        1,
        "never acquired the lock"
    );
}

#[test]
fn invariant_ignores_faulted_writes_and_counts_rejected_ones() {
    let base = vec![
        ev(0, "gw-a", Kind::LockWrite, Some("gw-a_1")),
        ev(3000, "gw-b", Kind::LockWrite, Some("gw-b_1")),
    ];
    let mut faulted = base.clone();
    faulted.push(Event {
        faulted: true,
        status: 503,
        ..ev(3500, "gw-a", Kind::Route, None)
    });
    assert!(record::violations(&faulted, &Kind::LockWrite).is_empty());
    // A write the peer refused still arrived from a deposed leader.
    let mut rejected = base;
    rejected.push(Event {
        status: 409,
        ..ev(3500, "gw-a", Kind::Cr, None)
    });
    assert_eq!(record::violations(&rejected, &Kind::LockWrite).len(), 1);
    // A release does not make anyone holder; re-taking after it is an acquisition.
    let r = vec![
        ev(0, "gw-a", Kind::LockWrite, Some("gw-a_1")),
        ev(100, "gw-a", Kind::LockWrite, None),
        ev(200, "gw-b", Kind::LockWrite, Some("gw-b_1")),
        ev(300, "gw-b", Kind::LockWrite, None),
        ev(400, "gw-a", Kind::LockWrite, Some("gw-a_1")),
        ev(500, "gw-a", Kind::Route, None),
        ev(600, "gw-b", Kind::Route, None),
    ];
    let v = record::violations(&r, &Kind::LockWrite);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].starts_with("gw-b"), "{v:?}");
}

// ----------------------------------------------------------------------------- fleet ---

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    LeaseOnly,
    Combined,
}

impl Mode {
    fn authority(self) -> Kind {
        match self {
            Mode::LeaseOnly => Kind::LeaseWrite,
            Mode::Combined => Kind::LockWrite,
        }
    }
}

/// The shared fleet (tests/support/fleet.rs), run in one election mode.
struct Fleet {
    base: fleet::Fleet,
    lock_table: String,
    tables: Vec<String>,
    mode: Mode,
    /// (start time on the record's clock, gateway, mode) of every daemon process.
    processes: Vec<(Duration, &'static str, Mode)>,
}

impl std::ops::Deref for Fleet {
    type Target = fleet::Fleet;
    fn deref(&self) -> &fleet::Fleet {
        &self.base
    }
}

impl std::ops::DerefMut for Fleet {
    fn deref_mut(&mut self) -> &mut fleet::Fleet {
        &mut self.base
    }
}

/// The election timings the daemons run with: the default profile (3 s / 2 s / 1 s), or
/// with `HGW_FAULTS_PROFILE=fast` the fast one (1 s / 600 ms / 250 ms; the lock stores'
/// calls are then bounded by half the renew deadline, 300 ms). The scenarios' waits are
/// sized for the default and are only longer than needed under the fast profile.
fn election_timings() -> &'static str {
    match std::env::var("HGW_FAULTS_PROFILE").as_deref() {
        Ok("fast") => {
            "lease_duration = \"1s\"\nrenew_deadline = \"600ms\"\nretry_period = \"250ms\"\n"
        }
        _ => "lease_duration = \"3s\"\nrenew_deadline = \"2s\"\nretry_period = \"1s\"\n",
    }
}

/// A slow EC2 answer that a leader still waits for: under the bound of one call
/// (900 ms by default, 315 ms under the fast profile; see `RouteTablesSettings::fit_leadership`).
fn slow_ec2() -> Duration {
    match std::env::var("HGW_FAULTS_PROFILE").as_deref() {
        Ok("fast") => Duration::from_millis(200),
        _ => Duration::from_millis(600),
    }
}

fn daemon_config(g: &fleet::Gateway, mode: Mode, table: &str) -> String {
    let lock = match mode {
        Mode::LeaseOnly => String::new(),
        Mode::Combined => format!("[election.dynamodb]\ntable = \"{table}\"\n"),
    };
    format!(
        "[gateway]\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"{CIDR}\"]\n\
         [datapath]\nresync_interval = \"10s\"\nfilter = false\n\
         [kubernetes]\nkubeconfig = \"{dir}/kubeconfig\"\nrequest_timeout = \"1s\"\n\
         [election]\nidentity = \"{name}\"\n{timings}\
         {lock}\
         [aws]\nroute_table_tag = \"hybrid-gateway.io/managed=true\"\nresync_interval = \"5s\"\n\
         [log]\nlevel = \"info\"\n",
        dir = g.dir.display(),
        name = g.name,
        timings = election_timings(),
    )
}

impl Fleet {
    async fn start(tag: &str, mode: Mode) -> Fleet {
        let lock_table = format!("hgw-faults-{tag}-{}", std::process::id());
        let base = fleet::Fleet::start(
            &format!("f{tag}"),
            &["--route-tables", "2", "--lock-table", &lock_table],
        )
        .await;
        let tables = base.seed["route_tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        let mut f = Fleet {
            base,
            lock_table,
            tables,
            mode,
            processes: Vec::new(),
        };
        for i in 0..f.gws.len() {
            f.spawn(i);
        }
        f
    }

    /// Starts gateway `i` in the fleet's current mode.
    fn spawn(&mut self, i: usize) {
        let config = daemon_config(&self.gws[i], self.mode, &self.lock_table);
        self.base.spawn(i, &config);
        self.processes
            .push((self.recorder.now(), self.gws[i].name, self.mode));
    }

    /// Who the authority store names now (read directly from the peer).
    async fn holder(&self) -> Option<String> {
        match self.mode {
            Mode::LeaseOnly => {
                let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
                    Api::namespaced(self.admin.clone(), NS);
                let l = leases.get_opt(LEASE).await.ok()??;
                l.spec?.holder_identity.filter(|h| !h.is_empty())
            }
            Mode::Combined => {
                let item = self
                    .ddb
                    .get_item()
                    .table_name(&self.lock_table)
                    .key("lock_key", AttributeValue::S(LEASE.to_string()))
                    .consistent_read(true)
                    .send()
                    .await
                    .ok()?
                    .item?;
                if matches!(item.get("released"), Some(AttributeValue::Bool(true))) {
                    return None;
                }
                item.get("owner")?.as_s().ok().cloned()
            }
        }
    }

    /// The leader when the CR and every managed route table name it, else what differs.
    async fn converged(&self) -> Result<&'static str, String> {
        let holder = self.holder().await.ok_or("no holder")?;
        let g = self
            .gws
            .iter()
            .find(|g| g.name == record::gateway_of(&holder))
            .ok_or_else(|| format!("holder {holder} is no gateway"))?;
        let crs: Api<DynamicObject> = Api::all_with(
            self.admin.clone(),
            &hybrid_gateway::k8s::vtep_config::api_resource(),
        );
        let cr = crs
            .get_opt("hybrid-gateway")
            .await
            .map_err(|e| format!("reading the CR: {e}"))?
            .ok_or("no CR")?;
        let eps = cr.data["spec"]["endpoints"].clone();
        let eps = eps.as_array().cloned().unwrap_or_default();
        if eps.is_empty() || eps.iter().any(|e| e["tunnelEndpoint"] != g.ip.as_str()) {
            return Err(format!("holder {holder}, CR endpoints {eps:?}"));
        }
        let out = self
            .ec2
            .describe_route_tables()
            .set_route_table_ids(Some(self.tables.clone()))
            .send()
            .await
            .map_err(|e| format!("DescribeRouteTables: {e:?}"))?;
        let targets: Vec<Option<&str>> = out
            .route_tables()
            .iter()
            .map(|t| {
                t.routes()
                    .iter()
                    .find(|r| r.destination_cidr_block() == Some(CIDR))
                    .and_then(|r| r.network_interface_id())
            })
            .collect();
        if targets.len() == self.tables.len() && targets.iter().all(|t| *t == Some(g.eni.as_str()))
        {
            Ok(g.name)
        } else {
            Err(format!("holder {holder} ({}), routes {targets:?}", g.eni))
        }
    }

    /// Waits for convergence (up to 3 × BOUND, to report what it took) and returns the
    /// leader and how long it took.
    async fn converge(&self, since: Instant) -> (Option<&'static str>, Duration) {
        loop {
            // Bounded: a peer that stopped answering (etcd once died of a full disk) must
            // fail the test, not hang it.
            let look = tokio::time::timeout(Duration::from_secs(5), self.converged())
                .await
                .unwrap_or_else(|_| Err("the peers did not answer within 5 s".into()));
            match look {
                Ok(l) => return (Some(l), since.elapsed()),
                Err(why) if since.elapsed() > BOUND * 3 => {
                    println!("not converged after {:?}: {why}", since.elapsed());
                    return (None, since.elapsed());
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes every managed table's route behind the daemons' backs (drift the leader
    /// repairs at its next resync with CreateRoute).
    async fn delete_routes(&self) {
        for t in &self.tables {
            self.ec2
                .delete_route()
                .route_table_id(t)
                .destination_cidr_block(CIDR)
                .send()
                .await
                .expect("deleting a route in moto");
        }
    }

    /// Points every managed table's route at `eni` behind the daemons' backs (drift the
    /// leader repairs at its next resync).
    async fn drift_routes(&self, eni: &str) {
        for t in &self.tables {
            self.ec2
                .replace_route()
                .route_table_id(t)
                .destination_cidr_block(CIDR)
                .network_interface_id(eni)
                .send()
                .await
                .expect("drifting a route in moto");
        }
    }

    /// Edits the CR's spec every `period` while the returned flag is true: the leader's
    /// watch sees each edit and writes the CR back, so a leader that still acts keeps
    /// sending CR writes that the record would show.
    fn churn_cr(&self, period: Duration) -> Arc<AtomicBool> {
        let on = Arc::new(AtomicBool::new(true));
        let (flag, admin) = (on.clone(), self.admin.clone());
        tokio::spawn(async move {
            let crs: Api<DynamicObject> =
                Api::all_with(admin, &hybrid_gateway::k8s::vtep_config::api_resource());
            let mut n = 0u32;
            while flag.load(Ordering::Relaxed) {
                n += 1;
                let patch = serde_json::json!({"spec": {"endpoints": [{
                    "name": "vpc-gateway", "tunnelEndpoint": format!("10.250.9.{}", n % 200 + 1),
                    "cidr": "10.250.0.0/16", "mac": "02:00:00:00:00:01"}]}});
                let _ = crs
                    .patch(
                        "hybrid-gateway",
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await;
                tokio::time::sleep(period).await;
            }
        });
        on
    }

    /// The invariant on the record; each process's acquisitions are those of the store
    /// it acts by (the Lease or the lock), so a fleet in a rolling switch is judged right.
    fn violations(&self) -> Vec<String> {
        let events = self.recorder.events();
        let mode_at = |gw: &str, t: Duration| {
            self.processes
                .iter()
                .rfind(|(start, g, _)| *g == gw && *start <= t)
                .map(|(_, _, m)| *m)
        };
        let mut acq: Vec<(Duration, String)> = [Mode::LeaseOnly, Mode::Combined]
            .into_iter()
            .flat_map(|m| {
                record::acquisitions(&events, &m.authority())
                    .into_iter()
                    .filter(move |(t, g)| mode_at(g, *t) == Some(m))
                    .collect::<Vec<_>>()
            })
            .collect();
        acq.sort();
        record::violations_given(&events, &acq)
    }

    /// Whether `gw` acquired the authority store (the lock in combined mode, the Lease
    /// otherwise) at or after `since` on the record's clock.
    fn acquired_since(&self, gw: &str, since: Duration) -> bool {
        record::acquisitions(&self.recorder.events(), &self.mode.authority())
            .iter()
            .any(|(t, g)| *t >= since && g == gw)
    }

    /// Whether `gw` took the Lease at or after `since` (in combined mode too).
    fn acquired_lease_since(&self, gw: &str, since: Duration) -> bool {
        record::acquisitions(&self.recorder.events(), &Kind::LeaseWrite)
            .iter()
            .any(|(t, g)| *t >= since && g == gw)
    }
}

/// Waits for `flag`, up to `limit`.
async fn fired(flag: &AtomicBool, limit: Duration) -> bool {
    let t = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        if t.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

fn sigstop_hook(pid: i32, flag: &Arc<AtomicBool>) -> impl Fn() + Send + Sync + 'static {
    let f = flag.clone();
    move || {
        if !f.swap(true, Ordering::SeqCst) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
    }
}

/// How long after its trigger a hook stops a gateway: at once by default, so the stop can
/// land while hyper's connection task holds a route write it has not written yet (the
/// window `src/aws/routes/write_fence.rs` closes; without that fence about 1 run in 3 of
/// the two route-write scenarios sent a write late). `HGW_FAULTS_STOP_DELAY_MS=50` stops
/// later instead, inside the sync or the SDK's retry backoff.
fn stop_delay() -> Duration {
    std::env::var("HGW_FAULTS_STOP_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

/// Runs `stop` after `delay` without holding up the proxy.
fn stop_after(delay: Duration, stop: Arc<impl Fn() + Send + Sync + 'static>) {
    if delay.is_zero() {
        stop();
    } else {
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            stop();
        });
    }
}

const ROUTE_WRITES: &[&str] = &["CreateRoute", "ReplaceRoute", "DeleteRoute"];

/// One scenario's figures.
struct Outcome {
    name: &'static str,
    runs: usize,
    violations: usize,
    max_converge: Duration,
}

/// Runs `scenario` RUNS times; after each, asserts liveness within BOUND and counts the
/// invariant violations the record gained.
async fn run_scenario<'a, F, Fut>(f: &'a Fleet, name: &'static str, scenario: F) -> Outcome
where
    F: Fn(&'a Fleet, &'static str, &'static str) -> Fut,
    Fut: std::future::Future<Output = Instant> + 'a,
{
    run_scenario_as(f, name, scenario, false).await
}

/// A scenario that is only a test if the standby took over: each run is repeated (up to
/// [`HANDOVER_TRIES`] times) until it did, and fails if it never did.
async fn run_handover_scenario<'a, F, Fut>(f: &'a Fleet, name: &'static str, scenario: F) -> Outcome
where
    F: Fn(&'a Fleet, &'static str, &'static str) -> Fut,
    Fut: std::future::Future<Output = Instant> + 'a,
{
    run_scenario_as(f, name, scenario, true).await
}

const HANDOVER_TRIES: usize = 3;

async fn run_scenario_as<'a, F, Fut>(
    f: &'a Fleet,
    name: &'static str,
    scenario: F,
    handover: bool,
) -> Outcome
where
    F: Fn(&'a Fleet, &'static str, &'static str) -> Fut,
    Fut: std::future::Future<Output = Instant> + 'a,
{
    let mut out = Outcome {
        name,
        runs: 0,
        violations: 0,
        max_converge: Duration::ZERO,
    };
    for run in 0..RUNS {
        let before = f.violations().len();
        let (leader, _) = f.converge(Instant::now()).await;
        let leader = leader.unwrap_or_else(|| {
            panic!("{name}: no converged leader before run {run}\n{}", f.logs())
        });
        let standby = if leader == "gw-a" { "gw-b" } else { "gw-a" };
        let mut tries = 0;
        let (now, took, handed) = loop {
            tries += 1;
            let since = f.recorder.now();
            let healed = scenario(f, leader, standby).await;
            let (now, took) = f.converge(healed).await;
            for g in &f.gws {
                g.clear();
                g.signal(libc::SIGCONT);
            }
            // Late writes of a deposed leader would arrive now: give them time to show.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let handed = f.acquired_since(standby, since);
            assert!(
                now.is_some() && took <= BOUND,
                "{name} run {run}: CR and route tables did not name the leader within {BOUND:?} (took {took:?}, leader {now:?})\n{}",
                f.logs()
            );
            if !handover || handed || tries >= HANDOVER_TRIES {
                break (now, took, handed);
            }
            println!("{name} run {run}: {standby} never took over (try {tries}); again");
        };
        let v = f.violations();
        println!(
            "{name} run {run}: leader {leader} -> {now:?} converged after {took:?}, handover {handed} (tries {tries}), new violations {}",
            v.len() - before
        );
        assert!(
            !handover || handed,
            "{name} run {run}: {standby} never took over in {tries} tries: the run tested no handover\n{}",
            f.logs()
        );
        out.violations += v.len() - before;
        out.max_converge = out.max_converge.max(took);
        out.runs += 1;
    }
    out
}

fn report(mode: Mode, outcomes: &[Outcome], f: &Fleet, started: Instant) {
    println!("--- {mode:?}: {} s", started.elapsed().as_secs());
    for o in outcomes {
        println!(
            "{:<48} runs {} violations {} max convergence {:.1} s (bound {:?})",
            o.name,
            o.runs,
            o.violations,
            o.max_converge.as_secs_f64(),
            BOUND
        );
    }
    let events = f.recorder.events();
    let dump = std::env::temp_dir().join(format!("hgw-faults-{mode:?}.record"));
    f.recorder.dump(&dump);
    println!(
        "record ({}): {} requests; {}",
        dump.display(),
        events.len(),
        record::summary(&events)
    );
    // Election writes stay at the renewal rate: a gateway renews once per retry period
    // (1 s, or 250 ms under the fast profile), so three times that is far beyond anything
    // legitimate (the combined mode's Lease holder once renewed as fast as the API server
    // answered). Under the fast profile a leader alone makes 4 lock writes a second.
    let renewals_per_sec = match std::env::var("HGW_FAULTS_PROFILE").as_deref() {
        Ok("fast") => 4.0,
        _ => 1.0,
    };
    let secs = f.recorder.now().as_secs_f64();
    for g in ["gw-a", "gw-b"] {
        for kind in [Kind::LeaseWrite, Kind::LockWrite] {
            let n = events
                .iter()
                .filter(|e| e.gw == g && e.kind == kind)
                .count();
            assert!(
                n as f64 <= 3.0 * renewals_per_sec * secs,
                "{g} made {n} {kind:?}s in {secs:.0} s: an election write loop"
            );
        }
    }
    let v = f.violations();
    assert!(
        v.is_empty(),
        "invariant violated:\n{}\n{}",
        v.join("\n"),
        f.logs()
    );
}

// ------------------------------------------------------------------------- scenarios ---

/// SIGSTOP the leader as its first route write of a sync arrives (≥ a lease), SIGCONT.
async fn stop_leader_mid_route_sync(f: &Fleet, leader: &str, standby: &str) -> Instant {
    let l = &f.gws[f.index(leader)];
    let hit = flag();
    let stop = Arc::new(sigstop_hook(l.pid(), &hit));
    let delay = stop_delay();
    l.ec2.add(
        Rule::new(Effect::Pass)
            .actions(ROUTE_WRITES)
            .count(1)
            .before(move || stop_after(delay, stop.clone())),
    );
    f.drift_routes(&f.gws[f.index(standby)].eni).await;
    assert!(
        fired(&hit, RESYNC * 3).await,
        "{leader} did not repair drifted routes\n{}",
        f.logs()
    );
    tokio::time::sleep(LEASE_DURATION + Duration::from_secs(2)).await;
    l.signal(libc::SIGCONT);
    Instant::now()
}

/// EC2 throttles the first attempt of every route write on both gateways; the leader is
/// stopped the moment its throttled answer leaves the proxy, for more than a lease.
///
/// The residual window, closed: a route write is checked against leadership before each
/// attempt and on every poll of the call, but hyper writes the request from its connection
/// task after the call handed it over, and a process stopped in between sent it when
/// resumed (with the stop at once, the concurrent write to the second table once reached
/// EC2 2.2 s after the other gateway took over while the daemon logged it "withheld,
/// leadership ending"; a retry left 80 ms after SIGCONT). The route writer's connections
/// now refuse to write once the request's leadership is over (`write_fence`). What no
/// in-process check can close is a stop between that check and the `write(2)` right after
/// it: EC2 takes no fencing token.
async fn throttled_writes_and_a_stop_in_the_backoff(
    f: &Fleet,
    leader: &str,
    standby: &str,
) -> Instant {
    let l = &f.gws[f.index(leader)];
    let s = &f.gws[f.index(standby)];
    let hit = flag();
    // Stopped as the throttled answer leaves: in the SDK's retry backoff, or with the
    // retry already handed to the connection task.
    let stop = Arc::new(sigstop_hook(l.pid(), &hit));
    l.ec2.add(
        Rule::new(Effect::Fail(503))
            .actions(ROUTE_WRITES)
            .count(1)
            .after(move || stop_after(stop_delay(), stop.clone())),
    );
    s.ec2
        .add(Rule::new(Effect::Fail(503)).actions(ROUTE_WRITES).count(2));
    // Deleted, so whoever leads next must write too (its first attempts throttled).
    f.delete_routes().await;
    assert!(
        fired(&hit, RESYNC * 3).await,
        "{leader} did not repair drifted routes\n{}",
        f.logs()
    );
    tokio::time::sleep(LEASE_DURATION + Duration::from_secs(2)).await;
    l.signal(libc::SIGCONT);
    Instant::now()
}

/// `kubectl delete lease` while the CR churns, with the leader's Lease requests failing
/// until the standby has recreated the Lease: a handover every run (left alone, the
/// leader often recreated it itself and kept leading, and the run exercised no takeover).
/// The standby recreates the record only once the holder it saw may no longer act, in a
/// term counting on from the last it saw; it must take the CR over from the old term.
async fn delete_the_lease(f: &Fleet, leader: &str, standby: &str) -> Instant {
    let l = &f.gws[f.index(leader)];
    let churn = f.churn_cr(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let since = f.recorder.now();
    l.kube.add(Rule::new(Effect::Fail(500)).path("/leases"));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(f.admin.clone(), NS);
    leases
        .delete(LEASE, &DeleteParams::default())
        .await
        .expect("deleting the Lease");
    let took = Instant::now();
    while !f.acquired_since(standby, since) && took.elapsed() < LEASE_DURATION * 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    l.clear();
    tokio::time::sleep(Duration::from_secs(2)).await;
    churn.store(false, Ordering::Relaxed);
    Instant::now()
}

/// The standby's Lease reads are answered 800 ms late, and right after one renewal the
/// leader's renewals start failing; the CR churns, so the leader writes while it acts.
async fn delayed_standby_reads_after_a_renewal(f: &Fleet, leader: &str, standby: &str) -> Instant {
    let l = &f.gws[f.index(leader)];
    let s = &f.gws[f.index(standby)];
    let churn = f.churn_cr(Duration::from_millis(200));
    s.kube.add(
        Rule::new(Effect::DelayResponse(Duration::from_millis(800)))
            .method("GET")
            .path("/leases/"),
    );
    let rules = l.kube.rules();
    let hit = flag();
    let h = hit.clone();
    l.kube.add(
        Rule::new(Effect::Pass)
            .method("PUT")
            .path("/leases/")
            .count(1)
            .after(move || {
                rules.add(Rule::new(Effect::Fail(500)).path("/leases/"));
                h.store(true, Ordering::SeqCst);
            }),
    );
    assert!(fired(&hit, Duration::from_secs(10)).await, "no renewal");
    tokio::time::sleep(LEASE_DURATION * 2 + Duration::from_secs(1)).await;
    churn.store(false, Ordering::Relaxed);
    l.clear();
    s.clear();
    Instant::now()
}

/// SIGSTOP the standby the moment it has read a fresh record, for more than a lease,
/// while the leader keeps renewing and the CR churns. Resumed, the standby's observation
/// is old: it must find the record renewed (its write conditional on what it read fails),
/// not take over.
async fn stop_standby_after_a_fresh_read(f: &Fleet, _leader: &str, standby: &str) -> Instant {
    let s = &f.gws[f.index(standby)];
    let churn = f.churn_cr(Duration::from_millis(300));
    let hit = flag();
    s.kube.add(
        Rule::new(Effect::Pass)
            .method("GET")
            .path("/leases/")
            .count(1)
            .after(sigstop_hook(s.pid(), &hit)),
    );
    assert!(
        fired(&hit, Duration::from_secs(10)).await,
        "{standby} read no Lease\n{}",
        f.logs()
    );
    tokio::time::sleep(LEASE_DURATION + Duration::from_secs(2)).await;
    s.signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    churn.store(false, Ordering::Relaxed);
    Instant::now()
}

/// A fast Standby → Leader flap: the leader's renewals fail past its renew deadline (it
/// stops acting) while the standby's reads hang (it cannot take over), then both heal and
/// the leader takes the Lease again in a new term; the CR churns throughout, so the CR
/// writer writes right across the flap.
async fn fast_standby_leader_flap(f: &Fleet, leader: &str, standby: &str) -> Instant {
    let l = &f.gws[f.index(leader)];
    let s = &f.gws[f.index(standby)];
    let churn = f.churn_cr(Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.kube.add(Rule::new(Effect::Stall).path("/leases"));
    l.kube
        .add(Rule::new(Effect::Fail(500)).method("PUT").path("/leases/"));
    // Past the renew deadline (2 s), short of the lease (3 s) the standby would wait.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    l.clear();
    s.clear();
    tokio::time::sleep(Duration::from_secs(3)).await;
    churn.store(false, Ordering::Relaxed);
    Instant::now()
}

/// The lock item deleted from DynamoDB while the CR churns.
async fn delete_the_lock_item(f: &Fleet, _leader: &str, _standby: &str) -> Instant {
    let churn = f.churn_cr(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.ddb
        .delete_item()
        .table_name(&f.lock_table)
        .key("lock_key", AttributeValue::S(LEASE.to_string()))
        .send()
        .await
        .expect("deleting the lock item");
    tokio::time::sleep(Duration::from_secs(3)).await;
    churn.store(false, Ordering::Relaxed);
    Instant::now()
}

/// Combined mode: the lock holder loses Kubernetes, and the other gateway takes the Lease
/// while the holder keeps the lock (DynamoDB still answers it). Every EC2 call of the
/// holder is slow (600 ms on the way in, under its 900 ms call timeout), and its
/// Kubernetes access heals while a route write of its is on the way and the other gateway
/// holds the Lease: the holder then learns that the other gateway holds the Lease and
/// steps down with that write in flight, and must not free the lock before the write has
/// landed or timed out; the other gateway then takes the lock (a handover every run).
async fn heal_kubernetes_while_ec2_is_slow(f: &Fleet, leader: &str, standby: &str) -> Instant {
    let l = &f.gws[f.index(leader)];
    let s = &f.gws[f.index(standby)];
    // Timed on the holder's route resync (every RESYNC): a sync starts at D; the routes
    // drift after it; the cut at D + 2.2 s lets the other gateway take the Lease about a
    // lease later (D + 5.2 s to D + 6.2 s: it polls every second), while the holder's next
    // sync (D + 5 s) has a write on the way (arriving at D + 5.6 s behind the slow read,
    // in flight past D + 6.2 s). Healed then, the holder steps down within a round and
    // frees the lock at its hold's end, inside the lease the other gateway waits for it
    // while holding the Lease. (Healed at the write's arrival, before the other gateway
    // held the Lease, the holder freed the lock after that wait and took the Lease back:
    // no handover, run after run.)
    let since = f.recorder.now();
    let sync = async {
        loop {
            let d = f.recorder.events().iter().find_map(|e| {
                (e.gw == leader && e.at > since && e.detail.starts_with("DescribeRouteTables"))
                    .then_some(e.at)
            });
            if let Some(d) = d {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let d = tokio::time::timeout(RESYNC * 3, sync)
        .await
        .unwrap_or_else(|_| panic!("{leader} made no route sync\n{}", f.logs()));
    tokio::time::sleep((d + Duration::from_secs(1)).saturating_sub(f.recorder.now())).await;
    f.drift_routes(&s.eni).await;
    tokio::time::sleep((d + Duration::from_millis(2200)).saturating_sub(f.recorder.now())).await;
    let hit = flag();
    let h = hit.clone();
    l.ec2.add(
        Rule::new(Effect::DelayRequest(slow_ec2()))
            .actions(ROUTE_WRITES)
            .before(move || h.store(true, Ordering::SeqCst)),
    );
    l.ec2.add(Rule::new(Effect::DelayRequest(slow_ec2())));
    let cut = f.recorder.now();
    l.kube.set_cut(true);
    let wrote = fired(&hit, RESYNC * 3).await;
    // Heal once the other gateway holds the Lease (bounded: the write's time in flight).
    let t = Instant::now();
    while !f.acquired_lease_since(standby, cut) && t.elapsed() < slow_ec2() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    l.kube.set_cut(false);
    assert!(
        wrote,
        "{leader} did not repair drifted routes\n{}",
        f.logs()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    l.clear();
    Instant::now()
}

/// Switches a running fleet to `to` by a rolling restart: the standby first (SIGTERM, then
/// started in the new mode, given a few seconds to join), then the leader, while the CR
/// churns. Runs RUNS times, alternating the mode, with the invariant (each process
/// judged by its own store) and liveness after each.
async fn rolling_switches(f: &mut Fleet) -> Outcome {
    let name = "switch Lease-only <-> combined (rolling)";
    let mut out = Outcome {
        name,
        runs: 0,
        violations: 0,
        max_converge: Duration::ZERO,
    };
    for run in 0..RUNS {
        let before = f.violations().len();
        let (leader, _) = f.converge(Instant::now()).await;
        let leader = leader.unwrap_or_else(|| panic!("{name}: no leader before run {run}"));
        let standby = if leader == "gw-a" { "gw-b" } else { "gw-a" };
        let to = match f.mode {
            Mode::LeaseOnly => Mode::Combined,
            Mode::Combined => Mode::LeaseOnly,
        };
        let churn = f.churn_cr(Duration::from_millis(300));
        let from = f.mode;
        for g in [standby, leader] {
            let i = f.index(g);
            f.stop(i);
            f.mode = to;
            f.spawn(i);
            f.mode = from;
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        f.mode = to;
        churn.store(false, Ordering::Relaxed);
        let healed = Instant::now();
        let (now, took) = f.converge(healed).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let v = f.violations();
        println!(
            "{name} run {run}: {from:?} -> {to:?}, leader {leader} -> {now:?} converged after {took:?}, new violations {}",
            v.len() - before
        );
        assert!(
            now.is_some() && took <= BOUND,
            "{name} run {run}: not converged within {BOUND:?} (took {took:?})\n{}",
            f.logs()
        );
        out.violations += v.len() - before;
        out.max_converge = out.max_converge.max(took);
        out.runs += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_mode_faults_no_write_from_a_deposed_leader() {
    let started = Instant::now();
    let f = Fleet::start("l", Mode::LeaseOnly).await;
    let mut out = Vec::new();
    out.push(
        run_scenario(
            &f,
            "SIGSTOP leader mid route sync",
            stop_leader_mid_route_sync,
        )
        .await,
    );
    out.push(
        run_scenario(
            &f,
            "EC2 throttles first attempts + stop in backoff",
            throttled_writes_and_a_stop_in_the_backoff,
        )
        .await,
    );
    out.push(
        run_scenario(
            &f,
            "standby reads delayed after a renewal",
            delayed_standby_reads_after_a_renewal,
        )
        .await,
    );
    out.push(
        run_scenario(
            &f,
            "SIGSTOP standby after a fresh read",
            stop_standby_after_a_fresh_read,
        )
        .await,
    );
    out.push(run_scenario(&f, "fast Standby -> Leader flap", fast_standby_leader_flap).await);
    out.push(run_handover_scenario(&f, "delete the Lease", delete_the_lease).await);
    report(Mode::LeaseOnly, &out, &f, started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_mode_faults_no_write_from_a_deposed_leader() {
    let started = Instant::now();
    let mut f = Fleet::start("c", Mode::Combined).await;
    let mut out = Vec::new();
    out.push(
        run_scenario(
            &f,
            "SIGSTOP leader mid route sync",
            stop_leader_mid_route_sync,
        )
        .await,
    );
    out.push(
        run_handover_scenario(&f, "heal Kubernetes while EC2 is slow", |f, l, s| {
            heal_kubernetes_while_ec2_is_slow(f, l, s)
        })
        .await,
    );
    out.push(run_scenario(&f, "delete the lock item", delete_the_lock_item).await);
    out.push(rolling_switches(&mut f).await);
    report(Mode::Combined, &out, &f, started);
}
