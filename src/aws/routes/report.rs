//! What one sync did: per-table counts, routes left alone, failures, API calls; and the
//! log lines an operator reads from it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnet::Ipv4Net;

use super::RouteTables;
use crate::aws::route_diff::{LeftAlone, Write, WriteKind};

/// EC2 calls one sync made (each SDK-level retry of a call is not counted again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiCalls {
    pub describe_route_tables: u32,
    pub describe_instances: u32,
    pub create_route: u32,
    pub replace_route: u32,
    pub delete_route: u32,
}

impl ApiCalls {
    pub fn total(&self) -> u32 {
        self.describe_route_tables
            + self.describe_instances
            + self.create_route
            + self.replace_route
            + self.delete_route
    }
}

#[derive(Default)]
pub(super) struct Counters([AtomicU32; 5]);

impl Counters {
    pub(super) fn bump(&self, i: usize) {
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn snapshot(&self) -> ApiCalls {
        let g = |i: usize| self.0[i].load(Ordering::Relaxed);
        ApiCalls {
            describe_route_tables: g(0),
            describe_instances: g(1),
            create_route: g(2),
            replace_route: g(3),
            delete_route: g(4),
        }
    }
}

pub(super) const DRT: usize = 0;
pub(super) const DI: usize = 1;

pub(super) fn counter_of(kind: WriteKind) -> usize {
    match kind {
        WriteKind::Create => 2,
        WriteKind::Replace => 3,
        WriteKind::Delete => 4,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableReport {
    pub id: String,
    pub created: u32,
    pub replaced: u32,
    pub deleted: u32,
    /// Routes for desired CIDRs we were not allowed to take over.
    pub left_alone: Vec<LeftAlone>,
    /// The last failure, when the table did not converge within this sync.
    pub error: Option<String>,
}

impl TableReport {
    /// Not fully pointed at this gateway: a route left alone, or a write that failed.
    pub fn degraded(&self) -> bool {
        !self.left_alone.is_empty() || self.error.is_some()
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    /// Every managed table that exists, sorted by id.
    pub tables: Vec<TableReport>,
    /// Configured ids EC2 does not know (deleted table, wrong region or account).
    pub missing: Vec<String>,
    /// (table, CIDR) pairs that were already right on the first read.
    pub unchanged: usize,
    pub calls: ApiCalls,
    /// Writes were withheld because leadership was about to end.
    pub stopped_early: bool,
    /// The ownership guard could not look gateways up; their routes were left alone.
    pub trust_error: Option<String>,
    pub elapsed: Duration,
}

impl SyncReport {
    /// Every existing table holds what it may hold: only left-alone routes differ.
    pub fn converged(&self) -> bool {
        !self.stopped_early && self.tables.iter().all(|t| t.error.is_none())
    }

    /// Tables to report as degraded (metric, readiness detail), missing ones included.
    pub fn degraded(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .tables
            .iter()
            .filter(|t| t.degraded())
            .map(|t| t.id.as_str())
            .collect();
        ids.extend(self.missing.iter().map(String::as_str));
        ids
    }

    pub fn created(&self) -> u32 {
        self.tables.iter().map(|t| t.created).sum()
    }
    pub fn replaced(&self) -> u32 {
        self.tables.iter().map(|t| t.replaced).sum()
    }
    pub fn deleted(&self) -> u32 {
        self.tables.iter().map(|t| t.deleted).sum()
    }
    pub fn left_alone(&self) -> impl Iterator<Item = &LeftAlone> {
        self.tables.iter().flat_map(|t| &t.left_alone)
    }
}

impl RouteTables {
    pub(super) fn log_report(&self, r: &SyncReport) {
        if let Some(e) = &r.trust_error {
            tracing::warn!("route tables: cannot tell which ENIs belong to gateways ({e}); routes to other ENIs left alone");
        }
        for id in &r.missing {
            tracing::warn!(table = %id, "route tables: configured table not found (deleted, or another region/account?)");
        }
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let current: HashSet<(String, Ipv4Net)> = r
            .left_alone()
            .map(|la| (la.table.clone(), la.cidr))
            .collect();
        for la in r.left_alone() {
            if !warned.contains(&(la.table.clone(), la.cidr)) {
                tracing::warn!(table = %la.table, cidr = %la.cidr, target = %la.target, "route tables: leaving route alone: it {}", la.reason);
            }
        }
        *warned = current;
        drop(warned);
        for t in r.tables.iter().filter(|t| t.error.is_some()) {
            tracing::warn!(table = %t.id, "route tables: not converged: {}", t.error.as_deref().unwrap_or_default());
        }
        let summary = format!(
            "route tables: {} table(s), {} created, {} replaced, {} deleted, {} unchanged, {} left alone, {} degraded; {} EC2 calls in {:?}",
            r.tables.len(),
            r.created(),
            r.replaced(),
            r.deleted(),
            r.unchanged,
            r.left_alone().count(),
            r.degraded().len(),
            r.calls.total(),
            r.elapsed
        );
        if r.created() + r.replaced() + r.deleted() > 0 || !r.converged() {
            tracing::info!("{summary}");
        } else {
            tracing::debug!("{summary}");
        }
    }
}

pub(super) fn log_write(w: &Write, kind: WriteKind, eni: &str) {
    let prev = w
        .previous
        .as_ref()
        .map(|p| p.to_string())
        .unwrap_or_default();
    match kind {
        WriteKind::Create => {
            tracing::info!(table = %w.table, cidr = %w.cidr, "route created → {eni}")
        }
        WriteKind::Replace => {
            tracing::info!(table = %w.table, cidr = %w.cidr, "route replaced: {prev} → {eni}")
        }
        WriteKind::Delete => {
            tracing::info!(table = %w.table, cidr = %w.cidr, "route to {prev} deleted")
        }
    }
}
