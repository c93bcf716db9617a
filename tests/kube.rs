//! The Kubernetes side against a real kube-apiserver with the CRDs installed, using the
//! daemon's least-privilege identity from the shipped RBAC (a missing verb fails here).
//! Needs root and the cached apiserver build (`tests/k8s/apiserver.sh install build`).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use hybrid_gateway::datapath::Mac;
use hybrid_gateway::k8s::{cilium_nodes, vtep_config};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use support::k8s::{client, spawn_elector, ApiServer};
use support::{expected_vtep, veth, vtep_state, wait_until, Netns};

fn cilium_node(name: &str, ip: &str, cidrs: &[&str], hybrid: bool) -> DynamicObject {
    let mut o = DynamicObject::new(name, &cilium_nodes::api_resource()).data(json!({
        "spec": {
            "addresses": [{"type": "InternalIP", "ip": ip}, {"type": "CiliumInternalIP", "ip": "192.168.32.1"}],
            "ipam": {"podCIDRs": cidrs},
        }
    }));
    let compute = if hybrid { "hybrid" } else { "ec2" };
    o.metadata.labels = Some(BTreeMap::from([(
        "eks.amazonaws.com/compute-type".to_string(),
        compute.to_string(),
    )]));
    o
}

async fn apply_node(api: &Api<DynamicObject>, node: DynamicObject) {
    let name = node.metadata.name.clone().unwrap();
    match api.get_opt(&name).await.unwrap() {
        None => {
            api.create(&PostParams::default(), &node).await.unwrap();
        }
        Some(cur) => {
            let mut node = node;
            node.metadata.resource_version = cur.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &node)
                .await
                .unwrap();
        }
    }
}

fn converges(ns: &Netns, want: &[(&str, &[&str])]) -> bool {
    let want = expected_vtep(want);
    wait_until(Duration::from_secs(10), || vtep_state(ns) == want)
}

#[test]
fn cilium_node_watch_drives_the_kernel() {
    let gw = Netns::new("kgw");
    let peer = Netns::new("kpeer");
    veth(&gw, "u0", "10.99.0.1/24", &peer, "u1", "10.99.0.2/24");
    let server = ApiServer::start_in(Some(&gw));
    let cfg = server.dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nnode_ip = \"10.99.0.1\"\nvpc_cidrs = [\"10.250.0.0/16\"]\nhybrid_pod_cidrs = [\"192.168.32.0/23\"]\n\
             [datapath]\nresync_interval = \"1s\"\n[kubernetes]\nkubeconfig = \"{}\"\n",
            server.daemon_kubeconfig().display()
        ),
    )
    .unwrap();
    let daemon = gw.spawn(
        env!("CARGO_BIN_EXE_hybrid-gateway"),
        &["run", "--config", cfg.to_str().unwrap()],
    );
    let admin_cfg = server.admin_kubeconfig();

    gw.run(|| async {
        let admin = client(&admin_cfg).await;
        let api: Api<DynamicObject> = Api::all_with(admin, &cilium_nodes::api_resource());

        apply_node(
            &api,
            cilium_node("n1", "10.99.0.2", &["192.168.32.0/25"], true),
        )
        .await;
        assert!(
            converges(&gw, &[("10.99.0.2", &["192.168.32.0/25"])]),
            "add: {:?}",
            vtep_state(&gw)
        );

        apply_node(
            &api,
            cilium_node("n1", "10.99.0.3", &["192.168.32.0/25"], true),
        )
        .await;
        assert!(
            converges(&gw, &[("10.99.0.3", &["192.168.32.0/25"])]),
            "IP change: {:?}",
            vtep_state(&gw)
        );

        apply_node(
            &api,
            cilium_node(
                "n1",
                "10.99.0.3",
                &["192.168.32.0/26", "192.168.33.0/26", "fd00::/96"],
                true,
            ),
        )
        .await;
        assert!(
            converges(
                &gw,
                &[("10.99.0.3", &["192.168.32.0/26", "192.168.33.0/26"])]
            ),
            "CIDR change: {:?}",
            vtep_state(&gw)
        );

        // Status-only churn must not reach the kernel: watch netlink while it happens.
        let monitor = gw.spawn("ip", &["-o", "monitor", "route", "neigh"]);
        let status =
            json!({"status": {"ipam": {"used": {"192.168.32.5": {"owner": "default/pod"}}}}});
        for _ in 0..5 {
            api.patch("n1", &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2500)).await; // > two resync periods too
        monitor.signal(libc::SIGTERM);
        let out = monitor.wait(Duration::from_secs(2));
        let ours: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("hybrid_vxlan0") || l.contains("192.168.3"))
            .map(String::from)
            .collect();
        assert!(
            ours.is_empty(),
            "status updates or resyncs rewrote kernel entries: {ours:?}"
        );

        // Malformed and conflicting nodes are skipped; the good one is programmed.
        apply_node(
            &api,
            cilium_node("n2", "10.99.0.4", &["192.168.33.128/25"], true),
        )
        .await;
        let mut no_ip = cilium_node("broken", "10.99.0.5", &["192.168.32.128/26"], true);
        no_ip.data["spec"]["addresses"] = json!([{"type": "ExternalIP", "ip": "1.2.3.4"}]);
        apply_node(&api, no_ip).await;
        apply_node(
            &api,
            cilium_node("thief", "10.99.0.6", &["192.168.33.128/26"], true),
        )
        .await;
        apply_node(
            &api,
            cilium_node("ipv6only", "10.99.0.7", &["fd00:1::/96"], true),
        )
        .await;
        apply_node(
            &api,
            cilium_node("outside", "10.99.0.8", &["10.250.7.0/24"], true),
        )
        .await;
        assert!(
            converges(
                &gw,
                &[
                    ("10.99.0.3", &["192.168.32.0/26", "192.168.33.0/26"]),
                    ("10.99.0.4", &["192.168.33.128/25"])
                ]
            ),
            "{:?}",
            vtep_state(&gw)
        );

        // Relabelled away: as good as deleted.
        apply_node(
            &api,
            cilium_node(
                "n1",
                "10.99.0.3",
                &["192.168.32.0/26", "192.168.33.0/26"],
                false,
            ),
        )
        .await;
        assert!(
            converges(&gw, &[("10.99.0.4", &["192.168.33.128/25"])]),
            "relabel: {:?}",
            vtep_state(&gw)
        );

        for n in ["broken", "thief", "ipv6only", "outside"] {
            api.delete(n, &DeleteParams::default()).await.unwrap();
        }
        api.delete("n2", &DeleteParams::default()).await.unwrap();
        assert!(converges(&gw, &[]), "delete: {:?}", vtep_state(&gw));

        // An API outage keeps the kernel as it is; the watch resumes afterwards.
        apply_node(
            &api,
            cilium_node("n3", "10.99.0.9", &["192.168.32.64/26"], true),
        )
        .await;
        assert!(converges(&gw, &[("10.99.0.9", &["192.168.32.64/26"])]));
    });
    server.pause();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        vtep_state(&gw),
        expected_vtep(&[("10.99.0.9", &["192.168.32.64/26"])]),
        "kernel changed during the API outage"
    );
    server.resume();
    gw.run(|| async {
        let admin = client(&admin_cfg).await;
        let api: Api<DynamicObject> = Api::all_with(admin, &cilium_nodes::api_resource());
        api.delete("n3", &DeleteParams::default()).await.unwrap();
        assert!(
            converges(&gw, &[]),
            "watch did not resume after the outage: {:?}",
            vtep_state(&gw)
        );
    });

    daemon.signal(libc::SIGTERM);
    let out = daemon.wait(Duration::from_secs(6));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "daemon exit {:?}: {log}", out.status);
    for want in [
        "skipping CiliumNode broken: has no InternalIP",
        "skipping CiliumNode ipv6only: has only IPv6 pod CIDRs",
        "node thief: pod CIDR 192.168.33.128/26 overlaps 192.168.33.128/25 of node n2",
        "node outside: pod CIDR 10.250.7.0/24 is outside gateway.hybrid_pod_cidrs",
        "became leader",
        "released the Lease",
    ] {
        assert!(log.contains(want), "log lacks {want:?}:\n{log}");
    }
    assert_eq!(
        log.matches("skipping CiliumNode broken").count(),
        1,
        "one warning per node:\n{log}"
    );
}

/// How long until the object says what `spec` wants (term 0, identity gw-a_1).
async fn satisfied_within(
    api: &Api<DynamicObject>,
    spec: &vtep_config::VtepSpec,
    limit: Duration,
) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(o) = api.get_opt(vtep_config::NAME).await.unwrap() {
            if spec.satisfied_by(&o, "gw-a_1", 0) {
                return Some(start.elapsed());
            }
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_owns_the_vtep_config() {
    let server = ApiServer::start();
    let daemon_client = client(&server.daemon_kubeconfig()).await;
    let admin = client(&server.admin_kubeconfig()).await;
    let api: Api<DynamicObject> = Api::all_with(admin, &vtep_config::api_resource());

    let cancel = CancellationToken::new();
    let (handle, election) = spawn_elector(daemon_client.clone(), &cancel);
    let node_ip = "10.250.3.111".parse().unwrap();
    let spec = vtep_config::VtepSpec::new(
        node_ip,
        Mac::for_gateway(node_ip),
        vec!["10.250.0.0/16".parse().unwrap()],
    );
    let worker = tokio::spawn(vtep_config::run(
        daemon_client,
        spec.clone(),
        "gw-a_1".into(),
        handle,
        Duration::from_secs(1),
        tokio::sync::watch::channel(None).0,
        cancel.clone(),
    ));

    let get = || async { api.get_opt(vtep_config::NAME).await.unwrap() };
    let within = |limit: Duration| satisfied_within(&api, &spec, limit);

    // Created on taking office, in the reference's shape.
    within(Duration::from_secs(5))
        .await
        .expect("CiliumVTEPConfig never created");
    let o = get().await.unwrap();
    assert_eq!(
        o.data["spec"]["endpoints"],
        json!([{"name": "vpc-gateway", "tunnelEndpoint": "10.250.3.111", "cidr": "10.250.0.0/16", "mac": Mac::for_gateway(node_ip).to_string()}])
    );

    // Cilium writes status; it must survive everything the gateway does afterwards.
    let status = json!({"status": {"endpointCount": 1, "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": "", "lastTransitionTime": "2026-11-21T00:00:00Z"}]}});
    api.patch_status(
        vtep_config::NAME,
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();

    // Drift by hand is corrected within a second.
    let drift = json!({"spec": {"endpoints": [{"name": "vpc-gateway", "tunnelEndpoint": "10.250.9.9", "cidr": "10.250.0.0/16", "mac": "02:00:00:00:00:09"}]}});
    api.patch(
        vtep_config::NAME,
        &PatchParams::default(),
        &Patch::Merge(&drift),
    )
    .await
    .unwrap();
    let took = within(Duration::from_secs(3))
        .await
        .expect("drift not repaired");
    println!("drift repaired in {took:?}");
    assert!(took < Duration::from_secs(1), "drift repair took {took:?}");
    assert_eq!(
        get().await.unwrap().data["status"]["endpointCount"],
        1,
        "status was overwritten"
    );

    // Deleted: recreated within a second.
    api.delete(vtep_config::NAME, &DeleteParams::default())
        .await
        .unwrap();
    let took = within(Duration::from_secs(3)).await.expect("not recreated");
    println!("recreated in {took:?}");
    assert!(took < Duration::from_secs(1), "recreate took {took:?}");

    // A higher term written by hand (or left by a Lease that was since recreated) must
    // not lock the leader out: it raises its Lease's term above it, then takes the
    // object back within seconds.
    let fence = json!({"metadata": {"annotations": {vtep_config::TERM_ANNOTATION: "99"}}, "spec": {"endpoints": [{"name": "vpc-gateway", "tunnelEndpoint": "10.250.7.7", "cidr": "10.250.0.0/16", "mac": "02:00:00:00:00:07"}]}});
    api.patch(
        vtep_config::NAME,
        &PatchParams::default(),
        &Patch::Merge(&fence),
    )
    .await
    .unwrap();
    let start = tokio::time::Instant::now();
    let took = loop {
        let o = get().await.unwrap();
        if o.data["spec"]["endpoints"][0]["tunnelEndpoint"] == "10.250.3.111" {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the leader never took the object back from term 99"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("higher term taken over in {took:?}");
    let o = get().await.unwrap();
    let term: u32 = o.metadata.annotations.as_ref().unwrap()[vtep_config::TERM_ANNOTATION]
        .parse()
        .unwrap();
    assert_eq!(term, 100, "the object's term must move above the one found");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client(&server.admin_kubeconfig()).await, "hybrid-gateway");
    let lease = leases.get("hybrid-gateway-leader").await.unwrap();
    assert!(
        lease.spec.unwrap().lease_transitions.unwrap_or(0) >= 100,
        "the store's term must have been raised first"
    );

    cancel.cancel();
    let _ = election.await;
    let _ = worker.await;
}

/// The shipped RBAC, checked verb by verb as the daemon's identity: everything the daemon
/// does is allowed, the rest (deletes, status, secrets, events, other Leases) is refused.
#[test]
fn shipped_rbac_is_least_privilege() {
    support::require_root();
    let out =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/k8s/smoke.sh"))
            .output()
            .expect("running tests/k8s/smoke.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "RBAC smoke test failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" 0 failed"), "{text}");
}

/// A leader (real Lease election) running the CiliumVTEPConfig writer for `cidrs` as the
/// daemon's identity; cancel to stop.
struct Writer {
    cancel: CancellationToken,
    election: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<()>,
    spec: vtep_config::VtepSpec,
}

const NODE_IP: &str = "10.250.3.111";

async fn start_writer(server: &ApiServer, cidrs: &[&str]) -> Writer {
    let daemon_client = client(&server.daemon_kubeconfig()).await;
    let cancel = CancellationToken::new();
    let (handle, election) = spawn_elector(daemon_client.clone(), &cancel);
    let node_ip = NODE_IP.parse().unwrap();
    let spec = vtep_config::VtepSpec::new(
        node_ip,
        Mac::for_gateway(node_ip),
        cidrs.iter().map(|c| c.parse().unwrap()).collect(),
    );
    let worker = tokio::spawn(vtep_config::run(
        daemon_client,
        spec.clone(),
        "gw-a_1".into(),
        handle,
        Duration::from_secs(1),
        tokio::sync::watch::channel(None).0,
        cancel.clone(),
    ));
    Writer {
        cancel,
        election,
        worker,
        spec,
    }
}

impl Writer {
    async fn stop(self) {
        self.cancel.cancel();
        let _ = self.election.await;
        let _ = self.worker.await;
    }
}

/// Our endpoints for `cidrs`, as the writer must leave them.
fn our_endpoints(cidrs: &[&str]) -> Vec<serde_json::Value> {
    let mac = Mac::for_gateway(NODE_IP.parse().unwrap()).to_string();
    cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = if cidrs.len() == 1 {
                "vpc-gateway".to_string()
            } else {
                format!("vpc-gateway-{i}")
            };
            json!({"name": name, "tunnelEndpoint": NODE_IP, "cidr": c, "mac": mac})
        })
        .collect()
}

/// The object as stored, without the bookkeeping that differs run to run (for the report).
fn dump(o: &DynamicObject) -> String {
    let mut v = serde_json::to_value(o).unwrap();
    for k in [
        "managedFields",
        "uid",
        "creationTimestamp",
        "resourceVersion",
    ] {
        v["metadata"].as_object_mut().unwrap().remove(k);
    }
    serde_json::to_string_pretty(&v).unwrap()
}

/// Endpoint names as the reference gateway (v1.0.1+) writes them, and an upgrade from our
/// earlier names (`vpc-gateway`, `vpc-gateway-2`, `-3`) leaves none of them behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_names_match_the_reference_and_migrate_from_ours() {
    let server = ApiServer::start();
    let admin = client(&server.admin_kubeconfig()).await;
    let api: Api<DynamicObject> = Api::all_with(admin, &vtep_config::api_resource());
    let mac = Mac::for_gateway(NODE_IP.parse().unwrap()).to_string();

    // One VPC CIDR: `vpc-gateway`.
    let one = ["10.250.0.0/16"];
    let w = start_writer(&server, &one).await;
    assert!(
        satisfied_within(&api, &w.spec, Duration::from_secs(5))
            .await
            .is_some(),
        "never written"
    );
    let o = api.get(vtep_config::NAME).await.unwrap();
    println!("as written for 1 VPC CIDR:\n{}", dump(&o));
    assert_eq!(o.data["spec"]["endpoints"], json!(our_endpoints(&one)));
    w.stop().await;
    api.delete(vtep_config::NAME, &DeleteParams::default())
        .await
        .unwrap();

    // The object as our previous version wrote it for three CIDRs (same field manager,
    // server-side apply), then an upgrade: exactly `vpc-gateway-0..2` must remain.
    let three = ["10.250.0.0/16", "10.251.0.0/16", "10.252.0.0/16"];
    let old = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumVTEPConfig",
        "metadata": {"name": vtep_config::NAME},
        "spec": {"cidrMask": "255.255.0.0", "endpoints": [
            {"name": "vpc-gateway", "tunnelEndpoint": NODE_IP, "cidr": three[0], "mac": mac},
            {"name": "vpc-gateway-2", "tunnelEndpoint": NODE_IP, "cidr": three[1], "mac": mac},
            {"name": "vpc-gateway-3", "tunnelEndpoint": NODE_IP, "cidr": three[2], "mac": mac},
        ]},
    });
    api.patch(
        vtep_config::NAME,
        &PatchParams::apply(vtep_config::FIELD_MANAGER).force(),
        &Patch::Apply(&old),
    )
    .await
    .unwrap();
    // Someone else applied the same old entry (a GitOps copy, `kubectl apply` of a dump):
    // it is now co-owned, so server-side apply alone would keep it when we stop naming
    // it. The migration must remove it by content.
    let copy = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumVTEPConfig",
        "metadata": {"name": vtep_config::NAME},
        "spec": {"endpoints": [
            {"name": "vpc-gateway-3", "tunnelEndpoint": NODE_IP, "cidr": three[2], "mac": mac},
        ]},
    });
    api.patch(
        vtep_config::NAME,
        &PatchParams::apply("gitops"),
        &Patch::Apply(&copy),
    )
    .await
    .unwrap();
    let w = start_writer(&server, &three).await;
    assert!(
        satisfied_within(&api, &w.spec, Duration::from_secs(5))
            .await
            .is_some(),
        "never written"
    );
    let o = api.get(vtep_config::NAME).await.unwrap();
    println!("as written for 3 VPC CIDRs:\n{}", dump(&o));
    assert_eq!(o.data["spec"]["endpoints"], json!(our_endpoints(&three)));
    assert_eq!(o.data["spec"]["cidrMask"], "255.255.0.0");
    w.stop().await;
}

/// Every `spec.endpoints` the object goes through from now on, as a watch sees it.
async fn record_endpoints(
    api: Api<DynamicObject>,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let cfg =
            watcher::Config::default().fields(&format!("metadata.name={}", vtep_config::NAME));
        let mut stream = watcher::watcher(api, cfg).boxed();
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
                s.lock().unwrap().push(o.data["spec"]["endpoints"].clone());
            }
        }
    });
    (task, seen)
}

fn duplicate_cidr(endpoints: &serde_json::Value) -> Option<String> {
    let mut seen = std::collections::BTreeSet::new();
    for e in endpoints.as_array().into_iter().flatten() {
        let c = e["cidr"].as_str().unwrap_or_default().to_string();
        if !seen.insert(c.clone()) {
            return Some(c);
        }
    }
    None
}

/// Taking over from the Go gateway: its endpoint (plain create/update under its own field
/// manager, `vpc-gateway`, its own IP and MAC) is replaced; another writer's unrelated
/// endpoint and the agent's status stay; no observed version holds a duplicate CIDR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_over_the_go_gateways_object_without_duplicates() {
    let server = ApiServer::start();
    let admin = client(&server.admin_kubeconfig()).await;
    let api: Api<DynamicObject> = Api::all_with(admin, &vtep_config::api_resource());

    // As the Go gateway (controller-runtime client.Create / client.Update) writes it.
    let go: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumVTEPConfig",
        "metadata": {"name": vtep_config::NAME},
        "spec": {"endpoints": [
            {"name": "vpc-gateway", "tunnelEndpoint": "10.250.8.8", "cidr": "10.250.0.0/16", "mac": "b2:00:00:00:08:08"},
        ]},
    }))
    .unwrap();
    let go_manager = PostParams {
        field_manager: Some("eks-hybrid-nodes-gateway".into()),
        ..PostParams::default()
    };
    let mut o = api.create(&go_manager, &go).await.unwrap();
    // A plain Update (PUT with the resourceVersion) by the Go gateway, as on every start.
    o.data["spec"]["endpoints"][0]["tunnelEndpoint"] = json!("10.250.8.9");
    let o = api
        .replace(vtep_config::NAME, &go_manager, &o)
        .await
        .unwrap();
    // Someone else's unrelated endpoint (another site), and the agent's status.
    let mut other = o.clone();
    other.data["spec"]["endpoints"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "onprem-dc", "tunnelEndpoint": "192.0.2.1", "cidr": "10.9.0.0/16", "mac": "02:00:c0:00:02:01"}));
    let other_manager = PostParams {
        field_manager: Some("other-tool".into()),
        ..PostParams::default()
    };
    api.replace(vtep_config::NAME, &other_manager, &other)
        .await
        .unwrap();
    let status = json!({"status": {"endpointCount": 2, "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": "", "lastTransitionTime": "2026-11-21T00:00:00Z"}]}});
    api.patch_status(
        vtep_config::NAME,
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();

    let (recorder, seen) = record_endpoints(api.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Our VPC has three CIDRs; the Go gateway (before v1.0.1) advertised only the first.
    let three = ["10.250.0.0/16", "10.251.0.0/16", "10.252.0.0/16"];
    let w = start_writer(&server, &three).await;
    assert!(
        satisfied_within(&api, &w.spec, Duration::from_secs(5))
            .await
            .is_some(),
        "never written"
    );
    // Let any further pass run (it must find nothing to do).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let o = api.get(vtep_config::NAME).await.unwrap();
    println!("after takeover:\n{}", dump(&o));
    let mut want = vec![
        json!({"name": "onprem-dc", "tunnelEndpoint": "192.0.2.1", "cidr": "10.9.0.0/16", "mac": "02:00:c0:00:02:01"}),
    ];
    want.extend(our_endpoints(&three));
    assert_eq!(o.data["spec"]["endpoints"], json!(want));
    assert_eq!(
        o.data["status"]["endpointCount"], 2,
        "status was overwritten"
    );
    w.stop().await;
    recorder.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 2, "the watch saw {seen:?}");
    for (i, e) in seen.iter().enumerate() {
        assert_eq!(
            duplicate_cidr(e),
            None,
            "version {i} of the object has a duplicate CIDR: {e}"
        );
    }
}

/// GET requests for the CiliumVTEPConfig the apiserver has served (its own
/// `apiserver_request_total`), so a test sees each writer pass at the apiserver: a pass
/// always starts with one GET, a pass that finds nothing to do writes nothing.
async fn vtep_gets(admin: &kube::Client) -> u64 {
    let text = admin
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains(r#"resource="ciliumvtepconfigs""#)
                && l.contains(r#"verb="GET""#)
                && l.contains(r#"subresource="""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The agents' status writes do not wake the writer: while "agents" write status five
/// times, the apiserver serves the writer no GET and sees no write from it; a spec change
/// still wakes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_do_not_wake_the_writer() {
    let server = ApiServer::start();
    let admin = client(&server.admin_kubeconfig()).await;
    let api: Api<DynamicObject> = Api::all_with(admin.clone(), &vtep_config::api_resource());
    let one = ["10.250.0.0/16"];
    let w = start_writer(&server, &one).await;
    assert!(
        satisfied_within(&api, &w.spec, Duration::from_secs(5))
            .await
            .is_some(),
        "never written"
    );
    // Let the writer settle (the echo of its own write is one more pass).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ours = |o: &DynamicObject| {
        serde_json::to_string(
            &o.metadata
                .managed_fields
                .iter()
                .flatten()
                .filter(|m| m.manager.as_deref() == Some(vtep_config::FIELD_MANAGER))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    };
    let before = api.get(vtep_config::NAME).await.unwrap();
    let gets = vtep_gets(&admin).await;
    for i in 0..5 {
        let status = json!({"status": {"endpointCount": i, "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": format!("agent {i}"), "lastTransitionTime": "2026-11-21T00:00:00Z"}]}});
        api.patch_status(
            vtep_config::NAME,
            &PatchParams::apply(&format!("cilium-agent-{i}")),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let passes = vtep_gets(&admin).await - gets;
    let after = api.get(vtep_config::NAME).await.unwrap();
    println!("GETs by the writer during 5 status writes: {passes}");
    assert_eq!(passes, 0, "status writes woke the writer {passes} times");
    assert_ne!(
        before.metadata.resource_version, after.metadata.resource_version,
        "the status writes happened"
    );
    assert_eq!(ours(&before), ours(&after), "the writer wrote");
    assert_eq!(before.metadata.generation, after.metadata.generation);

    // A spec change still wakes it: repaired long before the 30 s resync.
    let drift = json!({"spec": {"endpoints": [{"name": "vpc-gateway", "tunnelEndpoint": "10.250.9.9", "cidr": "10.250.0.0/16", "mac": "02:00:00:00:00:09"}]}});
    api.patch(
        vtep_config::NAME,
        &PatchParams::default(),
        &Patch::Merge(&drift),
    )
    .await
    .unwrap();
    assert!(
        satisfied_within(&api, &w.spec, Duration::from_secs(3))
            .await
            .is_some(),
        "drift not repaired"
    );
    w.stop().await;
}

/// Every gateway reads which gateways the CiliumVTEPConfig names, with the daemon's own
/// identity: a CR written by someone else that names this (non-leading) gateway is seen,
/// a change to another gateway is seen within a second, and a deleted CR reads as
/// "names nobody" rather than "unknown" — the inputs of the "CR on a non-leader" and
/// "CR names no gateway" alerts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_sees_whom_the_vtep_config_names() {
    use hybrid_gateway::k8s::vtep_observer::{self, Observed};
    use hybrid_gateway::k8s::vtep_shape::{Served, Shape};

    let server = ApiServer::start();
    let daemon_client = client(&server.daemon_kubeconfig()).await;
    let admin = client(&server.admin_kubeconfig()).await;
    let api: Api<DynamicObject> = Api::all_with(admin, &vtep_config::api_resource());
    let me: std::net::Ipv4Addr = "10.250.3.111".parse().unwrap();
    let entry = |ip: &str| json!({"name": "vpc-gateway", "tunnelEndpoint": ip, "cidr": "10.250.0.0/16", "mac": "02:00:00:00:00:01"});

    let cancel = CancellationToken::new();
    let served = Served::Shape {
        shape: Shape::V2 { cidr_mask: true },
        how: "the test",
    };
    let (_served_tx, served_rx) = tokio::sync::watch::channel(served);
    let (tx, rx) = tokio::sync::watch::channel(Observed::Unknown);
    let observer = tokio::spawn(vtep_observer::run(
        daemon_client,
        served_rx,
        tx,
        cancel.clone(),
    ));
    let wait_for = |want: Option<bool>, what: &'static str| {
        let mut rx = rx.clone();
        async move {
            let seen =
                tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|o| o.names(me) == want))
                    .await
                    .is_ok();
            let now = rx.borrow().clone();
            assert!(seen, "{what}: still {now:?}");
        }
    };

    // No object yet: read, and it names nobody.
    wait_for(Some(false), "no CR").await;

    // The CR names this gateway (say, left on it by an earlier term): seen.
    let obj = DynamicObject::new(vtep_config::NAME, &vtep_config::api_resource())
        .data(json!({"spec": {"endpoints": [entry("10.250.3.111")]}}));
    api.create(&PostParams::default(), &obj).await.unwrap();
    wait_for(Some(true), "CR naming us").await;

    // Moved to another gateway.
    let other = json!({"spec": {"endpoints": [entry("10.250.4.222")]}});
    api.patch(
        vtep_config::NAME,
        &PatchParams::default(),
        &Patch::Merge(&other),
    )
    .await
    .unwrap();
    wait_for(Some(false), "CR moved away").await;
    assert_eq!(
        *rx.borrow(),
        Observed::Names(vec!["10.250.4.222".parse().unwrap()])
    );

    // Back, then deleted: "names nobody", not "unknown".
    api.patch(
        vtep_config::NAME,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"endpoints": [entry("10.250.3.111")]}})),
    )
    .await
    .unwrap();
    wait_for(Some(true), "CR back on us").await;
    api.delete(vtep_config::NAME, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(Some(false), "CR deleted").await;
    assert_eq!(*rx.borrow(), Observed::Missing);

    cancel.cancel();
    observer.await.unwrap();
}
