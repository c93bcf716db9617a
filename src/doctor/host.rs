//! This host: forwarding sysctls, the VXLAN device, the packet filter, and the path MTU
//! to each hybrid node the device forwards to (don't-fragment probes at the tunnel's
//! full packet size).

use std::net::Ipv4Addr;

use futures::stream::{self, StreamExt};

use super::{Check, CALL_TIMEOUT};
use crate::config::Config;
use crate::datapath::vxlan::VXLAN_OVERHEAD;
use crate::datapath::{filter, sysctl, Netlink};

/// IPv4 + ICMP echo headers: a probe of `size` bytes on the wire carries size - 28.
const ICMP_HEADERS: u32 = 28;
/// Probes in flight at once.
const PROBES_IN_FLIGHT: usize = 16;

pub async fn checks(config: &Config) -> Vec<Check> {
    let dev = &config.vxlan.interface;
    let mut out = vec![sysctls(dev)];
    let sys = format!("/sys/class/net/{dev}");
    let read = |f: &str| {
        std::fs::read_to_string(format!("{sys}/{f}"))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let (Some(ifindex), Some(mtu), Some(flags)) = (read("ifindex"), read("mtu"), read("flags"))
    else {
        out.push(Check::fail(
            "device",
            format!("{dev} does not exist"),
            "start the daemon: it creates the device (systemctl start hybrid-gateway)",
        ));
        return out;
    };
    let up = u32::from_str_radix(flags.trim_start_matches("0x"), 16).is_ok_and(|f| f & 1 == 1);
    let mtu: u32 = mtu.parse().unwrap_or(0);
    out.push(if up {
        Check::ok(
            "device",
            format!(
                "{dev} is up, MTU {mtu} (full tunnel packets are {} bytes)",
                mtu + VXLAN_OVERHEAD
            ),
        )
    } else {
        Check::fail(
            "device",
            format!("{dev} is down"),
            "restart the daemon (it brings the device up), or look for whoever set it down",
        )
    });
    out.push(filter_check(config).await);
    let Ok(index) = ifindex.parse::<u32>() else {
        return out;
    };
    out.push(path_mtu(index, mtu + VXLAN_OVERHEAD).await);
    out
}

fn sysctls(dev: &str) -> Check {
    let want = [
        ("net.ipv4.ip_forward".to_string(), &["1"][..]),
        ("net.ipv4.conf.all.rp_filter".to_string(), &["0", "2"][..]),
        (format!("net.ipv4.conf.{dev}.rp_filter"), &["0"][..]),
        (format!("net.ipv4.conf.{dev}.forwarding"), &["1"][..]),
    ];
    let mut wrong = Vec::new();
    for (key, ok) in &want {
        match sysctl::read(key) {
            Ok(v) if ok.contains(&v.as_str()) => {}
            Ok(v) => wrong.push(format!("{key} = {v} (want {})", ok.join(" or "))),
            // The device's keys are missing when the device is: the device check says so.
            Err(_) if key.contains(dev) => {}
            Err(e) => wrong.push(e.to_string()),
        }
    }
    if wrong.is_empty() {
        Check::ok("sysctls", "forwarding on, reverse-path filter loose or off")
    } else {
        Check::fail(
            "sysctls",
            wrong.join(", "),
            "restart the daemon (it sets them at start and repairs drift); find what resets them (sysctl.d, a configuration tool)",
        )
    }
}

async fn filter_check(config: &Config) -> Check {
    if !config.datapath.filter {
        return Check::skip("filter", "datapath.filter = false");
    }
    match tokio::time::timeout(CALL_TIMEOUT, filter::read()).await {
        Ok(Ok(Some(state))) => Check::ok(
            "filter",
            format!(
                "nftables table ip {} loaded ({} nodes allowed)",
                filter::TABLE,
                state.sets.get("nodes").map_or(0, |s| s.len())
            ),
        ),
        Ok(Ok(None)) => Check::fail(
            "filter",
            format!("nftables table ip {} is missing", filter::TABLE),
            "restart the daemon (it loads the table); find what flushed nftables (a firewall manager)",
        ),
        Ok(Err(e)) => Check::fail("filter", e.to_string(), "install nftables (nft)"),
        Err(_) => Check::fail(
            "filter",
            format!("nft did not answer within {CALL_TIMEOUT:?}"),
            "check nft list ruleset by hand",
        ),
    }
}

/// Every node the device forwards to (its FDB entries) is probed twice: a small ping
/// proves it answers at all; a don't-fragment ping of `size` bytes proves a full tunnel
/// packet fits the path. A node that answers the first and not the second is named.
async fn path_mtu(index: u32, size: u32) -> Check {
    let nodes: Vec<Ipv4Addr> = match Netlink::open() {
        Ok(nl) => match nl.read_vtep(index).await {
            Ok(actual) => {
                let mut v: Vec<Ipv4Addr> = actual.fdb.iter().filter_map(|f| f.dst).collect();
                v.sort();
                v.dedup();
                v
            }
            Err(e) => return Check::fail("path_mtu", e.to_string(), "run as root"),
        },
        Err(e) => return Check::fail("path_mtu", e.to_string(), "run as root"),
    };
    if nodes.is_empty() {
        return Check::skip("path_mtu", "no hybrid node programmed yet");
    }
    let results: Vec<(Ipv4Addr, Probe)> = stream::iter(nodes.iter().copied())
        .map(|ip| async move { (ip, probe(ip, size).await) })
        .buffer_unordered(PROBES_IN_FLIGHT)
        .collect()
        .await;
    let too_small: Vec<String> = results
        .iter()
        .filter(|(_, p)| *p == Probe::TooBig)
        .map(|(ip, _)| ip.to_string())
        .collect();
    let silent: Vec<String> = results
        .iter()
        .filter(|(_, p)| *p == Probe::NoAnswer)
        .map(|(ip, _)| ip.to_string())
        .collect();
    if !too_small.is_empty() {
        Check::fail(
            "path_mtu",
            format!(
                "{size}-byte packets with don't-fragment do not reach {} (small ones do): full-size tunnel packets are lost",
                too_small.join(", ")
            ),
            format!(
                "lower vxlan.underlay_mtu to what the path carries (vxlan.mtu follows), or raise the MTU on the path (VPN, Direct Connect); now {size}"
            ),
        )
    } else if !silent.is_empty() {
        Check::warn(
            "path_mtu",
            format!(
                "{} of {} nodes did not answer ping at all: {} (cannot judge their path)",
                silent.len(),
                nodes.len(),
                silent.join(", ")
            ),
            "allow ICMP echo from the gateways to the hybrid nodes, and UDP 8472 both ways",
        )
    } else {
        Check::ok(
            "path_mtu",
            format!(
                "{size}-byte don't-fragment probes reach all {} nodes",
                nodes.len()
            ),
        )
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Fits,
    TooBig,
    NoAnswer,
}

async fn probe(ip: Ipv4Addr, size: u32) -> Probe {
    if !ping(ip, 56).await {
        return Probe::NoAnswer;
    }
    if ping(ip, size.saturating_sub(ICMP_HEADERS)).await {
        Probe::Fits
    } else {
        Probe::TooBig
    }
}

/// iputils ping with don't-fragment set; true on any answer.
async fn ping(ip: Ipv4Addr, payload: u32) -> bool {
    let run = tokio::process::Command::new("ping")
        .args([
            "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s",
        ])
        .arg(payload.to_string())
        .arg(ip.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(
        tokio::time::timeout(CALL_TIMEOUT, run).await,
        Ok(Ok(s)) if s.success()
    )
}
