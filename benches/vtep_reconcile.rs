//! Reconcile 5,000 hybrid nodes (20,000 kernel entries + the catch-all: a nexthop object,
//! a route, an ARP and an FDB entry per node) into an empty namespace, then a no-op pass,
//! against `ip -batch` + `bridge -batch` programming the same nodes as the baseline, twice:
//! with routes that name their gateway (the baseline, 15,000 entries) and with the
//! daemon's nexthop objects; then, with the 5,000 present, node events one at a time
//! (a node added, then removed). An event is timed from the CiliumNode reaching the watch
//! (its parse, the watch's node set, the published change) to its entries (nexthop, route,
//! ARP, FDB, filter element) acknowledged by the kernel, three ways in the same run:
//! - `delta`: as the daemon handles it now (the watch's node-level change applied to the
//!   desired state kept across passes);
//! - `rebuild`: the previous way (the watch sorts and copies the whole set, the pass
//!   rebuilds the whole desired state and walks it against the last one);
//! - `full pass`: dump + diff + filter read, as the resync does.
//!
//! Plus the process's RSS.
//! Needs root. Run: `cargo bench --bench vtep_reconcile` (release profile), or
//! `cargo bench --profile dev --config 'profile.dev.package.hybrid-gateway.opt-level=3'
//! --bench vtep_reconcile` (this crate optimised, its dependencies at the dev profile's
//! opt-level 1: no release build of the dependencies; label the figures so).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybrid_gateway::config::Config;
use hybrid_gateway::datapath::{Datapath, HybridNode, Mac, Reconciled, Scope};
use hybrid_gateway::k8s::cilium_nodes::{self, NodeTracker, NodeWatchStats};
use ipnet::Ipv4Net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use serde_json::json;
use support::{veth, Netns};

const NODES: usize = 5_000;
const TRIALS: usize = 3;
/// Node events timed per trial and way (half additions, half removals).
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

/// Node `i` as its CiliumNode, created `i` seconds after the first (so the watch's order
/// is `i`'s).
fn cilium_node(i: usize) -> DynamicObject {
    let n = node(i);
    let mut o = DynamicObject::new(&n.name, &cilium_nodes::api_resource()).data(json!({
        "spec": {
            "addresses": [{"type": "InternalIP", "ip": n.ip.to_string()}],
            "ipam": {"podCIDRs": n.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>()},
        }
    }));
    o.metadata.creation_timestamp = Some(Time(
        jiff::Timestamp::from_second(1_780_000_000 + i as i64).unwrap(),
    ));
    o
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
    /// The cold pass's and the median no-op pass's steps, for the trial line.
    cold_steps: String,
    noop_steps: String,
    /// CiliumNode event → entries in the kernel, as the daemon handles it now.
    events: Vec<Duration>,
    /// The watch's share of `events` (parse, ordered set, publication).
    watch: Vec<Duration>,
    /// Where each of `events` went: the watch, the pass's steps and requests, and the
    /// rest (the pass returned → the bench resumed).
    breakdown: Vec<Breakdown>,
    /// The same events the previous way: whole set sorted and copied, desired state
    /// rebuilt and walked.
    events_rebuild: Vec<Duration>,
    /// The same events handled by full passes (dump, diff, filter read).
    events_full: Vec<Duration>,
}

/// One event's time by step: `(step, time)`, steps summed when a pass ran one twice.
struct Breakdown {
    total: Duration,
    added: bool,
    steps: Vec<(String, Duration)>,
}

impl Breakdown {
    fn of(total: Duration, watch: Duration, r: &Reconciled, added: bool) -> Self {
        let mut steps: Vec<(String, Duration)> = vec![("watcher step".into(), watch)];
        let mut add = |name: String, d: Duration| match steps.iter_mut().find(|(n, _)| *n == name) {
            Some((_, sum)) => *sum += d,
            None => steps.push((name, d)),
        };
        for (step, d) in &r.times.steps {
            add(format!("pass: {step}"), *d);
        }
        // Requests of one phase overlap: the slowest of each kind is what it cost.
        let mut slowest: BTreeMap<&str, Duration> = BTreeMap::new();
        for (kind, d) in &r.times.requests {
            let e = slowest.entry(kind).or_default();
            *e = (*e).max(*d);
        }
        for (kind, d) in slowest {
            add(format!("request: {kind}"), d);
        }
        add(
            "pass returned -> caller resumed".into(),
            total.saturating_sub(watch + r.elapsed),
        );
        Breakdown {
            total,
            added,
            steps,
        }
    }
}

/// p50 / p99 / max of every step over `events`, then the slowest 1 % of events step by
/// step: what the tail is made of.
fn print_breakdown(events: &[Breakdown]) {
    let mut names: Vec<&str> = Vec::new();
    for e in events {
        for (n, _) in &e.steps {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    println!(
        "per-event steps over {} events, ms (a step an event did not run counts 0; a request: the slowest of its kind in the event):",
        events.len()
    );
    println!(
        "  {:<40} {:>8} {:>8} {:>8} | {:>9} {:>9}",
        "step", "p50", "p99", "max", "p99 adds", "p99 rems"
    );
    let step = |e: &Breakdown, name: &str| {
        e.steps
            .iter()
            .find(|(n, _)| n == name)
            .map_or(Duration::ZERO, |(_, d)| *d)
    };
    for name in &names {
        let all: Vec<Duration> = events.iter().map(|e| step(e, name)).collect();
        let of = |added: bool| -> Vec<Duration> {
            events
                .iter()
                .filter(|e| e.added == added)
                .map(|e| step(e, name))
                .collect()
        };
        println!(
            "  {:<40} {:>8.3} {:>8.3} {:>8.3} | {:>9.3} {:>9.3}",
            name,
            ms(percentile(&all, 0.5)),
            ms(percentile(&all, 0.99)),
            ms(percentile(&all, 1.0)),
            ms(percentile(&of(true), 0.99)),
            ms(percentile(&of(false), 0.99)),
        );
    }
    let mut slow: Vec<&Breakdown> = events.iter().collect();
    slow.sort_by_key(|e| std::cmp::Reverse(e.total));
    let n = events.len().div_ceil(100);
    println!("the slowest {n} events, steps over 0.5 ms:");
    for e in &slow[..n] {
        let big: Vec<String> = e
            .steps
            .iter()
            .filter(|(_, d)| *d >= Duration::from_micros(500))
            .map(|(n, d)| format!("{n} {:.2}", ms(*d)))
            .collect();
        let kind = if e.added { "add" } else { "remove" };
        println!("  {:.2} ms ({kind}): {}", ms(e.total), big.join(", "));
    }
}

/// The previous watch's publication: every usable node sorted by (creation, name) and
/// cloned into a fresh list.
fn sorted_copy(nodes: &BTreeMap<String, (jiff::Timestamp, HybridNode)>) -> Arc<Vec<HybridNode>> {
    let mut ordered: BTreeMap<(jiff::Timestamp, &str), &HybridNode> = BTreeMap::new();
    for (name, (created, node)) in nodes {
        ordered.insert((*created, name), node);
    }
    Arc::new(ordered.into_values().cloned().collect())
}

/// Event `e` of the series: even ones add a node beyond the 5,000, odd ones remove it again.
fn node_event(e: usize) -> Event<DynamicObject> {
    let obj = cilium_node(NODES + e / 2 * 2);
    if e % 2 == 0 {
        Event::Apply(obj)
    } else {
        Event::Delete(obj)
    }
}

/// Our reconciler: the cold pass, no-op passes, then node events with 5,000 nodes present.
fn ours() -> Ours {
    let (gw, _peer) = gateway();
    let cfg = config();
    gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, GW_IP.parse().unwrap()).await.unwrap();
        let pods = &cfg.gateway.hybrid_pod_cidrs;
        // The watch lists the 5,000 (not timed: that is the API's and the parse's time).
        let mut tracker = NodeTracker::new(Arc::new(NodeWatchStats::default()));
        tracker.apply(Event::Init);
        for i in 0..NODES {
            tracker.apply(Event::InitApply(cilium_node(i)));
        }
        let listed = tracker
            .apply(Event::InitDone)
            .expect("the first list publishes");
        let cold = dp.reconcile_set(&listed, pods, Scope::Full).await.unwrap();
        assert!(
            cold.report.errors.is_empty(),
            "{:?}",
            &cold.report.errors[..1]
        );
        let mut noops = Vec::new();
        for _ in 0..5 {
            let r = dp.reconcile_set(&listed, pods, Scope::Full).await.unwrap();
            assert_eq!(r.report.changes(), 0, "no-op pass changed something");
            noops.push((r.elapsed, steps(&r)));
        }
        noops.sort_by_key(|(d, _)| *d);
        // Now: the watch's change, applied to the state the previous pass kept.
        let (mut events, mut watch) = (Vec::with_capacity(EVENTS), Vec::with_capacity(EVENTS));
        let mut breakdown = Vec::with_capacity(EVENTS);
        for e in 0..EVENTS {
            let event = node_event(e);
            let t = Instant::now();
            let published = tracker.apply(event).expect("a node set change");
            let w = t.elapsed();
            let r = dp
                .reconcile_set(&published, pods, Scope::Changes)
                .await
                .unwrap();
            let total = t.elapsed();
            events.push(total);
            watch.push(w);
            breakdown.push(Breakdown::of(total, w, &r, e % 2 == 0));
            assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
            assert_eq!(
                r.report.changes(),
                4,
                "one node's route, ARP, FDB entry and nexthop"
            );
        }
        // Before: the whole set sorted and copied per event, the desired state rebuilt.
        let mut by_name: BTreeMap<String, (jiff::Timestamp, HybridNode)> = (0..NODES)
            .map(|i| {
                let n = node(i);
                let t = jiff::Timestamp::from_second(1_780_000_000 + i as i64).unwrap();
                (n.name.clone(), (t, n))
            })
            .collect();
        let all = sorted_copy(&by_name);
        dp.reconcile_scoped(&all, pods, Scope::Full).await.unwrap();
        let events_rebuild = rebuild_events(&dp, pods, &mut by_name).await;
        // The resync's way, for comparison.
        let mut events_full = Vec::with_capacity(EVENTS);
        for e in 0..EVENTS {
            let event = node_event(e);
            let t = Instant::now();
            let published = tracker.apply(event).expect("a node set change");
            let r = dp
                .reconcile_set(&published, pods, Scope::Full)
                .await
                .unwrap();
            events_full.push(t.elapsed());
            assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
            assert_eq!(
                r.report.changes(),
                4,
                "one node's route, ARP, FDB entry and nexthop"
            );
        }
        Ours {
            cold: cold.elapsed,
            noop: noops[2].0,
            entries: cold.report.changes(),
            cold_steps: steps(&cold),
            noop_steps: noops[2].1.clone(),
            events,
            watch,
            breakdown,
            events_rebuild,
            events_full,
        }
    })
}

/// A pass's steps (not its requests), for a trial line.
fn steps(r: &Reconciled) -> String {
    r.times
        .steps
        .iter()
        .map(|(s, d)| format!("{s} {:.1}", ms(*d)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The previous way of handling the same events: per event, the whole set sorted and
/// copied (as the watch published it), then a pass that rebuilds the desired state and
/// walks it against the last one.
async fn rebuild_events(
    dp: &Datapath,
    pods: &[Ipv4Net],
    by_name: &mut BTreeMap<String, (jiff::Timestamp, HybridNode)>,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(EVENTS);
    for e in 0..EVENTS {
        let n = node(NODES + e / 2 * 2);
        let t = Instant::now();
        if e % 2 == 0 {
            let created = jiff::Timestamp::from_second(1_780_000_000 + (NODES + e) as i64).unwrap();
            by_name.insert(n.name.clone(), (created, n));
        } else {
            by_name.remove(&n.name);
        }
        let published = sorted_copy(by_name);
        let r = dp
            .reconcile_scoped(&published, pods, Scope::Changes)
            .await
            .unwrap();
        samples.push(t.elapsed());
        assert!(r.report.errors.is_empty(), "{:?}", r.report.errors);
        assert_eq!(
            r.report.changes(),
            4,
            "one node's route, ARP, FDB entry and nexthop"
        );
    }
    samples
}

/// Baseline: the same entries written by iproute2's batch mode on a device made by `ip`.
/// `nexthops`: routes by nexthop object, as the daemon writes them; otherwise routes that
/// name their gateway (the baseline the issue set, and what the daemon wrote before).
fn ip_batch(nodes: &[HybridNode], nexthops: bool) -> Duration {
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
        let id = u32::from(n.ip);
        if nexthops {
            ip_cmds.push_str(&format!(
                "nexthop replace id {id} via {} dev hybrid_vxlan0 onlink proto 158\n",
                n.ip
            ));
        }
        for c in &n.pod_cidrs {
            ip_cmds.push_str(&if nexthops {
                format!("route replace {c} nhid {id} proto 158\n")
            } else {
                format!(
                    "route replace {c} via {} dev hybrid_vxlan0 onlink proto 158\n",
                    n.ip
                )
            });
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
    let mut base_nh = Vec::new();
    let (mut events, mut watch, mut events_rebuild, mut events_full) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut breakdown = Vec::new();
    for trial in 0..TRIALS {
        // Alternate which runs first so neither profits from a warmer kernel.
        let (b, bn, o) = if trial % 2 == 0 {
            let b = ip_batch(&nodes, false);
            let bn = ip_batch(&nodes, true);
            (b, bn, ours())
        } else {
            let o = ours();
            let bn = ip_batch(&nodes, true);
            (ip_batch(&nodes, false), bn, o)
        };
        println!(
            "trial {trial}: hybrid-gateway cold {:>7.1} ms ({} entries), no-op {:>6.1} ms | ip -batch + bridge -batch {:>7.1} ms (gateway routes), {:>7.1} ms (nexthop objects) | node event p50 {:.2} ms (rebuild {:.2} ms, full pass {:.1} ms)",
            ms(o.cold),
            o.entries,
            ms(o.noop),
            ms(b),
            ms(bn),
            ms(percentile(&o.events, 0.5)),
            ms(percentile(&o.events_rebuild, 0.5)),
            ms(percentile(&o.events_full, 0.5)),
        );
        println!("  cold pass steps, ms: {}", o.cold_steps);
        println!("  no-op pass steps, ms: {}", o.noop_steps);
        cold.push(o.cold);
        noop.push(o.noop);
        base.push(b);
        base_nh.push(bn);
        events.extend(o.events);
        watch.extend(o.watch);
        breakdown.extend(o.breakdown);
        events_rebuild.extend(o.events_rebuild);
        events_full.extend(o.events_full);
    }
    cold.sort();
    noop.sort();
    base.sort();
    base_nh.sort();
    let (c, n, b, bn) = (
        cold[TRIALS / 2],
        noop[TRIALS / 2],
        base[TRIALS / 2],
        base_nh[TRIALS / 2],
    );
    println!(
        "median over {TRIALS} trials, {NODES} nodes: cold {:.1} ms, ip-batch baseline {:.1} ms, ratio {:.2}x (target <= 1x); no-op pass {:.1} ms (target <= 100 ms)",
        ms(c),
        ms(b),
        c.as_secs_f64() / b.as_secs_f64(),
        ms(n)
    );
    println!(
        "  against ip -batch writing the same nexthop objects and routes by nhid: {:.1} ms, ratio {:.2}x",
        ms(bn),
        c.as_secs_f64() / bn.as_secs_f64()
    );
    for (label, samples) in [
        ("node event (delta, now)", &events),
        ("  of which the watch", &watch),
        ("same events, rebuild (before)", &events_rebuild),
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
    print_breakdown(&breakdown);
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
