//! Garbage collection: mark every object reachable from a live root, sweep
//! the rest once it is old enough.
//!
//! **Mark.** Roots are every volume and snapshot in the catalog, read at the
//! start. Each tree is walked from its root; a node already marked is not
//! entered again, so subtrees shared by forks, clones and snapshots are
//! visited once. The mark set holds a 64-bit fingerprint (the id's first 8
//! bytes) per object, not the 32-byte id: about 8 bytes per object plus
//! the hash table's control byte and slack ([`GcReport::mark_set_bytes`]
//! reports the real figure). Two objects sharing a fingerprint can only
//! make GC *keep* an unreachable object, never delete a reachable one.
//!
//! Whole chunks written straight to the store ([`crate::volume`]) are in
//! no root until a seal commits them: the stored chunks that open
//! volumes' unsealed layers name are marked too, read *before* the roots
//! (a seal commits the root before its layer goes, so a chunk moving
//! between them is seen in one or the other).
//!
//! **Cutoff.** An unmarked object is deleted only if its time is before
//! the cutoff: the earlier of (GC start − grace) and the start of the
//! oldest write still in progress (seals and imports upload objects before
//! the root that references them commits). An object's time is the later
//! of its upload and its last dedup claim: a writer that deduplicates
//! against an existing object refreshes it ([`ObjectLayer::claim`]), and
//! claims and deletions exclude each other, so an object picked up by a
//! concurrent writer is never deleted, even with a zero grace period.
//!
//! **Plan and sweep.** The object store is listed (the source of truth:
//! objects the index does not know are found too); each unmarked object is
//! planned for deletion when its index entry (one read) shows it older than
//! the cutoff. Planned batches go to the sweep while the listing goes on;
//! the sweep re-checks each under the sweep gate ([`crate::sweep_gate`]:
//! claimed or uploaded since GC started?), removes it from the existence
//! index and then from the store. No lock is held across a delete or an
//! upload. A dry run reports the plan. Index entries whose object is gone are dropped so
//! no writer deduplicates against a missing object.
//!
//! **Shared bucket.** When servers exchange snapshots over one bucket
//! ([`crate::shared`]), GC first publishes this server's roots, marks from
//! every server's published roots as well, and deletes only objects in its
//! own existence index.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

pub use cairn_api_types::{GcProgress, GcReport};
use parking_lot::Mutex;

use crate::engine::Engine;
use crate::error::Result;
use crate::objects::{ObjectKind, ObjectLayer};
use crate::tree::Reachable;

/// Objects re-checked and deleted per batch (see [`sweep`]).
const SWEEP_BATCH: usize = 1024;
/// Deletes in flight at once.
const DELETE_CONCURRENCY: usize = 32;
/// Planned batches waiting for the sweep: the listing runs at most this far
/// ahead of the deletes.
const PLANNED_BATCHES: usize = 4;

/// Settings of one GC run.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Report what would be deleted; delete nothing.
    pub dry_run: bool,
    /// Unreachable objects younger than this are kept.
    pub grace: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            grace: Duration::from_secs(3600),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 64-bit fingerprint of an object id, tagged by kind.
fn fingerprint(kind: ObjectKind, id: &[u8; 32]) -> u64 {
    let head = u64::from_le_bytes(id[..8].try_into().expect("8 bytes"));
    match kind {
        ObjectKind::Chunk => head,
        ObjectKind::Node => head.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15,
    }
}

/// Heap bytes of a `HashSet<u64>` (hashbrown: a slot and a control byte
/// per bucket, buckets a power of two at most 7/8 full).
fn set_bytes(set: &HashSet<u64>) -> u64 {
    if set.capacity() == 0 {
        return 0;
    }
    let buckets = (set.capacity() * 8 / 7).next_power_of_two();
    (buckets * (8 + 1)) as u64
}

/// Marks everything reachable from the catalog's roots, and the stored
/// chunks unsealed layers name.
async fn mark(engine: &Engine, report: &mut GcReport, progress: &Progress) -> Result<(HashSet<u64>, bool)> {
    // Unsealed layers first, then the roots: a seal that moves a stored
    // chunk from its layer into a root commits the root before the layer
    // goes, so the chunk is seen in one or the other.
    let mut marked: HashSet<u64> = engine
        .unsealed_stored_chunks()
        .iter()
        .map(|id| fingerprint(ObjectKind::Chunk, &id.0))
        .collect();
    let mut roots = engine.live_roots().await?;
    report.roots = roots.len() as u64;
    progress.roots.store(report.roots, Ordering::Relaxed);
    let (shared, foreign) = engine.shared().foreign_roots(engine.objects()).await?;
    if shared {
        engine.publish_roots(&roots).await?;
    }
    report.foreign_roots = foreign.len() as u64;
    roots.extend(foreign);
    for (root, level) in roots {
        engine
            .trees()
            .walk(root, level, &mut |r| match r {
                Reachable::Node(id) => marked.insert(fingerprint(ObjectKind::Node, &id.0)),
                Reachable::Chunk { id, .. } => {
                    if !id.is_zero() {
                        marked.insert(fingerprint(ObjectKind::Chunk, &id.0));
                    }
                    true
                }
            })
            .await?;
        progress.marked.store(marked.len() as u64, Ordering::Relaxed);
    }
    report.mark_set_bytes = set_bytes(&marked);
    Ok((marked, shared))
}

/// Live counters of the GC in progress (for `GET /gc` and `cairn gc`).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    running: AtomicBool,
    dry_run: AtomicBool,
    /// 0 mark, 1 sweep, 2 index.
    phase: AtomicU64,
    started: Mutex<Option<Instant>>,
    roots: AtomicU64,
    marked: AtomicU64,
    scanned: AtomicU64,
    planned_objects: AtomicU64,
    planned_bytes: AtomicU64,
    reclaimed_objects: AtomicU64,
    reclaimed_bytes: AtomicU64,
}

impl Progress {
    fn start(&self, dry_run: bool) -> Running<'_> {
        for counter in [
            &self.phase,
            &self.roots,
            &self.marked,
            &self.scanned,
            &self.planned_objects,
            &self.planned_bytes,
            &self.reclaimed_objects,
            &self.reclaimed_bytes,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.dry_run.store(dry_run, Ordering::Relaxed);
        *self.started.lock() = Some(Instant::now());
        self.running.store(true, Ordering::Release);
        Running(self)
    }

    /// The run in progress, if one is.
    pub(crate) fn snapshot(&self) -> Option<GcProgress> {
        if !self.running.load(Ordering::Acquire) {
            return None;
        }
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Some(GcProgress {
            phase: ["mark", "sweep", "index"][get(&self.phase).min(2) as usize].to_string(),
            dry_run: self.dry_run.load(Ordering::Relaxed),
            elapsed_ms: self.started.lock().map_or(0, |t| t.elapsed().as_millis() as u64),
            roots: get(&self.roots),
            marked_objects: get(&self.marked),
            scanned_objects: get(&self.scanned),
            planned_objects: get(&self.planned_objects),
            planned_bytes: get(&self.planned_bytes),
            reclaimed_objects: get(&self.reclaimed_objects),
            reclaimed_bytes: get(&self.reclaimed_bytes),
        })
    }
}

/// Marks the run over when dropped (also when its future is dropped).
struct Running<'a>(&'a Progress);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// What the sweep did with the batches it was given.
#[derive(Default)]
struct Tally {
    reclaimed_objects: u64,
    reclaimed_bytes: u64,
    skipped_young_objects: u64,
    skipped_young_bytes: u64,
}

/// Runs one GC. The caller makes sure only one runs at a time.
///
/// Plan and execute overlap: the listing (which decides each object's fate
/// with one index read) sends batches of candidates to the sweep, which
/// re-checks and deletes them while the listing goes on. The plan is what a
/// dry run reports; a real run deletes exactly the plan, less objects a
/// writer claimed after they were planned.
pub(crate) async fn run(engine: &Engine, options: GcOptions, progress: &Progress) -> Result<GcReport> {
    let started = Instant::now();
    let _running = progress.start(options.dry_run);
    let objects = engine.objects();
    // From here on, every key a writer claims or uploads is noted: the
    // sweep's last re-check looks there instead of reading the index again.
    let _watch = objects.gate.watch_touches();
    let now = unix_now();
    let mut report = GcReport {
        dry_run: options.dry_run,
        grace_seconds: options.grace.as_secs(),
        started_unix: now,
        ..GcReport::default()
    };
    // The cutoff is fixed before the roots are read: anything written
    // since is newer than it.
    let mut cutoff = now.saturating_sub(options.grace.as_secs());
    if let Some(oldest) = objects.oldest_write() {
        cutoff = cutoff.min(oldest);
    }
    report.cutoff_unix = cutoff;

    let (marked, shared) = mark(engine, &mut report, progress).await?;
    report.mark_ms = started.elapsed().as_millis() as u64;

    progress.phase.store(1, Ordering::Relaxed);
    let (batches, mut pending) = tokio::sync::mpsc::channel::<Vec<(String, u64)>>(PLANNED_BATCHES);
    let plan = {
        let (marked, report) = (&marked, &mut report);
        async move {
            let mut listed = HashSet::new();
            let mut batch: Vec<(String, u64)> = Vec::with_capacity(SWEEP_BATCH);
            let mut listing = objects.store().list(Some(objects.prefix()));
            while let Some(meta) = listing.next().await {
                let meta = meta?;
                let Some((kind, id)) = objects.parse_path(&meta.location) else {
                    continue;
                };
                let fp = fingerprint(kind, &id);
                listed.insert(fp);
                report.scanned_objects += 1;
                report.scanned_bytes += meta.size;
                progress.scanned.fetch_add(1, Ordering::Relaxed);
                if marked.contains(&fp) {
                    report.marked_objects += 1;
                    report.marked_bytes += meta.size;
                    continue;
                }
                let key = meta.location.to_string();
                let uploaded = meta.last_modified.timestamp().max(0) as u64;
                let entry = objects.catalog().object_entry(&key)?;
                if shared && entry.is_none() {
                    report.kept_foreign_objects += 1;
                    continue;
                }
                let claimed = entry.map_or(0, |(t, _)| t);
                if uploaded.max(claimed) >= cutoff || objects.is_unsynced(&key) {
                    report.skipped_young_objects += 1;
                    report.skipped_young_bytes += meta.size;
                    continue;
                }
                progress.planned_objects.fetch_add(1, Ordering::Relaxed);
                progress.planned_bytes.fetch_add(meta.size, Ordering::Relaxed);
                batch.push((key, meta.size));
                if batch.len() >= SWEEP_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(SWEEP_BATCH));
                    // The sweep only stops early on an error, which try_join reports.
                    let _ = batches.send(full).await;
                }
            }
            if !batch.is_empty() {
                let _ = batches.send(batch).await;
            }
            Ok::<_, crate::StoreError>(listed)
        }
    };
    let execute = async {
        let mut tally = Tally::default();
        while let Some(batch) = pending.recv().await {
            sweep(objects, batch, options.dry_run, &mut tally, progress).await?;
        }
        Ok(tally)
    };
    let (listed, tally) = tokio::try_join!(plan, execute)?;
    report.reclaimed_objects = tally.reclaimed_objects;
    report.reclaimed_bytes = tally.reclaimed_bytes;
    report.skipped_young_objects += tally.skipped_young_objects;
    report.skipped_young_bytes += tally.skipped_young_bytes;
    report.mark_set_bytes = report.mark_set_bytes.max(set_bytes(&marked) + set_bytes(&listed));
    drop(marked);

    // Index entries without an object (lost or deleted by hand) must go, or
    // a writer would deduplicate against nothing. Entries newer than the
    // start may belong to uploads that finished after the listing.
    progress.phase.store(2, Ordering::Relaxed);
    let mut stale = Vec::new();
    for entry in objects.catalog().object_entries() {
        let (key, seen, _) = entry?;
        let path = object_store::path::Path::from(key.as_str());
        let Some((kind, id)) = objects.parse_path(&path) else {
            continue;
        };
        if seen < now && !listed.contains(&fingerprint(kind, &id)) {
            stale.push(key);
        }
    }
    report.stale_index_entries = stale.len() as u64;
    if !options.dry_run && !stale.is_empty() {
        let keys = objects.gate.lock();
        // An upload that started since re-creates its entry when it ends.
        stale.retain(|k| !keys.is_uploading(k));
        objects.catalog().object_forget(&stale)?;
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Deletes a batch of planned objects. Under the sweep gate (a short lock,
/// see [`crate::sweep_gate`]) each is checked again — a writer may have
/// claimed it, or be uploading it, since it was planned: both are noted by
/// the gate while GC runs — dropped from the index (synced) and marked as
/// being deleted; then, with no lock held, deleted from the store. A writer
/// that needs the same content meanwhile finds it unknown and uploads it
/// again once the delete is done.
async fn sweep(
    objects: &ObjectLayer,
    candidates: Vec<(String, u64)>,
    dry_run: bool,
    tally: &mut Tally,
    progress: &Progress,
) -> Result<()> {
    if dry_run {
        tally.reclaimed_objects += candidates.len() as u64;
        tally.reclaimed_bytes += candidates.iter().map(|(_, len)| len).sum::<u64>();
        return Ok(());
    }
    let mut doomed = Vec::with_capacity(candidates.len());
    let deleting = {
        let mut keys = objects.gate.lock();
        for (key, len) in candidates {
            if objects.is_unsynced(&key) || keys.is_uploading(&key) || keys.was_touched(&key) {
                tally.skipped_young_objects += 1;
                tally.skipped_young_bytes += len;
            } else {
                doomed.push((key, len));
            }
        }
        // Forgotten (synced) before deleted: after a crash in between, the
        // index never claims a deleted object; an object still there without
        // an entry is only uploaded again when needed.
        let names: Vec<String> = doomed.iter().map(|(key, _)| key.clone()).collect();
        objects.catalog().object_forget(&names)?;
        objects.gate.begin_delete(&mut keys, names)
    };
    let results: Vec<(u64, Result<()>)> = futures::stream::iter(doomed)
        .map(|(key, len)| async move {
            let path = object_store::path::Path::from(key.as_str());
            let result = match objects.store().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            };
            (len, result)
        })
        .buffer_unordered(DELETE_CONCURRENCY)
        .collect()
        .await;
    let mut first_error = None;
    for (len, result) in results {
        match result {
            Ok(()) => {
                tally.reclaimed_objects += 1;
                tally.reclaimed_bytes += len;
                progress.reclaimed_objects.fetch_add(1, Ordering::Relaxed);
                progress.reclaimed_bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    drop(deleting);
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Actor, EngineConfig, Labels, Namespace, VolumeName};

    /// The window the pipeline opens: an object planned for deletion is
    /// claimed by a writer before the sweep reaches it. The sweep must see
    /// the claim (noted by the gate) and keep the object.
    #[tokio::test]
    async fn an_object_claimed_after_it_was_planned_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).await.unwrap();
        let (ns, actor, name) = (
            Namespace::default_ns(),
            Actor("t".into()),
            VolumeName::new("v").unwrap(),
        );
        engine
            .create_volume(&ns, &actor, &name, 1 << 20, None, Labels::new())
            .await
            .unwrap();
        let (kept, gone) = (
            cairn_chunker::testdata::noise(1, 64 << 10),
            cairn_chunker::testdata::noise(2, 64 << 10),
        );
        let v = engine.volume(&ns, &name).unwrap();
        v.write(0, &[kept.clone(), gone.clone()].concat()).await.unwrap();
        v.seal().await.unwrap();
        engine.delete_volume(&ns, &actor, &name, false).await.unwrap();

        let objects = engine.objects();
        let key = |c: &[u8]| {
            let id = cairn_chunker::ChunkId::of(c).0;
            (id, objects.path(ObjectKind::Chunk, &id).to_string())
        };
        let ((kept_id, kept_key), (_, gone_key)) = (key(&kept), key(&gone));
        let progress = Progress::default();
        let _watch = objects.gate.watch_touches();
        // Both planned; then a writer claims one.
        let planned = vec![(kept_key.clone(), 1), (gone_key.clone(), 1)];
        assert!(objects.claim(ObjectKind::Chunk, &kept_id).await.unwrap());
        let mut tally = Tally::default();
        sweep(objects, planned, false, &mut tally, &progress)
            .await
            .unwrap();
        assert_eq!((tally.reclaimed_objects, tally.skipped_young_objects), (1, 1));
        let exists = |key: &str| {
            let path = object_store::path::Path::from(key);
            async move { objects.store().head(&path).await.is_ok() }
        };
        assert!(exists(&kept_key).await, "the claimed object was deleted");
        assert!(!exists(&gone_key).await, "the unclaimed one is gone");
    }
}
