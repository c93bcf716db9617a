//! Leader-only: keep the VPC route tables pointing the hybrid pod CIDRs at this gateway's
//! primary ENI — at once on taking office, then every `aws.resync_interval`, sooner after a
//! partial failure.

use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio_util::sync::CancellationToken;

use super::node_sync::backoff;
use tokio::sync::watch;

use crate::aws::{RouteTables, RouteTablesSettings};
use crate::config::Config;
use crate::election::{ElectionHandle, Leadership};
use crate::telemetry::{DaemonStatus, Metrics};

pub struct RouteSync {
    pub ec2: aws_sdk_ec2::Client,
    pub instance_id: String,
    pub eni: String,
    /// Only this VPC's tables are managed (IMDS: the primary ENI's VPC).
    pub vpc_id: String,
    pub config: watch::Receiver<Arc<Config>>,
    pub status: Arc<DaemonStatus>,
    pub metrics: Arc<Metrics>,
}

impl RouteSync {
    /// The reconciler for the current config: tables, takeover rule and CIDRs can change
    /// on reload.
    pub fn current(&self) -> (RouteTables, Vec<Ipv4Net>, Duration) {
        let c = self.config.borrow();
        let mut settings = RouteTablesSettings::from_config(&c.aws);
        settings.vpc_id = Some(self.vpc_id.clone());
        (
            RouteTables::new(self.ec2.clone(), settings, &self.instance_id),
            c.gateway.hybrid_pod_cidrs.clone(),
            c.aws.resync_interval,
        )
    }

    /// Deletes this gateway's routes (final stop), while it still leads.
    pub async fn cleanup(
        &self,
        election: &ElectionHandle,
    ) -> Result<crate::aws::SyncReport, crate::aws::RouteError> {
        let (routes, _, _) = self.current();
        routes.cleanup(&self.eni, election).await
    }

    pub async fn run(self: Arc<Self>, mut election: ElectionHandle, cancel: CancellationToken) {
        let mut config = self.config.clone();
        loop {
            // Wait for office.
            loop {
                if election.leadership.borrow_and_update().is_leader() {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = election.leadership.changed() => if r.is_err() { return },
                }
            }
            let took_office = std::time::Instant::now();
            let (mut routes, mut cidrs, mut resync) = self.current();
            let mut first = true;
            let mut failures = 0u32;
            loop {
                let started = std::time::Instant::now();
                let wait = match routes.sync(&cidrs, &self.eni, &election).await {
                    Ok(report) => {
                        self.metrics
                            .aws_route_table_update_duration_seconds
                            .observe(started.elapsed().as_secs_f64());
                        self.metrics.aws_route_table_update.inc_by(u64::from(
                            report.created() + report.replaced() + report.deleted(),
                        ));
                        self.metrics
                            .route_tables_degraded
                            .set(report.degraded().len() as i64);
                        self.metrics
                            .routes_left_alone
                            .set(report.left_alone().count() as i64);
                        let degraded: Vec<String> =
                            report.degraded().iter().map(|s| s.to_string()).collect();
                        let total = report.tables.len();
                        let in_sync = report.tables.iter().filter(|t| !t.degraded()).count();
                        self.status.update(|s| {
                            s.route_tables_total = total;
                            s.route_tables_in_sync = in_sync;
                            s.route_tables_degraded = degraded;
                        });
                        if report.converged() {
                            self.metrics
                                .route_sync_last_success_timestamp_seconds
                                .set(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
                            if first {
                                self.metrics
                                    .leader_setup_duration_seconds
                                    .observe(took_office.elapsed().as_secs_f64());
                                first = false;
                            }
                            failures = 0;
                            resync
                        } else {
                            failures += 1;
                            self.metrics.aws_route_table_update_errors.inc();
                            backoff(failures)
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        self.metrics.aws_route_table_update_errors.inc();
                        if election.leadership.borrow().is_leader() {
                            tracing::warn!("VPC route sync: {e}");
                            self.status.error(format!("route sync: {e}"));
                        }
                        backoff(failures)
                    }
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                    r = config.changed() => {
                        if r.is_err() { return }
                        (routes, cidrs, resync) = self.current();
                    }
                    r = election.leadership.changed() => {
                        if r.is_err() { return }
                        if !matches!(*election.leadership.borrow(), Leadership::Leader { .. }) {
                            break;
                        }
                    }
                }
            }
        }
    }
}
