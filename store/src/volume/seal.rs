//! Sealing a volume, and everything that commits its root.
//!
//! A seal freezes the active overlay into a generation (if it holds
//! anything), then seals the frozen generations oldest first: each dirty
//! chunk is materialised from the logs (merged with the sealed chunk only
//! when the overlay does not cover it whole), ingested, the changed tree
//! path written, the objects made durable, and one synced catalog batch
//! commits the new root, the journal floor past the generation, and the
//! final root of every snapshot that waited for it. A generation leaves the
//! frozen list only in that commit: a seal that fails or is dropped at any
//! `.await` leaves it frozen, readable and still to be sealed.
//!
//! Commit points that must agree with the frozen list hold the volume's
//! commit lock: a seal's commit, a snapshot (freeze + record), a direct
//! import, the deletion of a pending snapshot.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use cairn_chunker::ChunkId;
use futures::stream::{StreamExt, TryStreamExt};

use super::{Frozen, State, Volume};
use crate::error::{Result, StoreError};
use crate::overlay::{DirtyChunk, Overlay};
use crate::pack::Pace;
use crate::records::{now, SnapshotRecord, VolumeRecord};
use crate::sealed::{Ingested, Keep, SealedTree};
use crate::tree::NodeId;

/// Chunks hashed and compressed together while sealing.
const SEAL_BATCH: usize = 64;
/// Seal batches in progress at once (pipelining hashing with uploads).
const SEAL_BATCHES_IN_FLIGHT: usize = 3;
/// A snapshot (or clone) taking this long is logged as slow: they are
/// O(1), meant to be answered within 10 ms even with GiBs of dirty data.
const SLOW_SNAPSHOT: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether a seal's commit takes the volume's commit lock, or its caller
/// holds it already (a direct import, for its whole run).
#[derive(Clone, Copy)]
pub(super) enum CommitLock {
    Take,
    Held,
}

impl Volume {
    /// The commit lock's guard when `how` says to take it (`None` when the
    /// caller holds it already).
    pub(super) async fn commit_guard(&self, how: CommitLock) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match how {
            CommitLock::Take => Some(self.commit_lock.lock().await),
            CommitLock::Held => None,
        }
    }
}

/// Freezes the active overlay into a new generation when it holds
/// anything; returns the newest frozen generation, if any.
fn freeze(st: &mut State) -> Option<u64> {
    if !st.active.is_empty() {
        let layer = Arc::new(std::mem::take(&mut st.active));
        let through = st.generation;
        st.generation += 1;
        if let Some(log) = st.log.take() {
            st.older_logs.push(log);
        }
        st.dirty_since = None;
        st.frozen.push(Frozen { layer, through });
    }
    st.frozen.last().map(|f| f.through)
}

impl Volume {
    /// Seals all dirty data into the object store and commits new roots.
    /// Returns the number of chunks sealed.
    pub async fn seal(&self) -> Result<usize> {
        let _seal = self.seal_lock.lock().await;
        freeze(&mut self.state.lock());
        self.seal_frozen_locked(CommitLock::Take).await
    }

    /// Seals the frozen generations, oldest first, one commit each (caller
    /// holds the seal lock). A pending base is adopted first: the
    /// generations are sealed onto it.
    pub(super) async fn seal_frozen_locked(&self, commit_lock: CommitLock) -> Result<usize> {
        self.adopt_base_locked(commit_lock).await?;
        let mut chunks = 0;
        loop {
            let (next, tree) = {
                let st = self.state.lock();
                if st.deleted {
                    return Ok(chunks);
                }
                (st.frozen.first().cloned(), self.tree_of(&st))
            };
            let Some(generation) = next else {
                break;
            };
            let started = Instant::now();
            match self.seal_generation(&generation, tree, commit_lock).await {
                Ok(root) => {
                    chunks += generation.layer.chunk_count();
                    tracing::debug!(volume = %self.state.lock().record.name, generation = generation.through, chunks = generation.layer.chunk_count(), dirty_bytes = generation.layer.dirty_bytes(), ms = started.elapsed().as_millis() as u64, root = ?root, "sealed");
                }
                Err(e) => {
                    tracing::warn!(volume = %self.state.lock().record.name, error = %e, "seal failed; dirty data kept in the journal");
                    if matches!(e, StoreError::ObjectStore(_)) {
                        self.backend.store_down.store(true, Ordering::Relaxed);
                    }
                    self.backend.room.notify_waiters();
                    return Err(e);
                }
            }
            self.backend.store_down.store(false, Ordering::Relaxed);
            self.backend.room.notify_waiters();
        }
        Ok(chunks)
    }

    async fn seal_generation(
        &self,
        generation: &Frozen,
        tree: SealedTree,
        commit_lock: CommitLock,
    ) -> Result<NodeId> {
        let _slot = self
            .backend
            .seal_slots
            .acquire()
            .await
            .expect("the seal semaphore is never closed");
        // Objects uploaded or claimed from here to the commit are not yet
        // reachable from any root: GC must not sweep them.
        let _writing = self.backend.objects.begin_write();
        let (new_root, stored) = self.seal_layer(&generation.layer, tree).await?;
        self.backend.objects.make_durable().await?;
        // Learnt before the root is visible, so that a fork or clone of it
        // right after the commit finds its stored bytes known (facts about
        // an immutable root: harmless if the commit then fails).
        self.remember_commit(tree, new_root, &stored).await;
        let _commit = self.commit_guard(commit_lock).await;
        self.commit_root(new_root, Some(generation.through))?;
        Ok(new_root)
    }

    /// Lets space accounting learn the chunk lengths of the leaves a root
    /// this volume just committed over `tree` changed (see
    /// [`crate::usage`]); a failure costs only index lookups later.
    async fn remember_commit(&self, tree: SealedTree, new_root: NodeId, stored: &[(ChunkId, u64)]) {
        if let Err(e) =
            crate::usage::remember_commit(&self.backend, tree.root, new_root, tree.level, stored).await
        {
            tracing::debug!(error = %e, "space accounting of a new root left for later");
        }
    }

    /// Seals one frozen layer over `tree`: the new root (not committed)
    /// and the chunks uploaded for it with their stored lengths.
    async fn seal_layer(&self, frozen: &Overlay, tree: SealedTree) -> Result<(NodeId, Vec<(ChunkId, u64)>)> {
        let sorted = frozen.sorted_chunks();
        // Batches overlap (hashing one while another uploads); `buffered`
        // keeps their order, so updates stay sorted by chunk index.
        let batches: Vec<_> = sorted
            .chunks(SEAL_BATCH)
            .map(|batch| self.seal_batch(batch, tree))
            .collect();
        let mut updates: Vec<(u64, ChunkId)> = Vec::with_capacity(sorted.len());
        let mut stored = Vec::new();
        let mut batches = futures::stream::iter(batches).buffered(SEAL_BATCHES_IN_FLIGHT);
        while let Some(batch) = batches.try_next().await? {
            updates.extend(batch.updates);
            stored.extend(batch.stored);
        }
        let root = self.backend.trees.update(tree.root, tree.level, &updates).await?;
        Ok((root, stored))
    }

    /// Materialises one batch of dirty chunks (merging partial ones with
    /// their sealed or stored base) and ingests them. A chunk written
    /// whole as a stored chunk, and not since, is committed as it is.
    async fn seal_batch(&self, batch: &[(u64, &DirtyChunk)], tree: SealedTree) -> Result<Ingested> {
        let chunk_size = self.geometry.chunk_size();
        let blocks = self.geometry.blocks_per_chunk();
        let mut work = Vec::with_capacity(batch.len());
        let mut as_stored = Vec::new();
        for (index, dirty) in batch {
            let base = if let Some(id) = dirty.stored {
                if !dirty.has_blocks() {
                    as_stored.push((*index, id));
                    continue;
                }
                Some(self.backend.objects.chunk_to_rewrite(id).await?)
            } else if dirty.is_complete(blocks) {
                None
            } else {
                let id = self.backend.trees.lookup(tree.root, tree.level, *index).await?;
                if id.is_zero() {
                    None
                } else {
                    Some(self.backend.objects.chunk_to_rewrite(id).await?)
                }
            };
            work.push((*index, (*dirty).clone(), base));
        }
        // Dirty blocks are read back from the logs: off the reactor, and
        // behind requests for the CPU.
        let contents = crate::behind::run(move || {
            work.into_iter()
                .map(|(index, dirty, base)| Ok((index, dirty.materialize(chunk_size, base)?)))
                .collect::<Result<Vec<_>>>()
        })
        .await?;
        self.backend
            .sealed_bytes
            .fetch_add((contents.len() * chunk_size) as u64, Ordering::Relaxed);
        let mut ingested = match contents.is_empty() {
            true => Ingested::default(),
            false => {
                let contents = contents
                    .into_iter()
                    .map(|(i, c)| (i, bytes::Bytes::from(c)))
                    .collect();
                self.backend.ingest(contents, Keep::Cached, Pace::Paced).await?
            }
        };
        if !as_stored.is_empty() {
            ingested.updates.extend(as_stored);
            ingested.updates.sort_unstable_by_key(|(index, _)| *index);
        }
        Ok(ingested)
    }

    /// Commits a new root (caller holds the commit lock). With `sealed`,
    /// it is the seal of that frozen generation: the journal floor moves
    /// past it and every snapshot pending on it gets the root as its final
    /// one, in the same synced batch; then the generation leaves the
    /// frozen list and its log files go. Every new root is built on an
    /// adopted base: a pending base is gone with the commit.
    pub(super) fn commit_root(&self, new_root: NodeId, sealed: Option<u64>) -> Result<()> {
        let (record, finished) = {
            let st = self.state.lock();
            let mut record = st.record.clone();
            record.root = new_root;
            record.base_pending = false;
            record.updated_at = now();
            if let Some(through) = sealed {
                record.journal_floor = through + 1;
            }
            let finished: Vec<SnapshotRecord> = sealed
                .and_then(|through| st.pending.get(&through))
                .into_iter()
                .flatten()
                .map(|s| SnapshotRecord {
                    root: new_root,
                    pending: None,
                    ..s.clone()
                })
                .collect();
            (record, finished)
        };
        let mut batch = self.backend.catalog.batch();
        batch.put_volume(&record);
        for s in &finished {
            batch.put_snapshot(s);
        }
        batch.commit()?;
        {
            let mut st = self.state.lock();
            st.record.root = new_root;
            st.record.base_pending = false;
            st.base = None;
            st.record.updated_at = record.updated_at;
            st.record.journal_floor = record.journal_floor;
            if let Some(through) = sealed {
                if st.frozen.first().is_some_and(|f| f.through == through) {
                    st.frozen.remove(0);
                }
                st.older_logs.retain(|l| l.generation > through);
                if st.pending.remove(&through).is_some() {
                    st.sealed_roots.insert(through, new_root);
                }
            }
        }
        if let Some(through) = sealed {
            self.remove_logs_through(through);
        }
        Ok(())
    }

    /// Fails at once while the object store is marked down and does not
    /// answer a probe: an import should not queue behind a seal that may
    /// hang on the store.
    pub(crate) async fn check_store(&self) -> Result<()> {
        if self.backend.store_down.load(Ordering::Relaxed) {
            if !self.backend.objects.probe().await {
                return Err(StoreError::StoreDown);
            }
            self.backend.store_down.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Commits whole chunks an import stored ([`Backend::ingest`]) straight
    /// into the tree, bypassing the journal. Durable on return. The caller
    /// holds a GC write session from before the ingest until this returns.
    pub(crate) async fn commit_direct(&self, ingested: &Ingested) -> Result<()> {
        let (Some(first), Some(last)) = (
            ingested.updates.iter().map(|u| u.0).min(),
            ingested.updates.iter().map(|u| u.0).max(),
        ) else {
            return Ok(());
        };
        let _seal = self.seal_lock.lock().await;
        // Older dirty data in these chunks must not be sealed over the
        // import later, and no snapshot may freeze in between.
        let _commit = self.commit_lock.lock().await;
        freeze(&mut self.state.lock());
        self.seal_frozen_locked(CommitLock::Held).await?;
        let start = self.geometry.chunk_start(first);
        let tree = {
            let st = self.state.lock();
            self.check_range(&st, start, self.geometry.chunk_start(last + 1) - start)?;
            self.tree_of(&st)
        };
        let new_root = self
            .backend
            .trees
            .update(tree.root, tree.level, &ingested.updates)
            .await?;
        self.backend.objects.make_durable().await?;
        self.commit_root(new_root, None)?;
        // Committed: the next step of an import need not wait for this.
        drop((_commit, _seal));
        self.remember_commit(tree, new_root, &ingested.stored).await;
        Ok(())
    }

    /// Takes a snapshot in O(1): freezes the active overlay (if it holds
    /// anything) and lets `record` build and commit the snapshot's record
    /// from the volume's record and the generation it must wait for
    /// (`None`: nothing unsealed, the sealed root is the snapshot). A
    /// pending snapshot gets its final root from the seal of that
    /// generation. Returns once the record is committed: the caller does
    /// what must follow the commit at once (a clone opens its volume),
    /// then waits for [`Committed::durable`].
    pub(crate) async fn snapshot(
        &self,
        record: impl FnOnce(&VolumeRecord, Option<u64>) -> Result<SnapshotRecord>,
    ) -> Result<Committed<'_>> {
        let started = Instant::now();
        let clean_on_pending_base = {
            let st = self.state.lock();
            st.base.is_some() && st.active.is_empty() && st.frozen.is_empty()
        };
        if clean_on_pending_base {
            // No generation to wait for: the snapshot is the base, whose
            // final root comes with the source's seal.
            self.adopt_base().await?;
        }
        let _commit = self.commit_lock.lock().await;
        let locked = Instant::now();
        // The log sync and the catalog commit below go before the seals'
        // and compactions' bulk writes on the device.
        let foreground = self.backend.objects.foreground();
        let (volume, through) = {
            let mut st = self.state.lock();
            if st.deleted {
                return Err(StoreError::VolumeNotFound {
                    name: st.record.name.to_string(),
                });
            }
            let through = freeze(&mut st);
            if through.is_none() && st.base.is_some() {
                // Dirty data seen above was sealed since, which adopts the base.
                return Err(StoreError::CatalogCorrupt {
                    key: format!("volume {}", st.record.name),
                    reason: "a pending base outlived the seal of every generation".into(),
                });
            }
            (st.record.clone(), through)
        };
        // The snapshot holds every acknowledged write: its generations'
        // logs are synced at the same time as its record commits (two
        // device flushes in the time of one), and it is durable when both
        // are. A crash before then may keep the record with only the
        // writes that reached the logs, as it keeps the volume: the
        // unflushed ones were never promised. A replay needs the log file
        // of the generation the snapshot waits for, so a new log's
        // directory entry is synced first.
        let syncing = match through {
            Some(_) => {
                self.backend.journal.sync_dir()?;
                Some(self.flush_on_task())
            }
            None => None,
        };
        let dir_synced = Instant::now();
        let snapshot = record(&volume, through)?;
        if let Some(through) = through {
            // Registered at the commit: a snapshot dropped while its logs
            // sync still gets its final root from the seal.
            self.state
                .lock()
                .pending
                .entry(through)
                .or_default()
                .push(snapshot.clone());
        }
        Ok(Committed {
            snapshot,
            syncing,
            timing: SnapshotTiming {
                started,
                locked,
                dir_synced,
                committed: Instant::now(),
            },
            _foreground: foreground,
        })
    }

    /// Removes this volume's log files of generations `<= through`, which
    /// a commit just retired: off the reactor and not awaited, since the
    /// commit lock (held by the caller) and the runtime's workers must not
    /// wait for the unlinks. Each step of a removal waits while a
    /// snapshot, fork or clone syncs, as the seals' pack writes do.
    fn remove_logs_through(&self, through: u64) {
        let gate = self.backend.objects.packs().map(|p| p.foreground_gate());
        self.backend
            .journal
            .remove_through_in_background(self.id, through, move || {
                if let Some(gate) = &gate {
                    gate.wait_clear();
                }
            });
    }

    /// Runs `commit` (which deletes snapshot `tag` of this volume) so that
    /// no seal commit writes the snapshot back, and forgets it as pending.
    pub(crate) async fn forget_snapshot<T>(
        &self,
        tag: &crate::names::SnapshotTag,
        commit: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let _commit = self.commit_lock.lock().await;
        let out = commit()?;
        let mut st = self.state.lock();
        for waiting in st.pending.values_mut() {
            waiting.retain(|s| &s.tag != tag);
        }
        st.pending.retain(|_, waiting| !waiting.is_empty());
        Ok(out)
    }

    /// Takes the volume for a record swap (see [`Hold`]): no seal and no
    /// write runs until the guard is committed or dropped.
    pub(crate) async fn exclusive(&self, hold: Hold) -> Result<Exclusive<'_>> {
        let seal = self.seal_lock.lock().await;
        let rmw = self.rmw_lock.write().await;
        if hold != Hold::Record && !self.state.lock().pending.is_empty() {
            self.seal_frozen_locked(CommitLock::Take).await?;
        }
        if hold == Hold::Root {
            self.adopt_base_locked(CommitLock::Take).await?;
        }
        Ok(Exclusive {
            volume: self,
            _seal: seal,
            _rmw: rmw,
        })
    }
}

/// What an exclusive hold of a volume is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// A metadata change (state): nothing is sealed first.
    Record,
    /// A root swap (rollback, resize): pending snapshots are sealed first,
    /// so none waits on data the swap would discard or re-root, and a
    /// pending base is adopted, so the swap builds on a real root.
    Root,
    /// Deletion: pending snapshots are sealed first (they may outlive the
    /// volume).
    Delete,
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
    /// their files are removed after, in the background (a rollback of GiBs
    /// of dirty data does not wait for their unlinks; a file left by a
    /// crash is below the floor, and replay removes it).
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
                st.frozen.clear();
                st.pending.clear();
                st.generation = generation + 1;
                st.log = None;
                st.older_logs.clear();
                st.dirty_since = None;
            }
            st.deleted |= delete;
            if !updated.base_pending {
                st.base = None;
            }
            st.record = updated;
        }
        if discard_dirty {
            volume.remove_logs_through(generation);
        }
        Ok(events)
    }
}

/// A snapshot whose record is committed and whose logs may still be
/// syncing (see [`Volume::snapshot`]).
#[must_use = "a snapshot is durable only after `durable`"]
pub(crate) struct Committed<'a> {
    /// The committed record.
    pub(crate) snapshot: SnapshotRecord,
    syncing: Option<tokio::task::JoinHandle<Result<()>>>,
    timing: SnapshotTiming,
    _foreground: Option<crate::pack::ForegroundGuard<'a>>,
}

/// When each step of a snapshot ended, for the slow-snapshot log.
struct SnapshotTiming {
    started: Instant,
    locked: Instant,
    dir_synced: Instant,
    committed: Instant,
}

impl Committed<'_> {
    /// Waits until the snapshot's logs are durable; a snapshot taking
    /// [`SLOW_SNAPSHOT`] or more is logged with the time of each step.
    /// Dropped, the sync still runs to its end on its own task.
    pub(crate) async fn durable(self) -> Result<SnapshotRecord> {
        if let Some(syncing) = self.syncing {
            syncing.await.expect("a flush does not panic")?;
        }
        let t = &self.timing;
        let done = Instant::now();
        if done - t.started >= SLOW_SNAPSHOT {
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            tracing::warn!(
                volume = %self.snapshot.volume,
                tag = %self.snapshot.tag,
                total_ms = ms(done - t.started),
                lock_ms = ms(t.locked - t.started),
                dir_sync_ms = ms(t.dir_synced - t.locked),
                commit_ms = ms(t.committed - t.dir_synced),
                log_sync_after_commit_ms = ms(done - t.committed),
                "slow snapshot"
            );
        }
        Ok(self.snapshot)
    }
}
