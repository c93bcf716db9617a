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

#[derive(Debug, Clone, PartialEq)]
pub struct VxlanConfig {
    pub interface: String,
    pub vni: u32,
    pub port: u16,
    /// `None` means "underlay MTU - 50".
    pub mtu: Option<u32>,
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
                        format!("use 0 for underlay MTU - 50, or a value in {MIN_MTU}..={MAX_MTU}")
                    }),
            })?,
        };
        Ok(VxlanConfig {
            interface,
            vni,
            port,
            mtu,
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
