//! How operators see the daemon: logs, Prometheus metrics, health and status endpoints.

pub mod explain;
pub mod logging;
pub mod metrics;
mod process;
pub mod report;
pub mod server;
pub mod status;
pub mod status_client;

pub use metrics::{GatewayInfo, Metrics};
pub use report::Telemetry;
pub use status::{DaemonStatus, StatusSnapshot};
