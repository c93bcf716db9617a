//! One published state of the hybrid node set: the nodes in conflict order, and the
//! node-level change from the publication before it, so the datapath can apply an event
//! as the change it is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::vtep::{NodeChange, Rank, Ranked};
use super::HybridNode;

/// Process-wide: two lists are the same publication only if their ids are equal.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The hybrid nodes to program, in [`Rank`] order (oldest first: when two nodes conflict,
/// the one that was there first keeps its traffic).
#[derive(Debug)]
pub struct NodeList {
    id: u64,
    nodes: Vec<Arc<Ranked>>,
    delta: Option<Delta>,
}

/// How a list differs from the publication `base`.
#[derive(Debug)]
struct Delta {
    base: u64,
    changes: Vec<NodeChange>,
}

impl NodeList {
    /// `nodes` must be in rank order with distinct ranks. `delta`: the id of the list
    /// this one was made from and the changes that made it.
    pub fn new(nodes: Vec<Arc<Ranked>>, delta: Option<(u64, Vec<NodeChange>)>) -> Self {
        debug_assert!(nodes.windows(2).all(|w| w[0].rank < w[1].rank));
        NodeList {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            nodes,
            delta: delta.map(|(base, changes)| Delta { base, changes }),
        }
    }

    /// A plain list (static file, snapshot): ranked by position, so its order is the
    /// conflict order.
    pub fn from_nodes(nodes: Vec<HybridNode>) -> Self {
        let ranked = nodes
            .into_iter()
            .enumerate()
            .map(|(i, node)| {
                Arc::new(Ranked {
                    rank: Rank {
                        created: None,
                        position: i as u64,
                        name: node.name.clone(),
                    },
                    node,
                })
            })
            .collect();
        NodeList::new(ranked, None)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &HybridNode> {
        self.nodes.iter().map(|r| &r.node)
    }

    pub fn ranked(&self) -> &[Arc<Ranked>] {
        &self.nodes
    }

    pub fn to_vec(&self) -> Vec<HybridNode> {
        self.iter().cloned().collect()
    }

    /// The changes that turn `before` into this list: the published delta when `before`
    /// is the list it was made from, else a walk of both lists (nodes shared between
    /// publications are compared by pointer first, so that walk stays cheap).
    pub fn changes_since(&self, before: &NodeList) -> Vec<NodeChange> {
        if before.id == self.id {
            return Vec::new();
        }
        if let Some(d) = self.delta.as_ref().filter(|d| d.base == before.id) {
            return d.changes.clone();
        }
        let mut changes = Vec::new();
        let (mut a, mut b) = (before.nodes.iter().peekable(), self.nodes.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => return changes,
                (Some(old), None) => {
                    changes.push(NodeChange::Remove(old.rank.clone()));
                    a.next();
                }
                (None, Some(new)) => {
                    changes.push(NodeChange::Upsert((*new).clone()));
                    b.next();
                }
                (Some(old), Some(new)) => match old.rank.cmp(&new.rank) {
                    std::cmp::Ordering::Less => {
                        changes.push(NodeChange::Remove(old.rank.clone()));
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        changes.push(NodeChange::Upsert((*new).clone()));
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !Arc::ptr_eq(old, new) && old.node != new.node {
                            changes.push(NodeChange::Upsert((*new).clone()));
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
    }
}

impl PartialEq for NodeList {
    /// The same nodes in the same order (ids and deltas aside).
    fn eq(&self, other: &Self) -> bool {
        self.nodes.len() == other.nodes.len()
            && self
                .nodes
                .iter()
                .zip(&other.nodes)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

impl std::ops::Index<usize> for NodeList {
    type Output = HybridNode;

    fn index(&self, i: usize) -> &HybridNode {
        &self.nodes[i].node
    }
}
