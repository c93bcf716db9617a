//! The `CiliumVTEPConfig` that tells hybrid nodes to send VPC-bound traffic through the
//! leader. Leader-only: applied on taking office, re-applied within a second of anyone
//! changing or deleting it, and never written once leadership is gone.
//!
//! Written with server-side apply under our own field manager, so the `status` Cilium
//! writes and fields other managers own are left alone. A term annotation fences out a
//! deposed leader: nobody writes over a term not below its own, and the write carries the
//! resourceVersion it checked. A legitimate leader that finds a term at or above its own
//! (its store was recreated or switched) raises the store's term above it first — see
//! [`fence`].

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
/// After a failed write: 100-200 ms, doubling, at most 5 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cilium.io",
        "v2",
        "CiliumVTEPConfig",
    ))
}

/// The endpoints this gateway advertises: one per VPC CIDR, the first named `vpc-gateway`
/// as the reference gateway names it, the others `vpc-gateway-2`, `-3`… in config order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VtepSpec {
    pub tunnel_endpoint: Ipv4Addr,
    pub mac: Mac,
    pub vpc_cidrs: Vec<Ipv4Net>,
}

impl VtepSpec {
    fn endpoints(&self) -> Vec<Value> {
        self.vpc_cidrs
            .iter()
            .enumerate()
            .map(|(i, cidr)| {
                let name = if i == 0 { "vpc-gateway".to_string() } else { format!("vpc-gateway-{}", i + 1) };
                json!({ "name": name, "tunnelEndpoint": self.tunnel_endpoint.to_string(), "cidr": cidr.to_string(), "mac": self.mac.to_string() })
            })
            .collect()
    }

    /// Cilium applies one mask to every VTEP CIDR (config validation makes them share one
    /// prefix length).
    fn cidr_mask(&self) -> String {
        self.vpc_cidrs
            .first()
            .map_or_else(|| "255.255.255.0".to_string(), |c| c.netmask().to_string())
    }

    /// The server-side-apply body: only the fields we own.
    pub fn apply_body(&self, identity: &str, term: u32) -> Value {
        json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumVTEPConfig",
            "metadata": {
                "name": NAME,
                "annotations": { TERM_ANNOTATION: term.to_string(), LEADER_ANNOTATION: identity },
            },
            "spec": { "cidrMask": self.cidr_mask(), "endpoints": self.endpoints() },
        })
    }

    /// Whether `obj` already says what we would write (our endpoints by name, the mask, the
    /// annotations). Endpoints owned by someone else are not ours to judge.
    pub fn satisfied_by(&self, obj: &DynamicObject, identity: &str, term: u32) -> bool {
        let annotations = obj.metadata.annotations.clone().unwrap_or_default();
        if annotations.get(TERM_ANNOTATION) != Some(&term.to_string())
            || annotations.get(LEADER_ANNOTATION).map(String::as_str) != Some(identity)
        {
            return false;
        }
        let spec = obj.data.get("spec");
        if spec.and_then(|s| s.get("cidrMask")).and_then(Value::as_str)
            != Some(self.cidr_mask().as_str())
        {
            return false;
        }
        let actual = spec
            .and_then(|s| s.get("endpoints"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        self.endpoints()
            .iter()
            .all(|want| actual.iter().any(|have| have == want))
    }
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
    }
    // The moment of the write: this term still leads, with more time left than the write
    // may take.
    let left = election.remaining();
    if left <= timeout {
        return Err(VtepConfigError::NoTimeLeft);
    }
    let mut body = spec.apply_body(identity, term);
    let limit = timeout.min(left);
    match current.and_then(|o| o.metadata.resource_version) {
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

/// Leader-only: whenever this process leads, keeps the CiliumVTEPConfig right — at once
/// on taking office, within a second of anyone changing or deleting it, and every resync —
/// until `cancel`.
pub async fn run(
    client: kube::Client,
    spec: VtepSpec,
    identity: String,
    election: ElectionHandle,
    timeout: Duration,
    fenced: watch::Sender<Option<String>>,
    cancel: CancellationToken,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &api_resource());
    let start = |term: Term| {
        let writer = Writer {
            api: api.clone(),
            spec: spec.clone(),
            identity: identity.clone(),
            term,
            timeout,
            fenced: fenced.clone(),
        };
        (writer, Wakeups::new().on_stream(changes(api.clone())))
    };
    reconcile::while_leading(&election, start, BACKOFF, &cancel).await;
}

/// A wake-up for every change of the object; our own writes echo back here too, and the
/// next pass finds them satisfied.
fn changes(api: Api<DynamicObject>) -> impl futures::Stream<Item = ()> + Send + 'static {
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={NAME}"))
        .timeout(30);
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(|ev| async move {
            match ev {
                Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => Some(()),
                Ok(_) => None,
                Err(e) => {
                    tracing::debug!("CiliumVTEPConfig watch: {e}");
                    None
                }
            }
        })
}

/// The CiliumVTEPConfig writer in one term of office.
struct Writer {
    api: Api<DynamicObject>,
    spec: VtepSpec,
    identity: String,
    term: Term,
    timeout: Duration,
    /// Why the last pass was fenced; `None` once one was not.
    fenced: watch::Sender<Option<String>>,
}

impl Target for Writer {
    type Error = VtepConfigError;

    async fn pass(&mut self) -> Result<Outcome, VtepConfigError> {
        let term = self.term.number();
        match ensure(
            &self.api,
            &self.spec,
            &self.identity,
            &self.term,
            self.timeout,
        )
        .await
        {
            Ok(wrote) => {
                if wrote {
                    tracing::info!(term, endpoint = %self.spec.tunnel_endpoint, mac = %self.spec.mac, "CiliumVTEPConfig {NAME} applied");
                }
                self.fenced.send_replace(None);
                Ok(Outcome::resync(u64::from(wrote), RESYNC))
            }
            // The election raises the term at once, which ends this term and starts the
            // next pass in the new one; if it cannot (deposed), it steps down. The retry
            // is the fallback.
            Err(e @ VtepConfigError::Fenced { .. }) => {
                tracing::warn!(term, "{e}");
                self.fenced.send_replace(Some(e.to_string()));
                Ok(Outcome::retry(0))
            }
            Err(e) => Err(e),
        }
    }

    fn failed(&mut self, e: &VtepConfigError) {
        tracing::warn!(term = self.term.number(), "{e}; retrying");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VtepSpec {
        VtepSpec {
            tunnel_endpoint: "10.250.3.111".parse().unwrap(),
            mac: Mac::for_gateway("10.250.3.111".parse().unwrap()),
            vpc_cidrs: vec![
                "10.250.0.0/16".parse().unwrap(),
                "10.251.0.0/16".parse().unwrap(),
            ],
        }
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
            json!({"name": "vpc-gateway", "tunnelEndpoint": "10.250.3.111", "cidr": "10.250.0.0/16", "mac": spec().mac.to_string()})
        );
        assert_eq!(e[1]["name"], "vpc-gateway-2");
        assert_eq!(e[1]["cidr"], "10.251.0.0/16");
        assert!(b.get("status").is_none(), "status is Cilium's");
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
}
