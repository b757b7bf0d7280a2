//! Power-loss ordering for objects on a local filesystem.
//!
//! Puts to a local store are not durable when they return: pack files
//! ([`crate::pack`]) are synced in batches, and `object_store`'s
//! one-file-per-object backend writes a staging file and renames it into
//! place without fsync (after a power cut such an object can come back
//! empty). So objects put on a local store are *unsynced* until a barrier
//! ([`LocalSync::sync`]) makes them durable — the packs written since the
//! last barrier and the pack index, or each object's file and then the
//! directories that hold it (one barrier for every object written since
//! the last one: paid once per commit, not once per object). Only after
//! that are they recorded in the existence index.
//!
//! Callers run a barrier before every catalog batch that commits a root
//! referencing new objects, and a volume's flush runs one before it syncs
//! a log holding chunk records (whole chunks a client wrote, stored as
//! objects at once), so:
//! - a committed root never references an object a crash can lose;
//! - the existence index never claims an object a crash lost (its entries
//!   are written after the object is durable), so deduplication never
//!   points a new root at nothing;
//! - a flushed chunk record's objects are durable: a replayed record whose
//!   objects the existence index lacks (its entries are not synced) is kept
//!   when they read back whole ([`LocalSync::recover_chunk`]), and dropped
//!   otherwise: then it was never flushed.
//!
//! An unsynced object already counts as stored for deduplication (a writer
//! that finds it here runs the barrier before its own commit, which waits
//! for a barrier in progress), and GC leaves it alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::catalog::Catalog;
use crate::error::{Result, StoreError};

/// Threads that fsync files at once during a barrier.
const SYNC_THREADS: usize = 8;

/// How a local store's puts are made durable.
#[derive(Debug, Clone)]
pub enum LocalDurability {
    /// One file per object under this directory: fsync each, then the
    /// directories.
    Files(PathBuf),
    /// Pack files: [`crate::pack::PackStore::sync`].
    Packs(Arc<crate::pack::PackStore>),
}

/// Objects written to a local store and not yet made durable.
#[derive(Debug)]
pub(crate) struct LocalSync {
    how: LocalDurability,
    pending: Mutex<Pending>,
    /// One barrier at a time: a barrier that starts while another runs
    /// waits for it, so everything unsynced at its start is durable when
    /// it returns.
    barrier: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Object key → (stored length, write sequence number). A rewrite of
    /// the same key during a barrier gets a new number and stays pending.
    objects: HashMap<String, (u64, u64)>,
    next_seq: u64,
}

impl LocalSync {
    /// Tracks objects of a local store.
    pub(crate) fn new(how: LocalDurability) -> Arc<Self> {
        Arc::new(Self {
            how,
            pending: Mutex::default(),
            barrier: tokio::sync::Mutex::new(()),
        })
    }

    /// The pack store, when objects are in packs.
    pub(crate) fn packs(&self) -> Option<&Arc<crate::pack::PackStore>> {
        match &self.how {
            LocalDurability::Packs(packs) => Some(packs),
            LocalDurability::Files(_) => None,
        }
    }

    /// Notes an object just written (not yet durable).
    pub(crate) fn note(&self, key: &str, len: u64) {
        let mut pending = self.pending.lock();
        pending.next_seq += 1;
        let seq = pending.next_seq;
        pending.objects.insert(key.to_string(), (len, seq));
    }

    /// Recovers chunk `id`, stored under `key` by a process that stopped
    /// before a barrier covered it (it is not in the existence index): when
    /// it reads back whole, it is noted for the next barrier, which makes it
    /// durable, and true is returned. A process that was killed leaves its
    /// writes in the page cache; a power cut may have taken the object or
    /// torn it, and then it is not recovered (false).
    pub(crate) fn recover_chunk(&self, key: &str, id: cairn_chunker::ChunkId) -> Result<bool> {
        let read = match &self.how {
            LocalDurability::Files(root) => match std::fs::read(root.join(key)) {
                Ok(framed) => Ok(Some(framed)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
            LocalDurability::Packs(packs) => packs.read_to_recover(key),
        };
        let framed = match read {
            Ok(Some(framed)) => framed,
            Ok(None) => return Ok(false),
            Err(e) => {
                tracing::debug!(key, error = %e, "an unsynced object does not read back");
                return Ok(false);
            }
        };
        if cairn_chunker::frame::decode(&framed, Some(id)).is_err() {
            return Ok(false);
        }
        self.note(key, framed.len() as u64);
        Ok(true)
    }

    /// Whether an object is written and not yet synced.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.pending.lock().objects.contains_key(key)
    }

    /// Makes every object noted so far durable (file data, then their
    /// directories), then records them in the existence index. Runs on its
    /// own task: dropping the returned future does not stop a barrier half
    /// way, and a later barrier waits for it.
    pub(crate) async fn sync(self: &Arc<Self>, catalog: &Arc<Catalog>) -> Result<()> {
        let (me, catalog) = (self.clone(), catalog.clone());
        tokio::spawn(async move {
            let _barrier = me.barrier.lock().await;
            let batch: Vec<(String, u64, u64)> = me
                .pending
                .lock()
                .objects
                .iter()
                .map(|(key, &(len, seq))| (key.clone(), len, seq))
                .collect();
            if batch.is_empty() {
                return Ok(());
            }
            let worker = me.clone();
            tokio::task::spawn_blocking(move || worker.sync_blocking(&catalog, batch))
                .await
                .expect("object sync does not panic")
        })
        .await
        .expect("object sync task does not panic")
    }

    fn sync_blocking(&self, catalog: &Catalog, batch: Vec<(String, u64, u64)>) -> Result<()> {
        let started = std::time::Instant::now();
        let (missing, dirs) = match &self.how {
            LocalDurability::Files(root) => sync_files(root, &batch)?,
            LocalDurability::Packs(packs) => {
                packs.sync()?;
                (Vec::new(), 0)
            }
        };
        let now = crate::objects::unix_now();
        let durable: Vec<(&str, u64)> = batch
            .iter()
            .enumerate()
            .filter(|(i, _)| !missing.contains(i))
            .map(|(_, entry)| entry)
            .map(|(key, len, _)| (key.as_str(), *len))
            .collect();
        catalog.object_records(&durable, now)?;
        let mut pending = self.pending.lock();
        for (key, _, seq) in &batch {
            if pending.objects.get(key).is_some_and(|(_, s)| s == seq) {
                pending.objects.remove(key);
            }
        }
        drop(pending);
        tracing::debug!(
            objects = batch.len(),
            dirs,
            ms = started.elapsed().as_millis() as u64,
            "objects synced"
        );
        match missing.first() {
            Some(&i) => Err(StoreError::ObjectMissing {
                key: batch[i].0.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// fsyncs each object's file, then the directories above them up to the
/// store's root (a fan-out directory may be new). Returns the indices of
/// objects whose file no longer exists, and the number of directories.
fn sync_files(root: &Path, batch: &[(String, u64, u64)]) -> Result<(Vec<usize>, usize)> {
    let files: Vec<PathBuf> = batch.iter().map(|(key, _, _)| root.join(key)).collect();
    let missing = parallel_fsync(&files)?;
    let mut dirs: Vec<&Path> = files
        .iter()
        .flat_map(|f| f.ancestors().skip(1).filter(|d| d.starts_with(root)))
        .collect();
    dirs.sort_unstable();
    dirs.dedup();
    for dir in &dirs {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok((missing, dirs.len()))
}

/// fsyncs `files` on up to [`SYNC_THREADS`] threads. Returns the indices
/// of files that no longer exist; any other error fails the whole barrier.
fn parallel_fsync(files: &[PathBuf]) -> Result<Vec<usize>> {
    let next = AtomicUsize::new(0);
    let missing = Mutex::new(Vec::new());
    let threads = SYNC_THREADS.min(files.len());
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> std::io::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = files.get(i) else {
                            return Ok(());
                        };
                        match std::fs::File::open(path) {
                            Ok(file) => file.sync_data()?,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                missing.lock().push(i);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("fsync worker does not panic"))
    })?;
    Ok(missing.into_inner())
}
