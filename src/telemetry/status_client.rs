//! `hybrid-gateway status`: asks the local daemon's health endpoint for its view.

use std::time::Duration;

use super::StatusSnapshot;
use crate::config::Config;

/// Exit codes: 0 ready, 1 running but not ready, 3 daemon not reachable (as systemctl).
/// `json`: one JSON object on stdout instead of the text (the daemon's `/status` plus
/// `reachable` and `ready`; `reachable: false` and `error` when it does not answer).
pub async fn run(config: &Config, json: bool) -> u8 {
    let result = fetch(config.telemetry.health_listen).await;
    let code = match &result {
        Ok(snap) if snap.ready() => 0,
        Ok(_) => 1,
        Err(_) => 3,
    };
    match (result, json) {
        (Ok(snap), false) => print(&snap),
        (Err(e), false) => eprintln!("{e}"),
        (result, true) => {
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{}", as_json(&result));
        }
    }
    code
}

fn as_json(result: &Result<StatusSnapshot, String>) -> serde_json::Value {
    match result {
        Ok(snap) => {
            let mut v = serde_json::to_value(snap).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("reachable".into(), true.into());
                o.insert("ready".into(), snap.ready().into());
            }
            v
        }
        Err(e) => serde_json::json!({ "reachable": false, "ready": false, "error": e }),
    }
}

/// The daemon's `/status` on `addr`, over a plain TCP connection with a hand-written
/// HTTP/1.0 request. Deliberately not an HTTP client library: the listener is local
/// (loopback by default), so there is no TLS to set up - reqwest's TLS setup fails on hosts
/// without CA certificates (minimal images), found by the systemd box test - and no proxy to
/// honour: an `HTTP_PROXY`/`ALL_PROXY` in an operator's environment must not send this call
/// to a proxy, which cannot reach the gateway's loopback (and would see its state).
pub async fn fetch(addr: std::net::SocketAddr) -> Result<StatusSnapshot, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The answer is a few hundred bytes; anything near this is not our daemon.
    const MAX_ANSWER: u64 = 1 << 20;
    let url = format!("http://{addr}/status");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET /status HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(Duration::from_secs(3), exchange).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err(format!("hybrid-gateway is not answering on {url}: {e}")),
        Err(_) => return Err(format!("hybrid-gateway did not answer on {url} within 3 s")),
    };
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: unexpected answer (no HTTP header)"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("{url}: unexpected answer: {status}"));
    }
    serde_json::from_str(body).map_err(|e| format!("{url}: unexpected answer: {e}"))
}

fn print(s: &StatusSnapshot) {
    // A closed pipe (`status | head`) must not panic: print through a writer that may fail.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    macro_rules! println {
        ($($t:tt)*) => { let _ = writeln!(out, $($t)*); };
    }
    println!("{}", s.line());
    println!("  identity:     {}", s.identity);
    println!("  role:         {}", s.role);
    println!(
        "  leader:       {}",
        s.leader.as_deref().unwrap_or("none seen")
    );
    if let Some(t) = s.term {
        println!("  term:         {t}");
    }
    println!(
        "  ready:        {} (device {}, nodes synced {}, identity {})",
        s.ready(),
        s.device_up,
        s.nodes_synced,
        s.identity_known
    );
    println!("  hybrid nodes: {}", s.nodes_programmed);
    for sh in &s.shards {
        println!(
            "  shard {}{}: {}, leader {}, term {}, tables [{}] ({} in sync)",
            sh.shard,
            if sh.home { " (home)" } else { "" },
            sh.role,
            sh.leader.as_deref().unwrap_or("none seen"),
            sh.term.map_or_else(|| "-".to_string(), |t| t.to_string()),
            sh.tables.join(", "),
            sh.tables_in_sync
        );
        if let Some(names) = &sh.vtepconfig_names {
            println!("    vtep config entries: {names}");
        }
        if let Some(why) = sh.blocked() {
            println!("    not ready: CiliumVTEPConfig entries not written: {why}");
        }
    }
    if let Some(names) = &s.vtepconfig_names {
        println!("  vtep config:  {names}");
    }
    if let Some(shape) = &s.vtepconfig_shape {
        println!("  vtep shape:   {shape}");
    }
    if s.route_tables_total > 0 {
        println!(
            "  route tables: {}/{} in sync",
            s.route_tables_in_sync, s.route_tables_total
        );
    }
    for t in &s.route_tables_degraded {
        println!("  degraded:     {t}");
    }
    if let Some(t) = &s.tunnel {
        println!(
            "  tunnel:       {} up, {} down, {} unknown (health {})",
            t.up,
            t.down,
            t.unknown,
            t.ratio
                .map_or_else(|| "unknown".to_string(), |r| format!("{:.0} %", r * 100.0))
        );
        for n in &t.worst {
            println!(
                "    {:<24} {:<15} {:<7} rtt {} lost {}",
                n.node,
                n.target,
                n.state,
                n.rtt_ms
                    .map_or_else(|| "-".to_string(), |ms| format!("{ms:.2} ms")),
                n.lost
            );
        }
    }
    for p in &s.peer_health {
        println!(
            "  peer health:  {} {:.0} % (seen {} ms ago)",
            p.identity,
            p.ratio * 100.0,
            p.age_ms
        );
    }
    if let Some(h) = &s.last_health_handover {
        println!("  handover:     {h}");
    }
    for (name, p) in &s.parts {
        if !p.alive || p.restarts > 0 {
            println!(
                "  part {name}: alive {} restarts {} {}",
                p.alive,
                p.restarts,
                p.last_error.as_deref().unwrap_or("")
            );
        }
    }
    for e in &s.last_errors {
        println!("  error:        {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::telemetry::{server, DaemonStatus, Metrics};

    #[tokio::test]
    async fn status_ignores_proxy_variables() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(DaemonStatus::new("proxy-test"));
        let metrics = Arc::new(Metrics::new(
            &crate::telemetry::GatewayInfo::named("proxy-test"),
            Arc::new(crate::k8s::cilium_nodes::NodeWatchStats::default()),
        ));
        let cancel = CancellationToken::new();
        tokio::spawn(server::serve(
            listener,
            server::health_router(metrics, status),
            cancel.clone(),
        ));
        // A proxy that refuses every connection (port 9 on loopback: nothing listens):
        // a client honouring these variables fails; ours must reach the daemon directly.
        // (Process-wide variables: removed again right after the call.)
        for v in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            std::env::set_var(v, "http://127.0.0.1:9");
        }
        std::env::remove_var("NO_PROXY");
        std::env::remove_var("no_proxy");
        let got = fetch(addr).await;
        for v in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            std::env::remove_var(v);
        }
        let snap = got.expect("status went through the proxy");
        assert_eq!(snap.identity, "proxy-test");
        cancel.cancel();
    }
}
