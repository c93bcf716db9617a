//! Which CiliumVTEPConfig the cluster serves, so the leader writes the shape the Cilium
//! agents read. Two are in the wild and nothing is released upstream yet:
//! - `cilium.io/v2` with `spec.endpoints` (the AWS-maintained Cilium build), with
//!   `spec.cidrMask` where the served schema has it;
//! - `cilium.io/v2alpha1` with `spec.vtepEndpoints` and a `nodeSelector`, no `cidrMask`,
//!   no status (the upstream proposal, cilium/design-cfps#92).
//!
//! Looked up at start and again whenever the CRD changes: the CRD object itself (served
//! versions and their schemas; the shipped RBAC lets the daemon read and watch that one
//! CRD), or, where RBAC does not allow that, API discovery for the served versions plus a
//! dry-run create that shows which fields the served schema keeps.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::Api;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::CallError;
use crate::backoff::Backoff;

pub const GROUP: &str = "cilium.io";
pub const KIND: &str = "CiliumVTEPConfig";
pub const PLURAL: &str = "ciliumvtepconfigs";
pub const CRD_NAME: &str = "ciliumvtepconfigs.cilium.io";
/// Looked at again this often when the CRD cannot be watched (discovery only), and as a
/// safety net otherwise.
const RECHECK: Duration = Duration::from_secs(30);
/// After a failed look-up: 0.5-1 s, doubling, at most 30 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// A served CiliumVTEPConfig shape the gateway can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `cilium.io/v2`, `spec.endpoints`; `cidr_mask`: the served schema has `spec.cidrMask`
    /// (written only then: a field the schema lacks would be pruned, and the object would
    /// never read back as written).
    V2 { cidr_mask: bool },
    /// `cilium.io/v2alpha1`, `spec.vtepEndpoints` (+ `spec.nodeSelector`).
    V2Alpha1,
}

impl Shape {
    pub fn version(self) -> &'static str {
        match self {
            Shape::V2 { .. } => "v2",
            Shape::V2Alpha1 => "v2alpha1",
        }
    }

    /// The spec field that holds the endpoint list.
    pub fn list_field(self) -> &'static str {
        match self {
            Shape::V2 { .. } => "endpoints",
            Shape::V2Alpha1 => "vtepEndpoints",
        }
    }

    pub fn api_version(self) -> String {
        format!("{GROUP}/{}", self.version())
    }

    pub fn api_resource(self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GROUP, self.version(), KIND),
            PLURAL,
        )
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::V2 { cidr_mask: true } => f.write_str("cilium.io/v2 spec.endpoints + cidrMask"),
            Shape::V2 { cidr_mask: false } => {
                f.write_str("cilium.io/v2 spec.endpoints (no cidrMask in the served schema)")
            }
            Shape::V2Alpha1 => f.write_str("cilium.io/v2alpha1 spec.vtepEndpoints + nodeSelector"),
        }
    }
}

/// What the cluster serves, as last looked up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Served {
    /// Not looked up yet.
    #[default]
    Unknown,
    /// A shape we write; `how` the answer was found (for `status`).
    Shape { shape: Shape, how: &'static str },
    /// Neither shape is served, and why (CRD missing, being deleted, other versions).
    Neither(String),
    /// The look-up itself failed and nothing was found before (API unreachable).
    Failed(String),
}

impl Served {
    pub fn shape(&self) -> Option<Shape> {
        match self {
            Served::Shape { shape, .. } => Some(*shape),
            _ => None,
        }
    }

    /// One line for `status`: the detected shape, or why there is none.
    pub fn describe(&self) -> String {
        match self {
            Served::Unknown => "not looked up yet".into(),
            Served::Shape { shape, how } => format!("{shape} (from {how})"),
            Served::Neither(why) => format!("neither cilium.io/v2 nor v2alpha1 is served: {why}"),
            Served::Failed(why) => format!("could not look up the served shape: {why}"),
        }
    }
}

/// The shape to write, from the CRD object: among its served versions, `v2` with
/// `spec.endpoints` and `v2alpha1` with `spec.vtepEndpoints`. When both are served (a
/// CRD in transition), the storage version wins (it is what etcd holds, whichever version
/// an agent reads through), else v2.
pub fn from_crd(crd: &CustomResourceDefinition) -> Served {
    if crd.metadata.deletion_timestamp.is_some() {
        return Served::Neither(format!("CRD {CRD_NAME} is being deleted"));
    }
    let usable = |v: &CustomResourceDefinitionVersion| -> Option<Shape> {
        if !v.served {
            return None;
        }
        let spec = v
            .schema
            .as_ref()?
            .open_api_v3_schema
            .as_ref()?
            .properties
            .as_ref()?
            .get("spec")?;
        let has = |field: &str| has_property(spec, field);
        match v.name.as_str() {
            "v2" if has("endpoints") => Some(Shape::V2 {
                cidr_mask: has("cidrMask"),
            }),
            "v2alpha1" if has("vtepEndpoints") => Some(Shape::V2Alpha1),
            _ => None,
        }
    };
    let versions = &crd.spec.versions;
    let mut found: Vec<(Shape, bool)> = versions
        .iter()
        .filter_map(|v| usable(v).map(|s| (s, v.storage)))
        .collect();
    found.sort_by_key(|(s, storage)| (!storage, s.version() != "v2"));
    match found.first() {
        Some((shape, _)) => Served::Shape {
            shape: *shape,
            how: "the CRD",
        },
        None => {
            let served: Vec<String> = versions
                .iter()
                .filter(|v| v.served)
                .map(|v| v.name.clone())
                .collect();
            Served::Neither(format!(
                "CRD {CRD_NAME} serves [{}], none with the spec.endpoints (v2) or spec.vtepEndpoints (v2alpha1) this gateway writes",
                served.join(", ")
            ))
        }
    }
}

fn has_property(schema: &JSONSchemaProps, field: &str) -> bool {
    schema
        .properties
        .as_ref()
        .is_some_and(|p| p.contains_key(field))
}

/// Looks the served shape up once: the CRD if we may read it, else discovery + dry-run.
pub async fn detect(client: &kube::Client, timeout: Duration) -> Result<Served, CallError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match super::timed(timeout, crds.get_opt(CRD_NAME)).await {
        Ok(Some(crd)) => Ok(from_crd(&crd)),
        Ok(None) => Ok(Served::Neither(format!(
            "CRD {CRD_NAME} is not installed (install a Cilium with VTEP support, or its CRDs)"
        ))),
        Err(CallError::Api(kube::Error::Api(e))) if e.code == 403 => {
            detect_by_discovery(client, timeout).await
        }
        Err(e) => Err(e),
    }
}

/// Without read access to the CRD: API discovery says which versions serve
/// `ciliumvtepconfigs`; a dry-run create (nothing is stored) of a probe object says
/// whether the served v2 schema keeps `cidrMask` and has `endpoints` at all.
pub async fn detect_by_discovery(
    client: &kube::Client,
    timeout: Duration,
) -> Result<Served, CallError> {
    let mut served = Vec::new();
    for version in ["v2", "v2alpha1"] {
        let gv = format!("{GROUP}/{version}");
        match super::timed(timeout, client.list_api_group_resources(&gv)).await {
            Ok(list) => {
                if list.resources.iter().any(|r| r.name == PLURAL) {
                    served.push(version);
                }
            }
            Err(CallError::Api(kube::Error::Api(e))) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let how = "discovery + dry-run";
    if served.contains(&"v2") {
        if let Some(cidr_mask) = probe_v2(client, timeout).await? {
            return Ok(Served::Shape {
                shape: Shape::V2 { cidr_mask },
                how,
            });
        }
    }
    if served.contains(&"v2alpha1") {
        return Ok(Served::Shape {
            shape: Shape::V2Alpha1,
            how,
        });
    }
    Ok(Served::Neither(if served.is_empty() {
        format!("API discovery finds no {PLURAL} in {GROUP}/v2 or {GROUP}/v2alpha1")
    } else {
        format!("{GROUP}/v2 serves {PLURAL} without spec.endpoints")
    }))
}

/// Dry-run create of a v2 object with `cidrMask`: `Some(kept)` if the schema takes
/// `spec.endpoints` (whether `cidrMask` survived pruning), `None` if it refuses or prunes
/// the endpoints.
async fn probe_v2(client: &kube::Client, timeout: Duration) -> Result<Option<bool>, CallError> {
    let shape = Shape::V2 { cidr_mask: true };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &shape.api_resource());
    let probe = DynamicObject::new("hybrid-gateway-shape-probe", &shape.api_resource()).data(json!({
        "spec": {
            "cidrMask": "255.255.0.0",
            "endpoints": [{ "name": "probe", "tunnelEndpoint": "192.0.2.1", "cidr": "192.0.2.0/24", "mac": "02:00:00:00:00:01" }],
        },
    }));
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match super::timed(timeout, api.create(&params, &probe)).await {
        Ok(o) => {
            let spec = o.data.get("spec");
            let has = |f: &str| spec.and_then(|s| s.get(f)).is_some();
            Ok(has("endpoints").then(|| has("cidrMask")))
        }
        // Invalid for the served schema (e.g. another required list field).
        Err(CallError::Api(kube::Error::Api(e))) if e.code == 422 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Keeps `tx` at what the cluster serves until `cancel`: looked up at once, again on every
/// change of the CRD (a watch on that one object), every [`RECHECK`], and after a failed
/// look-up with backoff. A failed look-up keeps the last answer (an API hiccup does not
/// unlearn the shape).
pub async fn run(
    client: kube::Client,
    timeout: Duration,
    tx: watch::Sender<Served>,
    cancel: CancellationToken,
) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={CRD_NAME}"))
        .timeout(30);
    // Errors (no RBAC for the CRD, API down) are left to the watcher's own backoff and to
    // the periodic look-up; only real changes count.
    let mut changes = watcher::watcher(crds, config)
        .filter_map(|ev| {
            futures::future::ready(match ev {
                Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => Some(()),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!("CRD {CRD_NAME} watch: {e}");
                    None
                }
            })
        })
        .boxed();
    let mut failures = 0u32;
    loop {
        let wait = match detect(&client, timeout).await {
            Ok(now) => {
                if failures > 0 {
                    tracing::info!("served CiliumVTEPConfig shape looked up again after {failures} failed attempts");
                }
                failures = 0;
                tx.send_if_modified(|old| {
                    if *old == now {
                        return false;
                    }
                    tracing::info!("CiliumVTEPConfig shape: {}", now.describe());
                    *old = now;
                    true
                });
                RECHECK
            }
            Err(e) => {
                let why = e.to_string();
                // One line per outage (the retries follow the backoff, up to every 30 s).
                if failures == 0 {
                    tracing::warn!("looking up the served CiliumVTEPConfig shape: {why}; retrying");
                } else {
                    tracing::debug!("looking up the served CiliumVTEPConfig shape: {why}");
                }
                tx.send_if_modified(|old| match old {
                    Served::Unknown | Served::Failed(_) => {
                        *old = Served::Failed(why);
                        true
                    }
                    _ => false,
                });
                failures += 1;
                BACKOFF.delay(failures - 1)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changes.next() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(versions: serde_json::Value) -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": CRD_NAME},
            "spec": {"group": GROUP, "scope": "Cluster",
                "names": {"kind": KIND, "plural": PLURAL},
                "versions": versions},
        }))
        .unwrap()
    }

    fn version(name: &str, served: bool, storage: bool, fields: &[&str]) -> serde_json::Value {
        let props: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|f| (f.to_string(), json!({"type": "string"})))
            .collect();
        json!({"name": name, "served": served, "storage": storage,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": props}}}}})
    }

    #[test]
    fn shape_follows_the_served_schema() {
        let v2 = |f: &[&str]| version("v2", true, true, f);
        assert_eq!(
            from_crd(&crd(json!([v2(&["endpoints", "cidrMask"])]))).shape(),
            Some(Shape::V2 { cidr_mask: true })
        );
        assert_eq!(
            from_crd(&crd(json!([v2(&["endpoints"])]))).shape(),
            Some(Shape::V2 { cidr_mask: false })
        );
        let alpha = version("v2alpha1", true, true, &["vtepEndpoints", "nodeSelector"]);
        assert_eq!(
            from_crd(&crd(json!([alpha]))).shape(),
            Some(Shape::V2Alpha1)
        );
        // Both served: the storage version.
        let both = json!([
            version("v2", true, false, &["endpoints"]),
            version("v2alpha1", true, true, &["vtepEndpoints"])
        ]);
        assert_eq!(from_crd(&crd(both)).shape(), Some(Shape::V2Alpha1));
        // A version we know, but not served, or without the list we write.
        let none = json!([
            version("v2", false, false, &["endpoints"]),
            version("v2alpha1", true, true, &["endpoints"])
        ]);
        match from_crd(&crd(none)) {
            Served::Neither(why) => assert!(why.contains("serves [v2alpha1]"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
