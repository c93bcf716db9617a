//! Health-aware leadership with packets, in the local lab (`tests/lab/lab.sh`, issue 15):
//! two gateways, a hybrid node and a VPC host; the hybrid node drops VXLAN arriving from a
//! gateway (`lab.sh block`), which breaks that gateway's tunnel in the gateway -> node
//! direction only, as a security group or a firewall on the site would.
//!
//! 1. Blocked for both gateways (a site-side outage): both tunnel health scores fall to 0
//!    (the alert condition) and nobody moves, over a window well beyond the hold-down.
//! 2. Blocked for the leader only: its probes fail, the standby's still answer (they come
//!    back through the leader's VTEP, which the node still reaches), so the leader hands
//!    over to the standby by releasing, and the VPC host's echo to the hybrid pod flows
//!    again, through the new leader's tunnel.
//!
//! Needs root. About a minute, most of it the lab coming up; `cargo bench --bench failover`
//! with HGW_BENCH_MODES=one-sided repeats step 2 and reports its timing.

#[path = "lab/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{ms, trial, wait_until, Lab, Mode, Observer};

const PING_INTERVAL: Duration = Duration::from_millis(50);
/// `[election.health] hold_down` in the lab (the default).
const HOLD_DOWN: Duration = Duration::from_secs(3);

fn ratio(lab: &Lab, gw: &str) -> Option<f64> {
    lab.metric(gw, "hybrid_gateway_tunnel_health_ratio")
}

fn wait_ratio(lab: &Lab, gw: &str, want: f64, limit: Duration) {
    assert!(
        wait_until(limit, Duration::from_millis(100), || ratio(lab, gw)
            == Some(want)),
        "{gw}'s tunnel_health_ratio is {:?}, not {want}, after {limit:?}:\n{}",
        ratio(lab, gw),
        lab.status(gw).1
    );
}

#[test]
fn leadership_yields_to_the_healthier_gateway_and_only_to_it() {
    let started = Instant::now();
    let lab = Lab::up("hl", env!("CARGO_BIN_EXE_hybrid-gateway"));
    let obs = Observer::start(&lab, Duration::from_millis(50), Duration::from_millis(20));
    let holder = obs.holder().expect("no Lease holder");
    let leader = lab.gw_of_identity(&holder).expect("a lab gateway leads");
    let standby = Lab::other(leader);
    assert!(
        lab.wait_standby(standby, leader, Duration::from_secs(30)),
        "{standby} is not a ready standby:\n{}",
        lab.status(standby).1
    );
    // Both reach the node through the tunnel, and each reads the other's score.
    for gw in [leader, standby] {
        wait_ratio(&lab, gw, 1.0, Duration::from_secs(20));
        assert!(
            wait_until(Duration::from_secs(10), Duration::from_millis(200), || lab
                .status(gw)
                .1
                .contains("peer health:")),
            "{gw} does not show the other gateway's score:\n{}",
            lab.status(gw).1
        );
    }

    // 1. The site drops both gateways' VXLAN: everyone is equally bad, nobody moves.
    let t0 = Instant::now();
    lab.block(leader);
    lab.block(standby);
    for gw in [leader, standby] {
        wait_ratio(&lab, gw, 0.0, Duration::from_secs(15));
    }
    let both_down = t0.elapsed();
    std::thread::sleep(HOLD_DOWN * 4);
    assert!(
        !obs.holder_lost_after(t0, |h| lab.gw_of_identity(h) == Some(leader)),
        "leadership moved although both gateways were equally cut off"
    );
    assert_eq!(
        obs.holder().and_then(|h| lab.gw_of_identity(&h)),
        Some(leader)
    );
    // The alert condition holds on both, for the whole window.
    for gw in [leader, standby] {
        assert_eq!(ratio(&lab, gw), Some(0.0), "{gw}");
    }
    eprintln!(
        "both blocked: scores 0 after {} ms; {leader} kept the Lease for {} ms more ({} × the hold-down)",
        both_down.as_millis(),
        (HOLD_DOWN * 4).as_millis(),
        4
    );
    lab.unblock(leader);
    lab.unblock(standby);
    for gw in [leader, standby] {
        wait_ratio(&lab, gw, 1.0, Duration::from_secs(15));
    }
    // Let each see the other's recovered score.
    std::thread::sleep(Duration::from_secs(2));

    // 2. Only the leader's tunnel breaks (leader -> node): it hands over to the standby.
    let term = obs.cr().and_then(|c| c.term);
    let t = trial(
        &lab,
        &obs,
        Mode::OneSided,
        PING_INTERVAL,
        Duration::from_secs(40),
    );
    eprintln!(
        "one-sided break: {} -> {}: Lease {}, route tables {}, CiliumVTEPConfig {}, both {}; echo every 50 ms: {} lost, gap {} ms, traffic restored {} after the break",
        t.from,
        t.to,
        ms(t.lease),
        ms(t.routes),
        ms(t.cr),
        ms(t.switch),
        t.loss.lost,
        t.loss.gap.as_millis(),
        ms(t.restored)
    );
    assert_eq!(t.from, leader);
    assert!(t.lease.is_some(), "the Lease never named {standby}");
    assert!(t.switch.is_some(), "routes/CR never named {standby}");
    assert!(t.resumed, "traffic did not resume: {:?}", t.loss);
    assert!(
        t.restored.is_some_and(|r| r < Duration::from_secs(30)),
        "traffic restored {:?} after the break",
        t.restored
    );
    assert!(!t.flapped, "{standby} lost the Lease again");
    assert!(
        obs.cr().and_then(|c| c.term) > term,
        "the CR's term did not grow"
    );
    // The old leader says why it handed over; it stays standby while its tunnel is broken.
    let (_, text) = lab.status(leader);
    assert!(
        text.contains("handover:") && text.contains("tunnel health 0 %"),
        "{leader}'s status does not show the handover:\n{text}"
    );
    std::thread::sleep(HOLD_DOWN);
    assert_eq!(
        obs.holder().and_then(|h| lab.gw_of_identity(&h)),
        Some(standby)
    );
    // The echo now crosses the new leader's tunnel.
    let tx = lab.vxlan_tx(standby);
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.var("NS_VPC"),
            "ping",
            "-c",
            "10",
            "-i",
            "0.05",
            "-W",
            "1",
        ])
        .arg(lab.var("POD_IP"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        lab.vxlan_tx(standby) >= tx + 10,
        "not through {standby}'s tunnel"
    );
    lab.unblock(leader);
    eprintln!("test took {:.0} s", started.elapsed().as_secs_f64());
}
