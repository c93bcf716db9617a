//! Reconcile 5,000 hybrid nodes (15,000 kernel entries + the catch-all) into an empty
//! namespace, then a no-op pass, against `ip -batch` + `bridge -batch` programming the
//! same entries as the baseline. Needs root. Run: `cargo bench --bench vtep_reconcile`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use hybrid_gateway::config::Config;
use hybrid_gateway::datapath::{Datapath, HybridNode, Mac};
use ipnet::Ipv4Net;
use support::{veth, Netns};

const NODES: usize = 5_000;
const TRIALS: usize = 3;
const GW_IP: &str = "10.99.0.1";

fn nodes() -> Vec<HybridNode> {
    (0..NODES)
        .map(|i| {
            let i = i as u32;
            HybridNode {
                name: format!("hybrid-{i}"),
                ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 1)) + i),
                // One /26 each, inside 172.16.0.0/12.
                pod_cidrs: vec![Ipv4Net::new(
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i * 64),
                    26,
                )
                .unwrap()],
                probe_ip: None,
            }
        })
        .collect()
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

/// Our reconciler: (cold pass, median no-op pass, entries applied).
fn ours(nodes: &[HybridNode]) -> (Duration, Duration, usize) {
    let (gw, _peer) = gateway();
    let cfg = config();
    gw.run(|| async {
        let (dp, _) = Datapath::setup(&cfg, GW_IP.parse().unwrap()).await.unwrap();
        let cold = dp
            .reconcile(nodes, &cfg.gateway.hybrid_pod_cidrs)
            .await
            .unwrap();
        assert!(
            cold.report.errors.is_empty(),
            "{:?}",
            &cold.report.errors[..1]
        );
        let mut noops = Vec::new();
        for _ in 0..5 {
            let r = dp
                .reconcile(nodes, &cfg.gateway.hybrid_pod_cidrs)
                .await
                .unwrap();
            assert_eq!(r.report.changes(), 0, "no-op pass changed something");
            noops.push(r.elapsed);
        }
        noops.sort();
        (cold.elapsed, noops[2], cold.report.changes())
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
    for trial in 0..TRIALS {
        // Alternate which runs first so neither profits from a warmer kernel.
        let (b, (c, n, entries)) = if trial % 2 == 0 {
            let b = ip_batch(&nodes);
            (b, ours(&nodes))
        } else {
            let o = ours(&nodes);
            (ip_batch(&nodes), o)
        };
        println!(
            "trial {trial}: hybrid-gateway cold {:>7.1} ms ({entries} entries), no-op {:>6.1} ms | ip -batch + bridge -batch {:>7.1} ms",
            ms(c),
            ms(n),
            ms(b)
        );
        cold.push(c);
        noop.push(n);
        base.push(b);
    }
    cold.sort();
    noop.sort();
    base.sort();
    let (c, n, b) = (cold[TRIALS / 2], noop[TRIALS / 2], base[TRIALS / 2]);
    println!(
        "median over {TRIALS} trials, {NODES} nodes: cold {:.1} ms, ip-batch baseline {:.1} ms, ratio {:.2}x (target <= 1.5x); no-op pass {:.1} ms (target <= 100 ms)",
        ms(c),
        ms(b),
        c.as_secs_f64() / b.as_secs_f64(),
        ms(n)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
