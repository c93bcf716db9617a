//! Migrating from the Helm-deployed Go gateway, in the local lab (`HGW_LAB_MIGRATE=1
//! tests/lab/lab.sh up`), as the README's guide does it, with packets flowing: the Go
//! gateway leads (a client-go elector holding the reference's Lease, the
//! CiliumVTEPConfig as it writes it, every managed route table pointing at its ENI, and a
//! stand-in for its datapath programmed with `ip`: see lab.sh); our two gateways (the
//! real daemon, Lease only, `aws.gateway_instance_ids` listing the Go instance — or
//! `takeover = "any"` with HGW_LAB_TAKEOVER=any) are its standbys. One-way UDP streams
//! run both ways between a VPC host and a hybrid pod; then the Go gateway goes away and
//! one of ours must take the Lease, the CiliumVTEPConfig (exactly our endpoint, never two
//! for one CIDR), every route table, and the traffic.
//!
//! HGW_MIGRATION_MODE picks how the Go gateway goes:
//! - `kill` (default): its elector is killed (kill -9; the reference never releases the
//!   Lease) and its kernel datapath stays, as after `helm uninstall` of its hostNetwork
//!   pods: no packet may be lost, and afterwards they go through our leader;
//! - `cut`: killed and its instance leaves the network (link down): packets really stop
//!   until ours has taken over; the gap is measured and bounded.
//!
//! Prints the timeline (seconds after the kill). Needs root and the peers of `lab.sh up`.

#[path = "lab/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{follow_log_since, wall, Lab, Observer, Stream, StreamLoss, GATEWAYS};

const INTERVAL: Duration = Duration::from_millis(20);
/// Far above the target (Lease expiry, 3 s, + one pass).
const TAKEOVER_LIMIT: Duration = Duration::from_secs(30);

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".into(), |d| format!("{:.3} s", d.as_secs_f64()))
}

fn loss_line(dir: &str, l: &StreamLoss, w0: f64) -> String {
    format!(
        "{dir}: {} of {} datagrams lost, longest gap {} ms{}",
        l.lost,
        l.sent,
        l.gap.as_millis(),
        l.resumed_at
            .map(|t| format!(", flowing again at {:.3} s", t - w0))
            .unwrap_or_default()
    )
}

#[test]
fn migration_from_the_go_gateway_moves_routes_and_traffic_to_our_leader() {
    let cut = match std::env::var("HGW_MIGRATION_MODE").as_deref() {
        Ok("cut") => true,
        Ok("kill") | Err(_) => false,
        Ok(other) => panic!("HGW_MIGRATION_MODE={other}: kill or cut"),
    };
    let t_start = Instant::now();
    let lab = Lab::up_with(
        "mig",
        env!("CARGO_BIN_EXE_hybrid-gateway"),
        &[("HGW_LAB_MIGRATE", "1")],
    );
    let obs = Observer::start(&lab, Duration::from_millis(50), Duration::from_millis(20));
    let go = lab.go();

    // Before: the Go gateway leads and owns everything; ours are standbys under it.
    assert_eq!(obs.holder().as_deref(), Some(lab.go_identity()), "Lease");
    assert!(
        obs.routes()
            .iter()
            .all(|e| e.as_deref() == Some(go.eni.as_str())),
        "route tables {:?} do not name the Go gateway's ENI {}",
        obs.routes(),
        go.eni
    );
    let cr = obs.cr().expect("no CiliumVTEPConfig");
    assert_eq!(cr.all, [(go.ip.clone(), lab.var("VPC_CIDR").to_string())]);
    for g in GATEWAYS {
        let (code, text) = lab.status(g);
        assert!(
            code == 0 && text.contains("standby") && text.contains(lab.go_identity()),
            "{g} is not a ready standby under the Go gateway:\n{text}"
        );
    }

    let go_before = lab.vxlan_tx("go-gw");
    let pod: std::net::Ipv4Addr = lab.var("POD_IP").parse().unwrap();
    let host: std::net::Ipv4Addr = lab.var("VPC_HOST_IP").parse().unwrap();
    let to_pod = Stream::start(
        lab.var("NS_VPC"),
        None,
        lab.var("NS_NODE"),
        pod,
        5001,
        INTERVAL,
    );
    let to_vpc = Stream::start(
        lab.var("NS_NODE"),
        Some(pod),
        lab.var("NS_VPC"),
        host,
        5002,
        INTERVAL,
    );
    for (s, dir) in [(&to_pod, "VPC host -> pod"), (&to_vpc, "pod -> VPC host")] {
        assert!(
            s.wait_consecutive_after(0.0, 25, Duration::from_secs(10)),
            "no steady {dir} stream through the Go gateway: {:?}",
            s.error()
        );
    }
    assert!(
        lab.vxlan_tx("go-gw") >= go_before + 25,
        "the stream does not go through the Go gateway's tunnel before the migration"
    );

    // The Go gateway goes.
    let t0 = Instant::now();
    let w0 = wall();
    lab.run(&["kill", "go-gw"]);
    if cut {
        lab.run(&["cut", "go-gw"]);
    }
    assert!(
        harness::wait_until(TAKEOVER_LIMIT, Duration::from_millis(20), || {
            obs.holder().and_then(|h| lab.gw_of_identity(&h)).is_some()
        }),
        "none of ours took the Lease: {:?}",
        obs.holder()
    );
    let new = lab.gw_of_identity(&obs.holder().unwrap()).unwrap();
    let g = lab.gw(new);
    let (mut routes, mut cr) = (None, None);
    harness::wait_until(TAKEOVER_LIMIT, Duration::from_millis(10), || {
        routes = routes.or_else(|| obs.routes_at(t0, &g.eni));
        cr = cr.or_else(|| obs.cr_at(t0, &g.ip, &g.vtep_mac));
        routes.is_some() && cr.is_some()
    });
    let lease = obs.holder_at(t0, |h| lab.gw_of_identity(h) == Some(new));
    let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(t0));
    assert!(
        routes.is_some(),
        "the route tables never named {new}'s ENI: {:?}",
        obs.routes()
    );
    assert!(
        cr.is_some(),
        "the CiliumVTEPConfig never named {new}: {:?}",
        obs.cr()
    );

    // The peers follow (follow.py: the VPC router from the route table, Cilium from the CR).
    let followed = |what: &str| {
        harness::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            !follow_log_since(&lab, w0, what).is_empty()
        });
        follow_log_since(&lab, w0, what)
            .first()
            .map(|(t, _)| t - w0)
    };
    let vpc_followed = followed(&format!(
        "vpc-host {} via {}",
        lab.var("HYBRID_POD_CIDR"),
        g.ip
    ));
    let node_followed = followed(&format!("via {} ({})", g.ip, g.vtep_mac.to_lowercase()));

    // Traffic: flowing again both ways, 50 in a row after the switch.
    let switched = w0 + since(routes).unwrap().max(since(cr).unwrap()).as_secs_f64();
    for (s, dir) in [(&to_pod, "VPC host -> pod"), (&to_vpc, "pod -> VPC host")] {
        assert!(
            s.wait_consecutive_after(switched, 50, Duration::from_secs(15)),
            "{dir}: traffic did not flow again after the switch: {:?}",
            s.loss_since(w0)
        );
    }
    let (down, up) = (to_pod.loss_since(w0), to_vpc.loss_since(w0));
    // Through our leader's tunnel now, no longer the Go gateway's.
    let (ours0, go0) = (lab.vxlan_tx(new), lab.vxlan_tx("go-gw"));
    std::thread::sleep(Duration::from_secs(1));
    let (ours1, go1) = (lab.vxlan_tx(new), lab.vxlan_tx("go-gw"));
    drop((to_pod, to_vpc));

    println!(
        "migration ({}; {}), seconds after the Go leader was killed:",
        if cut {
            "cut: its instance left the network"
        } else {
            "kill: its kernel datapath stays"
        },
        match std::env::var("HGW_LAB_TAKEOVER").as_deref() {
            Ok("any") => "takeover = \"any\"",
            Ok("owned") => "neither gateway_instance_ids nor takeover = \"any\"",
            _ => "gateway_instance_ids = [Go instance]",
        }
    );
    println!("  0.000 s  Go gateway's elector killed (Lease not released)");
    println!("  {}  {new} holds the Lease", secs(since(lease)));
    println!("  {}  CiliumVTEPConfig names {new}", secs(since(cr)));
    println!(
        "  {}  every route table names {new}'s ENI",
        secs(since(routes))
    );
    println!(
        "  {}  hybrid node follows the CiliumVTEPConfig (its VPC route via {new})",
        node_followed.map_or("never".into(), |t| format!("{t:.3} s"))
    );
    println!(
        "  {}  VPC host follows the route table (its pod route via {new})",
        vpc_followed.map_or("never".into(), |t| format!("{t:.3} s"))
    );
    println!("  {}", loss_line("VPC host -> pod", &down, w0));
    println!("  {}", loss_line("pod -> VPC host", &up, w0));
    println!(
        "  tunnel packets in 1 s afterwards: {new} {}, Go gateway {}",
        ours1 - ours0,
        go1.saturating_sub(go0)
    );

    // Every CiliumVTEPConfig version seen: never two endpoints for one CIDR; the last is
    // exactly ours.
    for (t, c) in obs.cr_history() {
        if let Some(c) = c {
            assert_eq!(
                c.duplicate_cidr(),
                None,
                "version at {:?} after the kill has a duplicate CIDR: {c:?}",
                t.checked_duration_since(t0)
            );
        }
    }
    // The guide's step 8: the object names our leader, its status has every table in sync.
    let named = lab.run(&[
        "kubectl",
        "get",
        "ciliumvtepconfig",
        "hybrid-gateway",
        "-o",
        "jsonpath={.metadata.annotations.hybrid-gateway\\.io/leader}",
    ]);
    assert!(
        lab.gw_of_identity(named.trim()) == Some(new),
        "the CiliumVTEPConfig's leader annotation is {named:?}, not {new}"
    );
    assert!(
        harness::wait_until(Duration::from_secs(15), Duration::from_millis(200), || {
            lab.status(new).1.contains("route tables: 2/2 in sync")
        }),
        "`hybrid-gateway status` on {new}:\n{}",
        lab.status(new).1
    );
    let last = obs.cr().unwrap();
    assert_eq!(
        last.all,
        [(g.ip.clone(), lab.var("VPC_CIDR").to_string())],
        "the CiliumVTEPConfig does not end with exactly {new}'s endpoint"
    );
    assert!(
        ours1 - ours0 >= 40,
        "the stream does not go through {new}'s tunnel ({} packets in 1 s)",
        ours1 - ours0
    );
    assert!(
        go1.saturating_sub(go0) <= 2,
        "the stream still goes through the Go gateway's tunnel"
    );
    if cut {
        for (l, dir) in [(&down, "VPC host -> pod"), (&up, "pod -> VPC host")] {
            assert!(l.gap <= Duration::from_secs(20), "{dir}: gap {:?}", l.gap);
        }
    } else {
        // Its datapath kept forwarding until ours had the routes and the CR.
        assert_eq!(
            (down.lost, up.lost),
            (0, 0),
            "packets lost: {down:?} {up:?}"
        );
    }
    println!("wall time: {:.1} s", t_start.elapsed().as_secs_f64());
}
