//! Space accounting: what each volume stores, what only it references, and
//! how much deduplication saves.
//!
//! Walks the sealed tree of every volume and snapshot (of all namespaces,
//! since chunks are shared across them), so its cost grows with the number
//! of chunks referenced; it runs on demand (volume show/list, metrics).

use std::collections::{HashMap, HashSet};

use cairn_chunker::{ChunkGeometry, ChunkId};

use crate::engine::Engine;
use crate::error::Result;
use crate::names::{Namespace, VolumeName};
use crate::objects::ObjectKind;
use crate::tree::{levels_for, NodeId, Reachable};

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

async fn chunks_of(engine: &Engine, root: NodeId, size: u64, chunk_size: u64) -> Result<HashSet<ChunkId>> {
    let mut set = HashSet::new();
    let geometry =
        ChunkGeometry::new(chunk_size).map_err(|e| crate::StoreError::InvalidSize(e.to_string()))?;
    let level = levels_for(geometry.chunk_count(size));
    engine
        .trees()
        .walk(root, level, &mut |r| {
            if let Reachable::Chunk { id, .. } = r {
                set.insert(id);
            }
            true
        })
        .await?;
    Ok(set)
}

impl Engine {
    /// Stored bytes of the distinct chunks under one root. Roots are
    /// immutable, so the answer is memoised per root: the clone of a
    /// snapshot pays for the walk once.
    pub async fn stored_bytes_of(&self, root: NodeId, size: u64, chunk_size: u64) -> Result<u64> {
        if root.is_zero() {
            return Ok(0);
        }
        if let Some(hit) = self.stored_memo().lock().get(&root) {
            return Ok(*hit);
        }
        let chunks = chunks_of(self, root, size, chunk_size).await?;
        let mut total = 0;
        for id in &chunks {
            total += self.objects().stored_len(ObjectKind::Chunk, &id.0)?;
        }
        self.stored_memo().lock().put(root, total);
        Ok(total)
    }

    /// Computes space usage over every volume and snapshot.
    pub async fn usage(&self) -> Result<Usage> {
        let volumes = self.catalog().volumes(None)?;
        let snapshots = self.catalog().snapshots(None, None)?;
        let mut refs: HashMap<ChunkId, u32> = HashMap::new();
        let mut usage = Usage {
            volume_count: volumes.len() as u64,
            snapshot_count: snapshots.len() as u64,
            ..Usage::default()
        };
        let mut per_volume = Vec::new();
        // Roots shared by several owners (a fork and its snapshot) are walked once.
        let mut walked: HashMap<NodeId, std::sync::Arc<HashSet<ChunkId>>> = HashMap::new();
        let mut owners = Vec::new();
        let mut ns_chunks: HashMap<Namespace, HashSet<ChunkId>> = HashMap::new();
        for v in &volumes {
            usage
                .namespaces
                .entry(v.namespace.clone())
                .or_default()
                .volume_count += 1;
            owners.push((
                v.namespace.clone(),
                Some(v.name.clone()),
                v.root,
                v.size,
                v.chunk_size,
            ));
        }
        for s in &snapshots {
            usage
                .namespaces
                .entry(s.namespace.clone())
                .or_default()
                .snapshot_count += 1;
            owners.push((s.namespace.clone(), None, s.root, s.size, s.chunk_size));
        }
        for (ns, owner, root, size, chunk_size) in owners {
            let set = match walked.get(&root) {
                Some(set) => set.clone(),
                None => {
                    let set = std::sync::Arc::new(chunks_of(self, root, size, chunk_size).await?);
                    walked.insert(root, set.clone());
                    set
                }
            };
            for id in set.iter() {
                *refs.entry(*id).or_default() += 1;
            }
            let logical = set.len() as u64 * chunk_size;
            usage.logical_bytes += logical;
            usage.namespaces.entry(ns.clone()).or_default().logical_bytes += logical;
            ns_chunks
                .entry(ns.clone())
                .or_default()
                .extend(set.iter().copied());
            if let Some(name) = owner {
                per_volume.push(((ns, name), set));
            }
        }
        let mut sizes: HashMap<ChunkId, u64> = HashMap::with_capacity(refs.len());
        for id in refs.keys() {
            let len = self.objects().stored_len(ObjectKind::Chunk, &id.0)?;
            sizes.insert(*id, len);
            usage.stored_bytes += len;
        }
        for (key, set) in per_volume {
            let mut u = VolumeUsage::default();
            for id in set.iter() {
                u.stored_bytes += sizes[id];
                if refs[id] == 1 {
                    u.unique_bytes += sizes[id];
                }
            }
            usage.volumes.insert(key, u);
        }
        for (ns, chunks) in ns_chunks {
            let entry = usage.namespaces.entry(ns).or_default();
            entry.stored_bytes = chunks.iter().map(|id| sizes[id]).sum();
        }
        Ok(usage)
    }
}
