//! `hybrid-gateway status`: asks the local daemon's health endpoint for its view.

use std::time::Duration;

use super::StatusSnapshot;
use crate::config::Config;

/// Exit codes: 0 ready, 1 running but not ready, 3 daemon not reachable (as systemctl).
pub async fn run(config: &Config) -> u8 {
    let url = format!("http://{}/status", config.telemetry.health_listen);
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot build an HTTP client: {e}");
            return 3;
        }
    };
    let snap: StatusSnapshot = match client.get(&url).send().await {
        Ok(r) => match r.json().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{url}: unexpected answer: {e}");
                return 3;
            }
        },
        Err(e) => {
            eprintln!("hybrid-gateway is not answering on {url}: {e}");
            return 3;
        }
    };
    print(&snap);
    if snap.ready() {
        0
    } else {
        1
    }
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
    if s.route_tables_total > 0 {
        println!(
            "  route tables: {}/{} in sync",
            s.route_tables_in_sync, s.route_tables_total
        );
    }
    for t in &s.route_tables_degraded {
        println!("  degraded:     {t}");
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
