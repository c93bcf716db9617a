//! Per-AZ throughput benchmark in the local lab (`tests/lab/lab.sh up --per-az`, needs root
//! and iperf3):
//!
//!   sudo cargo bench --bench per_az_throughput --profile dev   # reuses the `cargo test` build
//!
//! The claim under test: with both gateways active (per-AZ mode) the VPC ↔ hybrid capacity is
//! the sum of two instances', where active/standby has one instance's. On EC2 each instance
//! has its own bandwidth and PPS allowance; in the lab every "instance" is a network
//! namespace on the same CPUs, so without a limit of their own the two gateways share one
//! machine's forwarding capacity and a comparison shows nothing. The bench therefore models
//! the per-instance allowance explicitly: each gateway namespace gets its own token bucket
//! (tc tbf, HGW_BENCH_CAP_MBIT, default 500 Mbit/s) on both directions of its only link
//! (egress of its eth0, and egress of its bridge port towards it: what it sends and what it
//! receives, each capped, as EC2 caps inbound and outbound each), and the unshaped aggregate
//! is measured in the same run to show the machine itself carries at least twice the cap
//! (else the bench fails: the cap would not be what limits).
//!
//! On one lab, with the real daemons driving the route tables and the CiliumVTEPConfig, each
//! round measures, per layout and for each direction (VPC → hybrid: iperf3 from both AZ
//! hosts to the hybrid pod concurrently; hybrid → VPC: the same with -R), the aggregate
//! with the cap and without it:
//!   per-AZ        gw-a leads AZ a's shard, gw-b AZ b's: each zone crosses its own gateway;
//!   one gateway   gw-b stopped (SIGTERM): gw-a takes AZ b's shard and carries both zones,
//!                 as the leader of active/standby does;
//! then gw-b is started again and the shard handed back for the next round. Before every
//! measurement the bench checks that each shard is where the layout says — the shard
//! Leases, the moto route tables, the CiliumVTEPConfig endpoints, the routes the VPC hosts
//! and the hybrid node follow — and after it that each gateway's NIC (eth0 tx bytes) carried
//! its zones' bytes and no other's; anything else panics (non-zero exit) rather than
//! reporting numbers for the wrong layout. Prints medians over the rounds and the
//! cross-AZ bytes per hour that per-AZ mode avoids (README "Per-AZ mode", cost model).
//!
//! Environment: HGW_BENCH_ROUNDS (default 3), HGW_BENCH_SECONDS per iperf3 run (default 10),
//! HGW_BENCH_CAP_MBIT (default 500), HGW_BENCH_STREAMS per AZ host (default 1),
//! HGW_BENCH_TRAFFIC_GBIT the stated traffic rate of the cost line (default 1),
//! HGW_BENCH_XAZ_PRICE USD per GB in each direction (default 0.01), HGW_LAB_KEEP=1 keeps the lab.

#[path = "../tests/lab/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{wait_until, Lab, Observer};

/// Where each AZ's shard is (the gateway leading it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layout {
    /// gw-a leads AZ a's shard, gw-b AZ b's.
    PerAz,
    /// gw-a leads both (gw-b stopped).
    OneGateway,
}

impl Layout {
    fn leader_of(self, zone: Zone) -> &'static str {
        match (self, zone) {
            (Layout::PerAz, Zone::B) => "gw-b",
            _ => "gw-a",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::PerAz => "per-AZ (both gateways active)",
            Layout::OneGateway => "one gateway (active/standby)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    A,
    B,
}

const ZONES: [Zone; 2] = [Zone::A, Zone::B];

impl Zone {
    /// The lab variable of the zone's VPC host namespace.
    fn host_ns(self) -> &'static str {
        match self {
            Zone::A => "NS_VPC",
            Zone::B => "NS_VPC_B",
        }
    }

    /// The zone's subnet (tests/lab/lab.sh up --per-az).
    fn subnet(self) -> &'static str {
        match self {
            Zone::A => "10.250.1.0/24",
            Zone::B => "10.250.2.0/24",
        }
    }

    /// The AZ suffix lab.sh/peers.sh give the zone's subnet.
    fn az(self, region: &str) -> String {
        match self {
            Zone::A => format!("{region}a"),
            Zone::B => format!("{region}b"),
        }
    }

    fn index(self) -> usize {
        match self {
            Zone::A => 0,
            Zone::B => 1,
        }
    }

    /// The iperf3 server port on the hybrid node for this zone's client.
    fn port(self) -> u16 {
        5201 + self.index() as u16
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    VpcToHybrid,
    HybridToVpc,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::VpcToHybrid => "VPC → hybrid",
            Direction::HybridToVpc => "hybrid → VPC",
        }
    }
}

struct Settings {
    rounds: usize,
    seconds: u64,
    cap_mbit: u64,
    streams: u32,
    traffic_gbit: f64,
    price: f64,
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not a valid value")),
        Err(_) => default,
    }
}

/// Runs a command; panics (with its output) unless it succeeds. Returns stdout.
fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ------------------------------------------------------------------------- shaping ---

/// The per-instance allowance: a token bucket on what the gateway sends (its eth0) and on
/// what it receives (its bridge port in the lab's switch namespace); `None` removes both.
fn shape(lab: &Lab, gw: &str, mbit: Option<u64>) {
    let links = [
        (lab.gw(gw).ns, "eth0".to_string()),
        (lab.var("NS_NET").to_string(), gw.to_string()),
    ];
    for (ns, dev) in &links {
        match mbit {
            Some(rate) => {
                // burst: 4 ms at the rate (at least 64 KiB, one GSO segment), queue 20 ms.
                let burst = (rate * 1_000_000 / 8 / 250).max(64 * 1024);
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{rate}mbit"),
                    "burst",
                    &burst.to_string(),
                    "latency",
                    "20ms",
                ]);
            }
            None => {
                // Nothing to delete is fine (the veth's default noqueue).
                let _ = Command::new("ip")
                    .args([
                        "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root",
                    ])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let shown = sh(&["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev]);
        assert_eq!(
            shown.contains("tbf"),
            mbit.is_some(),
            "shaping of {gw} ({dev} in {ns}) is not what was asked ({mbit:?} Mbit/s): {shown}"
        );
    }
}

// ----------------------------------------------------------------------- placement ---

fn lease_holder(lab: &Lab, name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", lab.var("NS_CP"), lab.var("KUBECTL")])
        .args(["--kubeconfig", lab.var("ADMIN_KUBECONFIG")])
        .args(["get", "lease", "-n", "hybrid-gateway", name])
        .args(["-o", "jsonpath={.spec.holderIdentity}"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !h.is_empty()).then_some(h)
}

/// The next hop of `ns`'s route to `dst` (an `ip route show` of exactly that prefix).
fn via(ns: &str, dst: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "route", "show", dst])
        .output()
        .expect("ip route");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "via")
        .and_then(|_| words.next())
        .unwrap_or("none")
        .to_string()
}

/// Every place a shard's leadership shows, checked against `layout`: `Err` says what differs.
fn check_layout(lab: &Lab, obs: &Observer, layout: Layout) -> Result<(), String> {
    let region = lab.var("AWS_REGION");
    let tables: Vec<&str> = lab.var("ROUTE_TABLES").split_whitespace().collect();
    let routes = obs.routes();
    let cr = obs.cr().ok_or("no CiliumVTEPConfig")?;
    for g in ["gw-a", "gw-b"] {
        let wanted = g == "gw-a" || layout == Layout::PerAz;
        if lab.pid(g).is_some() != wanted {
            return Err(format!("{g} running: {}", !wanted));
        }
    }
    for zone in ZONES {
        let gw = lab.gw(layout.leader_of(zone));
        let az = zone.az(region);
        let lease = format!("hybrid-gateway-leader-{az}");
        let holder = lease_holder(lab, &lease);
        if holder.as_deref().and_then(|h| lab.gw_of_identity(h)) != Some(gw.name.as_str()) {
            return Err(format!("Lease {lease} held by {holder:?}, not {}", gw.name));
        }
        // lab.sh associates the first table with AZ a's subnet, the second with AZ b's.
        let table = tables.get(zone.index()).copied().unwrap_or("?");
        let target = routes.get(zone.index()).cloned().flatten();
        if target.as_deref() != Some(gw.eni.as_str()) {
            return Err(format!(
                "route table {table} ({az}) -> {target:?}, not {}'s ENI {}",
                gw.name, gw.eni
            ));
        }
        let named: Vec<&str> = cr
            .all
            .iter()
            .filter(|(_, cidr)| cidr == zone.subnet())
            .map(|(tep, _)| tep.as_str())
            .collect();
        if named != [gw.ip.as_str()] {
            return Err(format!(
                "CiliumVTEPConfig endpoints for {}: {named:?}, not [{}] ({})",
                zone.subnet(),
                gw.ip,
                gw.name
            ));
        }
        let host = via(lab.var(zone.host_ns()), lab.var("HYBRID_POD_CIDR"));
        if host != gw.ip {
            return Err(format!(
                "{}'s VPC host routes the hybrid pods via {host}, not {} ({})",
                az, gw.ip, gw.name
            ));
        }
        let node = via(lab.var("NS_NODE"), zone.subnet());
        if node != gw.ip {
            return Err(format!(
                "the hybrid node routes {} via {node}, not {} ({})",
                zone.subnet(),
                gw.ip,
                gw.name
            ));
        }
    }
    Ok(())
}

fn wait_layout(lab: &Lab, obs: &Observer, layout: Layout) {
    let mut last = Ok(());
    let ok = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        last = check_layout(lab, obs, layout);
        last.is_ok()
    });
    if !ok {
        panic!(
            "the shards are not where {} puts them after 60 s: {}\n{}",
            layout.name(),
            last.unwrap_err(),
            lab.logs()
        );
    }
}

// -------------------------------------------------------------------------- iperf3 ---

/// A child process killed on drop (a failed run must not leave iperf3 behind).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nic_tx_bytes(lab: &Lab, gw: &str) -> u64 {
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.gw(gw).ns,
        "cat",
        "/sys/class/net/eth0/statistics/tx_bytes",
    ])
    .trim()
    .parse()
    .expect("tx_bytes")
}

/// One measurement: both zones' hosts at once, `seconds` long.
#[derive(Debug, Clone)]
struct Run {
    /// Received bits/s per zone (iperf3's receiver side).
    bps: [f64; 2],
}

impl Run {
    fn total(&self) -> f64 {
        self.bps.iter().sum()
    }
}

fn iperf(lab: &Lab, s: &Settings, layout: Layout, dir: Direction) -> Run {
    let pod = lab.var("POD_IP");
    let node = lab.var("NS_NODE");
    let mut servers = Vec::new();
    for zone in ZONES {
        let port = zone.port().to_string();
        servers.push(Proc(
            Command::new("ip")
                .args(["netns", "exec", node, "iperf3", "-s", "-1", "-B", pod, "-p"])
                .arg(&port)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting iperf3 -s (is iperf3 installed?)"),
        ));
        let listening = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            sh(&["ip", "netns", "exec", node, "ss", "-Hltn"]).contains(&format!("{pod}:{port}"))
        });
        assert!(listening, "iperf3 server on {pod}:{port} did not listen");
    }
    let before: Vec<u64> = ["gw-a", "gw-b"]
        .iter()
        .map(|g| nic_tx_bytes(lab, g))
        .collect();
    let mut clients = Vec::new();
    for zone in ZONES {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            lab.var(zone.host_ns()),
            "iperf3",
            "-c",
            pod,
        ])
        .args(["-p", &zone.port().to_string()])
        .args(["-t", &s.seconds.to_string()])
        .args(["-P", &s.streams.to_string()])
        .args(["--connect-timeout", "3000", "-J"]);
        if dir == Direction::HybridToVpc {
            c.arg("-R");
        }
        clients.push(Proc(
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting iperf3 -c"),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(s.seconds + 20);
    let mut bps = [0.0; 2];
    let mut bytes = [0u64; 2];
    for (zone, mut client) in ZONES.into_iter().zip(clients) {
        while client.0.try_wait().expect("waiting for iperf3").is_none() {
            assert!(
                Instant::now() < deadline,
                "iperf3 from {:?}'s host did not finish",
                zone
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut text = String::new();
        use std::io::Read;
        client
            .0
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut text)
            .expect("reading iperf3's output");
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("iperf3 ({zone:?}) printed no JSON ({e}): {text}"));
        if let Some(err) = json.get("error") {
            panic!("iperf3 from zone {zone:?}'s host failed: {err}");
        }
        let sum = &json["end"]["sum_received"];
        bps[zone.index()] = sum["bits_per_second"]
            .as_f64()
            .unwrap_or_else(|| panic!("no end.sum_received in iperf3's output: {text}"));
        bytes[zone.index()] = sum["bytes"].as_u64().unwrap_or(0);
    }
    let carried: Vec<u64> = ["gw-a", "gw-b"]
        .iter()
        .zip(&before)
        .map(|(g, b)| nic_tx_bytes(lab, g) - b)
        .collect();
    // Each gateway's NIC must have sent its zones' bytes (data towards the node in VXLAN,
    // or decapsulated towards the VPC host) and not the other zone's: ±VXLAN overhead,
    // ACKs, and a few MB of control traffic (Lease renewals, EC2 reads, tunnel probes).
    const SLACK: u64 = 5_000_000;
    for (i, g) in ["gw-a", "gw-b"].into_iter().enumerate() {
        let expected: u64 = ZONES
            .iter()
            .filter(|z| layout.leader_of(**z) == g)
            .map(|z| bytes[z.index()])
            .sum();
        let got = carried[i];
        let low = expected * 9 / 10;
        let high = expected * 13 / 10 + SLACK;
        assert!(
            got >= low && got <= high,
            "{} {}: {g}'s NIC sent {got} bytes, expected {expected} (its zones' iperf3 bytes; \
             zone a {}, zone b {}): the traffic did not cross the gateways the layout says",
            layout.name(),
            dir.name(),
            bytes[0],
            bytes[1]
        );
    }
    drop(servers);
    Run { bps }
}

// ------------------------------------------------------------------------- results ---

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mbit(bps: f64) -> String {
    format!("{:.0}", bps / 1e6)
}

type Key = (bool, Direction, Layout);

/// Cross-AZ bytes per hour of `bps` crossing once, and what they cost at `price` per GB
/// charged on each side (out of one AZ, into the other).
fn cross_az(bps: f64, price: f64) -> (f64, f64) {
    let gb_per_hour = bps / 8.0 * 3600.0 / 1e9;
    (gb_per_hour, gb_per_hour * price * 2.0)
}

fn main() {
    harness::require_root();
    let s = Settings {
        rounds: env_or("HGW_BENCH_ROUNDS", 3),
        seconds: env_or("HGW_BENCH_SECONDS", 10),
        cap_mbit: env_or("HGW_BENCH_CAP_MBIT", 500),
        streams: env_or("HGW_BENCH_STREAMS", 1),
        traffic_gbit: env_or("HGW_BENCH_TRAFFIC_GBIT", 1.0),
        price: env_or("HGW_BENCH_XAZ_PRICE", 0.01),
    };
    assert!(s.rounds >= 1 && s.seconds >= 2 && s.cap_mbit >= 1 && s.streams >= 1);
    assert!(
        Command::new("iperf3").arg("-v").output().is_ok(),
        "iperf3 is not installed (apt-get install iperf3)"
    );
    let started = Instant::now();
    let load_start = loadavg();
    let lab = Lab::up_with(
        "tput",
        env!("CARGO_BIN_EXE_hybrid-gateway"),
        &[("HGW_LAB_PER_AZ", "1")],
    );
    let obs = Observer::start(&lab, Duration::from_millis(500), Duration::from_millis(500));
    wait_layout(&lab, &obs, Layout::PerAz);

    let mut results: BTreeMap<Key, Vec<Run>> = BTreeMap::new();
    for round in 1..=s.rounds {
        for layout in [Layout::PerAz, Layout::OneGateway] {
            match layout {
                Layout::PerAz if round > 1 => {
                    lab.start("gw-b");
                    wait_layout(&lab, &obs, layout);
                }
                Layout::OneGateway => {
                    lab.run(&["stop", "gw-b"]);
                    wait_layout(&lab, &obs, layout);
                }
                Layout::PerAz => {}
            }
            for capped in [true, false] {
                for g in ["gw-a", "gw-b"] {
                    shape(&lab, g, capped.then_some(s.cap_mbit));
                }
                for dir in [Direction::VpcToHybrid, Direction::HybridToVpc] {
                    // The layout again right before the run: a shard that moved in between
                    // (a lost renewal under load) would make the figure meaningless.
                    if let Err(e) = check_layout(&lab, &obs, layout) {
                        panic!(
                            "before {} {}: {e}\n{}",
                            layout.name(),
                            dir.name(),
                            lab.logs()
                        );
                    }
                    let run = iperf(&lab, &s, layout, dir);
                    check_layout(&lab, &obs, layout).unwrap_or_else(|e| {
                        panic!(
                            "the layout changed during {} {}: {e}\n{}",
                            layout.name(),
                            dir.name(),
                            lab.logs()
                        )
                    });
                    println!(
                        "round {round}  {:<30} {:<13} {:<10} zone a {:>6} + zone b {:>6} = {:>6} Mbit/s   (load {})",
                        layout.name(),
                        dir.name(),
                        if capped { format!("{} Mbit/s cap", s.cap_mbit) } else { "no cap".into() },
                        mbit(run.bps[0]),
                        mbit(run.bps[1]),
                        mbit(run.total()),
                        loadavg()
                    );
                    results.entry((capped, dir, layout)).or_default().push(run);
                }
            }
        }
    }
    // Leave the lab as it started: both gateways up, caps off.
    lab.start("gw-b");
    wait_layout(&lab, &obs, Layout::PerAz);
    for g in ["gw-a", "gw-b"] {
        shape(&lab, g, None);
    }

    let med = |k: Key| median(results[&k].iter().map(Run::total).collect());
    let med_zone = |k: Key, z: Zone| median(results[&k].iter().map(|r| r.bps[z.index()]).collect());
    let range = |k: Key| {
        let v: Vec<f64> = results[&k].iter().map(Run::total).collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{}–{}", mbit(lo), mbit(hi))
    };
    println!(
        "\nper-AZ throughput in the lab: {} round(s), iperf3 {} s, {} TCP stream(s) per AZ host, debug build; {:.0} s in all; load average {} at start, {} at end",
        s.rounds,
        s.seconds,
        s.streams,
        started.elapsed().as_secs_f64(),
        load_start,
        loadavg()
    );
    println!(
        "aggregate Mbit/s, median (min–max) over rounds; zones a + b are the medians of each host's rate"
    );
    let mut failures = Vec::new();
    for dir in [Direction::VpcToHybrid, Direction::HybridToVpc] {
        println!("{}", dir.name());
        for capped in [true, false] {
            for layout in [Layout::PerAz, Layout::OneGateway] {
                let k = (capped, dir, layout);
                println!(
                    "  {:<14} {:<30} {:>6} ({:>11})   zone a {:>6}, zone b {:>6}",
                    if capped {
                        format!("cap {} Mbit/s", s.cap_mbit)
                    } else {
                        "no cap".into()
                    },
                    layout.name(),
                    mbit(med(k)),
                    range(k),
                    mbit(med_zone(k, Zone::A)),
                    mbit(med_zone(k, Zone::B))
                );
            }
        }
        let per_az = med((true, dir, Layout::PerAz));
        let one = med((true, dir, Layout::OneGateway));
        let machine = med((false, dir, Layout::PerAz));
        println!(
            "  with the per-instance cap: per-AZ / one gateway = {:.2}× ({} vs {} Mbit/s; ideal 2× of {} Mbit/s)",
            per_az / one,
            mbit(per_az),
            mbit(one),
            s.cap_mbit
        );
        let cap = s.cap_mbit as f64 * 1e6;
        if machine < 2.0 * cap {
            failures.push(format!(
                "{}: unshaped, the machine carried {} Mbit/s through both gateways, less than twice the {} Mbit/s cap: the cap is not what limits (lower HGW_BENCH_CAP_MBIT)",
                dir.name(),
                mbit(machine),
                s.cap_mbit
            ));
        }
        if one > cap * 1.05 {
            failures.push(format!(
                "{}: one gateway carried {} Mbit/s, over its {} Mbit/s cap: the shaping does not hold",
                dir.name(),
                mbit(one),
                s.cap_mbit
            ));
        }
    }

    // Cost model (README "Per-AZ mode"): in active/standby with the leader in AZ a, every
    // byte of AZ b's hosts crosses an AZ boundary once (host-b → gw-a, gw-a → host-b);
    // per-AZ mode keeps it in AZ b. Charged `price` per GB on each side.
    println!(
        "\ncross-AZ traffic per-AZ mode avoids (active/standby leader in AZ a; AZ b's bytes cross once each; ${:.3}/GB out of one AZ + ${:.3}/GB into the other):",
        s.price, s.price
    );
    for dir in [Direction::VpcToHybrid, Direction::HybridToVpc] {
        let b = med_zone((true, dir, Layout::PerAz), Zone::B);
        let (gb, usd) = cross_az(b, s.price);
        println!(
            "  at the measured per-AZ rate, {}: AZ b's {} Mbit/s of {} → {:.1} GB/h, ${:.2}/h",
            dir.name(),
            mbit(b),
            mbit(med((true, dir, Layout::PerAz))),
            gb,
            usd
        );
    }
    let stated = s.traffic_gbit * 1e9;
    let (gb, usd) = cross_az(stated / 2.0, s.price);
    println!(
        "  at {} Gbit/s between the VPC and the hybrid nodes, two equal AZs (half crosses): {:.0} GB/h, ${:.2}/h ≈ ${:.0}/month (730 h)",
        s.traffic_gbit,
        gb,
        usd,
        usd * 730.0
    );
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}
