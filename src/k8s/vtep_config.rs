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

use crate::datapath::Mac;
use crate::election::ElectionHandle;

pub const NAME: &str = "hybrid-gateway";
pub const FIELD_MANAGER: &str = "hybrid-gateway";
pub const TERM_ANNOTATION: &str = "hybrid-gateway.io/term";
pub const LEADER_ANNOTATION: &str = "hybrid-gateway.io/leader";
const RESYNC: Duration = Duration::from_secs(30);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

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
    Api(String),
}

/// Reads, checks the fence, and writes if anything differs. Returns whether it wrote.
///
/// Leadership — term included — is read again right before the write: a term read once
/// per office goes stale when leadership flaps (Standby → Leader in a new term) between
/// two writes. The write carries the resourceVersion it checked (or is a create that
/// fails if someone created the object meanwhile), so nothing written since the check
/// can be overwritten.
pub async fn ensure(
    api: &Api<DynamicObject>,
    spec: &VtepSpec,
    identity: &str,
    election: &ElectionHandle,
    timeout: Duration,
) -> Result<bool, VtepConfigError> {
    let Some((term, _)) = election.current() else {
        return Err(VtepConfigError::NoTimeLeft);
    };
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
    // The moment of the write: still leading, in the term the fence was checked for, with
    // more time left than the write may take.
    let left = match election.current() {
        Some((t, left)) if t == term && left > timeout => left,
        _ => return Err(VtepConfigError::NoTimeLeft),
    };
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
            let obj: DynamicObject = serde_json::from_value(body)
                .map_err(|e| VtepConfigError::Api(format!("building the object: {e}")))?;
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

/// Leader-only loop: whenever this process leads, keeps the CiliumVTEPConfig right, until
/// `cancel`. `fenced` carries why the last attempt was fenced, `None` once it was not.
pub async fn run(
    client: kube::Client,
    spec: VtepSpec,
    identity: String,
    mut election: ElectionHandle,
    timeout: Duration,
    fenced: watch::Sender<Option<String>>,
    cancel: CancellationToken,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &api_resource());
    loop {
        loop {
            if election.leadership.borrow_and_update().is_leader() {
                break;
            }
            fenced.send_replace(None);
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = election.leadership.changed() => if r.is_err() { return },
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = lead(&api, &spec, &identity, &mut election, timeout, &fenced) => {}
        }
    }
}

/// One office: apply now, then on every change of the object and every resync.
async fn lead(
    api: &Api<DynamicObject>,
    spec: &VtepSpec,
    identity: &str,
    election: &mut ElectionHandle,
    timeout: Duration,
    fenced: &watch::Sender<Option<String>>,
) {
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={NAME}"))
        .timeout(30);
    let mut changes = std::pin::pin!(watcher::watcher(api.clone(), config).default_backoff());
    let mut failures = 0u32;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            r = election.leadership.changed() => {
                if r.is_err() || !election.leadership.borrow().is_leader() {
                    return;
                }
                // A new term (raised to pass the fence): write at once.
                next = tokio::time::Instant::now();
            }
            ev = changes.next() => match ev {
                // Our own writes echo back here too; `ensure` sees them satisfied and stops.
                Some(Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)) => next = tokio::time::Instant::now(),
                Some(Ok(_)) => continue,
                Some(Err(e)) => tracing::debug!("CiliumVTEPConfig watch: {e}"),
                None => return,
            },
            _ = tokio::time::sleep_until(next) => {
                let result = ensure(api, spec, identity, election, timeout).await;
                let term = election.current().map(|(t, _)| t);
                match result {
                    Ok(wrote) => {
                        if wrote {
                            tracing::info!(term, endpoint = %spec.tunnel_endpoint, mac = %spec.mac, "CiliumVTEPConfig {NAME} applied");
                        }
                        fenced.send_replace(None);
                        failures = 0;
                        next = tokio::time::Instant::now() + RESYNC;
                        continue;
                    }
                    Err(ref e @ VtepConfigError::Fenced { .. }) => {
                        // The raise happens at the election's next renewal, which it makes
                        // at once; the new term wakes us above. This retry is the fallback.
                        tracing::warn!(term, "{e}");
                        fenced.send_replace(Some(e.to_string()));
                    }
                    Err(ref e) => tracing::warn!(term, "{e}; retrying"),
                }
                failures += 1;
                let wait = RETRY_MIN.saturating_mul(2u32.saturating_pow(failures.min(10))).min(RETRY_MAX).mul_f64(0.5 + fastrand::f64() / 2.0);
                next = tokio::time::Instant::now() + wait;
            }
        }
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
