//! The VPC route tables the leader keeps pointed at this gateway: read every managed table
//! in as few DescribeRouteTables pages as EC2 allows, plan with [`route_diff`], write only
//! what is wrong, concurrently with a bound, and retry failed tables with jittered backoff.
//!
//! Leader-only. EC2 route writes cannot carry a fencing token, so no call starts unless
//! the caller's leadership outlasts the call's timeout ([`Deadline`]).

mod ec2;
mod report;
mod write_fence;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::Client;
use futures::stream::{self, StreamExt};
use ipnet::Ipv4Net;

pub use report::{ApiCalls, SyncReport, TableReport};

use super::route_diff::{self, ObservedTable, Trusted, Write, WriteKind};
use crate::backoff::Backoff;
use crate::config::{AwsConfig, RouteTableTag, Takeover};
use ec2::{is_no_such_route, Failure, LEADERSHIP_ENDING};
use report::{log_write, Counters};

/// How long the caller remains entitled to write: the election handle in the daemon, a
/// fixed instant in tests and tools.
pub trait Deadline: Sync {
    fn remaining(&self) -> Duration;
    /// An owned copy that follows the same deadline, for the check the SDK makes before
    /// each attempt of a write.
    fn to_shared(&self) -> Arc<dyn Deadline + Send>;
    /// Whether there is any leadership to wait for: false once the caller stepped down, so
    /// a call is refused at once instead of waiting for a renewal that cannot come.
    fn leading(&self) -> bool {
        true
    }
}

impl Deadline for tokio::time::Instant {
    fn remaining(&self) -> Duration {
        self.saturating_duration_since(tokio::time::Instant::now())
    }
    fn to_shared(&self) -> Arc<dyn Deadline + Send> {
        Arc::new(*self)
    }
}

impl Deadline for std::time::Instant {
    fn remaining(&self) -> Duration {
        self.saturating_duration_since(std::time::Instant::now())
    }
    fn to_shared(&self) -> Arc<dyn Deadline + Send> {
        Arc::new(*self)
    }
}

/// The leader's own lease: what it has left before it must stop acting.
impl Deadline for crate::election::ElectionHandle {
    fn remaining(&self) -> Duration {
        crate::election::ElectionHandle::remaining(self)
    }
    fn to_shared(&self) -> Arc<dyn Deadline + Send> {
        Arc::new(self.clone())
    }
    fn leading(&self) -> bool {
        self.leadership.borrow().is_leader()
    }
}

/// Leadership in one term: nothing left once the term is over, even if a new one began.
impl Deadline for crate::election::Term {
    fn remaining(&self) -> Duration {
        crate::election::Term::remaining(self)
    }
    fn to_shared(&self) -> Arc<dyn Deadline + Send> {
        Arc::new(self.clone())
    }
    /// A term that is over has no renewal to wait for.
    fn leading(&self) -> bool {
        self.is_current()
    }
}

#[derive(Debug, Clone)]
pub struct RouteTablesSettings {
    pub route_table_ids: Vec<String>,
    pub route_table_tag: Option<RouteTableTag>,
    /// Only tables of this VPC (the gateway's own, from IMDS) are read and written: a tag
    /// selects account-wide, and another VPC's table carrying it belongs to someone else.
    pub vpc_id: Option<String>,
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
            vpc_id: None,
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

    /// Bounds one EC2 call by the leadership a leader normally has left: renewals run every
    /// `retry_period` and each extends leadership to `renew_deadline` after it began, so at
    /// least `renew_deadline - retry_period` is left between renewals. With the reference's
    /// timings that is 1 s and the bound stays 900 ms; with the fast profile (600 ms /
    /// 250 ms) it becomes 315 ms. A bound above it would withhold every call for good (found
    /// by the fault harness under the fast profile: the leader never wrote a route).
    pub fn fit_leadership(&mut self, renew_deadline: Duration, retry_period: Duration) {
        let between_renewals = renew_deadline.saturating_sub(retry_period);
        self.call_timeout = self.call_timeout.min(between_renewals.mul_f64(0.9));
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
    /// `ec2`'s configuration is kept, its HTTP client replaced by the fenced one of
    /// [`write_fence`]: no route write of ours leaves after its leadership ended, whoever
    /// built the client.
    pub fn new(
        ec2: Client,
        settings: RouteTablesSettings,
        self_instance: impl Into<String>,
    ) -> Self {
        let ec2 = Client::from_conf(
            ec2.config()
                .to_builder()
                .http_client(write_fence::http_client())
                .build(),
        );
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
                let wait = Backoff::new(s.backoff, s.max_backoff).delay(round);
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
                Err(cause) if cause == LEADERSHIP_ENDING => {
                    return Err(RouteError::LeadershipEnding {
                        remaining: deadline.remaining(),
                        needed: s.call_timeout,
                    })
                }
                Err(cause) => {
                    attempt += 1;
                    let wait = Backoff::new(s.backoff, s.max_backoff).delay(attempt - 1);
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

    /// May a call start? Only with more leadership left than the call may take. A leader
    /// renews every retry period, so when it is short we wait a little for the renewal
    /// rather than give up at once.
    async fn admit(&self, deadline: &dyn Deadline) -> bool {
        let give_up = tokio::time::Instant::now() + self.settings.lease_wait;
        loop {
            if deadline.remaining() > self.settings.call_timeout {
                return true;
            }
            // Stepped down: no renewal is coming, and waiting would only delay shutdown.
            if !deadline.leading() || tokio::time::Instant::now() >= give_up {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_fits_between_two_renewals_of_every_profile() {
        let mut s = RouteTablesSettings::from_config(&Default::default());
        s.fit_leadership(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(
            s.call_timeout,
            Duration::from_millis(900),
            "default profile"
        );
        s.fit_leadership(Duration::from_millis(600), Duration::from_millis(250));
        assert_eq!(s.call_timeout, Duration::from_millis(315), "fast profile");
    }

    #[test]
    fn leadership_gate() {
        let short = tokio::time::Instant::now() + Duration::from_millis(100);
        assert!(short.remaining() <= Duration::from_millis(100));
        let past = std::time::Instant::now();
        assert_eq!(past.remaining(), Duration::ZERO);
    }
}
