//! The VPC route tables the leader keeps pointed at this gateway: read every managed table
//! in as few DescribeRouteTables pages as EC2 allows, plan with [`route_diff`], write only
//! what is wrong, concurrently with a bound, and retry failed tables with jittered backoff.
//!
//! Leader-only. EC2 route writes cannot carry a fencing token, so no call starts unless
//! the caller's leadership outlasts the call's timeout ([`Deadline`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, Route, RouteOrigin, RouteState};
use aws_sdk_ec2::Client;
use futures::stream::{self, StreamExt};
use ipnet::Ipv4Net;

use super::route_diff::{
    self, LeftAlone, ObservedRoute, ObservedTable, Target, Trusted, Write, WriteKind,
};
use super::{backoff, describe_sdk_error, error_code};
use crate::config::{AwsConfig, RouteTableTag, Takeover};

/// EC2 copies an Auto Scaling group's name onto its instances under this tag.
const ASG_TAG: &str = "aws:autoscaling:groupName";
/// DescribeRouteTables' page limit; the fewer pages, the fewer calls.
const PAGE: i32 = 100;
/// Filter values per filter: EC2 caps them (200); stay well below.
const FILTER_VALUES: usize = 100;
const LEADERSHIP_ENDING: &str = "leadership ends sooner than an EC2 call may take";

/// How long the caller remains entitled to write. Implemented for instants; the election
/// handle implements it with its own remaining lease time.
pub trait Deadline: Sync {
    fn remaining(&self) -> Duration;
}

impl Deadline for tokio::time::Instant {
    fn remaining(&self) -> Duration {
        self.saturating_duration_since(tokio::time::Instant::now())
    }
}

impl Deadline for std::time::Instant {
    fn remaining(&self) -> Duration {
        self.saturating_duration_since(std::time::Instant::now())
    }
}

#[derive(Debug, Clone)]
pub struct RouteTablesSettings {
    pub route_table_ids: Vec<String>,
    pub route_table_tag: Option<RouteTableTag>,
    pub takeover: Takeover,
    /// Trusted by the ownership guard besides our own Auto Scaling group.
    pub gateway_instance_ids: Vec<String>,
    /// Writes in flight at once: EC2 throttles mutating calls per account, and a burst of
    /// 80 would eat a bucket other tools in the account share.
    pub concurrency: usize,
    /// Passes per sync: the first, then re-reads and retries of tables whose writes failed.
    pub rounds: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Upper bound of one EC2 call, the SDK's own retries included. No call starts with
    /// less leadership left than this, so it must stay below the shortest remaining
    /// leadership a leader normally has (renew deadline minus retry period: 1 s with the
    /// reference's 3 s / 2 s / 1 s timings).
    pub call_timeout: Duration,
    /// When leadership is too short to start a call, wait this long for the elector to
    /// renew (extend the deadline) before withholding the call.
    pub lease_wait: Duration,
}

impl RouteTablesSettings {
    pub fn from_config(aws: &AwsConfig) -> Self {
        RouteTablesSettings {
            route_table_ids: aws.route_table_ids.clone(),
            route_table_tag: aws.route_table_tag.clone(),
            takeover: aws.takeover,
            gateway_instance_ids: aws.gateway_instance_ids.clone(),
            concurrency: 8,
            rounds: 3,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            call_timeout: Duration::from_millis(900),
            lease_wait: Duration::from_secs(2),
        }
    }

    fn selection(&self) -> String {
        let mut parts = Vec::new();
        if !self.route_table_ids.is_empty() {
            parts.push(format!("ids {}", self.route_table_ids.join(",")));
        }
        if let Some(t) = &self.route_table_tag {
            parts.push(format!("tag {}={}", t.key, t.value));
        }
        parts.join(" and ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("not starting EC2 calls: leadership has {remaining:?} left, and one call may take up to {needed:?}")]
    LeadershipEnding {
        remaining: Duration,
        needed: Duration,
    },
    #[error("cannot read the route tables ({selection}): {cause}")]
    Read { selection: String, cause: String },
}

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
struct Counters([AtomicU32; 5]);

impl Counters {
    fn bump(&self, i: usize) {
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> ApiCalls {
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

const DRT: usize = 0;
const DI: usize = 1;

fn counter_of(kind: WriteKind) -> usize {
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

/// The reconciler. Cheap to keep for the daemon's lifetime; holds no leadership state.
pub struct RouteTables {
    ec2: Client,
    settings: RouteTablesSettings,
    self_instance: String,
    /// Left-alone routes already warned about, so a resync every 30 s does not repeat it.
    warned: Mutex<HashSet<(String, Ipv4Net)>>,
}

enum Outcome {
    Applied(WriteKind),
    /// Nothing to do after all (a route to delete was already gone).
    Nothing,
    /// Someone created the route between our read and our CreateRoute: re-read and
    /// decide again under the ownership guard rather than overwrite blindly.
    Raced,
    Failed(String),
    /// Not attempted: leadership would end before the call could.
    Withheld,
}

impl RouteTables {
    /// `self_instance`: this gateway's instance id, whose Auto Scaling group the ownership
    /// guard trusts.
    pub fn new(
        ec2: Client,
        settings: RouteTablesSettings,
        self_instance: impl Into<String>,
    ) -> Self {
        RouteTables {
            ec2,
            settings,
            self_instance: self_instance.into(),
            warned: Mutex::new(HashSet::new()),
        }
    }

    pub fn settings(&self) -> &RouteTablesSettings {
        &self.settings
    }

    /// Makes every managed table route each of `desired` to `target_eni`, and deletes
    /// routes to `target_eni` for any other CIDR. Partial failures are in the report
    /// (the caller retries at its next resync); only "nothing could be read" and "no
    /// leadership left to start" are errors.
    pub async fn sync(
        &self,
        desired: &[Ipv4Net],
        target_eni: &str,
        deadline: &dyn Deadline,
    ) -> Result<SyncReport, RouteError> {
        let started = std::time::Instant::now();
        let counters = Counters::default();
        let s = &self.settings;
        if !self.admit(deadline).await {
            return Err(RouteError::LeadershipEnding {
                remaining: deadline.remaining(),
                needed: s.call_timeout,
            });
        }

        let (mut tables, missing) = self.initial_read(deadline, &counters).await?;
        let mut reports: BTreeMap<String, TableReport> = tables
            .iter()
            .map(|t| {
                (
                    t.id.clone(),
                    TableReport {
                        id: t.id.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let mut report = SyncReport {
            missing,
            ..Default::default()
        };

        for round in 0..s.rounds.max(1) {
            let trusted = if s.takeover == Takeover::Owned
                && route_diff::needs_trust(&tables, desired, target_eni)
            {
                match self.trusted(deadline, &counters).await {
                    Ok(t) => {
                        report.trust_error = None;
                        t
                    }
                    // Conservative: without knowing who owns them, leave those routes be.
                    Err(e) => {
                        report.trust_error = Some(e);
                        Trusted::default()
                    }
                }
            } else {
                Trusted::default()
            };
            let plan = route_diff::plan(&tables, desired, target_eni, s.takeover, &trusted);
            if round == 0 {
                report.unchanged = plan.unchanged;
            }
            for t in &tables {
                if let Some(r) = reports.get_mut(&t.id) {
                    r.left_alone.clear();
                    r.error = None;
                }
            }
            for la in plan.left_alone {
                if let Some(r) = reports.get_mut(&la.table) {
                    r.left_alone.push(la);
                }
            }

            let outcomes: Vec<(Write, Outcome)> = stream::iter(plan.writes)
                .map(|w| async {
                    let o = self.apply(&w, target_eni, deadline, &counters).await;
                    (w, o)
                })
                .buffer_unordered(s.concurrency.max(1))
                .collect()
                .await;

            let mut again = BTreeSet::new();
            let mut failed = false;
            for (w, o) in outcomes {
                let Some(r) = reports.get_mut(&w.table) else {
                    continue;
                };
                match o {
                    Outcome::Applied(kind) => {
                        match kind {
                            WriteKind::Create => r.created += 1,
                            WriteKind::Replace => r.replaced += 1,
                            WriteKind::Delete => r.deleted += 1,
                        }
                        log_write(&w, kind, target_eni);
                    }
                    Outcome::Nothing => {}
                    Outcome::Raced => {
                        r.error = Some(format!("{} appeared while we created it", w.cidr));
                        again.insert(w.table.clone());
                    }
                    Outcome::Failed(e) => {
                        r.error = Some(format!("{:?} {}: {e}", w.kind, w.cidr));
                        again.insert(w.table.clone());
                        failed = true;
                    }
                    Outcome::Withheld => {
                        r.error = Some(format!(
                            "{:?} {}: withheld, leadership ending",
                            w.kind, w.cidr
                        ));
                        report.stopped_early = true;
                    }
                }
            }
            if report.stopped_early || again.is_empty() || round + 1 >= s.rounds {
                break;
            }
            if failed {
                let wait = backoff(s.backoff, round, s.max_backoff);
                tracing::debug!(
                    "route tables: retrying {} table(s) in {wait:?}",
                    again.len()
                );
                tokio::time::sleep(wait).await;
            }
            if !self.admit(deadline).await {
                report.stopped_early = true;
                break;
            }
            let ids: Vec<String> = again.into_iter().collect();
            match self.read_ids(&ids, deadline, &counters).await {
                Ok(t) => tables = t,
                Err(e) => {
                    for id in &ids {
                        if let Some(r) = reports.get_mut(id) {
                            r.error = Some(format!("re-reading after a failed write: {e}"));
                        }
                    }
                    break;
                }
            }
        }

        report.tables = reports.into_values().collect();
        report.calls = counters.snapshot();
        report.elapsed = started.elapsed();
        self.log_report(&report);
        Ok(report)
    }

    /// Deletes every route to `target_eni` in the managed tables: the clean, final stop
    /// (`aws.cleanup_on_shutdown`), never a restart. Run it while still leader.
    pub async fn cleanup(
        &self,
        target_eni: &str,
        deadline: &dyn Deadline,
    ) -> Result<SyncReport, RouteError> {
        self.sync(&[], target_eni, deadline).await
    }

    /// The first read gets the same bounded, jittered retries as writes: without it there
    /// is nothing to do.
    async fn initial_read(
        &self,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<(Vec<ObservedTable>, Vec<String>), RouteError> {
        let s = &self.settings;
        let mut attempt = 0;
        loop {
            match self.read_all(deadline, counters).await {
                Ok(r) => return Ok(r),
                Err(cause) => {
                    attempt += 1;
                    let wait = backoff(s.backoff, attempt - 1, s.max_backoff);
                    if attempt >= s.rounds.max(1) {
                        return Err(RouteError::Read {
                            selection: s.selection(),
                            cause,
                        });
                    }
                    tracing::debug!("route tables: read failed ({cause}); retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Every managed table: by id (a filter, so one unknown id does not fail the whole
    /// call as `RouteTableIds` would) and by tag. Returns the tables and the unknown ids.
    async fn read_all(
        &self,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<(Vec<ObservedTable>, Vec<String>), String> {
        let s = &self.settings;
        let mut found: BTreeMap<String, ObservedTable> = BTreeMap::new();
        if !s.route_table_ids.is_empty() {
            for t in self
                .read_ids(&s.route_table_ids, deadline, counters)
                .await?
            {
                found.insert(t.id.clone(), t);
            }
        }
        if let Some(tag) = &s.route_table_tag {
            let filter = Filter::builder()
                .name(format!("tag:{}", tag.key))
                .values(&tag.value)
                .build();
            for t in self.describe(filter, deadline, counters).await? {
                found.insert(t.id.clone(), t);
            }
        }
        let missing = s
            .route_table_ids
            .iter()
            .filter(|id| !found.contains_key(*id))
            .cloned()
            .collect();
        Ok((found.into_values().collect(), missing))
    }

    async fn read_ids(
        &self,
        ids: &[String],
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<Vec<ObservedTable>, String> {
        let mut out = Vec::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let filter = Filter::builder()
                .name("route-table-id")
                .set_values(Some(chunk.to_vec()))
                .build();
            out.extend(self.describe(filter, deadline, counters).await?);
        }
        Ok(out)
    }

    /// All pages of DescribeRouteTables for one filter.
    async fn describe(
        &self,
        filter: Filter,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<Vec<ObservedTable>, String> {
        let mut tables = Vec::new();
        let mut token: Option<String> = None;
        loop {
            if !self.admit(deadline).await {
                return Err(LEADERSHIP_ENDING.into());
            }
            counters.bump(DRT);
            let call = self
                .ec2
                .describe_route_tables()
                .filters(filter.clone())
                .max_results(PAGE)
                .set_next_token(token.take())
                .send();
            let resp = match tokio::time::timeout(self.settings.call_timeout, call).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    return Err(format!("DescribeRouteTables: {}", describe_sdk_error(&e)))
                }
                Err(_) => {
                    return Err(format!(
                        "DescribeRouteTables: no answer within {:?}",
                        self.settings.call_timeout
                    ))
                }
            };
            for rt in resp.route_tables() {
                let Some(id) = rt.route_table_id() else {
                    continue;
                };
                tables.push(ObservedTable {
                    id: id.to_string(),
                    routes: rt.routes().iter().filter_map(observe).collect(),
                });
            }
            token = resp
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(tables);
            }
        }
    }

    /// Gateways the ownership guard trusts: our own instance and `gateway_instance_ids`
    /// (one call, which also tells our Auto Scaling group), then every instance of that
    /// group (a second call). Only made when a route points at an ENI that is not ours.
    async fn trusted(
        &self,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<Trusted, String> {
        let mut ids = self.settings.gateway_instance_ids.clone();
        ids.push(self.self_instance.clone());
        let first = self
            .describe_instances(
                Filter::builder()
                    .name("instance-id")
                    .set_values(Some(ids))
                    .build(),
                deadline,
                counters,
            )
            .await?;
        let asg = first
            .iter()
            .find(|i| i.instance_id() == Some(self.self_instance.as_str()))
            .and_then(|i| i.tags().iter().find(|t| t.key() == Some(ASG_TAG)))
            .and_then(|t| t.value())
            .map(str::to_string);
        let mut all = first;
        if let Some(asg) = asg {
            let filter = Filter::builder()
                .name(format!("tag:{ASG_TAG}"))
                .values(asg)
                .build();
            all.extend(self.describe_instances(filter, deadline, counters).await?);
        }
        let mut trusted = Trusted::default();
        for inst in &all {
            if let Some(id) = inst.instance_id() {
                trusted.instances.insert(id.to_string());
            }
            for ni in inst.network_interfaces() {
                if let Some(eni) = ni.network_interface_id() {
                    trusted.enis.insert(eni.to_string());
                }
            }
        }
        Ok(trusted)
    }

    async fn describe_instances(
        &self,
        filter: Filter,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<Vec<aws_sdk_ec2::types::Instance>, String> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            if !self.admit(deadline).await {
                return Err(LEADERSHIP_ENDING.into());
            }
            counters.bump(DI);
            let call = self
                .ec2
                .describe_instances()
                .filters(filter.clone())
                .max_results(1000)
                .set_next_token(token.take())
                .send();
            let resp = match tokio::time::timeout(self.settings.call_timeout, call).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(format!("DescribeInstances: {}", describe_sdk_error(&e))),
                Err(_) => {
                    return Err(format!(
                        "DescribeInstances: no answer within {:?}",
                        self.settings.call_timeout
                    ))
                }
            };
            out.extend(
                resp.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .cloned(),
            );
            token = resp
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// May a call start? Only with more leadership left than the call may take. A leader
    /// renews every retry period, so when it is short we wait a little for the renewal
    /// rather than give up at once.
    async fn admit(&self, deadline: &dyn Deadline) -> bool {
        let give_up = tokio::time::Instant::now() + self.settings.lease_wait;
        loop {
            if deadline.remaining() > self.settings.call_timeout {
                return true;
            }
            if tokio::time::Instant::now() >= give_up {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn apply(
        &self,
        w: &Write,
        eni: &str,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Outcome {
        match w.kind {
            WriteKind::Create => match self
                .write(WriteKind::Create, &w.table, w.cidr, eni, deadline, counters)
                .await
            {
                Err(Failure::Code(code, _)) if code == "RouteAlreadyExists" => {
                    match self.settings.takeover {
                        // "any" would replace whatever it found anyway.
                        Takeover::Any => self.finish(
                            WriteKind::Replace,
                            self.write(
                                WriteKind::Replace,
                                &w.table,
                                w.cidr,
                                eni,
                                deadline,
                                counters,
                            )
                            .await,
                        ),
                        Takeover::Owned => Outcome::Raced,
                    }
                }
                r => self.finish(WriteKind::Create, r),
            },
            WriteKind::Replace => match self
                .write(
                    WriteKind::Replace,
                    &w.table,
                    w.cidr,
                    eni,
                    deadline,
                    counters,
                )
                .await
            {
                // The route vanished since we read it: creating is always allowed.
                Err(Failure::Code(code, msg)) if is_no_such_route(&code, &msg) => self.finish(
                    WriteKind::Create,
                    self.write(WriteKind::Create, &w.table, w.cidr, eni, deadline, counters)
                        .await,
                ),
                r => self.finish(WriteKind::Replace, r),
            },
            WriteKind::Delete => match self
                .write(WriteKind::Delete, &w.table, w.cidr, eni, deadline, counters)
                .await
            {
                Err(Failure::Code(code, msg)) if is_no_such_route(&code, &msg) => Outcome::Nothing,
                r => self.finish(WriteKind::Delete, r),
            },
        }
    }

    fn finish(&self, kind: WriteKind, r: Result<(), Failure>) -> Outcome {
        match r {
            Ok(()) => Outcome::Applied(kind),
            Err(Failure::Withheld) => Outcome::Withheld,
            Err(Failure::Code(code, msg)) => Outcome::Failed(if msg.is_empty() {
                code
            } else {
                format!("{code}: {msg}")
            }),
            Err(Failure::Other(e)) => Outcome::Failed(e),
        }
    }

    /// One CreateRoute / ReplaceRoute / DeleteRoute, bounded by the call timeout and
    /// refused when leadership would not outlast it.
    async fn write(
        &self,
        kind: WriteKind,
        table: &str,
        cidr: Ipv4Net,
        eni: &str,
        deadline: &dyn Deadline,
        counters: &Counters,
    ) -> Result<(), Failure> {
        if !self.admit(deadline).await {
            return Err(Failure::Withheld);
        }
        counters.bump(counter_of(kind));
        let timeout = self.settings.call_timeout;
        let dest = cidr.to_string();
        let result = match kind {
            WriteKind::Create => {
                let call = self
                    .ec2
                    .create_route()
                    .route_table_id(table)
                    .destination_cidr_block(dest)
                    .network_interface_id(eni)
                    .send();
                tokio::time::timeout(timeout, call)
                    .await
                    .map(|r| r.map(drop).map_err(|e| sdk_failure(&e)))
            }
            WriteKind::Replace => {
                let call = self
                    .ec2
                    .replace_route()
                    .route_table_id(table)
                    .destination_cidr_block(dest)
                    .network_interface_id(eni)
                    .send();
                tokio::time::timeout(timeout, call)
                    .await
                    .map(|r| r.map(drop).map_err(|e| sdk_failure(&e)))
            }
            WriteKind::Delete => {
                let call = self
                    .ec2
                    .delete_route()
                    .route_table_id(table)
                    .destination_cidr_block(dest)
                    .send();
                tokio::time::timeout(timeout, call)
                    .await
                    .map(|r| r.map(drop).map_err(|e| sdk_failure(&e)))
            }
        };
        result.unwrap_or_else(|_| Err(Failure::Other(format!("no answer within {timeout:?}"))))
    }

    fn log_report(&self, r: &SyncReport) {
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

enum Failure {
    Withheld,
    /// EC2 answered with an error code and message.
    Code(String, String),
    Other(String),
}

fn sdk_failure<E>(e: &aws_sdk_ec2::error::SdkError<E>) -> Failure
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_ec2::error::ProvideErrorMetadata;
    match error_code(e) {
        Some(code) => Failure::Code(
            code.to_string(),
            e.message().unwrap_or_default().to_string(),
        ),
        None => Failure::Other(describe_sdk_error(e)),
    }
}

/// ReplaceRoute / DeleteRoute on a route that is not there. EC2 answers
/// `InvalidRoute.NotFound`, or for ReplaceRoute `InvalidParameterValue` ("There is no route
/// defined for ...").
fn is_no_such_route(code: &str, message: &str) -> bool {
    code == "InvalidRoute.NotFound"
        || (code == "InvalidParameterValue" && message.to_ascii_lowercase().contains("no route"))
}

fn log_write(w: &Write, kind: WriteKind, eni: &str) {
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

/// One EC2 route as the planner sees it; `None` for non-IPv4 destinations.
fn observe(r: &Route) -> Option<ObservedRoute> {
    let destination: Ipv4Net = r.destination_cidr_block()?.parse().ok()?;
    let s = |v: &str| v.to_string();
    let target = if let Some(eni) = r.network_interface_id() {
        Target::Eni {
            id: s(eni),
            instance: r.instance_id().map(s),
        }
    } else if let Some(i) = r.instance_id() {
        Target::Instance(s(i))
    } else if let Some(t) = r.transit_gateway_id() {
        Target::TransitGateway(s(t))
    } else if let Some(g) = r.gateway_id() {
        match g {
            "local" => Target::Local,
            g if g.starts_with("vgw-") => Target::VpnGateway(s(g)),
            g => Target::Gateway(s(g)),
        }
    } else if let Some(n) = r.nat_gateway_id() {
        Target::NatGateway(s(n))
    } else if let Some(p) = r.vpc_peering_connection_id() {
        Target::Peering(s(p))
    } else if let Some(g) = r.egress_only_internet_gateway_id() {
        Target::Other(format!("egress-only internet gateway {g}"))
    } else if let Some(g) = r.carrier_gateway_id() {
        Target::Other(format!("carrier gateway {g}"))
    } else if let Some(g) = r.local_gateway_id() {
        Target::Other(format!("local gateway {g}"))
    } else if let Some(a) = r.core_network_arn() {
        Target::Other(format!("core network {a}"))
    } else {
        Target::Other("an unknown target".into())
    };
    Some(ObservedRoute {
        destination,
        target,
        propagated: r.origin() == Some(&RouteOrigin::EnableVgwRoutePropagation),
        blackhole: r.state() == Some(&RouteState::Blackhole),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_observed() {
        let r = Route::builder()
            .destination_cidr_block("192.168.32.0/23")
            .network_interface_id("eni-1")
            .instance_id("i-1")
            .state(RouteState::Active)
            .origin(RouteOrigin::CreateRoute)
            .build();
        let o = observe(&r).unwrap();
        assert_eq!(
            o.target,
            Target::Eni {
                id: "eni-1".into(),
                instance: Some("i-1".into())
            }
        );
        assert!(!o.propagated && !o.blackhole);

        let r = Route::builder()
            .destination_cidr_block("10.0.0.0/8")
            .gateway_id("vgw-1")
            .origin(RouteOrigin::EnableVgwRoutePropagation)
            .state(RouteState::Blackhole)
            .build();
        let o = observe(&r).unwrap();
        assert_eq!(o.target, Target::VpnGateway("vgw-1".into()));
        assert!(o.propagated && o.blackhole);

        let local = Route::builder()
            .destination_cidr_block("10.250.0.0/16")
            .gateway_id("local")
            .build();
        assert_eq!(observe(&local).unwrap().target, Target::Local);
        let v6 = Route::builder()
            .destination_ipv6_cidr_block("::/0")
            .gateway_id("igw-1")
            .build();
        assert!(observe(&v6).is_none());
    }

    #[test]
    fn missing_routes_are_recognised() {
        assert!(is_no_such_route("InvalidRoute.NotFound", ""));
        assert!(is_no_such_route(
            "InvalidParameterValue",
            "There is no route defined for '10.0.0.0/8' in the route table."
        ));
        assert!(!is_no_such_route("InvalidParameterValue", "bad CIDR"));
    }

    #[test]
    fn leadership_gate() {
        let short = tokio::time::Instant::now() + Duration::from_millis(100);
        assert!(short.remaining() <= Duration::from_millis(100));
        let past = std::time::Instant::now();
        assert_eq!(past.remaining(), Duration::ZERO);
    }
}
