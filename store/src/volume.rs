//! One open volume: the write-back overlay over a sealed manifest tree.
//!
//! Writes are appended to the volume's journal file and applied to the
//! in-memory dirty overlay under one lock, so journal order equals overlay
//! order, and are then acknowledged. [`Volume::flush`] fsyncs the journal
//! files. Sealing freezes the overlay (new writes go to a new generation
//! and file), turns each dirty chunk into a chunk object (merging with the
//! sealed chunk only when the overlay does not cover it whole), writes the
//! changed tree path, and commits the new root together with the new
//! journal floor in one synced catalog batch; the sealed generations' files
//! are removed after. Reads look in the active overlay, then the frozen
//! one, then the tree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cairn_chunker::pipeline::{classify, encode_all, Classified};
use cairn_chunker::{ByteRange, ChunkGeometry, ChunkId, BLOCK_SIZE};
use futures::stream::{StreamExt, TryStreamExt};
use parking_lot::Mutex;

use crate::catalog::Catalog;
use crate::error::{Result, StoreError};
use crate::journal::{self, JournalDir, LogFile, Record};
use crate::objects::{ObjectKind, ObjectLayer};
use crate::overlay::{read_logs, DirtyChunk, Hole, LogRead, Overlay};
use crate::records::{now, VolumeRecord};
use crate::tree::{levels_for, NodeId, TreeStore};

/// Chunks hashed and compressed together while sealing or importing.
const SEAL_BATCH: usize = 64;
/// Seal batches in progress at once (pipelining hashing with uploads).
const SEAL_BATCHES_IN_FLIGHT: usize = 3;
/// Object uploads in flight at once.
const UPLOAD_CONCURRENCY: usize = 16;
/// Chunk fetches in flight at once for one read or one read-ahead.
const FETCH_CONCURRENCY: usize = 16;
/// How often a writer waiting for backlog room looks again without being
/// woken.
const BACKLOG_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What every volume shares: catalog, objects and trees.
#[derive(Debug)]
pub(crate) struct Backend {
    pub catalog: Arc<Catalog>,
    pub objects: Arc<ObjectLayer>,
    pub trees: TreeStore,
    /// Write-back journal files.
    pub journal: JournalDir,
    /// Unsealed bytes per volume (the write-back backlog) past which
    /// writers wait for sealing, and past which, when the object store
    /// does not take the backlog, writes are refused.
    pub dirty_hard_limit: usize,
    /// How long a writer waits for backlog room while the object store
    /// answers nothing, before the store counts as down.
    pub store_timeout: std::time::Duration,
    /// Set when a seal failed on the object store, cleared by the next
    /// successful one: writes past the backlog limit fail at once.
    pub store_down: std::sync::atomic::AtomicBool,
    /// Woken after every seal attempt (writers waiting for room).
    pub room: tokio::sync::Notify,
    /// Bytes acknowledged by writes (not zeroes), for the seal
    /// amplification metric.
    pub written_bytes: AtomicU64,
    /// Chunk bytes materialised and stored by seals.
    pub sealed_bytes: AtomicU64,
    /// Sequential-read detection, for remote stores only.
    pub readahead: Option<crate::readahead::ReadAhead>,
    /// Runtime to start read-ahead on from threads outside it.
    pub runtime: tokio::runtime::Handle,
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
        let chunks: Vec<Option<Arc<[u8]>>> = futures::stream::iter(ids.into_iter().map(|id| {
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
        let holes: Vec<Hole> = tree
            .geometry
            .spans(ByteRange::new(offset, buf.len() as u64))
            .map(|s| Hole {
                chunk: s.index,
                offset_in_chunk: s.offset_in_chunk,
                len: s.len,
                buf_offset: s.offset_in_range,
            })
            .collect();
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
    /// manifest updates for them. Zero chunks become the zero sentinel.
    pub(crate) async fn ingest(&self, chunks: Vec<(u64, Vec<u8>)>) -> Result<Vec<(u64, ChunkId)>> {
        let (indices, contents): (Vec<u64>, Vec<Vec<u8>>) = chunks.into_iter().unzip();
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
        let contents: Vec<Arc<[u8]>> = contents.into_iter().map(Arc::from).collect();
        let to_encode: Vec<Arc<[u8]>> = fresh.iter().map(|&i| contents[i].clone()).collect();
        let frames = tokio::task::spawn_blocking(move || encode_all(&to_encode))
            .await
            .expect("encoding does not panic");
        let objects = &self.objects;
        let uploads: Vec<_> = fresh
            .iter()
            .zip(frames)
            .map(|(&i, framed)| {
                objects.put_if_absent(ObjectKind::Chunk, classes[i].id().0, Bytes::from(framed))
            })
            .collect();
        futures::stream::iter(uploads)
            .buffer_unordered(UPLOAD_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        for &i in &fresh {
            self.objects.cache_chunk(classes[i].id(), contents[i].clone());
        }
        Ok(indices
            .into_iter()
            .zip(classes.iter().map(Classified::id))
            .collect())
    }
}

struct State {
    record: VolumeRecord,
    active: Overlay,
    frozen: Option<Arc<Overlay>>,
    /// Generation that new writes belong to.
    generation: u64,
    /// Its log file, created at the generation's first write.
    log: Option<Arc<LogFile>>,
    /// Log files of unsealed older generations (frozen or replayed):
    /// flushes sync them too.
    older_logs: Vec<Arc<LogFile>>,
    /// When the active layer got its first write since it was last frozen.
    dirty_since: Option<Instant>,
    deleted: bool,
}

/// An open volume.
pub struct Volume {
    backend: Arc<Backend>,
    id: u64,
    geometry: ChunkGeometry,
    state: Mutex<State>,
    /// Serialises seals, and everything that swaps the root (rollback,
    /// resize, delete, direct imports).
    seal_lock: tokio::sync::Mutex<()>,
    /// Aligned writes share it; read-modify-write of partial blocks takes it
    /// alone, so no concurrent write to the same block is lost.
    rmw_lock: tokio::sync::RwLock<()>,
    last_write_ms: AtomicU64,
    opened: Instant,
    /// This volume, for starting a seal in the background.
    me: std::sync::Weak<Volume>,
    /// A background seal has been asked for and not yet finished.
    seal_queued: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume").field("id", &self.id).finish()
    }
}

fn align_down(x: u64) -> u64 {
    x & !(BLOCK_SIZE - 1)
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

fn is_aligned(x: u64) -> bool {
    x.is_multiple_of(BLOCK_SIZE)
}

impl Volume {
    /// Opens a volume and replays its unsealed journal.
    pub(crate) fn open(backend: Arc<Backend>, record: VolumeRecord) -> Result<Arc<Self>> {
        let geometry =
            ChunkGeometry::new(record.chunk_size).map_err(|e| StoreError::InvalidSize(e.to_string()))?;
        let mut active = Overlay::default();
        let mut generation = record.journal_floor;
        let mut older_logs = Vec::new();
        for log in backend.journal.replay(record.id, record.journal_floor)? {
            log.scan(|at, r| {
                match r {
                    Record::Write { offset, data } => {
                        active.write(geometry, offset, data.len(), &log, at + journal::WRITE_DATA_AT)
                    }
                    Record::Zero { offset, length } => active.zero(geometry, offset, length),
                }
                Ok(())
            })?;
            generation = generation.max(log.generation + 1);
            older_logs.push(log);
        }
        if !active.is_empty() {
            tracing::info!(volume = %record.name, dirty_bytes = active.dirty_bytes(), chunks = active.chunk_count(), "replayed write-back journal");
        }
        let dirty_since = (!active.is_empty()).then(Instant::now);
        Ok(Arc::new_cyclic(|me| Self {
            backend,
            id: record.id,
            geometry,
            state: Mutex::new(State {
                record,
                dirty_since,
                active,
                frozen: None,
                generation,
                log: None,
                older_logs,
                deleted: false,
            }),
            seal_lock: tokio::sync::Mutex::new(()),
            rmw_lock: tokio::sync::RwLock::new(()),
            last_write_ms: AtomicU64::new(0),
            opened: Instant::now(),
            me: me.clone(),
            seal_queued: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The volume's catalog record as of now.
    pub fn record(&self) -> VolumeRecord {
        self.state.lock().record.clone()
    }

    /// Logical size in bytes.
    pub fn size(&self) -> u64 {
        self.state.lock().record.size
    }

    /// Chunk geometry.
    pub fn geometry(&self) -> ChunkGeometry {
        self.geometry
    }

    /// Bytes written but not yet sealed.
    pub fn dirty_bytes(&self) -> usize {
        let st = self.state.lock();
        st.active.dirty_bytes() + st.frozen.as_ref().map_or(0, |f| f.dirty_bytes())
    }

    /// Bytes of the volume's live log files: its write-back backlog on
    /// local disk (dirty data, plus older versions of rewritten blocks
    /// until a seal retires their logs).
    pub fn log_bytes(&self) -> u64 {
        let st = self.state.lock();
        st.older_logs.iter().chain(st.log.as_ref()).map(|l| l.len()).sum()
    }

    /// How long the oldest unfrozen write has waited for a seal.
    pub fn dirty_age(&self) -> std::time::Duration {
        self.state
            .lock()
            .dirty_since
            .map_or(std::time::Duration::ZERO, |t| t.elapsed())
    }

    /// Milliseconds since the last write (for the idle sealer).
    pub fn idle_ms(&self) -> u64 {
        let last = self.last_write_ms.load(Ordering::Relaxed);
        (self.opened.elapsed().as_millis() as u64).saturating_sub(last)
    }

    fn check_range(&self, st: &State, offset: u64, length: u64) -> Result<()> {
        if st.deleted {
            return Err(StoreError::VolumeNotFound {
                name: st.record.name.to_string(),
            });
        }
        match offset.checked_add(length) {
            Some(end) if end <= st.record.size => Ok(()),
            _ => Err(StoreError::OutOfRange {
                offset,
                length,
                size: st.record.size,
            }),
        }
    }

    /// Serves what the dirty layers (active, then frozen) hold of
    /// `[offset, +buf.len())`: zeros into `buf`, dirty data as log reads;
    /// returns those and the parts left for the sealed tree.
    fn fill_dirty(&self, st: &State, offset: u64, buf: &mut [u8]) -> (Vec<Hole>, Vec<LogRead>) {
        let mut holes = Vec::new();
        let mut reads = Vec::new();
        for span in self.geometry.spans(ByteRange::new(offset, buf.len() as u64)) {
            let out = &mut buf[span.offset_in_range..span.offset_in_range + span.len];
            st.active.fill(
                span.index,
                span.offset_in_chunk,
                out,
                span.offset_in_range,
                &mut holes,
                &mut reads,
            );
        }
        if let Some(frozen) = &st.frozen {
            let mut deeper = Vec::new();
            for h in &holes {
                let out = &mut buf[h.buf_offset..h.buf_offset + h.len];
                frozen.fill(
                    h.chunk,
                    h.offset_in_chunk,
                    out,
                    h.buf_offset,
                    &mut deeper,
                    &mut reads,
                );
            }
            holes = deeper;
        }
        (holes, reads)
    }

    /// The dirty part of a read: located under the state lock, the log
    /// reads done after it (log files are append-only and stay open while
    /// referenced, so the bytes cannot change). Returns the holes left for
    /// the tree, and the tree.
    fn read_dirty(&self, offset: u64, buf: &mut [u8]) -> Result<(Vec<Hole>, SealedTree)> {
        let (holes, reads, tree) = {
            let st = self.state.lock();
            self.check_range(&st, offset, buf.len() as u64)?;
            let (holes, reads) = self.fill_dirty(&st, offset, buf);
            (holes, reads, self.tree_of(&st))
        };
        read_logs(&reads, buf)?;
        Ok((holes, tree))
    }

    fn tree_of(&self, st: &State) -> SealedTree {
        SealedTree::new(st.record.root, st.record.size, self.geometry)
    }

    /// The volume's committed (sealed) tree.
    pub(crate) fn sealed_tree(&self) -> SealedTree {
        self.tree_of(&self.state.lock())
    }

    /// Reads without waiting: `None` when some of the range is neither
    /// dirty nor cached (then [`Volume::read`] is needed).
    pub fn try_read(&self, offset: u64, buf: &mut [u8]) -> Option<Result<()>> {
        let (holes, tree) = match self.read_dirty(offset, buf) {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        self.backend
            .read_sealed_cached(tree, &holes, buf)
            .then_some(Ok(()))
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let (holes, tree) = self.read_dirty(offset, buf)?;
        if holes.is_empty() {
            return Ok(());
        }
        self.backend.read_sealed(tree, &holes, buf).await
    }

    /// Allocation of `[offset, +length)` at chunk granularity: `(bytes,
    /// hole)` runs in order. A chunk is a hole when it is zero in the tree
    /// and no dirty data covers it.
    pub async fn allocation(&self, offset: u64, length: u64) -> Result<Vec<(u64, bool)>> {
        let (dirty, tree) = {
            let st = self.state.lock();
            self.check_range(&st, offset, length)?;
            let dirty: Vec<(u64, Option<(bool, bool)>)> = self
                .geometry
                .spans(ByteRange::new(offset, length))
                .map(|s| {
                    let active = st.active.peek(s.index);
                    let frozen = st.frozen.as_ref().and_then(|f| f.peek(s.index));
                    (s.index, active.or(frozen))
                })
                .collect();
            (dirty, self.tree_of(&st))
        };
        let mut known = std::collections::HashMap::new();
        for (index, state) in dirty {
            match state {
                Some((_, true)) => {
                    known.insert(index, false);
                }
                Some((true, false)) => {
                    known.insert(index, true);
                }
                _ => {}
            }
        }
        self.backend.allocation(tree, offset, length, &known).await
    }

    /// Writes `data` at `offset`; acknowledged once journaled (not yet
    /// durable: see [`Volume::flush`]).
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(&self.state.lock(), offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.make_room(data.len()).await?;
        let end = offset + data.len() as u64;
        if is_aligned(offset) && is_aligned(end) {
            let _shared = self.rmw_lock.read().await;
            self.apply(Record::Write { offset, data })?;
        } else {
            let _alone = self.rmw_lock.write().await;
            let merged = self.merge_partial_blocks(offset, data).await?;
            self.apply(Record::Write {
                offset: align_down(offset),
                data: &merged,
            })?;
        }
        Ok(())
    }

    /// Reads the partial head and tail blocks around `[offset, +data.len())`
    /// and lays `data` over them. Caller holds the rmw lock exclusively.
    async fn merge_partial_blocks(&self, offset: u64, data: &[u8]) -> Result<Vec<u8>> {
        let start = align_down(offset);
        let end = align_up(offset + data.len() as u64);
        let mut merged = vec![0u8; (end - start) as usize];
        let block = BLOCK_SIZE as usize;
        if !is_aligned(offset) {
            self.read(start, &mut merged[..block]).await?;
        }
        if !is_aligned(offset + data.len() as u64) {
            let at = merged.len() - block;
            self.read(end - BLOCK_SIZE, &mut merged[at..]).await?;
        }
        let at = (offset - start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        Ok(merged)
    }

    /// Makes `[offset, +length)` read as zeros (WRITE_ZEROES and TRIM).
    pub async fn write_zeroes(&self, offset: u64, length: u64) -> Result<()> {
        self.check_range(&self.state.lock(), offset, length)?;
        if length == 0 {
            return Ok(());
        }
        self.make_room(0).await?;
        let end = offset + length;
        let (inner_start, inner_end) = (align_up(offset), align_down(end));
        if inner_start >= inner_end {
            // Within one or two blocks: a plain write of zeros.
            return self.write(offset, &vec![0u8; length as usize]).await;
        }
        if offset < inner_start {
            self.write(offset, &vec![0u8; (inner_start - offset) as usize])
                .await?;
        }
        {
            let _shared = self.rmw_lock.read().await;
            self.apply(Record::Zero {
                offset: inner_start,
                length: inner_end - inner_start,
            })?;
        }
        if inner_end < end {
            self.write(inner_end, &vec![0u8; (end - inner_end) as usize])
                .await?;
        }
        Ok(())
    }

    /// Journals and applies one aligned record, atomically with respect to
    /// other writers (journal order = overlay order).
    fn apply(&self, record: Record<'_>) -> Result<()> {
        let mut st = self.state.lock();
        if st.deleted {
            return Err(StoreError::VolumeNotFound {
                name: st.record.name.to_string(),
            });
        }
        let log = match &st.log {
            Some(log) => log.clone(),
            None => {
                let log = self.backend.journal.create(self.id, st.generation)?;
                st.log = Some(log.clone());
                log
            }
        };
        let at = log.append(&record)?;
        if st.active.is_empty() {
            st.dirty_since = Some(Instant::now());
        }
        match record {
            Record::Write { offset, data } => {
                st.active.write(
                    self.geometry,
                    offset,
                    data.len(),
                    &log,
                    at + journal::WRITE_DATA_AT,
                );
                self.backend
                    .written_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Record::Zero { offset, length } => st.active.zero(self.geometry, offset, length),
        }
        self.last_write_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until the write-back backlog (unsealed bytes) has room for
    /// `incoming` more bytes, asking for a seal in the background: while
    /// the object store answers, a writer is slowed down, never refused.
    /// Refuses the write with [`StoreError::BacklogFull`] while the store
    /// does not take the backlog: the last seal failed on it, or this
    /// writer waited the store timeout without the store answering any
    /// request (a hung store; then it is marked down until a seal succeeds).
    async fn make_room(&self, incoming: usize) -> Result<()> {
        let limit = self.backend.dirty_hard_limit;
        let timeout = self.backend.store_timeout;
        let started = Instant::now();
        loop {
            let held = self.log_bytes() as usize;
            if held == 0 || held + incoming <= limit {
                return Ok(());
            }
            let stalled = started.elapsed() >= timeout && self.backend.objects.silent_for() >= timeout;
            if stalled && !self.backend.store_down.swap(true, Ordering::Relaxed) {
                tracing::warn!(volume = %self.state.lock().record.name, silent_ms = self.backend.objects.silent_for().as_millis() as u64, "the object store does not answer: refusing writes past the backlog until a seal succeeds");
            }
            if self.backend.store_down.load(Ordering::Relaxed) {
                return Err(StoreError::BacklogFull {
                    held,
                    limit,
                    store_down: true,
                });
            }
            let room = self.backend.room.notified();
            self.seal_in_background();
            // Woken by every seal attempt; the timeout only re-checks.
            let _ = tokio::time::timeout(BACKLOG_RECHECK, room).await;
        }
    }

    /// Starts a seal on its own task unless one is queued already.
    fn seal_in_background(&self) {
        if self.seal_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            if let Err(e) = me.seal().await {
                tracing::warn!(volume = %me.record().name, error = %e, "seal for backpressure failed");
            }
            me.seal_queued.store(false, Ordering::Release);
            me.backend.room.notify_waiters();
        });
    }

    /// Makes every acknowledged write durable on local disk.
    pub fn flush(&self) -> Result<()> {
        let logs: Vec<Arc<LogFile>> = {
            let st = self.state.lock();
            st.older_logs.iter().chain(st.log.as_ref()).cloned().collect()
        };
        for log in &logs {
            log.sync()?;
        }
        self.backend.journal.sync_dir()
    }

    /// Seals all dirty data into the object store and commits a new root.
    /// Returns the number of chunks sealed.
    pub async fn seal(&self) -> Result<usize> {
        let _seal = self.seal_lock.lock().await;
        self.seal_locked().await
    }

    async fn seal_locked(&self) -> Result<usize> {
        let started = Instant::now();
        // Objects uploaded or claimed from here to the commit are not yet
        // reachable from any root: GC must not sweep them.
        let _writing = self.backend.objects.begin_write();
        let (frozen, tree) = {
            let mut st = self.state.lock();
            if st.active.is_empty() || st.deleted {
                return Ok(0);
            }
            let frozen = Arc::new(std::mem::take(&mut st.active));
            st.frozen = Some(frozen.clone());
            st.dirty_since = None;
            let generation = st.generation;
            st.generation += 1;
            if let Some(log) = st.log.take() {
                st.older_logs.push(log);
            }
            let tree = self.tree_of(&st);
            (
                FrozenLayer {
                    volume: self,
                    layer: Some(frozen),
                    generation,
                },
                tree,
            )
        };
        // From here until the commit, `frozen` puts the layer back under
        // newer writes if this future fails or is dropped at any await:
        // its journal records are still there, so nothing is lost.
        let layer = frozen.layer();
        let sealed = async {
            let new_root = self.seal_layer(&layer, tree).await?;
            self.backend.objects.make_durable().await?;
            self.commit_root(new_root, Some(frozen.generation))?;
            Ok(new_root)
        }
        .await;
        match sealed {
            Ok(new_root) => {
                frozen.committed();
                self.backend.store_down.store(false, Ordering::Relaxed);
                self.backend.room.notify_waiters();
                tracing::debug!(volume = %self.state.lock().record.name, chunks = layer.chunk_count(), dirty_bytes = layer.dirty_bytes(), ms = started.elapsed().as_millis() as u64, root = ?new_root, "sealed");
                Ok(layer.chunk_count())
            }
            Err(e) => {
                drop(frozen);
                tracing::warn!(volume = %self.state.lock().record.name, error = %e, "seal failed; dirty data kept in the journal");
                if matches!(e, StoreError::ObjectStore(_)) {
                    self.backend.store_down.store(true, Ordering::Relaxed);
                }
                self.backend.room.notify_waiters();
                Err(e)
            }
        }
    }

    async fn seal_layer(&self, frozen: &Overlay, tree: SealedTree) -> Result<NodeId> {
        let sorted = frozen.sorted_chunks();
        // Batches overlap (hashing one while another uploads); `buffered`
        // keeps their order, so updates stay sorted by chunk index.
        let batches: Vec<_> = sorted
            .chunks(SEAL_BATCH)
            .map(|batch| self.seal_batch(batch, tree))
            .collect();
        let updates: Vec<(u64, ChunkId)> = futures::stream::iter(batches)
            .buffered(SEAL_BATCHES_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        self.backend.trees.update(tree.root, tree.level, &updates).await
    }

    /// Materialises one batch of dirty chunks (merging partial ones with
    /// their sealed base) and ingests them.
    async fn seal_batch(
        &self,
        batch: &[(u64, &DirtyChunk)],
        tree: SealedTree,
    ) -> Result<Vec<(u64, ChunkId)>> {
        let chunk_size = self.geometry.chunk_size();
        let blocks = self.geometry.blocks_per_chunk();
        let mut work = Vec::with_capacity(batch.len());
        for (index, dirty) in batch {
            let base = if dirty.is_complete(blocks) {
                None
            } else {
                let id = self.backend.trees.lookup(tree.root, tree.level, *index).await?;
                if id.is_zero() {
                    None
                } else {
                    Some(self.backend.objects.chunk(id).await?)
                }
            };
            work.push((*index, (*dirty).clone(), base));
        }
        // Dirty blocks are read back from the logs: off the reactor.
        let contents = tokio::task::spawn_blocking(move || {
            work.into_iter()
                .map(|(index, dirty, base)| Ok((index, dirty.materialize(chunk_size, base.as_deref())?)))
                .collect::<Result<Vec<_>>>()
        })
        .await
        .expect("materialising chunks does not panic")?;
        self.backend
            .sealed_bytes
            .fetch_add((contents.len() * chunk_size) as u64, Ordering::Relaxed);
        self.backend.ingest(contents).await
    }

    /// Writes whole, chunk-aligned chunks straight into the object store and
    /// the tree, bypassing the journal (bulk import). Durable on return.
    pub(crate) async fn write_chunks_direct(&self, first_chunk: u64, data: Vec<Vec<u8>>) -> Result<()> {
        if self.backend.store_down.load(Ordering::Relaxed) {
            // Do not queue behind a seal that may hang on the store: ask the
            // store once (with retries) whether it answers again.
            if !self.backend.objects.probe().await {
                return Err(StoreError::StoreDown);
            }
            self.backend.store_down.store(false, Ordering::Relaxed);
        }
        let _seal = self.seal_lock.lock().await;
        // Older dirty data in these chunks must not be sealed over the import later.
        self.seal_locked().await?;
        let _writing = self.backend.objects.begin_write();
        let end = self.geometry.chunk_start(first_chunk + data.len() as u64);
        let tree = {
            let st = self.state.lock();
            self.check_range(
                &st,
                self.geometry.chunk_start(first_chunk),
                end - self.geometry.chunk_start(first_chunk),
            )?;
            self.tree_of(&st)
        };
        let chunks = data
            .into_iter()
            .enumerate()
            .map(|(i, c)| (first_chunk + i as u64, c))
            .collect();
        let updates = self.backend.ingest(chunks).await?;
        let new_root = self.backend.trees.update(tree.root, tree.level, &updates).await?;
        self.backend.objects.make_durable().await?;
        self.commit_root(new_root, None)
    }

    /// Commits a new sealed root for the volume (caller holds the seal lock).
    /// With `sealed_generation`, the journal floor moves past it in the same
    /// batch, and its files (and older) are removed after.
    fn commit_root(&self, new_root: NodeId, sealed_generation: Option<u64>) -> Result<()> {
        let mut record = self.state.lock().record.clone();
        record.root = new_root;
        record.updated_at = now();
        if let Some(generation) = sealed_generation {
            record.journal_floor = generation + 1;
        }
        let mut batch = self.backend.catalog.batch();
        batch.put_volume(&record);
        batch.commit()?;
        {
            let mut st = self.state.lock();
            st.record.root = new_root;
            st.record.updated_at = record.updated_at;
            st.record.journal_floor = record.journal_floor;
            if let Some(generation) = sealed_generation {
                // The sealed layer is in the root now: drop it in the same
                // critical section, so no read sees neither.
                st.frozen = None;
                st.older_logs.retain(|l| l.generation > generation);
            }
        }
        if let Some(generation) = sealed_generation {
            // Past the commit: a file left behind is below the floor and
            // goes at the next open.
            if let Err(e) = self.backend.journal.remove_through(self.id, generation) {
                tracing::warn!(volume_id = self.id, error = %e, "removing sealed journal files failed");
            }
        }
        Ok(())
    }

    /// Seals, then runs `f` with the committed record while holding the seal
    /// lock, so the root cannot move underneath (snapshots).
    pub(crate) async fn with_sealed<T>(&self, f: impl FnOnce(&VolumeRecord) -> Result<T>) -> Result<T> {
        let _seal = self.seal_lock.lock().await;
        self.seal_locked().await?;
        let record = self.state.lock().record.clone();
        f(&record)
    }

    /// Takes the volume for a root or record swap (rollback, resize,
    /// delete): no seal and no write runs until the guard is committed or
    /// dropped.
    pub(crate) async fn exclusive(&self) -> Exclusive<'_> {
        let seal = self.seal_lock.lock().await;
        let rmw = self.rmw_lock.write().await;
        Exclusive {
            volume: self,
            _seal: seal,
            _rmw: rmw,
        }
    }
}

/// The frozen layer of a seal in progress. Unless the seal commits, drop
/// puts it back under whatever was written since (a failed or cancelled
/// seal changes nothing).
struct FrozenLayer<'a> {
    volume: &'a Volume,
    /// `None` once committed.
    layer: Option<Arc<Overlay>>,
    /// The generation it froze.
    generation: u64,
}

impl FrozenLayer<'_> {
    fn layer(&self) -> Arc<Overlay> {
        self.layer.clone().expect("not yet committed")
    }

    /// The seal committed: the layer is part of the root now.
    fn committed(mut self) {
        self.layer = None;
    }
}

impl Drop for FrozenLayer<'_> {
    fn drop(&mut self) {
        let Some(layer) = self.layer.take() else {
            return;
        };
        let mut st = self.volume.state.lock();
        st.frozen = None;
        let newer = std::mem::take(&mut st.active);
        let mut restored = Arc::try_unwrap(layer).unwrap_or_else(|shared| (*shared).clone());
        restored.absorb_newer(newer);
        st.active = restored;
        st.dirty_since.get_or_insert_with(Instant::now);
    }
}

/// Exclusive access to a volume for swapping its record (see [`Volume::exclusive`]).
pub(crate) struct Exclusive<'a> {
    volume: &'a Volume,
    _seal: tokio::sync::MutexGuard<'a, ()>,
    _rmw: tokio::sync::RwLockWriteGuard<'a, ()>,
}

impl Exclusive<'_> {
    /// The record as of now.
    pub fn record(&self) -> VolumeRecord {
        self.volume.record()
    }

    /// Commits `batch` (which persists `updated`, or deletes the volume),
    /// then installs `updated`. With `discard_dirty`, unsealed writes are
    /// dropped: the journal floor moves past them in the same batch and
    /// their files are removed after.
    pub fn commit(
        self,
        mut batch: crate::catalog::CatalogBatch<'_>,
        mut updated: VolumeRecord,
        discard_dirty: bool,
        delete: bool,
    ) -> Result<Vec<crate::records::Event>> {
        let volume = self.volume;
        let generation = volume.state.lock().generation;
        if discard_dirty && !delete {
            updated.journal_floor = generation + 1;
            batch.put_volume(&updated);
        }
        let events = batch.commit()?;
        {
            let mut st = volume.state.lock();
            if discard_dirty {
                st.active = Overlay::default();
                st.generation = generation + 1;
                st.log = None;
                st.older_logs.clear();
            }
            st.deleted |= delete;
            st.record = updated;
        }
        if discard_dirty {
            volume.backend.journal.remove_through(volume.id, generation)?;
        }
        Ok(events)
    }
}
