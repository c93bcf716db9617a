//! CiliumNode created → its route, ARP and FDB entries in the kernel: latency over 100
//! events, through the real daemon binary and a real kube-apiserver in a namespace.
//! Needs root and the cached apiserver build. Run:
//! `cargo bench --profile dev --bench node_watch_latency` (the dev profile spares a
//! release build of the AWS SDK; the daemon's hot path here is I/O bound).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hybrid_gateway::datapath::Netlink;
use hybrid_gateway::k8s::cilium_nodes;
use kube::api::{DynamicObject, PostParams};
use kube::Api;
use serde_json::json;
use support::k8s::{client, ApiServer};
use support::{veth, Netns};

const EVENTS: usize = 100;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let gw = Netns::new("lgw");
    let peer = Netns::new("lpeer");
    veth(&gw, "u0", "10.99.0.1/24", &peer, "u1", "10.99.0.2/24");
    let server = ApiServer::start_in(Some(&gw));
    let cfg = server.dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nnode_ip = \"10.99.0.1\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"172.16.0.0/12\"]\n[kubernetes]\nkubeconfig = \"{}\"\n",
            server.daemon_kubeconfig().display()
        ),
    )
    .unwrap();
    let _daemon = gw.spawn(
        env!("CARGO_BIN_EXE_hybrid-gateway"),
        &["run", "--config", cfg.to_str().unwrap()],
    );
    let admin_cfg = server.admin_kubeconfig();
    let mut samples = gw.run(|| async {
        let admin = client(&admin_cfg).await;
        let api: Api<DynamicObject> = Api::all_with(admin, &cilium_nodes::api_resource());
        let nl = Netlink::open().unwrap();
        let index = loop {
            if let Some(l) = nl.link("hybrid_vxlan0").await.unwrap() {
                break l.index;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        tokio::time::sleep(Duration::from_secs(2)).await; // first sync and election settle
        let mut samples = Vec::with_capacity(EVENTS);
        for i in 0..EVENTS as u32 {
            let ip = format!("10.100.{}.{}", i / 250, i % 250 + 1);
            let cidr: ipnet::Ipv4Net = format!("172.16.{}.0/24", i).parse().unwrap();
            let mut o = DynamicObject::new(&format!("bench-{i}"), &cilium_nodes::api_resource()).data(json!({
                "spec": {"addresses": [{"type": "InternalIP", "ip": ip}], "ipam": {"podCIDRs": [cidr.to_string()]}}
            }));
            o.metadata.labels = Some(BTreeMap::from([("eks.amazonaws.com/compute-type".to_string(), "hybrid".to_string())]));
            let t = Instant::now();
            api.create(&PostParams::default(), &o).await.unwrap();
            loop {
                let actual = nl.read_vtep(index).await.unwrap();
                let done = actual.routes.iter().any(|r| r.dst == cidr) && actual.fdb.len() == i as usize + 1 && actual.neighbours.len() == i as usize + 1;
                if done {
                    break;
                }
                assert!(t.elapsed() < Duration::from_secs(10), "node {i} never programmed");
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            samples.push(t.elapsed());
        }
        samples
    });
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    println!(
        "CiliumNode create -> kernel entries, {} events: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.90).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
}
