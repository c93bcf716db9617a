//! Per-AZ mode (issue 16) on real peers: two `hybrid-gateway run` processes, gw-a in
//! us-west-2a and gw-b in us-west-2b (IMDS backed by moto), each in its own network
//! namespace and reaching the kube-apiserver and moto only through recording proxies.
//! The VPC has one managed route table per AZ (each associated with that AZ's subnet).
//!
//! Asserted from the peers' side: in steady state each gateway leads its own AZ's shard
//! (its Lease), its table routes the hybrid pod CIDR to its own ENI and the
//! CiliumVTEPConfig entry for its subnet names it; a kill -9 of gw-a moves shard a to gw-b
//! within a lease + 1 s (from the record: the kill to gw-b's acquiring write of shard a's
//! Lease) while shard b's table never leaves gw-b; gw-a back → shard a handed back by a
//! release. AZ b's table unmanaged → shard b's Lease released and no longer campaigned
//! for; managed again → led by gw-b again. A subnet with another prefix length (Cilium's one cidrMask cannot express the
//! subnets) → the default shard's leader writes the whole CiliumVTEPConfig alone. The
//! leadership invariant (no mutation from a gateway after another gateway's later
//! acquisition) holds per shard on the proxies' record. About 1 minute.
//!
//! Needs root, the cached apiserver build and the AWS peers (tests/aws/peers.sh).

#[path = "support/aws.rs"]
mod peers;
#[path = "support/record.rs"]
mod record;
#[path = "support/recorder.rs"]
mod recorder;
mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::DynamicObject;
use kube::Api;

use record::Kind;
use recorder::{Peer, Recorder, RecordingProxy};
use support::k8s::{client, ApiServer};
use support::Netns;

const NS: &str = "hybrid-gateway";
const LEASE: &str = "hybrid-gateway-leader";
const CIDR: &str = "192.168.32.0/23";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const ZONES: [&str; 2] = ["us-west-2a", "us-west-2b"];
/// Start-up, takeover and handback bound: election rounds, a layout read and the writes.
const BOUND: Duration = Duration::from_secs(20);

struct Gateway {
    name: &'static str,
    ns: Netns,
    ip: String,
    eni: String,
    dir: PathBuf,
    kube: RecordingProxy,
    ec2: RecordingProxy,
    imds: RecordingProxy,
    child: Option<Child>,
}

struct Fleet {
    _server: ApiServer,
    _aws: peers::Peers,
    admin: kube::Client,
    ec2: aws_sdk_ec2::Client,
    /// The managed table of each zone, in ZONES order.
    tables: Vec<String>,
    vpc_id: String,
    gws: Vec<Gateway>,
    recorder: Arc<Recorder>,
    env: BTreeMap<String, String>,
    kubeconfig: String,
}

fn socket(url: &str) -> std::net::SocketAddr {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn daemon_config(g: &Gateway) -> String {
    format!(
        "[gateway]\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"{CIDR}\"]\n\
         [datapath]\nresync_interval = \"10s\"\nfilter = false\n\
         [kubernetes]\nkubeconfig = \"{dir}/kubeconfig\"\nrequest_timeout = \"1s\"\n\
         [election]\nidentity = \"{name}\"\nmode = \"per-az\"\n\
         lease_duration = \"3s\"\nrenew_deadline = \"2s\"\nretry_period = \"1s\"\n\
         [aws]\nroute_table_tag = \"hybrid-gateway.io/managed=true\"\nresync_interval = \"5s\"\n\
         [log]\nlevel = \"info\"\n",
        dir = g.dir.display(),
        name = g.name,
    )
}

/// What the peers say now: each shard Lease's holder (gateway name), each table's target
/// for the hybrid pod CIDR, and each CiliumVTEPConfig entry's tunnel endpoint.
#[derive(Debug, Default, Clone)]
struct State {
    holders: BTreeMap<String, String>,
    routes: BTreeMap<String, String>,
    cr: BTreeMap<String, String>,
}

impl Fleet {
    async fn start(tag: &str) -> Fleet {
        hybrid_gateway::k8s::client::install_crypto_provider();
        let server = ApiServer::start();
        let aws = peers::Peers::start();
        let seed = aws.seed(&["--route-tables", "2"]);
        aws.imds("gw-b", "Name=gw-b", &[]);
        let recorder = Recorder::new();
        let api = socket(&format!("127.0.0.1:{}", server.env["K8S_API_PORT"]));
        let moto = socket(&aws.var("MOTO_URL"));
        let pki = server.dir.join("pki");
        let kubeconfig = std::fs::read_to_string(server.daemon_kubeconfig()).unwrap();
        let mut gws = Vec::new();
        for name in ["gw-a", "gw-b"] {
            let inst = &seed["instances"][name];
            let ip = inst["private_ip"].as_str().unwrap().to_string();
            let ns = Netns::new(&format!("z{tag}{}", &name[3..]));
            ns.sh(&format!(
                "ip link add eth0 type veth peer name eth0p && ip addr add {ip}/16 dev eth0 \
                 && ip link set eth0 up && ip link set eth0p up"
            ));
            let imds_url = aws.var(&format!(
                "IMDS_{}_URL",
                name.to_uppercase().replace('-', "_")
            ));
            let proxy = |peer, up, pki: Option<&std::path::Path>| {
                RecordingProxy::start(name, peer, up, Some(&ns.name), pki, recorder.clone())
            };
            let dir = std::env::temp_dir().join(format!("{}-{name}", ns.name));
            std::fs::create_dir_all(&dir).unwrap();
            gws.push(Gateway {
                name,
                ip,
                eni: inst["eni_id"].as_str().unwrap().to_string(),
                dir,
                kube: proxy(Peer::Kube, api, Some(&pki)),
                ec2: proxy(Peer::Ec2, moto, None),
                imds: proxy(Peer::Plain, socket(&imds_url), None),
                ns,
                child: None,
            });
        }
        let admin = client(&server.admin_kubeconfig()).await;
        apply_per_az_rbac(&server);
        aws.export_sdk_env();
        let sdk = hybrid_gateway::aws::sdk_config("us-west-2", &Default::default()).await;
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&sdk)
                .endpoint_url(aws.var("MOTO_URL"))
                .build(),
        );
        // One managed table per AZ: table i serves the subnet of ZONES[i].
        let mut tables = Vec::new();
        for (i, zone) in ZONES.iter().enumerate() {
            let table = seed["route_tables"][i].as_str().unwrap().to_string();
            let subnet = seed["subnets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["az"] == *zone)
                .unwrap_or_else(|| panic!("no subnet in {zone}: {seed}"))["subnet_id"]
                .as_str()
                .unwrap()
                .to_string();
            ec2.associate_route_table()
                .route_table_id(&table)
                .subnet_id(&subnet)
                .send()
                .await
                .expect("associating a table in moto");
            tables.push(table);
        }
        let env = [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ]
        .iter()
        .map(|k| (k.to_string(), aws.var(k)))
        .collect();
        let mut f = Fleet {
            _server: server,
            _aws: aws,
            admin,
            ec2,
            tables,
            vpc_id: seed["vpc_id"].as_str().unwrap().to_string(),
            gws,
            recorder,
            env,
            kubeconfig,
        };
        for i in 0..f.gws.len() {
            f.spawn(i);
        }
        f
    }

    fn spawn(&mut self, i: usize) {
        let g = &self.gws[i];
        let kc = self
            .kubeconfig
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("server:") {
                    format!("    server: https://{}", g.kube.addr)
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(g.dir.join("kubeconfig"), kc).unwrap();
        let cfg = g.dir.join("config.toml");
        std::fs::write(&cfg, daemon_config(g)).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(g.dir.join("daemon.log"))
            .unwrap();
        let child = Command::new("/usr/sbin/ip")
            .args(["netns", "exec", &g.ns.name])
            .arg(env!("CARGO_BIN_EXE_hybrid-gateway"))
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env_clear()
            .envs(&self.env)
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("NO_COLOR", "1")
            .env("AWS_ENDPOINT_URL_EC2", format!("http://{}", g.ec2.addr))
            .env(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                format!("http://{}", g.imds.addr),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting hybrid-gateway run");
        self.gws[i].child = Some(child);
    }

    /// kill -9: nothing released.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.gws[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self, i: usize) {
        let g = &mut self.gws[i];
        if let Some(mut c) = g.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn state(&self) -> Result<State, String> {
        let mut s = State::default();
        let leases: Api<Lease> = Api::namespaced(self.admin.clone(), NS);
        for zone in ["default"].into_iter().chain(ZONES) {
            let name = match zone {
                "default" => LEASE.to_string(),
                z => format!("{LEASE}-{z}"),
            };
            let holder = leases
                .get_opt(&name)
                .await
                .map_err(|e| format!("Lease {name}: {e}"))?
                .and_then(|l| l.spec?.holder_identity)
                .filter(|h| !h.is_empty());
            if let Some(h) = holder {
                s.holders
                    .insert(zone.to_string(), record::gateway_of(&h).to_string());
            }
        }
        let out = self
            .ec2
            .describe_route_tables()
            .set_route_table_ids(Some(self.tables.clone()))
            .send()
            .await
            .map_err(|e| format!("DescribeRouteTables: {e:?}"))?;
        for t in out.route_tables() {
            let target = t
                .routes()
                .iter()
                .find(|r| r.destination_cidr_block() == Some(CIDR))
                .and_then(|r| r.network_interface_id());
            if let (Some(id), Some(eni)) = (t.route_table_id(), target) {
                s.routes.insert(id.to_string(), eni.to_string());
            }
        }
        let crs: Api<DynamicObject> = Api::all_with(
            self.admin.clone(),
            &hybrid_gateway::k8s::vtep_config::api_resource(),
        );
        if let Some(cr) = crs
            .get_opt("hybrid-gateway")
            .await
            .map_err(|e| format!("reading the CR: {e}"))?
        {
            for e in cr.data["spec"]["endpoints"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                s.cr.insert(
                    format!(
                        "{} {}",
                        e["name"].as_str().unwrap_or("?"),
                        e["cidr"].as_str().unwrap_or("?")
                    ),
                    e["tunnelEndpoint"].as_str().unwrap_or("").to_string(),
                );
            }
        }
        Ok(s)
    }

    /// Whether zone `z` (index) is led by gateway `g` (index) end to end: its Lease, its
    /// table's route and its subnet's CR entry.
    fn zone_on(&self, s: &State, z: usize, g: usize) -> bool {
        let gw = &self.gws[g];
        let entry =
            s.cr.iter()
                .find(|(k, _)| k.starts_with(&format!("vpc-gateway-az-{}-", ZONES[z])));
        s.holders.get(ZONES[z]).map(String::as_str) == Some(gw.name)
            && s.routes.get(&self.tables[z]) == Some(&gw.eni)
            && entry.is_some_and(|(_, ip)| *ip == gw.ip)
    }

    /// Polls until `ok`, up to `limit`; returns the time it took, or the last state.
    async fn wait_for(
        &self,
        limit: Duration,
        mut ok: impl FnMut(&State) -> bool,
        mut each: impl FnMut(&State),
    ) -> Result<Duration, String> {
        let t = Instant::now();
        let mut last = String::from("no state read");
        while t.elapsed() < limit {
            match tokio::time::timeout(Duration::from_secs(5), self.state()).await {
                Ok(Ok(s)) => {
                    each(&s);
                    if ok(&s) {
                        return Ok(t.elapsed());
                    }
                    last = format!("{s:?}");
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = "the peers did not answer within 5 s".into(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last)
    }

    fn logs(&self) -> String {
        self.gws
            .iter()
            .map(|g| {
                let text = std::fs::read_to_string(g.dir.join("daemon.log")).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- {} daemon.log (tail)\n{}",
                    g.name,
                    lines[lines.len().saturating_sub(40)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `hybrid-gateway status` of gateway `i` (text), as an operator on it would run it.
    fn status(&self, i: usize) -> String {
        let g = &self.gws[i];
        let out = Command::new("/usr/sbin/ip")
            .args(["netns", "exec", &g.ns.name])
            .arg(env!("CARGO_BIN_EXE_hybrid-gateway"))
            .arg("status")
            .arg("--config")
            .arg(g.dir.join("config.toml"))
            .output()
            .expect("running hybrid-gateway status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits up to 5 s for gateway `i`'s status to contain every one of `want`.
    fn status_shows(&self, i: usize, want: &[&str]) -> Result<(), String> {
        self.status_until(i, |text| want.iter().all(|w| text.contains(w)))
    }

    /// Waits up to 5 s for gateway `i`'s status text to satisfy `ok`; `Err`: the last text.
    fn status_until(&self, i: usize, ok: impl Fn(&str) -> bool) -> Result<(), String> {
        let t = Instant::now();
        loop {
            let text = self.status(i);
            if ok(&text) {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(5) {
                return Err(text);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The invariant on each shard's part of the record.
    fn violations(&self) -> Vec<String> {
        let events = self.recorder.events();
        let mut out = Vec::new();
        for (i, zone) in ZONES.iter().enumerate() {
            let mine = record::shard_events(
                &events,
                &format!("{LEASE}-{zone}"),
                &self.tables[i..=i],
                &format!("hybrid-gateway.io/term-{zone}"),
            );
            assert!(
                mine.iter().any(|e| e.kind == Kind::Route)
                    && mine.iter().any(|e| e.kind == Kind::Cr),
                "shard {zone}: the record holds no route or CR write: {}",
                record::summary(&events)
            );
            out.extend(
                record::violations(&mine, &Kind::LeaseWrite)
                    .into_iter()
                    .map(|v| format!("shard {zone}: {v}")),
            );
        }
        let default = record::shard_events(&events, LEASE, &[], "hybrid-gateway.io/term");
        out.extend(
            record::violations(&default, &Kind::LeaseWrite)
                .into_iter()
                .map(|v| format!("shard default: {v}")),
        );
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.gws.len() {
            self.stop(i);
        }
        for g in &self.gws {
            if std::thread::panicking() {
                eprintln!("daemon logs kept in {}", g.dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&g.dir);
            }
        }
    }
}

/// Per-AZ mode watches the shard and claim Leases, whose names depend on the AZs: the
/// shipped RBAC's watch rule names only `hybrid-gateway-leader`, so per-AZ mode ships
/// packaging/kubernetes/rbac-per-az.yaml (list/watch of Leases in the namespace), applied
/// here as an operator would.
fn apply_per_az_rbac(server: &ApiServer) {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/kubernetes/rbac-per-az.yaml");
    let out = Command::new(&server.env["K8S_KUBECTL"])
        .arg("--kubeconfig")
        .arg(server.admin_kubeconfig())
        .arg("--request-timeout=30s")
        .arg("apply")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl apply -f {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// When gw-b's first write naming it holder of `lease` reached the API server after `since`.
fn acquired_at(recorder: &Recorder, lease: &str, gw: &str, since: Duration) -> Option<Duration> {
    recorder
        .events()
        .into_iter()
        .filter(|e| {
            e.kind == Kind::LeaseWrite
                && e.at > since
                && e.gw == gw
                && (200..300).contains(&e.status)
                && e.holder.is_some()
                && e.detail.rsplit('/').next() == Some(lease)
        })
        .map(|e| e.at)
        .min()
}

/// When `gw`'s first release (a write emptying the holder) of `lease` reached the API
/// server after `since`.
fn released_at(recorder: &Recorder, lease: &str, gw: &str, since: Duration) -> Option<Duration> {
    recorder
        .events()
        .into_iter()
        .filter(|e| {
            e.kind == Kind::LeaseWrite
                && e.at > since
                && e.gw == gw
                && e.holder.is_none()
                && (200..300).contains(&e.status)
                && e.detail.rsplit('/').next() == Some(lease)
        })
        .map(|e| e.at)
        .min()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_gateway_leads_its_zone_fails_over_hands_back_and_falls_back() {
    support::require_root();
    let mut f = Fleet::start("pz").await;
    let steady = f
        .wait_for(BOUND, |s| f.zone_on(s, 0, 0) && f.zone_on(s, 1, 1), |_| {})
        .await
        .unwrap_or_else(|s| panic!("no steady state: {s}\n{}", f.logs()));
    println!("steady state (each gateway leads its zone) after {steady:?}");
    // Status per shard: the STATUS line and `hybrid-gateway status` name the shard each
    // gateway leads and the one it stands by for.
    f.status_shows(
        1,
        &[
            "leads",
            "us-west-2b (1/1 tables)",
            "standby for",
            "us-west-2a",
            "shard us-west-2b (home): leader",
        ],
    )
    .unwrap_or_else(|s| panic!("gw-b's status: {s}"));
    f.status_shows(
        0,
        &[
            "us-west-2a (1/1 tables)",
            "shard us-west-2b: standby, leader gw-b_",
        ],
    )
    .unwrap_or_else(|s| panic!("gw-a's status: {s}"));

    // HGW_PER_AZ_TRIALS=N repeats the crash and the return N times (default 1) and prints
    // the figures: kill -9 → gw-b's acquisition of shard a (from the record), → tables and
    // CR naming gw-b (polled), and gw-b's release → gw-a's acquisition on the return.
    let trials: usize = std::env::var("HGW_PER_AZ_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let lease_a = format!("{LEASE}-{}", ZONES[0]);
    let (mut takeovers, mut followed, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..trials {
        // kill -9 gw-a: shard a moves to gw-b; shard b's table never leaves gw-b.
        let killed = f.recorder.now();
        f.kill(0);
        let mut b_moved = Vec::new();
        let (b_table, b_eni) = (f.tables[1].clone(), f.gws[1].eni.clone());
        let failover = f
            .wait_for(
                BOUND,
                |s| f.zone_on(s, 0, 1) && f.zone_on(s, 1, 1),
                |s| {
                    if s.routes.get(&b_table) != Some(&b_eni) {
                        b_moved.push(format!("{:?}", s.routes));
                    }
                },
            )
            .await
            .unwrap_or_else(|s| panic!("shard a did not move to gw-b: {s}\n{}", f.logs()));
        assert!(b_moved.is_empty(), "shard b's table moved: {b_moved:?}");
        let took = acquired_at(&f.recorder, &lease_a, "gw-b", killed)
            .expect("gw-b acquired shard a")
            - killed;
        println!("trial {trial}: kill -9 gw-a: gw-b acquired shard a {took:?} after the kill; tables and CR followed after {failover:?}");
        assert!(
            took <= LEASE_DURATION + Duration::from_secs(1),
            "takeover of shard a took {took:?}"
        );
        if trial == 0 {
            f.status_shows(
                1,
                &[
                    "us-west-2a (1/1 tables)",
                    "us-west-2b (1/1 tables)",
                    "shard us-west-2a: leader",
                ],
            )
            .unwrap_or_else(|s| panic!("gw-b's status after the takeover: {s}"));
        }

        // gw-a returns: gw-b hands shard a back with a release.
        let back = f.recorder.now();
        f.spawn(0);
        let handback = f
            .wait_for(BOUND, |s| f.zone_on(s, 0, 0) && f.zone_on(s, 1, 1), |_| {})
            .await
            .unwrap_or_else(|s| panic!("shard a did not move back: {s}\n{}", f.logs()));
        let released = released_at(&f.recorder, &lease_a, "gw-b", back)
            .unwrap_or_else(|| panic!("gw-b did not release shard a: {}", f.logs()));
        let gap = acquired_at(&f.recorder, &lease_a, "gw-a", released)
            .expect("gw-a acquired shard a after the release")
            - released;
        println!("trial {trial}: gw-a restarted: shard a back on gw-a after {handback:?}; gw-b's release → gw-a's acquisition {gap:?}");
        takeovers.push(took);
        followed.push(failover);
        gaps.push(gap);
    }
    if trials > 1 {
        let show = |name: &str, v: &mut Vec<Duration>| {
            v.sort();
            println!(
                "{name} over {trials} trials: min {:?} median {:?} max {:?}",
                v[0],
                v[v.len() / 2],
                v[v.len() - 1]
            );
        };
        show("kill -9 → takeover of shard a", &mut takeovers);
        show("kill -9 → tables and CR name gw-b", &mut followed);
        show("handback: release → acquisition", &mut gaps);
    }

    // AZ b's table is no longer managed (its tag removed): shard b leaves the layout, and
    // both gateways leave its election — gw-b standby and its Lease released, gw-a no
    // longer a visitor — rather than keeping an empty shard until restart; gw-b's status
    // stops listing it. Tagged again, the shard is picked up and gw-b leads it again.
    let lease_b = format!("{LEASE}-{}", ZONES[1]);
    let managed = || {
        aws_sdk_ec2::types::Tag::builder()
            .key("hybrid-gateway.io/managed")
            .value("true")
            .build()
    };
    let untagged = f.recorder.now();
    f.ec2
        .delete_tags()
        .resources(&f.tables[1])
        .tags(managed())
        .send()
        .await
        .expect("untagging AZ b's table in moto");
    let left = f
        .wait_for(BOUND, |s| !s.holders.contains_key(ZONES[1]), |_| {})
        .await
        .unwrap_or_else(|s| {
            panic!(
                "shard b's Lease is still held after its table left the layout: {s}\n{}",
                f.logs()
            )
        });
    assert!(
        released_at(&f.recorder, &lease_b, "gw-b", untagged).is_some(),
        "shard b's Lease was not released by gw-b: {}",
        f.logs()
    );
    f.status_until(1, |text| !text.contains(ZONES[1]))
        .unwrap_or_else(|s| panic!("gw-b's status still lists shard b: {s}"));
    // Nobody campaigns for the vanished shard, past a lease duration.
    tokio::time::sleep(LEASE_DURATION + Duration::from_secs(1)).await;
    let s = f.state().await.expect("reading the peers");
    assert!(
        !s.holders.contains_key(ZONES[1]),
        "a gateway took the vanished shard b: {s:?}\n{}",
        f.logs()
    );
    println!("AZ b's table untagged: shard b's Lease released after {left:?}");
    f.ec2
        .create_tags()
        .resources(&f.tables[1])
        .tags(managed())
        .send()
        .await
        .expect("tagging AZ b's table again in moto");
    let back = f
        .wait_for(BOUND, |s| f.zone_on(s, 0, 0) && f.zone_on(s, 1, 1), |_| {})
        .await
        .unwrap_or_else(|s| panic!("shard b was not picked up again: {s}\n{}", f.logs()));
    println!("AZ b's table tagged again: gw-b leads shard b after {back:?}");

    // A subnet with another prefix length: Cilium's one cidrMask cannot express the
    // subnets any more, so the default shard's leader writes the whole CR alone (one
    // endpoint for the VPC CIDR, naming itself) and removes the per-zone entries; each
    // zone's table stays with its own gateway.
    f.ec2
        .create_subnet()
        .vpc_id(&f.vpc_id)
        .cidr_block("10.250.128.0/20")
        .availability_zone(ZONES[0])
        .send()
        .await
        .expect("creating a /20 subnet in moto");
    let fallback = f
        .wait_for(
            BOUND,
            |s| {
                let Some(leader) = s.holders.get("default") else {
                    return false;
                };
                let ip = &f.gws.iter().find(|g| g.name == *leader).unwrap().ip;
                s.cr.len() == 1
                    && s.cr.get("vpc-gateway 10.250.0.0/16") == Some(ip)
                    && s.routes.get(&f.tables[0]) == Some(&f.gws[0].eni)
                    && s.routes.get(&f.tables[1]) == Some(&f.gws[1].eni)
            },
            |_| {},
        )
        .await
        .unwrap_or_else(|s| panic!("no fallback to the default shard's CR: {s}\n{}", f.logs()));
    println!("/20 subnet added: the default shard's leader wrote the whole CR after {fallback:?}");

    let v = f.violations();
    assert!(
        v.is_empty(),
        "per-shard invariant broken: {v:#?}\n{}",
        f.logs()
    );
}
