//! The daemon as systemd and operators see it: READY/STATUS/WATCHDOG/STOPPING on a real
//! NOTIFY_SOCKET, `/readyz`, `/healthz`, `/metrics`, `hybrid-gateway status`, and a clean
//! SIGTERM. Runs the real binary in a network namespace (needs root).

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{veth, Netns};

fn http_get(ns: &Netns, url: &str) -> (u16, String) {
    // curl is not guaranteed; bash's /dev/tcp is.
    let (host, path) = url.trim_start_matches("http://").split_once('/').unwrap();
    let (h, p) = host.split_once(':').unwrap();
    let script = format!("exec 3<>/dev/tcp/{h}/{p}; printf 'GET /{path} HTTP/1.0\\r\\nHost: {h}\\r\\n\\r\\n' >&3; cat <&3");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "bash", "-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The daemon in a gateway namespace with one static hybrid node, talking to a real
/// NOTIFY_SOCKET the test listens on.
struct StaticDaemon {
    gw: Netns,
    _peer: Netns,
    dir: std::path::PathBuf,
    cfg: std::path::PathBuf,
    sock: UnixDatagram,
    daemon: support::Proc,
}

impl StaticDaemon {
    fn start(tag: &str, config: &str, watchdog: bool) -> Self {
        let gw = Netns::new(&format!("{tag}gw"));
        let peer = Netns::new(&format!("{tag}peer"));
        veth(&gw, "u0", "10.99.0.1/24", &peer, "u1", "10.99.0.2/24");
        let dir = std::env::temp_dir().join(format!("hgw-daemon-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config).unwrap();
        let nodes = dir.join("nodes.toml");
        std::fs::write(
            &nodes,
            "[[node]]\nname = \"n1\"\nip = \"10.99.0.2\"\npod_cidrs = [\"192.168.32.0/25\"]\n",
        )
        .unwrap();
        let sock_path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &gw.name,
            env!("CARGO_BIN_EXE_hybrid-gateway"),
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--static-nodes",
            nodes.to_str().unwrap(),
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::piped());
        if watchdog {
            cmd.env("WATCHDOG_USEC", "1000000");
        }
        let daemon = support::Proc::from_child(cmd.spawn().unwrap());
        StaticDaemon {
            gw,
            _peer: peer,
            dir,
            cfg,
            sock,
            daemon,
        }
    }
}

#[test]
fn systemd_notify_health_metrics_and_status() {
    let base = "[gateway]\nnode_ip = \"10.99.0.1\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n";
    let StaticDaemon {
        gw,
        _peer,
        dir,
        cfg,
        sock,
        daemon,
    } = StaticDaemon::start("d", base, true);
    let bin = env!("CARGO_BIN_EXE_hybrid-gateway");

    let mut got = Vec::<String>::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline
        && !(got.iter().any(|m| m.contains("READY=1"))
            && got.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        }
    }
    assert!(got.iter().any(|m| m == "READY=1"), "no READY=1: {got:?}");
    assert!(
        got.iter().any(|m| m == "WATCHDOG=1"),
        "no watchdog ping: {got:?}"
    );
    let status = got
        .iter()
        .rfind(|m| m.starts_with("STATUS="))
        .cloned()
        .unwrap_or_default();
    assert!(status.contains("1 hybrid node"), "{status}");

    let (code, body) = http_get(&gw, "http://127.0.0.1:8088/readyz");
    assert_eq!(code, 200, "{body}");
    let (code, _) = http_get(&gw, "http://127.0.0.1:8088/healthz");
    assert_eq!(code, 200);
    let (code, metrics) = http_get(&gw, "http://127.0.0.1:10080/metrics");
    assert_eq!(code, 200);
    for name in [
        "hybrid_gateway_info{",
        "hybrid_gateway_hybrid_nodes_configured 1",
        "hybrid_gateway_leader_is_active",
        "hybrid_gateway_vtep_add_total 4",
        "hybrid_gateway_vtep_add_errors_total 0",
        "hybrid_gateway_vtep_remove_total",
        "hybrid_gateway_vxlan_interface_up 1",
        "hybrid_gateway_vxlan_fdb_entries 1",
        "hybrid_gateway_vxlan_route_count 1",
        "hybrid_gateway_vxlan_rx_packets_total",
        "hybrid_gateway_aws_route_table_update_total",
        "hybrid_gateway_aws_route_table_update_duration_seconds_bucket",
        "hybrid_gateway_leader_setup_duration_seconds_bucket",
        "hybrid_gateway_malformed_nodes_skipped_total",
        "hybrid_gateway_election_term",
        "hybrid_gateway_route_sync_last_success_timestamp_seconds",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    let out = gw.try_sh(&format!("{bin} status --config {}", cfg.display()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hybrid nodes: 1") && text.contains("ready:        true"),
        "{text}"
    );

    // Not ready when the daemon is gone: status says so with a non-zero code.
    daemon.signal(libc::SIGTERM);
    let t = Instant::now();
    let mut stopping = false;
    while t.elapsed() < Duration::from_secs(5) && !stopping {
        if let Ok(n) = sock.recv(&mut buf) {
            stopping = String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        }
    }
    assert!(stopping, "no STOPPING=1");
    let out = daemon.wait(Duration::from_secs(5));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gw.try_sh(&format!("{bin} status --config {}", cfg.display()));
    assert_eq!(out.status.code(), Some(3));
    // The datapath survives the stop.
    assert!(gw
        .sh("ip route show dev hybrid_vxlan0")
        .contains("192.168.32.0/25"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn readyz_fails_until_the_first_node_sync() {
    let gw = Netns::new("rgw");
    let peer = Netns::new("rpeer");
    veth(&gw, "u0", "10.99.0.1/24", &peer, "u1", "10.99.0.2/24");
    let dir = std::env::temp_dir().join(format!("hgw-ready-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("config.toml");
    // A kubeconfig pointing nowhere: the CiliumNode watch never syncs.
    let kc = dir.join("kubeconfig");
    std::fs::write(&kc, "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n").unwrap();
    std::fs::write(&cfg, format!("[gateway]\nnode_ip = \"10.99.0.1\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n[kubernetes]\nkubeconfig = \"{}\"\n", kc.display())).unwrap();
    let bin = env!("CARGO_BIN_EXE_hybrid-gateway");
    let _daemon = gw.spawn(bin, &["run", "--config", cfg.to_str().unwrap()]);
    assert!(support::wait_until(Duration::from_secs(10), || http_get(
        &gw,
        "http://127.0.0.1:8088/healthz"
    )
    .0 == 200));
    let (code, body) = http_get(&gw, "http://127.0.0.1:8088/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("first node sync"), "{body}");
    let out = gw.try_sh(&format!("{bin} status --config {}", cfg.display()));
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn reload_applies_live_changes_rejects_bad_ones_and_names_restart_keys() {
    let base = "[gateway]\nnode_ip = \"10.99.0.1\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n";
    let StaticDaemon {
        gw,
        _peer,
        dir,
        cfg,
        sock,
        daemon,
    } = StaticDaemon::start("h", base, false);
    assert!(support::wait_until(Duration::from_secs(10), || gw
        .try_sh("ip route show dev hybrid_vxlan0")
        .stdout
        .len()
        > 10));
    let ifindex = gw.sh("cat /sys/class/net/hybrid_vxlan0/ifindex");

    // A new pod CIDR: applied live (its catch-all route appears), device untouched.
    std::fs::write(
        &cfg,
        base.replace(
            "[\"192.168.32.0/23\"]",
            "[\"192.168.32.0/23\", \"192.168.40.0/24\"]",
        ),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(
        support::wait_until(Duration::from_secs(5), || gw
            .sh("ip route show type unreachable")
            .contains("192.168.40.0/24")),
        "reloaded pod CIDR not applied"
    );
    let mut msgs = Vec::new();
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        if let Ok(n) = sock.recv(&mut buf) {
            msgs.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        }
    }
    let reloading = msgs
        .iter()
        .position(|m| m == "RELOADING=1")
        .expect("no RELOADING=1");
    assert!(
        msgs[reloading..].iter().any(|m| m == "READY=1"),
        "no READY=1 after RELOADING=1: {msgs:?}"
    );

    // A broken file is rejected and the running config kept.
    std::fs::write(&cfg, "[gateway]\nvpc_cidrs = [\n").unwrap();
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(gw
        .sh("ip route show type unreachable")
        .contains("192.168.40.0/24"));

    // A VNI change is not applied live: the log names the key.
    std::fs::write(
        &cfg,
        format!(
            "{}[vxlan]\nvni = 7\n",
            base.replace(
                "[\"192.168.32.0/23\"]",
                "[\"192.168.32.0/23\", \"192.168.40.0/24\"]"
            )
        ),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        gw.sh("cat /sys/class/net/hybrid_vxlan0/ifindex"),
        ifindex,
        "reload recreated the device"
    );
    assert!(gw
        .sh("ip -d link show hybrid_vxlan0")
        .contains("vxlan id 2 "));
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait(Duration::from_secs(5));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("configuration reloaded") && log.contains("gateway.hybrid_pod_cidrs"),
        "{log}"
    );
    assert!(
        log.contains("new configuration rejected, keeping the running one"),
        "{log}"
    );
    assert!(
        log.contains("vxlan.vni") && log.contains("systemctl restart"),
        "{log}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
