//! `systemctl reload` against the running daemon in the local lab (`tests/lab/lab.sh`):
//! two gateways, the real kube-apiserver, moto, DynamoDB Local and IMDS. Adding the route
//! table selection by reload must start VPC route sync on the leader, and removing it must
//! stop it; the effect is read from moto's route tables, not from the daemon.
//!
//! Needs root and the peers of `tests/k8s/apiserver.sh` and `tests/aws/peers.sh`.

#[path = "lab/harness.rs"]
mod harness;

use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Lab, Observer, GATEWAYS};

/// The lab's `aws.resync_interval`: a managing leader repairs a route within this.
const RESYNC: Duration = Duration::from_secs(10);

/// Runs a boto3 snippet against moto from inside the lab, with `ec2`, `cidr` and `tables`
/// defined.
fn moto(lab: &Lab, body: &str) {
    let script = format!(
        "import sys, boto3\nurl, region, cidr, *tables = sys.argv[1:]\n\
         ec2 = boto3.client('ec2', endpoint_url=url, region_name=region, aws_access_key_id='testing', aws_secret_access_key='testing')\n{body}\n"
    );
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        lab.var("NS_CP"),
        lab.var("PEERS_PYTHON"),
        "-c",
    ])
    .arg(script)
    .args([
        lab.var("MOTO_URL"),
        lab.var("AWS_REGION"),
        lab.var("HYBRID_POD_CIDR"),
    ])
    .args(lab.var("ROUTE_TABLES").split_whitespace());
    let out = cmd.output().expect("running python against moto");
    assert!(
        out.status.success(),
        "moto script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the hybrid pod CIDR's route from every managed table.
fn delete_routes(lab: &Lab) {
    moto(
        lab,
        "for t in tables:\n    try:\n        ec2.delete_route(RouteTableId=t, DestinationCidrBlock=cidr)\n    except Exception:\n        pass",
    );
}

/// Rewrites `line` (the config's route table selection) in or out of every gateway's file.
fn set_selection(lab: &Lab, line: &str, present: bool) {
    for g in GATEWAYS {
        let path = lab.gw(g).config;
        let text = std::fs::read_to_string(&path).unwrap();
        let without: String = text
            .lines()
            .filter(|l| *l != line)
            .map(|l| format!("{l}\n"))
            .collect();
        let new = if present {
            without.replace("[aws]\n", &format!("[aws]\n{line}\n"))
        } else {
            without
        };
        std::fs::write(&path, new).unwrap();
    }
}

#[test]
fn reload_adding_or_removing_route_tables_starts_or_stops_route_sync() {
    let lab = Lab::up("rl", env!("CARGO_BIN_EXE_hybrid-gateway"));
    let text = std::fs::read_to_string(lab.gw("gw-a").config).unwrap();
    let selection = text
        .lines()
        .find(|l| l.starts_with("route_table_tag"))
        .expect("the lab manages its tables by tag")
        .to_string();

    // Both gateways start without route tables; the routes the lab set up are gone.
    for g in GATEWAYS {
        lab.run(&["stop", g]);
    }
    set_selection(&lab, &selection, false);
    delete_routes(&lab);
    for g in GATEWAYS {
        lab.start(g);
    }
    let obs = Observer::start(&lab, Duration::from_millis(100), Duration::from_millis(100));
    let leader = obs
        .wait_holder(&lab, Duration::from_secs(30))
        .expect("no leader");
    let eni = lab.gw(leader).eni;
    // The leader acts (its CiliumVTEPConfig is there) but leaves the VPC alone.
    let g = lab.gw(leader);
    assert!(
        harness::wait_until(Duration::from_secs(15), Duration::from_millis(50), || obs
            .cr_at(Instant::now() - Duration::from_secs(60), &g.ip, &g.vtep_mac)
            .is_some()),
        "the leader never wrote its CiliumVTEPConfig"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        obs.routes().iter().all(Option::is_none),
        "routes written without route tables configured: {:?}",
        obs.routes()
    );

    // Added by reload: the leader takes the tables over within a resync.
    set_selection(&lab, &selection, true);
    let reloaded = Instant::now();
    for g in GATEWAYS {
        lab.signal(g, libc::SIGHUP);
    }
    let took = harness::wait_until(RESYNC, Duration::from_millis(50), || {
        obs.routes_at(reloaded, &eni).is_some()
    });
    assert!(
        took,
        "a reload adding {selection:?} did not start route sync: routes {:?}\n{}",
        obs.routes(),
        lab.logs()
    );
    println!(
        "route sync started {:?} after the reload",
        obs.routes_at(reloaded, &eni).map(|t| t - reloaded)
    );

    // Removed by reload: deleted routes stay deleted past a resync.
    set_selection(&lab, &selection, false);
    for g in GATEWAYS {
        lab.signal(g, libc::SIGHUP);
    }
    std::thread::sleep(Duration::from_secs(1));
    delete_routes(&lab);
    std::thread::sleep(RESYNC + Duration::from_secs(3));
    assert!(
        obs.routes().iter().all(Option::is_none),
        "route sync kept writing after a reload removed the tables: {:?}",
        obs.routes()
    );
    let log = std::fs::read_to_string(lab.gw(leader).log).unwrap_or_default();
    assert!(
        log.contains("VPC route sync stopped"),
        "{leader}'s log does not say route sync stopped:\n{}",
        lab.logs()
    );
}
