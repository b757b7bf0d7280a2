//! What every volume shares, and reads of sealed trees: the catalog, the
//! object layer and tree store ([`Backend`]); reading a sealed tree
//! (concurrent chunk fetches, cached fast path, read-ahead for remote
//! stores); allocation maps; and ingest, which turns whole chunks into
//! stored objects (hash, dedup, compress, upload) for seals and imports.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use cairn_chunker::pipeline::{classify, encode_all, Classified};
use cairn_chunker::{ByteRange, ChunkGeometry, ChunkId};
use futures::stream::{StreamExt, TryStreamExt};

use crate::catalog::Catalog;
use crate::error::Result;
use crate::journal::JournalDir;
use crate::objects::{ObjectKind, ObjectLayer};
use crate::overlay::Hole;
use crate::pack::Pace;
use crate::tree::{levels_for, NodeId, TreeStore};

/// Chunk fetches in flight at once for one read or one read-ahead.
const FETCH_CONCURRENCY: usize = 16;

/// What every volume shares: catalog, objects and trees.
#[derive(Debug)]
pub(crate) struct Backend {
    pub catalog: Arc<Catalog>,
    pub objects: Arc<ObjectLayer>,
    pub trees: TreeStore,
    /// Write-back journal files.
    pub journal: JournalDir,
    /// Log bytes per volume (the write-back backlog, on disk) past which
    /// writers wait for sealing, and past which, when the object store
    /// does not take the backlog, writes are refused.
    pub dirty_hard_limit: usize,
    /// How long a writer waits for backlog room while the object store
    /// answers nothing, before the store counts as down.
    pub store_timeout: std::time::Duration,
    /// Set when a seal failed on the object store or a writer waited the
    /// store timeout without an answer from it; cleared by the next
    /// successful seal: writes past the backlog limit fail at once.
    pub store_down: std::sync::atomic::AtomicBool,
    /// Woken after every seal attempt (writers waiting for room).
    pub room: tokio::sync::Notify,
    /// Generations being sealed at once, across volumes: a seal holds tens
    /// of MiB of chunks in flight and is CPU-bound, so more at once only
    /// costs memory.
    pub seal_slots: tokio::sync::Semaphore,
    /// Clients' flushes syncing logs at once, across volumes (see
    /// [`crate::volume::Volume::flush`]).
    pub log_syncs: tokio::sync::Semaphore,
    /// Bytes acknowledged by writes (not zeroes), for the seal
    /// amplification metric.
    pub written_bytes: AtomicU64,
    /// Clients' flushes (see [`crate::volume::Volume::flush`]).
    pub flushes: AtomicU64,
    /// Log `fdatasync`s made for flushes and snapshots: fewer than the
    /// flushes when they ride on a sync already running.
    pub log_syncs_made: AtomicU64,
    /// Chunk bytes materialised and stored by seals.
    pub sealed_bytes: AtomicU64,
    /// Sequential-read detection, for remote stores only.
    pub readahead: Option<crate::readahead::ReadAhead>,
    /// Runtime to start read-ahead on from threads outside it.
    pub runtime: tokio::runtime::Handle,
    /// Stored bytes of roots and lengths of leaves' chunks, for space
    /// accounting (seeded by commits).
    pub accounting: crate::usage::RootMemo,
    /// Local and total chunk occurrences of the trees asked about, for
    /// hydration.
    pub local_counts: crate::hydrate::LocalCounts,
}

/// A sealed tree to read from: a snapshot, or a volume's committed state.
#[derive(Clone, Copy, Debug)]
pub struct SealedTree {
    /// Root node.
    pub root: NodeId,
    /// Root level.
    pub level: u8,
    /// Chunk geometry.
    pub geometry: ChunkGeometry,
}

impl SealedTree {
    pub(crate) fn new(root: NodeId, size: u64, geometry: ChunkGeometry) -> Self {
        Self {
            root,
            level: levels_for(geometry.chunk_count(size)),
            geometry,
        }
    }
}

impl Backend {
    /// Fills `holes` of `buf` from a sealed tree, fetching missing chunks
    /// concurrently.
    pub(crate) async fn read_sealed(
        self: &Arc<Self>,
        tree: SealedTree,
        holes: &[Hole],
        buf: &mut [u8],
    ) -> Result<()> {
        let mut ids = Vec::with_capacity(holes.len());
        for hole in holes {
            ids.push(self.trees.lookup(tree.root, tree.level, hole.chunk).await?);
        }
        let chunks: Vec<Option<Bytes>> = futures::stream::iter(ids.into_iter().map(|id| {
            let objects = self.objects.clone();
            async move {
                match id.is_zero() {
                    true => Ok(None),
                    false => objects.chunk(id).await.map(Some),
                }
            }
        }))
        .buffered(FETCH_CONCURRENCY)
        .try_collect()
        .await?;
        for (hole, chunk) in holes.iter().zip(chunks) {
            let out = &mut buf[hole.buf_offset..hole.buf_offset + hole.len];
            match chunk {
                None => out.fill(0),
                Some(chunk) => {
                    out.copy_from_slice(&chunk[hole.offset_in_chunk..hole.offset_in_chunk + hole.len])
                }
            }
        }
        self.read_ahead(tree, holes);
        Ok(())
    }

    /// Fills `holes` from cached nodes and chunks only; false when anything
    /// is not cached (the caller takes the async path).
    pub(crate) fn read_sealed_cached(
        self: &Arc<Self>,
        tree: SealedTree,
        holes: &[Hole],
        buf: &mut [u8],
    ) -> bool {
        for hole in holes {
            let out = &mut buf[hole.buf_offset..hole.buf_offset + hole.len];
            let Some(id) = self.trees.lookup_cached(tree.root, tree.level, hole.chunk) else {
                return false;
            };
            if id.is_zero() {
                out.fill(0);
            } else {
                let Some(chunk) = self.objects.chunk_cached(&id) else {
                    return false;
                };
                out.copy_from_slice(&chunk[hole.offset_in_chunk..hole.offset_in_chunk + hole.len]);
            }
        }
        self.read_ahead(tree, holes);
        true
    }

    /// Notes a read for sequential detection and starts fetching the
    /// chunks ahead of a sequential stream (remote stores only).
    fn read_ahead(self: &Arc<Self>, tree: SealedTree, holes: &[Hole]) {
        let (Some(readahead), Some(first), Some(last)) = (&self.readahead, holes.first(), holes.last())
        else {
            return;
        };
        let limit = crate::tree::capacity(tree.level);
        let Some((from, to)) = readahead.note(tree.root, first.chunk, last.chunk, limit) else {
            return;
        };
        let backend = self.clone();
        self.runtime.spawn(async move {
            let fetched = async {
                let mut ids = Vec::new();
                for index in from..to {
                    let id = backend.trees.lookup(tree.root, tree.level, index).await?;
                    if !id.is_zero() && backend.objects.chunk_cached_quiet(&id).is_none() {
                        ids.push(id);
                    }
                }
                let objects = &backend.objects;
                futures::stream::iter(ids.into_iter().map(|id| objects.chunk(id)))
                    .buffer_unordered(FETCH_CONCURRENCY)
                    .try_for_each(|_| async { Ok(()) })
                    .await
            };
            if let Err(e) = fetched.await {
                tracing::debug!(error = %e, from, to, "read-ahead stopped");
            }
        });
    }

    /// Reads `buf.len()` bytes at `offset` of a sealed tree.
    pub(crate) async fn read_tree(
        self: &Arc<Self>,
        tree: SealedTree,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let holes = Hole::all(tree.geometry, offset, buf.len());
        self.read_sealed(tree, &holes, buf).await
    }

    /// Allocation runs of a sealed tree; `known` overrides chunks (true = hole).
    pub(crate) async fn allocation(
        &self,
        tree: SealedTree,
        offset: u64,
        length: u64,
        known: &std::collections::HashMap<u64, bool>,
    ) -> Result<Vec<(u64, bool)>> {
        let mut runs: Vec<(u64, bool)> = Vec::new();
        for span in tree.geometry.spans(ByteRange::new(offset, length)) {
            let hole = match known.get(&span.index) {
                Some(h) => *h,
                None => self
                    .trees
                    .lookup(tree.root, tree.level, span.index)
                    .await?
                    .is_zero(),
            };
            match runs.last_mut() {
                Some((len, h)) if *h == hole => *len += span.len as u64,
                _ => runs.push((span.len as u64, hole)),
            }
        }
        Ok(runs)
    }

    /// Stores whole chunks (hash, dedup, compress, upload) and returns the
    /// manifest updates for them, with the stored length of each chunk this
    /// call uploaded. Zero chunks become the zero sentinel. `keep` says
    /// whether the chunks it uploads enter the chunk cache, `pace` whether
    /// a local pack write is synced on the way.
    pub(crate) async fn ingest(&self, chunks: Vec<(u64, Bytes)>, keep: Keep, pace: Pace) -> Result<Ingested> {
        let (indices, contents): (Vec<u64>, Vec<Bytes>) = chunks.into_iter().unzip();
        let (classes, contents) = tokio::task::spawn_blocking(move || (classify(&contents), contents))
            .await
            .expect("classification does not panic");
        let mut seen = std::collections::HashSet::new();
        let mut fresh = Vec::new();
        for (i, class) in classes.iter().enumerate() {
            if let Classified::Data(id) = class {
                if seen.insert(*id) && !self.objects.claim(ObjectKind::Chunk, &id.0).await? {
                    fresh.push(i);
                }
            }
        }
        let to_encode: Vec<Bytes> = fresh.iter().map(|&i| contents[i].clone()).collect();
        let frames = tokio::task::spawn_blocking(move || encode_all(&to_encode))
            .await
            .expect("encoding does not panic");
        let framed: Vec<([u8; 32], Bytes)> = fresh
            .iter()
            .zip(frames)
            .map(|(&i, framed)| (classes[i].id().0, Bytes::from(framed)))
            .collect();
        let lens: Vec<u64> = framed.iter().map(|(_, f)| f.len() as u64).collect();
        let uploaded = self
            .objects
            .put_all_if_absent(ObjectKind::Chunk, framed, pace)
            .await?;
        let stored = fresh
            .iter()
            .zip(lens)
            .zip(uploaded)
            .filter(|(_, up)| *up)
            .map(|((&i, len), _)| (classes[i].id(), len))
            .collect();
        if keep == Keep::Cached {
            for &i in &fresh {
                self.objects.cache_chunk(classes[i].id(), contents[i].clone());
            }
        }
        let updates = indices
            .into_iter()
            .zip(classes.iter().map(Classified::id))
            .collect();
        Ok(Ingested { updates, stored })
    }
}

/// Whether [`Backend::ingest`] puts the chunks it uploads in the chunk
/// cache: what a VM wrote (sealed or written whole) is likely read again;
/// an import's gigabytes would only push out what volumes are reading, and
/// cost a copy each (see `crate::slab`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Keep {
    Cached,
    Uncached,
}

/// What [`Backend::ingest`] did.
#[derive(Default)]
pub(crate) struct Ingested {
    /// Manifest updates: chunk index → id.
    pub updates: Vec<(u64, ChunkId)>,
    /// The chunks it uploaded, with their stored lengths.
    pub stored: Vec<(ChunkId, u64)>,
}

impl Ingested {
    /// Adds what a later ingest did (its updates win over this one's).
    pub fn extend(&mut self, later: Ingested) {
        self.updates.extend(later.updates);
        self.stored.extend(later.stored);
    }
}
