//! The file's shape as serde sees it. Values that need semantic checks stay `Spanned` so a
//! rejection can name the line they are on.

use serde::Deserialize;
use toml::Spanned;

pub type Span = std::ops::Range<usize>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub gateway: RawGateway,
    pub vxlan: Option<RawVxlan>,
    pub datapath: Option<RawDatapath>,
    pub kubernetes: Option<RawKubernetes>,
    pub election: Option<RawElection>,
    pub metrics: Option<super::telemetry::RawListen>,
    pub health: Option<super::telemetry::RawListen>,
    pub log: Option<super::telemetry::RawLog>,
    pub aws: Option<super::aws::RawAws>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub node_ip: Option<Spanned<String>>,
    pub vpc_cidrs: Spanned<Vec<Spanned<String>>>,
    pub hybrid_pod_cidrs: Spanned<Vec<Spanned<String>>>,
    pub remote_node_cidrs: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Integers are read as i64 so that a negative or oversized value gets our message,
/// not serde's "invalid value: integer".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVxlan {
    pub interface: Option<Spanned<String>>,
    pub vni: Option<Spanned<i64>>,
    pub port: Option<Spanned<i64>>,
    pub mtu: Option<Spanned<i64>>,
    pub underlay_mtu: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatapath {
    pub resync_interval: Option<Spanned<String>>,
    pub filter: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    pub kubeconfig: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub eks: Option<Spanned<RawEks>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEks {
    pub cluster_name: Spanned<String>,
    pub endpoint: Spanned<String>,
    pub ca_file: Spanned<String>,
    pub region: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawElection {
    pub namespace: Option<Spanned<String>>,
    pub lease_name: Option<Spanned<String>>,
    pub identity: Option<Spanned<String>>,
    pub lease_duration: Option<Spanned<String>>,
    pub renew_deadline: Option<Spanned<String>>,
    pub retry_period: Option<Spanned<String>>,
    pub dynamodb: Option<Spanned<RawDynamoDb>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDynamoDb {
    pub table: Spanned<String>,
    pub key: Option<Spanned<String>>,
    pub lease_duration: Option<Spanned<String>>,
}
