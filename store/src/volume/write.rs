//! The write path of a volume: journaled writes, whole chunks stored at
//! once, zeroing, backlog room, flush.

use bytes::Bytes;

use super::*;
use crate::pack::Pace;
use crate::sealed::Keep;

/// Writes covering at least this many whole chunks store them directly
/// (see [`Volume::write_whole_chunks`]).
const DIRECT_MIN_CHUNKS: u64 = 1;

/// How often a writer waiting for backlog room looks again without being
/// woken.
const BACKLOG_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl Volume {
    /// Writes `data` at `offset`; acknowledged once journaled (not yet
    /// durable: see [`Volume::flush`]). The whole chunks it covers are
    /// stored as chunk objects at once and only their ids journaled
    /// ([`Volume::write_whole_chunks`]); the rest goes to the log.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_from(offset, data, None).await
    }

    /// [`Volume::write`] of a buffer the caller hands over: the whole
    /// chunks it covers are stored as slices of it, not copies.
    pub async fn write_bytes(&self, offset: u64, data: Bytes) -> Result<()> {
        self.write_from(offset, &data, Some(&data)).await
    }

    /// [`Volume::write`] without waiting, for a connection's I/O thread: a
    /// block-aligned write smaller than a chunk is journaled at once when
    /// the backlog has room and no partial-block write holds the volume.
    /// `None` when it must go through [`Volume::write`].
    pub fn try_write(&self, offset: u64, data: &[u8]) -> Option<Result<()>> {
        let end = offset.checked_add(data.len() as u64)?;
        let small = !data.is_empty() && data.len() < self.geometry.chunk_size();
        if !small || !is_aligned(offset) || !is_aligned(end) || !self.has_room(data.len()) {
            return None;
        }
        let _shared = self.rmw_lock.try_read().ok()?;
        let checked = self.check_range(&self.state.lock(), offset, data.len() as u64);
        Some(checked.and_then(|()| self.apply(Record::Write { offset, data })))
    }

    /// Writes `data`, which is `owned` when the caller handed it over.
    async fn write_from(&self, offset: u64, data: &[u8], owned: Option<&Bytes>) -> Result<()> {
        self.check_range(&self.state.lock(), offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let chunk = self.geometry.chunk_size() as u64;
        let end = offset + data.len() as u64;
        let (first, last) = (offset.div_ceil(chunk) * chunk, end / chunk * chunk);
        // Only where a put is a local write: against a remote store the
        // write would wait for the network, and for a store that is down.
        let direct =
            self.backend.objects.is_local_store() && !self.backend.store_down.load(Ordering::Relaxed);
        if !direct || last < first + DIRECT_MIN_CHUNKS * chunk {
            return self.write_logged(offset, data).await;
        }
        let at = |x: u64| (x - offset) as usize;
        if offset < first {
            self.write_logged(offset, &data[..at(first)]).await?;
        }
        let whole = &data[at(first)..at(last)];
        let whole_owned = owned.map(|b| b.slice(at(first)..at(last)));
        match self.write_whole_chunks(first, whole, whole_owned).await {
            // A store that fails a put does not fail the write: it is
            // journaled like any other and sealed when the store answers.
            Err(StoreError::ObjectStore(e)) => {
                tracing::debug!(error = %e, "storing whole chunks failed; journaling them instead");
                self.write_logged(first, whole).await?;
            }
            other => other?,
        }
        if last < end {
            self.write_logged(last, &data[at(last)..]).await?;
        }
        Ok(())
    }

    /// Stores whole chunks (`offset` chunk-aligned, `data` whole chunks)
    /// as chunk objects, then journals their ids: the bytes are written
    /// once. The objects are made durable by the next barrier: a flush's
    /// ([`Volume::flush`], before it syncs the log), a snapshot's or a
    /// seal's; like any write, this one is durable after the next flush.
    /// A replayed record whose objects were never covered by a barrier
    /// keeps them if they read back whole, and is dropped otherwise (see
    /// `replay.rs`). GC keeps the objects: as unsynced while they are, then
    /// because the overlay names them (see [`crate::gc`]) until a seal
    /// commits them as they are, without reading or uploading them again.
    async fn write_whole_chunks(&self, offset: u64, data: &[u8], owned: Option<Bytes>) -> Result<()> {
        let chunk = self.geometry.chunk_size();
        let first = offset / chunk as u64;
        let _writing = self.backend.objects.begin_write();
        let chunks = (0..data.len() / chunk)
            .map(|i| {
                let range = i * chunk..(i + 1) * chunk;
                let content = match &owned {
                    Some(owned) => owned.slice(range),
                    None => Bytes::copy_from_slice(&data[range]),
                };
                (first + i as u64, content)
            })
            .collect();
        // Not paced: the client's next flush waits for these bytes anyway.
        let ingested = self.backend.ingest(chunks, Keep::Cached, Pace::Unpaced).await?;
        let ids: Vec<u8> = ingested.updates.iter().flat_map(|(_, id)| id.0).collect();
        let _shared = self.rmw_lock.read().await;
        // Counted before the record is journaled (the objects are put
        // already): a flush that syncs a log holding the record, such as
        // a snapshot's of the generation the record landed in, has seen
        // the count and runs the barrier that covers these objects.
        self.chunk_records.fetch_add(1, Ordering::AcqRel);
        self.apply(Record::Chunks { offset, ids: &ids })?;
        // Written and stored in one step: one sealed byte per byte written.
        for counter in [&self.backend.written_bytes, &self.backend.sealed_bytes] {
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Journals block-aligned (or merged) data.
    async fn write_logged(&self, offset: u64, data: &[u8]) -> Result<()> {
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
        st.active.apply(self.geometry, &record, &log, at);
        if let Record::Write { data, .. } = record {
            self.backend
                .written_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
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
            if self.has_room(incoming) {
                return Ok(());
            }
            let held = self.log_bytes() as usize;
            let stalled = started.elapsed() >= timeout && self.backend.objects.silent_for() >= timeout;
            if stalled && !self.backend.store_down.swap(true, Ordering::Relaxed) {
                tracing::warn!(volume = %self.state.lock().record.name, silent_ms = self.backend.objects.silent_for().as_millis() as u64, "the object store does not answer: refusing writes past the backlog until a seal succeeds");
            }
            if self.backend.store_down.load(Ordering::Relaxed) {
                return Err(StoreError::BacklogFull { held, limit });
            }
            let room = self.backend.room.notified();
            self.seal_in_background();
            // Woken by every seal attempt; the timeout only re-checks.
            let _ = tokio::time::timeout(BACKLOG_RECHECK, room).await;
        }
    }

    /// True when the backlog takes `incoming` more bytes (an empty backlog
    /// takes any write).
    fn has_room(&self, incoming: usize) -> bool {
        let held = self.log_bytes() as usize;
        held == 0 || held + incoming <= self.backend.dirty_hard_limit
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

    /// Makes every acknowledged write durable on local disk: first the
    /// objects of the chunk records journaled since the last flush (a
    /// barrier, see [`crate::durable`]), then the logs that name them.
    /// Dropped half way, it leaves the count behind, so the next flush
    /// runs the barrier again. A record counted after the count was read
    /// may reach the synced log without its objects: it was not yet
    /// journaled, so neither acknowledged nor in a generation frozen
    /// before this call, and a replay keeps or drops it whole.
    ///
    /// The log syncs run on a blocking thread, never on a runtime worker:
    /// an `fdatasync` can take tens of ms, and the workers serve every
    /// other connection and request meanwhile. Clients' flushes sync at
    /// most [`crate::engine::LOG_SYNCS_AT_ONCE`] volumes' logs at a time,
    /// and one of a volume at a time: a flush with nothing new to sync is
    /// done at once; another waits for the one syncing and is done if that
    /// sync covered the logs as they were when it arrived.
    /// Dropped during its sync, a flush gives its turn and slot back and
    /// the sync runs to its end.
    pub async fn flush(&self) -> Result<()> {
        self.backend.flushes.fetch_add(1, Ordering::Relaxed);
        self.chunk_barrier().await?;
        let arrived: Vec<(Arc<LogFile>, u64)> = self
            .state
            .lock()
            .live_logs()
            .map(|log| (log.clone(), log.len()))
            .collect();
        let covered = || arrived.iter().all(|(log, len)| log.synced() >= *len);
        if covered() {
            return Ok(());
        }
        let _turn = self.flush_turn.lock().await;
        if covered() {
            return Ok(());
        }
        let _slot = self
            .backend
            .log_syncs
            .acquire()
            .await
            .expect("the log sync semaphore is never closed");
        self.sync_logs_blocking().await
    }

    /// A snapshot's flush, on a task of its own: it overlaps what the
    /// caller does meanwhile (the snapshot's catalog commit), it does not
    /// queue behind clients' flushes, and it runs to its end when the
    /// caller is dropped.
    pub(super) fn flush_on_task(&self) -> tokio::task::JoinHandle<Result<()>> {
        let me = self.me.upgrade().expect("a volume in use is held by its engine");
        tokio::spawn(async move {
            me.chunk_barrier().await?;
            me.sync_logs_blocking().await
        })
    }

    /// [`Volume::sync_logs`] on a blocking thread.
    async fn sync_logs_blocking(&self) -> Result<()> {
        let me = self.me.upgrade().expect("a volume in use is held by its engine");
        tokio::task::spawn_blocking(move || me.sync_logs())
            .await
            .expect("a log sync does not panic")
    }

    /// The barrier of a flush: makes the objects of the chunk records
    /// journaled since the last one durable.
    async fn chunk_barrier(&self) -> Result<()> {
        let journaled = self.chunk_records.load(Ordering::Acquire);
        if self.chunk_records_durable.load(Ordering::Acquire) < journaled {
            self.backend.objects.make_durable().await?;
            self.chunk_records_durable.fetch_max(journaled, Ordering::AcqRel);
        }
        Ok(())
    }

    /// The log syncs of a flush (blocking): every live log, then the
    /// journal directory; only then do the logs count as synced.
    fn sync_logs(&self) -> Result<()> {
        let logs: Vec<Arc<LogFile>> = self.state.lock().live_logs().cloned().collect();
        let mut covered = Vec::with_capacity(logs.len());
        for log in &logs {
            if let Some(len) = log.sync_data()? {
                self.backend.log_syncs_made.fetch_add(1, Ordering::Relaxed);
                covered.push((log, len));
            }
        }
        self.backend.journal.sync_dir()?;
        for (log, len) in covered {
            log.mark_synced(len);
        }
        Ok(())
    }
}
