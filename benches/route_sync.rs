//! Route-table convergence against moto: 20 tables × 4 hybrid pod CIDRs, from scratch, a
//! no-op resync and a leader change (every route moves to the other gateway's ENI), for
//! our reconciler and for the reference gateway's method (per table × CIDR, serially: a
//! filtered DescribeRouteTables, then CreateRoute or ReplaceRoute).
//!
//! `cargo bench --bench route_sync` (needs `tests/aws/peers.sh install`; starts and stops
//! its own peers). API calls are counted by the fault proxy, i.e. what EC2 would bill
//! against the account's request quota. Not a test: nothing is asserted.

#[path = "../tests/support/aws.rs"]
mod peers;

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use hybrid_gateway::aws::{sdk_config, RouteTables, RouteTablesSettings, SdkSettings};
use hybrid_gateway::config::{RouteTableTag, Takeover};
use ipnet::Ipv4Net;
use peers::Peers;
use serde_json::Value;

const TABLES: usize = 20;
const RUNS: usize = 3;
const CIDRS: [&str; 4] = [
    "192.168.32.0/23",
    "192.168.34.0/23",
    "192.168.36.0/23",
    "192.168.38.0/23",
];

struct Sample {
    calls: u64,
    wall: Duration,
}

fn main() {
    let peers = Peers::start();
    peers.export_sdk_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let desired: Vec<Ipv4Net> = CIDRS.iter().map(|c| c.parse().unwrap()).collect();

    let phases = ["from scratch", "no-op resync", "leader change"];
    let mut ours: Vec<Vec<Sample>> = phases.iter().map(|_| Vec::new()).collect();
    let mut reference: Vec<Vec<Sample>> = phases.iter().map(|_| Vec::new()).collect();

    rt.block_on(async {
        let ec2 = aws_sdk_ec2::Client::new(&sdk_config("us-west-2", &SdkSettings::default()).await);
        for run in 0..RUNS {
            // Ours, on a world of its own.
            let w = peers.seed(&["--route-tables", &TABLES.to_string(), "--no-lock-table"]);
            let tag = tag_tables(
                &ec2,
                &tables(&w),
                &format!("bench-{run}-{}", instance(&w, "gw-a")),
            )
            .await;
            let mut s = RouteTablesSettings::from_config(&Default::default());
            s.route_table_tag = Some(tag);
            s.takeover = Takeover::Owned;
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            let gw_a = RouteTables::new(ec2.clone(), s.clone(), instance(&w, "gw-a"));
            let gw_b = RouteTables::new(ec2.clone(), s, instance(&w, "gw-b"));
            for (phase, (rec, eni)) in [
                (&gw_a, eni(&w, "gw-a")),
                (&gw_a, eni(&w, "gw-a")),
                (&gw_b, eni(&w, "gw-b")),
            ]
            .into_iter()
            .enumerate()
            {
                peers.reset();
                let t = Instant::now();
                let r = rec.sync(&desired, &eni, &far).await.expect("sync");
                let wall = t.elapsed();
                assert!(r.converged(), "{r:?}");
                ours[phase].push(Sample {
                    calls: total(&peers),
                    wall,
                });
            }

            // The reference's method, on another world.
            let w = peers.seed(&["--route-tables", &TABLES.to_string(), "--no-lock-table"]);
            for (phase, eni) in [eni(&w, "gw-a"), eni(&w, "gw-a"), eni(&w, "gw-b")]
                .into_iter()
                .enumerate()
            {
                peers.reset();
                let t = Instant::now();
                reference_sync(&ec2, &tables(&w), &CIDRS, &eni).await;
                let wall = t.elapsed();
                reference[phase].push(Sample {
                    calls: total(&peers),
                    wall,
                });
            }
        }
    });

    println!(
        "route_sync: {TABLES} tables × {} CIDRs against moto, median of {RUNS} runs",
        CIDRS.len()
    );
    println!(
        "{:<16} {:>12} {:>12}   {:>16} {:>16}",
        "phase", "ours calls", "ours wall", "reference calls", "reference wall"
    );
    for (i, phase) in phases.iter().enumerate() {
        let (oc, ow) = median(&ours[i]);
        let (rc, rw) = median(&reference[i]);
        println!(
            "{phase:<16} {oc:>12} {:>12} {rc:>16} {:>16}",
            fmt(ow),
            fmt(rw)
        );
    }
    drop(peers);
}

/// The reference gateway's loop: for each table, for each CIDR, one filtered read, then a
/// write whether or not the route is already right.
async fn reference_sync(ec2: &aws_sdk_ec2::Client, tables: &[String], cidrs: &[&str], eni: &str) {
    for t in tables {
        for c in cidrs {
            let resp = ec2
                .describe_route_tables()
                .filters(Filter::builder().name("route-table-id").values(t).build())
                .filters(
                    Filter::builder()
                        .name("route.destination-cidr-block")
                        .values(*c)
                        .build(),
                )
                .send()
                .await
                .expect("describe");
            let exists = resp
                .route_tables()
                .iter()
                .flat_map(|rt| rt.routes())
                .any(|r| r.destination_cidr_block() == Some(*c));
            if exists {
                ec2.replace_route()
                    .route_table_id(t)
                    .destination_cidr_block(*c)
                    .network_interface_id(eni)
                    .send()
                    .await
                    .expect("replace");
            } else {
                ec2.create_route()
                    .route_table_id(t)
                    .destination_cidr_block(*c)
                    .network_interface_id(eni)
                    .send()
                    .await
                    .expect("create");
            }
        }
    }
}

async fn tag_tables(ec2: &aws_sdk_ec2::Client, tables: &[String], value: &str) -> RouteTableTag {
    let tag = RouteTableTag {
        key: "hgw-bench".into(),
        value: value.into(),
    };
    ec2.create_tags()
        .set_resources(Some(tables.to_vec()))
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(&tag.key)
                .value(&tag.value)
                .build(),
        )
        .send()
        .await
        .expect("tag");
    tag
}

fn tables(w: &Value) -> Vec<String> {
    w["route_tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}
fn instance(w: &Value, name: &str) -> String {
    w["instances"][name]["instance_id"]
        .as_str()
        .unwrap()
        .to_string()
}
fn eni(w: &Value, name: &str) -> String {
    w["instances"][name]["eni_id"].as_str().unwrap().to_string()
}

/// Every EC2 call the proxy saw except our own CreateTags setup (made before the reset).
fn total(peers: &Peers) -> u64 {
    peers.calls().values().sum()
}

fn median(samples: &[Sample]) -> (u64, Duration) {
    let mut c: Vec<u64> = samples.iter().map(|s| s.calls).collect();
    let mut w: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    c.sort_unstable();
    w.sort_unstable();
    (c[c.len() / 2], w[w.len() / 2])
}

fn fmt(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}
