//! Per-node tunnel state with hysteresis, and the gateway's health score. Pure: the prober
//! feeds it one result per node and round; nothing here touches the network or a clock.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Whether a node's tunnel answers, as hysteresis has settled it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    /// Not probed long enough to say (a new node: up at its first answer, down after
    /// `fall` lost rounds).
    Unknown,
    Up,
    Down,
}

/// One node's probe history, as much as hysteresis needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHealth {
    pub target: Ipv4Addr,
    pub state: TunnelState,
    /// Consecutive answered (lost) rounds, the other reset to 0.
    answered: u32,
    lost: u32,
    /// The round trip of the last answered echo.
    pub last_rtt: Option<Duration>,
}

impl NodeHealth {
    fn new(target: Ipv4Addr) -> Self {
        NodeHealth {
            target,
            state: TunnelState::Unknown,
            answered: 0,
            lost: 0,
            last_rtt: None,
        }
    }

    /// One round's result (`Some(rtt)`: answered); returns the new state if it changed.
    pub fn record(
        &mut self,
        result: Option<Duration>,
        rise: u32,
        fall: u32,
    ) -> Option<TunnelState> {
        let before = self.state;
        match result {
            Some(rtt) => {
                self.answered = self.answered.saturating_add(1);
                self.lost = 0;
                self.last_rtt = Some(rtt);
                // A node never seen down is up at its first answer: a fresh gateway (or a
                // new node) must not wait `rise` rounds to count what already works.
                if self.state == TunnelState::Unknown
                    || (self.state == TunnelState::Down && self.answered >= rise)
                {
                    self.state = TunnelState::Up;
                }
            }
            None => {
                self.lost = self.lost.saturating_add(1);
                self.answered = 0;
                if self.lost >= fall {
                    self.state = TunnelState::Down;
                }
            }
        }
        (self.state != before).then_some(self.state)
    }

    /// Consecutive lost rounds so far.
    pub fn lost(&self) -> u32 {
        self.lost
    }
}

/// The share of probed nodes whose tunnel is up; what the gateway publishes as its health.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Score {
    pub up: usize,
    pub down: usize,
    pub unknown: usize,
}

impl Score {
    /// `up / (up + down)`; `None` while no node has a settled state (no nodes, no probe
    /// targets, the first rounds): no opinion, never "0 %".
    pub fn ratio(&self) -> Option<f64> {
        let known = self.up + self.down;
        (known > 0).then(|| self.up as f64 / known as f64)
    }
}

/// Every probed node by name.
#[derive(Debug, Default)]
pub struct Tracker {
    nodes: BTreeMap<String, NodeHealth>,
}

impl Tracker {
    /// Keeps exactly `targets` (name → address): new nodes start unknown, gone nodes are
    /// forgotten, a node whose probe address changed starts over. Returns the forgotten names.
    pub fn set_targets(&mut self, targets: &BTreeMap<String, Ipv4Addr>) -> Vec<String> {
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(name, h)| targets.get(*name) != Some(&h.target))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.nodes.remove(name);
        }
        for (name, ip) in targets {
            self.nodes
                .entry(name.clone())
                .or_insert_with(|| NodeHealth::new(*ip));
        }
        gone.into_iter()
            .filter(|n| !targets.contains_key(n))
            .collect()
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut NodeHealth> {
        self.nodes.get_mut(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&String, &NodeHealth)> {
        self.nodes.iter()
    }

    pub fn score(&self) -> Score {
        let mut s = Score::default();
        for h in self.nodes.values() {
            match h.state {
                TunnelState::Up => s.up += 1,
                TunnelState::Down => s.down += 1,
                TunnelState::Unknown => s.unknown += 1,
            }
        }
        s
    }

    /// The `n` nodes operators should look at first: down, then unknown, then up by
    /// slowest round trip; ties by name.
    pub fn worst(&self, n: usize) -> Vec<(&String, &NodeHealth)> {
        let rank = |h: &NodeHealth| match h.state {
            TunnelState::Down => 0,
            TunnelState::Unknown => 1,
            TunnelState::Up => 2,
        };
        let mut all: Vec<(&String, &NodeHealth)> = self.nodes.iter().collect();
        all.sort_by(|(an, a), (bn, b)| {
            rank(a)
                .cmp(&rank(b))
                .then(b.last_rtt.cmp(&a.last_rtt))
                .then(an.cmp(bn))
        });
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn up_at_first_answer_down_after_fall_and_back_after_rise() {
        let mut h = NodeHealth::new(ip("192.168.32.1"));
        assert_eq!(h.record(Some(MS), 2, 3), Some(TunnelState::Up));
        // Two lost rounds are a blip, not a down.
        assert_eq!(h.record(None, 2, 3), None);
        assert_eq!(h.record(None, 2, 3), None);
        assert_eq!(h.record(Some(MS), 2, 3), None);
        assert_eq!(h.state, TunnelState::Up);
        for _ in 0..2 {
            assert_eq!(h.record(None, 2, 3), None);
        }
        assert_eq!(h.record(None, 2, 3), Some(TunnelState::Down));
        assert_eq!(h.lost(), 3);
        // One answer does not bring it back; `rise` in a row does.
        assert_eq!(h.record(Some(MS), 2, 3), None);
        assert_eq!(h.record(None, 2, 3), None);
        assert_eq!(h.record(Some(MS), 2, 3), None);
        assert_eq!(h.record(Some(2 * MS), 2, 3), Some(TunnelState::Up));
        assert_eq!(h.last_rtt, Some(2 * MS));
    }

    #[test]
    fn a_node_never_answering_goes_from_unknown_to_down() {
        let mut h = NodeHealth::new(ip("192.168.32.1"));
        assert_eq!(h.record(None, 2, 3), None);
        assert_eq!(h.record(None, 2, 3), None);
        assert_eq!(h.state, TunnelState::Unknown);
        assert_eq!(h.record(None, 2, 3), Some(TunnelState::Down));
    }

    #[test]
    fn score_counts_settled_nodes_only_and_targets_follow_the_node_set() {
        let mut t = Tracker::default();
        assert_eq!(t.score().ratio(), None);
        let targets: BTreeMap<String, Ipv4Addr> = [
            ("a".to_string(), ip("192.168.32.1")),
            ("b".to_string(), ip("192.168.32.129")),
            ("c".to_string(), ip("192.168.33.1")),
        ]
        .into();
        assert!(t.set_targets(&targets).is_empty());
        assert_eq!(t.score().ratio(), None);
        t.get_mut("a").unwrap().record(Some(MS), 2, 1);
        t.get_mut("b").unwrap().record(Some(5 * MS), 2, 1);
        t.get_mut("c").unwrap().record(None, 2, 1);
        let s = t.score();
        assert_eq!((s.up, s.down, s.unknown), (2, 1, 0));
        assert!((s.ratio().unwrap() - 2.0 / 3.0).abs() < 1e-9);
        let worst: Vec<&str> = t.worst(2).iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(worst, ["c", "b"]);

        // b's probe address moved: it starts over (not reported as gone); c left.
        let moved: BTreeMap<String, Ipv4Addr> = [
            ("a".to_string(), ip("192.168.32.1")),
            ("b".to_string(), ip("192.168.32.130")),
        ]
        .into();
        assert_eq!(t.set_targets(&moved), vec!["c".to_string()]);
        let s = t.score();
        assert_eq!((s.up, s.down, s.unknown), (1, 0, 1));
        assert_eq!(s.ratio(), Some(1.0));
    }
}
