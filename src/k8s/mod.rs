//! The Kubernetes side: the client, the CiliumNode watch that feeds the datapath, and the
//! CiliumVTEPConfig the leader owns.

pub mod cilium_nodes;
pub mod client;
pub mod eks_token;
pub mod vtep_config;

/// Run `fut` under `limit`, turning an elapsed deadline into a kube-style error message.
pub(crate) async fn timed<T>(
    limit: std::time::Duration,
    fut: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}
