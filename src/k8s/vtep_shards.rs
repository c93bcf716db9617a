//! Per-AZ mode's CiliumVTEPConfig: one endpoint per VPC subnet, whose `tunnelEndpoint` is
//! the leader of the subnet's shard, so a zone's traffic returns through the gateway it
//! left by. Every shard leader writes only its own entries (`vpc-gateway-az-<shard>-<i>`)
//! and its own fence annotations (`hybrid-gateway.io/term-<az>`, `…/leader-<az>`; the
//! default shard uses the plain ones, as active/standby does, so a mode switch keeps its
//! term).
//!
//! Each write is a read-modify-write: read the object, check this shard's fence, replace
//! this shard's entries in the list read (others' entries kept as read), and send the whole
//! list in one merge patch carrying the resourceVersion read. A concurrent write of another
//! shard makes it a 409, and the pass reads again (at most [`CONFLICT_ATTEMPTS`] times,
//! then the reconcile backoff). Why not server-side apply with one field manager per
//! shard, which the CRD's list-map (key `name`) would allow: an apply removes only entries
//! its own manager owned, so a subnet whose table moved from shard a to shard b would keep
//! a's entry next to b's (a duplicate CIDR, which Cilium rejects) until a's leader applied
//! again — never, if a's gateway is gone — and the default shard could not remove the
//! reference gateway's or active/standby's entries either. The read-modify-write removes
//! them in the same write that adds the replacement, like the active/standby takeover in
//! [`super::vtep_config`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::vtep_config::{
    self, endpoints_of, Blocked, VtepConfigError, FIELD_MANAGER, LEADER_ANNOTATION, NAME,
    TERM_ANNOTATION,
};
use super::vtep_shape::{self, Served, Shape};
use super::CallError;
use crate::aws::shards::{Layout, Shard};
use crate::backoff::Backoff;
use crate::datapath::Mac;
use crate::election::{ElectionHandle, Term};
use crate::reconcile::{self, Outcome, Target, Wakeups};

/// Cilium's VTEP map holds 8 endpoints (both schemas: `maxItems: 8`).
pub const MAX_ENDPOINTS: usize = 8;
/// A 409 means another shard wrote between our read and our write: read again at once.
const CONFLICT_ATTEMPTS: u32 = 3;
const RESYNC: Duration = Duration::from_secs(30);
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
const ENTRY_PREFIX: &str = "vpc-gateway-az-";

/// `hybrid-gateway.io/term` for the default shard, `hybrid-gateway.io/term-<az>` else.
pub fn term_annotation(shard: &Shard) -> String {
    match shard {
        Shard::Default => TERM_ANNOTATION.to_string(),
        Shard::Zone(az) => format!("{TERM_ANNOTATION}-{az}"),
    }
}

/// `hybrid-gateway.io/leader` for the default shard, `hybrid-gateway.io/leader-<az>` else.
pub fn leader_annotation(shard: &Shard) -> String {
    match shard {
        Shard::Default => LEADER_ANNOTATION.to_string(),
        Shard::Zone(az) => format!("{LEADER_ANNOTATION}-{az}"),
    }
}

/// The name of entry `i` of `shard`.
pub fn entry_name(shard: &Shard, i: usize) -> String {
    format!("{ENTRY_PREFIX}{}-{i}", shard.name())
}

/// The shard an entry name says it belongs to (`vpc-gateway-az-<shard>-<digits>`).
pub(crate) fn shard_of_entry(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(ENTRY_PREFIX)?;
    let (shard, i) = rest.rsplit_once('-')?;
    (!shard.is_empty() && !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())).then_some(shard)
}

/// What one shard's leader writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardVtep {
    pub shard: Shard,
    pub tunnel_endpoint: Ipv4Addr,
    pub mac: Mac,
    /// `gateway.vpc_cidrs`: the default shard removes active/standby's entries for them.
    pub vpc_cidrs: Vec<Ipv4Net>,
    pub node_selector: BTreeMap<String, String>,
    pub shape: Shape,
}

impl ShardVtep {
    /// This shard's entries for `layout` (its subnets, in address order).
    fn desired(&self, layout: &Layout) -> Vec<Value> {
        layout
            .subnets
            .iter()
            .filter(|(_, s)| *s == self.shard)
            .enumerate()
            .map(|(i, (cidr, _))| {
                json!({ "name": entry_name(&self.shard, i), "tunnelEndpoint": self.tunnel_endpoint.to_string(), "cidr": cidr.to_string(), "mac": self.mac.to_string() })
            })
            .collect()
    }

    /// Whether this shard's write removes `e`: its own entries (replaced), any entry for a
    /// CIDR it routes (a subnet that moved shards: a duplicate CIDR), and — default shard
    /// only — active/standby's or the reference gateway's entries, and entries of shards
    /// that have no subnet any more.
    fn replaces(&self, e: &Value, desired: &[Value], layout: &Layout) -> bool {
        let name = e.get("name").and_then(Value::as_str).unwrap_or("");
        let entry_shard = shard_of_entry(name);
        if entry_shard == Some(self.shard.name()) {
            return true;
        }
        let cidr = e
            .get("cidr")
            .and_then(Value::as_str)
            .and_then(|c| c.parse::<Ipv4Net>().ok());
        if let Some(c) = cidr {
            let ours = desired.iter().any(|d| {
                d["cidr"]
                    .as_str()
                    .and_then(|x| x.parse::<Ipv4Net>().ok())
                    .is_some_and(|x| x.trunc() == c.trunc())
            });
            if ours {
                return true;
            }
        }
        if self.shard != Shard::Default {
            return false;
        }
        if let Some(s) = entry_shard {
            return !layout.subnets.iter().any(|(_, sh)| sh.name() == s);
        }
        vtep_config::is_gateway_name(name)
            || cidr.is_some_and(|c| self.vpc_cidrs.iter().any(|v| v.trunc() == c.trunc()))
    }

    /// The whole list to write over `actual`: every entry this shard does not replace, in
    /// its order, then this shard's.
    fn merged(&self, actual: &[Value], layout: &Layout) -> Vec<Value> {
        let desired = self.desired(layout);
        actual
            .iter()
            .filter(|e| !self.replaces(e, &desired, layout))
            .cloned()
            .chain(desired.iter().cloned())
            .collect()
    }

    /// One mask for every entry: the subnets' common prefix length.
    fn cidr_mask(layout: &Layout) -> Option<String> {
        layout.subnets.first().map(|(c, _)| c.netmask().to_string())
    }

    fn spec_fields(&self, endpoints: Vec<Value>, layout: &Layout) -> Value {
        let mut spec = json!({ self.shape.list_field(): endpoints });
        if self.shape == (Shape::V2 { cidr_mask: true }) {
            if let Some(m) = Self::cidr_mask(layout) {
                spec["cidrMask"] = json!(m);
            }
        }
        if self.shape == Shape::V2Alpha1 && !self.node_selector.is_empty() {
            spec["nodeSelector"] = json!({ "matchLabels": self.node_selector });
        }
        spec
    }

    /// Whether `obj` already says what this shard would write: its fence annotations, the
    /// mask and selector, and a list the merge would leave as it is (order aside).
    fn satisfied_by(
        &self,
        obj: &DynamicObject,
        layout: &Layout,
        identity: &str,
        term: u32,
    ) -> bool {
        let a = obj.metadata.annotations.clone().unwrap_or_default();
        if a.get(&term_annotation(&self.shard)) != Some(&term.to_string())
            || a.get(&leader_annotation(&self.shard)).map(String::as_str) != Some(identity)
        {
            return false;
        }
        let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
        let want = self.spec_fields(Vec::new(), layout);
        for key in ["cidrMask", "nodeSelector"] {
            if want.get(key).is_some() && spec.get(key) != want.get(key) {
                return false;
            }
        }
        let actual = endpoints_of(obj, self.shape);
        let mut merged = self.merged(&actual, layout);
        let mut now = actual;
        let key = |v: &Value| v.to_string();
        merged.sort_by_key(key);
        now.sort_by_key(key);
        merged == now
    }
}

/// This shard's fence: may its leader in `term` write over `obj`? Only over a lower term
/// of this shard, or its own write in the same term (as [`vtep_config::fence`] per shard).
pub fn fence(obj: &DynamicObject, shard: &Shard, identity: &str, term: u32) -> Result<(), u32> {
    let a = obj.metadata.annotations.clone().unwrap_or_default();
    let Some(found) = a
        .get(&term_annotation(shard))
        .and_then(|t| t.parse::<u32>().ok())
    else {
        return Ok(());
    };
    let by = a.get(&leader_annotation(shard)).map(String::as_str);
    if found < term || (found == term && by == Some(identity)) {
        Ok(())
    } else {
        Err(found)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardVtepError {
    #[error("CiliumVTEPConfig {NAME}: shard {shard} carries term {found}, not below ours ({ours}): raising our term above it")]
    Fenced { shard: Shard, found: u32, ours: u32 },
    #[error("not enough leadership left to write safely")]
    NoTimeLeft,
    #[error("CiliumVTEPConfig {NAME}: another shard kept writing between our read and our write ({CONFLICT_ATTEMPTS} attempts)")]
    Contended,
    #[error("CiliumVTEPConfig {NAME}: {0}")]
    Api(#[source] CallError),
    #[error("CiliumVTEPConfig {NAME}: building the object: {0}")]
    Body(#[source] serde_json::Error),
}

fn is_conflict(e: &CallError) -> bool {
    matches!(e, CallError::Api(kube::Error::Api(r)) if r.code == 409)
}

/// Reads, checks this shard's fence, and writes this shard's entries if anything differs,
/// as leader of `term`. Returns whether it wrote.
pub async fn ensure(
    api: &Api<DynamicObject>,
    spec: &ShardVtep,
    layout: &Layout,
    identity: &str,
    term: &Term,
    timeout: Duration,
) -> Result<bool, ShardVtepError> {
    let n = term.number();
    for _ in 0..CONFLICT_ATTEMPTS {
        let current = super::timed(timeout, api.get_opt(NAME))
            .await
            .map_err(ShardVtepError::Api)?;
        if let Some(obj) = &current {
            if let Err(found) = fence(obj, &spec.shard, identity, n) {
                term.raise_term_above(found);
                return Err(ShardVtepError::Fenced {
                    shard: spec.shard.clone(),
                    found,
                    ours: n,
                });
            }
            if spec.satisfied_by(obj, layout, identity, n) {
                return Ok(false);
            }
        }
        // The moment of the write: this term still leads, with more time left than the
        // write may take.
        let left = term.remaining();
        if left <= timeout {
            return Err(ShardVtepError::NoTimeLeft);
        }
        let limit = timeout.min(left);
        let annotations = json!({
            term_annotation(&spec.shard): n.to_string(),
            leader_annotation(&spec.shard): identity,
        });
        let written = match current {
            Some(obj) => {
                let patch = json!({
                    "metadata": {
                        "resourceVersion": obj.metadata.resource_version,
                        "annotations": annotations,
                    },
                    "spec": spec.spec_fields(spec.merged(&endpoints_of(&obj, spec.shape), layout), layout),
                });
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..PatchParams::default()
                };
                super::timed(limit, api.patch(NAME, &params, &Patch::Merge(&patch)))
                    .await
                    .map(|_| ())
            }
            None => {
                let body = json!({
                    "apiVersion": spec.shape.api_version(),
                    "kind": vtep_shape::KIND,
                    "metadata": { "name": NAME, "annotations": annotations },
                    "spec": spec.spec_fields(spec.desired(layout), layout),
                });
                let obj: DynamicObject =
                    serde_json::from_value(body).map_err(ShardVtepError::Body)?;
                let params = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..PostParams::default()
                };
                super::timed(limit, api.create(&params, &obj))
                    .await
                    .map(|_| ())
            }
        };
        match written {
            Ok(()) => return Ok(true),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(ShardVtepError::Api(e)),
        }
    }
    Err(ShardVtepError::Contended)
}

/// What decides a shard's CR writing: the layout, and whether the VPC can be expressed
/// per subnet (else the default shard writes active/standby's CR alone).
#[derive(Debug, Clone)]
pub struct CrPlan {
    pub layout: Arc<Layout>,
    /// `Err(why)`: not expressible per subnet.
    pub per_subnet: Result<(), String>,
}

/// Leader-only, per shard: keeps this shard's entries right while `election` (the shard's)
/// leads — at once on taking office, on every change of the object, the layout or the
/// served shape, and every resync. In the fallback (not expressible per subnet) the
/// default shard writes active/standby's CR ([`vtep_config::ensure`]) and zone shards
/// write nothing.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: kube::Client,
    spec: ShardVtep,
    identity: String,
    election: ElectionHandle,
    timeout: Duration,
    served: watch::Receiver<Served>,
    plan: watch::Receiver<Option<CrPlan>>,
    blocked: watch::Sender<Option<Blocked>>,
    cancel: CancellationToken,
) {
    let start = |term: Term| {
        let mut served = served.clone();
        let now = served.borrow_and_update().clone();
        let shape_changed = async move {
            let _ = served.changed().await;
        };
        let api = now
            .shape()
            .map(|s| Api::<DynamicObject>::all_with(client.clone(), &s.api_resource()));
        let changes = match &api {
            Some(api) => vtep_config::changes(api.clone()).boxed(),
            None => futures::stream::pending().boxed(),
        };
        let writer = ShardWriter {
            api,
            spec: ShardVtep {
                shape: now.shape().unwrap_or(spec.shape),
                ..spec.clone()
            },
            identity: identity.clone(),
            term,
            timeout,
            plan: plan.clone(),
            fallback_said: None,
            served: now.clone(),
            blocked: blocked.clone(),
        };
        let wakeups = Wakeups::new()
            .on_stream(changes.take_until(shape_changed))
            .on_change(plan.clone());
        (writer, wakeups)
    };
    reconcile::while_leading(&election, start, BACKOFF, &cancel).await;
}

struct ShardWriter {
    api: Option<Api<DynamicObject>>,
    spec: ShardVtep,
    identity: String,
    term: Term,
    timeout: Duration,
    plan: watch::Receiver<Option<CrPlan>>,
    /// The fallback reason last logged, so it is said once, not every pass.
    fallback_said: Option<String>,
    /// The served shape as this writer started with it (the reason when none is served).
    served: Served,
    /// Why the last pass could not write; `None` once one could (into readiness).
    blocked: watch::Sender<Option<Blocked>>,
}

#[derive(Debug, thiserror::Error)]
enum WriterError {
    #[error("{0}")]
    Shard(#[source] ShardVtepError),
    #[error("{0}")]
    Whole(#[source] vtep_config::VtepConfigError),
    #[error("CiliumVTEPConfig not written: no shape we write is served")]
    NotServed,
}

impl Target for ShardWriter {
    type Error = WriterError;

    async fn pass(&mut self) -> Result<Outcome, WriterError> {
        let Some(plan) = self.plan.borrow_and_update().clone() else {
            return Ok(Outcome::idle());
        };
        if self.served == Served::Unknown {
            // Not looked up yet: the answer ends this writer and starts the next.
            return Ok(Outcome::idle());
        }
        let Some(api) = self.api.clone() else {
            self.blocked
                .send_replace(Some(Blocked::NotServed(self.served.describe())));
            return Err(WriterError::NotServed);
        };
        let n = self.term.number();
        let wrote = self.write(&api, &plan).await;
        let wrote = match wrote {
            Ok(w) => {
                self.blocked.send_replace(None);
                w
            }
            Err(e) => {
                let why = match &e {
                    WriterError::Shard(f @ ShardVtepError::Fenced { .. }) => {
                        Some(Blocked::Fenced(f.to_string()))
                    }
                    WriterError::Whole(f @ VtepConfigError::Fenced { .. }) => {
                        Some(Blocked::Fenced(f.to_string()))
                    }
                    WriterError::Whole(t @ VtepConfigError::TooManyEndpoints { .. }) => {
                        Some(Blocked::TooManyEndpoints(t.to_string()))
                    }
                    _ => None,
                };
                if let Some(why) = why {
                    self.blocked.send_replace(Some(why));
                }
                return Err(e);
            }
        };
        if wrote {
            tracing::info!(shard = %self.spec.shard, term = n, endpoint = %self.spec.tunnel_endpoint, "CiliumVTEPConfig {NAME}: shard entries applied");
        }
        Ok(Outcome::resync(u64::from(wrote), RESYNC))
    }

    fn failed(&mut self, e: &WriterError) {
        tracing::warn!(shard = %self.spec.shard, term = self.term.number(), "{e}; retrying");
    }
}

impl ShardWriter {
    /// This shard's entries (or, in the fallback, the default shard's whole CR) as leader
    /// of this term; whether it wrote.
    async fn write(
        &mut self,
        api: &Api<DynamicObject>,
        plan: &CrPlan,
    ) -> Result<bool, WriterError> {
        Ok(match &plan.per_subnet {
            Ok(()) => {
                self.fallback_said = None;
                ensure(
                    api,
                    &self.spec,
                    &plan.layout,
                    &self.identity,
                    &self.term,
                    self.timeout,
                )
                .await
                .map_err(WriterError::Shard)?
            }
            Err(why) => {
                if self.fallback_said.as_ref() != Some(why) {
                    tracing::warn!(shard = %self.spec.shard, "per-AZ CiliumVTEPConfig not possible ({why}): the default shard's leader writes one endpoint per VPC CIDR, so hybrid → VPC traffic of every zone returns through it (asymmetric paths)");
                    self.fallback_said = Some(why.clone());
                }
                if self.spec.shard != Shard::Default {
                    return Ok(false);
                }
                let whole = vtep_config::VtepSpec {
                    node_selector: self.spec.node_selector.clone(),
                    shape: self.spec.shape,
                    ..vtep_config::VtepSpec::new(
                        self.spec.tunnel_endpoint,
                        self.spec.mac,
                        self.spec.vpc_cidrs.clone(),
                    )
                };
                vtep_config::ensure(api, &whole, &self.identity, &self.term, self.timeout)
                    .await
                    .map_err(WriterError::Whole)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        let z = |a: &str| Shard::Zone(a.into());
        Layout {
            tables: BTreeMap::new(),
            subnets: vec![
                ("10.250.1.0/24".parse().unwrap(), z("us-east-1a")),
                ("10.250.2.0/24".parse().unwrap(), Shard::Default),
                ("10.250.11.0/24".parse().unwrap(), z("us-east-1b")),
            ],
            missing: vec![],
        }
    }

    fn spec(shard: Shard, ip: &str) -> ShardVtep {
        ShardVtep {
            shard,
            tunnel_endpoint: ip.parse().unwrap(),
            mac: Mac::for_gateway(ip.parse().unwrap()),
            vpc_cidrs: vec!["10.250.0.0/16".parse().unwrap()],
            node_selector: BTreeMap::new(),
            shape: Shape::V2 { cidr_mask: true },
        }
    }

    fn obj(endpoints: Vec<Value>, annotations: &[(&str, &str)]) -> DynamicObject {
        let mut o = DynamicObject::new(NAME, &vtep_config::api_resource())
            .data(json!({"spec": {"endpoints": endpoints, "cidrMask": "255.255.255.0"}}));
        o.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        o
    }

    #[test]
    fn each_shard_replaces_only_its_own_entries() {
        let l = layout();
        let a = spec(Shard::Zone("us-east-1a".into()), "10.250.1.10");
        let b = spec(Shard::Zone("us-east-1b".into()), "10.250.11.10");
        let d = spec(Shard::Default, "10.250.11.10");
        let other = json!({"name": "onprem", "tunnelEndpoint": "192.0.2.1", "cidr": "10.9.0.0/24", "mac": "02:00:00:00:00:01"});
        let legacy = json!({"name": "vpc-gateway", "tunnelEndpoint": "10.250.8.8", "cidr": "10.250.0.0/16", "mac": "02:00:00:00:00:02"});
        let mut list = vec![other.clone(), legacy.clone()];
        list = a.merged(&list, &l);
        assert_eq!(
            list.len(),
            3,
            "a adds its one subnet, removes nothing else: {list:?}"
        );
        assert_eq!(list[2]["name"], "vpc-gateway-az-us-east-1a-0");
        assert_eq!(list[2]["tunnelEndpoint"], "10.250.1.10");
        list = b.merged(&list, &l);
        list = d.merged(&list, &l);
        let names: Vec<&str> = list.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "onprem",
                "vpc-gateway-az-us-east-1a-0",
                "vpc-gateway-az-us-east-1b-0",
                "vpc-gateway-az-default-0"
            ],
            "the default shard removed active/standby's entry"
        );
        // a's new leader (b's gateway) rewrites a's entry in place; b's entry untouched.
        let a_on_b = spec(Shard::Zone("us-east-1a".into()), "10.250.11.10");
        let after = a_on_b.merged(&list, &l);
        assert_eq!(after.len(), 4);
        assert!(after.contains(&list[2]), "b's entry kept as read");
        assert!(after
            .iter()
            .any(|e| e["name"] == "vpc-gateway-az-us-east-1a-0"
                && e["tunnelEndpoint"] == "10.250.11.10"));
    }

    #[test]
    fn a_subnet_that_moved_shards_leaves_no_duplicate_cidr() {
        let mut l = layout();
        let b = spec(Shard::Zone("us-east-1b".into()), "10.250.11.10");
        let a = spec(Shard::Zone("us-east-1a".into()), "10.250.1.10");
        let list = a.merged(&[], &l);
        // 10.250.1.0/24's table is now associated in us-east-1b's shard.
        l.subnets[0].1 = Shard::Zone("us-east-1b".into());
        let list = b.merged(&list, &l);
        let cidrs: Vec<&str> = list.iter().map(|e| e["cidr"].as_str().unwrap()).collect();
        assert_eq!(cidrs, ["10.250.1.0/24", "10.250.11.0/24"]);
        assert!(list.iter().all(|e| e["tunnelEndpoint"] == "10.250.11.10"));
        // The default shard removes entries of a shard with no subnet left.
        let d = spec(Shard::Default, "10.250.2.10");
        let stale = vec![
            json!({"name": "vpc-gateway-az-us-east-1c-0", "tunnelEndpoint": "10.250.21.10", "cidr": "10.250.21.0/24", "mac": "02:00:00:00:00:03"}),
        ];
        assert_eq!(
            d.merged(&stale, &l).len(),
            1,
            "only the default shard's own entry"
        );
        assert_eq!(
            a.merged(&stale, &l).len(),
            1,
            "a zone shard leaves it alone"
        );
    }

    #[test]
    fn satisfaction_and_fence_are_per_shard() {
        let l = layout();
        let a = spec(Shard::Zone("us-east-1a".into()), "10.250.1.10");
        let list = a.merged(&[], &l);
        let o = obj(
            list,
            &[
                ("hybrid-gateway.io/term-us-east-1a", "4"),
                ("hybrid-gateway.io/leader-us-east-1a", "gw-a"),
                ("hybrid-gateway.io/term", "9"),
            ],
        );
        assert!(a.satisfied_by(&o, &l, "gw-a", 4));
        assert!(!a.satisfied_by(&o, &l, "gw-a", 5), "a new term is written");
        assert_eq!(fence(&o, &a.shard, "gw-a", 4), Ok(()));
        assert_eq!(
            fence(&o, &a.shard, "gw-b", 4),
            Err(4),
            "same term, other gateway"
        );
        assert_eq!(fence(&o, &a.shard, "gw-b", 5), Ok(()));
        assert_eq!(fence(&o, &Shard::Default, "gw-b", 9), Err(9));
        assert_eq!(
            fence(&o, &Shard::Zone("us-east-1b".into()), "gw-b", 1),
            Ok(())
        );
        let b = spec(Shard::Zone("us-east-1b".into()), "10.250.11.10");
        assert!(!b.satisfied_by(&o, &l, "gw-b", 1), "b's entry is missing");
    }

    #[test]
    fn entry_names_parse_back_to_their_shard() {
        assert_eq!(
            shard_of_entry("vpc-gateway-az-us-east-1a-0"),
            Some("us-east-1a")
        );
        assert_eq!(
            shard_of_entry("vpc-gateway-az-us-west-2-lax-1a-12"),
            Some("us-west-2-lax-1a")
        );
        assert_eq!(shard_of_entry("vpc-gateway-az-default-3"), Some("default"));
        assert_eq!(shard_of_entry("vpc-gateway-az-us-east-1a"), None);
        assert_eq!(shard_of_entry("vpc-gateway-0"), None);
        assert_eq!(shard_of_entry("vpc-gateway-az--0"), None);
        assert!(vtep_config::is_gateway_name("vpc-gateway-az-us-east-1a-0"));
    }
}
