//! One open volume: the write-back layers over a sealed manifest tree.
//!
//! Writes are appended to the volume's journal file and indexed in the
//! active dirty overlay under one lock, so journal order equals overlay
//! order, and are then acknowledged. [`Volume::flush`] fsyncs the journal
//! files. A snapshot (or a seal) *freezes* the active overlay in O(1): it
//! becomes an immutable generation, readable at once, and new writes go to
//! a new generation and log file. The sealer ([`seal`]) turns frozen
//! generations into chunk objects oldest first, one commit per generation,
//! so a snapshot taken with dirty data is pending (sealed root + frozen
//! generations up to its own) until the seal of its generation gives it
//! its final root in the same catalog batch. Reads look in the active
//! overlay, then the frozen generations newest first, then the tree.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cairn_chunker::{ByteRange, ChunkGeometry, ChunkId, BLOCK_SIZE};
use futures::FutureExt;
use parking_lot::Mutex;

use crate::error::{Result, StoreError};
use crate::journal::{self, LogFile, Record};
use crate::overlay::{read_logs, Hole, LogRead, Overlay, StoredRead};
use crate::pieces::{Piece, ReadPlain};
use crate::records::{SnapshotRecord, VolumeRecord};
use crate::sealed::{Backend, SealedTree};
use crate::tree::NodeId;

mod base;
mod replay;
mod seal;
mod write;

pub(crate) use base::PendingBase;
pub(crate) use seal::Hold;

struct State {
    record: VolumeRecord,
    active: Overlay,
    /// Frozen generations not yet sealed, oldest first.
    frozen: Vec<Frozen>,
    /// Generation that new writes belong to.
    generation: u64,
    /// Its log file, created at the generation's first write.
    log: Option<Arc<LogFile>>,
    /// Log files of unsealed older generations (frozen or replayed):
    /// flushes sync them too.
    older_logs: Vec<Arc<LogFile>>,
    /// When the active layer got its first write since it was last frozen.
    dirty_since: Option<Instant>,
    /// Snapshots waiting for the seal of a frozen generation, by that
    /// generation.
    pending: BTreeMap<u64, Vec<SnapshotRecord>>,
    /// Final roots of generations that pending snapshots waited for, for
    /// readers that looked the snapshot up just before its seal committed.
    sealed_roots: HashMap<u64, NodeId>,
    /// Set while the volume reads below its writes from a pending
    /// snapshot (see [`base`]).
    base: Option<PendingBase>,
    deleted: bool,
}

impl State {
    /// The log files of every unsealed generation.
    fn live_logs(&self) -> impl Iterator<Item = &Arc<LogFile>> {
        self.older_logs.iter().chain(self.log.as_ref())
    }

    /// Bytes of those log files.
    fn log_bytes(&self) -> u64 {
        self.live_logs().map(|l| l.len()).sum()
    }
}

/// A frozen generation: immutable, readable, waiting to be sealed.
#[derive(Clone)]
struct Frozen {
    layer: Arc<Overlay>,
    /// The newest journal generation it holds.
    through: u64,
}

/// What a read finds below a view's dirty layers.
enum Below {
    Tree(SealedTree),
    Base(PendingBase),
}

/// Which state of a volume a read sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Every acknowledged write.
    Live,
    /// A pending snapshot: the sealed root and the frozen generations up to
    /// this one.
    Through(u64),
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
    /// Serialises catalog commits that must agree with the frozen
    /// generations: a seal's commit, a snapshot's freeze and record, a
    /// direct import, a pending snapshot's deletion.
    commit_lock: tokio::sync::Mutex<()>,
    /// Aligned writes share it; read-modify-write of partial blocks takes it
    /// alone, so no concurrent write to the same block is lost.
    rmw_lock: tokio::sync::RwLock<()>,
    last_write_ms: AtomicU64,
    opened: Instant,
    /// This volume, for starting a seal in the background.
    me: std::sync::Weak<Volume>,
    /// A background seal has been asked for and not yet finished.
    seal_queued: std::sync::atomic::AtomicBool,
    /// Chunk records journaled by [`Volume::write`] so far, whose objects
    /// become durable only at a barrier (see [`Volume::flush`]).
    chunk_records: AtomicU64,
    /// How many of them a flush's barrier has covered.
    chunk_records_durable: AtomicU64,
    /// Taken by a client's flush for its log syncs: flushes that arrive
    /// while one syncs wait for it, and most then find their writes
    /// covered (a group commit).
    flush_turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume").field("id", &self.id).finish()
    }
}

/// What the dirty layers make of a read (see [`Volume::fill_dirty`]).
struct Dirty {
    /// Parts for what is below the layers.
    holes: Vec<Hole>,
    /// Parts in log files.
    reads: Vec<LogRead>,
    /// Parts of stored chunks the layers name.
    stored: Vec<StoredRead>,
}

/// Copies a stored-chunk read's part of `chunk` into `buf`.
fn copy_part(chunk: &[u8], s: &StoredRead, buf: &mut [u8]) {
    let h = &s.hole;
    buf[h.buf_offset..h.buf_offset + h.len]
        .copy_from_slice(&chunk[h.offset_in_chunk..h.offset_in_chunk + h.len]);
}

/// Checks that `[offset, +length)` lies within `size` bytes.
pub(crate) fn check_bounds(offset: u64, length: u64, size: u64) -> Result<()> {
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok(()),
        _ => Err(StoreError::OutOfRange { offset, length, size }),
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

    /// Bytes of the volume's live log files: its write-back backlog on
    /// local disk (dirty data, plus older versions of rewritten blocks
    /// until a seal retires their logs).
    pub fn log_bytes(&self) -> u64 {
        self.state.lock().log_bytes()
    }

    /// The stored chunks the unsealed layers name (GC marks them: no root
    /// holds them yet).
    pub(crate) fn unsealed_stored_chunks(&self) -> Vec<ChunkId> {
        let st = self.state.lock();
        let frozen = st.frozen.iter().map(|f| &*f.layer);
        std::iter::once(&st.active)
            .chain(frozen)
            .flat_map(|layer| layer.stored_ids())
            .collect()
    }

    /// Bytes waiting for a seal: the live logs, and the whole chunks
    /// written as stored chunks (in the object store already, but not yet
    /// in a root).
    pub fn unsealed_bytes(&self) -> u64 {
        let st = self.state.lock();
        let stored =
            st.active.stored_chunks() + st.frozen.iter().map(|f| f.layer.stored_chunks()).sum::<usize>();
        st.log_bytes() + (stored * self.geometry.chunk_size()) as u64
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
        check_bounds(offset, length, st.record.size)
    }

    /// Checks a read of `view`: the live volume must still exist; a
    /// pending snapshot stays readable after its volume is deleted.
    fn check_view(&self, st: &State, view: View, offset: u64, length: u64) -> Result<()> {
        match view {
            View::Live => self.check_range(st, offset, length),
            View::Through(_) => check_bounds(offset, length, st.record.size),
        }
    }

    /// The dirty layers a view reads, newest first.
    fn layers(st: &State, view: View) -> Vec<&Overlay> {
        let frozen = st.frozen.iter().rev();
        match view {
            View::Live => std::iter::once(&st.active)
                .chain(frozen.map(|f| &*f.layer))
                .collect(),
            View::Through(g) => frozen.filter(|f| f.through <= g).map(|f| &*f.layer).collect(),
        }
    }

    /// Serves what `layers` (newest first) hold of `[offset, +buf.len())`:
    /// zeros into `buf`, dirty data as log reads and stored-chunk reads;
    /// returns those and the parts left for the sealed tree.
    fn fill_dirty(&self, layers: &[&Overlay], offset: u64, buf: &mut [u8]) -> Dirty {
        let mut holes = Hole::all(self.geometry, offset, buf.len());
        let mut reads = Vec::new();
        let mut stored = Vec::new();
        for layer in layers {
            if holes.is_empty() {
                break;
            }
            let mut deeper = Vec::new();
            for h in &holes {
                let out = &mut buf[h.buf_offset..h.buf_offset + h.len];
                layer.fill(
                    h.chunk,
                    h.offset_in_chunk,
                    out,
                    h.buf_offset,
                    &mut deeper,
                    &mut reads,
                    &mut stored,
                );
            }
            holes = deeper;
        }
        Dirty { holes, reads, stored }
    }

    /// What a view reads below its dirty layers, and those layers (newest
    /// first): for a pending snapshot whose seal has committed meanwhile,
    /// its final root and no layer.
    fn view_of<'a>(&self, st: &'a State, view: View) -> Result<(Below, Vec<&'a Overlay>)> {
        let below = || match &st.base {
            Some(base) => Below::Base(base.clone()),
            None => Below::Tree(self.tree_of(st)),
        };
        match view {
            View::Live => Ok((below(), Self::layers(st, view))),
            View::Through(g) => match st.sealed_roots.get(&g) {
                Some(root) => Ok((
                    Below::Tree(SealedTree::new(*root, st.record.size, self.geometry)),
                    Vec::new(),
                )),
                None if st.record.journal_floor > g => Err(StoreError::CatalogCorrupt {
                    key: format!("volume {}", st.record.name),
                    reason: format!("generation {g} is sealed but its snapshot's root is unknown"),
                }),
                None => Ok((below(), Self::layers(st, view))),
            },
        }
    }

    /// The dirty part of a read: located under the state lock, the log
    /// reads done after it (log files are append-only and stay open while
    /// referenced, so the bytes cannot change). Returns the stored-chunk
    /// reads and the holes left for what is below, and that.
    fn read_dirty(&self, view: View, offset: u64, buf: &mut [u8]) -> Result<(Dirty, Below)> {
        let (dirty, below) = {
            let st = self.state.lock();
            self.check_view(&st, view, offset, buf.len() as u64)?;
            let (below, layers) = self.view_of(&st, view)?;
            (self.fill_dirty(&layers, offset, buf), below)
        };
        read_logs(&dirty.reads, buf)?;
        Ok((dirty, below))
    }

    /// Serves stored-chunk reads from the chunk cache only; false when one
    /// is not cached.
    fn read_stored_cached(&self, stored: &[StoredRead], buf: &mut [u8]) -> bool {
        stored
            .iter()
            .all(|s| match self.backend.objects.chunk_cached(&s.id) {
                Some(chunk) => {
                    copy_part(&chunk, s, buf);
                    true
                }
                None => false,
            })
    }

    /// Serves stored-chunk reads.
    async fn read_stored(&self, stored: &[StoredRead], buf: &mut [u8]) -> Result<()> {
        for s in stored {
            let chunk = self.backend.objects.chunk(s.id).await?;
            copy_part(&chunk, s, buf);
        }
        Ok(())
    }

    fn tree_of(&self, st: &State) -> SealedTree {
        SealedTree::new(st.record.root, st.record.size, self.geometry)
    }

    /// The volume's committed (sealed) tree (with a pending base, the
    /// source snapshot's sealed root at the fork).
    pub(crate) fn sealed_tree(&self) -> SealedTree {
        self.tree_of(&self.state.lock())
    }

    /// Reads without waiting: `None` when some of the range is neither
    /// dirty nor cached (then [`Volume::read`] is needed).
    pub fn try_read(&self, offset: u64, buf: &mut [u8]) -> Option<Result<()>> {
        self.try_read_view(View::Live, offset, buf)
    }

    /// [`Volume::try_read`] of a view.
    pub fn try_read_view(&self, view: View, offset: u64, buf: &mut [u8]) -> Option<Result<()>> {
        let (Dirty { holes, stored, .. }, below) = match self.read_dirty(view, offset, buf) {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        if !self.read_stored_cached(&stored, buf) {
            return None;
        }
        if holes.is_empty() {
            return Some(Ok(()));
        }
        match below {
            Below::Tree(tree) => self
                .backend
                .read_sealed_cached(tree, &holes, buf)
                .then_some(Ok(())),
            Below::Base(base) => base.try_read(self.geometry, &holes, buf),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_view(View::Live, offset, buf).await
    }

    /// [`Volume::read`] of a view.
    pub async fn read_view(&self, view: View, offset: u64, buf: &mut [u8]) -> Result<()> {
        let (Dirty { holes, stored, .. }, below) = self.read_dirty(view, offset, buf)?;
        self.read_stored(&stored, buf).await?;
        if holes.is_empty() {
            return Ok(());
        }
        match below {
            Below::Tree(tree) => self.backend.read_sealed(tree, &holes, buf).await,
            Below::Base(base) => base.read(self.geometry, &holes, buf).await,
        }
    }

    /// [`Volume::read_view`] as chunk pieces ([`crate::pieces`]): the
    /// whole chunks no dirty layer touches are handed on as stored.
    pub(crate) async fn pieces_view(&self, view: View, offset: u64, length: usize) -> Result<Vec<Piece>> {
        let (parts, tree) = {
            let st = self.state.lock();
            self.check_view(&st, view, offset, length as u64)?;
            let (below, layers) = self.view_of(&st, view)?;
            let tree = match below {
                Below::Tree(tree) => Some(tree),
                Below::Base(_) => None,
            };
            let parts: Vec<(Hole, bool)> =
                crate::pieces::parts(self.geometry, offset, length, st.record.size)
                    .into_iter()
                    .map(|(h, whole)| {
                        let clean =
                            whole && tree.is_some() && layers.iter().all(|l| l.peek(h.chunk).is_none());
                        (h, clean)
                    })
                    .collect();
            (parts, tree)
        };
        let read: ReadPlain<'_> = Box::new(move |pos, len| {
            async move {
                let mut buf = vec![0u8; len];
                self.read_view(view, pos, &mut buf).await?;
                Ok(Bytes::from(buf))
            }
            .boxed()
        });
        self.backend.assemble(tree, offset, parts, read).await
    }

    /// Allocation of `[offset, +length)` at chunk granularity: `(bytes,
    /// hole)` runs in order. A chunk is a hole when it is zero in the tree
    /// and no dirty data covers it.
    pub async fn allocation(&self, offset: u64, length: u64) -> Result<Vec<(u64, bool)>> {
        self.allocation_view(View::Live, offset, length).await
    }

    /// [`Volume::allocation`] of a view.
    pub async fn allocation_view(&self, view: View, offset: u64, length: u64) -> Result<Vec<(u64, bool)>> {
        let (dirty, below) = {
            let st = self.state.lock();
            self.check_view(&st, view, offset, length)?;
            let (below, layers) = self.view_of(&st, view)?;
            let dirty: Vec<(u64, Option<(bool, bool)>)> = self
                .geometry
                .spans(ByteRange::new(offset, length))
                .map(|s| (s.index, layers.iter().find_map(|l| l.peek(s.index))))
                .collect();
            (dirty, below)
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
        match below {
            Below::Tree(tree) => self.backend.allocation(tree, offset, length, &known).await,
            Below::Base(base) => base.allocation(self.geometry, offset, length, &known).await,
        }
    }
}
