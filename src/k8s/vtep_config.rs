//! The `CiliumVTEPConfig` that tells hybrid nodes to send VPC-bound traffic through the
//! leader. Leader-only: applied on taking office, re-applied within a second of anyone
//! changing or deleting it, and never written once leadership is gone.
//!
//! Written in the shape the cluster serves ([`super::vtep_shape`]): `cilium.io/v2`
//! `spec.endpoints` (+ `cidrMask` where served) or `cilium.io/v2alpha1` `spec.vtepEndpoints`
//! (+ `nodeSelector`). A change of the served shape ends the term's writer, and the next one
//! writes the new shape.
//!
//! Written with server-side apply under our own field manager, so the `status` Cilium
//! writes and fields other managers own are left alone. A term annotation fences out a
//! deposed leader: nobody writes over a term not below its own, and the write carries the
//! resourceVersion it checked. A legitimate leader that finds a term at or above its own
//! (its store was recreated or switched) raises the store's term above it first — see
//! [`fence`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::vtep_shape::{self, Served, Shape};
use super::CallError;
use crate::backoff::Backoff;
use crate::datapath::Mac;
use crate::election::{ElectionHandle, Term};
use crate::reconcile::{self, Outcome, Target, Wakeups};

pub const NAME: &str = "hybrid-gateway";
pub const FIELD_MANAGER: &str = "hybrid-gateway";
pub const TERM_ANNOTATION: &str = "hybrid-gateway.io/term";
pub const LEADER_ANNOTATION: &str = "hybrid-gateway.io/leader";
const RESYNC: Duration = Duration::from_secs(30);
/// Cilium takes at most this many VTEP endpoints (its CRD's `maxItems`, the agent's map).
pub const MAX_ENDPOINTS: usize = 8;
/// After a failed write: 100-200 ms, doubling, at most 5 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// The `cilium.io/v2` resource (the shape the AWS-maintained Cilium build serves).
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cilium.io",
        "v2",
        "CiliumVTEPConfig",
    ))
}

/// The node labels of the `nodeSelector` written in the v2alpha1 shape unless configured
/// otherwise: EKS labels hybrid nodes so, and only their agents need the VPC CIDRs routed
/// through the gateway (a cloud node reaches the VPC directly).
pub fn default_node_selector() -> BTreeMap<String, String> {
    [(
        "eks.amazonaws.com/compute-type".to_string(),
        "hybrid".to_string(),
    )]
    .into()
}

/// The endpoints this gateway advertises: one per VPC CIDR, named as the reference gateway
/// names them since its v1.0.1 — `vpc-gateway` for a single VPC CIDR, `vpc-gateway-0` …
/// `vpc-gateway-<N-1>` for several, in config order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VtepSpec {
    pub tunnel_endpoint: Ipv4Addr,
    pub mac: Mac,
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// `matchLabels` of the v2alpha1 `nodeSelector`; empty: none written (all nodes).
    pub node_selector: BTreeMap<String, String>,
    /// The served shape to write in (set per writer from [`vtep_shape`]).
    pub shape: Shape,
}

/// The name of endpoint `i` of `n`, as the reference gateway (v1.0.1+) writes it.
pub fn endpoint_name(i: usize, n: usize) -> String {
    if n == 1 {
        BASE_NAME.to_string()
    } else {
        format!("{BASE_NAME}-{i}")
    }
}

const BASE_NAME: &str = "vpc-gateway";

/// Whether `name` is one of the names a VPC gateway writes into this object: ours now,
/// ours before (`vpc-gateway`, `vpc-gateway-2`, `-3`…), the reference's (`vpc-gateway`,
/// `vpc-gateway-0`…) and per-AZ mode's (`vpc-gateway-az-<shard>-<i>`, see
/// [`super::vtep_shards`]). Such entries describe the VPC gateway, so the leader replaces
/// them.
pub(crate) fn is_gateway_name(name: &str) -> bool {
    match name.strip_prefix(BASE_NAME) {
        Some("") => true,
        Some(rest) => rest.strip_prefix('-').is_some_and(|n| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) || n.starts_with("az-")
        }),
        None => false,
    }
}

impl VtepSpec {
    /// The v2 shape with `cidrMask`, no node selector; the writer sets the served shape.
    pub fn new(tunnel_endpoint: Ipv4Addr, mac: Mac, vpc_cidrs: Vec<Ipv4Net>) -> Self {
        VtepSpec {
            tunnel_endpoint,
            mac,
            vpc_cidrs,
            node_selector: BTreeMap::new(),
            shape: Shape::V2 { cidr_mask: true },
        }
    }

    fn endpoints(&self) -> Vec<Value> {
        let n = self.vpc_cidrs.len();
        self.vpc_cidrs
            .iter()
            .enumerate()
            .map(|(i, cidr)| {
                json!({ "name": endpoint_name(i, n), "tunnelEndpoint": self.tunnel_endpoint.to_string(), "cidr": cidr.to_string(), "mac": self.mac.to_string() })
            })
            .collect()
    }

    /// Whether an endpoint found in the object is the VPC gateway's, i.e. must be replaced
    /// by ours: it carries a gateway name (ours now, ours before this version, or the
    /// reference's), or routes one of our VPC CIDRs (Cilium rejects an object with a
    /// duplicate CIDR, or uses whichever entry it meets first). Whoever wrote it — the Go
    /// gateway, an earlier version of us, a hand edit — does not matter.
    fn is_gateway_endpoint(&self, e: &Value) -> bool {
        if e.get("name")
            .and_then(Value::as_str)
            .is_some_and(is_gateway_name)
        {
            return true;
        }
        let Some(cidr) = e.get("cidr").and_then(Value::as_str) else {
            return false;
        };
        // Compared as networks, so `10.250.0.0/16` and `10.250.1.0/16` are one CIDR.
        cidr.parse::<Ipv4Net>()
            .is_ok_and(|c| self.vpc_cidrs.iter().any(|o| o.trunc() == c.trunc()))
    }

    /// Endpoints in `actual` that are the gateway's but not exactly ours: the Go gateway's
    /// or our earlier names' entries a takeover or an upgrade must remove.
    fn stale<'a>(&self, actual: &'a [Value]) -> Vec<&'a Value> {
        let ours = self.endpoints();
        actual
            .iter()
            .filter(|e| self.is_gateway_endpoint(e) && !ours.contains(e))
            .filter(|e| {
                // Same name as one of ours (but different content) is drift that the apply
                // corrects in place, not an entry to remove.
                let name = e.get("name");
                !ours.iter().any(|o| o.get("name") == name)
            })
            .collect()
    }

    /// The whole endpoint list to write when entries must go: everything in `actual` that
    /// is not the gateway's, in its order, then ours.
    fn merged_endpoints(&self, actual: &[Value]) -> Vec<Value> {
        actual
            .iter()
            .filter(|e| !self.is_gateway_endpoint(e))
            .cloned()
            .chain(self.endpoints())
            .collect()
    }

    /// Cilium applies one mask to every VTEP CIDR (config validation makes them share one
    /// prefix length).
    fn cidr_mask(&self) -> String {
        self.vpc_cidrs
            .first()
            .map_or_else(|| "255.255.255.0".to_string(), |c| c.netmask().to_string())
    }

    /// The `nodeSelector` we write (v2alpha1 with configured labels only).
    fn node_selector(&self) -> Option<Value> {
        (self.shape == Shape::V2Alpha1 && !self.node_selector.is_empty())
            .then(|| json!({ "matchLabels": self.node_selector }))
    }

    /// The spec fields we own in the served shape, with `endpoints` as the list.
    fn spec_fields(&self, endpoints: Vec<Value>) -> Value {
        let mut spec = json!({ self.shape.list_field(): endpoints });
        if self.shape == (Shape::V2 { cidr_mask: true }) {
            spec["cidrMask"] = json!(self.cidr_mask());
        }
        if let Some(sel) = self.node_selector() {
            spec["nodeSelector"] = sel;
        }
        spec
    }

    /// The server-side-apply body: only the fields we own.
    pub fn apply_body(&self, identity: &str, term: u32) -> Value {
        json!({
            "apiVersion": self.shape.api_version(),
            "kind": vtep_shape::KIND,
            "metadata": {
                "name": NAME,
                "annotations": { TERM_ANNOTATION: term.to_string(), LEADER_ANNOTATION: identity },
            },
            "spec": self.spec_fields(self.endpoints()),
        })
    }

    /// Whether `obj` already says what we would write (our endpoints by name, the mask, the
    /// annotations) and holds no other gateway entry (the Go gateway's, our earlier names,
    /// a duplicate of one of our CIDRs). Unrelated endpoints of other writers are not ours
    /// to judge.
    pub fn satisfied_by(&self, obj: &DynamicObject, identity: &str, term: u32) -> bool {
        let annotations = obj.metadata.annotations.clone().unwrap_or_default();
        if annotations.get(TERM_ANNOTATION) != Some(&term.to_string())
            || annotations.get(LEADER_ANNOTATION).map(String::as_str) != Some(identity)
        {
            return false;
        }
        let spec = obj.data.get("spec");
        if self.shape == (Shape::V2 { cidr_mask: true })
            && spec.and_then(|s| s.get("cidrMask")).and_then(Value::as_str)
                != Some(self.cidr_mask().as_str())
        {
            return false;
        }
        if let Some(sel) = self.node_selector() {
            if spec.and_then(|s| s.get("nodeSelector")) != Some(&sel) {
                return false;
            }
        }
        let actual = endpoints_of(obj, self.shape);
        self.stale(&actual).is_empty()
            && self
                .endpoints()
                .iter()
                .all(|want| actual.iter().any(|have| have == want))
    }
}

/// The endpoint list (`spec.endpoints` or `spec.vtepEndpoints`) of an object as found
/// (empty when absent or malformed).
pub(crate) fn endpoints_of(obj: &DynamicObject, shape: Shape) -> Vec<Value> {
    obj.data
        .get("spec")
        .and_then(|s| s.get(shape.list_field()))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The term annotation of an existing object, if any.
fn written_term(obj: &DynamicObject) -> Option<u32> {
    obj.metadata
        .annotations
        .as_ref()?
        .get(TERM_ANNOTATION)?
        .parse()
        .ok()
}

/// The fence: may a leader in `term` named `identity` write over `obj`? Only over a lower
/// term, or over its own writes in the same term. Anything else is either a newer leader
/// (whose CR a deposed one must never overwrite) or a store that was reset under a
/// legitimate leader (deleted Lease or lock item, another mode): in both cases the
/// answer is to raise the store's term above the object's with a conditional write,
/// which only the holder of the store's current version can make. The object's term
/// therefore never goes backwards, and no reset can lock every future leader out.
pub fn fence(obj: &DynamicObject, identity: &str, term: u32) -> Result<(), u32> {
    let Some(found) = written_term(obj) else {
        return Ok(());
    };
    let by = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEADER_ANNOTATION))
        .map(String::as_str);
    if found < term || (found == term && by == Some(identity)) {
        Ok(())
    } else {
        Err(found)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VtepConfigError {
    #[error("CiliumVTEPConfig {NAME} carries term {found}, not below ours ({ours}): raising our term above it")]
    Fenced { found: u32, ours: u32 },
    #[error("not enough leadership left to write safely")]
    NoTimeLeft,
    #[error("CiliumVTEPConfig not written: {0}")]
    NotServed(String),
    #[error("CiliumVTEPConfig {NAME} cannot take our {ours} endpoint(s): it holds {} endpoint(s) of other writers ({}), and Cilium allows at most {MAX_ENDPOINTS} (remove some of theirs, or configure fewer gateway.vpc_cidrs)", others.len(), others.join(", "))]
    TooManyEndpoints { ours: usize, others: Vec<String> },
    #[error("CiliumVTEPConfig {NAME}: {0}")]
    Api(#[source] CallError),
    #[error("CiliumVTEPConfig {NAME}: building the object: {0}")]
    Body(#[source] serde_json::Error),
}

/// Reads, checks the fence, and writes if anything differs, as leader of `election`'s
/// term. Returns whether it wrote.
///
/// The term's time left is read again right before the write: it is zero once that term
/// is over (standby, or a Standby → Leader flap into a new term), so a term read once
/// never writes after it ended. The write carries the resourceVersion it checked (or is a
/// create that fails if someone created the object meanwhile), so nothing written since
/// the check can be overwritten.
pub async fn ensure(
    api: &Api<DynamicObject>,
    spec: &VtepSpec,
    identity: &str,
    election: &Term,
    timeout: Duration,
) -> Result<bool, VtepConfigError> {
    let term = election.number();
    let current = super::timed(timeout, api.get_opt(NAME))
        .await
        .map_err(VtepConfigError::Api)?;
    if let Some(obj) = &current {
        if let Err(found) = fence(obj, identity, term) {
            election.raise_term_above(found);
            return Err(VtepConfigError::Fenced { found, ours: term });
        }
        if spec.satisfied_by(obj, identity, term) {
            return Ok(false);
        }
        // Other writers' endpoints stay next to ours (whichever way we write): together
        // over Cilium's limit, the apiserver would refuse every write with a bare 422.
        let others: Vec<String> = endpoints_of(obj, spec.shape)
            .iter()
            .filter(|e| !spec.is_gateway_endpoint(e))
            .map(|e| {
                e.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string()
            })
            .collect();
        if others.len() + spec.vpc_cidrs.len() > MAX_ENDPOINTS {
            return Err(VtepConfigError::TooManyEndpoints {
                ours: spec.vpc_cidrs.len(),
                others,
            });
        }
    }
    // The moment of the write: this term still leads, with more time left than the write
    // may take.
    let left = election.remaining();
    if left <= timeout {
        return Err(VtepConfigError::NoTimeLeft);
    }
    let mut body = spec.apply_body(identity, term);
    let limit = timeout.min(left);
    let found = current
        .as_ref()
        .map(|o| endpoints_of(o, spec.shape))
        .unwrap_or_default();
    let stale = !spec.stale(&found).is_empty();
    match current.and_then(|o| o.metadata.resource_version) {
        // Takeover (from the Go gateway, or from our own earlier endpoint names): the object
        // holds gateway entries that are not ours. Server-side apply cannot remove them —
        // an apply drops only list items its own manager alone owned, and the Go gateway's
        // plain Update made it the owner of its entry — and `force` only takes over items
        // with the same key (name), so `vpc-gateway` for our first CIDR would stay next to
        // our `vpc-gateway-0`. Two writes (apply, then remove) would also show Cilium an
        // object with a duplicate CIDR in between. So this one write replaces the whole
        // endpoint list: what others wrote for unrelated CIDRs, in their order, then ours,
        // with the resourceVersion we read as a precondition (a 409 if anything changed
        // since, and the next pass recomputes). A merge patch replaces the list whole for a
        // custom resource and leaves every other field alone; the status subresource is
        // not writable through the main resource, so Cilium's status stays. Later passes
        // find the object satisfied, and drift goes through the apply below again.
        Some(rv) if stale => {
            let patch = json!({
                "metadata": {
                    "resourceVersion": rv,
                    "annotations": body["metadata"]["annotations"].take(),
                },
                "spec": spec.spec_fields(spec.merged_endpoints(&found)),
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            };
            super::timed(limit, api.patch(NAME, &params, &Patch::Merge(&patch)))
                .await
                .map_err(VtepConfigError::Api)?;
        }
        Some(rv) => {
            // Optimistic lock: if the object changed since we checked the fence, get 409 and retry.
            body["metadata"]["resourceVersion"] = json!(rv);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            super::timed(limit, api.patch(NAME, &params, &Patch::Apply(&body)))
                .await
                .map_err(VtepConfigError::Api)?;
        }
        None => {
            // A create, not an apply: an apply would overwrite an object another leader
            // created since our read; a create fails with 409 instead.
            let obj: DynamicObject = serde_json::from_value(body).map_err(VtepConfigError::Body)?;
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PostParams::default()
            };
            super::timed(limit, api.create(&params, &obj))
                .await
                .map_err(VtepConfigError::Api)?;
        }
    }
    Ok(true)
}

/// Why the leader cannot put the gateway into the CiliumVTEPConfig right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// The object carries a term not below ours (see [`fence`]).
    Fenced(String),
    /// The cluster serves no CiliumVTEPConfig shape we write.
    NotServed(String),
    /// The object cannot take our endpoints (other writers' fill Cilium's limit).
    TooManyEndpoints(String),
}

/// Leader-only: whenever this process leads, keeps the CiliumVTEPConfig right — at once
/// on taking office, within a second of anyone changing or deleting it, and every resync —
/// until `cancel`, in the shape the cluster serves (looked up here, see [`vtep_shape`]).
pub async fn run(
    client: kube::Client,
    spec: VtepSpec,
    identity: String,
    election: ElectionHandle,
    timeout: Duration,
    blocked: watch::Sender<Option<Blocked>>,
    cancel: CancellationToken,
) {
    let (tx, served) = watch::channel(Served::Unknown);
    let detect = tokio::spawn(vtep_shape::run(client.clone(), timeout, tx, cancel.clone()));
    run_with_shape(
        client, spec, identity, election, timeout, served, blocked, cancel,
    )
    .await;
    let _ = detect.await;
}

/// [`run`] with the served shape looked up elsewhere (the daemon shares one look-up with
/// its status). Each term's writer writes the shape served when it started; a change of
/// the shape ends its wake-up stream, and the next writer starts with the new one.
#[allow(clippy::too_many_arguments)]
pub async fn run_with_shape(
    client: kube::Client,
    spec: VtepSpec,
    identity: String,
    election: ElectionHandle,
    timeout: Duration,
    served: watch::Receiver<Served>,
    blocked: watch::Sender<Option<Blocked>>,
    cancel: CancellationToken,
) {
    let start = |term: Term| {
        let mut served = served.clone();
        let now = served.borrow_and_update().clone();
        let shape_changed = async move {
            let _ = served.changed().await;
        };
        let (api, changes) = match now.shape() {
            Some(shape) => {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &shape.api_resource());
                (Some(api.clone()), changes(api).boxed())
            }
            None => (None, futures::stream::pending().boxed()),
        };
        let writer = Writer {
            api,
            spec: VtepSpec {
                shape: now.shape().unwrap_or(spec.shape),
                ..spec.clone()
            },
            served: now,
            identity: identity.clone(),
            term,
            timeout,
            blocked: blocked.clone(),
        };
        let wakeups = Wakeups::new().on_stream(changes.take_until(shape_changed));
        (writer, wakeups)
    };
    reconcile::while_leading(&election, start, BACKOFF, &cancel).await;
}

/// A wake-up for every change of the object's spec or metadata; our own writes echo back
/// here too, and the next pass finds them satisfied.
///
/// Status writes do not wake us: every hybrid node's Cilium agent writes the object's
/// status, and a pass per write would be one GET per agent write for nothing (the status
/// is not ours and a pass never changes it). With the status subresource a status write
/// leaves `metadata.generation` alone, and the annotations (our term fence) are not
/// covered by generation, so an event wakes us only when uid, generation or annotations
/// differ from the last version seen. A delete, and the end of every (re)list, always do.
pub(crate) fn changes(api: Api<DynamicObject>) -> impl futures::Stream<Item = ()> + Send + 'static {
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={NAME}"))
        .timeout(30);
    let mut seen = SpecKey::default();
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(move |ev| {
            let wake = match ev {
                Ok(Event::Apply(obj)) => seen.update(&obj),
                Ok(Event::InitApply(obj)) => {
                    seen.update(&obj);
                    false
                }
                Ok(Event::Delete(_)) => {
                    seen = SpecKey::default();
                    true
                }
                Ok(Event::Init) => false,
                Ok(Event::InitDone) => true,
                Err(e) => {
                    tracing::debug!("CiliumVTEPConfig watch: {e}");
                    false
                }
            };
            futures::future::ready(wake.then_some(()))
        })
}

/// What of the object a pass depends on (everything but status and bookkeeping).
#[derive(Debug, Default, PartialEq, Eq)]
struct SpecKey {
    uid: Option<String>,
    generation: Option<i64>,
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

impl SpecKey {
    /// Records `obj`'s key; whether it differs from the one before. Without a generation
    /// (a CRD without the status subresource bumps it too, but be safe) every event counts.
    fn update(&mut self, obj: &DynamicObject) -> bool {
        let key = SpecKey {
            uid: obj.metadata.uid.clone(),
            generation: obj.metadata.generation,
            annotations: obj.metadata.annotations.clone(),
        };
        let changed = key.generation.is_none() || key != *self;
        *self = key;
        changed
    }
}

/// The CiliumVTEPConfig writer in one term of office, for the shape served when it started.
struct Writer {
    /// `None` when no shape we write is served.
    api: Option<Api<DynamicObject>>,
    spec: VtepSpec,
    served: Served,
    identity: String,
    term: Term,
    timeout: Duration,
    /// Why the last pass could not write; `None` once one could.
    blocked: watch::Sender<Option<Blocked>>,
}

impl Target for Writer {
    type Error = VtepConfigError;

    async fn pass(&mut self) -> Result<Outcome, VtepConfigError> {
        let term = self.term.number();
        if self.served == Served::Unknown {
            // Not looked up yet: the answer ends this writer and starts the next.
            return Ok(Outcome::idle());
        }
        let Some(api) = &self.api else {
            let why = self.served.describe();
            self.blocked
                .send_replace(Some(Blocked::NotServed(why.clone())));
            return Err(VtepConfigError::NotServed(why));
        };
        match ensure(api, &self.spec, &self.identity, &self.term, self.timeout).await {
            Ok(wrote) => {
                if wrote {
                    tracing::info!(term, endpoint = %self.spec.tunnel_endpoint, mac = %self.spec.mac, shape = %self.spec.shape, "CiliumVTEPConfig {NAME} applied");
                }
                self.blocked.send_replace(None);
                Ok(Outcome::resync(u64::from(wrote), RESYNC))
            }
            // The election raises the term at once, which ends this term and starts the
            // next pass in the new one; if it cannot (deposed), it steps down. The retry
            // is the fallback.
            Err(e @ VtepConfigError::Fenced { .. }) => {
                tracing::warn!(term, "{e}");
                self.blocked
                    .send_replace(Some(Blocked::Fenced(e.to_string())));
                Ok(Outcome::retry(0))
            }
            Err(e @ VtepConfigError::TooManyEndpoints { .. }) => {
                // Said once (and kept in readiness), then retried quietly: the watch wakes
                // us when someone removes entries.
                let why = Some(Blocked::TooManyEndpoints(e.to_string()));
                if self.blocked.send_if_modified(|b| {
                    let changed = *b != why;
                    *b = why.clone();
                    changed
                }) {
                    tracing::warn!(term, "{e}");
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn failed(&mut self, e: &VtepConfigError) {
        match e {
            // Said once by the shape look-up (or the pass) and kept in readiness; not a
            // warning a pass.
            VtepConfigError::NotServed(_) | VtepConfigError::TooManyEndpoints { .. } => {
                tracing::debug!(term = self.term.number(), "{e}; retrying")
            }
            _ => tracing::warn!(term = self.term.number(), "{e}; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VtepSpec {
        VtepSpec::new(
            "10.250.3.111".parse().unwrap(),
            Mac::for_gateway("10.250.3.111".parse().unwrap()),
            vec![
                "10.250.0.0/16".parse().unwrap(),
                "10.251.0.0/16".parse().unwrap(),
            ],
        )
    }

    #[test]
    fn body_matches_the_reference_shape_with_one_endpoint_per_vpc_cidr() {
        let b = spec().apply_body("gw-a_1234", 7);
        assert_eq!(b["metadata"]["name"], "hybrid-gateway");
        assert_eq!(b["metadata"]["annotations"][TERM_ANNOTATION], "7");
        assert_eq!(b["spec"]["cidrMask"], "255.255.0.0");
        let e = &b["spec"]["endpoints"];
        assert_eq!(
            e[0],
            json!({"name": "vpc-gateway-0", "tunnelEndpoint": "10.250.3.111", "cidr": "10.250.0.0/16", "mac": spec().mac.to_string()})
        );
        assert_eq!(e[0]["name"], "vpc-gateway-0");
        assert_eq!(e[1]["name"], "vpc-gateway-1");
        assert_eq!(e[1]["cidr"], "10.251.0.0/16");
        assert!(b.get("status").is_none(), "status is Cilium's");
    }

    #[test]
    fn each_served_shape_gets_its_own_fields() {
        let mut s = spec();
        s.node_selector = default_node_selector();
        // v2 without cidrMask in the served schema: none written, none required.
        s.shape = Shape::V2 { cidr_mask: false };
        let b = s.apply_body("gw-a", 1);
        assert_eq!(b["apiVersion"], "cilium.io/v2");
        assert!(b["spec"].get("cidrMask").is_none());
        assert!(
            b["spec"].get("nodeSelector").is_none(),
            "v2 has no selector"
        );
        let obj = DynamicObject::new(NAME, &Shape::V2 { cidr_mask: false }.api_resource())
            .data(b.clone());
        let mut obj = obj;
        obj.metadata.annotations = Some(
            [
                (TERM_ANNOTATION.to_string(), "1".to_string()),
                (LEADER_ANNOTATION.to_string(), "gw-a".to_string()),
            ]
            .into(),
        );
        assert!(s.satisfied_by(&obj, "gw-a", 1));
        // v2alpha1: vtepEndpoints + nodeSelector, no cidrMask.
        s.shape = Shape::V2Alpha1;
        let b = s.apply_body("gw-a", 1);
        assert_eq!(b["apiVersion"], "cilium.io/v2alpha1");
        assert!(b["spec"].get("endpoints").is_none());
        assert!(b["spec"].get("cidrMask").is_none());
        assert_eq!(b["spec"]["vtepEndpoints"][1]["name"], "vpc-gateway-1");
        assert_eq!(
            b["spec"]["nodeSelector"],
            json!({"matchLabels": {"eks.amazonaws.com/compute-type": "hybrid"}})
        );
        // A v2-shaped object does not satisfy the v2alpha1 writer.
        assert!(!s.satisfied_by(&obj, "gw-a", 1));
        s.node_selector.clear();
        assert!(s.apply_body("gw-a", 1)["spec"]
            .get("nodeSelector")
            .is_none());
    }

    #[test]
    fn satisfaction_ignores_foreign_endpoints_and_status() {
        let s = spec();
        let mut obj = DynamicObject::new(NAME, &api_resource()).data(s.apply_body("gw-a", 3));
        obj.metadata.annotations = Some(
            [
                (TERM_ANNOTATION.to_string(), "3".to_string()),
                (LEADER_ANNOTATION.to_string(), "gw-a".to_string()),
            ]
            .into(),
        );
        obj.data["spec"]["endpoints"].as_array_mut().unwrap().push(json!({"name": "other", "tunnelEndpoint": "1.2.3.4", "cidr": "10.9.0.0/16", "mac": "02:00:00:00:00:01"}));
        obj.data["status"] = json!({"endpointCount": 3});
        assert!(s.satisfied_by(&obj, "gw-a", 3));
        assert!(
            !s.satisfied_by(&obj, "gw-a", 4),
            "a new term must be written"
        );
        obj.data["spec"]["endpoints"][0]["mac"] = json!("02:00:00:00:00:02");
        assert!(!s.satisfied_by(&obj, "gw-a", 3), "drift must be seen");
    }

    #[test]
    fn names_follow_the_reference() {
        assert_eq!(endpoint_name(0, 1), "vpc-gateway");
        assert_eq!(endpoint_name(0, 3), "vpc-gateway-0");
        assert_eq!(endpoint_name(2, 3), "vpc-gateway-2");
        for n in [
            "vpc-gateway",
            "vpc-gateway-0",
            "vpc-gateway-2",
            "vpc-gateway-17",
        ] {
            assert!(is_gateway_name(n), "{n}");
        }
        for n in [
            "vpc-gateway-",
            "vpc-gateway-a",
            "vpc-gatewayx",
            "onprem",
            "vpc-gateway-1-b",
        ] {
            assert!(!is_gateway_name(n), "{n}");
        }
    }

    #[test]
    fn foreign_and_earlier_gateway_entries_are_stale_unrelated_ones_stay() {
        let s = spec();
        let mut found = s.endpoints();
        let go = json!({"name": "vpc-gateway", "tunnelEndpoint": "10.250.8.8", "cidr": "10.250.0.0/16", "mac": "b2:00:00:00:08:08"});
        let dup = json!({"name": "legacy", "tunnelEndpoint": "10.250.8.8", "cidr": "10.251.0.0/16", "mac": "b2:00:00:00:08:08"});
        let other = json!({"name": "onprem", "tunnelEndpoint": "192.0.2.1", "cidr": "10.9.0.0/16", "mac": "02:00:00:00:00:01"});
        found.insert(0, go.clone());
        found.push(dup.clone());
        found.push(other.clone());
        assert_eq!(s.stale(&found), vec![&go, &dup]);
        let mut want = vec![other];
        want.extend(s.endpoints());
        assert_eq!(s.merged_endpoints(&found), want);
        // Drift on one of our names is corrected in place by the apply, not removed.
        let mut drift = s.endpoints();
        drift[0]["mac"] = json!("02:00:00:00:00:09");
        assert!(s.stale(&drift).is_empty());
    }

    #[test]
    fn status_only_versions_do_not_wake() {
        let mut obj = DynamicObject::new(NAME, &api_resource());
        obj.metadata.uid = Some("u1".into());
        obj.metadata.generation = Some(1);
        let mut seen = SpecKey::default();
        assert!(seen.update(&obj));
        obj.metadata.resource_version = Some("7".into());
        obj.data["status"] = json!({"endpointCount": 1});
        assert!(!seen.update(&obj), "a status write");
        obj.metadata.annotations = Some([(TERM_ANNOTATION.to_string(), "9".to_string())].into());
        assert!(seen.update(&obj), "an annotation (the fence) changed");
        obj.metadata.generation = Some(2);
        assert!(seen.update(&obj), "the spec changed");
        obj.metadata.uid = Some("u2".into());
        assert!(seen.update(&obj), "recreated");
    }
}
