//! Drives `tests/lab/lab.sh` from Rust: a lab per test/bench run (own state dir, own
//! namespace prefix, `down` on drop), an observer that watches the emulated VPC route
//! table, the CiliumVTEPConfig and the Lease from inside the lab, a continuous ping, and
//! one failover trial. Shared by `tests/e2e.rs` and `benches/failover.rs`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const GATEWAYS: [&str; 2] = ["gw-a", "gw-b"];

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("the lab needs root: it creates network namespaces (run with sudo)");
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/lab.sh")
}

pub fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn wait_until(limit: Duration, step: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(step);
    }
}

/// Runs `f` on a thread that entered network namespace `ns`: sockets it opens live there.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

fn enter_netns(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).expect("opening the namespace");
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// A plain HTTP GET from inside `ns` (the daemons' endpoints listen on their loopback).
pub fn http_get(ns: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    in_netns(ns, || {
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    })
}

/// One gateway of the lab, as `lab.env` describes it.
#[derive(Debug, Clone)]
pub struct Gw {
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub eni: String,
    pub instance: String,
    pub vtep_mac: String,
    pub config: PathBuf,
    pub pidfile: PathBuf,
    pub log: PathBuf,
}

/// A running lab; `lab.sh down` on drop.
pub struct Lab {
    pub dir: PathBuf,
    pub prefix: String,
    pub env: BTreeMap<String, String>,
    pub bin: PathBuf,
    keep: bool,
}

impl Lab {
    /// `lab.sh up` in a fresh state dir with its own namespace prefix; `tag` tells runs apart.
    pub fn up(tag: &str, bin: &str) -> Lab {
        Self::up_with(tag, bin, &[])
    }

    /// [`Lab::up`] with extra `lab.sh` environment (e.g. `HGW_LAB_MIGRATE=1`).
    pub fn up_with(tag: &str, bin: &str, env: &[(&str, &str)]) -> Lab {
        require_root();
        let pid = std::process::id();
        let dir = PathBuf::from(format!("/run/hgw-lab-{tag}-{pid}"));
        let prefix = format!("hgw{tag}{pid}-");
        let mut lab = Lab {
            dir,
            prefix,
            env: BTreeMap::new(),
            bin: PathBuf::from(bin),
            keep: std::env::var_os("HGW_LAB_KEEP").is_some(),
        };
        let started = Instant::now();
        let out = lab
            .command()
            .arg("up")
            .env("HGW_LAB_BIN", bin)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("running tests/lab/lab.sh up");
        if !out.status.success() {
            panic!(
                "tests/lab/lab.sh up failed:\n{}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                lab.logs()
            );
        }
        eprintln!(
            "lab up in {:.1} s ({}, namespaces {}*)",
            started.elapsed().as_secs_f64(),
            lab.dir.display(),
            lab.prefix
        );
        let text = std::fs::read_to_string(lab.dir.join("lab.env")).expect("lab.env");
        lab.env = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        lab
    }

    fn command(&self) -> Command {
        let mut c = Command::new(script());
        c.env("HGW_LAB_DIR", &self.dir)
            .env("HGW_LAB_PREFIX", &self.prefix);
        c
    }

    /// Runs `lab.sh ARGS`; panics with its output on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running lab.sh");
        assert!(
            out.status.success(),
            "lab.sh {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from lab.env"))
    }

    pub fn gw(&self, name: &str) -> Gw {
        let v = match name {
            "gw-a" => "GW_A",
            "gw-b" => "GW_B",
            _ => panic!("no gateway {name}"),
        };
        let get = |k: &str| self.var(&format!("{v}_{k}")).to_string();
        Gw {
            name: name.to_string(),
            ns: self.var(&format!("NS_{v}")).to_string(),
            ip: get("IP"),
            eni: get("ENI"),
            instance: get("INSTANCE"),
            vtep_mac: get("VTEP_MAC"),
            config: get("CONFIG").into(),
            pidfile: get("PIDFILE").into(),
            log: get("LOG").into(),
        }
    }

    /// The Go gateway of the migration lab (`HGW_LAB_MIGRATE=1`): `name` "go-gw", its
    /// election identity in `instance`'s place is [`Lab::go_identity`]; no config or log.
    pub fn go(&self) -> Gw {
        let get = |k: &str| self.var(&format!("GO_{k}")).to_string();
        Gw {
            name: "go-gw".into(),
            ns: self.var("NS_GO").to_string(),
            ip: get("IP"),
            eni: get("ENI"),
            instance: get("INSTANCE"),
            vtep_mac: get("VTEP_MAC"),
            config: PathBuf::new(),
            pidfile: get("PIDFILE").into(),
            log: get("LOG").into(),
        }
    }

    pub fn go_identity(&self) -> &str {
        self.var("GO_IDENTITY")
    }

    pub fn other(name: &str) -> &'static str {
        if name == "gw-a" {
            "gw-b"
        } else {
            "gw-a"
        }
    }

    /// Which gateway an election identity (`<instance id>_<suffix>`) belongs to.
    pub fn gw_of_identity(&self, identity: &str) -> Option<&'static str> {
        GATEWAYS
            .into_iter()
            .find(|g| identity.starts_with(&format!("{}_", self.gw(g).instance)))
    }

    /// The daemon's pid when it runs (not a zombie).
    pub fn pid(&self, name: &str) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.gw(name).pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
        (state != "Z" && cmd.contains("run")).then_some(pid)
    }

    pub fn signal(&self, name: &str, sig: i32) -> i32 {
        let pid = self
            .pid(name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        // SAFETY: kill has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
        pid
    }

    pub fn start(&self, name: &str) {
        self.run(&["start", name]);
    }

    pub fn cut(&self, name: &str) {
        self.run(&["cut", name]);
    }

    /// The hybrid node drops VXLAN arriving from `name`: the tunnel broken in the
    /// gateway -> node direction only.
    pub fn block(&self, name: &str) {
        self.run(&["block", name]);
    }

    pub fn unblock(&self, name: &str) {
        self.run(&["unblock", name]);
    }

    /// `hybrid-gateway status` inside the gateway's namespace: (exit code, stdout).
    pub fn status(&self, name: &str) -> (i32, String) {
        let g = self.gw(name);
        let out = Command::new("ip")
            .args(["netns", "exec", &g.ns])
            .arg(&self.bin)
            .arg("status")
            .arg("--config")
            .arg(&g.config)
            .output()
            .expect("running hybrid-gateway status");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The `role:` line of `hybrid-gateway status`, when the daemon answers and is ready.
    pub fn role(&self, name: &str) -> Option<String> {
        let (code, text) = self.status(name);
        if code != 0 {
            return None;
        }
        text.lines()
            .find_map(|l| l.trim().strip_prefix("role:"))
            .map(|r| r.trim().to_string())
    }

    pub fn metric(&self, name: &str, metric: &str) -> Option<f64> {
        let (code, body) = http_get(&self.gw(name).ns, "127.0.0.1:10080", "/metrics")?;
        if code != 200 {
            return None;
        }
        body.lines().find_map(|l| {
            l.strip_prefix(metric)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Packets the gateway's VXLAN device sent (towards the hybrid node).
    pub fn vxlan_tx(&self, name: &str) -> u64 {
        let ns = if name == "go-gw" {
            self.go().ns
        } else {
            self.gw(name).ns
        };
        let out = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(["cat", "/sys/class/net/hybrid_vxlan0/statistics/tx_packets"])
            .output()
            .expect("reading tx_packets");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Waits until `name` runs, is ready and reports itself standby under `leader`.
    pub fn wait_standby(&self, name: &str, leader: &str, limit: Duration) -> bool {
        let leader_instance = self.gw(leader).instance;
        wait_until(limit, Duration::from_millis(100), || {
            let (code, text) = self.status(name);
            code == 0
                && text.contains("role:         standby")
                && text
                    .lines()
                    .any(|l| l.trim().starts_with("leader:") && l.contains(&leader_instance))
        })
    }

    /// The last lines of every log the lab keeps, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for f in ["gw-a/daemon.log", "gw-b/daemon.log", "follow.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.join(f)) {
                out.push_str(&format!("--- {f} (tail)\n"));
                let lines: Vec<&str> = text.lines().collect();
                for l in &lines[lines.len().saturating_sub(25)..] {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if self.keep {
            eprintln!(
                "HGW_LAB_KEEP: lab left up; remove with HGW_LAB_DIR={} HGW_LAB_PREFIX={} tests/lab/lab.sh down",
                self.dir.display(),
                self.prefix
            );
            return;
        }
        let _ = self.command().arg("down").stdin(Stdio::null()).output();
    }
}

// ------------------------------------------------------------------------- observer ---

/// What the observer saw, with when it first saw it (only changes are kept).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cr {
    pub tunnel_endpoint: String,
    pub mac: String,
    pub term: Option<u32>,
    /// Every endpoint: (tunnelEndpoint, cidr).
    pub all: Vec<(String, String)>,
}

impl Cr {
    /// A CIDR that two endpoints claim (Cilium rejects or mis-applies such an object).
    pub fn duplicate_cidr(&self) -> Option<&str> {
        let mut seen = std::collections::BTreeSet::new();
        self.all
            .iter()
            .map(|(_, c)| c.as_str())
            .find(|c| !seen.insert(*c))
    }
}

#[derive(Default)]
struct History {
    routes: Vec<(Instant, Vec<Option<String>>)>,
    cr: Vec<(Instant, Option<Cr>)>,
    holder: Vec<(Instant, Option<String>)>,
    errors: Vec<String>,
}

fn record<T: PartialEq>(h: &mut Vec<(Instant, T)>, at: Instant, v: T) {
    if h.last().map(|(_, last)| last != &v).unwrap_or(true) {
        h.push((at, v));
    }
}

/// The first time at or after `since` that `pred` held (counting the value in effect at
/// `since`).
fn first_since<T>(
    h: &[(Instant, T)],
    since: Instant,
    pred: impl Fn(&T) -> bool,
) -> Option<Instant> {
    let start = h.iter().rposition(|(t, _)| *t <= since).unwrap_or(0);
    h[start..]
        .iter()
        .find(|(_, v)| pred(v))
        .map(|(t, _)| (*t).max(since))
}

/// Polls, from inside the lab's `cp` namespace, every managed route table in moto (what
/// the VPC router would use), the CiliumVTEPConfig and the Lease (what Cilium and
/// `kubectl` see), and keeps the history of changes with their times.
pub struct Observer {
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub route_period: Duration,
    pub k8s_period: Duration,
}

impl Observer {
    pub fn start(lab: &Lab, route_period: Duration, k8s_period: Duration) -> Observer {
        let history = Arc::new(Mutex::new(History::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let ns = lab.var("NS_CP").to_string();
        let kubeconfig = PathBuf::from(lab.var("ADMIN_KUBECONFIG"));
        let moto = lab.var("MOTO_URL").to_string();
        let region = lab.var("AWS_REGION").to_string();
        let cidr = lab.var("HYBRID_POD_CIDR").to_string();
        let tables: Vec<String> = lab
            .var("ROUTE_TABLES")
            .split_whitespace()
            .map(String::from)
            .collect();
        let (h, s) = (history.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            enter_netns(&ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(observe(
                h,
                s,
                kubeconfig,
                moto,
                region,
                cidr,
                tables,
                route_period,
                k8s_period,
            ));
        });
        let obs = Observer {
            history,
            stop,
            thread: Some(thread),
            route_period,
            k8s_period,
        };
        assert!(
            wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
                let h = obs.history.lock().unwrap();
                !h.routes.is_empty() && !h.cr.is_empty() && !h.holder.is_empty()
            }),
            "the observer saw nothing within 30 s: {:?}",
            obs.history.lock().unwrap().errors
        );
        obs
    }

    pub fn routes(&self) -> Vec<Option<String>> {
        let h = self.history.lock().unwrap();
        h.routes.last().map(|(_, v)| v.clone()).unwrap_or_default()
    }

    pub fn cr(&self) -> Option<Cr> {
        let h = self.history.lock().unwrap();
        h.cr.last().and_then(|(_, v)| v.clone())
    }

    pub fn holder(&self) -> Option<String> {
        let h = self.history.lock().unwrap();
        h.holder.last().and_then(|(_, v)| v.clone())
    }

    /// Every version of the CiliumVTEPConfig seen, with when.
    pub fn cr_history(&self) -> Vec<(Instant, Option<Cr>)> {
        self.history.lock().unwrap().cr.clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.history.lock().unwrap().errors.clone()
    }

    /// When every managed table first sent the hybrid pod CIDR to `eni`, at/after `since`.
    pub fn routes_at(&self, since: Instant, eni: &str) -> Option<Instant> {
        let h = self.history.lock().unwrap();
        first_since(&h.routes, since, |v| {
            !v.is_empty() && v.iter().all(|e| e.as_deref() == Some(eni))
        })
    }

    pub fn cr_at(&self, since: Instant, ip: &str, mac: &str) -> Option<Instant> {
        let h = self.history.lock().unwrap();
        first_since(&h.cr, since, |v| {
            v.as_ref()
                .is_some_and(|c| c.tunnel_endpoint == ip && c.mac.eq_ignore_ascii_case(mac))
        })
    }

    pub fn holder_at(&self, since: Instant, pred: impl Fn(&str) -> bool) -> Option<Instant> {
        let h = self.history.lock().unwrap();
        first_since(&h.holder, since, |v| v.as_deref().is_some_and(&pred))
    }

    /// Whether the Lease, once it satisfied `pred` after `since`, later stopped doing so.
    pub fn holder_lost_after(&self, since: Instant, pred: impl Fn(&str) -> bool) -> bool {
        let h = self.history.lock().unwrap();
        let Some(first) = first_since(&h.holder, since, |v| v.as_deref().is_some_and(&pred)) else {
            return false;
        };
        h.holder
            .iter()
            .any(|(t, v)| *t > first && !v.as_deref().is_some_and(&pred))
    }

    /// Waits until someone holds the Lease; returns that gateway.
    pub fn wait_holder(&self, lab: &Lab, limit: Duration) -> Option<&'static str> {
        let mut who = None;
        wait_until(limit, Duration::from_millis(20), || {
            who = self.holder().and_then(|h| lab.gw_of_identity(&h));
            who.is_some()
        });
        who
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn observe(
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    kubeconfig: PathBuf,
    moto: String,
    region: String,
    cidr: String,
    tables: Vec<String>,
    route_period: Duration,
    k8s_period: Duration,
) {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};

    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("admin kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube config");
    let client = kube::Client::try_from(cfg).expect("kube client");
    let crs: kube::Api<DynamicObject> = kube::Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("cilium.io", "v2", "CiliumVTEPConfig"),
            "ciliumvtepconfigs",
        ),
    );
    let leases: kube::Api<Lease> = kube::Api::namespaced(client, "hybrid-gateway");
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .region(aws_sdk_ec2::config::Region::new(region))
            .endpoint_url(moto)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "lab",
            ))
            .build(),
    );
    let error = |h: &Mutex<History>, e: String| {
        let mut h = h.lock().unwrap();
        if h.errors.len() < 100 {
            h.errors.push(e);
        }
    };

    let routes = async {
        while !stop.load(Ordering::Relaxed) {
            let r = ec2
                .describe_route_tables()
                .set_route_table_ids(Some(tables.clone()))
                .send()
                .await;
            let at = Instant::now();
            match r {
                Ok(out) => {
                    let mut by_id: BTreeMap<String, Option<String>> = BTreeMap::new();
                    for t in out.route_tables() {
                        let eni = t
                            .routes()
                            .iter()
                            .find(|r| r.destination_cidr_block() == Some(cidr.as_str()))
                            .and_then(|r| r.network_interface_id().map(String::from));
                        by_id.insert(t.route_table_id().unwrap_or_default().to_string(), eni);
                    }
                    let v = tables
                        .iter()
                        .map(|id| by_id.get(id).cloned().flatten())
                        .collect();
                    record(&mut history.lock().unwrap().routes, at, v);
                }
                Err(e) => error(&history, format!("DescribeRouteTables: {e:?}")),
            }
            tokio::time::sleep(route_period).await;
        }
    };
    let k8s = async {
        while !stop.load(Ordering::Relaxed) {
            let (cr, lease) = tokio::join!(
                crs.get_opt("hybrid-gateway"),
                leases.get_opt("hybrid-gateway-leader")
            );
            let at = Instant::now();
            match cr {
                Ok(o) => {
                    let c = o.and_then(|o| {
                        let all = o.data["spec"]["endpoints"]
                            .as_array()?
                            .iter()
                            .map(|e| {
                                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                                (s("tunnelEndpoint"), s("cidr"))
                            })
                            .collect();
                        let e = o.data["spec"]["endpoints"].get(0)?;
                        Some(Cr {
                            all,
                            tunnel_endpoint: e["tunnelEndpoint"].as_str()?.to_string(),
                            mac: e["mac"].as_str()?.to_string(),
                            term: o
                                .metadata
                                .annotations
                                .as_ref()
                                .and_then(|a| a.get("hybrid-gateway.io/term"))
                                .and_then(|t| t.parse().ok()),
                        })
                    });
                    record(&mut history.lock().unwrap().cr, at, c);
                }
                Err(e) => error(&history, format!("CiliumVTEPConfig: {e}")),
            }
            match lease {
                Ok(l) => {
                    let holder = l
                        .and_then(|l| l.spec?.holder_identity)
                        .filter(|h| !h.is_empty());
                    record(&mut history.lock().unwrap().holder, at, holder);
                }
                Err(e) => error(&history, format!("Lease: {e}")),
            }
            tokio::time::sleep(k8s_period).await;
        }
    };
    tokio::join!(routes, k8s);
}

// ---------------------------------------------------------------------------- probe ---

/// ICMP echo requests from the VPC host to the hybrid pod on a fixed schedule (a raw
/// socket in the VPC host's namespace), replies collected by sequence number.
///
/// Not iputils `ping`: while its sends fail (the ARP entry of a vanished gateway) ping
/// backs off and skips sequence numbers, so its icmp_seq gaps understate an outage and the
/// time between its replies overstates it. Here every probe is sent on time, a send error
/// counts as a lost probe, and the gap is exact to one interval.
pub struct Probe {
    state: Arc<Mutex<ProbeState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub interval: Duration,
}

#[derive(Default)]
struct ProbeState {
    /// Send time (wall clock) of probe n at index n.
    sent: Vec<f64>,
    /// Probe n -> receive time of its reply.
    replies: BTreeMap<u32, f64>,
    error: Option<String>,
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Probe {
    pub fn start(lab: &Lab, interval: Duration) -> Probe {
        let ns = lab.var("NS_VPC").to_string();
        let dst: std::net::Ipv4Addr = lab.var("POD_IP").parse().expect("POD_IP");
        let state = Arc::new(Mutex::new(ProbeState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            enter_netns(&ns);
            if let Err(e) = probe_loop(dst, interval, &st, &sp) {
                st.lock().unwrap().error = Some(e.to_string());
            }
        });
        Probe {
            state,
            stop,
            thread: Some(thread),
            interval,
        }
    }

    pub fn error(&self) -> Option<String> {
        self.state.lock().unwrap().error.clone()
    }

    /// Waits for `n` consecutive answered probes, all answered after `after` (wall clock).
    pub fn wait_consecutive_after(&self, after: f64, n: u32, limit: Duration) -> bool {
        wait_until(limit, Duration::from_millis(20), || {
            let st = self.state.lock().unwrap();
            let mut run = 0;
            let mut prev = None;
            for (&seq, &ts) in st.replies.iter() {
                if ts <= after {
                    continue;
                }
                run = if prev == Some(seq.wrapping_sub(1)) {
                    run + 1
                } else {
                    1
                };
                prev = Some(seq);
                if run >= n {
                    return true;
                }
            }
            false
        })
    }

    /// From wall time `at` to the send of the first probe answered after the last one lost
    /// (traffic back for good, as the peers see it); zero when none was lost, `None` when
    /// the last probe sent was lost.
    pub fn restored_since(&self, at: f64) -> Option<Duration> {
        let st = self.state.lock().unwrap();
        let first = st.sent.iter().position(|&t| t >= at)? as u32;
        let &last = st.replies.keys().next_back()?;
        let last_lost = (first..=last).rev().find(|s| !st.replies.contains_key(s));
        match last_lost {
            None => Some(Duration::ZERO),
            Some(s) => {
                let back = *st.sent.get(s as usize + 1)?;
                Some(Duration::from_secs_f64((back - at).max(0.0)))
            }
        }
    }

    /// Probes sent from wall time `at` on, up to the last answered one, that got no answer.
    pub fn loss_since(&self, at: f64) -> Loss {
        let st = self.state.lock().unwrap();
        let first = st
            .sent
            .iter()
            .position(|&t| t >= at)
            .unwrap_or(st.sent.len()) as u32;
        let Some(&last) = st.replies.keys().next_back() else {
            return Loss::default();
        };
        let (mut lost, mut run, mut longest) = (0u32, 0u32, 0u32);
        for s in first..=last {
            if st.replies.contains_key(&s) {
                run = 0;
            } else {
                lost += 1;
                run += 1;
                longest = longest.max(run);
            }
        }
        Loss {
            lost,
            longest_run: longest,
            gap: self.interval * longest,
        }
    }
}

fn probe_loop(
    dst: std::net::Ipv4Addr,
    interval: Duration,
    state: &Mutex<ProbeState>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    // SAFETY: plain socket syscalls on a descriptor this function owns and closes.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let id = (std::process::id() as u16) ^ 0x4857;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    let start = Instant::now();
    let mut seq: u32 = 0;
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let due = start + interval * seq;
        let now = Instant::now();
        if now >= due {
            let mut pkt = [0u8; 64];
            pkt[0] = 8; // echo request
            pkt[4..6].copy_from_slice(&id.to_be_bytes());
            pkt[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
            state.lock().unwrap().sent.push(wall());
            // SAFETY: pkt and addr are valid for the lengths given. A failed send (no route,
            // no ARP answer) is a lost probe, nothing more.
            unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    libc::MSG_DONTWAIT,
                    std::ptr::addr_of!(addr).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            seq += 1;
            continue;
        }
        let wait = (due - now).as_millis().clamp(1, 20) as i32;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, wait) } <= 0 {
            continue;
        }
        loop {
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                break;
            }
            let pkt = &buf[..n as usize];
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let Some(icmp) = pkt.get(ihl..ihl + 8) else {
                continue;
            };
            if icmp[0] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != id {
                continue;
            }
            let s16 = u32::from(u16::from_be_bytes([icmp[6], icmp[7]]));
            // Back to the full counter: the most recent probe with these low 16 bits.
            let full = (seq.saturating_sub(1) & !0xffff) | s16;
            let full = if full >= seq {
                full.wrapping_sub(0x10000)
            } else {
                full
            };
            state
                .lock()
                .unwrap()
                .replies
                .entry(full)
                .or_insert_with(wall);
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct Loss {
    /// Probes that never got an answer.
    pub lost: u32,
    /// The longest run of consecutive unanswered probes.
    pub longest_run: u32,
    /// longest_run × interval: the gap in traffic.
    pub gap: Duration,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// --------------------------------------------------------------------------- trials ---

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// kill -9 of the leader's daemon; its kernel datapath stays, as on a real host.
    Crash,
    /// SIGTERM: the leader releases the Lease and the lock on its way out.
    Graceful,
    /// kill -9 and the leader's "instance" leaves the network (its link goes down): the
    /// packets it still forwarded after a crash are gone too.
    InstanceLoss,
    /// The hybrid node drops the leader's VXLAN (leader -> node only); the leader keeps
    /// running and must hand over for health (issue 15). Undone by [`unblock_after`].
    OneSided,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Crash => "crash (kill -9)",
            Mode::Graceful => "graceful (SIGTERM)",
            Mode::InstanceLoss => "instance loss (kill -9 + link down)",
            Mode::OneSided => "one-sided tunnel break (leader -> node)",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Trial {
    pub mode: Mode,
    pub from: String,
    pub to: String,
    /// The Lease names the standby.
    pub lease: Option<Duration>,
    /// Every managed route table sends the hybrid pod CIDR to the standby's ENI.
    pub routes: Option<Duration>,
    /// The CiliumVTEPConfig names the standby's IP and MAC.
    pub cr: Option<Duration>,
    /// routes and CR both (the later of the two).
    pub switch: Option<Duration>,
    /// SIGTERM to process exit (graceful only).
    pub exited: Option<Duration>,
    /// Traffic flows again: consecutive replies after the switch.
    pub resumed: bool,
    /// From the hit to the first echo answered after the last one lost.
    pub restored: Option<Duration>,
    pub loss: Loss,
    /// The new leader lost the Lease again right after taking over (left office).
    pub flapped: bool,
}

/// One failover: the current leader goes away in `mode`, the standby must take over.
/// The old leader is left stopped; the caller restarts it.
pub fn trial(lab: &Lab, obs: &Observer, mode: Mode, interval: Duration, limit: Duration) -> Trial {
    let holder = obs.holder().expect("no Lease holder before the trial");
    let from = lab
        .gw_of_identity(&holder)
        .unwrap_or_else(|| panic!("Lease holder {holder} is no lab gateway"));
    let to = Lab::other(from);
    let g_to = lab.gw(to);
    assert!(lab.pid(to).is_some(), "standby {to} is not running");

    let probe = Probe::start(lab, interval);
    assert!(
        probe.wait_consecutive_after(0.0, 10, Duration::from_secs(10)),
        "no steady ICMP echo to the pod before the {} of {from} ({:?})",
        mode.name(),
        probe.error()
    );
    let t0 = Instant::now();
    let w0 = wall();
    match mode {
        Mode::Crash => {
            lab.signal(from, libc::SIGKILL);
        }
        Mode::Graceful => {
            lab.signal(from, libc::SIGTERM);
        }
        Mode::InstanceLoss => {
            lab.signal(from, libc::SIGKILL);
            lab.cut(from);
        }
        Mode::OneSided => lab.block(from),
    }
    // (A one-sided break leaves the process running: nothing to wait for.)
    let exited = (mode != Mode::OneSided
        && wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
            lab.pid(from).is_none()
        }))
    .then(|| t0.elapsed());

    let mut lease = None;
    let mut routes = None;
    let mut cr = None;
    wait_until(limit, Duration::from_millis(10), || {
        lease = lease.or_else(|| obs.holder_at(t0, |h| lab.gw_of_identity(h) == Some(to)));
        routes = routes.or_else(|| obs.routes_at(t0, &g_to.eni));
        cr = cr.or_else(|| obs.cr_at(t0, &g_to.ip, &g_to.vtep_mac));
        lease.is_some() && routes.is_some() && cr.is_some()
    });
    let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(t0));
    let switch = match (routes, cr) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
    // Traffic resumes: 20 replies in a row after the switch (plus the followers' poll).
    let after = w0 + since(switch).unwrap_or(limit).as_secs_f64();
    let resumed = probe.wait_consecutive_after(after, 20, Duration::from_secs(15));
    let loss = probe.loss_since(w0);
    let restored = probe.restored_since(w0);
    drop(probe);
    let flapped = obs.holder_lost_after(t0, |h| lab.gw_of_identity(h) == Some(to));
    Trial {
        mode,
        from: from.to_string(),
        to: to.to_string(),
        lease: since(lease),
        routes: since(routes),
        cr: since(cr),
        switch: since(switch),
        exited: if mode == Mode::Graceful { exited } else { None },
        resumed,
        restored,
        loss,
        flapped,
    }
}

/// After a [`Mode::OneSided`] trial: the node accepts the old leader's VXLAN again, and
/// the old leader (still running, now standby) settles under the new one with its tunnels
/// healthy again.
pub fn unblock_after(lab: &Lab, obs: &Observer, name: &str) {
    lab.unblock(name);
    let leader = obs
        .wait_holder(lab, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("nobody holds the Lease 30 s after a trial"));
    assert!(
        lab.wait_standby(name, leader, Duration::from_secs(30)),
        "{name} is not a standby under {leader} after the unblock:\n{}",
        lab.status(name).1
    );
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
            lab.metric(name, "hybrid_gateway_tunnel_health_ratio") == Some(1.0)
        }),
        "{name}'s tunnels did not come back after the unblock"
    );
}

/// Brings a gateway stopped by a trial back and waits until it settles as standby under
/// whoever leads by then.
pub fn restore(lab: &Lab, obs: &Observer, name: &str) {
    let leader = obs
        .wait_holder(lab, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("nobody holds the Lease 30 s after a trial"));
    assert_ne!(leader, name, "{name} leads while stopped?");
    lab.start(name);
    assert!(
        lab.wait_standby(name, leader, Duration::from_secs(60)),
        "{name} did not settle as standby under {leader} after a restart:\n{}",
        lab.status(name).1
    );
    // Let the new standby watch the leader renew a few times, as a long-running one would.
    std::thread::sleep(Duration::from_secs(3));
}

pub fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_string(), |d| format!("{} ms", d.as_millis()))
}

// --------------------------------------------------------------------------- stream ---

/// One-way UDP datagrams from one lab host to another on a fixed schedule, each carrying
/// its sequence number, and the receiver's arrival time of each: loss and gaps of one
/// direction measured where the packets arrive (an ICMP echo needs both directions at
/// once and cannot say which one broke).
pub struct Stream {
    state: Arc<Mutex<StreamState>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub interval: Duration,
}

#[derive(Default)]
struct StreamState {
    /// Send time (wall clock) of datagram n at index n.
    sent: Vec<f64>,
    /// Datagram n -> its arrival time.
    got: BTreeMap<u32, f64>,
    error: Option<String>,
}

/// What one direction lost after a moment.
#[derive(Debug, Clone, Default)]
pub struct StreamLoss {
    pub sent: u32,
    pub lost: u32,
    pub longest_run: u32,
    /// longest_run × interval.
    pub gap: Duration,
    /// Arrival (wall clock) of the first datagram after the longest run of losses.
    pub resumed_at: Option<f64>,
}

const STREAM_MAGIC: &[u8; 4] = b"hgw1";

impl Stream {
    /// From `from_ns` (bound to `src` when given: a pod's address) to `dst:port` in `to_ns`.
    pub fn start(
        from_ns: &str,
        src: Option<std::net::Ipv4Addr>,
        to_ns: &str,
        dst: std::net::Ipv4Addr,
        port: u16,
        interval: Duration,
    ) -> Stream {
        let state = Arc::new(Mutex::new(StreamState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp, ns) = (state.clone(), stop.clone(), to_ns.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let receiver = std::thread::spawn(move || {
            enter_netns(&ns);
            let sock = match std::net::UdpSocket::bind((dst, port)) {
                Ok(s) => s,
                Err(e) => {
                    st.lock().unwrap().error = Some(format!("bind {dst}:{port}: {e}"));
                    let _ = ready_tx.send(());
                    return;
                }
            };
            let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
            let _ = ready_tx.send(());
            let mut buf = [0u8; 64];
            while !sp.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                if n >= 8 && &buf[..4] == STREAM_MAGIC {
                    let seq = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                    st.lock().unwrap().got.entry(seq).or_insert_with(wall);
                }
            }
        });
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        let (st, sp, ns) = (state.clone(), stop.clone(), from_ns.to_string());
        let sender = std::thread::spawn(move || {
            enter_netns(&ns);
            let local = (src.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED), 0);
            let sock = match std::net::UdpSocket::bind(local) {
                Ok(s) => s,
                Err(e) => {
                    st.lock().unwrap().error = Some(format!("bind {local:?}: {e}"));
                    return;
                }
            };
            let _ = sock.set_nonblocking(true);
            let start = Instant::now();
            let mut seq: u32 = 0;
            while !sp.load(Ordering::Relaxed) {
                let due = start + interval * seq;
                let now = Instant::now();
                if now < due {
                    std::thread::sleep(due - now);
                    continue;
                }
                let mut pkt = [0u8; 32];
                pkt[..4].copy_from_slice(STREAM_MAGIC);
                pkt[4..8].copy_from_slice(&seq.to_be_bytes());
                st.lock().unwrap().sent.push(wall());
                // A failed send (no route, no neighbour) is a lost datagram, nothing more.
                let _ = sock.send_to(&pkt, (dst, port));
                seq += 1;
            }
        });
        Stream {
            state,
            stop,
            threads: vec![receiver, sender],
            interval,
        }
    }

    pub fn error(&self) -> Option<String> {
        self.state.lock().unwrap().error.clone()
    }

    pub fn received(&self) -> usize {
        self.state.lock().unwrap().got.len()
    }

    /// Waits for `n` consecutive datagrams that arrived after `after` (wall clock).
    pub fn wait_consecutive_after(&self, after: f64, n: u32, limit: Duration) -> bool {
        wait_until(limit, Duration::from_millis(20), || {
            let st = self.state.lock().unwrap();
            let (mut run, mut prev) = (0, None);
            for (&seq, &t) in st.got.iter() {
                if t <= after {
                    continue;
                }
                run = if prev == Some(seq.wrapping_sub(1)) {
                    run + 1
                } else {
                    1
                };
                prev = Some(seq);
                if run >= n {
                    return true;
                }
            }
            false
        })
    }

    /// Datagrams sent from wall time `at` up to the last one that arrived.
    pub fn loss_since(&self, at: f64) -> StreamLoss {
        let st = self.state.lock().unwrap();
        let first = st
            .sent
            .iter()
            .position(|&t| t >= at)
            .unwrap_or(st.sent.len()) as u32;
        let Some(&last) = st.got.keys().next_back() else {
            return StreamLoss::default();
        };
        let (mut lost, mut run, mut longest, mut end) = (0u32, 0u32, 0u32, None);
        for s in first..=last {
            if st.got.contains_key(&s) {
                run = 0;
            } else {
                lost += 1;
                run += 1;
                if run > longest {
                    longest = run;
                    end = Some(s + 1);
                }
            }
        }
        StreamLoss {
            sent: (last + 1).saturating_sub(first),
            lost,
            longest_run: longest,
            gap: self.interval * longest,
            resumed_at: end.and_then(|s| st.got.get(&s).copied()),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The lines `tests/lab/follow.py` logged at or after wall time `since` that contain
/// `needle`, as (wall time, line): when the VPC host and the hybrid node followed.
pub fn follow_log_since(lab: &Lab, since: f64, needle: &str) -> Vec<(f64, String)> {
    let text = std::fs::read_to_string(lab.dir.join("follow.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let t: f64 = l.split_whitespace().nth(1)?.parse().ok()?;
            (t >= since && l.contains(needle)).then(|| (t, l.to_string()))
        })
        .collect()
}
