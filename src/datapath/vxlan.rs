//! The `hybrid_vxlan0` device: created once, adopted on every later start, repaired in
//! place where the kernel allows. Recreating it drops traffic, so it is the last resort.

use std::fmt;
use std::net::Ipv4Addr;

use super::error::{DatapathError, Result};
use super::mac::Mac;
use super::netlink::{LinkState, Netlink, VxlanSpec};
use crate::config::VxlanConfig;

/// VXLAN over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// The alias (`ip link show` prints it) that marks the device as created by this daemon:
/// only a device carrying it may ever be deleted or rewritten.
pub const DEVICE_ALIAS: &str = "hybrid-gateway";

/// What had to be done to get the device right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAction {
    Created,
    /// Found exactly as wanted; nothing was written.
    Adopted,
    /// Fixed in place; each entry says what was wrong.
    Repaired(Vec<String>),
    /// Deleted and created again because the kernel cannot change this in place.
    Recreated(String),
}

impl fmt::Display for DeviceAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceAction::Created => f.write_str("created"),
            DeviceAction::Adopted => f.write_str("adopted unchanged"),
            DeviceAction::Repaired(what) => write!(f, "repaired in place ({})", what.join("; ")),
            DeviceAction::Recreated(why) => write!(f, "recreated ({why})"),
        }
    }
}

/// The device as it stands after [`ensure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub name: String,
    pub mac: Mac,
    pub mtu: u32,
    pub underlay: String,
    pub action: DeviceAction,
    /// Per-device sysctls `ensure` had to change (forwarding, rp_filter, IPv6 off).
    pub sysctls: Vec<super::SysctlChange>,
    /// Set when the tunnel MTU is more than the NIC can carry (logged once at start).
    pub mtu_warning: Option<String>,
}

/// Creates, adopts or repairs the VXLAN device for `node_ip`.
pub async fn ensure(nl: &Netlink, cfg: &VxlanConfig, node_ip: Ipv4Addr) -> Result<Device> {
    let underlay = nl.link_with_address(node_ip).await?.ok_or_else(|| {
        DatapathError::Invalid(format!(
            "gateway.node_ip {node_ip} is not assigned to any interface on this host; it must be this gateway's own VPC address"
        ))
    })?;
    let (mtu, mtu_warning) = tunnel_mtu(cfg, &underlay.name, underlay.mtu);
    let spec = VxlanSpec {
        name: cfg.interface.clone(),
        vni: cfg.vni,
        port: cfg.port,
        local: node_ip,
        mac: Mac::for_gateway(node_ip),
        mtu,
    };

    let (action, sysctls) = match nl.link(&spec.name).await? {
        None => (DeviceAction::Created, create(nl, &spec).await?),
        Some(link) => {
            let mut marked = Vec::new();
            match ownership(&link, &spec) {
                Ownership::Ours => {}
                Ownership::Unmarked => {
                    // Created by a version that did not mark its device yet: only this
                    // daemon gives a VXLAN device the MAC derived from node_ip.
                    nl.set_alias(link.index, DEVICE_ALIAS).await?;
                    marked.push(format!("marked as ours (alias {DEVICE_ALIAS:?})"));
                }
                Ownership::Foreign(what) => {
                    return Err(DatapathError::ForeignDevice {
                        name: spec.name.clone(),
                        what,
                    })
                }
            }
            match must_recreate(&link, &spec) {
                Some(why) => {
                    nl.delete_link(link.index).await?;
                    (DeviceAction::Recreated(why), create(nl, &spec).await?)
                }
                None => repair(nl, &link, &spec, marked).await?,
            }
        }
    };

    let link = nl.link(&spec.name).await?.ok_or_else(|| {
        DatapathError::Invalid(format!("{} vanished right after it was set up", spec.name))
    })?;
    if link.mtu != spec.mtu {
        tracing::warn!(device = %spec.name, wanted = spec.mtu, actual = link.mtu, "the kernel did not accept the MTU; set vxlan.mtu to at most the underlay MTU - 50");
    }
    Ok(Device {
        index: link.index,
        name: link.name,
        mac: link.mac.unwrap_or(spec.mac),
        mtu: link.mtu,
        underlay: underlay.name,
        action,
        sysctls,
        mtu_warning,
    })
}

/// The tunnel's MTU: `vxlan.mtu` if set, else `vxlan.underlay_mtu` - 50 — the path to the
/// hybrid nodes decides, not this NIC (EC2's 9001 would give 8951, and large packets would
/// die on a 1500 VPN or Direct Connect link where PMTU discovery is often blocked). Also
/// says when the NIC itself cannot carry a full tunnel packet in one frame.
pub fn tunnel_mtu(cfg: &VxlanConfig, nic: &str, nic_mtu: u32) -> (u32, Option<String>) {
    let mtu = cfg
        .mtu
        .unwrap_or_else(|| cfg.underlay_mtu.saturating_sub(VXLAN_OVERHEAD));
    let room = nic_mtu.saturating_sub(VXLAN_OVERHEAD);
    let warning = (mtu > room).then(|| {
        format!(
            "tunnel MTU {mtu} is more than {nic} (MTU {nic_mtu}) can carry once encapsulated ({room}); \
             packets above {room} bytes will be fragmented or dropped: lower vxlan.underlay_mtu or vxlan.mtu"
        )
    });
    (mtu, warning)
}

/// Whose device holds the configured name.
#[derive(Debug, PartialEq, Eq)]
enum Ownership {
    Ours,
    Unmarked,
    /// Someone else's; the string describes it for the operator.
    Foreign(String),
}

fn ownership(link: &LinkState, spec: &VxlanSpec) -> Ownership {
    if link.alias.as_deref() == Some(DEVICE_ALIAS) {
        return Ownership::Ours;
    }
    match &link.vxlan {
        Some(_) if link.mac == Some(spec.mac) => Ownership::Unmarked,
        Some(vx) => Ownership::Foreign(format!(
            "a VXLAN device (VNI {}, port {}, MAC {})",
            opt(vx.vni),
            opt(vx.port),
            opt(link.mac)
        )),
        None => Ownership::Foreign(match &link.kind {
            Some(kind) => format!("a {kind} device"),
            None => "a device".to_string(),
        }),
    }
}

async fn create(nl: &Netlink, spec: &VxlanSpec) -> Result<Vec<super::SysctlChange>> {
    if let Err(e) = nl.create_vxlan(spec).await {
        return Err(explain_create_error(nl, spec, e).await);
    }
    let link = nl.link(&spec.name).await?.ok_or_else(|| {
        DatapathError::Invalid(format!("{} was created but cannot be found", spec.name))
    })?;
    nl.set_alias(link.index, DEVICE_ALIAS).await?;
    // Per-device sysctls exist only once the device does, and must be right before the
    // first packet crosses it.
    let sysctls = super::sysctl::ensure_interface(&spec.name, true)?;
    nl.set_link(link.index, None, None, true).await?;
    Ok(sysctls)
}

/// The kernel answers a bare "File exists" when another VXLAN device already has our VNI
/// and port: name that device.
async fn explain_create_error(nl: &Netlink, spec: &VxlanSpec, e: DatapathError) -> DatapathError {
    if e.errno() != Some(libc::EEXIST) {
        return e;
    }
    let Ok(links) = nl.links().await else {
        return e;
    };
    let other = links.into_iter().find(|l| {
        l.name != spec.name
            && l.vxlan
                .as_ref()
                .is_some_and(|vx| vx.vni == Some(spec.vni) && vx.port == Some(spec.port))
    });
    match other {
        Some(other) => DatapathError::VniInUse {
            name: spec.name.clone(),
            other: other.name,
            vni: spec.vni,
            port: spec.port,
            source: Box::new(e),
        },
        None => e,
    }
}

/// Attributes Linux refuses to change on a live VXLAN device.
fn must_recreate(link: &LinkState, spec: &VxlanSpec) -> Option<String> {
    let Some(vx) = &link.vxlan else {
        return Some(format!("{} exists but is not a VXLAN device", spec.name));
    };
    if vx.vni != Some(spec.vni) {
        return Some(format!(
            "VNI is {}, want {}; the kernel cannot change a VNI in place",
            opt(vx.vni),
            spec.vni
        ));
    }
    if vx.port != Some(spec.port) {
        return Some(format!(
            "UDP port is {}, want {}; the kernel cannot change the port in place",
            opt(vx.port),
            spec.port
        ));
    }
    None
}

async fn repair(
    nl: &Netlink,
    link: &LinkState,
    spec: &VxlanSpec,
    mut fixed: Vec<String>,
) -> Result<(DeviceAction, Vec<super::SysctlChange>)> {
    let vx = link.vxlan.clone().unwrap_or_default();
    if vx.local != Some(spec.local) || vx.learning != Some(false) {
        if vx.local != Some(spec.local) {
            fixed.push(format!(
                "local address was {}, now {}",
                opt(vx.local),
                spec.local
            ));
        }
        if vx.learning != Some(false) {
            fixed.push("learning was on, now off".to_string());
        }
        nl.change_vxlan(link.index, spec).await?;
    }
    let mac = (link.mac != Some(spec.mac)).then_some(spec.mac);
    let mtu = (link.mtu != spec.mtu).then_some(spec.mtu);
    if let Some(m) = mac {
        fixed.push(format!("MAC was {}, now {m}", opt(link.mac)));
    }
    if let Some(m) = mtu {
        fixed.push(format!("MTU was {}, now {m}", link.mtu));
    }
    if !link.up {
        fixed.push("was down, now up".to_string());
    }
    let sysctls = super::sysctl::ensure_interface(&spec.name, true)?;
    if mac.is_some() || mtu.is_some() || !link.up {
        nl.set_link(link.index, mac, mtu, true).await?;
    }
    let action = if fixed.is_empty() {
        DeviceAction::Adopted
    } else {
        DeviceAction::Repaired(fixed)
    };
    Ok((action, sysctls))
}

fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unset".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mtu: Option<u32>, underlay_mtu: u32) -> VxlanConfig {
        VxlanConfig {
            interface: "hybrid_vxlan0".into(),
            vni: 2,
            port: 8472,
            mtu,
            underlay_mtu,
        }
    }

    #[test]
    fn the_path_not_the_nic_sets_the_tunnel_mtu() {
        // EC2 ENA (9001) with the default path MTU: 1450, not 8951.
        assert_eq!(tunnel_mtu(&cfg(None, 1500), "ens5", 9001), (1450, None));
        // Jumbo Direct Connect / Transit Gateway, IPsec VPN.
        assert_eq!(tunnel_mtu(&cfg(None, 8500), "ens5", 9001), (8450, None));
        assert_eq!(tunnel_mtu(&cfg(None, 1400), "ens5", 9001), (1350, None));
        // An explicit MTU wins over the path's.
        assert_eq!(
            tunnel_mtu(&cfg(Some(1300), 8500), "ens5", 9001),
            (1300, None)
        );
    }

    #[test]
    fn a_tunnel_mtu_the_nic_cannot_carry_is_warned_about() {
        let (mtu, w) = tunnel_mtu(&cfg(None, 8500), "eth0", 1500);
        assert_eq!(mtu, 8450);
        let w = w.expect("a warning");
        assert!(
            w.contains("tunnel MTU 8450") && w.contains("eth0 (MTU 1500)") && w.contains("(1450)"),
            "{w}"
        );
        // Exactly at the limit is fine.
        assert_eq!(tunnel_mtu(&cfg(Some(1450), 1500), "eth0", 1500).1, None);
        assert!(tunnel_mtu(&cfg(Some(1451), 1500), "eth0", 1500).1.is_some());
    }
}
