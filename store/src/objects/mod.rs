//! The object layer: content-addressed chunk and manifest-node objects in an
//! `object_store` (local filesystem, memory, or S3).
//!
//! Keys are `<prefix>/chunks/<2 hex>/<64 hex>` and `<prefix>/nodes/...`.
//! Objects are immutable: a key always holds the frame of the content that
//! hashes to it. A put first asks the catalog's existence index, so a
//! duplicate costs a lookup and no upload. Every object read from the store
//! has its frame crc and its BLAKE3 hash checked before use; decompressed
//! chunks are then kept in a bounded [`ChunkCache`]. For stores that are not
//! local, framed objects are also kept in a bounded on-disk
//! [`DiskCache`]. Concurrent readers of one chunk share one fetch
//! (single-flight).

mod read;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cairn_chunker::{frame, ChunkId};
use futures::stream::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::cache::ChunkCache;
use crate::catalog::Catalog;
use crate::disk_cache::DiskCache;
use crate::error::{Result, StoreError};

/// Frames up to this size are checked and decoded on the calling task.
const INLINE_DECODE_MAX: usize = 256 << 10;
/// Keys per index lookup of [`ObjectLayer::stored_lens`].
const LENS_BATCH: usize = 4096;

/// One chunk fetch, shared by the readers waiting for it.
type Fetch = tokio::sync::OnceCell<Bytes>;

/// What kind of object a key names.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A chunk of volume data.
    Chunk,
    /// A manifest tree node.
    Node,
}

impl ObjectKind {
    pub(crate) fn dir(&self) -> &'static str {
        match self {
            ObjectKind::Chunk => "chunks",
            ObjectKind::Node => "nodes",
        }
    }
}

/// Counters of object traffic, for logs and metrics.
#[derive(Debug, Default)]
pub struct ObjectStats {
    /// Objects uploaded.
    pub puts: std::sync::atomic::AtomicU64,
    /// Bytes uploaded (framed).
    pub put_bytes: std::sync::atomic::AtomicU64,
    /// Puts skipped because the object was known.
    pub dedup_hits: std::sync::atomic::AtomicU64,
    /// Objects fetched from the store.
    pub gets: std::sync::atomic::AtomicU64,
    /// Chunk reads served from the cache.
    pub cache_hits: std::sync::atomic::AtomicU64,
    /// Chunk reads the memory cache could not serve.
    pub cache_misses: std::sync::atomic::AtomicU64,
    /// Chunk reads that waited for another reader's fetch of the same chunk.
    pub fetch_joins: std::sync::atomic::AtomicU64,
}

/// Object uploads in flight at once, where each is its own request.
const UPLOAD_CONCURRENCY: usize = 16;

/// What [`ObjectLayer::replayable_chunks`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replayable {
    /// Every object is durable.
    Durable,
    /// Some were not, and read back whole: the next barrier makes them
    /// durable.
    Recovered,
    /// One is gone or torn.
    Lost,
}

/// Content-addressed access to chunk and node objects.
#[derive(Debug)]
pub struct ObjectLayer {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    catalog: Arc<Catalog>,
    cache: ChunkCache,
    /// Framed objects on local disk (stores that are not local only).
    disk: Option<Arc<DiskCache>>,
    /// What the caches took in or let go, for hydration (fed only when
    /// there is a disk cache: on a local store every chunk is local).
    feed: Arc<crate::hydrate::ChangeFeed>,
    /// Chunk fetches in progress, shared by concurrent readers.
    inflight: parking_lot::Mutex<std::collections::HashMap<ChunkId, Arc<Fetch>>>,
    /// Traffic counters.
    pub stats: ObjectStats,
    /// Dedup claims, uploads and GC's deletions coordinate here (see
    /// [`crate::sweep_gate`]); no lock is held across store I/O.
    pub(crate) gate: crate::sweep_gate::SweepGate,
    /// Start times (unix seconds) of writes in progress: seals and direct
    /// imports, from their first upload to their root commit.
    writers: Arc<Writers>,
    next_writer: std::sync::atomic::AtomicU64,
    /// Objects written to a local store and not yet durable (`None` for
    /// stores whose puts are durable when they return).
    local: Option<Arc<crate::durable::LocalSync>>,
    /// When the object store last answered a request (see
    /// [`ObjectLayer::silent_for`]).
    answered: crate::records::Stopwatch,
    /// Request counters of the store stack (see [`crate::wrap`]).
    pub store_stats: Arc<crate::wrap::StoreStats>,
    /// Fault injection switches of the store stack (tests).
    pub faults: Arc<crate::wrap::Faults>,
}

/// Writes in progress: token → start (unix seconds).
type Writers = parking_lot::Mutex<std::collections::BTreeMap<u64, u64>>;

/// A write in progress (see [`ObjectLayer::begin_write`]); ends on drop.
/// Owned, so it can outlive a borrow of the layer (a quarantined volume
/// keeps one).
#[derive(Debug)]
pub struct WriteSession {
    writers: Arc<Writers>,
    token: u64,
}

impl Drop for WriteSession {
    fn drop(&mut self) {
        self.writers.lock().remove(&self.token);
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bump(counter: &std::sync::atomic::AtomicU64, n: u64) {
    counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

impl ObjectLayer {
    /// Wraps a store; `cache_bytes` bounds the decompressed chunk cache.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, catalog: Arc<Catalog>, cache_bytes: usize) -> Self {
        Self {
            store,
            prefix,
            catalog,
            cache: ChunkCache::new(cache_bytes),
            disk: None,
            feed: Arc::default(),
            inflight: parking_lot::Mutex::default(),
            stats: ObjectStats::default(),
            gate: Default::default(),
            writers: Arc::default(),
            next_writer: std::sync::atomic::AtomicU64::new(1),
            local: None,
            answered: crate::records::Stopwatch::default(),
            store_stats: Arc::default(),
            faults: Arc::default(),
        }
    }

    /// Shares the counters and fault switches of the wrapped store.
    pub fn with_store_stats(
        mut self,
        stats: Arc<crate::wrap::StoreStats>,
        faults: Arc<crate::wrap::Faults>,
    ) -> Self {
        self.store_stats = stats;
        self.faults = faults;
        self
    }

    /// Marks the store as a local filesystem whose puts are durable only
    /// after [`ObjectLayer::make_durable`].
    pub fn with_local_durability(mut self, how: crate::durable::LocalDurability) -> Self {
        self.local = Some(crate::durable::LocalSync::new(how));
        self
    }

    /// Makes every object put so far durable and records it in the
    /// existence index (see [`crate::durable`]). Call before committing a
    /// root that may reference new objects. Cancel-safe.
    pub async fn make_durable(&self) -> Result<()> {
        match &self.local {
            Some(local) => local.sync(&self.catalog).await,
            None => Ok(()),
        }
    }

    /// Whether the store is a local filesystem (a put costs a local write,
    /// not a network round trip).
    pub fn is_local_store(&self) -> bool {
        self.local.is_some()
    }

    /// Marks a sync a user waits on (a snapshot's, a fork's) until the
    /// guard drops: the pack store's paced bulk writes wait for it (see
    /// [`crate::pack::PackStore::foreground`]). Nothing to do elsewhere.
    pub(crate) fn foreground(&self) -> Option<crate::pack::ForegroundGuard<'_>> {
        self.packs().map(|p| p.foreground())
    }

    /// The pack store under this layer, when the store is local and packed.
    pub fn packs(&self) -> Option<&Arc<crate::pack::PackStore>> {
        self.local.as_ref().and_then(|l| l.packs())
    }

    /// How long the object store has not answered a read or a write.
    pub fn silent_for(&self) -> std::time::Duration {
        self.answered.elapsed()
    }

    /// Whether an object was put and is not yet durable (GC keeps it).
    pub(crate) fn is_unsynced(&self, key: &str) -> bool {
        self.local.as_ref().is_some_and(|l| l.contains(key))
    }

    /// Adds an on-disk cache of framed objects.
    pub fn with_disk_cache(mut self, disk: Arc<DiskCache>) -> Self {
        self.disk = Some(disk);
        self.cache.set_feed(self.feed.clone());
        self
    }

    /// Where the caches note what they take in or let go (give it to the
    /// disk cache before [`ObjectLayer::with_disk_cache`]).
    pub fn change_feed(&self) -> Arc<crate::hydrate::ChangeFeed> {
        self.feed.clone()
    }

    /// The on-disk cache, when the store is not local.
    pub fn disk_cache(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    /// Whether a chunk can be read without the object store: always for a
    /// local store, else when the memory or disk cache holds it.
    pub fn is_local(&self, id: &ChunkId) -> bool {
        match &self.disk {
            None => true,
            Some(disk) => disk.contains(ObjectKind::Chunk, &id.0) || self.cache.contains(id),
        }
    }

    /// Fetches an object into the disk cache (checked) unless it is there;
    /// returns its framed length when it was fetched. For warming.
    pub async fn hydrate(&self, kind: ObjectKind, id: &[u8; 32]) -> Result<Option<u64>> {
        let Some(disk) = self.disk.clone() else {
            return Ok(None);
        };
        if disk.contains(kind, id) {
            return Ok(None);
        }
        let framed = self.get_framed(kind, id).await?;
        let len = framed.len() as u64;
        self.decode_checked(kind, id, framed.clone()).await?;
        let key = *id;
        tokio::task::spawn_blocking(move || disk.insert(kind, &key, &framed))
            .await
            .expect("cache insert does not panic");
        Ok(Some(len))
    }

    /// Registers a write that uploads objects and later commits a root
    /// referencing them: until it ends, GC sweeps nothing newer than its
    /// start.
    pub fn begin_write(&self) -> WriteSession {
        self.begin_write_at(unix_now())
    }

    /// [`ObjectLayer::begin_write`] for a write that started at `started`
    /// (unix seconds; 0 when unknown: GC then sweeps nothing until it
    /// ends).
    pub fn begin_write_at(&self, started: u64) -> WriteSession {
        let token = self
            .next_writer
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.writers.lock().insert(token, started);
        WriteSession {
            writers: self.writers.clone(),
            token,
        }
    }

    /// Start (unix seconds) of the oldest write still in progress.
    pub fn oldest_write(&self) -> Option<u64> {
        self.writers.lock().values().min().copied()
    }

    /// The catalog behind the existence index.
    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Kind and id of an object key, if it is one of ours.
    pub fn parse_path(&self, path: &Path) -> Option<(ObjectKind, [u8; 32])> {
        let rel: Vec<_> = path.prefix_match(&self.prefix)?.collect();
        let [dir, fan, name] = rel.as_slice() else {
            return None;
        };
        let kind = match dir.as_ref() {
            "chunks" => ObjectKind::Chunk,
            "nodes" => ObjectKind::Node,
            _ => return None,
        };
        let mut id = [0u8; 32];
        hex::decode_to_slice(name.as_ref(), &mut id).ok()?;
        (fan.as_ref() == &name.as_ref()[..2]).then_some((kind, id))
    }

    /// The key prefix of all objects.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Fetches and checks an object from the store, bypassing the cache
    /// (scrub). Returns its plaintext length.
    pub async fn fetch_checked(&self, kind: ObjectKind, id: &[u8; 32]) -> Result<usize> {
        let framed = self.get_framed(kind, id).await?;
        self.decode_checked(kind, id, framed)
            .await
            .map(|plain| plain.len())
    }

    /// Whether the object store answers (any answer, not-found included).
    pub async fn probe(&self) -> bool {
        let path = self.prefix.clone().join("servers");
        matches!(
            self.store.head(&path).await,
            Ok(_) | Err(object_store::Error::NotFound { .. })
        )
    }

    /// The object store behind this layer.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key of an object.
    pub fn path(&self, kind: ObjectKind, id: &[u8; 32]) -> Path {
        let hex = hex_of(id);
        self.prefix
            .clone()
            .join(kind.dir())
            .join(&hex[..2])
            .join(hex.as_str())
    }

    /// Whether a replayed chunk record's objects (`ids`; the zero sentinel
    /// is no object) are there. Those the existence index holds are durable
    /// (see [`crate::durable`]). One it lacks is recovered when it reads
    /// back whole ([`crate::durable::LocalSync::recover_chunk`]): a barrier
    /// made it durable and its index entry was lost, or a killed process
    /// left it in the page cache. Otherwise the record was never flushed,
    /// and is lost.
    pub(crate) fn replayable_chunks(&self, ids: impl Iterator<Item = ChunkId>) -> Result<Replayable> {
        let mut answer = Replayable::Durable;
        for id in ids.filter(|id| !id.is_zero()) {
            let key = self.path(ObjectKind::Chunk, &id.0);
            if self.catalog.object_entry(key.as_ref())?.is_some() {
                continue;
            }
            match &self.local {
                Some(local) if local.recover_chunk(key.as_ref(), id)? => answer = Replayable::Recovered,
                _ => return Ok(Replayable::Lost),
            }
        }
        Ok(answer)
    }

    /// True when the existence index says the object is stored; then the
    /// caller may reference it instead of uploading it (a dedup hit), and
    /// its index time is refreshed so GC's cutoff protects it (see
    /// [`crate::gc`]). Atomic with respect to GC's deletions.
    pub async fn claim(&self, kind: ObjectKind, id: &[u8; 32]) -> Result<bool> {
        // While GC deletes it, wait: once gone, it is not there to claim.
        let path = self.path(kind, id);
        self.gate
            .unless_deleting(path.as_ref(), |keys| self.claim_locked(keys, &path))
            .await
    }

    /// The claim, with the sweep gate's keys locked; a claimed key is noted
    /// as touched for a running GC.
    fn claim_locked(&self, keys: &mut crate::sweep_gate::Keys, path: &Path) -> Result<bool> {
        let claimed = if self.is_unsynced(path.as_ref()) {
            true
        } else {
            match self.catalog.object_entry(path.as_ref())? {
                Some((seen, len)) => {
                    let now = unix_now();
                    if seen < now {
                        self.catalog.object_record(path.as_ref(), now, len)?;
                    }
                    true
                }
                None => false,
            }
        };
        if claimed {
            keys.touch(path.as_ref());
        }
        Ok(claimed)
    }

    /// Claims `path` and registers its upload, as one step under the sweep
    /// gate; None when it is stored already. While GC deletes the key this
    /// waits: the upload comes after the delete, not before.
    async fn register_upload(&self, path: &Path) -> Result<Option<crate::sweep_gate::Upload<'_>>> {
        self.gate
            .unless_deleting(path.as_ref(), |keys| {
                let claimed = self.claim_locked(keys, path)?;
                Ok::<_, StoreError>((!claimed).then(|| self.gate.begin_upload(keys, path.as_ref())))
            })
            .await
    }

    /// Stores a framed object unless it is known to be stored already.
    /// Returns whether it was uploaded. The claim and the upload's
    /// registration are one step under the sweep gate, and the key stays
    /// registered until it is recorded, so GC cannot delete it in between;
    /// the upload itself holds no lock ([`crate::sweep_gate`]).
    pub async fn put_if_absent(&self, kind: ObjectKind, id: [u8; 32], framed: Bytes) -> Result<bool> {
        let path = self.path(kind, &id);
        let Some(_upload) = self.register_upload(&path).await? else {
            bump(&self.stats.dedup_hits, 1);
            return Ok(false);
        };
        let len = framed.len() as u64;
        // Content addressing makes a blind overwrite safe: any writer of this
        // key writes the same plaintext.
        self.store.put(&path, PutPayload::from(framed.clone())).await?;
        self.answered.mark();
        match &self.local {
            // Indexed once durable, by the next barrier.
            Some(local) => local.note(path.as_ref(), len),
            None => self.catalog.object_record(path.as_ref(), unix_now(), len)?,
        }
        self.keep_on_disk(kind, id, framed);
        bump(&self.stats.puts, 1);
        bump(&self.stats.put_bytes, len);
        Ok(true)
    }

    /// [`ObjectLayer::put_if_absent`] for many objects. On a local pack
    /// store (and no injected faults) the uploads are one batch: one
    /// blocking task, one run of records in the active pack, one index
    /// write ([`crate::pack::PackStore::put_many`], at `pace`), instead of
    /// one of each per object. Returns, per object, whether it was uploaded.
    pub async fn put_all_if_absent(
        &self,
        kind: ObjectKind,
        objects: Vec<([u8; 32], Bytes)>,
        pace: crate::pack::Pace,
    ) -> Result<Vec<bool>> {
        let Some(packs) = self.packs().filter(|_| self.faults.is_quiet()).cloned() else {
            return futures::stream::iter(objects)
                .map(|(id, framed)| self.put_if_absent(kind, id, framed))
                .buffered(UPLOAD_CONCURRENCY)
                .try_collect()
                .await;
        };
        let mut uploaded = vec![false; objects.len()];
        // Claimed and registered one by one under the sweep gate, as
        // put_if_absent does; registrations held until recorded.
        let mut uploads = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, (id, framed)) in objects.into_iter().enumerate() {
            if !seen.insert(id) {
                bump(&self.stats.dedup_hits, 1);
                continue;
            }
            let path = self.path(kind, &id);
            match self.register_upload(&path).await? {
                None => bump(&self.stats.dedup_hits, 1),
                Some(registration) => uploads.push((i, path.to_string(), framed, registration)),
            }
        }
        let batch: Vec<(String, Bytes)> = uploads
            .iter()
            .map(|(_, key, framed, _)| (key.clone(), framed.clone()))
            .collect();
        let started = std::time::Instant::now();
        let written = tokio::task::spawn_blocking(move || {
            let parts: Vec<[&[u8]; 1]> = batch.iter().map(|(_, framed)| [&framed[..]]).collect();
            let objects: Vec<(&str, &[&[u8]])> = batch
                .iter()
                .zip(&parts)
                .map(|((key, _), part)| (key.as_str(), &part[..]))
                .collect();
            packs.put_many(&objects, pace)
        })
        .await
        .expect("pack writes do not panic");
        self.store_stats
            .count_puts(started, uploads.len() as u64, written.is_ok());
        // A failed local write is an object store failure to the callers
        // (a direct write then journals its chunks instead).
        written.map_err(|e| {
            StoreError::ObjectStore(object_store::Error::Generic {
                store: "packs",
                source: Box::new(e),
            })
        })?;
        self.answered.mark();
        for (i, key, framed, _registration) in uploads {
            let len = framed.len() as u64;
            if let Some(local) = &self.local {
                local.note(&key, len);
            }
            bump(&self.stats.puts, 1);
            bump(&self.stats.put_bytes, len);
            uploaded[i] = true;
        }
        Ok(uploaded)
    }

    /// Writes a frame into the disk cache in the background.
    fn keep_on_disk(&self, kind: ObjectKind, id: [u8; 32], framed: Bytes) {
        if let Some(disk) = self.disk.clone() {
            tokio::task::spawn_blocking(move || disk.insert(kind, &id, &framed));
        }
    }

    /// Stored sizes of many objects of one kind (0 for unknown ones), in
    /// batched index lookups of [`LENS_BATCH`] keys: space accounting asks
    /// for every chunk of a new volume at once, and one lookup of 200,000
    /// keys held 130 MiB of keys and answers at a time.
    pub fn stored_lens(&self, kind: ObjectKind, ids: &[[u8; 32]]) -> Result<Vec<u64>> {
        let mut lens = Vec::with_capacity(ids.len());
        for batch in ids.chunks(LENS_BATCH) {
            let keys: Vec<String> = batch.iter().map(|id| self.path(kind, id).to_string()).collect();
            lens.extend(self.catalog.object_lens(&keys)?);
        }
        Ok(lens)
    }

    /// Bytes held by the chunk cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }
}

fn hex_of(id: &[u8; 32]) -> String {
    ChunkId(*id).to_hex()
}
