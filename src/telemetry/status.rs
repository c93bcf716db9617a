//! The daemon's own view of itself: what `/readyz`, `/status`, `hybrid-gateway status` and
//! systemd's STATUS= line are made of.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

const LAST_ERRORS: usize = 10;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartStatus {
    pub alive: bool,
    pub restarts: u32,
    pub last_error: Option<String>,
}

/// Whether this gateway acts for all. Serialised as `"leader"` / `"standby"` (the
/// `/status` JSON and `hybrid-gateway status` keep their wording).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    #[default]
    Standby,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
        })
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub version: String,
    pub identity: String,
    pub role: Role,
    pub leader: Option<String>,
    pub leader_since: Option<String>,
    pub term: Option<u32>,
    pub device_up: bool,
    pub nodes_synced: bool,
    pub identity_known: bool,
    pub nodes_programmed: usize,
    pub route_tables_total: usize,
    pub route_tables_in_sync: usize,
    pub route_tables_degraded: Vec<String>,
    /// Why this leader may not write the CiliumVTEPConfig right now, if it may not.
    #[serde(default)]
    pub vtepconfig_fenced: Option<String>,
    /// Why this leader cannot write the CiliumVTEPConfig at all: the cluster serves no
    /// shape it writes (CRD missing, other versions), or other writers' endpoints leave
    /// no room for ours under Cilium's limit.
    #[serde(default)]
    pub vtepconfig_unserved: Option<String>,
    /// The CiliumVTEPConfig shape the cluster serves (`cilium.io/v2 spec.endpoints …`), or
    /// why there is none.
    #[serde(default)]
    pub vtepconfig_shape: Option<String>,
    /// Which gateways the CiliumVTEPConfig names, as this gateway reads it (every gateway
    /// reads it, so a CR left on a non-leader shows on each of them).
    #[serde(default)]
    pub vtepconfig_names: Option<String>,
    /// While the node set programmed is the snapshot from the state directory (the API
    /// did not list in time at start): when it was written, in Unix seconds.
    #[serde(default)]
    pub nodes_from_snapshot: Option<i64>,
    /// The tunnel probes' view (`None`: probes off or no round yet).
    #[serde(default)]
    pub tunnel: Option<TunnelStatus>,
    /// The other gateways' fresh tunnel health scores (health-aware leadership).
    #[serde(default)]
    pub peer_health: Vec<PeerHealth>,
    /// This gateway's last voluntary handover for health, and why.
    #[serde(default)]
    pub last_health_handover: Option<String>,
    /// Per-AZ mode: every shard this gateway takes part in (empty in active/standby mode).
    #[serde(default)]
    pub shards: Vec<ShardStatus>,
    pub parts: BTreeMap<String, PartStatus>,
    pub last_errors: VecDeque<String>,
}

/// One shard of per-AZ mode as this gateway sees it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// `default` or the AZ.
    pub shard: String,
    /// This gateway's AZ is the shard's: it campaigns at once; else it takes the shard only
    /// while no gateway of that AZ is ready, and hands it back.
    pub home: bool,
    pub role: Role,
    /// The holder last seen (this gateway's identity while it leads).
    pub leader: Option<String>,
    pub term: Option<u32>,
    /// The managed route tables of the shard (from the last layout read).
    pub tables: Vec<String>,
    /// Of those, in sync after this gateway's last pass (while it leads).
    pub tables_in_sync: usize,
    /// While this gateway leads the shard: why it may not write the shard's
    /// CiliumVTEPConfig entries right now (the shard's fence carries a term not below ours).
    #[serde(default)]
    pub fenced: Option<String>,
    /// While this gateway leads the shard: why it cannot write them at all (no shape we
    /// write is served, no room under Cilium's limit).
    #[serde(default)]
    pub unserved: Option<String>,
    /// Whom the shard's CiliumVTEPConfig entries name, as this gateway reads them (every
    /// gateway reads them), and whether that agrees with who leads the shard here.
    #[serde(default)]
    pub vtepconfig_names: Option<String>,
}

impl ShardStatus {
    /// Led here but its CiliumVTEPConfig entries cannot be written: why.
    pub fn blocked(&self) -> Option<String> {
        if self.role != Role::Leader {
            return None;
        }
        match (&self.fenced, &self.unserved) {
            (Some(w), _) => Some(format!("fenced: {w}")),
            (None, Some(w)) => Some(w.clone()),
            (None, None) => None,
        }
    }
}

/// What the tunnel probes found in their last round.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// Share of settled nodes that answer (`None` while none is settled).
    pub ratio: Option<f64>,
    pub up: usize,
    pub down: usize,
    pub unknown: usize,
    /// The nodes to look at first: down, unknown, then slowest.
    pub worst: Vec<NodeTunnel>,
}

/// Another gateway's published tunnel health, as this one reads it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerHealth {
    pub identity: String,
    pub ratio: f64,
    /// Since this gateway saw the score change (its heartbeat).
    pub age_ms: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeTunnel {
    pub node: String,
    pub target: String,
    /// `up`, `down` or `unknown`.
    pub state: String,
    pub rtt_ms: Option<f64>,
    /// Rounds lost in a row.
    pub lost: u32,
}

impl StatusSnapshot {
    /// Ready to carry traffic: the device is up, the first node sync is applied, we know
    /// who we are, and — when leading — hybrid nodes can be pointed at us (the
    /// CiliumVTEPConfig is not fenced against us, and the cluster serves a shape we write).
    pub fn ready(&self) -> bool {
        self.device_up
            && self.nodes_synced
            && self.identity_known
            && self.vtepconfig_fenced.is_none()
            && self.vtepconfig_unserved.is_none()
            && self.shards.iter().all(|s| s.blocked().is_none())
    }

    /// Every supervised part is running.
    pub fn healthy(&self) -> bool {
        self.parts.values().all(|p| p.alive)
    }

    /// Per-AZ mode: every shard led here whose CiliumVTEPConfig entries cannot be written,
    /// `leader of us-east-1a, fenced: … · leader of default, …`; `None` if there is none.
    fn shards_blocked(&self) -> Option<String> {
        let all: Vec<String> = self
            .shards
            .iter()
            .filter_map(|s| Some(format!("leader of {}, {}", s.shard, s.blocked()?)))
            .collect();
        (!all.is_empty()).then(|| all.join(" · "))
    }

    /// Per-AZ mode: `leads us-east-1a (2/2 tables) · standby for us-east-1b · …`.
    fn shards_line(&self) -> String {
        let mut lead = Vec::new();
        let mut standby = Vec::new();
        for sh in &self.shards {
            match sh.role {
                Role::Leader if sh.tables.is_empty() => lead.push(sh.shard.clone()),
                Role::Leader => lead.push(format!(
                    "{} ({}/{} tables)",
                    sh.shard,
                    sh.tables_in_sync,
                    sh.tables.len()
                )),
                Role::Standby => standby.push(sh.shard.clone()),
            }
        }
        let mut out = Vec::new();
        if !lead.is_empty() {
            out.push(format!("leads {}", lead.join(", ")));
        }
        if !standby.is_empty() {
            out.push(format!("standby for {}", standby.join(", ")));
        }
        out.join(" · ")
    }

    /// One line for `systemctl status`.
    pub fn line(&self) -> String {
        let nodes = format!(
            "{} hybrid node{}",
            self.nodes_programmed,
            if self.nodes_programmed == 1 { "" } else { "s" }
        );
        let mut parts = Vec::new();
        if let Some(why) = self
            .vtepconfig_fenced
            .as_deref()
            .filter(|_| self.role == Role::Leader)
        {
            parts.push(format!("leader, fenced: {why}"));
        } else if let Some(why) = self
            .vtepconfig_unserved
            .as_deref()
            .filter(|_| self.role == Role::Leader)
        {
            parts.push(format!("leader, {why}"));
        } else if !(self.device_up && self.nodes_synced && self.identity_known) {
            let mut waiting = Vec::new();
            if !self.device_up {
                waiting.push("device");
            }
            if !self.identity_known {
                waiting.push("identity");
            }
            if !self.nodes_synced {
                waiting.push("first node sync");
            }
            parts.push(format!("starting: waiting for {}", waiting.join(", ")));
        } else if let Some(why) = self.shards_blocked() {
            parts.push(why);
        } else if !self.shards.is_empty() {
            parts.push(self.shards_line());
        } else if self.role == Role::Leader {
            parts.push(format!(
                "leader since {}",
                self.leader_since.as_deref().unwrap_or("?")
            ));
        } else {
            parts.push(format!(
                "standby · leader {}",
                self.leader.as_deref().unwrap_or("none")
            ));
        }
        parts.push(nodes);
        if let Some(written) = self.nodes_from_snapshot {
            let age = jiff::Timestamp::now().as_second() - written;
            parts.push(format!(
                "from snapshot, age {}",
                humantime::format_duration(std::time::Duration::from_secs(
                    u64::try_from(age).unwrap_or(0)
                ))
            ));
        }
        if self.role == Role::Leader && self.route_tables_total > 0 && self.shards.is_empty() {
            parts.push(format!(
                "{}/{} route tables in sync",
                self.route_tables_in_sync, self.route_tables_total
            ));
        }
        if !self.route_tables_degraded.is_empty() {
            parts.push(format!("{} degraded", self.route_tables_degraded.len()));
        }
        if let Some(t) = self.tunnel.as_ref().filter(|t| t.down > 0) {
            parts.push(format!(
                "tunnel down to {}/{} nodes",
                t.down,
                t.up + t.down + t.unknown
            ));
        }
        let down: Vec<&str> = self
            .parts
            .iter()
            .filter(|(_, p)| !p.alive)
            .map(|(n, _)| n.as_str())
            .collect();
        if !down.is_empty() {
            parts.push(format!("restarting {}", down.join(", ")));
        }
        parts.join(" · ")
    }
}

/// The datapath as the kernel holds it right now, looked at when asked (`/readyz`,
/// `/metrics`): drift that happened since the last pass shows at once, not at the pass
/// that repairs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    /// The device exists, is ours and is up.
    pub device_up: bool,
    /// What is wrong (empty: nothing), for the `/readyz` body.
    pub problems: Vec<String>,
}

/// Produces a [`Live`] view; set once by the daemon when the datapath is up.
#[derive(Clone)]
pub struct LiveCheck(pub Arc<dyn Fn() -> BoxFuture<'static, Live> + Send + Sync>);

impl std::fmt::Debug for LiveCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCheck")
    }
}

/// A live check that takes longer than this counts as failed: the kernel answers netlink
/// and /proc/sys reads in microseconds.
const LIVE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared, updated by the parts, read by the endpoints and the systemd notifier.
#[derive(Debug, Default)]
pub struct DaemonStatus {
    inner: Mutex<StatusSnapshot>,
    pub changed: Notify,
    live: OnceLock<LiveCheck>,
}

impl DaemonStatus {
    pub fn new(identity: &str) -> Self {
        DaemonStatus {
            inner: Mutex::new(StatusSnapshot {
                version: env!("CARGO_PKG_VERSION").into(),
                identity: identity.into(),
                role: Role::Standby,
                ..StatusSnapshot::default()
            }),
            changed: Notify::new(),
            live: OnceLock::new(),
        }
    }

    /// Installs the live datapath check (once; later calls are ignored).
    pub fn set_live_check(&self, check: LiveCheck) {
        let _ = self.live.set(check);
    }

    /// The datapath as the kernel holds it now; `None` before the check is installed.
    pub async fn live(&self) -> Option<Live> {
        let check = self.live.get()?.clone();
        Some(
            tokio::time::timeout(LIVE_CHECK_TIMEOUT, (check.0)())
                .await
                .unwrap_or_else(|_| Live {
                    device_up: false,
                    problems: vec![format!(
                        "the datapath check did not answer within {LIVE_CHECK_TIMEOUT:?}"
                    )],
                }),
        )
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies `f`; wakes watchers only when something actually changed.
    pub fn update(&self, f: impl FnOnce(&mut StatusSnapshot)) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let before = s.clone();
        f(&mut s);
        if *s != before {
            drop(s);
            self.changed.notify_waiters();
        }
    }

    pub fn error(&self, text: String) {
        self.update(|s| {
            s.last_errors.push_back(format!(
                "{} {text}",
                jiff::Timestamp::now().strftime("%H:%M:%S")
            ));
            while s.last_errors.len() > LAST_ERRORS {
                s.last_errors.pop_front();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_az_status_line_names_the_shards_led_and_watched() {
        let shard = |name: &str, role: Role, tables: usize| ShardStatus {
            shard: name.into(),
            role,
            tables: (0..tables).map(|i| format!("rtb-{i}")).collect(),
            tables_in_sync: tables,
            ..ShardStatus::default()
        };
        let s = StatusSnapshot {
            device_up: true,
            nodes_synced: true,
            identity_known: true,
            nodes_programmed: 2,
            shards: vec![
                shard("default", Role::Standby, 0),
                shard("us-east-1a", Role::Leader, 2),
                shard("us-east-1b", Role::Standby, 1),
            ],
            ..StatusSnapshot::default()
        };
        assert_eq!(
            s.line(),
            "leads us-east-1a (2/2 tables) · standby for default, us-east-1b · 2 hybrid nodes"
        );
        assert!(s.ready());
    }

    #[test]
    fn a_shard_leader_that_cannot_write_its_entries_is_not_ready_and_says_which_and_why() {
        let shard = |name: &str, role: Role| ShardStatus {
            shard: name.into(),
            role,
            ..ShardStatus::default()
        };
        let mut s = StatusSnapshot {
            device_up: true,
            nodes_synced: true,
            identity_known: true,
            shards: vec![
                shard("default", Role::Standby),
                shard("us-east-1a", Role::Leader),
            ],
            ..StatusSnapshot::default()
        };
        assert!(s.ready());
        // A standby's reason does not count: it writes nothing.
        s.shards[0].unserved = Some("CiliumVTEPConfig not served".into());
        assert!(s.ready());
        s.shards[1].fenced = Some("term 9 there".into());
        assert!(!s.ready());
        assert!(
            s.line()
                .starts_with("leader of us-east-1a, fenced: term 9 there"),
            "{}",
            s.line()
        );
        s.shards[1].fenced = None;
        s.shards[1].unserved = Some("CiliumVTEPConfig not served".into());
        assert!(!s.ready());
        assert!(
            s.line()
                .starts_with("leader of us-east-1a, CiliumVTEPConfig not served"),
            "{}",
            s.line()
        );
    }

    #[test]
    fn a_leader_without_a_served_vtep_shape_is_not_ready_and_says_why() {
        let mut s = StatusSnapshot {
            device_up: true,
            nodes_synced: true,
            identity_known: true,
            role: Role::Leader,
            ..StatusSnapshot::default()
        };
        assert!(s.ready());
        s.vtepconfig_unserved = Some("CiliumVTEPConfig not served".into());
        assert!(!s.ready());
        assert!(
            s.line().starts_with("leader, CiliumVTEPConfig not served"),
            "{}",
            s.line()
        );
    }
}
