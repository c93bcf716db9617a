//! `[vxlan]`: the tunnel device Cilium's VTEP integration talks to.

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Validator};

/// Cilium's VTEP integration only speaks VNI 2 on UDP 8472 unless it is reconfigured too.
pub const DEFAULT_VNI: u32 = 2;
pub const DEFAULT_PORT: u16 = 8472;
pub const DEFAULT_INTERFACE: &str = "hybrid_vxlan0";
const MAX_VNI: u32 = 16_777_215;
/// IFNAMSIZ is 16 including the terminating NUL.
const MAX_IFNAME_BYTES: usize = 15;
/// VXLAN over IPv4 adds 50 bytes; anything below the IPv4 minimum cannot carry traffic.
const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65_535 - 50;
const VXLAN_OVERHEAD: u32 = crate::datapath::vxlan::VXLAN_OVERHEAD;
/// What the path to on-premises carries unless the operator knows better (Internet,
/// Direct Connect without jumbo frames); the tunnel then gets 1450.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

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

/// Integers are read as i64 so that a negative or oversized value gets our message,
/// not serde's "invalid value: integer".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVxlan {
    pub interface: Option<Spanned<String>>,
    pub vni: Option<Spanned<i64>>,
    pub port: Option<Spanned<i64>>,
    pub mtu: Option<Spanned<i64>>,
    pub underlay_mtu: Option<Spanned<i64>>,
}

impl Validator<'_> {
    pub(super) fn vxlan(&self, raw: RawVxlan) -> Result<VxlanConfig, ConfigError> {
        let interface = match raw.interface {
            None => DEFAULT_INTERFACE.to_string(),
            Some(name) => self.check("vxlan.interface", name, |name| {
                check_ifname(&name).map(|()| name)
            })?,
        };
        let vni = match raw.vni {
            None => DEFAULT_VNI,
            Some(v) => self.check("vxlan.vni", v, |v| {
                u32::try_from(v)
                    .ok()
                    .filter(|v| (1..=MAX_VNI).contains(v))
                    .ok_or_else(|| {
                        format!(
                            "a VNI is 1..={MAX_VNI}; Cilium's VTEP integration uses {DEFAULT_VNI}"
                        )
                    })
            })?,
        };
        let port = match raw.port {
            None => DEFAULT_PORT,
            Some(p) => self.check("vxlan.port", p, |p| {
                u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("a UDP port is 1..=65535; Cilium's VXLAN tunnel uses {DEFAULT_PORT}")
                })
            })?,
        };
        let mtu = match raw.mtu {
            None => None,
            Some(m) => self.check("vxlan.mtu", m, |m| match m {
                0 => Ok(None),
                m => u32::try_from(m)
                    .ok()
                    .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
                    .map(Some)
                    .ok_or_else(|| {
                        format!("use 0 for underlay_mtu - 50, or a value in {MIN_MTU}..={MAX_MTU}")
                    }),
            })?,
        };
        let underlay_mtu = match raw.underlay_mtu {
            None => DEFAULT_UNDERLAY_MTU,
            Some(m) => self.check("vxlan.underlay_mtu", m, |m| {
                let (lo, hi) = (MIN_MTU + VXLAN_OVERHEAD, MAX_MTU + VXLAN_OVERHEAD);
                u32::try_from(m)
                    .ok()
                    .filter(|m| (lo..=hi).contains(m))
                    .ok_or_else(|| {
                        format!("the path MTU to the hybrid nodes is {lo}..={hi}: 1500 for the Internet or Direct Connect, 8500 for jumbo Direct Connect / Transit Gateway, about 1400 through an IPsec VPN")
                    })
            })?,
        };
        Ok(VxlanConfig {
            interface,
            vni,
            port,
            mtu,
            underlay_mtu,
        })
    }
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
