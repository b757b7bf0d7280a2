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
//! **Cutoff.** An unmarked object is deleted only if its time is before
//! the cutoff: the earlier of (GC start − grace) and the start of the
//! oldest write still in progress (seals and imports upload objects before
//! the root that references them commits). An object's time is the later
//! of its upload and its last dedup claim: a writer that deduplicates
//! against an existing object refreshes it ([`ObjectLayer::claim`]), and
//! claims and deletions exclude each other, so an object picked up by a
//! concurrent writer is never deleted, even with a zero grace period.
//!
//! **Sweep.** The object store is listed (the source of truth: objects the
//! index does not know are found too); each unmarked, old-enough object is
//! removed from the existence index and then from the store, in batches
//! under the sweep gate ([`crate::sweep_gate`]): no lock is held across a
//! delete or an upload. Index entries whose object is gone are dropped so
//! no writer deduplicates against a missing object.
//!
//! **Shared bucket.** When servers exchange snapshots over one bucket
//! ([`crate::shared`]), GC first publishes this server's roots, marks from
//! every server's published roots as well, and deletes only objects in its
//! own existence index.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

pub use cairn_api_types::GcReport;

use crate::engine::Engine;
use crate::error::Result;
use crate::objects::{ObjectKind, ObjectLayer};
use crate::tree::Reachable;

/// Objects re-checked and deleted per batch (see [`sweep`]).
const SWEEP_BATCH: usize = 1024;
/// Deletes in flight at once.
const DELETE_CONCURRENCY: usize = 32;

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

/// Marks everything reachable from the catalog's roots.
async fn mark(engine: &Engine, report: &mut GcReport) -> Result<(HashSet<u64>, bool)> {
    let mut roots = engine.live_roots().await?;
    report.roots = roots.len() as u64;
    let (shared, foreign) = engine.shared().foreign_roots(engine.objects()).await?;
    if shared {
        engine.publish_roots(&roots).await?;
    }
    report.foreign_roots = foreign.len() as u64;
    roots.extend(foreign);
    let mut marked = HashSet::new();
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
    }
    report.mark_set_bytes = set_bytes(&marked);
    Ok((marked, shared))
}

/// Runs one GC. The caller makes sure only one runs at a time.
pub async fn run(engine: &Engine, options: GcOptions) -> Result<GcReport> {
    let started = Instant::now();
    let objects = engine.objects();
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

    let (marked, shared) = mark(engine, &mut report).await?;
    report.mark_ms = started.elapsed().as_millis() as u64;

    let mut listed = HashSet::new();
    let mut batch: Vec<(String, u64)> = Vec::new();
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
        batch.push((key, meta.size));
        if batch.len() >= SWEEP_BATCH {
            sweep(objects, &mut batch, cutoff, options.dry_run, &mut report).await?;
        }
    }
    sweep(objects, &mut batch, cutoff, options.dry_run, &mut report).await?;
    report.mark_set_bytes = report.mark_set_bytes.max(set_bytes(&marked) + set_bytes(&listed));
    drop(marked);

    // Index entries without an object (lost or deleted by hand) must go, or
    // a writer would deduplicate against nothing. Entries newer than the
    // start may belong to uploads that finished after the listing.
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

/// Deletes a batch of candidates. Under the sweep gate (a short lock, see
/// [`crate::sweep_gate`]) each is checked again (a writer may have claimed
/// it, or be uploading it, since it was listed), dropped from the index
/// (synced) and marked as being deleted; then, with no lock held, deleted
/// from the store. A writer that needs the same content meanwhile finds it
/// unknown and uploads it again once the delete is done.
async fn sweep(
    objects: &ObjectLayer,
    batch: &mut Vec<(String, u64)>,
    cutoff: u64,
    dry_run: bool,
    report: &mut GcReport,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let candidates = std::mem::take(batch);
    if dry_run {
        report.reclaimed_objects += candidates.len() as u64;
        report.reclaimed_bytes += candidates.iter().map(|(_, len)| len).sum::<u64>();
        return Ok(());
    }
    let mut doomed = Vec::with_capacity(candidates.len());
    let deleting = {
        let mut keys = objects.gate.lock();
        for (key, len) in candidates {
            if objects.is_unsynced(&key) || keys.is_uploading(&key) {
                report.skipped_young_objects += 1;
                report.skipped_young_bytes += len;
                continue;
            }
            match objects.catalog().object_entry(&key)? {
                Some((seen, _)) if seen >= cutoff => {
                    report.skipped_young_objects += 1;
                    report.skipped_young_bytes += len;
                }
                _ => doomed.push((key, len)),
            }
        }
        // Forgotten (synced) before deleted: after a crash in between, the
        // index never claims a deleted object; an object still there without
        // an entry is only uploaded again when needed.
        let names: Vec<String> = doomed.iter().map(|(key, _)| key.clone()).collect();
        objects.catalog().object_forget(&names)?;
        objects.gate.begin_delete(&mut keys, names)
    };
    let results: Vec<(String, u64, Result<()>)> = futures::stream::iter(doomed)
        .map(|(key, len)| async move {
            let path = object_store::path::Path::from(key.as_str());
            let result = match objects.store().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            };
            (key, len, result)
        })
        .buffer_unordered(DELETE_CONCURRENCY)
        .collect()
        .await;
    let mut first_error = None;
    for (_, len, result) in results {
        match result {
            Ok(()) => {
                report.reclaimed_objects += 1;
                report.reclaimed_bytes += len;
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
