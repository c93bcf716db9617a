//! Reconcile 5,000 hybrid nodes (15,000 kernel entries + the catch-all) into an empty
//! namespace, then a no-op pass, against `ip -batch` + `bridge -batch` programming the
//! same entries as the baseline; then, with the 5,000 present, node events one at a time
//! (a node added, then removed): the time from the event reaching the datapath to its
//! entries (route, ARP, FDB, filter element) acknowledged by the kernel, as a node event is
//! handled (delta against the last applied state) and, for comparison, as a full pass
//! (dump + diff + filter read) handles it. Plus the process's RSS.
//! Needs root. Run: `cargo bench --bench vtep_reconcile` (release profile), or
//! `cargo bench --profile dev --bench vtep_reconcile` (no release build of the deps).

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use hybrid_gateway::config::Config;
use hybrid_gateway::datapath::{Datapath, HybridNode, Mac, Scope};
use ipnet::Ipv4Net;
use support::{veth, Netns};

const NODES: usize = 5_000;
const TRIALS: usize = 3;
/// Node events timed per trial (half additions, half removals).
const EVENTS: usize = 200;
const GW_IP: &str = "10.99.0.1";

fn nodes() -> Vec<HybridNode> {
    (0..NODES).map(node).collect()
}

/// Node `i`: 10.100.0.1 + i, one /26 inside 172.16.0.0/12.
fn node(i: usize) -> HybridNode {
    let i = i as u32;
    HybridNode {
        name: format!("hybrid-{i}"),
        ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + i),
        pod_cidrs: vec![Ipv4Net::new(
            Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i * 64),
            26,
        )
        .unwrap()],
        probe_ip: None,
    }
}

fn config() -> Config {
    let text = format!("[gateway]\nnode_ip = \"{GW_IP}\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"172.16.0.0/12\"]\n");
    Config::parse(Path::new("bench.toml"), &text).unwrap()
}

fn gateway() -> (Netns, Netns) {
    let gw = Netns::new("bgw");
    let peer = Netns::new("bpeer");
    veth(&gw, "u0", "10.99.0.1/24", &peer, "u1", "10.99.0.2/24");
    (gw, peer)
}

/// What one trial of our reconciler measured.
struct Ours {
    cold: Duration,
    noop: Duration,
    entries: usize,
    /// Node event → entries in the kernel, as the daemon handles it (delta).
    events: Vec<Duration>,
    /// The same events handled by full passes (dump, diff, filter read), as before.
    events_full: Vec<Duration>,
}

/// Our reconciler: the cold pass, no-op passes, then node events with 5,000 nodes present.
fn ours(nodes: &[HybridNode]) -> Ours {
    let (gw, _peer) = gateway();
    let cfg = config();
    gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, GW_IP.parse().unwrap()).await.unwrap();
        let pods = &cfg.gateway.hybrid_pod_cidrs;
        let cold = dp.reconcile(nodes, pods).await.unwrap();
        assert!(
            cold.report.errors.is_empty(),
            "{:?}",
            &cold.report.errors[..1]
        );
        let mut noops = Vec::new();
        for _ in 0..5 {
            let r = dp.reconcile(nodes, pods).await.unwrap();
            assert_eq!(r.report.changes(), 0, "no-op pass changed something");
            noops.push(r.elapsed);
        }
        noops.sort();
        let timed = |scope: Scope| {
            let dp = &dp;
            async move {
                let mut set = nodes.to_vec();
                let mut samples = Vec::with_capacity(EVENTS);
                for e in 0..EVENTS {
                    // Even events add a node, odd ones remove it again.
                    if e % 2 == 0 {
                        set.push(node(NODES + e));
                    } else {
                        set.pop();
                    }
                    // The watch publishes a fresh set per event; building it is its cost.
                    let published = std::sync::Arc::new(set.clone());
                    let t = Instant::now();
                    let r = dp.reconcile_scoped(&published, pods, scope).await.unwrap();
                    samples.push(t.elapsed());
                    assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
                    assert_eq!(r.report.changes(), 3, "one node's route, ARP and FDB entry");
                }
                samples
            }
        };
        // A delta pass needs a state the process applied; the last no-op pass left it.
        let events = timed(Scope::Changes).await;
        let events_full = timed(Scope::Full).await;
        Ours {
            cold: cold.elapsed,
            noop: noops[2],
            entries: cold.report.changes(),
            events,
            events_full,
        }
    })
}

/// Baseline: the same entries written by iproute2's batch mode on a device made by `ip`.
fn ip_batch(nodes: &[HybridNode]) -> Duration {
    let (gw, _peer) = gateway();
    let mac = Mac::for_gateway(GW_IP.parse().unwrap());
    gw.sh(&format!(
        "ip link add hybrid_vxlan0 address {mac} mtu 1450 type vxlan id 2 dstport 8472 local {GW_IP} nolearning && ip link set hybrid_vxlan0 up"
    ));
    let dir = std::env::temp_dir().join(format!("hgw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ip_cmds = String::from("route add unreachable 172.16.0.0/12 proto 158 metric 4242\n");
    let mut fdb_cmds = String::new();
    for n in nodes {
        let m = Mac::for_node(n.ip);
        ip_cmds.push_str(&format!(
            "neigh replace {} lladdr {m} dev hybrid_vxlan0 nud permanent\n",
            n.ip
        ));
        for c in &n.pod_cidrs {
            ip_cmds.push_str(&format!(
                "route replace {c} via {} dev hybrid_vxlan0 onlink proto 158\n",
                n.ip
            ));
        }
        fdb_cmds.push_str(&format!(
            "fdb replace {m} dst {} dev hybrid_vxlan0 self permanent\n",
            n.ip
        ));
    }
    let (ip_file, fdb_file) = (dir.join("ip.batch"), dir.join("fdb.batch"));
    std::fs::write(&ip_file, ip_cmds).unwrap();
    std::fs::write(&fdb_file, fdb_cmds).unwrap();
    let t = Instant::now();
    gw.sh(&format!(
        "ip -batch {} && bridge -batch {}",
        ip_file.display(),
        fdb_file.display()
    ));
    let elapsed = t.elapsed();
    let routes = gw.sh("ip route show dev hybrid_vxlan0 | wc -l");
    assert_eq!(
        routes.trim(),
        NODES.to_string(),
        "baseline did not program every route"
    );
    std::fs::remove_dir_all(&dir).ok();
    elapsed
}

fn main() {
    // `cargo bench` passes --bench; anything else (e.g. `cargo test --benches`) just checks it builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let nodes = nodes();
    let mut cold = Vec::new();
    let mut noop = Vec::new();
    let mut base = Vec::new();
    let mut events = Vec::new();
    let mut events_full = Vec::new();
    for trial in 0..TRIALS {
        // Alternate which runs first so neither profits from a warmer kernel.
        let (b, o) = if trial % 2 == 0 {
            let b = ip_batch(&nodes);
            (b, ours(&nodes))
        } else {
            let o = ours(&nodes);
            (ip_batch(&nodes), o)
        };
        println!(
            "trial {trial}: hybrid-gateway cold {:>7.1} ms ({} entries), no-op {:>6.1} ms | ip -batch + bridge -batch {:>7.1} ms | node event p50 {:.2} ms (full pass {:.1} ms)",
            ms(o.cold),
            o.entries,
            ms(o.noop),
            ms(b),
            ms(percentile(&o.events, 0.5)),
            ms(percentile(&o.events_full, 0.5)),
        );
        cold.push(o.cold);
        noop.push(o.noop);
        base.push(b);
        events.extend(o.events);
        events_full.extend(o.events_full);
    }
    cold.sort();
    noop.sort();
    base.sort();
    let (c, n, b) = (cold[TRIALS / 2], noop[TRIALS / 2], base[TRIALS / 2]);
    println!(
        "median over {TRIALS} trials, {NODES} nodes: cold {:.1} ms, ip-batch baseline {:.1} ms, ratio {:.2}x (target <= 1x); no-op pass {:.1} ms (target <= 100 ms)",
        ms(c),
        ms(b),
        c.as_secs_f64() / b.as_secs_f64(),
        ms(n)
    );
    for (label, samples) in [
        ("node event (delta)", &events),
        ("same events as full passes", &events_full),
    ] {
        println!(
            "{label}, {} events with {NODES} nodes present: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
            samples.len(),
            ms(percentile(samples, 0.5)),
            ms(percentile(samples, 0.99)),
            ms(percentile(samples, 1.0)),
            if label.starts_with("node") { " (target p99 <= 10 ms)" } else { "" },
        );
    }
    println!("RSS {}", rss());
}

/// The `p` quantile (0..=1) of `samples`.
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s[((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1]
}

/// This process's resident set now and at its peak (it holds the 5,000 nodes, the
/// reconciler and the baseline's command files).
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    format!("{} (peak {})", field("VmRSS:"), field("VmHWM:"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
