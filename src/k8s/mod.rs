//! The Kubernetes side: the client, the CiliumNode watch that feeds the datapath, and the
//! CiliumVTEPConfig the leader owns.

pub mod cilium_nodes;
pub mod client;
pub mod eks_token;
pub mod vtep_config;
pub mod vtep_observer;
pub mod vtep_shape;

/// A Kubernetes API call that failed or did not answer in time.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// Runs `fut` under `limit`: every API call the daemon makes has a deadline.
pub(crate) async fn timed<T>(
    limit: std::time::Duration,
    fut: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(CallError::Timeout(limit)),
    }
}
