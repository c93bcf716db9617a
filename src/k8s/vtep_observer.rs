//! Which gateways the CiliumVTEPConfig names, as every gateway (leader or not) reads it.
//!
//! The writer only runs on the leader, so a CR stuck on a gateway that no longer leads (or
//! no longer exists) is invisible to the writer's own metrics. Every gateway therefore
//! watches the one object and exports whether it names *this* gateway; next to
//! `leader_is_active` that tells "the CR points at a non-leader" (a gateway named but not
//! leading) and "the CR points at nobody we run" (no live gateway named) apart, which is
//! what the alert rules need.
//!
//! In per-AZ mode each shard's leader writes only its shard's entries, so the observer
//! also splits what the object names by shard ([`by_shard`]): each shard's entries must
//! name that shard's leader.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::vtep_config::{endpoints_of, is_gateway_name, NAME};
use super::vtep_shape::{Served, Shape};
use super::vtep_shards::shard_of_entry;

/// The object as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Observed {
    /// Not listed yet (or no shape we read is served).
    #[default]
    Unknown,
    /// Listed, and there is no such object.
    Missing,
    /// The distinct `tunnelEndpoint`s of its endpoints, in order of first appearance.
    Names(Vec<Ipv4Addr>),
}

impl Observed {
    /// Whether the object sends traffic to `me`; `None` until known.
    pub fn names(&self, me: Ipv4Addr) -> Option<bool> {
        match self {
            Observed::Unknown => None,
            Observed::Missing => Some(false),
            Observed::Names(v) => Some(v.contains(&me)),
        }
    }

    /// One line for `status`.
    pub fn describe(&self) -> String {
        match self {
            Observed::Unknown => "not read yet".into(),
            Observed::Missing => format!("{NAME} does not exist"),
            Observed::Names(v) if v.is_empty() => format!("{NAME} has no endpoints"),
            Observed::Names(v) => {
                let v: Vec<String> = v.iter().map(ToString::to_string).collect();
                format!("tunnelEndpoint {}", v.join(", "))
            }
        }
    }
}

/// The tunnel endpoints an object names (malformed entries are skipped: Cilium skips them
/// too).
pub fn tunnel_endpoints(obj: &DynamicObject, shape: Shape) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for e in endpoints_of(obj, shape) {
        let ip = e
            .get("tunnelEndpoint")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv4Addr>().ok());
        if let Some(ip) = ip.filter(|ip| !out.contains(ip)) {
            out.push(ip);
        }
    }
    out
}

/// Per shard (`default` or the AZ), the distinct `tunnelEndpoint`s of the gateway entries
/// of that shard: per-AZ mode's `vpc-gateway-az-<shard>-<i>`, and active/standby's names
/// (written by the default shard's leader in per-AZ mode's fallback) under `default`.
/// Other writers' entries (not a gateway's) are left out.
pub fn by_shard(obj: &DynamicObject, shape: Shape) -> BTreeMap<String, Vec<Ipv4Addr>> {
    let mut out: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for e in endpoints_of(obj, shape) {
        let name = e.get("name").and_then(Value::as_str).unwrap_or("");
        let shard = match shard_of_entry(name) {
            Some(s) => s,
            None if is_gateway_name(name) => "default",
            None => continue,
        };
        let ip = e
            .get("tunnelEndpoint")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv4Addr>().ok());
        let names = out.entry(shard.to_string()).or_default();
        if let Some(ip) = ip.filter(|ip| !names.contains(ip)) {
            names.push(ip);
        }
    }
    out
}

/// What each shard's entries name, for per-AZ mode: `None` while [`Observed::Unknown`];
/// empty when the object is missing.
pub type ByShard = Option<BTreeMap<String, Vec<Ipv4Addr>>>;

/// Follows the object in the served shape until `cancel`, publishing what it names. A
/// change of the served shape restarts the watch in the new one.
pub async fn run(
    client: kube::Client,
    served: watch::Receiver<Served>,
    out: watch::Sender<Observed>,
    cancel: CancellationToken,
) {
    run_by_shard(client, served, out, None, cancel).await
}

/// [`run`], also publishing what each shard's entries name into `shards` (per-AZ mode).
pub async fn run_by_shard(
    client: kube::Client,
    mut served: watch::Receiver<Served>,
    out: watch::Sender<Observed>,
    shards: Option<watch::Sender<ByShard>>,
    cancel: CancellationToken,
) {
    let sinks = Sinks { out, shards };
    loop {
        let shape = served.borrow_and_update().shape();
        sinks.unknown();
        let follow = async {
            match shape {
                Some(shape) => follow(client.clone(), shape, &sinks).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = served.changed() => if r.is_err() { return },
            () = follow => return,
        }
    }
}

/// Where the observer publishes.
struct Sinks {
    out: watch::Sender<Observed>,
    shards: Option<watch::Sender<ByShard>>,
}

impl Sinks {
    fn unknown(&self) {
        self.out.send_replace(Observed::Unknown);
        if let Some(s) = &self.shards {
            s.send_replace(None);
        }
    }

    fn missing(&self) {
        self.out.send_replace(Observed::Missing);
        if let Some(s) = &self.shards {
            s.send_replace(Some(BTreeMap::new()));
        }
    }

    fn seen(&self, obj: &DynamicObject, shape: Shape) {
        self.out
            .send_replace(Observed::Names(tunnel_endpoints(obj, shape)));
        if let Some(s) = &self.shards {
            s.send_replace(Some(by_shard(obj, shape)));
        }
    }
}

async fn follow(client: kube::Client, shape: Shape, out: &Sinks) {
    let api: Api<DynamicObject> = Api::all_with(client, &shape.api_resource());
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={NAME}"))
        .timeout(30);
    // During a (re)list: whether the object came back in it.
    let mut listed = false;
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(ev) = events.next().await {
        match ev {
            Ok(Event::Init) => listed = false,
            Ok(Event::InitApply(obj)) => {
                listed = true;
                out.seen(&obj, shape);
            }
            Ok(Event::InitDone) if !listed => out.missing(),
            Ok(Event::InitDone) => {}
            Ok(Event::Apply(obj)) => out.seen(&obj, shape),
            Ok(Event::Delete(_)) => out.missing(),
            // The last answer stands while the API is away (the backoff retries); the
            // Lease and node watches already say the API is unreachable.
            Err(e) => tracing::debug!("CiliumVTEPConfig observer: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_are_split_by_shard_and_other_writers_left_out() {
        let v2 = Shape::V2 { cidr_mask: true };
        let obj = DynamicObject::new(NAME, &v2.api_resource()).data(json!({"spec": {"endpoints": [
            {"name": "vpc-gateway-az-us-east-1a-0", "tunnelEndpoint": "10.0.0.1"},
            {"name": "vpc-gateway-az-us-east-1a-1", "tunnelEndpoint": "10.0.0.1"},
            {"name": "vpc-gateway-az-us-east-1b-0", "tunnelEndpoint": "10.0.0.2"},
            {"name": "vpc-gateway-az-default-0", "tunnelEndpoint": "10.0.0.3"},
            {"name": "vpc-gateway", "tunnelEndpoint": "10.0.0.4"},
            {"name": "onprem", "tunnelEndpoint": "10.0.0.9"},
        ]}}));
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let got = by_shard(&obj, v2);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got["us-east-1a"], vec![ip("10.0.0.1")]);
        assert_eq!(got["us-east-1b"], vec![ip("10.0.0.2")]);
        assert_eq!(got["default"], vec![ip("10.0.0.3"), ip("10.0.0.4")]);
    }

    #[test]
    fn endpoints_are_read_in_either_shape_once_each() {
        let v2 = Shape::V2 { cidr_mask: true };
        let obj = DynamicObject::new(NAME, &v2.api_resource()).data(json!({"spec": {"endpoints": [
            {"name": "vpc-gateway-0", "tunnelEndpoint": "10.0.0.1"},
            {"name": "vpc-gateway-1", "tunnelEndpoint": "10.0.0.1"},
            {"name": "onprem", "tunnelEndpoint": "10.0.0.9"},
            {"name": "broken", "tunnelEndpoint": "not-an-ip"},
        ]}}));
        let names = tunnel_endpoints(&obj, v2);
        assert_eq!(
            names,
            vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9)]
        );
        // The other shape's list is not read.
        assert!(tunnel_endpoints(&obj, Shape::V2Alpha1).is_empty());
        let alpha = DynamicObject::new(NAME, &Shape::V2Alpha1.api_resource()).data(
            json!({"spec": {"vtepEndpoints": [{"name": "vpc-gateway", "tunnelEndpoint": "10.0.0.2"}]}}),
        );
        assert_eq!(
            tunnel_endpoints(&alpha, Shape::V2Alpha1),
            vec![Ipv4Addr::new(10, 0, 0, 2)]
        );
    }

    #[test]
    fn names_is_unknown_until_read_and_false_when_missing() {
        let me = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(Observed::Unknown.names(me), None);
        assert_eq!(Observed::Missing.names(me), Some(false));
        assert_eq!(Observed::Names(vec![me]).names(me), Some(true));
        assert_eq!(
            Observed::Names(vec![Ipv4Addr::new(10, 0, 0, 2)]).names(me),
            Some(false)
        );
    }
}
