//! What the daemon needs from AWS: its identity (IMDS), a forwarding-capable ENI
//! (source/destination check off), and clients for EC2 and DynamoDB.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_config::SdkConfig;

use super::route_sync::RouteSync;
use crate::aws::imds::{self, Identity, ImdsSettings, Overrides};
use tokio::sync::watch;

use crate::aws::{eni, sdk_config, SdkSettings};
use crate::config::Config;
use crate::telemetry::{DaemonStatus, Metrics};

pub struct AwsSide {
    pub identity: Identity,
    pub sdk: SdkConfig,
}

impl AwsSide {
    /// IMDS, then the source/destination check: a gateway that cannot forward must never
    /// become ready nor take leadership, so a failure here stops start-up.
    pub async fn discover(config: &Config) -> anyhow::Result<Self> {
        let settings = ImdsSettings::default();
        let overrides = Overrides {
            region: config.aws.region.clone(),
            node_ip: config.gateway.node_ip,
        };
        let identity = Identity::discover(&imds::client(&settings), &overrides, &settings)
            .await
            .context("reading this instance's identity from IMDS")?;
        tracing::info!(instance = %identity.instance_id, region = %identity.region, eni = %identity.primary_eni, ip = %identity.local_ipv4, "AWS identity");
        let sdk = sdk_config(&identity.region, &SdkSettings::default()).await;
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let check = eni::ensure_source_dest_check_disabled(
            &ec2,
            &identity.primary_eni,
            config.aws.manage_source_dest_check,
            Duration::from_secs(5),
        )
        .await
        .context("checking the primary ENI's source/destination check")?;
        tracing::info!(eni = %identity.primary_eni, "source/destination check: {check:?}");
        Ok(AwsSide { identity, sdk })
    }

    /// The leader's VPC route work, when route tables are configured.
    pub fn route_sync(
        &self,
        config: &watch::Receiver<Arc<Config>>,
        status: Arc<DaemonStatus>,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<RouteSync>> {
        {
            let c = config.borrow();
            if c.aws.route_table_ids.is_empty() && c.aws.route_table_tag.is_none() {
                return None;
            }
        }
        Some(Arc::new(RouteSync {
            ec2: aws_sdk_ec2::Client::new(&self.sdk),
            instance_id: self.identity.instance_id.clone(),
            eni: self.identity.primary_eni.clone(),
            vpc_id: self.identity.vpc_id.clone(),
            config: config.clone(),
            status,
            metrics,
        }))
    }
}
