//! The AWS side: who this instance is ([`imds`]), the VPC route tables the leader keeps
//! pointed at this gateway ([`routes`], planned by the pure [`route_diff`]), the primary
//! ENI's source/destination check ([`eni`]), and the SDK configuration they share.
//!
//! The SDK is configured only through its standard mechanisms (environment, profile, IMDS
//! role credentials): tests point it at emulators with `AWS_ENDPOINT_URL_EC2`,
//! `AWS_ENDPOINT_URL_DYNAMODB` and `AWS_EC2_METADATA_SERVICE_ENDPOINT`, so production and
//! tests run one code path.

pub mod eni;
pub mod imds;
pub mod route_diff;
pub mod routes;
pub mod shards;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

pub use imds::{Identity, ImdsError, Overrides};
pub use routes::{Deadline, RouteError, RouteTables, RouteTablesSettings, SyncReport, TableReport};

/// Retry and timeout policy of every SDK client (EC2, DynamoDB). Callers add their own,
/// tighter deadline around calls that must end before leadership does.
#[derive(Debug, Clone)]
pub struct SdkSettings {
    /// Attempts per call, the first included (the SDK's standard mode: exponential backoff
    /// with full jitter, throttling-aware retry quota).
    pub max_attempts: u32,
    pub connect_timeout: Duration,
    /// One HTTP attempt.
    pub attempt_timeout: Duration,
    /// One call, all its retries included.
    pub operation_timeout: Duration,
    /// First retry waits up to this (randomised), doubling per retry. Short: callers with a
    /// leadership deadline bound each call tightly and retry at their own level.
    pub initial_backoff: Duration,
}

impl Default for SdkSettings {
    fn default() -> Self {
        SdkSettings {
            max_attempts: 3,
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(100),
        }
    }
}

/// Loads the shared SDK configuration for `region` (from `aws.region` or IMDS; an explicit
/// region keeps the SDK from asking IMDS again). Credentials come from the default chain:
/// environment, profile, then the instance role.
pub async fn sdk_config(region: &str, settings: &SdkSettings) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(settings.max_attempts.max(1))
                .with_initial_backoff(settings.initial_backoff),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout)
                .operation_attempt_timeout(settings.attempt_timeout)
                .operation_timeout(settings.operation_timeout)
                .build(),
        )
        .load()
        .await
}

/// The EC2 error code (`RouteAlreadyExists`, `InvalidRoute.NotFound`, ...), if EC2 answered.
pub(crate) fn error_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(_) => err.code(),
        _ => None,
    }
}

/// One line for logs and reports: the code and message EC2 gave, or the transport failure
/// with its causes. SDK errors carry no credentials, so this is safe to log.
pub(crate) fn describe_sdk_error<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(_) => match (err.code(), err.message()) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            (Some(code), None) => code.to_string(),
            _ => DisplayErrorContext(err).to_string(),
        },
        SdkError::TimeoutError(_) => "timed out".to_string(),
        _ => DisplayErrorContext(err).to_string(),
    }
}
