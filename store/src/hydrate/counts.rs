//! Hydration from counters: how many of a tree's chunk occurrences are
//! local, kept per leaf and brought up to date from what the caches report,
//! so that asking costs a sum over the tree's leaves (32 per GiB at 64 KiB
//! chunks) instead of a walk with a cache lookup per chunk.
//!
//! The caches (memory and disk) note every chunk they take in or let go in
//! a [`ChangeFeed`]. [`LocalCounts`] keeps the roots it was asked about
//! (least recently asked dropped past [`ROOTS`]), their leaves with their
//! total and local occurrences, and, for every chunk under them, whether it
//! was local when last checked and which leaves hold it. Before answering
//! it checks again the chunks the feed named and moves their occurrences
//! between local and not; a feed that overflowed (nobody asked for a long
//! while) has every tracked chunk checked again. A chunk's state changes
//! before it is noted, so an answer misses at most the changes racing it.
//!
//! Everything that can fail or wait (listing and loading leaves) happens
//! before the index changes, in one synchronous step: a dropped request
//! leaves it as it was.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cairn_chunker::ChunkId;
use lru::LruCache;
use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::error::Result;
use crate::tree::{NodeId, Occurrences, TreeStore};

/// Roots whose leaves are tracked.
const ROOTS: usize = 4096;
/// Changes the feed holds before it gives up naming them (8 MiB of ids).
const FEED_MAX: usize = 1 << 18;

/// Chunks whose local presence may have changed, as the caches report.
#[derive(Debug)]
pub struct ChangeFeed {
    ids: Mutex<Vec<ChunkId>>,
    cap: usize,
    overflowed: AtomicBool,
    /// Off until someone asks: nothing to keep up to date before that.
    tracking: AtomicBool,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self::with_cap(FEED_MAX)
    }
}

impl ChangeFeed {
    fn with_cap(cap: usize) -> Self {
        Self {
            ids: Mutex::new(Vec::new()),
            cap,
            overflowed: AtomicBool::new(false),
            tracking: AtomicBool::new(false),
        }
    }

    /// A cache took `id` in or let it go.
    pub(crate) fn note(&self, id: ChunkId) {
        if !self.tracking.load(Ordering::Acquire) {
            return;
        }
        let mut ids = self.ids.lock();
        if ids.len() < self.cap {
            ids.push(id);
        } else {
            self.overflowed.store(true, Ordering::Release);
        }
    }

    /// The changes noted so far, and whether some were not named.
    fn take(&self) -> (Vec<ChunkId>, bool) {
        let ids = std::mem::take(&mut *self.ids.lock());
        (ids, self.overflowed.swap(false, Ordering::AcqRel))
    }
}

/// A leaf of tracked roots.
#[derive(Debug)]
struct Leaf {
    /// Tracked roots listing it (once per position).
    holders: u32,
    /// Its distinct chunks with their occurrences.
    chunks: Occurrences,
    total: u64,
    local: u64,
}

/// A chunk under tracked roots.
#[derive(Debug)]
struct Tracked {
    local: bool,
    /// Leaves holding it, with its occurrences in each.
    leaves: SmallVec<[(NodeId, u32); 1]>,
}

#[derive(Debug)]
struct Index {
    roots: LruCache<(NodeId, u8), Arc<[NodeId]>>,
    leaves: HashMap<NodeId, Leaf>,
    chunks: HashMap<ChunkId, Tracked>,
}

/// Local and total chunk occurrences per tracked root (module doc).
#[derive(Debug)]
pub struct LocalCounts {
    index: tokio::sync::Mutex<Index>,
}

impl Default for LocalCounts {
    fn default() -> Self {
        Self::with_roots(ROOTS)
    }
}

impl LocalCounts {
    fn with_roots(roots: usize) -> Self {
        Self {
            index: tokio::sync::Mutex::new(Index {
                roots: LruCache::new(std::num::NonZeroUsize::new(roots).expect("non-zero")),
                leaves: HashMap::new(),
                chunks: HashMap::new(),
            }),
        }
    }

    /// (total, local) chunk occurrences under `root` of `level`.
    pub(crate) async fn counts(
        &self,
        trees: &TreeStore,
        feed: &ChangeFeed,
        is_local: impl Fn(&ChunkId) -> bool,
        root: NodeId,
        level: u8,
    ) -> Result<(u64, u64)> {
        // From now on the caches' changes are kept.
        feed.tracking.store(true, Ordering::Release);
        let mut index = self.index.lock().await;
        let key = (root, level);
        if !index.roots.contains(&key) {
            let leaves = trees.leaves(root, level).await?;
            let mut loaded: HashMap<NodeId, Occurrences> = HashMap::new();
            for (_, leaf) in &leaves {
                if index.leaves.contains_key(leaf) || loaded.contains_key(leaf) {
                    continue;
                }
                loaded.insert(*leaf, trees.occurrences(*leaf).await?);
            }
            let leaves: Arc<[NodeId]> = leaves.into_iter().map(|(_, leaf)| leaf).collect();
            index.track(key, leaves, loaded, &is_local);
        }
        index.catch_up(feed, &is_local);
        let leaves = index.roots.get(&key).cloned().expect("tracked above");
        Ok(leaves.iter().fold((0, 0), |(total, local), leaf| {
            let leaf = &index.leaves[leaf];
            (total + leaf.total, local + leaf.local)
        }))
    }
}

impl Index {
    /// Starts tracking a root whose new leaves were loaded; drops the
    /// least recently asked root past [`ROOTS`].
    fn track(
        &mut self,
        key: (NodeId, u8),
        leaves: Arc<[NodeId]>,
        mut loaded: HashMap<NodeId, Occurrences>,
        is_local: &impl Fn(&ChunkId) -> bool,
    ) {
        for leaf in leaves.iter() {
            if let Some(held) = self.leaves.get_mut(leaf) {
                held.holders += 1;
                continue;
            }
            let chunks = loaded.remove(leaf).expect("loaded before tracking");
            let (mut total, mut local) = (0, 0);
            for (id, occurrences) in chunks.iter() {
                let n = u64::from(*occurrences);
                let tracked = self.chunks.entry(*id).or_insert_with(|| Tracked {
                    local: is_local(id),
                    leaves: SmallVec::new(),
                });
                tracked.leaves.push((*leaf, *occurrences));
                total += n;
                if tracked.local {
                    local += n;
                }
            }
            self.leaves.insert(
                *leaf,
                Leaf {
                    holders: 1,
                    chunks,
                    total,
                    local,
                },
            );
        }
        // `key` was not tracked, so what comes back is another root.
        if let Some((_, dropped)) = self.roots.push(key, leaves) {
            self.untrack(&dropped);
        }
    }

    fn untrack(&mut self, leaves: &[NodeId]) {
        for leaf in leaves {
            let held = self.leaves.get_mut(leaf).expect("a tracked leaf");
            held.holders -= 1;
            if held.holders > 0 {
                continue;
            }
            let held = self.leaves.remove(leaf).expect("a tracked leaf");
            for (id, _) in held.chunks.iter() {
                let tracked = self.chunks.get_mut(id).expect("a tracked chunk");
                tracked.leaves.retain(|(l, _)| l != leaf);
                if tracked.leaves.is_empty() {
                    self.chunks.remove(id);
                }
            }
        }
    }

    /// Checks again the chunks the feed named (all of them when it
    /// overflowed) and moves their occurrences.
    fn catch_up(&mut self, feed: &ChangeFeed, is_local: &impl Fn(&ChunkId) -> bool) {
        let (ids, overflowed) = feed.take();
        let ids: Vec<ChunkId> = if overflowed {
            self.chunks.keys().copied().collect()
        } else {
            ids
        };
        for id in ids {
            let Some(tracked) = self.chunks.get_mut(&id) else {
                continue;
            };
            let now = is_local(&id);
            if now == tracked.local {
                continue;
            }
            tracked.local = now;
            for (leaf, occurrences) in &tracked.leaves {
                let leaf = self.leaves.get_mut(leaf).expect("a tracked leaf");
                if now {
                    leaf.local += u64::from(*occurrences);
                } else {
                    leaf.local -= u64::from(*occurrences);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Reachable;
    use crate::{Actor, Engine, EngineConfig, Labels, Namespace, SnapshotTag, VolumeName};
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// (total, local) occurrences under a root, by walking it.
    async fn walked(engine: &Engine, root: NodeId, level: u8, local: &HashSet<ChunkId>) -> (u64, u64) {
        let (mut total, mut here) = (0, 0);
        engine
            .trees()
            .walk(root, level, &mut |r| {
                if let Reachable::Chunk { id, .. } = r {
                    total += 1;
                    here += u64::from(local.contains(&id));
                }
                true
            })
            .await
            .unwrap();
        (total, here)
    }

    /// Four volumes sharing chunks (a fork, repeated content), sealed;
    /// returns their trees and every chunk under them.
    async fn volumes(engine: &Engine) -> (Vec<(NodeId, u8)>, Vec<ChunkId>) {
        let (ns, actor) = (Namespace::default_ns(), Actor("t".into()));
        let name = |i: usize| VolumeName::new(format!("v{i}")).unwrap();
        for i in 0..3 {
            engine
                .create_volume(&ns, &actor, &name(i), 256 << 10, Some(4096), Labels::new())
                .await
                .unwrap();
            let v = engine.volume(&ns, &name(i)).unwrap();
            for at in 0..4u64 {
                // Seeds repeat across offsets and volumes: shared chunks,
                // and chunks twice in one tree.
                let data = cairn_chunker::testdata::noise(at % 3 + i as u64, 16 * 4096);
                v.write(at * 16 * 4096, &data).await.unwrap();
            }
            v.seal().await.unwrap();
        }
        let tag = SnapshotTag::new("s").unwrap();
        engine
            .snapshot(&ns, &actor, &name(0), Some(tag.clone()), Labels::new())
            .await
            .unwrap();
        engine
            .fork(&ns, &actor, &name(0), &tag, &name(3), None, &Labels::new())
            .await
            .unwrap();
        let fork = engine.volume(&ns, &name(3)).unwrap();
        fork.write(0, &cairn_chunker::testdata::noise(9, 8 * 4096))
            .await
            .unwrap();
        fork.seal().await.unwrap();
        let mut trees = Vec::new();
        let mut chunks = HashSet::new();
        for i in 0..4 {
            let t = engine.volume(&ns, &name(i)).unwrap().sealed_tree();
            engine
                .trees()
                .walk(t.root, t.level, &mut |r| {
                    if let Reachable::Chunk { id, .. } = r {
                        chunks.insert(id);
                    }
                    true
                })
                .await
                .unwrap();
            trees.push((t.root, t.level));
        }
        (trees, chunks.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

        /// Chunks come and go (each change noted, as the caches do), roots
        /// are asked about in any order; a feed too small to name every
        /// change and room for only two roots force the start-over and
        /// the dropping paths. Every answer equals a walk.
        #[test]
        fn counts_equal_a_walk(steps in proptest::collection::vec((0usize..4, proptest::collection::vec(any::<u16>(), 0..12)), 1..24)) {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
                let (trees, chunks) = volumes(&engine).await;
                let counts = LocalCounts::with_roots(2);
                let feed = ChangeFeed::with_cap(6);
                let local: Mutex<HashSet<ChunkId>> = Mutex::new(HashSet::new());
                for (asked, toggles) in steps {
                    for t in toggles {
                        let id = chunks[t as usize % chunks.len()];
                        let mut set = local.lock();
                        if !set.remove(&id) {
                            set.insert(id);
                        }
                        drop(set);
                        feed.note(id);
                    }
                    let (root, level) = trees[asked];
                    let got = counts
                        .counts(engine.trees(), &feed, |id| local.lock().contains(id), root, level)
                        .await
                        .unwrap();
                    let snapshot = local.lock().clone();
                    let want = walked(&engine, root, level, &snapshot).await;
                    assert_eq!(got, want);
                }
            });
        }
    }
}
