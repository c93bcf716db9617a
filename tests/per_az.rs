//! Per-AZ mode (issue 16) on real peers: two `hybrid-gateway run` processes, gw-a in
//! us-west-2a and gw-b in us-west-2b (IMDS backed by moto), each in its own network
//! namespace and reaching the kube-apiserver, moto and DynamoDB Local only through
//! recording proxies (the fleet is tests/support/fleet.rs, shared with tests/faults.rs).
//! The VPC has one managed route table per AZ (each associated with that AZ's subnet).
//!
//! Asserted from the peers' side: in steady state each gateway leads its own AZ's shard
//! (its Lease), its table routes the hybrid pod CIDR to its own ENI and the
//! CiliumVTEPConfig entry for its subnet names it; every gateway judges whom each shard's
//! entries name (a shard's entry pointed at a gateway that does not lead the shard shows
//! on that gateway); a kill -9 of gw-a moves shard a to gw-b within a lease + 1 s (from
//! the record: the kill to gw-b's acquiring write of shard a's Lease) while shard b's table
//! never leaves gw-b; gw-a back → shard a handed back by a release. AZ b's table
//! unmanaged → shard b's Lease released and no longer campaigned for; managed again → led
//! by gw-b again. The CRD removed → each shard leader not ready, naming its shard; back →
//! ready. A subnet with another prefix length (Cilium's one cidrMask cannot express the
//! subnets) → the default shard's leader writes the whole CiliumVTEPConfig alone. The
//! leadership invariant (no mutation from a gateway after another gateway's later
//! acquisition) holds per shard on the proxies' record.
//!
//! The same with `[election.dynamodb]`: each shard has its own lock item, which is the
//! authority of the invariant; the takeover bound allows for the lock poll; and a final
//! stop (`cleanup_on_shutdown`) deletes the stopping gateway's routes in the shard it leads
//! only. About 60 s and 45 s; run together, 70–100 s.
//!
//! Needs root, the cached apiserver build and the AWS peers (tests/aws/peers.sh).

#[path = "support/fleet.rs"]
mod fleet;
#[path = "support/aws.rs"]
mod peers;
#[path = "support/record.rs"]
mod record;
#[path = "support/recorder.rs"]
mod recorder;
mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::DynamicObject;
use kube::Api;

use record::Kind;

const NS: &str = "hybrid-gateway";
const LEASE: &str = "hybrid-gateway-leader";
const CIDR: &str = "192.168.32.0/23";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RETRY_PERIOD: Duration = Duration::from_secs(1);
const ZONES: [&str; 2] = ["us-west-2a", "us-west-2b"];
/// Start-up, takeover and handback bound: election rounds, a layout read and the writes.
const BOUND: Duration = Duration::from_secs(20);

/// The DynamoDB lock's configured key in the test with the lock: the default shard's item;
/// each AZ shard's is `<key>-<az>`.
const LOCK_KEY: &str = "pz/leader";

/// The shared fleet (tests/support/fleet.rs) in per-AZ mode.
struct Fleet {
    base: fleet::Fleet,
    /// The managed table of each zone, in ZONES order.
    tables: Vec<String>,
    vpc_id: String,
    /// With the DynamoDB lock: its table (the daemons then elect with a Lease and a lock
    /// item per shard).
    lock_table: Option<String>,
}

impl std::ops::Deref for Fleet {
    type Target = fleet::Fleet;
    fn deref(&self) -> &fleet::Fleet {
        &self.base
    }
}

impl std::ops::DerefMut for Fleet {
    fn deref_mut(&mut self) -> &mut fleet::Fleet {
        &mut self.base
    }
}

fn daemon_config(g: &fleet::Gateway, lock_table: Option<&str>) -> String {
    let lock = lock_table.map_or(String::new(), |t| {
        format!("[election.dynamodb]\ntable = \"{t}\"\nkey = \"{LOCK_KEY}\"\n")
    });
    // Only the DynamoDB fleet tests the final stop. The final-stop marker is one host-wide
    // file and both tests of this file run at once: a Lease-only gateway stopping while the
    // marker is there would take it (and delete its routes) in the other test's place.
    let cleanup = lock_table.is_some();
    format!(
        "[gateway]\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"{CIDR}\"]\n\
         [datapath]\nresync_interval = \"10s\"\nfilter = false\n\
         [kubernetes]\nkubeconfig = \"{dir}/kubeconfig\"\nrequest_timeout = \"1s\"\n\
         [election]\nidentity = \"{name}\"\nmode = \"per-az\"\n\
         lease_duration = \"3s\"\nrenew_deadline = \"2s\"\nretry_period = \"1s\"\n\
         {lock}\
         [aws]\nroute_table_tag = \"hybrid-gateway.io/managed=true\"\nresync_interval = \"5s\"\n\
         cleanup_on_shutdown = {cleanup}\n\
         [log]\nlevel = \"info\"\n",
        dir = g.dir.display(),
        name = g.name,
    )
}

/// What the peers say now: each shard Lease's holder (gateway name), each table's target
/// for the hybrid pod CIDR, and each CiliumVTEPConfig entry's tunnel endpoint.
#[derive(Debug, Default, Clone)]
struct State {
    /// Who acts for each shard: the Lease's holder, or with DynamoDB the lock item's.
    holders: BTreeMap<String, String>,
    routes: BTreeMap<String, String>,
    cr: BTreeMap<String, String>,
}

impl Fleet {
    /// `lock`: elect with a DynamoDB lock item per shard too.
    async fn start(tag: &str, lock: bool) -> Fleet {
        let lock_table = lock.then(|| format!("hgw-per-az-{tag}-{}", std::process::id()));
        let mut seed_args = vec!["--route-tables", "2"];
        if let Some(t) = &lock_table {
            seed_args.extend(["--lock-table", t.as_str()]);
        }
        let base = fleet::Fleet::start(&format!("z{tag}"), &seed_args).await;
        // Per-AZ mode watches the shard and claim Leases, whose names depend on the AZs:
        // the shipped RBAC's watch rule names only `hybrid-gateway-leader`, so per-AZ mode
        // ships rbac-per-az.yaml (list/watch of Leases in the namespace), applied here as
        // an operator would.
        base.kubectl_apply("packaging/kubernetes/rbac-per-az.yaml");
        let seed = base.seed.clone();
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
            base.ec2
                .associate_route_table()
                .route_table_id(&table)
                .subnet_id(&subnet)
                .send()
                .await
                .expect("associating a table in moto");
            tables.push(table);
        }
        let mut f = Fleet {
            base,
            tables,
            vpc_id: seed["vpc_id"].as_str().unwrap().to_string(),
            lock_table,
        };
        for i in 0..f.gws.len() {
            f.spawn(i);
        }
        f
    }

    fn spawn(&mut self, i: usize) {
        let config = daemon_config(&self.gws[i], self.lock_table.as_deref());
        self.base.spawn(i, &config);
    }

    /// The shard's lock item key (`zone` "default" or an AZ).
    fn lock_key(zone: &str) -> String {
        match zone {
            "default" => LOCK_KEY.to_string(),
            z => format!("{LOCK_KEY}-{z}"),
        }
    }

    /// The owner of the lock item `key` (None: released or never written), read from
    /// DynamoDB Local directly.
    async fn lock_owner(&self, key: &str) -> Result<Option<String>, String> {
        let table = self.lock_table.as_deref().ok_or("no lock table")?;
        let item = self
            .ddb
            .get_item()
            .table_name(table)
            .key("lock_key", AttributeValue::S(key.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| format!("GetItem {key}: {e:?}"))?
            .item;
        Ok(item.and_then(|i| {
            if matches!(i.get("released"), Some(AttributeValue::Bool(true))) {
                return None;
            }
            i.get("owner")?
                .as_s()
                .ok()
                .filter(|o| !o.is_empty())
                .cloned()
        }))
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
            let holder = match self.lock_table {
                Some(_) => self.lock_owner(&Self::lock_key(zone)).await?,
                None => holder,
            };
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

    /// Whose acquisitions decide who may act: the Lease's, or with DynamoDB the lock's.
    fn authority(&self) -> Kind {
        match self.lock_table {
            Some(_) => Kind::LockWrite,
            None => Kind::LeaseWrite,
        }
    }

    /// The invariant on each shard's part of the record.
    fn violations(&self) -> Vec<String> {
        let events = self.recorder.events();
        let authority = self.authority();
        let lock = |zone: &str| self.lock_table.as_ref().map(|_| Self::lock_key(zone));
        let mut out = Vec::new();
        for (i, zone) in ZONES.iter().enumerate() {
            let mine = record::shard_events(
                &events,
                &format!("{LEASE}-{zone}"),
                lock(zone).as_deref(),
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
                record::violations(&mine, &authority)
                    .into_iter()
                    .map(|v| format!("shard {zone}: {v}")),
            );
        }
        let default = record::shard_events(
            &events,
            LEASE,
            lock("default").as_deref(),
            &[],
            "hybrid-gateway.io/term",
        );
        out.extend(
            record::violations(&default, &authority)
                .into_iter()
                .map(|v| format!("shard default: {v}")),
        );
        out
    }
}

impl Fleet {
    /// kill -9 → the other gateway's acquisition of the shard: a lease + 1 s with the
    /// Lease alone (a standby watches the Lease, so its expiry clock starts at the holder's
    /// last renewal). With DynamoDB, active/standby's combined election polls the lock item
    /// every jittered retry period (1–2.2 s) instead: a renewal just after a poll starts the
    /// clock at the next poll, so the bound is a lease + 2.2 s + 1 s.
    fn takeover_bound(&self) -> Duration {
        let poll = match self.lock_table {
            Some(_) => RETRY_PERIOD.mul_f64(1.0 + hybrid_gateway::config::JITTER_FACTOR),
            None => Duration::ZERO,
        };
        LEASE_DURATION + poll + Duration::from_secs(1)
    }

    /// The authority store of zone `z`'s shard as the record names it: its Lease, or with
    /// DynamoDB its lock item's key.
    fn zone_store(&self, z: usize) -> String {
        match self.lock_table {
            Some(_) => Self::lock_key(ZONES[z]),
            None => format!("{LEASE}-{}", ZONES[z]),
        }
    }

    /// Successful writes of the authority store `store` from `gw` after `since` that set a
    /// holder (`acquire`) or release it; the first one's time.
    fn first_write(
        &self,
        store: &str,
        gw: &str,
        since: Duration,
        acquire: bool,
    ) -> Option<Duration> {
        let kind = self.authority();
        self.recorder
            .events()
            .into_iter()
            .filter(|e| {
                e.kind == kind
                    && e.at > since
                    && e.gw == gw
                    && (200..300).contains(&e.status)
                    && e.holder.is_some() == acquire
                    && match kind {
                        Kind::LockWrite => e.detail.contains(&format!(" key={store} ")),
                        _ => e.detail.rsplit('/').next() == Some(store),
                    }
            })
            .map(|e| e.at)
            .min()
    }

    /// kill -9 of gw-a and its return, `trials` times: shard a moves to gw-b within
    /// [`Fleet::takeover_bound`] of the kill (from the record: gw-b's acquiring write of
    /// shard a's authority store) while shard b's table never leaves gw-b; gw-a back →
    /// gw-b releases shard a and gw-a acquires it. `after_takeover` runs once, after the
    /// first takeover.
    async fn fail_over_and_back(&mut self, trials: usize, after_takeover: impl Fn(&Fleet)) {
        let store_a = self.zone_store(0);
        let (mut takeovers, mut followed, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
        for trial in 0..trials {
            // kill -9 gw-a: shard a moves to gw-b; shard b's table never leaves gw-b.
            let killed = self.recorder.now();
            self.kill(0);
            let mut b_moved = Vec::new();
            let (b_table, b_eni) = (self.tables[1].clone(), self.gws[1].eni.clone());
            let failover = self
                .wait_for(
                    BOUND,
                    |s| self.zone_on(s, 0, 1) && self.zone_on(s, 1, 1),
                    |s| {
                        if s.routes.get(&b_table) != Some(&b_eni) {
                            b_moved.push(format!("{:?}", s.routes));
                        }
                    },
                )
                .await
                .unwrap_or_else(|s| panic!("shard a did not move to gw-b: {s}\n{}", self.logs()));
            assert!(b_moved.is_empty(), "shard b's table moved: {b_moved:?}");
            let took = self
                .first_write(&store_a, "gw-b", killed, true)
                .expect("gw-b acquired shard a")
                - killed;
            println!("trial {trial}: kill -9 gw-a: gw-b acquired shard a ({store_a}) {took:?} after the kill; tables and CR followed after {failover:?}");
            assert!(
                took <= self.takeover_bound(),
                "takeover of shard a took {took:?} (bound {:?})",
                self.takeover_bound()
            );
            if trial == 0 {
                after_takeover(self);
            }

            // gw-a returns: gw-b hands shard a back with a release.
            let back = self.recorder.now();
            self.spawn(0);
            let handback = self
                .wait_for(
                    BOUND,
                    |s| self.zone_on(s, 0, 0) && self.zone_on(s, 1, 1),
                    |_| {},
                )
                .await
                .unwrap_or_else(|s| panic!("shard a did not move back: {s}\n{}", self.logs()));
            let released = self
                .first_write(&store_a, "gw-b", back, false)
                .unwrap_or_else(|| panic!("gw-b did not release shard a: {}", self.logs()));
            let gap = self
                .first_write(&store_a, "gw-a", released, true)
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
    }
}

/// The daemons' health and metrics listeners (defaults), inside each gateway's namespace.
const HEALTH_PORT: u16 = 8088;
const METRICS_PORT: u16 = 10080;
const CRD: &str = "ciliumvtepconfigs.cilium.io";

impl Fleet {
    /// Per-shard readiness: the CiliumVTEPConfig CRD removed → each gateway, leading its own
    /// zone's shard, cannot write that shard's entries: `/readyz` answers 503 naming the
    /// shard and why, `hybrid-gateway status` says so under the shard, and the shard's
    /// `hybrid_gateway_shard_vtepconfig_unserved` gauge is 1 (the other zone's, led
    /// elsewhere, 0). The CRD back → ready again and each zone's entry names its gateway.
    async fn shard_readiness_follows_the_served_crd(&self) {
        let gone = Instant::now();
        self.kubectl(&["delete", "crd", CRD, "--wait=true"]);
        for (i, zone) in ZONES.iter().enumerate() {
            let want = format!("leader of {zone}, ");
            let body = loop {
                let (code, body) = self.http_get(i, HEALTH_PORT, "/readyz");
                if code == 503 && body.contains(&want) && body.contains("not installed") {
                    break body;
                }
                assert!(
                    gone.elapsed() < BOUND,
                    "{}: /readyz {code} {body:?} after the CRD was removed\n{}",
                    self.gws[i].name,
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            println!(
                "CRD removed: {} not ready after {:?}: {}",
                self.gws[i].name,
                gone.elapsed(),
                body.trim()
            );
            self.status_shows(
                i,
                &[
                    &format!("shard {zone} (home): leader"),
                    "not ready: CiliumVTEPConfig entries not written:",
                ],
            )
            .unwrap_or_else(|s| panic!("{}'s status: {s}", self.gws[i].name));
            let unserved = |z| self.shard_gauge(i, "shard_vtepconfig_unserved", z);
            assert_eq!(unserved(zone), Some(1));
            assert_ne!(unserved(ZONES[1 - i]), Some(1));
        }
        // The CRD back: the leaders write their entries again and say ready.
        self.kubectl_apply(&format!("tests/fixtures/crds/{CRD}.yaml"));
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{CRD}"),
        ]);
        let back = self
            .wait_for(
                BOUND,
                |s| {
                    self.zone_on(s, 0, 0)
                        && self.zone_on(s, 1, 1)
                        && (0..2).all(|i| self.http_get(i, HEALTH_PORT, "/readyz").0 == 200)
                },
                |_| {},
            )
            .await
            .unwrap_or_else(|s| {
                panic!(
                    "not ready again after the CRD came back: {s}\n{}",
                    self.logs()
                )
            });
        println!("CRD back: both ready, each zone's entry naming its gateway after {back:?}");
    }

    /// Gauge `hybrid_gateway_<name>{shard="<shard>"}` of gateway `i`, scraped now.
    fn shard_gauge(&self, i: usize, name: &str, shard: &str) -> Option<i64> {
        let (_, metrics) = self.http_get(i, METRICS_PORT, "/metrics");
        let series = format!("hybrid_gateway_{name}{{shard=\"{shard}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Whom each shard's CiliumVTEPConfig entries name, judged per shard by every gateway:
    /// in steady state each gateway's own zone's entries name it (its leader) and the other
    /// zone's do not; `hybrid-gateway status` says so under each shard. Then gw-b, leader
    /// of zone b, is frozen (SIGSTOP) and zone b's entry is pointed at gw-a behind its back:
    /// gw-a, which does not lead zone b, reports that zone b's entries name it — the
    /// condition of the HybridGatewayShardVtepConfigOnNonLeader alert — until it takes zone
    /// b over (a lease later). gw-b resumed → each zone back on its own gateway.
    async fn cr_judged_per_shard(&mut self) {
        for (i, zone) in ZONES.iter().enumerate() {
            let other = ZONES[1 - i];
            let t = Instant::now();
            while !(self.shard_gauge(i, "shard_vtepconfig_names_me", zone) == Some(1)
                && self.shard_gauge(i, "shard_vtepconfig_names_me", other) == Some(0)
                && self.shard_gauge(i, "shard_vtepconfig_named", other) == Some(1))
            {
                assert!(
                    t.elapsed() < Duration::from_secs(5),
                    "{}: shard gauges: {}",
                    self.gws[i].name,
                    self.http_get(i, METRICS_PORT, "/metrics").1
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // The per-shard alert rules query only series a per-AZ daemon exports (the rest of
        // the rules are checked against a daemon in tests/daemon.rs).
        let rules = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/monitoring/alerts.yml"
        ))
        .unwrap();
        let (_, metrics) = self.http_get(0, METRICS_PORT, "/metrics");
        let queried: std::collections::BTreeSet<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|t| t.starts_with("hybrid_gateway_shard_"))
            .collect();
        assert!(queried.len() >= 3, "{queried:?}");
        for name in queried {
            assert!(
                metrics.contains(&format!("# TYPE {name} ")),
                "alerts.yml queries {name}, which a per-AZ daemon does not export:\n{metrics}"
            );
        }
        self.status_shows(
            0,
            &[
                &format!(
                    "vtep config entries: tunnelEndpoint {} (this gateway, the shard's leader)",
                    self.gws[0].ip
                ),
                &format!(
                    "vtep config entries: tunnelEndpoint {} (another gateway)",
                    self.gws[1].ip
                ),
            ],
        )
        .unwrap_or_else(|s| panic!("gw-a's status: {s}"));

        // gw-b frozen; zone b's entry pointed at gw-a.
        self.gws[1].signal(libc::SIGSTOP);
        let frozen = Instant::now();
        let crs: Api<DynamicObject> = Api::all_with(
            self.admin.clone(),
            &hybrid_gateway::k8s::vtep_config::api_resource(),
        );
        let mut cr = crs.get("hybrid-gateway").await.expect("reading the CR");
        let prefix = format!("vpc-gateway-az-{}-", ZONES[1]);
        for e in cr.data["spec"]["endpoints"]
            .as_array_mut()
            .expect("endpoints")
            .iter_mut()
            .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
        {
            e["tunnelEndpoint"] = serde_json::Value::String(self.gws[0].ip.clone());
        }
        crs.replace("hybrid-gateway", &Default::default(), &cr)
            .await
            .expect("pointing zone b's entry at gw-a");
        let judged = loop {
            let names_me = self.shard_gauge(0, "shard_vtepconfig_names_me", ZONES[1]);
            let leads = self.shard_gauge(0, "shard_leader", ZONES[1]);
            if names_me == Some(1) && leads == Some(0) {
                break frozen.elapsed();
            }
            assert!(
                leads != Some(1),
                "gw-a took zone b over before it reported zone b's entries naming it\n{}",
                self.logs()
            );
            assert!(
                frozen.elapsed() < LEASE_DURATION + Duration::from_secs(1),
                "gw-a never reported zone b's entries naming it while not leading zone b"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!("zone b's entry pointed at gw-a (gw-b frozen): gw-a reported it, not leading zone b, after {judged:?}");
        self.gws[1].signal(libc::SIGCONT);
        let back = self
            .wait_for(
                BOUND,
                |s| self.zone_on(s, 0, 0) && self.zone_on(s, 1, 1),
                |_| {},
            )
            .await
            .unwrap_or_else(|s| panic!("no steady state after gw-b resumed: {s}\n{}", self.logs()));
        println!("gw-b resumed: each zone back on its own gateway after {back:?}");
    }
}

/// The package's removal script leaves this before stopping the daemon (a final stop).
const FINAL_STOP_MARKER: &str = "/run/hybrid-gateway/final-stop";

impl Fleet {
    /// `aws.cleanup_on_shutdown` on a final stop, per shard: gw-a (leading zone a) stopped
    /// with the package's final-stop marker deletes its route in zone a's table — from the
    /// record: gw-a's DeleteRoute of that table reached EC2 after the stop began, while gw-a
    /// still held zone a (the per-shard invariant, checked after, would flag it otherwise)
    /// — and sends no route write to zone b's table, which it does not lead. gw-b then
    /// takes zone a over (it was released) and points the table at itself.
    async fn final_stop_cleans_up_the_led_shard(&mut self) {
        std::fs::create_dir_all("/run/hybrid-gateway").unwrap();
        std::fs::write(FINAL_STOP_MARKER, b"").unwrap();
        let stopped = self.recorder.now();
        self.stop(0);
        // The marker is consumed by the stopping daemon; never leave it for another.
        let consumed = std::fs::remove_file(FINAL_STOP_MARKER).is_err();
        let events = self.recorder.events();
        let routes_from_a: Vec<&record::Event> = events
            .iter()
            .filter(|e| e.at > stopped && e.gw == "gw-a" && e.kind == Kind::Route)
            .collect();
        let deleted_a = routes_from_a.iter().any(|e| {
            e.detail.starts_with("DeleteRoute ")
                && e.detail.contains(&format!(" {} ", self.tables[0]))
                && (200..300).contains(&e.status)
        });
        assert!(
            consumed && deleted_a,
            "final stop of gw-a: marker consumed {consumed}, route writes after the stop: {routes_from_a:?}\n{}",
            self.logs()
        );
        assert!(
            !routes_from_a
                .iter()
                .any(|e| e.detail.contains(&format!(" {} ", self.tables[1]))),
            "gw-a wrote zone b's table on its final stop: {routes_from_a:?}"
        );
        println!(
            "final stop of gw-a: {}",
            routes_from_a
                .iter()
                .map(|e| e.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        let took = self
            .wait_for(
                BOUND,
                |s| self.zone_on(s, 0, 1) && self.zone_on(s, 1, 1),
                |_| {},
            )
            .await
            .unwrap_or_else(|s| {
                panic!(
                    "zone a did not move to gw-b after gw-a's final stop: {s}\n{}",
                    self.logs()
                )
            });
        println!("gw-a's final stop: zone a on gw-b after {took:?}");
    }
}

/// HGW_PER_AZ_TRIALS=N repeats the crash and the return N times (default 1) and prints
/// the figures: kill -9 → gw-b's acquisition of shard a (from the record), → tables and CR
/// naming gw-b (polled), and gw-b's release → gw-a's acquisition on the return.
fn trials() -> usize {
    std::env::var("HGW_PER_AZ_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_gateway_leads_its_zone_fails_over_hands_back_and_falls_back() {
    support::require_root();
    let mut f = Fleet::start("pz", false).await;
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
    f.cr_judged_per_shard().await;

    f.fail_over_and_back(trials(), |f| {
        f.status_shows(
            1,
            &[
                "us-west-2a (1/1 tables)",
                "us-west-2b (1/1 tables)",
                "shard us-west-2a: leader",
            ],
        )
        .unwrap_or_else(|s| panic!("gw-b's status after the takeover: {s}"));
    })
    .await;

    // AZ b's table is no longer managed (its tag removed): shard b leaves the layout, and
    // both gateways leave its election — gw-b standby and its Lease released, gw-a no
    // longer a visitor — rather than keeping an empty shard until restart; gw-b's status
    // stops listing it. Tagged again, the shard is picked up and gw-b leads it again.
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
        f.first_write(&f.zone_store(1), "gw-b", untagged, false)
            .is_some(),
        "shard b's Lease was not released by gw-b: {}",
        f.logs()
    );
    f.status_until(1, |text| !text.contains(ZONES[1]))
        .unwrap_or_else(|s| panic!("gw-b's status still lists shard b: {s}"));
    // Nobody campaigns for the vanished shard, past a lease duration; and gw-b's shard
    // series are gone with it (no stale "leader of us-west-2b").
    tokio::time::sleep(LEASE_DURATION + Duration::from_secs(1)).await;
    for gauge in ["shard_leader", "shard_term", "shard_route_tables"] {
        assert_eq!(
            f.shard_gauge(1, gauge, ZONES[1]),
            None,
            "gw-b still exports {gauge} for the vanished shard"
        );
    }
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

    f.shard_readiness_follows_the_served_crd().await;

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

/// Per-AZ mode with `[election.dynamodb]`: each shard's election is active/standby's
/// Lease + DynamoDB lock, on the shard's Lease and its own lock item (the default shard's
/// is the configured key, each AZ's `<key>-<az>`). Asserted from what reached DynamoDB
/// Local and the other peers: each gateway holds its own zone's lock item and its table
/// and CR entry name it; kill -9 of gw-a → gw-b acquires shard a's lock item within a
/// lease + 1 s; gw-a back → gw-b releases the item and gw-a acquires it; and per shard, no
/// route or CR write arrives from a gateway after another gateway acquired that shard's
/// lock item (the lock, not the Lease, is the authority). About 1 minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dynamodb_each_zone_has_its_own_lock_item_and_one_writer() {
    support::require_root();
    let mut f = Fleet::start("pd", true).await;
    let steady = f
        .wait_for(BOUND, |s| f.zone_on(s, 0, 0) && f.zone_on(s, 1, 1), |_| {})
        .await
        .unwrap_or_else(|s| panic!("no steady state: {s}\n{}", f.logs()));
    println!("steady state (each gateway holds its zone's lock item) after {steady:?}");
    // One item per shard, under the documented keys; the default shard's is the key itself.
    for zone in ["default"].into_iter().chain(ZONES) {
        let key = Fleet::lock_key(zone);
        let owner = f.lock_owner(&key).await.unwrap();
        assert!(owner.is_some(), "no holder of lock item {key}");
    }
    // Each gateway holds a lock item (its zone's) and says so.
    for i in 0..2 {
        let (_, metrics) = f.http_get(i, METRICS_PORT, "/metrics");
        assert!(
            metrics
                .lines()
                .any(|l| l.trim() == "hybrid_gateway_dynamodb_lock_held 1"),
            "{}: {metrics}",
            f.gws[i].name
        );
    }
    f.fail_over_and_back(trials(), |_| {}).await;
    f.final_stop_cleans_up_the_led_shard().await;
    let v = f.violations();
    assert!(
        v.is_empty(),
        "per-shard invariant (lock authority) broken: {v:#?}\n{}",
        f.logs()
    );
    // Each shard's lock item was written, and only its holder's effects count: the record
    // holds acquisitions of both zones' items by both gateways (the takeover and the return).
    let events = f.recorder.events();
    for gw in ["gw-a", "gw-b"] {
        let key = Fleet::lock_key(ZONES[0]);
        assert!(
            record::acquisitions(
                &record::shard_events(&events, "-", Some(&key), &[], "-"),
                &Kind::LockWrite
            )
            .iter()
            .any(|(_, g)| g == gw),
            "{gw} never acquired {key}: {}",
            record::summary(&events)
        );
    }
}
