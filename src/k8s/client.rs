//! One Kubernetes client for the daemon, from whichever credentials the config names:
//! a kubeconfig file, EKS IAM authentication, or the in-cluster service account.

use std::time::Duration;

use std::sync::Arc;

use base64::Engine as _;
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};

use super::eks_token::{EksAuthLayer, EksTokenSource};
use crate::config::EksConfig;

use crate::config::KubernetesConfig;

/// Long enough for a watch that is idle between bookmarks; request deadlines are enforced
/// per call with `tokio::time::timeout` on top.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes credentials: set kubernetes.kubeconfig or [kubernetes.eks], or run with a service account ({0})")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("EKS authentication: {0}")]
    EksSetup(&'static str),
    #[error("EKS authentication: {0}")]
    EksToken(#[source] super::eks_token::EksTokenError),
    #[error("EKS authentication: reading kubernetes.eks.ca_file {}: {source}", path.display())]
    EksCa {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the Kubernetes client: {0}")]
    Build(#[source] kube::Error),
}

/// Builds the client. The rustls crypto provider must be installed first (see
/// [`install_crypto_provider`]).
pub async fn connect(
    cfg: &KubernetesConfig,
    aws: Option<&aws_config::SdkConfig>,
) -> Result<kube::Client, ClientError> {
    install_crypto_provider();
    if let Some(eks) = &cfg.eks {
        return eks_client(eks, cfg.request_timeout, aws).await;
    }
    let mut config = match &cfg.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| ClientError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => kube::Config::incluster().map_err(ClientError::InCluster)?,
    };
    apply_timeouts(&mut config, cfg.request_timeout);
    kube::Client::try_from(config).map_err(ClientError::Build)
}

/// EKS: the cluster endpoint and CA from the config, and a bearer token minted from the
/// instance's AWS credentials by a layer on every request.
async fn eks_client(
    eks: &EksConfig,
    request_timeout: Duration,
    aws: Option<&aws_config::SdkConfig>,
) -> Result<kube::Client, ClientError> {
    let aws = aws.ok_or(ClientError::EksSetup("no AWS configuration loaded"))?;
    let region = eks
        .region
        .clone()
        .or_else(|| aws.region().map(|r| r.to_string()))
        .ok_or(ClientError::EksSetup(
            "no AWS region for STS: set kubernetes.eks.region or aws.region",
        ))?;
    let credentials = aws
        .credentials_provider()
        .ok_or(ClientError::EksSetup("no AWS credentials provider"))?;
    let source = Arc::new(
        EksTokenSource::new(&eks.cluster_name, region, credentials)
            .map_err(ClientError::EksToken)?,
    );
    let ca_pem = std::fs::read(&eks.ca_file).map_err(|source| ClientError::EksCa {
        path: eks.ca_file.clone(),
        source,
    })?;
    let mut config = eks_config(&eks.endpoint, &ca_pem, &eks.cluster_name)
        .await
        .map_err(|source| ClientError::Kubeconfig {
            path: eks.ca_file.display().to_string(),
            source,
        })?;
    apply_timeouts(&mut config, request_timeout);
    Ok(kube::client::ClientBuilder::try_from(config)
        .map_err(ClientError::Build)?
        .with_layer(&EksAuthLayer::new(source))
        .build())
}

/// The client configuration for an EKS cluster: an in-memory kubeconfig with the endpoint
/// and CA, and a user without credentials of kube's own (they would overwrite the token
/// the [`EksAuthLayer`] adds to every request).
pub(super) async fn eks_config(
    endpoint: &str,
    ca_pem: &[u8],
    cluster_name: &str,
) -> Result<kube::Config, kube::config::KubeconfigError> {
    let name = cluster_name.to_string();
    let kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: name.clone(),
            cluster: Some(Cluster {
                server: Some(endpoint.to_string()),
                certificate_authority_data: Some(
                    base64::engine::general_purpose::STANDARD.encode(ca_pem),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: name.clone(),
            auth_info: Some(AuthInfo::default()),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: name.clone(),
            context: Some(Context {
                cluster: name.clone(),
                user: Some(name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some(name),
        ..Default::default()
    };
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await
}

pub(super) fn apply_timeouts(config: &mut kube::Config, request_timeout: Duration) {
    config.connect_timeout = Some(request_timeout);
    config.read_timeout = Some(READ_TIMEOUT.max(request_timeout));
    config.write_timeout = Some(request_timeout);
}

/// rustls needs exactly one process-wide crypto provider; installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
