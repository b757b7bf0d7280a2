//! Stored bytes per root, kept so that a new root costs only its changes.
//!
//! Roots and leaves are immutable, so what is learnt about them never goes
//! stale: [`RootMemo`] keeps each leaf's chunks with their stored lengths
//! and each root's stored bytes (those of its distinct chunks). A walk
//! then costs one index lookup per entry of a leaf it has not seen (about
//! 2 µs each: 16 Ki of them for a GiB of changed data) and a hash-set
//! insert per chunk. A commit that knows the root it changed and the
//! lengths of the chunks it stored hands them on ([`remember_commit`]), so
//! the leaves of the new root are known before anyone asks, and with all
//! of them known its stored bytes too: a fork or clone of a volume under
//! random writes answers without a walk.

use std::collections::HashMap;

use cairn_chunker::ChunkId;
use lru::LruCache;
use parking_lot::Mutex;

use crate::error::Result;
use crate::objects::ObjectKind;
use crate::sealed::Backend;
use crate::tree::NodeId;

/// The chunks of one leaf node with their stored lengths.
pub(crate) type LeafChunks = std::sync::Arc<[(ChunkId, u64)]>;

/// Leaves whose chunk lengths are kept (about 20 KiB each at most: 1,024
/// cover 32 GiB of distinct data at 64 KiB chunks).
const LEAVES: usize = 1024;
/// Roots whose stored bytes are kept.
const ROOTS: usize = 4096;

/// What is known about immutable roots and leaves (see the module doc).
pub(crate) struct RootMemo {
    stored: Mutex<LruCache<NodeId, u64>>,
    leaves: Mutex<LruCache<NodeId, LeafChunks>>,
}

impl RootMemo {
    pub(crate) fn new() -> Self {
        let cap = |n: usize| std::num::NonZeroUsize::new(n).expect("non-zero");
        Self {
            stored: Mutex::new(LruCache::new(cap(ROOTS))),
            leaves: Mutex::new(LruCache::new(cap(LEAVES))),
        }
    }

    /// Records the stored bytes of `root`.
    pub(crate) fn remember_stored(&self, root: NodeId, stored: u64) {
        self.stored.lock().put(root, stored);
    }

    /// The stored bytes of `root`, if known.
    pub(crate) fn stored(&self, root: NodeId) -> Option<u64> {
        if root.is_zero() {
            return Some(0);
        }
        self.stored.lock().get(&root).copied()
    }
}

impl std::fmt::Debug for RootMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootMemo")
            .field("roots", &self.stored.lock().len())
            .field("leaves", &self.leaves.lock().len())
            .finish()
    }
}

/// One leaf's chunks and lengths: memoised, else from `known` where it
/// has them and from one batched index lookup for the rest.
async fn leaf_chunks(
    backend: &Backend,
    leaf: NodeId,
    known: impl Fn(&ChunkId) -> Option<u64>,
) -> Result<LeafChunks> {
    if let Some(hit) = backend.accounting.leaves.lock().get(&leaf) {
        return Ok(hit.clone());
    }
    let node = backend.trees.load(leaf, 0).await?;
    let ids: Vec<(ChunkId, Option<u64>)> = node
        .entries
        .iter()
        .map(|(_, id)| (ChunkId(*id), known(&ChunkId(*id))))
        .collect();
    let unknown: Vec<[u8; 32]> = ids
        .iter()
        .filter(|(_, len)| len.is_none())
        .map(|(id, _)| id.0)
        .collect();
    let mut looked_up = if unknown.is_empty() {
        Vec::new()
    } else {
        backend.objects.stored_lens(ObjectKind::Chunk, &unknown)?
    }
    .into_iter();
    let chunks: LeafChunks = ids
        .into_iter()
        .map(|(id, len)| {
            let len = len
                .or_else(|| looked_up.next())
                .expect("one length per unknown entry");
            (id, len)
        })
        .collect::<Vec<_>>()
        .into();
    backend.accounting.leaves.lock().put(leaf, chunks.clone());
    Ok(chunks)
}

/// Stored bytes of the distinct chunks of some leaves.
fn distinct_stored<'a>(leaves: impl IntoIterator<Item = &'a LeafChunks>) -> u64 {
    let mut chunks: HashMap<ChunkId, u64> = HashMap::new();
    for leaf in leaves {
        chunks.extend(leaf.iter().copied());
    }
    chunks.values().sum()
}

/// Stored bytes of the distinct chunks under a root of `level`.
pub(crate) async fn stored_bytes_of(backend: &Backend, root: NodeId, level: u8) -> Result<u64> {
    if let Some(hit) = backend.accounting.stored(root) {
        return Ok(hit);
    }
    let mut leaves = Vec::new();
    for (_, leaf) in backend.trees.leaves(root, level).await? {
        leaves.push(leaf_chunks(backend, leaf, |_| None).await?);
    }
    let total = distinct_stored(&leaves);
    backend.accounting.remember_stored(root, total);
    Ok(total)
}

/// Learns the chunk lengths of the leaves a commit changed when it made
/// `new` from `old` (both of `level`), storing the chunks in `stored` (id,
/// stored length): a changed leaf takes its lengths from `stored` and from
/// the leaf that held its place under `old`, and looks up only chunks that
/// neither knows (deduplicated ones). A leaf whose predecessor is not
/// known is left for a walk to learn, so this never costs more lookups
/// than the commit made uploads.
pub(crate) async fn remember_commit(
    backend: &Backend,
    old: NodeId,
    new: NodeId,
    level: u8,
    stored: &[(ChunkId, u64)],
) -> Result<()> {
    let memo = &backend.accounting;
    if new.is_zero() || memo.stored(new).is_some() {
        return Ok(());
    }
    let fresh: HashMap<ChunkId, u64> = stored.iter().copied().collect();
    let before: HashMap<u64, NodeId> = backend.trees.leaves(old, level).await?.into_iter().collect();
    let leaves = backend.trees.leaves(new, level).await?;
    for &(position, leaf) in &leaves {
        let replaced: HashMap<ChunkId, u64> = match before.get(&position) {
            Some(old_leaf) if *old_leaf == leaf => continue,
            Some(old_leaf) => match memo.leaves.lock().peek(old_leaf) {
                Some(chunks) => chunks.iter().copied().collect(),
                None => continue,
            },
            None => HashMap::new(),
        };
        let known = |id: &ChunkId| fresh.get(id).or_else(|| replaced.get(id)).copied();
        leaf_chunks(backend, leaf, known).await?;
    }
    // With every leaf known, the root's stored bytes cost a hash set here
    // (in the seal, in the background) rather than in the answer of the
    // next fork or clone of it.
    let known: Option<Vec<LeafChunks>> = {
        let mut memo_leaves = memo.leaves.lock();
        leaves
            .iter()
            .map(|(_, leaf)| memo_leaves.get(leaf).cloned())
            .collect()
    };
    if let Some(known) = known {
        memo.remember_stored(new, distinct_stored(&known));
    }
    Ok(())
}
