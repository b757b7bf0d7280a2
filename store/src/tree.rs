//! The manifest: a content-addressed radix tree from chunk index to chunk id.
//!
//! Every node holds up to [`FANOUT`] entries `(slot, id)`, sparse and sorted:
//! a leaf (level 0) maps slots to [`ChunkId`]s, an inner node at level `L`
//! maps slots to child [`NodeId`]s at level `L-1`. A missing entry, and the
//! sentinel id `ZERO`, mean "all zeros below": empty subtrees cost nothing.
//! A node's id is the BLAKE3 hash of its encoding, and nodes are stored as
//! framed objects, so two roots that share a subtree share its objects, an
//! update rewrites only the path from changed leaves to the root, and a diff
//! skips every subtree whose ids are equal.
//!
//! A tree over `n` chunks has root level [`levels_for`]`(n)`; growing a
//! volume wraps the root in new parents ([`TreeStore::grow`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use cairn_chunker::{frame, ChunkId};
use lru::LruCache;
use parking_lot::Mutex;

use crate::error::{Result, StoreError};
use crate::objects::{ObjectKind, ObjectLayer};

cairn_chunker::content_id!(
    /// BLAKE3 hash of a manifest node's encoding.
    NodeId
);

/// Entries per node: 512 × 32-byte ids is 16 KiB for a full node.
pub const FANOUT_BITS: u32 = 9;
/// Entries per node.
pub const FANOUT: u64 = 1 << FANOUT_BITS;
const NODE_MAGIC: u8 = b'T';
/// The node cache's share of the memory cache budget (the rest holds
/// chunks): 1/8, at least this much.
const MIN_NODE_CACHE_BYTES: usize = 8 << 20;

/// Root level needed for a tree of `chunks` chunks.
pub fn levels_for(chunks: u64) -> u8 {
    let mut level = 0u8;
    while chunks > capacity(level) {
        level += 1;
    }
    level
}

/// Chunks addressable below a node of `level`.
pub(crate) fn capacity(level: u8) -> u64 {
    1u64.checked_shl(FANOUT_BITS * (level as u32 + 1))
        .unwrap_or(u64::MAX)
}

/// Chunks covered by one entry of a node at `level`.
pub(crate) fn span(level: u8) -> u64 {
    1u64 << (FANOUT_BITS * level as u32)
}

/// A decoded node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// 0 for leaves.
    pub level: u8,
    /// Non-zero entries, sorted by slot.
    pub entries: Vec<(u16, [u8; 32])>,
}

impl Node {
    /// Memory the decoded node holds (for the cache's budget).
    fn memory(&self) -> usize {
        std::mem::size_of::<Self>() + self.entries.capacity() * std::mem::size_of::<(u16, [u8; 32])>() + 64
    }

    fn empty(level: u8) -> Self {
        Self {
            level,
            entries: Vec::new(),
        }
    }

    fn get(&self, slot: u16) -> [u8; 32] {
        match self.entries.binary_search_by_key(&slot, |e| e.0) {
            Ok(i) => self.entries[i].1,
            Err(_) => [0u8; 32],
        }
    }

    /// Serialised form: magic, level, count (u16 LE), then `slot u16 LE, id`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.entries.len() * 34);
        out.push(NODE_MAGIC);
        out.push(self.level);
        out.extend_from_slice(&(self.entries.len() as u16).to_le_bytes());
        for (slot, id) in &self.entries {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(id);
        }
        out
    }

    /// Parses and validates an encoded node.
    pub fn decode(id: NodeId, bytes: &[u8]) -> Result<Self> {
        let corrupt = |reason: &str| StoreError::NodeCorrupt {
            id: id.to_hex(),
            reason: reason.to_string(),
        };
        if bytes.len() < 4 || bytes[0] != NODE_MAGIC {
            return Err(corrupt("bad header"));
        }
        let level = bytes[1];
        let count = u16::from_le_bytes([bytes[2], bytes[3]]) as usize;
        if bytes.len() != 4 + count * 34 {
            return Err(corrupt("length does not match entry count"));
        }
        let mut entries = Vec::with_capacity(count);
        for raw in bytes[4..].chunks_exact(34) {
            let slot = u16::from_le_bytes([raw[0], raw[1]]);
            if slot as u64 >= FANOUT || entries.last().is_some_and(|(prev, _)| *prev >= slot) {
                return Err(corrupt("slots out of order or out of range"));
            }
            entries.push((slot, raw[2..].try_into().expect("34-byte entries")));
        }
        Ok(Self { level, entries })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        node_id(&self.encode())
    }
}

/// The id of an encoded node.
fn node_id(encoded: &[u8]) -> NodeId {
    NodeId(*blake3::hash(encoded).as_bytes())
}

/// A range of chunk indices `[start, start + count)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRun {
    /// First chunk index.
    pub start: u64,
    /// Number of chunks.
    pub count: u64,
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Decoded nodes, least recently used out first, bounded by bytes: every
/// seal writes new versions of the nodes on its paths, so a count bound
/// would let old versions of full leaves (17 KiB each) pile up.
#[derive(Debug)]
struct NodeCache {
    nodes: LruCache<NodeId, Arc<Node>>,
    bytes: usize,
    budget: usize,
}

impl NodeCache {
    fn get(&mut self, id: &NodeId) -> Option<&Arc<Node>> {
        self.nodes.get(id)
    }

    fn put(&mut self, id: NodeId, node: Arc<Node>) {
        self.bytes += node.memory();
        if let Some(old) = self.nodes.put(id, node) {
            self.bytes -= old.memory();
        }
        while self.bytes > self.budget {
            match self.nodes.pop_lru() {
                Some((_, old)) => self.bytes -= old.memory(),
                None => break,
            }
        }
    }
}

/// A leaf's distinct chunks with their occurrences in it.
pub(crate) type Occurrences = Arc<[(ChunkId, u32)]>;

/// Reads and writes manifest trees, with a cache of decoded nodes.
#[derive(Debug)]
pub struct TreeStore {
    objects: Arc<ObjectLayer>,
    cache: Mutex<NodeCache>,
}

/// How a memory cache budget splits into (chunk cache, node cache) bytes.
pub fn split_cache_budget(cache_bytes: usize) -> (usize, usize) {
    let nodes = (cache_bytes / 8).max(MIN_NODE_CACHE_BYTES).min(cache_bytes);
    (cache_bytes - nodes, nodes)
}

impl TreeStore {
    /// A tree store over an object layer, caching up to `cache_bytes` of
    /// decoded nodes.
    pub fn new(objects: Arc<ObjectLayer>, cache_bytes: usize) -> Self {
        Self {
            objects,
            cache: Mutex::new(NodeCache {
                nodes: LruCache::unbounded(),
                bytes: 0,
                budget: cache_bytes,
            }),
        }
    }

    /// Bytes of decoded nodes cached.
    pub fn cached_bytes(&self) -> usize {
        self.cache.lock().bytes
    }

    /// The leaves under a root of `level` as (position, id), in order.
    pub(crate) async fn leaves(&self, root: NodeId, level: u8) -> Result<Vec<(u64, NodeId)>> {
        let mut leaves = Vec::new();
        let mut stack = vec![(root, level, 0u64)];
        while let Some((id, level, position)) = stack.pop() {
            if id.is_zero() {
                continue;
            }
            if level == 0 {
                leaves.push((position, id));
                continue;
            }
            let node = self.load(id, level).await?;
            stack.extend(
                node.entries
                    .iter()
                    .rev()
                    .map(|(slot, child)| (NodeId(*child), level - 1, position * FANOUT + u64::from(*slot))),
            );
        }
        Ok(leaves)
    }

    /// The distinct chunks of a leaf with their occurrences in it.
    pub(crate) async fn occurrences(&self, leaf: NodeId) -> Result<Occurrences> {
        let node = self.load(leaf, 0).await?;
        let mut counts: std::collections::HashMap<ChunkId, u32> =
            std::collections::HashMap::with_capacity(node.entries.len());
        for (_, id) in &node.entries {
            *counts.entry(ChunkId(*id)).or_default() += 1;
        }
        Ok(counts.into_iter().collect::<Vec<_>>().into())
    }

    /// Empties the node cache, so the next loads read the store.
    #[cfg(test)]
    pub(crate) fn forget_cached(&self) {
        let mut cache = self.cache.lock();
        cache.nodes.clear();
        cache.bytes = 0;
    }

    /// Loads a node (from the cache or the store) and checks its level.
    pub async fn load(&self, id: NodeId, level: u8) -> Result<Arc<Node>> {
        if id.is_zero() {
            return Ok(Arc::new(Node::empty(level)));
        }
        if let Some(node) = self.cache.lock().get(&id).cloned() {
            return Ok(node);
        }
        let bytes = self.objects.node_bytes(&id.0).await?;
        let node = Node::decode(id, &bytes)?;
        if node.level != level {
            return Err(StoreError::NodeCorrupt {
                id: id.to_hex(),
                reason: format!("level {} where {} was expected", node.level, level),
            });
        }
        let node = Arc::new(node);
        self.cache.lock().put(id, node.clone());
        Ok(node)
    }

    /// The chunk id at `index` if every node on its path is cached.
    pub fn lookup_cached(&self, root: NodeId, level: u8, index: u64) -> Option<ChunkId> {
        if index >= capacity(level) {
            return Some(ChunkId::ZERO);
        }
        let mut cache = self.cache.lock();
        let (mut id, mut lvl) = (root, level);
        loop {
            if id.is_zero() {
                return Some(ChunkId::ZERO);
            }
            let node = cache.get(&id)?;
            let child = node.get(((index / span(lvl)) % FANOUT) as u16);
            if lvl == 0 {
                return Some(ChunkId(child));
            }
            id = NodeId(child);
            lvl -= 1;
        }
    }

    /// The chunk id at `index` (`ChunkId::ZERO` for holes).
    pub async fn lookup(&self, root: NodeId, level: u8, index: u64) -> Result<ChunkId> {
        if index >= capacity(level) {
            return Ok(ChunkId::ZERO);
        }
        let mut id = root;
        let mut lvl = level;
        loop {
            if id.is_zero() {
                return Ok(ChunkId::ZERO);
            }
            let node = self.load(id, lvl).await?;
            let slot = ((index / span(lvl)) % FANOUT) as u16;
            let child = node.get(slot);
            if lvl == 0 {
                return Ok(ChunkId(child));
            }
            id = NodeId(child);
            lvl -= 1;
        }
    }

    /// Applies `updates` (sorted by index, unique; `ZERO` clears) and returns
    /// the new root. New nodes are stored before this returns.
    pub async fn update(&self, root: NodeId, level: u8, updates: &[(u64, ChunkId)]) -> Result<NodeId> {
        if updates.is_empty() {
            return Ok(root);
        }
        debug_assert!(
            updates.windows(2).all(|w| w[0].0 < w[1].0),
            "updates sorted and unique"
        );
        if let Some(&(last, _)) = updates.last() {
            if last >= capacity(level) {
                return Err(StoreError::InvalidSize(format!(
                    "chunk index {last} beyond tree capacity at level {level}"
                )));
            }
        }
        let mut fresh = Vec::new();
        let new_root = self.update_node(root, level, 0, updates, &mut fresh).await?;
        self.store_nodes(fresh).await?;
        Ok(new_root)
    }

    fn update_node<'a>(
        &'a self,
        id: NodeId,
        level: u8,
        base: u64,
        updates: &'a [(u64, ChunkId)],
        fresh: &'a mut Vec<(NodeId, Vec<u8>, Arc<Node>)>,
    ) -> BoxFut<'a, NodeId> {
        Box::pin(async move {
            let node = self.load(id, level).await?;
            let mut entries: BTreeMap<u16, [u8; 32]> = node.entries.iter().copied().collect();
            let child_span = span(level);
            let mut rest = updates;
            while let Some(&(first, _)) = rest.first() {
                let slot = ((first - base) / child_span) as u16;
                let slot_end = base + (slot as u64 + 1) * child_span;
                let n = rest.partition_point(|(i, _)| *i < slot_end);
                let (group, tail) = rest.split_at(n);
                rest = tail;
                let new_child = if level == 0 {
                    group[group.len() - 1].1 .0
                } else {
                    let child = NodeId(entries.get(&slot).copied().unwrap_or([0u8; 32]));
                    let child_base = base + slot as u64 * child_span;
                    self.update_node(child, level - 1, child_base, group, fresh)
                        .await?
                        .0
                };
                if new_child == [0u8; 32] {
                    entries.remove(&slot);
                } else {
                    entries.insert(slot, new_child);
                }
            }
            if entries.is_empty() {
                return Ok(NodeId::ZERO);
            }
            let node = Node {
                level,
                entries: entries.into_iter().collect(),
            };
            let encoded = node.encode();
            let new_id = node_id(&encoded);
            fresh.push((new_id, encoded, Arc::new(node)));
            Ok(new_id)
        })
    }

    async fn store_nodes(&self, fresh: Vec<(NodeId, Vec<u8>, Arc<Node>)>) -> Result<()> {
        use futures::stream::{StreamExt, TryStreamExt};
        let mut uploads = Vec::with_capacity(fresh.len());
        for (id, encoded, node) in fresh {
            self.cache.lock().put(id, node);
            let framed = Bytes::from(frame::encode(&encoded));
            uploads.push(self.objects.put_if_absent(ObjectKind::Node, id.0, framed));
        }
        futures::stream::iter(uploads)
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// Re-roots a tree from `from` to the higher level `to` (volume growth).
    pub async fn grow(&self, root: NodeId, from: u8, to: u8) -> Result<NodeId> {
        if root.is_zero() || from >= to {
            return Ok(root);
        }
        let mut fresh = Vec::new();
        let mut id = root;
        for level in from + 1..=to {
            let node = Node {
                level,
                entries: vec![(0, id.0)],
            };
            let encoded = node.encode();
            id = node_id(&encoded);
            fresh.push((id, encoded, Arc::new(node)));
        }
        self.store_nodes(fresh).await?;
        Ok(id)
    }

    /// Chunk ranges whose ids differ between two trees of the same level.
    /// Visits only subtrees whose ids differ.
    pub async fn diff(&self, a: NodeId, b: NodeId, level: u8) -> Result<Vec<ChunkRun>> {
        let mut out = Vec::new();
        self.diff_node(a, b, level, 0, &mut out).await?;
        Ok(out)
    }

    fn diff_node<'a>(
        &'a self,
        a: NodeId,
        b: NodeId,
        level: u8,
        base: u64,
        out: &'a mut Vec<ChunkRun>,
    ) -> BoxFut<'a, ()> {
        Box::pin(async move {
            if a == b {
                return Ok(());
            }
            let (na, nb) = (self.load(a, level).await?, self.load(b, level).await?);
            let slots: std::collections::BTreeSet<u16> =
                na.entries.iter().chain(&nb.entries).map(|e| e.0).collect();
            for slot in slots {
                let (ca, cb) = (na.get(slot), nb.get(slot));
                if ca == cb {
                    continue;
                }
                let child_base = base + slot as u64 * span(level);
                if level == 0 {
                    push_run(out, child_base, 1);
                } else {
                    self.diff_node(NodeId(ca), NodeId(cb), level - 1, child_base, out)
                        .await?;
                }
            }
            Ok(())
        })
    }

    /// Visits every node and chunk reachable from `root`. `visit` returns
    /// false to skip a node's subtree (e.g. already marked).
    pub async fn walk<F>(&self, root: NodeId, level: u8, visit: &mut F) -> Result<()>
    where
        F: FnMut(Reachable) -> bool + Send,
    {
        self.walk_node(root, level, 0, visit).await
    }

    fn walk_node<'a, F>(&'a self, id: NodeId, level: u8, base: u64, visit: &'a mut F) -> BoxFut<'a, ()>
    where
        F: FnMut(Reachable) -> bool + Send,
    {
        Box::pin(async move {
            if id.is_zero() || !visit(Reachable::Node(id)) {
                return Ok(());
            }
            let node = self.load(id, level).await?;
            for (slot, child) in &node.entries {
                let child_base = base + *slot as u64 * span(level);
                if level == 0 {
                    visit(Reachable::Chunk {
                        id: ChunkId(*child),
                        index: child_base,
                    });
                } else {
                    self.walk_node(NodeId(*child), level - 1, child_base, visit)
                        .await?;
                }
            }
            Ok(())
        })
    }
}

/// Something a walk reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reachable {
    /// A manifest node.
    Node(NodeId),
    /// A chunk at a chunk index.
    Chunk {
        /// The chunk's id.
        id: ChunkId,
        /// Its index in the volume.
        index: u64,
    },
}

fn push_run(out: &mut Vec<ChunkRun>, start: u64, count: u64) {
    if let Some(last) = out.last_mut() {
        if last.start + last.count == start {
            last.count += count;
            return;
        }
    }
    out.push(ChunkRun { start, count });
}
