//! Every CiliumVTEPConfig shape the cluster may serve, against the real kube-apiserver with
//! the CRD fixtures of `tests/fixtures/crds/` (Cilium's published `cilium.io/v2` schema, and
//! the upstream proposal's `cilium.io/v2alpha1` in `v2alpha1/`): what the leader writes in
//! each, read back field for field (a field the served schema prunes would fail here), how
//! it follows a change of the CRD, and the reason it gives when neither is served. As the
//! daemon's least-privilege identity (the shipped RBAC). Needs root and the cached
//! apiserver build.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hybrid_gateway::datapath::Mac;
use hybrid_gateway::k8s::vtep_config::{self, Blocked, VtepSpec};
use hybrid_gateway::k8s::vtep_shape::{self, Served, Shape};
use kube::api::{DeleteParams, DynamicObject, PostParams};
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use support::k8s::{client, spawn_elector, ApiServer};

const NODE_IP: &str = "10.250.3.111";
fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crds")
        .join(rel)
}
const V2: &str = "ciliumvtepconfigs.cilium.io.yaml";
const V2ALPHA1: &str = "v2alpha1/ciliumvtepconfigs.cilium.io.yaml";

fn kubectl(server: &ApiServer, args: &[&str]) {
    server.kubectl(args);
}

/// Removes the CiliumVTEPConfig CRD (and with it every object of it).
fn remove_crd(server: &ApiServer) {
    kubectl(
        server,
        &[
            "delete",
            "crd",
            vtep_shape::CRD_NAME,
            "--ignore-not-found",
            "--wait=true",
        ],
    );
}

/// Replaces the CiliumVTEPConfig CRD with the fixture `rel` (a served version cannot be
/// dropped from a CRD that stored objects in it: delete, then create).
fn install_crd(server: &ApiServer, rel: &str) {
    remove_crd(server);
    let path = fixture(rel);
    kubectl(server, &["apply", "-f", path.to_str().unwrap()]);
    kubectl(
        server,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{}", vtep_shape::CRD_NAME),
        ],
    );
}

fn spec(cidrs: &[&str]) -> VtepSpec {
    let ip = NODE_IP.parse().unwrap();
    VtepSpec {
        node_selector: vtep_config::default_node_selector(),
        ..VtepSpec::new(
            ip,
            Mac::for_gateway(ip),
            cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        )
    }
}

/// The endpoint list as the reference names it, written out here independently.
fn endpoints(cidrs: &[&str]) -> Value {
    let mac = Mac::for_gateway(NODE_IP.parse().unwrap()).to_string();
    let n = cidrs.len();
    json!(cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = if n == 1 {
                "vpc-gateway".to_string()
            } else {
                format!("vpc-gateway-{i}")
            };
            json!({"name": name, "tunnelEndpoint": NODE_IP, "cidr": c, "mac": mac})
        })
        .collect::<Vec<_>>())
}

/// The whole `spec` the leader must leave in each shape.
fn want_spec(shape: Shape, cidrs: &[&str]) -> Value {
    match shape {
        Shape::V2 { .. } => json!({"cidrMask": "255.255.0.0", "endpoints": endpoints(cidrs)}),
        Shape::V2Alpha1 => json!({
            "nodeSelector": {"matchLabels": {"eks.amazonaws.com/compute-type": "hybrid"}},
            "vtepEndpoints": endpoints(cidrs),
        }),
    }
}

/// A leader (real Lease election) running the CiliumVTEPConfig writer with its own shape
/// look-up, as the daemon's identity.
struct Leader {
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    blocked: watch::Receiver<Option<Blocked>>,
}

impl Leader {
    async fn start(server: &ApiServer, cidrs: &[&str]) -> Leader {
        let kube = client(&server.daemon_kubeconfig()).await;
        let cancel = CancellationToken::new();
        let (handle, election) = spawn_elector(kube.clone(), &cancel);
        let (blocked_tx, blocked) = watch::channel(None);
        let writer = tokio::spawn(vtep_config::run(
            kube,
            spec(cidrs),
            "gw-a_1".into(),
            handle,
            Duration::from_secs(1),
            blocked_tx,
            cancel.clone(),
        ));
        Leader {
            cancel,
            tasks: vec![election, writer],
            blocked,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The object as stored, without the bookkeeping that differs run to run.
fn dump(o: &DynamicObject) -> String {
    let mut v = serde_json::to_value(o).unwrap();
    for k in [
        "managedFields",
        "uid",
        "creationTimestamp",
        "resourceVersion",
        "generation",
    ] {
        v["metadata"].as_object_mut().unwrap().remove(k);
    }
    serde_json::to_string_pretty(&v).unwrap()
}

/// Waits until the object, read through `shape`'s version, has exactly `want` as its spec;
/// how long that took.
async fn written_within(
    admin: &kube::Client,
    shape: Shape,
    want: &Value,
    limit: Duration,
) -> Result<(Duration, DynamicObject), String> {
    let api: Api<DynamicObject> = Api::all_with(admin.clone(), &shape.api_resource());
    let start = Instant::now();
    let mut last;
    loop {
        match api.get_opt(vtep_config::NAME).await {
            Ok(Some(o)) if o.data.get("spec") == Some(want) => return Ok((start.elapsed(), o)),
            Ok(Some(o)) => last = dump(&o),
            Ok(None) => last = "no object".into(),
            Err(e) => last = e.to_string(),
        }
        if start.elapsed() > limit {
            return Err(format!(
                "not written as {want} within {limit:?}; last: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An object written by someone else with fields the schema lacks: kube-apiserver v1.20
/// (the harness) has no strict field validation (`fieldValidation=Strict` is alpha in
/// 1.23, GA in 1.27), so the structural schema prunes them silently. Read back, they are
/// gone and the rest is as sent: a field of ours the real CRD does not have would fail
/// the exact comparisons of this file.
async fn assert_unknown_fields_pruned(admin: &kube::Client, shape: Shape, mut spec: Value) {
    let api: Api<DynamicObject> = Api::all_with(admin.clone(), &shape.api_resource());
    let mut sent = spec.clone();
    let list = shape.list_field();
    sent[list][0]["standby"] = json!({"tunnelEndpoint": "10.250.9.9", "mac": "02:00:00:00:09:09"});
    sent["bogus"] = json!(true);
    if shape == Shape::V2Alpha1 {
        // v2's field, not in v2alpha1: the reason the leader looks the shape up.
        sent["cidrMask"] = json!("255.255.0.0");
    }
    let o = DynamicObject::new("pruning-check", &shape.api_resource()).data(json!({"spec": sent}));
    let created = api.create(&PostParams::default(), &o).await.unwrap();
    let back = api.get("pruning-check").await.unwrap();
    if let Shape::V2 { .. } = shape {
        // The published default fills the mask we did not send.
        spec.as_object_mut()
            .unwrap()
            .entry("cidrMask")
            .or_insert(json!("255.255.255.0"));
    }
    assert_eq!(
        back.data["spec"], spec,
        "{shape}: unknown fields not pruned"
    );
    assert_eq!(created.data["spec"], spec);
    api.delete("pruning-check", &DeleteParams::default())
        .await
        .unwrap();
}

/// The object as written for one and for three VPC CIDRs, in each served shape (printed
/// for the release note), read back exactly; unknown fields are pruned by both fixtures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_each_served_shape_for_one_and_three_cidrs() {
    let t0 = Instant::now();
    let server = ApiServer::start();
    let admin = client(&server.admin_kubeconfig()).await;
    let one = ["10.250.0.0/16"];
    let three = ["10.250.0.0/16", "10.251.0.0/16", "10.252.0.0/16"];
    for (fixture_file, shape) in [
        (V2, Shape::V2 { cidr_mask: true }),
        (V2ALPHA1, Shape::V2Alpha1),
    ] {
        if fixture_file != V2 {
            install_crd(&server, fixture_file);
        }
        let daemon = client(&server.daemon_kubeconfig()).await;
        let detected = vtep_shape::detect(&daemon, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(detected.shape(), Some(shape), "{}", detected.describe());
        let api: Api<DynamicObject> = Api::all_with(admin.clone(), &shape.api_resource());
        for cidrs in [&one[..], &three[..]] {
            let leader = Leader::start(&server, cidrs).await;
            let want = want_spec(shape, cidrs);
            let (took, o) = written_within(&admin, shape, &want, Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(o.types.as_ref().unwrap().api_version, shape.api_version());
            println!(
                "{shape}, {} VPC CIDR(s), written in {took:?}:\n{}",
                cidrs.len(),
                dump(&o)
            );
            assert!(leader.blocked.borrow().is_none());
            leader.stop().await;
            api.delete(vtep_config::NAME, &DeleteParams::default())
                .await
                .unwrap();
        }
        assert_unknown_fields_pruned(&admin, shape, want_spec(shape, &three)).await;
    }
    println!("wall time: {:?}", t0.elapsed());
}

/// One leader throughout while the CRD changes under it: v2 → no CRD (readiness reason,
/// nothing written, retried) → v2alpha1 → v2 again. Discovery without the CRD object
/// (API discovery + a dry-run create) agrees with the CRD at every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_served_shape_and_says_why_when_none() {
    let t0 = Instant::now();
    let server = ApiServer::start();
    let admin = client(&server.admin_kubeconfig()).await;
    let daemon = client(&server.daemon_kubeconfig()).await;
    let cidrs = ["10.250.0.0/16", "10.251.0.0/16"];
    let timeout = Duration::from_secs(5);
    let mut leader = Leader::start(&server, &cidrs).await;
    let v2 = Shape::V2 { cidr_mask: true };

    let (took, _) = written_within(&admin, v2, &want_spec(v2, &cidrs), Duration::from_secs(10))
        .await
        .unwrap();
    println!("v2 written in {took:?}");
    let by_discovery = vtep_shape::detect_by_discovery(&daemon, timeout)
        .await
        .unwrap();
    assert_eq!(
        by_discovery.shape(),
        Some(v2),
        "{}",
        by_discovery.describe()
    );

    // Neither served: the leader says why, and keeps at it.
    let gone = Instant::now();
    remove_crd(&server);
    let reason = loop {
        if let Some(Blocked::NotServed(why)) = leader.blocked.borrow_and_update().clone() {
            break why;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(15),
            "no readiness reason after the CRD was removed"
        );
        tokio::time::timeout(Duration::from_millis(200), leader.blocked.changed())
            .await
            .ok();
    };
    println!(
        "CRD removed: not-ready reason after {:?}: {reason}",
        gone.elapsed()
    );
    assert!(
        reason.contains("ciliumvtepconfigs.cilium.io is not installed"),
        "{reason}"
    );
    match vtep_shape::detect_by_discovery(&daemon, timeout)
        .await
        .unwrap()
    {
        Served::Neither(why) => println!("discovery: {why}"),
        other => panic!("discovery without the CRD: {other:?}"),
    }

    // The upstream proposal's CRD appears: written in its shape, reason gone.
    let at = Instant::now();
    install_crd(&server, V2ALPHA1);
    let installed = at.elapsed();
    let (took, o) = written_within(
        &admin,
        Shape::V2Alpha1,
        &want_spec(Shape::V2Alpha1, &cidrs),
        Duration::from_secs(15),
    )
    .await
    .unwrap();
    println!(
        "v2alpha1 CRD installed in {installed:?}, object written {took:?} later:\n{}",
        dump(&o)
    );
    assert!(leader.blocked.borrow().is_none());
    let by_discovery = vtep_shape::detect_by_discovery(&daemon, timeout)
        .await
        .unwrap();
    assert_eq!(by_discovery.shape(), Some(Shape::V2Alpha1));

    // And back to v2.
    install_crd(&server, V2);
    let (took, _) = written_within(&admin, v2, &want_spec(v2, &cidrs), Duration::from_secs(15))
        .await
        .unwrap();
    println!("back to v2: written {took:?} after the CRD was established");
    leader.stop().await;
    println!("wall time: {:?}", t0.elapsed());
}

/// A client for a ServiceAccount bound to the shipped ClusterRole's rules *minus* the
/// `customresourcedefinitions` rule (as with the reference's RBAC, or an older copy of
/// ours), plus the shipped Lease Role: a real identity the apiserver refuses the CRD.
/// Its token comes from the TokenRequest API, as a pod's projected token would.
async fn identity_without_crd_read(server: &ApiServer, admin: &kube::Client) -> kube::Client {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
    const NS: &str = "hybrid-gateway";
    const SA: &str = "gateway-without-crd-read";
    let pp = PostParams::default();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), NS);
    sas.create(
        &pp,
        &serde_json::from_value(json!({"metadata": {"name": SA}})).unwrap(),
    )
    .await
    .unwrap();
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let shipped = roles.get("hybrid-gateway").await.unwrap();
    let rules: Vec<_> = shipped
        .rules
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            !r.api_groups
                .iter()
                .flatten()
                .any(|g| g == "apiextensions.k8s.io")
        })
        .collect();
    assert!(!rules.is_empty());
    roles
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": SA}, "rules": rules})).unwrap(),
        )
        .await
        .unwrap();
    let subject = json!([{"kind": "ServiceAccount", "name": SA, "namespace": NS}]);
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": SA}, "subjects": subject,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": SA}}))
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), NS)
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": SA}, "subjects": subject,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "hybrid-gateway"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let token = sas
        .create_token_request(
            SA,
            &pp,
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                },
                ..TokenRequest::default()
            },
        )
        .await
        .unwrap()
        .status
        .expect("TokenRequest status")
        .token;
    // The daemon's kubeconfig (server, CA) with the ServiceAccount's token instead.
    let text = std::fs::read_to_string(server.daemon_kubeconfig()).unwrap();
    let text = text.replace(&server.env["K8S_DAEMON_TOKEN"], &token);
    let path = server.dir.join("without-crd-read.kubeconfig");
    std::fs::write(&path, text).unwrap();
    client(&path).await
}

/// A gateway whose identity may not read the CRD (apiserver answers 403) still finds the
/// served shape through API discovery + a dry-run create, for v2 (with the schema's
/// `cidrMask`) and v2alpha1, and its leader writes the object in that shape. Without the
/// fallback the look-up fails on the 403 and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_refused_the_crd_finds_the_shape_by_discovery() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let t0 = Instant::now();
    let server = ApiServer::start();
    let admin = client(&server.admin_kubeconfig()).await;
    let restricted = identity_without_crd_read(&server, &admin).await;
    match Api::<CustomResourceDefinition>::all(restricted.clone())
        .get(vtep_shape::CRD_NAME)
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 403 => println!("CRD read refused: {}", e.message),
        other => panic!("the restricted identity can read the CRD: {other:?}"),
    }
    let cidrs = ["10.250.0.0/16", "10.251.0.0/16"];
    for (fixture_file, shape) in [
        (V2, Shape::V2 { cidr_mask: true }),
        (V2ALPHA1, Shape::V2Alpha1),
    ] {
        if fixture_file != V2 {
            install_crd(&server, fixture_file);
        }
        let detected = vtep_shape::detect(&restricted, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{shape}: look-up as the restricted identity: {e}"));
        assert_eq!(
            detected,
            Served::Shape {
                shape,
                how: "discovery + dry-run"
            },
            "{}",
            detected.describe()
        );
        println!("{fixture_file}: {}", detected.describe());
        // The whole leader (election, its own shape look-up, the writer) as that identity.
        let kube = restricted.clone();
        let cancel = CancellationToken::new();
        let (handle, election) = spawn_elector(kube.clone(), &cancel);
        let (blocked_tx, blocked) = watch::channel(None);
        let writer = tokio::spawn(vtep_config::run(
            kube,
            spec(&cidrs),
            "gw-a_1".into(),
            handle,
            Duration::from_secs(1),
            blocked_tx,
            cancel.clone(),
        ));
        let written = written_within(
            &admin,
            shape,
            &want_spec(shape, &cidrs),
            Duration::from_secs(10),
        )
        .await;
        let reason = blocked.borrow().clone();
        cancel.cancel();
        let _ = tokio::join!(election, writer);
        let (took, _) = written.unwrap_or_else(|e| panic!("{shape}: {e}; blocked: {reason:?}"));
        println!("{shape}: written by the restricted leader in {took:?}");
        assert!(reason.is_none(), "{reason:?}");
    }
    println!("wall time: {:?}", t0.elapsed());
}

/// Other writers' endpoints fill the object so that ours would take it over Cilium's limit
/// of 8 (the CRD's `maxItems`: the apiserver refuses such a write with a 422): the leader
/// writes nothing, and its readiness says why (how many are ours, whose are in the way);
/// once an operator removes some of theirs, it writes, the reason goes, theirs stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_writers_endpoints_over_the_limit_are_named_as_the_reason() {
    let t0 = Instant::now();
    let server = ApiServer::start();
    let admin = client(&server.admin_kubeconfig()).await;
    let shape = Shape::V2 { cidr_mask: true };
    let api: Api<DynamicObject> = Api::all_with(admin.clone(), &shape.api_resource());
    let foreign = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"name": format!("onprem-{i}"), "tunnelEndpoint": format!("192.0.2.{}", i + 1), "cidr": format!("10.{}.0.0/16", 100 + i), "mac": format!("02:00:00:00:00:{:02x}", i + 1)}))
            .collect()
    };
    let obj = |eps: Vec<Value>| -> DynamicObject {
        serde_json::from_value(
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumVTEPConfig",
            "metadata": {"name": vtep_config::NAME}, "spec": {"endpoints": eps}}),
        )
        .unwrap()
    };
    // The limit is the CRD's: nine entries are refused.
    match api.create(&PostParams::default(), &obj(foreign(9))).await {
        Err(kube::Error::Api(e)) if e.code == 422 => println!("9 endpoints: {}", e.message),
        other => panic!("the fixture took 9 endpoints: {other:?}"),
    }
    api.create(&PostParams::default(), &obj(foreign(6)))
        .await
        .unwrap();
    let cidrs = ["10.250.0.0/16", "10.251.0.0/16", "10.252.0.0/16"];
    let mut leader = Leader::start(&server, &cidrs).await;
    let reason = loop {
        if let Some(Blocked::TooManyEndpoints(why)) = leader.blocked.borrow_and_update().clone() {
            break why;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no readiness reason for 6 foreign + 3 of ours; blocked: {:?}",
            leader.blocked.borrow()
        );
        tokio::time::timeout(Duration::from_millis(200), leader.blocked.changed())
            .await
            .ok();
    };
    println!("6 foreign + 3 ours: {reason}");
    for part in [
        "our 3 endpoint",
        "6 endpoint(s) of other writers",
        "onprem-0",
        "at most 8",
    ] {
        assert!(reason.contains(part), "{part:?} not in {reason:?}");
    }
    let now = api.get(vtep_config::NAME).await.unwrap();
    assert_eq!(
        now.data["spec"]["endpoints"],
        json!(foreign(6)),
        "written anyway"
    );

    // Room made: written, reason gone, the other writers' remaining entries kept.
    let mut fewer = now.clone();
    fewer.data["spec"]["endpoints"] = json!(foreign(5));
    api.replace(vtep_config::NAME, &PostParams::default(), &fewer)
        .await
        .unwrap();
    let mut want = want_spec(shape, &cidrs);
    let mut eps = foreign(5);
    eps.extend(want["endpoints"].as_array().unwrap().iter().cloned());
    want["endpoints"] = json!(eps);
    let (took, _) = written_within(&admin, shape, &want, Duration::from_secs(15))
        .await
        .unwrap();
    println!("5 foreign + 3 ours: written {took:?} after the room was made");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), async {
            while leader.blocked.borrow_and_update().is_some() {
                let _ = leader.blocked.changed().await;
            }
        })
        .await
        .is_ok(),
        "the reason stayed: {:?}",
        leader.blocked.borrow()
    );
    leader.stop().await;
    println!("wall time: {:?}", t0.elapsed());
}
