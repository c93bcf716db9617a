//! End-to-end tunnel probes: every gateway, leader or not, pings an address behind each
//! hybrid node's VTEP (its `CiliumInternalIP`) once per `probe.interval`, through the
//! tunnel, and keeps per-node up/down (with hysteresis) and the round trip. The share of
//! nodes reachable is this gateway's health score, which the election compares across
//! gateways.
//!
//! A round spreads its echoes over `interval - timeout` (no burst of 5,000 packets at once),
//! keeps at most `max_in_flight` unanswered, and ends before the next one starts. All
//! echoes go through one ICMP socket ([`icmp`]).

pub mod health;
pub mod icmp;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ProbeConfig, ProbeTarget};
use crate::datapath::HybridNode;
use crate::k8s::cilium_nodes::NodeSet;
use crate::telemetry::Telemetry;
use health::{Score, TunnelState};
use icmp::IcmpSocket;

pub use health::Tracker;

/// How many nodes `status` lists.
pub const WORST_SHOWN: usize = 5;
/// Up to this many state changes in a round are logged one line each.
const LOGGED_CHANGES: usize = 10;

/// The address to ping for `node`, if it has one the tunnel alone can reach: inside one of
/// the node's own pod CIDRs (routed to its VTEP). Anything else in a CiliumNode is not
/// trusted to stay inside the tunnel, so it is not probed.
pub fn target(node: &HybridNode) -> Option<Ipv4Addr> {
    let ip = node.probe_ip?;
    node.pod_cidrs.iter().any(|c| c.contains(&ip)).then_some(ip)
}

/// Echoes awaiting their reply: sequence → (target, who waits).
type Pending = Arc<Mutex<HashMap<u16, (Ipv4Addr, oneshot::Sender<Instant>)>>>;

pub struct Prober {
    pub nodes: watch::Receiver<Option<NodeSet>>,
    pub config: watch::Receiver<Arc<Config>>,
    pub telemetry: Telemetry,
    /// This gateway's score after every round (`None`: no opinion yet, or probes off).
    pub score: watch::Sender<Option<Score>>,
}

impl Prober {
    /// Until `cancel`. Without an ICMP socket the gateway has no score (and says why).
    pub async fn run(self, cancel: CancellationToken) {
        let socket = match IcmpSocket::open() {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!("tunnel probes are off: {e}");
                self.telemetry
                    .status
                    .error(format!("tunnel probes are off: {e}"));
                cancel.cancelled().await;
                return;
            }
        };
        tracing::info!(socket = ?socket.kind(), "tunnel probes started");
        let pending: Pending = Arc::default();
        let receiver = tokio::spawn(receive(socket.clone(), pending.clone()));
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = self.rounds(socket, pending) => {}
        }
        receiver.abort();
    }

    async fn rounds(mut self, socket: Arc<IcmpSocket>, pending: Pending) {
        let mut tracker = Tracker::default();
        let seq = AtomicU16::new(fastrand::u16(..));
        loop {
            let started = Instant::now();
            let cfg = self.config.borrow_and_update().probe.clone();
            let targets = match cfg.target {
                ProbeTarget::None => BTreeMap::new(),
                ProbeTarget::CiliumInternalIp => self
                    .nodes
                    .borrow_and_update()
                    .iter()
                    .flat_map(|set| set.iter())
                    .filter_map(|n| target(n).map(|ip| (n.name.clone(), ip)))
                    .collect(),
            };
            for gone in tracker.set_targets(&targets) {
                self.telemetry.tunnel_node_gone(&gone);
            }
            let results = round(&socket, &pending, &seq, &targets, &cfg).await;
            let mut changes = Vec::new();
            for (name, result) in results {
                let Some(h) = tracker.get_mut(&name) else {
                    continue;
                };
                if let Some(state) = h.record(result, cfg.rise, cfg.fall) {
                    changes.push((name.clone(), h.target, state, h.lost()));
                }
                self.telemetry.tunnel_probed(&name, h.state, result);
            }
            log_changes(changes);
            let score = tracker.score();
            self.telemetry.tunnel_round(&tracker, &score);
            self.score.send_replace(score.ratio().map(|_| score));
            tokio::time::sleep_until(started + cfg.interval).await;
        }
    }
}

/// One echo to every target, spread over `interval - timeout`; each result is the round
/// trip, or `None` when no reply came within `timeout` (or the send failed).
async fn round(
    socket: &IcmpSocket,
    pending: &Pending,
    seq: &AtomicU16,
    targets: &BTreeMap<String, Ipv4Addr>,
    cfg: &ProbeConfig,
) -> Vec<(String, Option<Duration>)> {
    let n = targets.len();
    if n == 0 {
        return Vec::new();
    }
    let start = Instant::now();
    let spread = cfg.interval.saturating_sub(cfg.timeout);
    let in_flight = Semaphore::new(cfg.max_in_flight);
    let mut probes = FuturesUnordered::new();
    for (i, (name, ip)) in targets.iter().enumerate() {
        let at = start + spread.mul_f64(i as f64 / n as f64);
        let s = seq.fetch_add(1, Ordering::Relaxed);
        probes.push(paced_echo(
            socket,
            pending,
            &in_flight,
            at,
            *ip,
            s,
            cfg.timeout,
            name,
        ));
    }
    let mut results = Vec::with_capacity(n);
    while let Some(r) = probes.next().await {
        results.push(r);
    }
    results
}

/// [`echo`] at `at`, once fewer than `max_in_flight` echoes await their reply.
#[allow(clippy::too_many_arguments)]
async fn paced_echo(
    socket: &IcmpSocket,
    pending: &Pending,
    in_flight: &Semaphore,
    at: Instant,
    ip: Ipv4Addr,
    seq: u16,
    timeout: Duration,
    name: &str,
) -> (String, Option<Duration>) {
    tokio::time::sleep_until(at).await;
    // The semaphore is never closed; an error would only mean "no permit".
    let _permit = in_flight.acquire().await.ok();
    (
        name.to_string(),
        echo(socket, pending, ip, seq, timeout).await,
    )
}

async fn echo(
    socket: &IcmpSocket,
    pending: &Pending,
    ip: Ipv4Addr,
    seq: u16,
    timeout: Duration,
) -> Option<Duration> {
    let (tx, rx) = oneshot::channel();
    lock(pending).insert(seq, (ip, tx));
    let sent = Instant::now();
    let result = match socket.send(ip, seq).await {
        // No route (the node is not programmed), or the filter refused it: lost.
        Err(e) => {
            tracing::debug!(%ip, "echo not sent: {e}");
            None
        }
        Ok(()) => tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .map(|at| at.saturating_duration_since(sent)),
    };
    lock(pending).remove(&seq);
    result
}

/// Hands each reply to the echo waiting for it: same sequence, from the address pinged.
async fn receive(socket: Arc<IcmpSocket>, pending: Pending) {
    loop {
        match socket.recv().await {
            Ok(reply) => {
                let at = Instant::now();
                let mut p = lock(&pending);
                if p.get(&reply.seq).is_some_and(|(ip, _)| *ip == reply.from) {
                    if let Some((_, tx)) = p.remove(&reply.seq) {
                        let _ = tx.send(at);
                    }
                }
            }
            Err(e) => {
                // A socket error (ICMP errors queued on it, ENOBUFS): the echoes it concerns
                // time out; pause a little so a persistent error cannot spin.
                tracing::debug!("ICMP receive: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per-node state changes, one line each; a site-wide change (thousands of nodes at once)
/// is summed up in one line per state instead of flooding the journal.
fn log_changes(mut changes: Vec<(String, Ipv4Addr, TunnelState, u32)>) {
    if changes.len() <= LOGGED_CHANGES {
        for (name, ip, state, lost) in changes {
            match state {
                TunnelState::Down => tracing::warn!(
                    node = %name,
                    %ip,
                    "tunnel to hybrid node {name} is down: {lost} probe rounds lost in a row"
                ),
                TunnelState::Up => {
                    tracing::info!(node = %name, %ip, "tunnel to hybrid node {name} is up")
                }
                TunnelState::Unknown => {}
            }
        }
        return;
    }
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    for (state, word) in [(TunnelState::Down, "down"), (TunnelState::Up, "up")] {
        let names: Vec<&str> = changes
            .iter()
            .filter(|c| c.2 == state)
            .map(|c| c.0.as_str())
            .collect();
        if names.is_empty() {
            continue;
        }
        let shown = names[..names.len().min(LOGGED_CHANGES)].join(", ");
        let more = names.len().saturating_sub(LOGGED_CHANGES);
        let text = format!(
            "tunnel {word} to {} hybrid nodes: {shown}{}",
            names.len(),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
        if state == TunnelState::Down {
            tracing::warn!(nodes = names.len(), "{text}");
        } else {
            tracing::info!(nodes = names.len(), "{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_inside_the_nodes_own_pod_cidrs_are_probed() {
        let node = |probe: Option<&str>| HybridNode {
            name: "n".into(),
            ip: "10.80.0.2".parse().unwrap(),
            pod_cidrs: vec!["192.168.32.0/25".parse().unwrap()],
            probe_ip: probe.map(|p| p.parse().unwrap()),
        };
        assert_eq!(
            target(&node(Some("192.168.32.1"))),
            Some("192.168.32.1".parse().unwrap())
        );
        // An address the tunnel does not lead to (the VPC, the underlay) is never pinged.
        assert_eq!(target(&node(Some("10.250.0.10"))), None);
        assert_eq!(target(&node(Some("192.168.32.200"))), None);
        assert_eq!(target(&node(None)), None);
    }
}
