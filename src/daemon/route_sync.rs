//! Leader-only: keep the VPC route tables pointing the hybrid pod CIDRs at this gateway's
//! primary ENI — at once on taking office, then every `aws.resync_interval`, sooner after a
//! partial failure. Whether there are tables to manage is read at every pass, so a reload
//! that adds or removes `aws.route_table_ids` / `aws.route_table_tag` starts or stops it.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::aws_side::{AwsSideError, SharedAws};
use super::node_sync::BACKOFF;
use crate::aws::{RouteError, RouteTables, RouteTablesSettings, SyncReport};
use crate::config::Config;
use crate::election::{ElectionHandle, Term};
use crate::reconcile::{self, Outcome, Target, Wakeups};
use crate::telemetry::Telemetry;

#[derive(Debug, thiserror::Error)]
pub enum RouteSyncError {
    #[error("{0}")]
    Aws(#[source] AwsSideError),
    #[error("{0}")]
    Routes(#[source] RouteError),
}

/// What route sync needs for the daemon's lifetime. Cheap to clone.
#[derive(Clone)]
pub struct RouteSync {
    pub aws: SharedAws,
    pub config: watch::Receiver<Arc<Config>>,
    pub telemetry: Telemetry,
}

impl RouteSync {
    /// Every term this process leads, until `cancel`.
    pub async fn run(self, election: ElectionHandle, cancel: CancellationToken) {
        let start = |term: Term| {
            let wakeups = Wakeups::new().on_change(self.config.clone());
            (TermSync::new(self.clone(), term), wakeups)
        };
        reconcile::while_leading(&election, start, BACKOFF, &cancel).await;
    }

    /// Deletes this gateway's routes (final stop), while it still leads. `None`: no route
    /// tables are managed.
    pub async fn cleanup(
        &self,
        election: &ElectionHandle,
    ) -> Result<Option<SyncReport>, RouteSyncError> {
        let config = self.config.borrow().clone();
        if !config.aws.manages_routes() {
            return Ok(None);
        }
        let aws = self
            .aws
            .get_or_discover(&config)
            .await
            .map_err(RouteSyncError::Aws)?;
        let routes = aws.route_tables(&config);
        routes
            .cleanup(&aws.identity.primary_eni, election)
            .await
            .map(Some)
            .map_err(RouteSyncError::Routes)
    }
}

/// Route sync in one term of office.
struct TermSync {
    shared: RouteSync,
    term: Term,
    took_office: Instant,
    converged_once: bool,
    /// The tables as the configuration they were built from says; rebuilt on reload.
    routes: Option<(Arc<Config>, RouteTables)>,
}

impl TermSync {
    fn new(shared: RouteSync, term: Term) -> Self {
        TermSync {
            shared,
            term,
            took_office: Instant::now(),
            converged_once: false,
            routes: None,
        }
    }
}

impl Target for TermSync {
    type Error = RouteSyncError;

    async fn pass(&mut self) -> Result<Outcome, RouteSyncError> {
        let config = self.shared.config.borrow_and_update().clone();
        if !config.aws.manages_routes() {
            if self.routes.take().is_some() {
                tracing::info!("no route tables configured any more: VPC route sync stopped");
                self.shared.telemetry.routes_unmanaged();
            }
            return Ok(Outcome::idle());
        }
        let aws = self
            .shared
            .aws
            .get_or_discover(&config)
            .await
            .map_err(RouteSyncError::Aws)?;
        let eni = aws.identity.primary_eni.clone();
        let routes = match self.routes.take() {
            Some((built, routes)) if Arc::ptr_eq(&built, &config) => routes,
            before => {
                let routes = aws.route_tables(&config);
                if before.is_none() {
                    let tag = config.aws.route_table_tag.as_ref();
                    tracing::info!(
                        term = self.term.number(),
                        ids = ?config.aws.route_table_ids,
                        tag = ?tag.map(|t| format!("{}={}", t.key, t.value)),
                        "VPC route sync started"
                    );
                }
                routes
            }
        };
        let routes = &self.routes.insert((config.clone(), routes)).1;
        let started = Instant::now();
        let report = routes
            .sync(&config.gateway.hybrid_pod_cidrs, &eni, &self.term)
            .await
            .map_err(RouteSyncError::Routes)?;
        let setup =
            (report.converged() && !self.converged_once).then(|| self.took_office.elapsed());
        self.shared
            .telemetry
            .routes_synced(&report, started.elapsed(), setup);
        let changes = u64::from(report.created() + report.replaced() + report.deleted());
        if report.converged() {
            self.converged_once = true;
            Ok(Outcome::resync(changes, config.aws.resync_interval))
        } else {
            Ok(Outcome::retry(changes))
        }
    }

    fn failed(&mut self, e: &RouteSyncError) {
        self.shared
            .telemetry
            .routes_failed(e, self.term.is_current());
    }
}

impl super::aws_side::AwsSide {
    /// The route tables reconciler for `config`'s selection and takeover rule.
    fn route_tables(&self, config: &Config) -> RouteTables {
        self.route_tables_with(config, RouteTablesSettings::from_config(&config.aws))
    }

    /// The reconciler for exactly the tables `ids` (a per-AZ shard's), with `config`'s
    /// takeover rule and bounds.
    pub(super) fn route_tables_for(&self, config: &Config, ids: Vec<String>) -> RouteTables {
        let mut settings = RouteTablesSettings::from_config(&config.aws);
        settings.route_table_ids = ids;
        settings.route_table_tag = None;
        self.route_tables_with(config, settings)
    }

    fn route_tables_with(&self, config: &Config, mut settings: RouteTablesSettings) -> RouteTables {
        settings.fit_leadership(config.election.renew_deadline, config.election.retry_period);
        // Only this VPC's tables (IMDS: the primary ENI's VPC): a tag selects account-wide.
        settings.vpc_id = Some(self.identity.vpc_id.clone());
        RouteTables::new(
            aws_sdk_ec2::Client::new(&self.sdk),
            settings,
            &self.identity.instance_id,
        )
    }
}
