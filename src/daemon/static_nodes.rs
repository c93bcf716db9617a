//! A TOML list of hybrid nodes, for labs and for keeping a gateway programmed by hand
//! when the Kubernetes API is gone:
//!
//! ```toml
//! [[node]]
//! name = "hybrid-1"
//! ip = "10.80.0.2"
//! pod_cidrs = ["192.168.32.0/25"]
//! probe_ip = "192.168.32.1"   # optional: what the tunnel prober pings
//! ```

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Context;
use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::datapath::HybridNode;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    node: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    ip: Ipv4Addr,
    #[serde(default)]
    pod_cidrs: Vec<Ipv4Net>,
    /// What the tunnel prober pings (a CiliumNode's CiliumInternalIP).
    probe_ip: Option<Ipv4Addr>,
}

pub fn load(path: &Path) -> anyhow::Result<Vec<HybridNode>> {
    let text = std::fs::read_to_string(path).context("cannot read the file")?;
    let file: File = toml::from_str(&text).context("not a valid static nodes file")?;
    Ok(file
        .node
        .into_iter()
        .map(|e| HybridNode {
            name: e.name,
            ip: e.ip,
            pod_cidrs: e.pod_cidrs,
            probe_ip: e.probe_ip,
        })
        .collect())
}
