//! `[gateway]`: this gateway's address and the two address spaces it connects.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

use super::validate::Span;
use super::{ConfigError, Validator};

/// Cilium keeps at most this many VTEP entries, one per VPC CIDR.
pub const MAX_VPC_CIDRS: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// `None` means "ask IMDS for local-ipv4".
    pub node_ip: Option<Ipv4Addr>,
    pub vpc_cidrs: Vec<Ipv4Net>,
    pub hybrid_pod_cidrs: Vec<Ipv4Net>,
    /// The on-premises node networks (EKS `remoteNodeNetworks`); empty: not checked.
    pub remote_node_cidrs: Vec<Ipv4Net>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub node_ip: Option<Spanned<String>>,
    pub vpc_cidrs: Spanned<Vec<Spanned<String>>>,
    pub hybrid_pod_cidrs: Spanned<Vec<Spanned<String>>>,
    pub remote_node_cidrs: Option<Spanned<Vec<Spanned<String>>>>,
}

impl Validator<'_> {
    pub(super) fn gateway(&self, raw: RawGateway) -> Result<GatewayConfig, ConfigError> {
        let node_ip = raw
            .node_ip
            .map(|ip| {
                self.check("gateway.node_ip", ip, |text| {
                    text.parse::<Ipv4Addr>().map_err(|_| "not an IPv4 address; write it like \"10.250.3.111\", or remove the key to use the instance's local-ipv4".to_string())
                })
            })
            .transpose()?;

        let vpc_cidrs = self.cidr_list("gateway.vpc_cidrs", raw.vpc_cidrs)?;
        if vpc_cidrs.len() > MAX_VPC_CIDRS {
            return Err(self.invalid(
                "gateway.vpc_cidrs",
                &vpc_cidrs[MAX_VPC_CIDRS].1,
                vpc_cidrs[MAX_VPC_CIDRS].0,
                format!("Cilium accepts at most {MAX_VPC_CIDRS} VTEP CIDRs; merge VPC CIDRs into fewer, larger ones"),
            ));
        }
        let pod_cidrs = self.cidr_list("gateway.hybrid_pod_cidrs", raw.hybrid_pod_cidrs)?;
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
        self.one_prefix_length(&vpc_cidrs)?;
        // Optional: without it, node addresses are only checked against the VPC, the pod
        // ranges and this host. With it, a CiliumNode cannot point the tunnel anywhere else.
        let remote_node_cidrs = match raw.remote_node_cidrs {
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
        Ok(GatewayConfig {
            node_ip,
            vpc_cidrs: vpc_cidrs.into_iter().map(|(n, _)| n).collect(),
            hybrid_pod_cidrs: pod_cidrs.into_iter().map(|(n, _)| n).collect(),
            remote_node_cidrs: remote_node_cidrs.into_iter().map(|(n, _)| n).collect(),
        })
    }

    fn cidr_list(
        &self,
        key: &str,
        list: Spanned<Vec<Spanned<String>>>,
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
                let net = self.check(&format!("{key}[{i}]"), item, |text| parse_cidr(&text))?;
                Ok((net, span))
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

    /// Cilium masks every destination with one VTEP mask before looking it up, so all VTEP
    /// CIDRs must share one prefix length.
    fn one_prefix_length(&self, vpc_cidrs: &[(Ipv4Net, Span)]) -> Result<(), ConfigError> {
        let first = vpc_cidrs[0].0;
        match vpc_cidrs
            .iter()
            .find(|(n, _)| n.prefix_len() != first.prefix_len())
        {
            None => Ok(()),
            Some((odd, span)) => Err(self.invalid(
                "gateway.vpc_cidrs",
                span,
                format!("\"{odd}\""),
                format!(
                    "has prefix length /{}, but {first} is /{}: Cilium applies one mask to all VTEP CIDRs; list the VPC's ranges split to one length",
                    odd.prefix_len(),
                    first.prefix_len()
                ),
            )),
        }
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
