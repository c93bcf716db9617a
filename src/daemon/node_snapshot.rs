//! The last applied hybrid node set, kept in the state directory so a gateway rebooted
//! while the Kubernetes API is unreachable still forwards: at start, when the first
//! CiliumNode list does not come within `datapath.cold_start_wait`, the datapath is
//! programmed from it, and the live set replaces it as soon as the watch has listed.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory), so a crash
//! or power loss leaves the old snapshot or the new one, never half of one; and at most
//! once per [`MIN_INTERVAL`], so node churn does not turn into disk churn.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::datapath::{Desired, HybridNode, NodeList, NodePolicy};
use crate::k8s::cilium_nodes::NodeSet;

/// The file in the state directory.
pub const FILE_NAME: &str = "nodes.json";
/// The format this build writes and reads; anything else is refused, not guessed at.
pub const VERSION: u32 = 1;
/// At most one write per this long; the latest set is written when it is over.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a node set snapshot: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: format version {found}, this build reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: no node in it passes the node checks ({rejected} rejected); an empty set is never programmed from a snapshot")]
    NoUsableNode { path: PathBuf, rejected: usize },
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    /// Unix seconds.
    written_at: i64,
    nodes: Vec<Node>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Node {
    name: String,
    ip: Ipv4Addr,
    pod_cidrs: Vec<Ipv4Net>,
    /// The tunnel prober's target (absent in snapshots of nodes without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    probe_ip: Option<Ipv4Addr>,
}

/// A snapshot read back and checked.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub nodes: NodeSet,
    /// Unix seconds.
    pub written_at: i64,
}

impl Loaded {
    pub fn age(&self) -> Duration {
        let now = jiff::Timestamp::now().as_second();
        Duration::from_secs(u64::try_from(now - self.written_at).unwrap_or(0))
    }
}

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `nodes` to `dir` atomically (tmp + fsync + rename + fsync of the directory).
pub fn save<'a>(
    dir: &Path,
    nodes: impl IntoIterator<Item = &'a HybridNode>,
) -> Result<(), SnapshotError> {
    let path = path_in(dir);
    let file = File {
        version: VERSION,
        written_at: jiff::Timestamp::now().as_second(),
        nodes: nodes
            .into_iter()
            .map(|n| Node {
                name: n.name.clone(),
                ip: n.ip,
                pod_cidrs: n.pod_cidrs.clone(),
                probe_ip: n.probe_ip,
            })
            .collect(),
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    let text = serde_json::to_vec(&file).map_err(|source| SnapshotError::Corrupt {
        path: path.clone(),
        source,
    })?;
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&text).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    // The rename is durable only once the directory entry is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Reads the snapshot in `dir` and checks it: the format version, every node as the
/// datapath would check a live one, and at least one usable node. `Ok(None)`: there is
/// none.
pub fn load(dir: &Path, policy: &NodePolicy) -> Result<Option<Loaded>, SnapshotError> {
    let path = path_in(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::Io { path, source }),
    };
    // The version first, so a future format is named as such rather than as corrupt.
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned = serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Corrupt {
        path: path.clone(),
        source,
    })?;
    if v.version != VERSION {
        return Err(SnapshotError::Version {
            path,
            found: v.version,
        });
    }
    let file: File = serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Corrupt {
        path: path.clone(),
        source,
    })?;
    let nodes: Vec<HybridNode> = file
        .nodes
        .into_iter()
        .map(|n| HybridNode {
            name: n.name,
            ip: n.ip,
            pod_cidrs: n.pod_cidrs,
            probe_ip: n.probe_ip,
        })
        .collect();
    let (desired, rejected) = Desired::build_with(&nodes, policy);
    if desired.neighbours.is_empty() {
        return Err(SnapshotError::NoUsableNode {
            path,
            rejected: rejected.len(),
        });
    }
    Ok(Some(Loaded {
        nodes: Arc::new(NodeList::from_nodes(nodes)),
        written_at: file.written_at,
    }))
}

/// Hands applied node sets to the writer task; cheap to clone.
#[derive(Clone)]
pub struct Keeper {
    latest: watch::Sender<Option<NodeSet>>,
    /// The set loaded from the snapshot, while it is the one programmed: not written back.
    loaded: Arc<Mutex<Option<NodeSet>>>,
}

impl Keeper {
    /// Starts the writer task for `dir` (until `cancel`).
    pub fn start(dir: PathBuf, cancel: CancellationToken) -> Self {
        let (latest, rx) = watch::channel(None);
        tokio::spawn(write_loop(dir, rx, cancel));
        Keeper {
            latest,
            loaded: Arc::default(),
        }
    }

    /// `set` is what the kernel now holds (a pass applied it without errors).
    pub fn applied(&self, set: &NodeSet) {
        let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.as_ref().is_some_and(|l| Arc::ptr_eq(l, set)) {
            return;
        }
        drop(loaded);
        self.latest.send_if_modified(|cur| {
            // Publications are compared by id: comparing the nodes would cost the whole
            // set on every pass.
            if cur.as_ref().is_some_and(|c| c.id() == set.id()) {
                return false;
            }
            *cur = Some(set.clone());
            true
        });
    }

    /// `set` came from the snapshot itself: rewriting it would only refresh its age.
    pub fn mark_loaded(&self, set: &NodeSet) {
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(set.clone());
    }
}

async fn write_loop(
    dir: PathBuf,
    mut rx: watch::Receiver<Option<NodeSet>>,
    cancel: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
        let Some(set) = rx.borrow_and_update().clone() else {
            continue;
        };
        let d = dir.clone();
        // Blocking file I/O and fsync stay off the runtime's workers.
        match tokio::task::spawn_blocking(move || save(&d, set.iter())).await {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!("node set snapshot written again");
                }
                failing = false;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!("cannot keep the node set snapshot: {e}");
                }
                failing = true;
            }
            Err(e) => tracing::warn!("node set snapshot writer: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(MIN_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, cidr: &str) -> HybridNode {
        HybridNode {
            name: name.into(),
            ip: ip.parse().unwrap(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            probe_ip: None,
        }
    }

    fn policy() -> NodePolicy {
        let mut p = NodePolicy::for_pod_cidrs(&["192.168.32.0/23".parse().unwrap()]);
        p.vpc_cidrs = vec!["10.250.0.0/16".parse().unwrap()];
        p
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "hgw-snap-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_keeps_the_set_and_its_order() {
        let d = dir();
        let nodes = vec![
            node("b", "10.80.0.3", "192.168.32.64/26"),
            node("a", "10.80.0.2", "192.168.32.0/26"),
        ];
        save(&d, &nodes).unwrap();
        let l = load(&d, &policy()).unwrap().unwrap();
        assert_eq!(l.nodes.to_vec(), nodes);
        assert!(l.age() < Duration::from_secs(5));
        assert!(!d.join(format!(".{FILE_NAME}.tmp")).exists());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn missing_corrupt_foreign_version_or_unusable_snapshots_are_refused() {
        let d = dir();
        assert!(load(&d, &policy()).unwrap().is_none(), "missing");
        let path = path_in(&d);
        for (text, want) in [
            ("", "not a node set snapshot"),
            ("{\"version\":1,\"written_at\":1,\"nodes\":[", "not a node set snapshot"),
            ("{\"version\":2,\"written_at\":1,\"nodes\":[]}", "format version 2"),
            ("{\"version\":1,\"written_at\":1,\"nodes\":[]}", "no node in it"),
            (
                "{\"version\":1,\"written_at\":1,\"nodes\":[{\"name\":\"x\",\"ip\":\"10.80.0.2\",\"pod_cidrs\":[\"not a cidr\"]}]}",
                "not a node set snapshot",
            ),
            // Every node fails the live checks (inside the VPC, metadata address).
            (
                "{\"version\":1,\"written_at\":1,\"nodes\":[{\"name\":\"x\",\"ip\":\"10.250.0.9\",\"pod_cidrs\":[\"192.168.32.0/26\"]},{\"name\":\"y\",\"ip\":\"169.254.169.254\",\"pod_cidrs\":[]}]}",
                "no node in it passes the node checks (2 rejected)",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = load(&d, &policy()).expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        std::fs::remove_dir_all(&d).ok();
    }
}
