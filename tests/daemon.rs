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

const ONE_NODE: &str =
    "[[node]]\nname = \"n1\"\nip = \"10.99.0.2\"\npod_cidrs = [\"192.168.32.0/25\"]\n";

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
        Self::start_with_nodes(tag, config, watchdog, ONE_NODE)
    }

    fn start_with_nodes(tag: &str, config: &str, watchdog: bool, nodes_toml: &str) -> Self {
        let gw = Netns::new(&format!("{tag}gw"));
        let peer = Netns::new(&format!("{tag}peer"));
        veth(&gw, "u0", "10.99.0.1/24", &peer, "u1", "10.99.0.2/24");
        let dir = std::env::temp_dir().join(format!("hgw-daemon-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config).unwrap();
        let nodes = dir.join("nodes.toml");
        std::fs::write(&nodes, nodes_toml).unwrap();
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
        // One node: counted once, not once per route, ARP and FDB entry.
        "hybrid_gateway_vtep_add_total 1",
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

/// `name{a="x",b="y"} v` → the labels of the first sample of `name`.
fn sample_labels(metrics: &str, name: &str) -> std::collections::BTreeMap<String, String> {
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .unwrap_or_else(|| panic!("no {name} sample:\n{metrics}"));
    let inner = &line[name.len() + 1..line.rfind('}').unwrap()];
    inner
        .split("\",")
        .map(|kv| {
            let (k, v) = kv.split_once("=\"").unwrap();
            (k.to_string(), v.trim_end_matches('"').to_string())
        })
        .collect()
}

/// The value of the sample whose line starts with `series` (name and labels as printed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The reference's `info` labels, an identity that survives a restart, node counters that
/// count nodes, the primary NIC's and the process's series, and rejected nodes by reason.
#[test]
fn metrics_match_the_reference_and_keep_their_series_across_a_restart() {
    let base = "[gateway]\nnode_ip = \"10.99.0.1\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n";
    // n2's address is inside the VPC: refused, and counted by reason.
    // n1 gets a probe address (its tunnel probes go unanswered: no Cilium behind it), so
    // the per-node tunnel series exist for the dashboard check below.
    let nodes = "[[node]]\nname = \"n1\"\nip = \"10.99.0.2\"\npod_cidrs = [\"192.168.32.0/25\"]\nprobe_ip = \"192.168.32.1\"\n\
                 [[node]]\nname = \"n2\"\nip = \"10.250.0.9\"\npod_cidrs = [\"192.168.33.0/25\"]\n";
    let StaticDaemon {
        gw,
        _peer,
        dir,
        cfg,
        sock: _sock,
        daemon,
    } = StaticDaemon::start_with_nodes("m", base, false, nodes);
    let scrape = || http_get(&gw, "http://127.0.0.1:10080/metrics").1;
    assert!(
        support::wait_until(Duration::from_secs(10), || sample(
            &scrape(),
            "hybrid_gateway_hybrid_nodes_configured"
        ) == Some(1.0)),
        "the node was not programmed:\n{}",
        scrape()
    );
    // The first probe round gives the tunnel series (the probe goes unanswered).
    assert!(
        support::wait_until(Duration::from_secs(15), || scrape()
            .contains("hybrid_gateway_tunnel_health_ratio")),
        "no probe round:\n{}",
        scrape()
    );
    let metrics = scrape();
    let info = sample_labels(&metrics, "hybrid_gateway_info");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for (k, v) in [
        ("node_ip", "10.99.0.1"),
        ("node_name", hostname.trim()),
        ("vxlan_interface", "hybrid_vxlan0"),
        ("vpc_cidr", "10.250.0.0/16"),
        ("pod_cidrs", "192.168.32.0/23"),
        ("primary_nic", "u0"),
        // No AWS and no election.identity: the host's name, with no per-process suffix.
        ("instance_id", hostname.trim()),
    ] {
        assert_eq!(info.get(k).map(String::as_str), Some(v), "{k}: {info:?}");
    }
    assert_eq!(sample(&metrics, "hybrid_gateway_vtep_add_total"), Some(1.0));
    assert_eq!(
        sample(
            &metrics,
            "hybrid_gateway_nodes_rejected{reason=\"address_inside_vpc_cidrs\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    // The underlay's kernel counters: the veth really carried the VXLAN device's traffic.
    gw.sh("ping -c 2 -W 1 192.168.32.1 >/dev/null 2>&1 || true");
    let metrics = scrape();
    let underlay_tx: u64 = gw
        .sh("cat /sys/class/net/u0/statistics/tx_packets")
        .trim()
        .parse()
        .unwrap();
    let reported = sample(&metrics, "hybrid_gateway_primary_nic_tx_packets_total").unwrap();
    assert!(
        reported >= 2.0 && reported <= underlay_tx as f64,
        "{reported} vs {underlay_tx}"
    );
    for name in [
        "hybrid_gateway_primary_nic_rx_bytes_total",
        "hybrid_gateway_primary_nic_tx_bytes_total",
        "hybrid_gateway_primary_nic_rx_dropped_total",
        "hybrid_gateway_primary_nic_rx_errors_total",
    ] {
        assert!(sample(&metrics, name).is_some(), "{name}:\n{metrics}");
    }
    let rss = sample(&metrics, "process_resident_memory_bytes").unwrap();
    assert!(rss > 1e6 && rss < 1e9, "rss {rss}");
    let started = sample(&metrics, "process_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - started).abs() < 60.0, "start {started} now {now}");
    dashboard_and_alerts_use_exported_names(&metrics);
    for name in [
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_threads",
    ] {
        assert!(sample(&metrics, name).is_some(), "{name}:\n{metrics}");
    }

    // The node goes: one node removed, whatever number of entries it had.
    let nodes_path = dir.join("nodes.toml");
    std::fs::write(&nodes_path, "").unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(
        support::wait_until(Duration::from_secs(5), || sample(
            &scrape(),
            "hybrid_gateway_vtep_remove_total"
        ) == Some(1.0)),
        "{}",
        scrape()
    );

    // A restart continues the same `info` series.
    let info_line = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("hybrid_gateway_info{"))
            .map(String::from)
    };
    let before = info_line(&scrape());
    daemon.signal(libc::SIGTERM);
    daemon.wait(Duration::from_secs(5));
    let bin = env!("CARGO_BIN_EXE_hybrid-gateway");
    let _again = gw.spawn(
        bin,
        &[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--static-nodes",
            nodes_path.to_str().unwrap(),
        ],
    );
    assert!(support::wait_until(Duration::from_secs(10), || info_line(
        &scrape()
    )
    .is_some()));
    assert_eq!(info_line(&scrape()), before);
    std::fs::remove_dir_all(&dir).ok();
}

/// An API server whose certificate the daemon cannot verify: the log says "certificate"
/// and why within seconds, once per outage, not kube's cause-less ERROR line several
/// times a second.
#[test]
fn an_untrusted_api_server_certificate_is_named_once() {
    let gw = Netns::new("tgw");
    let peer = Netns::new("tpeer");
    veth(&gw, "u0", "10.99.0.1/24", &peer, "u1", "10.99.0.2/24");
    let dir = std::env::temp_dir().join(format!("hgw-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A TLS server with a self-signed certificate (any HTTPS server would do: the daemon
    // never gets past the handshake), and a kubeconfig trusting a different CA.
    gw.sh(&format!(
        "cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
         -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE -keyout srv.key -out srv.crt 2>/dev/null && \
         openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=other-ca \
         -keyout ca.key -out ca.crt 2>/dev/null",
        d = dir.display()
    ));
    let _server = gw.spawn(
        "openssl",
        &[
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            "127.0.0.1:6443",
            "-cert",
            dir.join("srv.crt").to_str().unwrap(),
            "-key",
            dir.join("srv.key").to_str().unwrap(),
        ],
    );
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let kc = dir.join("kubeconfig");
    std::fs::write(&kc, format!("apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:6443\", certificate-authority-data: {ca}}}}}]\nusers: [{{name: u, user: {{token: x}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n")).unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, format!("[gateway]\nnode_ip = \"10.99.0.1\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n[kubernetes]\nkubeconfig = \"{}\"\n", kc.display())).unwrap();
    assert!(support::wait_until(Duration::from_secs(5), || gw
        .try_sh("bash -c 'exec 3<>/dev/tcp/127.0.0.1/6443'")
        .status
        .success()));
    let daemon = support::Proc::from_child(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &gw.name,
                env!("CARGO_BIN_EXE_hybrid-gateway"),
            ])
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Long enough for kube's client to retry many times (it did ~3 a second).
    std::thread::sleep(Duration::from_secs(8));
    daemon.signal(libc::SIGTERM);
    let out = daemon.wait(Duration::from_secs(10));
    let log = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = log.lines().collect();
    let cert: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("certificate") && l.contains("UnknownIssuer"))
        .collect();
    assert!(
        !cert.is_empty() && cert.iter().any(|l| l.contains("CiliumNode watch failed")),
        "no line names the certificate problem:\n{log}"
    );
    // Led by our explanation (found under the connector's own error wrappers), not only
    // by the verifier's text somewhere in the chain.
    assert!(
        cert.iter()
            .all(|l| l.contains("TLS: the server's certificate was rejected (certificate signed by an unknown authority")),
        "a certificate line without the TLS lead-in:\n{log}"
    );
    assert!(
        !log.contains("failed with error"),
        "kube's own cause-less line is still logged:\n{log}"
    );
    // Each part reports the outage once (the watch, the election), not once per retry.
    assert!(
        cert.len() <= 4,
        "{} certificate lines in 8 s:\n{log}",
        cert.len()
    );
    assert!(lines.len() < 40, "{} lines in 8 s:\n{log}", lines.len());
    std::fs::remove_dir_all(&dir).ok();
}

/// Every series name a scrape can hold: from each `# TYPE` line, with the suffixes the
/// type implies.
fn exported_names(metrics: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let (Some(name), Some(kind)) = (it.next(), it.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        for s in suffixes {
            names.insert(format!("{name}{s}"));
        }
    }
    names
}

/// The metric names the shipped dashboard and alert rules query.
fn referenced_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("hybrid_gateway_") || t.starts_with("process_"))
        .map(String::from)
        .collect()
}

/// The dashboard and the alert rules only query what the daemon really exports.
fn dashboard_and_alerts_use_exported_names(metrics: &str) {
    let exported = exported_names(metrics);
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard =
        std::fs::read_to_string(format!("{root}/monitoring/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push_str(q);
        }
    }
    let alerts = std::fs::read_to_string(format!("{root}/monitoring/alerts.yml")).unwrap();
    // Comments and runbook anchors are not queries.
    let alert_exprs: String = alerts
        .lines()
        .filter(|l| !l.contains("runbook_url") && !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for (what, text) in [("dashboard", &exprs), ("alerts.yml", &alert_exprs)] {
        let mut used = referenced_names(text);
        // Per-AZ mode's per-shard series exist only in that mode: tests/per_az.rs checks
        // them against per-AZ daemons.
        used.retain(|n| !n.starts_with("hybrid_gateway_shard_"));
        assert!(used.len() > 5, "{what}: {used:?}");
        let missing: Vec<&String> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{what} queries names the daemon does not export: {missing:?}\nexported: {exported:?}"
        );
    }
}
