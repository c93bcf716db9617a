//! One published state of the hybrid node set: the nodes in conflict order, and the
//! node-level change from the publication before it, so the datapath can apply an event
//! as the change it is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::vtep::{NodeChange, Rank, Ranked};
use super::HybridNode;

/// Process-wide: two lists are the same publication only if their ids are equal.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Nodes per chunk of a [`RankedNodes`] (a chunk splits at twice this).
const CHUNK: usize = 64;

/// Nodes in [`Rank`] order, held in chunks that publications share: a change copies the
/// chunk it lands in and the list of chunk pointers, about `CHUNK + n / CHUNK` pointers
/// instead of all `n` (the watch publishes one per event).
#[derive(Debug, Clone, Default)]
pub struct RankedNodes {
    /// Non-empty, in rank order, each at most `2 * CHUNK` long.
    chunks: Vec<Arc<Vec<Arc<Ranked>>>>,
    len: usize,
}

impl RankedNodes {
    /// `nodes` must be in rank order with distinct ranks.
    pub fn from_sorted(nodes: Vec<Arc<Ranked>>) -> Self {
        debug_assert!(nodes.windows(2).all(|w| w[0].rank < w[1].rank));
        RankedNodes {
            len: nodes.len(),
            chunks: nodes.chunks(CHUNK).map(|c| Arc::new(c.to_vec())).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Ranked>> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The chunk `rank` belongs in: the first whose last node is not ranked before it
    /// (the last chunk for a rank after every node).
    fn chunk_of(&self, rank: &Rank) -> usize {
        self.chunks
            .partition_point(|c| c.last().is_some_and(|n| n.rank < *rank))
            .min(self.chunks.len().saturating_sub(1))
    }

    /// Adds `node`, or replaces the node of the same rank (returned).
    pub fn insert(&mut self, node: Arc<Ranked>) -> Option<Arc<Ranked>> {
        if self.chunks.is_empty() {
            self.chunks.push(Arc::new(vec![node]));
            self.len = 1;
            return None;
        }
        let c = self.chunk_of(&node.rank);
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        match chunk.binary_search_by(|n| n.rank.cmp(&node.rank)) {
            Ok(i) => return Some(std::mem::replace(&mut chunk[i], node)),
            Err(i) => chunk.insert(i, node),
        }
        self.len += 1;
        if chunk.len() > 2 * CHUNK {
            let tail = chunk.split_off(CHUNK);
            self.chunks.insert(c + 1, Arc::new(tail));
        }
        None
    }

    /// Removes the node ranked `rank`, if there is one.
    pub fn remove(&mut self, rank: &Rank) -> Option<Arc<Ranked>> {
        if self.chunks.is_empty() {
            return None;
        }
        let c = self.chunk_of(rank);
        let i = self.chunks[c].binary_search_by(|n| n.rank.cmp(rank)).ok()?;
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        let gone = chunk.remove(i);
        self.len -= 1;
        if chunk.is_empty() {
            self.chunks.remove(c);
        } else if chunk.len() < CHUNK / 2 && c + 1 < self.chunks.len() {
            // Keep chunks from thinning out: a small one takes its successor in when
            // they fit together.
            if self.chunks[c].len() + self.chunks[c + 1].len() <= 2 * CHUNK {
                let next = self.chunks.remove(c + 1);
                Arc::make_mut(&mut self.chunks[c]).extend(next.iter().cloned());
            }
        }
        Some(gone)
    }
}

/// The hybrid nodes to program, in [`Rank`] order (oldest first: when two nodes conflict,
/// the one that was there first keeps its traffic).
#[derive(Debug)]
pub struct NodeList {
    id: u64,
    nodes: RankedNodes,
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
        Self::from_ranked(RankedNodes::from_sorted(nodes), delta)
    }

    /// [`NodeList::new`] for nodes already chunked (the watch's own copy: publishing
    /// shares its chunks).
    pub fn from_ranked(nodes: RankedNodes, delta: Option<(u64, Vec<NodeChange>)>) -> Self {
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

    /// The nodes with their ranks, in rank order.
    pub fn ranked(&self) -> impl Iterator<Item = &Arc<Ranked>> {
        self.nodes.iter()
    }

    pub fn to_vec(&self) -> Vec<HybridNode> {
        self.iter().cloned().collect()
    }

    /// The changes that turn `before` into this list: the published delta when `before`
    /// is the list it was made from, else a walk of both lists (chunks and nodes shared
    /// between publications are compared by pointer first, so that walk stays cheap).
    pub fn changes_since(&self, before: &NodeList) -> Vec<NodeChange> {
        if before.id == self.id {
            return Vec::new();
        }
        if let Some(d) = self.delta.as_ref().filter(|d| d.base == before.id) {
            return d.changes.clone();
        }
        let mut changes = Vec::new();
        let (old, new) = (&before.nodes.chunks, &self.nodes.chunks);
        // Cursors: (chunk, position in it).
        let (mut a, mut b) = ((0, 0), (0, 0));
        let at = |chunks: &[Arc<Vec<Arc<Ranked>>>], (c, i): (usize, usize)| {
            chunks.get(c).and_then(|chunk| chunk.get(i)).cloned()
        };
        let step = |chunks: &[Arc<Vec<Arc<Ranked>>>], (c, i): (usize, usize)| {
            if i + 1 < chunks[c].len() {
                (c, i + 1)
            } else {
                (c + 1, 0)
            }
        };
        loop {
            // Both at the start of the same shared chunk: nothing in it changed.
            if a.1 == 0
                && b.1 == 0
                && a.0 < old.len()
                && b.0 < new.len()
                && Arc::ptr_eq(&old[a.0], &new[b.0])
            {
                a.0 += 1;
                b.0 += 1;
                continue;
            }
            match (at(old, a), at(new, b)) {
                (None, None) => return changes,
                (Some(o), None) => {
                    changes.push(NodeChange::Remove(o.rank.clone()));
                    a = step(old, a);
                }
                (None, Some(n)) => {
                    changes.push(NodeChange::Upsert(n));
                    b = step(new, b);
                }
                (Some(o), Some(n)) => match o.rank.cmp(&n.rank) {
                    std::cmp::Ordering::Less => {
                        changes.push(NodeChange::Remove(o.rank.clone()));
                        a = step(old, a);
                    }
                    std::cmp::Ordering::Greater => {
                        changes.push(NodeChange::Upsert(n));
                        b = step(new, b);
                    }
                    std::cmp::Ordering::Equal => {
                        if !Arc::ptr_eq(&o, &n) && o.node != n.node {
                            changes.push(NodeChange::Upsert(n));
                        }
                        a = step(old, a);
                        b = step(new, b);
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
                .zip(other.nodes.iter())
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

impl std::ops::Index<usize> for NodeList {
    type Output = HybridNode;

    /// The `i`th node in rank order; panics past the end, like a slice.
    fn index(&self, i: usize) -> &HybridNode {
        match self.nodes.iter().nth(i) {
            Some(r) => &r.node,
            None => panic!("node {i} of a list of {}", self.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn ranked(i: u64, version: u8) -> Arc<Ranked> {
        let name = format!("n{i:05}");
        Arc::new(Ranked {
            rank: Rank {
                created: None,
                position: i,
                name: name.clone(),
            },
            node: HybridNode {
                name,
                ip: std::net::Ipv4Addr::new(10, version, (i >> 8) as u8, i as u8),
                pod_cidrs: Vec::new(),
                probe_ip: None,
            },
        })
    }

    /// Random inserts, replacements and removals keep the chunks in rank order and equal
    /// to a plain ordered map; every published list's changes from any earlier list (the
    /// walk that skips shared chunks) replay to it; and publications share their chunks.
    #[test]
    fn chunked_lists_match_an_ordered_map_and_their_changes_replay() {
        for seed in 0..40 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut model: BTreeMap<Rank, Arc<Ranked>> = BTreeMap::new();
            let start: Vec<Arc<Ranked>> = (0..rng.u64(0..400)).map(|i| ranked(i * 2, 0)).collect();
            for r in &start {
                model.insert(r.rank.clone(), r.clone());
            }
            let mut nodes = RankedNodes::from_sorted(start);
            let mut published = vec![NodeList::from_ranked(nodes.clone(), None)];
            for _ in 0..300 {
                let i = rng.u64(0..900);
                if rng.bool() {
                    let r = ranked(i, rng.u8(..3));
                    assert_eq!(
                        nodes.insert(r.clone()).map(|o| o.rank.clone()),
                        model.insert(r.rank.clone(), r).map(|o| o.rank.clone()),
                        "seed {seed}"
                    );
                } else {
                    let r = ranked(i, 0).rank.clone();
                    assert_eq!(
                        nodes.remove(&r).map(|o| o.rank.clone()),
                        model.remove(&r).map(|o| o.rank.clone()),
                        "seed {seed}"
                    );
                }
                assert_eq!(nodes.len(), model.len(), "seed {seed}");
                assert!(nodes
                    .chunks
                    .iter()
                    .all(|c| !c.is_empty() && c.len() <= 2 * CHUNK));
                published.push(NodeList::from_ranked(nodes.clone(), None));
            }
            let now = published.last().expect("published");
            assert!(
                now.ranked().map(|r| &r.rank).eq(model.keys()),
                "seed {seed}"
            );
            for before in published.iter().step_by(37) {
                let mut replay: BTreeMap<Rank, Arc<Ranked>> = before
                    .ranked()
                    .map(|r| (r.rank.clone(), r.clone()))
                    .collect();
                for change in now.changes_since(before) {
                    match change {
                        NodeChange::Upsert(r) => replay.insert(r.rank.clone(), r),
                        NodeChange::Remove(rank) => replay.remove(&rank),
                    };
                }
                assert!(
                    replay
                        .values()
                        .map(|r| (&r.rank, &r.node))
                        .eq(model.values().map(|r| (&r.rank, &r.node))),
                    "seed {seed}"
                );
            }
            // One more change copies one chunk, not the list.
            if nodes.len() > 4 * CHUNK {
                let before = nodes.clone();
                nodes.insert(ranked(1_000_001, 0));
                let shared = before
                    .chunks
                    .iter()
                    .filter(|c| nodes.chunks.iter().any(|d| Arc::ptr_eq(c, d)))
                    .count();
                assert!(
                    shared + 1 >= before.chunks.len(),
                    "seed {seed}: {shared} of {}",
                    before.chunks.len()
                );
            }
        }
    }
}
