//! What the daemon needs from AWS: its identity (IMDS), a forwarding-capable ENI
//! (source/destination check off), and the SDK configuration for EC2 and DynamoDB.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use tokio::sync::OnceCell;

use crate::aws::eni::{self, EniError};
use crate::aws::imds::{self, Identity, ImdsError, ImdsSettings, Overrides};
use crate::aws::{sdk_config, SdkSettings};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum AwsSideError {
    #[error("reading this instance's identity from IMDS: {0}")]
    Identity(#[source] ImdsError),
    #[error("checking the primary ENI's source/destination check: {0}")]
    SourceDestCheck(#[source] EniError),
}

pub struct AwsSide {
    pub identity: Identity,
    pub sdk: SdkConfig,
}

impl AwsSide {
    /// IMDS, then the source/destination check: a gateway that cannot forward must never
    /// become ready nor take leadership, so a failure here stops start-up.
    pub async fn discover(config: &Config) -> Result<Self, AwsSideError> {
        let settings = ImdsSettings::default();
        let overrides = Overrides {
            region: config.aws.region.clone(),
            node_ip: config.gateway.node_ip,
        };
        let identity = Identity::discover(&imds::client(&settings), &overrides, &settings)
            .await
            .map_err(AwsSideError::Identity)?;
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
        .map_err(AwsSideError::SourceDestCheck)?;
        tracing::info!(eni = %identity.primary_eni, "source/destination check: {check:?}");
        Ok(AwsSide { identity, sdk })
    }
}

/// AWS as the daemon's parts share it: discovered at start-up when something needs it
/// then, otherwise on first use (a reload that adds route tables to a gateway that had
/// none). Cheap to clone.
#[derive(Clone, Default)]
pub struct SharedAws(Arc<OnceCell<AwsSide>>);

impl SharedAws {
    pub fn discovered(side: AwsSide) -> Self {
        SharedAws(Arc::new(OnceCell::new_with(Some(side))))
    }

    pub fn get(&self) -> Option<&AwsSide> {
        self.0.get()
    }

    /// The one discovery, whoever asks first; a failure is retried by the next caller.
    pub async fn get_or_discover(&self, config: &Config) -> Result<&AwsSide, AwsSideError> {
        self.0.get_or_try_init(|| AwsSide::discover(config)).await
    }
}
