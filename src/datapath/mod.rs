//! The kernel side of the gateway: forwarding sysctls, the VXLAN device and the per-node
//! routes, ARP and FDB entries on it.

pub mod error;
pub mod mac;
pub mod netlink;
pub mod sysctl;
pub mod vtep;
pub mod vxlan;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

pub use error::{DatapathError, Result};
pub use mac::Mac;
pub use netlink::{ApplyReport, Netlink};
pub use sysctl::SysctlChange;
pub use vtep::{Desired, HybridNode, Rejection};
pub use vxlan::{Device, DeviceAction};

use crate::config::Config;

/// The set-up datapath: a netlink socket and the device.
pub struct Datapath {
    nl: Netlink,
    device: Device,
}

/// What one reconcile pass found and did.
#[derive(Debug)]
pub struct Reconciled {
    /// Entries the kernel should hold (routes + ARP + FDB + unreachable).
    pub desired_entries: usize,
    /// Nodes programmed (accepted), routes (pod CIDRs) and FDB entries wanted.
    pub nodes: usize,
    pub routes: usize,
    pub fdb: usize,
    pub rejected: Vec<Rejection>,
    pub report: ApplyReport,
    pub elapsed: Duration,
}

impl Datapath {
    /// Host sysctls, then the device (created, adopted or repaired). Returns the sysctl
    /// changes made so the caller can report them.
    pub async fn setup(config: &Config, node_ip: Ipv4Addr) -> Result<(Self, Vec<SysctlChange>)> {
        let mut changes = sysctl::ensure_host()?;
        let nl = Netlink::open()?;
        let device = vxlan::ensure(&nl, &config.vxlan, node_ip).await?;
        changes.extend(sysctl::ensure_interface(&device.underlay, false)?);
        Ok((Datapath { nl, device }, changes))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Makes the kernel match `nodes`, within `pod_cidrs` (`gateway.hybrid_pod_cidrs`, as
    /// the running configuration has it): reads what is there, diffs, applies only the
    /// difference. Failed entries are in the report and are retried by the next pass.
    pub async fn reconcile(
        &self,
        nodes: &[HybridNode],
        pod_cidrs: &[Ipv4Net],
    ) -> Result<Reconciled> {
        let started = Instant::now();
        let (desired, rejected) = Desired::build(nodes, pod_cidrs);
        let actual = self.nl.read_vtep(self.device.index).await?;
        let plan = vtep::diff(&desired, &actual);
        let report = if plan.is_empty() {
            ApplyReport::default()
        } else {
            self.nl.apply(self.device.index, &plan).await
        };
        Ok(Reconciled {
            desired_entries: desired.entry_count(),
            nodes: desired.neighbours.len(),
            routes: desired.routes.len(),
            fdb: desired.fdb.len(),
            rejected,
            report,
            elapsed: started.elapsed(),
        })
    }
}
