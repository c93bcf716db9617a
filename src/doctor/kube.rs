//! The Kubernetes side: the API server answers, every verb the daemon uses is allowed
//! (SelfSubjectAccessReview, as the daemon's own credentials), the Cilium CRDs are served,
//! and who holds the Lease.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};

use super::{Check, CALL_TIMEOUT};
use crate::config::Config;

/// What the daemon does, as in packaging/kubernetes/rbac.yaml: (group, resource, verb,
/// namespaced, resource name).
const VERBS: [(&str, &str, &str, bool, Option<&str>); 12] = [
    ("cilium.io", "ciliumnodes", "list", false, None),
    ("cilium.io", "ciliumnodes", "watch", false, None),
    ("cilium.io", "ciliumvtepconfigs", "get", false, None),
    ("cilium.io", "ciliumvtepconfigs", "list", false, None),
    ("cilium.io", "ciliumvtepconfigs", "watch", false, None),
    ("cilium.io", "ciliumvtepconfigs", "create", false, None),
    ("cilium.io", "ciliumvtepconfigs", "patch", false, None),
    ("coordination.k8s.io", "leases", "get", true, None),
    ("coordination.k8s.io", "leases", "create", true, None),
    ("coordination.k8s.io", "leases", "update", true, None),
    // The Lease watch and the health score Leases (by label: the whole namespace).
    ("coordination.k8s.io", "leases", "list", true, None),
    ("coordination.k8s.io", "leases", "watch", true, None),
];

/// The checks, and the Lease's holder when there is one (for the gateways check).
pub async fn checks(
    config: &Config,
    aws: Option<&aws_config::SdkConfig>,
) -> (Vec<Check>, Option<String>) {
    let client = match tokio::time::timeout(
        CALL_TIMEOUT,
        crate::k8s::client::connect(&config.kubernetes, aws),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return (
                vec![Check::fail(
                    "kubernetes",
                    crate::telemetry::explain::explain(&e),
                    "set kubernetes.kubeconfig or [kubernetes.eks] correctly",
                )],
                None,
            )
        }
        Err(_) => {
            return (
                vec![Check::fail(
                    "kubernetes",
                    format!("no client within {CALL_TIMEOUT:?}"),
                    "check [kubernetes.eks] and the AWS credentials",
                )],
                None,
            )
        }
    };
    let version = tokio::time::timeout(CALL_TIMEOUT, client.apiserver_version()).await;
    let mut out = vec![match version {
        Ok(Ok(v)) => Check::ok(
            "kubernetes",
            format!("API server {} answers", v.git_version),
        ),
        Ok(Err(e)) => {
            return (
                vec![Check::fail(
                "kubernetes",
                crate::telemetry::explain::explain(&e),
                "make the API server reachable from this host with a CA the configuration trusts",
            )],
                None,
            )
        }
        Err(_) => {
            return (
                vec![Check::fail(
                    "kubernetes",
                    format!("the API server did not answer within {CALL_TIMEOUT:?}"),
                    "check the security groups between this host and the EKS endpoint",
                )],
                None,
            )
        }
    }];
    out.push(rbac(&client, &config.election.namespace).await);
    out.push(crds(&client).await);
    out.push(vtep_shape(&client).await);
    let (check, holder) = lease(
        &client,
        &config.election.namespace,
        &config.election.lease_name,
    )
    .await;
    out.push(check);
    (out, holder)
}

/// The CiliumVTEPConfig shape the cluster serves, found as the leader finds it (the CRD
/// object, else discovery and a dry run): what the leader will write.
async fn vtep_shape(client: &kube::Client) -> Check {
    use crate::k8s::vtep_shape;
    match vtep_shape::detect(client, CALL_TIMEOUT).await {
        Ok(served) if served.shape().is_some() => {
            Check::ok("vtep_shape", format!("the leader writes {}", served.describe()))
        }
        Ok(served) => Check::fail(
            "vtep_shape",
            served.describe(),
            "install a Cilium whose CiliumVTEPConfig CRD serves cilium.io/v2 (endpoints) or cilium.io/v2alpha1 (vtepEndpoints)",
        ),
        Err(e) => Check::fail(
            "vtep_shape",
            format!("the served CiliumVTEPConfig shape could not be found: {e}"),
            "see the rbac and cilium_crds checks",
        ),
    }
}

async fn rbac(client: &kube::Client, namespace: &str) -> Check {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut denied = Vec::new();
    let asks: Vec<(&str, &str, &str, bool, Option<&str>)> = VERBS.to_vec();
    for (group, resource, verb, namespaced, name) in asks {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    verb: Some(verb.into()),
                    namespace: namespaced.then(|| namespace.to_string()),
                    name: name.map(String::from),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let what = format!("{verb} {resource}");
        match tokio::time::timeout(CALL_TIMEOUT, api.create(&PostParams::default(), &review)).await
        {
            Ok(Ok(r)) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(Ok(_)) => denied.push(what),
            Ok(Err(e)) => {
                return Check::fail(
                    "rbac",
                    format!(
                        "asking whether we may {what}: {}",
                        crate::telemetry::explain::explain(&e)
                    ),
                    "the API server must serve authorization.k8s.io/v1",
                )
            }
            Err(_) => {
                return Check::fail(
                    "rbac",
                    format!("no answer within {CALL_TIMEOUT:?}"),
                    "check the API server",
                )
            }
        }
    }
    if denied.is_empty() {
        Check::ok(
            "rbac",
            format!("all {} verbs the daemon uses are allowed", VERBS.len() + 2),
        )
    } else {
        Check::fail(
            "rbac",
            format!("not allowed: {}", denied.join(", ")),
            "kubectl apply -f /usr/share/hybrid-gateway/rbac.yaml (and bind this gateway's identity to it)",
        )
    }
}

async fn crds(client: &kube::Client) -> Check {
    match tokio::time::timeout(
        CALL_TIMEOUT,
        client.list_api_group_resources("cilium.io/v2"),
    )
    .await
    {
        Ok(Ok(list)) => {
            let served: Vec<&str> = list.resources.iter().map(|r| r.name.as_str()).collect();
            // CiliumVTEPConfig may be served as v2alpha1 instead: the vtep_shape check
            // judges that one.
            let missing: Vec<&str> = ["ciliumnodes"]
                .into_iter()
                .filter(|r| !served.contains(r))
                .collect();
            if missing.is_empty() && served.contains(&"ciliumvtepconfigs") {
                Check::ok(
                    "cilium_crds",
                    "ciliumnodes and ciliumvtepconfigs served as cilium.io/v2",
                )
            } else if missing.is_empty() {
                Check::ok("cilium_crds", "ciliumnodes served as cilium.io/v2")
            } else {
                Check::fail(
                    "cilium_crds",
                    format!("cilium.io/v2 does not serve {}", missing.join(", ")),
                    "install a Cilium build with VTEP support (its CRDs), or upgrade Cilium",
                )
            }
        }
        Ok(Err(e)) => Check::fail(
            "cilium_crds",
            format!("cilium.io/v2: {}", crate::telemetry::explain::explain(&e)),
            "install Cilium (its CRDs) in this cluster",
        ),
        Err(_) => Check::fail(
            "cilium_crds",
            format!("no answer within {CALL_TIMEOUT:?}"),
            "check the API server",
        ),
    }
}

async fn lease(client: &kube::Client, namespace: &str, name: &str) -> (Check, Option<String>) {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let check = format!("lease {namespace}/{name}");
    let mut found = None;
    let result = match tokio::time::timeout(CALL_TIMEOUT, api.get_opt(name)).await {
        Ok(Ok(Some(l))) => {
            let spec = l.spec.unwrap_or_default();
            let holder = spec.holder_identity.filter(|h| !h.is_empty());
            found.clone_from(&holder);
            let age = spec
                .renew_time
                .map(|t| jiff::Timestamp::now().duration_since(t.0).as_secs_f64());
            let duration = f64::from(spec.lease_duration_seconds.unwrap_or(0));
            match (holder, age) {
                (Some(h), Some(a)) if a <= duration => {
                    Check::ok(&check, format!("held by {h} (renewed {a:.1} s ago)"))
                }
                (Some(h), Some(a)) => Check::warn(
                    &check,
                    format!("held by {h} but not renewed for {a:.0} s (lease {duration} s): no live leader"),
                    "check the gateways (systemctl status hybrid-gateway); a standby takes over on its own",
                ),
                _ => Check::warn(
                    &check,
                    "released: no leader right now",
                    "start a gateway; one takes it within a retry period",
                ),
            }
        }
        Ok(Ok(None)) => Check::warn(
            &check,
            "does not exist yet: no gateway has run",
            "start the gateways; the first creates it",
        ),
        Ok(Err(e)) => Check::fail(
            &check,
            crate::telemetry::explain::explain(&e),
            "see the rbac check",
        ),
        Err(_) => Check::fail(
            &check,
            format!("no answer within {CALL_TIMEOUT:?}"),
            "check the API server",
        ),
    };
    (result, found)
}
