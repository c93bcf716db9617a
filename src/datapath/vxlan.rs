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
}

/// Creates, adopts or repairs the VXLAN device for `node_ip`.
pub async fn ensure(nl: &Netlink, cfg: &VxlanConfig, node_ip: Ipv4Addr) -> Result<Device> {
    let underlay = nl.link_with_address(node_ip).await?.ok_or_else(|| {
        DatapathError::Invalid(format!(
            "gateway.node_ip {node_ip} is not assigned to any interface on this host; it must be this gateway's own VPC address"
        ))
    })?;
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => underlay
            .mtu
            .checked_sub(VXLAN_OVERHEAD)
            .filter(|m| *m >= 68)
            .ok_or_else(|| {
                DatapathError::Invalid(format!(
                    "underlay {} has MTU {}, too small for VXLAN; set vxlan.mtu",
                    underlay.name, underlay.mtu
                ))
            })?,
    };
    let spec = VxlanSpec {
        name: cfg.interface.clone(),
        vni: cfg.vni,
        port: cfg.port,
        local: node_ip,
        mac: Mac::for_gateway(node_ip),
        mtu,
    };

    let action = match nl.link(&spec.name).await? {
        None => {
            create(nl, &spec).await?;
            DeviceAction::Created
        }
        Some(link) => match must_recreate(&link, &spec) {
            Some(why) => {
                nl.delete_link(link.index).await?;
                create(nl, &spec).await?;
                DeviceAction::Recreated(why)
            }
            None => repair(nl, &link, &spec).await?,
        },
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
    })
}

async fn create(nl: &Netlink, spec: &VxlanSpec) -> Result<()> {
    nl.create_vxlan(spec).await?;
    let link = nl.link(&spec.name).await?.ok_or_else(|| {
        DatapathError::Invalid(format!("{} was created but cannot be found", spec.name))
    })?;
    // Per-device sysctls exist only once the device does, and must be right before the
    // first packet crosses it.
    super::sysctl::ensure_interface(&spec.name, true)?;
    nl.set_link(link.index, None, None, true).await
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

async fn repair(nl: &Netlink, link: &LinkState, spec: &VxlanSpec) -> Result<DeviceAction> {
    let mut fixed = Vec::new();
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
    super::sysctl::ensure_interface(&spec.name, true)?;
    if mac.is_some() || mtu.is_some() || !link.up {
        nl.set_link(link.index, mac, mtu, true).await?;
    }
    Ok(if fixed.is_empty() {
        DeviceAction::Adopted
    } else {
        DeviceAction::Repaired(fixed)
    })
}

fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unset".to_string(), |v| v.to_string())
}
