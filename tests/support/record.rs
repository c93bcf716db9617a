//! What the recording proxies saw arrive at the peers, and the one safety invariant checked
//! on it: no mutation from gateway X arrives after another gateway's acquisition that
//! follows X's last acquisition. Pure data and a pure check, so the check itself is unit
//! tested (including records that violate it) apart from any process or network.
#![allow(dead_code)]

use std::time::Duration;

/// What a request did, as far as the invariant cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A write of the Kubernetes Lease; `holder` is the holderIdentity it sets (None for
    /// a release or a delete).
    LeaseWrite,
    /// A write of the DynamoDB lock item (PutItem/UpdateItem/DeleteItem).
    LockWrite,
    /// EC2 CreateRoute / ReplaceRoute / DeleteRoute.
    Route,
    /// A create/update/patch/delete of the CiliumVTEPConfig.
    Cr,
    /// Any other write (Events, ModifyNetworkInterfaceAttribute, the IMDS token, …).
    OtherWrite,
    /// A read (GET, Describe*, GetItem, watches).
    Read,
}

impl Kind {
    /// Mutations that are the leader's work: each must come from the current leader.
    pub fn is_effect(&self) -> bool {
        matches!(self, Kind::Route | Kind::Cr)
    }
}

/// One request as the proxy of gateway `gw` saw it.
#[derive(Debug, Clone)]
pub struct Event {
    /// When the request left the proxy towards the peer (after any injected delay), on
    /// the one clock every proxy of a test shares.
    pub at: Duration,
    /// The sender: the gateway whose proxy it came through.
    pub gw: String,
    pub kind: Kind,
    /// Election writes: the holder identity the write sets (None: release/delete).
    pub holder: Option<String>,
    /// The peer's answer (0: none, e.g. the connection broke).
    pub status: u16,
    /// Answered by the proxy's fault injection: it never reached the peer.
    pub faulted: bool,
    /// What it was, for failure messages: method, path or action, table, target.
    pub detail: String,
}

/// The gateway an election identity belongs to: identities are `<gateway>_<suffix>`.
pub fn gateway_of(identity: &str) -> &str {
    identity.rsplit_once('_').map_or(identity, |(g, _)| g)
}

/// Acquisitions: successful writes of the authority store (`LeaseWrite` in Lease-only
/// mode, `LockWrite` in combined mode) that make a holder who was not the previous one.
/// Returns (time, gateway).
pub fn acquisitions(events: &[Event], authority: &Kind) -> Vec<(Duration, String)> {
    let mut sorted: Vec<&Event> = events
        .iter()
        .filter(|e| &e.kind == authority && !e.faulted && (200..300).contains(&e.status))
        .collect();
    sorted.sort_by_key(|e| e.at);
    let mut previous: Option<String> = None;
    let mut out = Vec::new();
    for e in sorted {
        if let Some(h) = &e.holder {
            if previous.as_deref() != Some(h) {
                out.push((e.at, gateway_of(h).to_string()));
            }
        }
        previous = e.holder.clone();
    }
    out
}

/// Every effect that breaks the invariant, described. An effect counts when it reached
/// the peer (whatever the peer answered: a rejected write still arrived); one from a
/// gateway that never acquired counts too.
pub fn violations(events: &[Event], authority: &Kind) -> Vec<String> {
    violations_given(events, &acquisitions(events, authority))
}

/// [`violations`] against acquisitions worked out by the caller: a fleet in transition
/// (some gateways act by the Lease, others by the lock) merges each process's own.
pub fn violations_given(events: &[Event], acq: &[(Duration, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for e in events.iter().filter(|e| e.kind.is_effect() && !e.faulted) {
        let own_last = acq
            .iter()
            .filter(|(t, g)| g == &e.gw && *t <= e.at)
            .map(|(t, _)| *t)
            .max();
        let Some(own_last) = own_last else {
            out.push(format!(
                "{} sent {} at {:?} without ever acquiring",
                e.gw, e.detail, e.at
            ));
            continue;
        };
        if let Some((t, g)) = acq
            .iter()
            .find(|(t, g)| g != &e.gw && *t > own_last && *t < e.at)
        {
            out.push(format!(
                "{} sent {} at {:?}, after {g} acquired at {t:?} (its own last acquisition: {own_last:?})",
                e.gw, e.detail, e.at
            ));
        }
    }
    out
}

/// One shard's part of a per-AZ record, for [`violations`] per shard: the writes of its
/// Lease `lease` (the request path's last segment) and of its DynamoDB lock item
/// `lock_key` (if any), route writes to its `tables`, and CiliumVTEPConfig writes setting
/// its fence annotation `term_key` (`hybrid-gateway.io/term-<az>`; the default shard's is
/// `hybrid-gateway.io/term`).
pub fn shard_events(
    events: &[Event],
    lease: &str,
    lock_key: Option<&str>,
    tables: &[String],
    term_key: &str,
) -> Vec<Event> {
    events
        .iter()
        .filter(|e| match e.kind {
            Kind::LeaseWrite => e.detail.rsplit('/').next() == Some(lease),
            Kind::LockWrite => lock_key.is_some_and(|k| e.detail.contains(&format!(" key={k} "))),
            Kind::Route => tables.iter().any(|t| e.detail.contains(&format!(" {t} "))),
            Kind::Cr => e
                .detail
                .rsplit(' ')
                .next()
                .is_some_and(|f| f.split(',').any(|k| k == term_key)),
            _ => false,
        })
        .cloned()
        .collect()
}

/// The holder in effect at the end of the record (the last successful authority write).
pub fn last_holder(events: &[Event], authority: &Kind) -> Option<String> {
    events
        .iter()
        .filter(|e| &e.kind == authority && !e.faulted && (200..300).contains(&e.status))
        .max_by_key(|e| e.at)
        .and_then(|e| e.holder.clone())
}

/// Counts per kind and gateway, for the report.
pub fn summary(events: &[Event]) -> String {
    let mut counts = std::collections::BTreeMap::<(String, String), usize>::new();
    for e in events.iter().filter(|e| e.kind != Kind::Read) {
        *counts
            .entry((e.gw.clone(), format!("{:?}", e.kind)))
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|((g, k), n)| format!("{g} {k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
