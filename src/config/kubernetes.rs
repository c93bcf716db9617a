//! `[kubernetes]`: how the daemon reaches the API server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Validator};

#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// A kubeconfig file. Without it (and without `eks`), the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// EKS IAM authentication with the instance's own credentials, no AWS CLI needed.
    pub eks: Option<EksConfig>,
    /// Deadline of every API request (watches excepted: they are long polls by design).
    pub request_timeout: Duration,
    /// `matchLabels` of the `nodeSelector` written when the cluster serves the
    /// `cilium.io/v2alpha1` CiliumVTEPConfig (v2 has no selector). Default: hybrid nodes
    /// (`eks.amazonaws.com/compute-type = "hybrid"`); an empty table writes none (all nodes).
    pub vtep_node_selector: BTreeMap<String, String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            kubeconfig: None,
            eks: None,
            request_timeout: Duration::from_secs(5),
            vtep_node_selector: crate::k8s::vtep_config::default_node_selector(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EksConfig {
    pub cluster_name: String,
    /// `https://…eks.amazonaws.com`, as `aws eks describe-cluster` prints it.
    pub endpoint: String,
    /// PEM file with the cluster's certificate authority.
    pub ca_file: PathBuf,
    /// Region of the STS endpoint that signs the token; default: the daemon's AWS region.
    pub region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    pub kubeconfig: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub eks: Option<Spanned<RawEks>>,
    pub vtep_node_selector: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEks {
    pub cluster_name: Spanned<String>,
    pub endpoint: Spanned<String>,
    pub ca_file: Spanned<String>,
    pub region: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn kubernetes(&self, raw: RawKubernetes) -> Result<KubernetesConfig, ConfigError> {
        let mut k = KubernetesConfig::default();
        if let Some(p) = raw.kubeconfig {
            k.kubeconfig = Some(PathBuf::from(self.non_empty(
                "kubernetes.kubeconfig",
                p,
                "give a path to a kubeconfig file, or remove the key",
            )?));
        }
        if let Some(t) = raw.request_timeout {
            k.request_timeout =
                self.duration("kubernetes.request_timeout", t, Duration::from_millis(100))?;
        }
        if let Some(sel) = raw.vtep_node_selector {
            k.vtep_node_selector = sel;
        }
        if let Some(eks) = raw.eks {
            let span = eks.span();
            if k.kubeconfig.is_some() {
                return Err(self.invalid(
                    "kubernetes.eks",
                    &span,
                    "{…}",
                    "set either kubernetes.kubeconfig or [kubernetes.eks], not both: the daemon would not know which identity to use",
                ));
            }
            let eks = eks.into_inner();
            let cluster_name = self.non_empty(
                "kubernetes.eks.cluster_name",
                eks.cluster_name,
                "the EKS cluster's name, as in `aws eks list-clusters`",
            )?;
            let endpoint = self.check("kubernetes.eks.endpoint", eks.endpoint, |e| {
                if e.trim().is_empty() {
                    Err("cannot be empty: the cluster's API endpoint, https://…".into())
                } else if !e.starts_with("https://") {
                    Err("must be an https:// URL: `aws eks describe-cluster --query cluster.endpoint`".into())
                } else {
                    Ok(e)
                }
            })?;
            let ca_file = PathBuf::from(self.non_empty(
                "kubernetes.eks.ca_file",
                eks.ca_file,
                "path to the cluster CA certificate (PEM)",
            )?);
            let region = eks
                .region
                .map(|r| {
                    self.non_empty(
                        "kubernetes.eks.region",
                        r,
                        "an AWS region such as \"us-west-2\", or remove the key",
                    )
                })
                .transpose()?;
            k.eks = Some(EksConfig {
                cluster_name,
                endpoint,
                ca_file,
                region,
            });
        }
        Ok(k)
    }
}
