//! Space accounting: what each volume stores, what only it references, and
//! how much deduplication saves.
//!
//! A [`Ledger`] keeps reference counts of every referenced chunk between
//! requests (of all namespaces, since chunks are shared across them) and
//! is brought up to date from the owners' roots: a request costs reading
//! the catalog's records plus the leaves that changed hands since the
//! last one, not a walk of every tree. The answer itself is kept until an
//! owner's root changes (see [`Engine::usage`]).

use std::collections::HashMap;

mod ledger;
mod roots;

pub(crate) use ledger::Ledger;
pub(crate) use roots::{remember_commit, RootMemo};

use crate::engine::Engine;
use crate::error::Result;
use crate::names::{Namespace, SnapshotTag, VolumeName};
use crate::tree::{levels_for, NodeId};

/// Space figures of one volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeUsage {
    /// Stored bytes of the distinct chunks the volume references.
    pub stored_bytes: u64,
    /// The part of those that no other volume or snapshot references.
    pub unique_bytes: u64,
}

/// Space figures of the whole store.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// Per volume.
    pub volumes: HashMap<(Namespace, VolumeName), VolumeUsage>,
    /// Stored bytes of all distinct referenced chunks.
    pub stored_bytes: u64,
    /// Bytes the volumes and snapshots would take without dedup or
    /// compression (referenced non-zero chunks × chunk size, per owner).
    pub logical_bytes: u64,
    /// Number of volumes.
    pub volume_count: u64,
    /// Number of snapshots.
    pub snapshot_count: u64,
    /// The same figures per namespace.
    pub namespaces: HashMap<Namespace, NamespaceUsage>,
}

/// Space figures of one namespace: its volumes and snapshots only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceUsage {
    /// Stored bytes of the distinct chunks its volumes and snapshots reference.
    pub stored_bytes: u64,
    /// Referenced non-zero chunks × chunk size, per owner.
    pub logical_bytes: u64,
    /// Number of volumes.
    pub volume_count: u64,
    /// Number of snapshots.
    pub snapshot_count: u64,
}

impl NamespaceUsage {
    /// logical / stored (1.0 when nothing is stored).
    pub fn dedup_ratio(&self) -> f64 {
        ratio(self.logical_bytes, self.stored_bytes)
    }
}

fn ratio(logical: u64, stored: u64) -> f64 {
    if stored == 0 {
        1.0
    } else {
        logical as f64 / stored as f64
    }
}

impl Usage {
    /// logical / stored (1.0 when nothing is stored).
    pub fn dedup_ratio(&self) -> f64 {
        ratio(self.logical_bytes, self.stored_bytes)
    }
}

impl Engine {
    /// Stored bytes of the distinct chunks under one root. Roots are
    /// immutable, so the answer is kept per root (see [`roots`]): the clone
    /// of a snapshot pays for the walk once, and the walk of a root a seal
    /// made finds the lengths of its changed leaves already known.
    pub async fn stored_bytes_of(&self, root: NodeId, size: u64, chunk_size: u64) -> Result<u64> {
        roots::stored_bytes_of(self.backend(), root, level_of(size, chunk_size)?).await
    }

    /// Computes space usage over every volume and snapshot.
    ///
    /// Owners (volumes and snapshots) that share a root share its chunk
    /// set: each distinct root is walked once and weighed by the number of
    /// owners holding it, so a thousand unchanged forks of one snapshot
    /// cost one walk. The answer depends only on the owners and their
    /// roots (objects' stored lengths never change and GC deletes only
    /// what no root references), so it is kept and answered again, after
    /// reading the catalog's records only, until a root, an owner or a size
    /// changes.
    pub async fn usage(&self) -> Result<Usage> {
        let owners = self.owners()?;
        let key = owners_key(&owners);
        if let Some((k, usage)) = &*self.usage_memo().lock() {
            if *k == key {
                return Ok(usage.clone());
            }
        }
        let usage = self.usage_of(owners).await?;
        *self.usage_memo().lock() = Some((key, usage.clone()));
        Ok(usage)
    }

    fn owners(&self) -> Result<Vec<Owner>> {
        let volumes = self.catalog().volumes(None)?;
        let snapshots = self.catalog().snapshots(None, None)?;
        let mut owners = Vec::with_capacity(volumes.len() + snapshots.len());
        for v in volumes {
            owners.push(Owner {
                ns: v.namespace,
                volume: v.name,
                tag: None,
                root: v.root,
                size: v.size,
                chunk_size: v.chunk_size,
            });
        }
        for s in snapshots {
            owners.push(Owner {
                ns: s.namespace,
                volume: s.volume,
                tag: Some(s.tag),
                root: s.root,
                size: s.size,
                chunk_size: s.chunk_size,
            });
        }
        Ok(owners)
    }

    /// Brings the ledger up to `owners` and reads the figures off it. A
    /// failed reconcile (a tree node of a deleted owner that GC already
    /// removed, say) starts the ledger over from the current owners.
    async fn usage_of(&self, owners: Vec<Owner>) -> Result<Usage> {
        let mut ledger = self.ledger().lock().await;
        if let Err(e) = ledger.reconcile(self.backend(), &owners).await {
            tracing::debug!(error = %e, "space accounting starts over");
            let mut fresh = Ledger::default();
            fresh.reconcile(self.backend(), &owners).await?;
            *ledger = fresh;
        }
        Ok(ledger.usage(&owners))
    }
}

/// The level of the root of a tree of `size` bytes in `chunk_size` chunks.
fn level_of(size: u64, chunk_size: u64) -> Result<u8> {
    Ok(levels_for(Engine::geometry(chunk_size)?.chunk_count(size)))
}

/// A volume or snapshot, as space accounting sees it.
struct Owner {
    ns: Namespace,
    /// The volume, or the volume a snapshot was taken of.
    volume: VolumeName,
    /// The snapshot's tag; None for a volume.
    tag: Option<SnapshotTag>,
    root: NodeId,
    size: u64,
    chunk_size: u64,
}

/// Identifies a set of owners and their roots and sizes.
pub(crate) type OwnersKey = [u8; 32];

fn owners_key(owners: &[Owner]) -> OwnersKey {
    let mut h = blake3::Hasher::new();
    for o in owners {
        h.update(o.ns.as_str().as_bytes());
        h.update(&[0]);
        h.update(o.volume.as_str().as_bytes());
        h.update(&[0]);
        if let Some(tag) = &o.tag {
            h.update(&[2]);
            h.update(tag.as_str().as_bytes());
        }
        h.update(&[0]);
        h.update(&o.root.0);
        h.update(&o.size.to_le_bytes());
        h.update(&o.chunk_size.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::ObjectKind;
    use crate::tree::Reachable;
    use crate::{Actor, EngineConfig, GcOptions, Labels, SnapshotTag};
    use cairn_chunker::ChunkId;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// Every chunk under a root, by walking its tree.
    async fn chunks_of(
        engine: &Engine,
        root: NodeId,
        size: u64,
        chunk_size: u64,
    ) -> Result<HashSet<ChunkId>> {
        let mut set = HashSet::new();
        engine
            .trees()
            .walk(root, level_of(size, chunk_size)?, &mut |r| {
                if let Reachable::Chunk { id, .. } = r {
                    set.insert(id);
                }
                true
            })
            .await?;
        Ok(set)
    }

    /// The plain definition: every owner walked on its own.
    async fn by_full_walk(engine: &Engine) -> Usage {
        let owners = engine.owners().unwrap();
        let mut sets = Vec::new();
        let mut refs: HashMap<ChunkId, u32> = HashMap::new();
        for o in &owners {
            let set = chunks_of(engine, o.root, o.size, o.chunk_size).await.unwrap();
            for id in &set {
                *refs.entry(*id).or_default() += 1;
            }
            sets.push(set);
        }
        let len = |id: &ChunkId| engine.objects().stored_lens(ObjectKind::Chunk, &[id.0]).unwrap()[0];
        let mut usage = Usage {
            stored_bytes: refs.keys().map(len).sum(),
            ..Usage::default()
        };
        let mut ns_chunks: HashMap<Namespace, HashSet<ChunkId>> = HashMap::new();
        for (o, set) in owners.iter().zip(&sets) {
            let ns = usage.namespaces.entry(o.ns.clone()).or_default();
            if o.tag.is_none() {
                usage.volume_count += 1;
                ns.volume_count += 1;
            } else {
                usage.snapshot_count += 1;
                ns.snapshot_count += 1;
            }
            usage.logical_bytes += set.len() as u64 * o.chunk_size;
            ns.logical_bytes += set.len() as u64 * o.chunk_size;
            ns_chunks
                .entry(o.ns.clone())
                .or_default()
                .extend(set.iter().copied());
            if o.tag.is_none() {
                usage.volumes.insert(
                    (o.ns.clone(), o.volume.clone()),
                    VolumeUsage {
                        stored_bytes: set.iter().map(len).sum(),
                        unique_bytes: set.iter().filter(|id| refs[*id] == 1).map(len).sum(),
                    },
                );
            }
        }
        for (ns, chunks) in ns_chunks {
            usage.namespaces.get_mut(&ns).unwrap().stored_bytes = chunks.iter().map(len).sum();
        }
        usage
    }

    fn assert_same(a: &Usage, b: &Usage) {
        assert_eq!(a.volumes, b.volumes);
        assert_eq!(
            (a.stored_bytes, a.logical_bytes, a.volume_count, a.snapshot_count),
            (b.stored_bytes, b.logical_bytes, b.volume_count, b.snapshot_count)
        );
        assert_eq!(a.namespaces, b.namespaces);
    }

    /// A deleted volume whose tree GC removed before accounting was asked
    /// again: the ledger cannot take its leaves out, starts over from the
    /// owners, and still answers what a full walk does.
    #[tokio::test]
    async fn accounting_survives_a_deleted_tree_it_still_held() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
        let actor = Actor("t".into());
        let ns = Namespace::default_ns();
        for (i, name) in ["gone", "kept"].into_iter().enumerate() {
            let name = VolumeName::new(name).unwrap();
            engine
                .create_volume(&ns, &actor, &name, 64 << 10, Some(4096), Labels::new())
                .await
                .unwrap();
            let v = engine.volume(&ns, &name).unwrap();
            v.write(0, &cairn_chunker::testdata::noise(i as u64, 8 * 4096))
                .await
                .unwrap();
            v.seal().await.unwrap();
        }
        let gone = VolumeName::new("gone").unwrap();
        let root = engine.volume_record(&ns, &gone).unwrap().root;
        assert_same(&engine.usage().await.unwrap(), &by_full_walk(&engine).await);
        engine.delete_volume(&ns, &actor, &gone, true).await.unwrap();
        // Past GC's one-second floor for young objects.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let options = GcOptions {
            dry_run: false,
            grace: std::time::Duration::ZERO,
        };
        engine.gc(&ns, &actor, options).await.unwrap();
        engine.trees().forget_cached();
        assert!(
            engine.trees().load(root, 0).await.is_err(),
            "GC removed the deleted volume's leaf"
        );
        let usage = engine.usage().await.unwrap();
        assert_same(&usage, &by_full_walk(&engine).await);
        assert_eq!(usage.volume_count, 1);
        assert!(usage.stored_bytes > 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Write {
            vol: u8,
            block: u8,
            blocks: u8,
            seed: u8,
        },
        Seal {
            vol: u8,
        },
        Snapshot {
            vol: u8,
        },
        Fork {
            vol: u8,
        },
        DeleteVolume {
            vol: u8,
        },
        DeleteSnapshot {
            vol: u8,
        },
        Gc,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4, 0u8..16, 1u8..8, 0u8..4).prop_map(|(vol, block, blocks, seed)| Op::Write { vol, block, blocks, seed }),
            3 => (0u8..4).prop_map(|vol| Op::Seal { vol }),
            2 => (0u8..4).prop_map(|vol| Op::Snapshot { vol }),
            2 => (0u8..4).prop_map(|vol| Op::Fork { vol }),
            1 => (0u8..4).prop_map(|vol| Op::DeleteVolume { vol }),
            1 => (0u8..4).prop_map(|vol| Op::DeleteSnapshot { vol }),
            1 => Just(Op::Gc),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random forks, writes, seals, snapshots, deletions and GCs in two
        /// namespaces: after random steps (and the last) the accounting
        /// (the ledger, brought up to date by what changed) equals walking
        /// every owner on its own.
        #[test]
        fn accounting_equals_a_full_walk(ops in proptest::collection::vec((op(), any::<bool>()), 1..24)) {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
                let actor = Actor("t".into());
                let nss = [Namespace::default_ns(), Namespace::new("other").unwrap()];
                let name = |v: u8| VolumeName::new(format!("v{v}")).unwrap();
                let ns_of = |v: u8| &nss[(v % 2) as usize];
                for v in 0..2u8 {
                    engine.create_volume(ns_of(v), &actor, &name(v), 64 << 10, Some(4096), Labels::new()).await.unwrap();
                }
                let mut tags = 0u32;
                let steps = ops.len();
                for (step, (op, ask)) in ops.into_iter().enumerate() {
                    // Operations on what does not exist simply fail.
                    match op {
                        Op::Write { vol, block, blocks, seed } => {
                            if let Ok(v) = engine.volume(ns_of(vol), &name(vol)) {
                                let blocks = blocks.min(16 - block) as usize;
                                let data = cairn_chunker::testdata::noise(seed as u64, 4096 * blocks);
                                let _ = v.write(block as u64 * 4096, &data).await;
                            }
                        }
                        Op::Seal { vol } => {
                            if let Ok(v) = engine.volume(ns_of(vol), &name(vol)) {
                                v.seal().await.unwrap();
                            }
                        }
                        Op::Snapshot { vol } => {
                            tags += 1;
                            let _ = engine.snapshot(ns_of(vol), &actor, &name(vol), Some(SnapshotTag::new(format!("s{tags}")).unwrap()), Labels::new()).await;
                        }
                        Op::Fork { vol } => {
                            let snaps = engine.list_snapshots(ns_of(vol), Some(&name(vol))).unwrap_or_default();
                            if let Some(s) = snaps.last() {
                                for target in 0..4u8 {
                                    if target % 2 == vol % 2 && engine.volume(ns_of(target), &name(target)).is_err() {
                                        let _ = engine.fork(ns_of(vol), &actor, &name(vol), &s.tag, &name(target), None, &Labels::new()).await;
                                        break;
                                    }
                                }
                            }
                        }
                        Op::DeleteVolume { vol } => {
                            let _ = engine.delete_volume(ns_of(vol), &actor, &name(vol), true).await;
                        }
                        Op::DeleteSnapshot { vol } => {
                            let snaps = engine.list_snapshots(ns_of(vol), Some(&name(vol))).unwrap_or_default();
                            if let Some(s) = snaps.first() {
                                let _ = engine.delete_snapshot(ns_of(vol), &actor, &name(vol), &s.tag).await;
                            }
                        }
                        Op::Gc => {
                            let _ = engine.gc(&nss[0], &actor, GcOptions { dry_run: false, grace: std::time::Duration::ZERO }).await;
                        }
                    }
                    // A fresh fork's or clone's answer: the stored bytes of
                    // one root, kept by the seals that made it
                    // (asked before the ledger, which also keeps them).
                    for o in engine.owners().unwrap() {
                        let stored = engine.stored_bytes_of(o.root, o.size, o.chunk_size).await.unwrap();
                        let mut walked_root = HashSet::new();
                        walked_root.extend(chunks_of(&engine, o.root, o.size, o.chunk_size).await.unwrap());
                        let len = |id: &ChunkId| engine.objects().stored_lens(ObjectKind::Chunk, &[id.0]).unwrap()[0];
                        assert_eq!(stored, walked_root.iter().map(len).sum::<u64>());
                    }
                    // Asked after some steps only, so one reconcile also
                    // takes several changes at once (a deleted owner whose
                    // tree GC removed since, among them).
                    if !ask && step + 1 < steps {
                        continue;
                    }
                    let fast = engine.usage().await.unwrap();
                    let again = engine.usage().await.unwrap();
                    let walked = by_full_walk(&engine).await;
                    assert_same(&fast, &walked);
                    assert_same(&again, &walked);
                }
            });
        }
    }
}
