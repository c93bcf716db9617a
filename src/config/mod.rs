//! The daemon's one TOML file: parsing, defaults and validation.
//!
//! Every rejection names the key, the value, the line and what to do about it, because the
//! person reading it is an operator looking at `journalctl` or an Ansible `validate:` failure.

mod aws;
mod election;
mod error;
mod kubernetes;
mod raw;
mod telemetry;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;

pub use aws::{AwsConfig, RouteTableTag, Takeover};
pub use election::{DynamoDbLockConfig, ElectionConfig, JITTER_FACTOR};
pub use error::ConfigError;
pub use kubernetes::{EksConfig, KubernetesConfig};
use raw::{RawConfig, Span};
pub use telemetry::TelemetryConfig;

pub const DEFAULT_PATH: &str = "/etc/hybrid-gateway/config.toml";

/// Cilium's VTEP integration only speaks VNI 2 on UDP 8472 unless it is reconfigured too.
pub const DEFAULT_VNI: u32 = 2;
pub const DEFAULT_PORT: u16 = 8472;
pub const DEFAULT_INTERFACE: &str = "hybrid_vxlan0";
/// Cilium keeps at most this many VTEP entries, one per VPC CIDR.
pub const MAX_VPC_CIDRS: usize = 8;
const MAX_VNI: u32 = 16_777_215;
/// IFNAMSIZ is 16 including the terminating NUL.
const MAX_IFNAME_BYTES: usize = 15;
/// VXLAN over IPv4 adds 50 bytes; anything below the IPv4 minimum cannot carry traffic.
const MIN_MTU: u32 = 68;
const VXLAN_OVERHEAD: u32 = crate::datapath::vxlan::VXLAN_OVERHEAD;
const MAX_MTU: u32 = 65_535 - 50;
/// What the path to on-premises carries unless the operator knows better (Internet,
/// Direct Connect without jumbo frames); the tunnel then gets 1450.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// Validated configuration. Construct with [`Config::load`] or [`Config::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub gateway: GatewayConfig,
    pub vxlan: VxlanConfig,
    pub datapath: DatapathConfig,
    pub kubernetes: KubernetesConfig,
    pub election: ElectionConfig,
    pub telemetry: TelemetryConfig,
    pub aws: AwsConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// `None` means "ask IMDS for local-ipv4".
    pub node_ip: Option<Ipv4Addr>,
    pub vpc_cidrs: Vec<Ipv4Net>,
    pub hybrid_pod_cidrs: Vec<Ipv4Net>,
    /// The on-premises node networks (EKS `remoteNodeNetworks`); empty: not checked.
    pub remote_node_cidrs: Vec<Ipv4Net>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VxlanConfig {
    pub interface: String,
    pub vni: u32,
    pub port: u16,
    /// `None` means "`underlay_mtu` - 50".
    pub mtu: Option<u32>,
    /// The path MTU between this gateway and the hybrid nodes (VPN, Direct Connect,
    /// Transit Gateway), not the NIC's: EC2's 9001 rarely survives the way on premises.
    pub underlay_mtu: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatapathConfig {
    /// How often the kernel state is re-read and repaired even when nothing changed.
    pub resync_interval: Duration,
    /// The daemon's own nftables table (VXLAN only from nodes, tunnel only to the VPC, MSS
    /// clamping). On by default; off removes the table.
    pub filter: bool,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::syntax(path, text, &e))?;
        Validator { path, text }.validate(raw)
    }

    /// One line for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let join = |v: &[Ipv4Net]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{}: ok: node_ip={} vpc_cidrs={} hybrid_pod_cidrs={} vxlan={} vni={} port={} mtu={}",
            self.path.display(),
            self.gateway
                .node_ip
                .map_or_else(|| "imds".to_string(), |ip| ip.to_string()),
            join(&self.gateway.vpc_cidrs),
            join(&self.gateway.hybrid_pod_cidrs),
            self.vxlan.interface,
            self.vxlan.vni,
            self.vxlan.port,
            self.vxlan.mtu.map_or_else(
                || format!(
                    "{} (underlay_mtu {})",
                    self.vxlan.underlay_mtu - VXLAN_OVERHEAD,
                    self.vxlan.underlay_mtu
                ),
                |m| m.to_string()
            ),
        )
    }
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    fn invalid(
        &self,
        key: &str,
        span: &Span,
        value: impl ToString,
        why: impl ToString,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: line_of(self.text, span.start),
            key: key.to_string(),
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    /// A string that must not be empty; `why` tells what to put there.
    pub(super) fn non_empty(
        &self,
        key: &str,
        value: toml::Spanned<String>,
        why: &str,
    ) -> Result<String, ConfigError> {
        let span = value.span();
        let v = value.into_inner();
        if v.trim().is_empty() {
            return Err(self.invalid(key, &span, "\"\"", format!("cannot be empty: {why}")));
        }
        Ok(v)
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let gateway = raw.gateway;
        let node_ip = gateway
            .node_ip
            .map(|ip| {
                let span = ip.span();
                let text = ip.into_inner();
                text.parse::<Ipv4Addr>().map_err(|_| {
                    self.invalid("gateway.node_ip", &span, format!("{text:?}"), "not an IPv4 address; write it like \"10.250.3.111\", or remove the key to use the instance's local-ipv4")
                })
            })
            .transpose()?;

        let vpc_cidrs = self.cidr_list("gateway.vpc_cidrs", gateway.vpc_cidrs)?;
        if vpc_cidrs.len() > MAX_VPC_CIDRS {
            return Err(self.invalid(
                "gateway.vpc_cidrs",
                &vpc_cidrs[MAX_VPC_CIDRS].1,
                vpc_cidrs[MAX_VPC_CIDRS].0,
                format!("Cilium accepts at most {MAX_VPC_CIDRS} VTEP CIDRs; merge VPC CIDRs into fewer, larger ones"),
            ));
        }
        let pod_cidrs = self.cidr_list("gateway.hybrid_pod_cidrs", gateway.hybrid_pod_cidrs)?;
        self.no_overlap(
            "gateway.vpc_cidrs",
            &vpc_cidrs,
            "gateway.vpc_cidrs",
            &vpc_cidrs,
        )?;
        self.no_overlap(
            "gateway.hybrid_pod_cidrs",
            &pod_cidrs,
            "gateway.hybrid_pod_cidrs",
            &pod_cidrs,
        )?;
        self.no_overlap(
            "gateway.hybrid_pod_cidrs",
            &pod_cidrs,
            "gateway.vpc_cidrs",
            &vpc_cidrs,
        )?;
        // Optional: without it, node addresses are only checked against the VPC, the pod
        // ranges and this host. With it, a CiliumNode cannot point the tunnel anywhere else.
        let remote_node_cidrs = match gateway.remote_node_cidrs {
            None => Vec::new(),
            Some(list) => self.cidr_list("gateway.remote_node_cidrs", list)?,
        };
        self.no_overlap(
            "gateway.remote_node_cidrs",
            &remote_node_cidrs,
            "gateway.vpc_cidrs",
            &vpc_cidrs,
        )?;
        self.no_overlap(
            "gateway.remote_node_cidrs",
            &remote_node_cidrs,
            "gateway.hybrid_pod_cidrs",
            &pod_cidrs,
        )?;
        // Cilium masks every destination with one VTEP mask before looking it up, so all
        // VTEP CIDRs must share one prefix length.
        if let Some((odd, span)) = vpc_cidrs
            .iter()
            .find(|(n, _)| n.prefix_len() != vpc_cidrs[0].0.prefix_len())
        {
            return Err(self.invalid(
                "gateway.vpc_cidrs",
                span,
                format!("\"{odd}\""),
                format!(
                    "has prefix length /{}, but {} is /{}: Cilium applies one mask to all VTEP CIDRs; list the VPC's ranges split to one length",
                    odd.prefix_len(),
                    vpc_cidrs[0].0,
                    vpc_cidrs[0].0.prefix_len()
                ),
            ));
        }

        let vxlan = raw.vxlan.unwrap_or_default();
        let interface = match vxlan.interface {
            None => DEFAULT_INTERFACE.to_string(),
            Some(name) => {
                let span = name.span();
                let name = name.into_inner();
                if let Err(why) = check_ifname(&name) {
                    return Err(self.invalid("vxlan.interface", &span, format!("{name:?}"), why));
                }
                name
            }
        };
        let vni = match vxlan.vni {
            None => DEFAULT_VNI,
            Some(v) => {
                let span = v.span();
                let v = v.into_inner();
                if !(1..=i64::from(MAX_VNI)).contains(&v) {
                    return Err(self.invalid(
                        "vxlan.vni",
                        &span,
                        v,
                        format!(
                            "a VNI is 1..={MAX_VNI}; Cilium's VTEP integration uses {DEFAULT_VNI}"
                        ),
                    ));
                }
                v as u32
            }
        };
        let port = match vxlan.port {
            None => DEFAULT_PORT,
            Some(p) => {
                let span = p.span();
                let p = p.into_inner();
                if !(1..=65_535).contains(&p) {
                    return Err(self.invalid(
                        "vxlan.port",
                        &span,
                        p,
                        format!(
                            "a UDP port is 1..=65535; Cilium's VXLAN tunnel uses {DEFAULT_PORT}"
                        ),
                    ));
                }
                p as u16
            }
        };
        let mtu = match vxlan.mtu {
            None => None,
            Some(m) => {
                let span = m.span();
                let m = m.into_inner();
                if m == 0 {
                    None
                } else if !(i64::from(MIN_MTU)..=i64::from(MAX_MTU)).contains(&m) {
                    return Err(self.invalid(
                        "vxlan.mtu",
                        &span,
                        m,
                        format!("use 0 for underlay_mtu - 50, or a value in {MIN_MTU}..={MAX_MTU}"),
                    ));
                } else {
                    Some(m as u32)
                }
            }
        };

        let underlay_mtu = match vxlan.underlay_mtu {
            None => DEFAULT_UNDERLAY_MTU,
            Some(m) => {
                let span = m.span();
                let m = m.into_inner();
                let (lo, hi) = (MIN_MTU + VXLAN_OVERHEAD, MAX_MTU + VXLAN_OVERHEAD);
                if !(i64::from(lo)..=i64::from(hi)).contains(&m) {
                    return Err(self.invalid(
                        "vxlan.underlay_mtu",
                        &span,
                        m,
                        format!("the path MTU to the hybrid nodes is {lo}..={hi}: 1500 for the Internet or Direct Connect, 8500 for jumbo Direct Connect / Transit Gateway, about 1400 through an IPsec VPN"),
                    ));
                }
                m as u32
            }
        };

        let datapath = raw.datapath.unwrap_or_default();
        let resync_interval = match datapath.resync_interval {
            None => Duration::from_secs(30),
            Some(d) => self.duration("datapath.resync_interval", d, Duration::from_secs(1))?,
        };

        let kubernetes = self.kubernetes(raw.kubernetes.unwrap_or_default())?;
        let election = self.election(raw.election.unwrap_or_default())?;
        let telemetry = self.telemetry(raw.metrics, raw.health, raw.log)?;
        let aws = self.aws(raw.aws.unwrap_or_default())?;

        Ok(Config {
            path: self.path.to_path_buf(),
            gateway: GatewayConfig {
                node_ip,
                vpc_cidrs: vpc_cidrs.into_iter().map(|(n, _)| n).collect(),
                hybrid_pod_cidrs: pod_cidrs.into_iter().map(|(n, _)| n).collect(),
                remote_node_cidrs: remote_node_cidrs.into_iter().map(|(n, _)| n).collect(),
            },
            vxlan: VxlanConfig {
                interface,
                vni,
                port,
                mtu,
                underlay_mtu,
            },
            datapath: DatapathConfig {
                resync_interval,
                filter: datapath.filter.unwrap_or(true),
            },
            kubernetes,
            election,
            telemetry,
            aws,
        })
    }

    fn cidr_list(
        &self,
        key: &str,
        list: toml::Spanned<Vec<toml::Spanned<String>>>,
    ) -> Result<Vec<(Ipv4Net, Span)>, ConfigError> {
        let list_span = list.span();
        let list = list.into_inner();
        if list.is_empty() {
            return Err(self.invalid(
                key,
                &list_span,
                "[]",
                "at least one CIDR is required, e.g. [\"10.250.0.0/16\"]",
            ));
        }
        list.into_iter()
            .enumerate()
            .map(|(i, item)| {
                let span = item.span();
                let text = item.into_inner();
                let key = format!("{key}[{i}]");
                parse_cidr(&text)
                    .map(|net| (net, span.clone()))
                    .map_err(|why| self.invalid(&key, &span, format!("{text:?}"), why))
            })
            .collect()
    }

    /// Rejects any pair from `a` × `b` that overlaps; with `a == b` it checks within one list.
    fn no_overlap(
        &self,
        a_key: &str,
        a: &[(Ipv4Net, Span)],
        b_key: &str,
        b: &[(Ipv4Net, Span)],
    ) -> Result<(), ConfigError> {
        let same = std::ptr::eq(a, b);
        for (i, (na, span)) in a.iter().enumerate() {
            for (j, (nb, _)) in b.iter().enumerate() {
                if same && j <= i {
                    continue;
                }
                if na.contains(&nb.network()) || nb.contains(&na.network()) {
                    let why = if same {
                        format!(
                            "overlaps {b_key}[{j}] = {nb}; list each range once, without overlaps"
                        )
                    } else if a_key == "gateway.remote_node_cidrs" {
                        format!("overlaps {b_key}[{j}] = {nb}; the on-premises node networks must lie outside the VPC and the hybrid pod ranges")
                    } else {
                        format!("overlaps {b_key}[{j}] = {nb}; hybrid pod CIDRs must lie outside the VPC, or VPC traffic would be sent into the tunnel")
                    };
                    return Err(self.invalid(
                        &format!("{a_key}[{i}]"),
                        span,
                        format!("\"{na}\""),
                        why,
                    ));
                }
            }
        }
        Ok(())
    }

    pub(super) fn duration(
        &self,
        key: &str,
        value: toml::Spanned<String>,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        let span = value.span();
        let text = value.into_inner();
        let d = humantime::parse_duration(&text).map_err(|e| {
            self.invalid(
                key,
                &span,
                format!("{text:?}"),
                format!("not a duration ({e}); write it like \"30s\", \"1m\" or \"500ms\""),
            )
        })?;
        if d < min {
            return Err(self.invalid(
                key,
                &span,
                format!("{text:?}"),
                format!("must be at least {}", humantime::format_duration(min)),
            ));
        }
        Ok(d)
    }
}

fn parse_cidr(text: &str) -> Result<Ipv4Net, String> {
    if text.parse::<ipnet::Ipv6Net>().is_ok() {
        return Err(
            "IPv6 CIDRs are not supported: the VXLAN gateway is IPv4-only; list IPv4 ranges only"
                .into(),
        );
    }
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| "not an IPv4 CIDR; write it like \"10.250.0.0/16\"".to_string())?;
    if net.trunc() != net {
        return Err(format!(
            "has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    if net.prefix_len() == 0 {
        return Err("0.0.0.0/0 would capture all traffic; list the actual ranges".into());
    }
    Ok(net)
}

fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an interface name cannot be empty; the default is \"hybrid_vxlan0\"".into());
    }
    if name.len() > MAX_IFNAME_BYTES {
        return Err(format!(
            "is {} bytes; Linux interface names are at most {MAX_IFNAME_BYTES} bytes",
            name.len()
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(
            "Linux interface names cannot be \".\", \"..\" or contain '/', ':' or whitespace"
                .into(),
        );
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |prefix| prefix.matches('\n').count())
        + 1
}

#[cfg(test)]
mod tests;
