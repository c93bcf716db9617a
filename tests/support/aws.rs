//! The AWS emulator peers (`tests/aws/peers.sh`: moto behind the fault proxy, IMDSv2
//! servers backed by moto, DynamoDB Local) for Rust tests and benches.
//!
//! Teardown is guaranteed twice over: `Drop` runs `peers.sh down`, and a detached watcher
//! runs it when this process exits in any way (a `static` is never dropped, and a killed
//! test run must not leave a JVM and moto behind).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub struct Peers {
    pub dir: PathBuf,
    env: Mutex<BTreeMap<String, String>>,
    script: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws/peers.sh")
}

impl Peers {
    /// Installs the peers (idempotent, cached) and starts them in a fresh directory.
    /// Panics with the peers' logs when they cannot start: tests that need them fail,
    /// they never skip.
    pub fn start() -> Peers {
        let script = script();
        let out = Command::new(&script)
            .arg("install")
            .output()
            .expect("running tests/aws/peers.sh install");
        assert!(
            out.status.success(),
            "tests/aws/peers.sh install failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );

        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hgw-aws-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the peers directory");
        let peers = Peers {
            dir,
            env: Mutex::new(BTreeMap::new()),
            script,
        };
        peers.spawn_watcher();

        let out = Command::new(&peers.script)
            .arg("up")
            .arg(&peers.dir)
            .output()
            .expect("running peers.sh up");
        if !out.status.success() {
            let logs = peers.logs();
            panic!(
                "the AWS test peers did not start (peers.sh up):\n{}\n{logs}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        peers.reload_env();
        peers
    }

    /// `peers.sh down DIR` once this process is gone, whatever ends it.
    fn spawn_watcher(&self) {
        let cmd = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; exec \"$0\" down \"$1\"",
            pid = std::process::id()
        );
        let spawned = Command::new("setsid")
            .args(["sh", "-c", &cmd])
            .arg(&self.script)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!("warning: cannot start the peers' exit watcher ({e}); relying on Drop");
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["moto", "dynamodb", "fault-proxy", "imds-gw-a"] {
            let path = self.dir.join(format!("{name}.log"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out.push_str(&format!("--- {name}.log (tail)\n"));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    fn reload_env(&self) {
        let text =
            std::fs::read_to_string(self.dir.join("env")).expect("reading the peers' env file");
        *self.env.lock().unwrap_or_else(|p| p.into_inner()) = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    pub fn var(&self, key: &str) -> String {
        let env = self.env.lock().unwrap_or_else(|p| p.into_inner());
        env.get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} not in the peers' env file"))
    }

    /// Points the AWS SDK of this process at the peers, through the standard variables
    /// only (endpoints, static credentials, region, empty config files).
    pub fn export_sdk_env(&self) {
        for key in [
            "AWS_ENDPOINT_URL_EC2",
            "AWS_ENDPOINT_URL_DYNAMODB",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ] {
            std::env::set_var(key, self.var(key));
        }
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_SESSION_TOKEN");
    }

    /// A fresh world in moto (and optionally a lock table): `seed.py` options.
    pub fn seed(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(&self.script)
            .arg("seed")
            .arg(&self.dir)
            .args(args)
            .output()
            .expect("running peers.sh seed");
        assert!(
            out.status.success(),
            "peers.sh seed {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("seed.py prints JSON")
    }

    /// One more IMDSv2 server for the instance `selector`; returns its base URL.
    pub fn imds(&self, name: &str, selector: &str, extra: &[&str]) -> String {
        let out = Command::new(&self.script)
            .arg("imds")
            .arg(&self.dir)
            .args([name, selector])
            .args(extra)
            .output()
            .expect("running peers.sh imds");
        assert!(
            out.status.success(),
            "peers.sh imds {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.reload_env();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// EC2 calls per Action through the fault proxy since the last reset.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        let (status, body) = http(
            "GET",
            &format!("{}/__calls", self.var("FAULT_PROXY_URL")),
            "",
        );
        assert_eq!(status, 200, "GET /__calls: {body}");
        serde_json::from_str(&body).expect("/__calls is JSON")
    }

    /// Every EC2 call through the fault proxy since the last reset, in arrival order:
    /// (Action, wall-clock arrival time at the proxy).
    pub fn arrivals(&self) -> Vec<(String, std::time::SystemTime)> {
        let (status, body) = http(
            "GET",
            &format!("{}/__arrivals", self.var("FAULT_PROXY_URL")),
            "",
        );
        assert_eq!(status, 200, "GET /__arrivals: {body}");
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&body).expect("/__arrivals is JSON");
        list.iter()
            .map(|a| {
                let t = a["t"].as_f64().expect("arrival time");
                (
                    a["action"].as_str().unwrap_or("-").to_string(),
                    std::time::UNIX_EPOCH + Duration::from_secs_f64(t),
                )
            })
            .collect()
    }

    pub fn reset(&self) {
        let (status, body) = http(
            "POST",
            &format!("{}/__reset", self.var("FAULT_PROXY_URL")),
            "",
        );
        assert_eq!(status, 200, "POST /__reset: {body}");
    }

    /// Queues a fault rule (see fault_proxy.py): e.g. `{"action": "CreateRoute", "status": 503, "count": 2}`.
    pub fn fault(&self, rule: serde_json::Value) {
        let (status, body) = http(
            "POST",
            &format!("{}/__fault", self.var("FAULT_PROXY_URL")),
            &rule.to_string(),
        );
        assert_eq!(status, 200, "POST /__fault: {body}");
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("down")
            .arg(&self.dir)
            .status();
    }
}

/// Minimal HTTP/1.0 client for the peers' control endpoints (no HTTP crate needed).
pub fn http(method: &str, url: &str, body: &str) -> (u16, String) {
    request(method, url, &[("Content-Type", "application/json")], body)
}

pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connecting to {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("sending the request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("reading the response");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}
