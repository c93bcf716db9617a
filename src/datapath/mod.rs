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
pub use vtep::{AddressProblem, Desired, HybridNode, NodePolicy, Rejection};
pub use vxlan::{Device, DeviceAction};

use crate::config::Config;

/// The set-up datapath: a netlink socket, the device, and the reconciler state.
pub struct Datapath {
    nl: Netlink,
    device: Device,
    /// What nodes must satisfy; its pod CIDRs are swapped by a config reload while the
    /// reconcile loop runs, its own addresses refreshed on every pass.
    policy: std::sync::Mutex<NodePolicy>,
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
        let policy = NodePolicy {
            pod_cidrs: config.gateway.hybrid_pod_cidrs.clone(),
            vpc_cidrs: config.gateway.vpc_cidrs.clone(),
            remote_node_cidrs: config.gateway.remote_node_cidrs.clone(),
            own_addresses: [node_ip].into(),
            max_pod_cidrs: vtep::MAX_POD_CIDRS_PER_NODE,
        };
        Ok((
            Datapath {
                nl,
                device,
                policy: std::sync::Mutex::new(policy),
            },
            changes,
        ))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A changed `hybrid_pod_cidrs` takes effect at the next reconcile.
    pub fn set_pod_cidrs(&self, pod_cidrs: Vec<Ipv4Net>) {
        self.policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pod_cidrs = pod_cidrs;
    }

    /// Makes the kernel match `nodes`: reads what is there, diffs, applies only the
    /// difference. Failed entries are in the report and are retried by the next pass.
    pub async fn reconcile(&self, nodes: &[HybridNode]) -> Result<Reconciled> {
        let started = Instant::now();
        // Addresses come and go (a second ENI, a container bridge): a node may never claim
        // one this host holds right now.
        let own = self.nl.local_ipv4s().await?;
        let mut policy = self
            .policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        policy.own_addresses.extend(own);
        let (desired, rejected) = Desired::build_with(nodes, &policy);
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
