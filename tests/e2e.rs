//! End to end, in the local lab (`tests/lab/lab.sh`): two gateways running the real daemon
//! against the real kube-apiserver, moto, DynamoDB Local and IMDS; a VPC host whose route
//! follows the moto route table; a hybrid node whose VTEP follows the CiliumVTEPConfig.
//! With ICMP echo running from the VPC host to the hybrid pod every 50 ms, the leader is crashed
//! (kill -9), stopped gracefully (SIGTERM), and lost with its instance (kill -9 + link
//! down), then the gateway that came back takes over again; each time the standby must take the Lease, the route tables and the
//! CiliumVTEPConfig, and the traffic must flow again, through it. Timings are printed and
//! only bounded generously: `cargo bench --bench failover` measures them.
//!
//! Needs root (network namespaces) and the peers of `tests/k8s/apiserver.sh` and
//! `tests/aws/peers.sh` (`lab.sh up` installs/builds them when missing). Set
//! HGW_LAB_KEEP=1 to leave the lab up after the test.

#[path = "lab/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{ms, restore, trial, Lab, Mode, Observer, Trial};

const PING_INTERVAL: Duration = Duration::from_millis(50);
/// How long a takeover may take before the test calls it failed: far above the targets
/// (lease duration + 1 s for a crash, 1 s for a graceful stop).
const TAKEOVER_LIMIT: Duration = Duration::from_secs(30);

fn leader_now(lab: &Lab, obs: &Observer) -> &'static str {
    let holder = obs.holder().expect("no Lease holder");
    lab.gw_of_identity(&holder)
        .unwrap_or_else(|| panic!("Lease holder {holder} is no lab gateway"))
}

/// Everything that says who leads agrees on `leader`, and the data plane uses it.
fn assert_leads(lab: &Lab, obs: &Observer, leader: &str) {
    let g = lab.gw(leader);
    // (A new leader may give the Lease up again right after taking over and win it back
    // one lease later: the bench counts those "flaps"; here only the outcome matters.)
    assert!(
        harness::wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            obs.holder().and_then(|h| lab.gw_of_identity(&h)) == Some(leader)
        }),
        "the Lease does not name {leader}: {:?}",
        obs.holder()
    );
    assert!(
        obs.routes()
            .iter()
            .all(|e| e.as_deref() == Some(g.eni.as_str())),
        "route tables {:?} do not all name {leader}'s ENI {}",
        obs.routes(),
        g.eni
    );
    let cr = obs.cr().expect("no CiliumVTEPConfig");
    assert_eq!(
        (cr.tunnel_endpoint.as_str(), cr.mac.to_lowercase()),
        (g.ip.as_str(), g.vtep_mac.to_lowercase()),
        "CiliumVTEPConfig"
    );
    assert!(
        harness::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            lab.role(leader).as_deref() == Some("leader")
        }),
        "`hybrid-gateway status` on {leader} does not say leader:\n{}",
        lab.status(leader).1
    );
    assert!(
        harness::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            lab.metric(leader, "hybrid_gateway_leader_is_active") == Some(1.0)
        }),
        "hybrid_gateway_leader_is_active is not 1 on {leader}"
    );
    // Every gateway reads whom the CR names: the leader sees itself, a running standby
    // sees that it is not named (the inputs of the "CR on a non-leader" alerts).
    let other = Lab::other(leader);
    let names_me = |gw: &str| lab.metric(gw, "hybrid_gateway_vtepconfig_names_me");
    assert!(
        harness::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            names_me(leader) == Some(1.0)
                && (lab.pid(other).is_none() || names_me(other) == Some(0.0))
        }),
        "hybrid_gateway_vtepconfig_names_me: {leader} {:?}, {other} {:?}",
        names_me(leader),
        names_me(other)
    );
}

/// Pings go through `via`'s tunnel and no longer through `not_via`'s (whose kernel still
/// holds the datapath after a crash).
fn assert_path(lab: &Lab, via: &str, not_via: &str, not_via_alive: bool) {
    let (via0, old0) = (lab.vxlan_tx(via), lab.vxlan_tx(not_via));
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.var("NS_VPC"),
            "ping",
            "-c",
            "20",
            "-i",
            "0.02",
            "-W",
            "1",
        ])
        .arg(lab.var("POD_IP"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping after failover: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        lab.vxlan_tx(via) >= via0 + 20,
        "the pings did not go through {via}'s tunnel"
    );
    if not_via_alive {
        // Every gateway, leader or not, sends its tunnel probe (one echo per node per
        // second, `[probe]`) through its own tunnel: at most two of those fall in the
        // ~0.5 s of pings. The 20 pings going that way would show as 20.
        let stray = lab.vxlan_tx(not_via).saturating_sub(old0);
        assert!(
            stray <= 2,
            "pings still went through {not_via}'s tunnel ({stray} packets)"
        );
    }
}

fn report(t: &Trial) {
    eprintln!(
        "{}: {} -> {}: Lease {}, route tables {}, CiliumVTEPConfig {}, both {}{}; ICMP echo every 50 ms: {} lost, gap {} ms, resumed {}{}",
        t.mode.name(),
        t.from,
        t.to,
        ms(t.lease),
        ms(t.routes),
        ms(t.cr),
        ms(t.switch),
        t.exited.map_or(String::new(), |d| format!(", process exit {} ms", d.as_millis())),
        t.loss.lost,
        t.loss.gap.as_millis(),
        t.resumed,
        if t.flapped {
            "; WARNING: the new leader lost the Lease again right after taking over"
        } else {
            ""
        }
    );
}

fn assert_takeover(lab: &Lab, obs: &Observer, t: &Trial, term_before: Option<u32>) {
    report(t);
    assert!(
        t.lease.is_some(),
        "{}: the Lease never named {}",
        t.mode.name(),
        t.to
    );
    assert!(
        t.routes.is_some(),
        "{}: the route tables never named {}'s ENI: {:?}",
        t.mode.name(),
        t.to,
        obs.routes()
    );
    assert!(
        t.cr.is_some(),
        "{}: the CiliumVTEPConfig never named {}: {:?}",
        t.mode.name(),
        t.to,
        obs.cr()
    );
    assert!(
        t.resumed,
        "{}: traffic did not resume: {:?}",
        t.mode.name(),
        t.loss
    );
    assert_leads(lab, obs, &t.to);
    let term = obs.cr().and_then(|c| c.term);
    assert!(
        term > term_before,
        "{}: the CiliumVTEPConfig term did not grow ({term_before:?} -> {term:?})",
        t.mode.name()
    );
    assert_path(
        lab,
        &t.to,
        &t.from,
        t.mode == Mode::Crash || t.mode == Mode::Graceful,
    );
}

#[test]
fn failover_keeps_the_hybrid_pod_reachable() {
    let lab = Lab::up("e2e", env!("CARGO_BIN_EXE_hybrid-gateway"));
    let obs = Observer::start(&lab, Duration::from_millis(50), Duration::from_millis(20));

    let first = leader_now(&lab, &obs);
    let standby = Lab::other(first);
    assert!(
        lab.wait_standby(standby, first, Duration::from_secs(30)),
        "{standby} is not a ready standby:\n{}",
        lab.status(standby).1
    );
    assert_leads(&lab, &obs, first);
    assert_path(&lab, first, standby, true);

    // 1. The leader's daemon crashes.
    let term = obs.cr().and_then(|c| c.term);
    let t = trial(&lab, &obs, Mode::Crash, PING_INTERVAL, TAKEOVER_LIMIT);
    assert_takeover(&lab, &obs, &t, term);
    // The crashed gateway's kernel kept forwarding: the lab loses nothing on a crash.
    assert_eq!(
        t.loss.lost, 0,
        "packets lost on a daemon crash: {:?}",
        t.loss
    );
    restore(&lab, &obs, &t.from);
    assert_leads(&lab, &obs, &t.to);

    // 2. The new leader is stopped gracefully: it releases, the standby takes over at once.
    let term = obs.cr().and_then(|c| c.term);
    let t = trial(&lab, &obs, Mode::Graceful, PING_INTERVAL, TAKEOVER_LIMIT);
    assert_takeover(&lab, &obs, &t, term);
    let exited = t.exited.expect("the daemon did not exit after SIGTERM");
    assert!(
        exited <= Duration::from_secs(5),
        "SIGTERM to exit took {exited:?}"
    );
    assert!(
        t.switch.unwrap() <= Duration::from_secs(5),
        "a graceful stop took {:?} to switch (target 1 s)",
        t.switch.unwrap()
    );
    restore(&lab, &obs, &t.from);

    // 3. The leader's instance is lost (daemon and network): packets really stop until
    // the standby has taken over.
    let term = obs.cr().and_then(|c| c.term);
    let t = trial(
        &lab,
        &obs,
        Mode::InstanceLoss,
        PING_INTERVAL,
        TAKEOVER_LIMIT,
    );
    assert_takeover(&lab, &obs, &t, term);
    assert!(
        t.loss.gap <= Duration::from_secs(20),
        "the traffic gap after an instance loss was {:?}",
        t.loss.gap
    );
    restore(&lab, &obs, &t.from);
    assert_leads(&lab, &obs, &t.to);

    // 4. The gateway whose instance was lost came back: it can lead and carry traffic again.
    let term = obs.cr().and_then(|c| c.term);
    let t = trial(&lab, &obs, Mode::Graceful, PING_INTERVAL, TAKEOVER_LIMIT);
    assert_takeover(&lab, &obs, &t, term);
    assert!(
        obs.errors().len() < 10,
        "the observer could not read the lab: {:?}",
        obs.errors()
    );
}
