//! The engine: every user-visible operation on volumes and snapshots, in
//! one place that both the REST API and the NBD server call.
//!
//! Rules enforced here: names are RFC 1123 labels; sizes are multiples of
//! 4 KiB and chunk sizes powers of two; volumes only grow (resize, fork and
//! clone sizes are at least the source's); a volume in a transitional state
//! cannot be cloned, forked from, rolled back or deleted; an attached volume
//! cannot be rolled back; `require_labels` must match the snapshot's labels.
//! Every change is one atomic catalog batch together with its audit event.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_chunker::{ByteRange, ChunkGeometry};
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::catalog::Catalog;
use crate::disk_cache::DiskCache;
use crate::error::{Result, StoreError};
use crate::gc::{GcOptions, GcReport};
use crate::hydrate::Hydration;
use crate::journal::JournalDir;
use crate::names::{Namespace, SnapshotTag, VolumeName};
use crate::objects::ObjectLayer;
use crate::records::{
    now, Event, EventKind, Labels, SnapshotOrigin, SnapshotRecord, VolumeRecord, VolumeState,
};
use crate::sealed::{Backend, SealedTree};
use crate::tree::{levels_for, NodeId, TreeStore};
use crate::url::open_object_store;
use crate::verify::VerifyReport;
use crate::volume::{Hold, PendingBase, View, Volume};
use crate::wrap::{layered, Faults, StoreStats};

/// Default chunk size: 64 KiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 * 1024;
/// Bytes moved per step of an import or export.
const STREAM_STEP: usize = 4 << 20;
/// How often a server sharing its bucket republishes its live roots.
const ROOTS_PUBLISH_INTERVAL: Duration = Duration::from_secs(30);
/// Catalog meta key of the last GC report.
const LAST_GC: &str = "gc_last";

/// Generations sealed at once across all volumes.
const SEALS_AT_ONCE: usize = 2;

/// How to open an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Data directory: holds the catalog (and the default object store).
    pub data_dir: PathBuf,
    /// Object store URL; `None` means `file://<data_dir>/objects`.
    pub object_store: Option<String>,
    /// Chunk size for new volumes that do not name one.
    pub default_chunk_size: u64,
    /// Budget of the memory cache: decompressed chunks and decoded
    /// manifest nodes (an eighth, at least 8 MiB).
    pub cache_bytes: usize,
    /// Budget of the on-disk chunk cache, used when the object store is not
    /// local (`s3://`); `None` picks [`default_disk_cache_bytes`].
    pub disk_cache_bytes: Option<u64>,
    /// Log bytes of one volume that make the background sealer act.
    pub dirty_soft_limit: usize,
    /// Log bytes of one volume (its write-back backlog, on local disk) past
    /// which writers wait for sealing.
    pub dirty_hard_limit: usize,
    /// Idle time after which dirty data is sealed anyway.
    pub idle_seal_after: Duration,
    /// Age of the oldest unsealed write after which it is sealed even
    /// while writes go on.
    pub seal_age: Duration,
    /// How long a writer waits for backlog room while the object store
    /// answers nothing before writes are refused.
    pub store_timeout: Duration,
}

impl EngineConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            object_store: None,
            default_chunk_size: DEFAULT_CHUNK_SIZE,
            cache_bytes: 256 << 20,
            disk_cache_bytes: None,
            dirty_soft_limit: 1 << 30,
            dirty_hard_limit: 2 << 30,
            idle_seal_after: Duration::from_secs(2),
            seal_age: Duration::from_secs(60),
            store_timeout: Duration::from_secs(30),
        }
    }
}

/// The default on-disk cache budget: a quarter of the space free on the
/// data dir's filesystem at start, at least 1 GiB (or all of it when less
/// is free).
pub fn default_disk_cache_bytes(data_dir: &std::path::Path) -> u64 {
    let free = free_bytes(data_dir).unwrap_or(4 << 30);
    (free / 4).max(1 << 30).min(free)
}

fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a
    // properly sized out-parameter; statvfs writes it fully on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Changed extents between two snapshots.
pub type Extents = Vec<ByteRange>;

/// Who asks: used for the audit log's actor.
#[derive(Clone, Debug)]
pub struct Actor(pub String);

impl Actor {
    /// The server itself (sealer, GC, recovery).
    pub fn system() -> Self {
        Actor("system".into())
    }
}

/// A source to read from: a live volume or a snapshot.
#[derive(Clone, Debug)]
pub enum Readable {
    /// A volume (dirty data included).
    Volume(Arc<Volume>),
    /// A snapshot's frozen tree.
    Snapshot {
        /// Its sealed tree.
        tree: SealedTree,
        /// Its size.
        size: u64,
        /// While its seal is pending: its volume's generations to read.
        pending: Option<PendingView>,
    },
}

/// A pending snapshot's data: its volume's sealed root and frozen
/// generations up to `through`.
#[derive(Clone, Debug)]
pub struct PendingView {
    /// The volume the snapshot was taken of.
    pub volume: Arc<Volume>,
    /// The newest generation it holds.
    pub through: u64,
}

/// cairn's storage engine.
pub struct Engine {
    backend: Arc<Backend>,
    config: EngineConfig,
    volumes: Mutex<HashMap<(Namespace, VolumeName), Arc<Volume>>>,
    /// Serialises name-level changes (create, delete, fork) so name checks
    /// and inserts are atomic.
    names: tokio::sync::Mutex<()>,
    /// Held by the running garbage collection (one at a time).
    gc_running: tokio::sync::Mutex<()>,
    /// This server's identity and published roots in a shared bucket.
    shared: crate::shared::SharedBucket,
    /// Warms by volume id (see [`Engine::warm`]).
    warming: Mutex<HashMap<u64, Arc<crate::hydrate::WarmProgress>>>,
    /// Stored bytes per (immutable) root, see [`Engine::stored_bytes_of`].
    stored_memo: Mutex<lru::LruCache<NodeId, u64>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.config.data_dir)
            .finish()
    }
}

/// Checks a volume size: positive and a multiple of 4 KiB.
pub fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(4096) {
        return Err(StoreError::InvalidSize(format!(
            "volume size {size} must be a positive multiple of 4096"
        )));
    }
    Ok(())
}

fn event(
    kind: EventKind,
    ns: &Namespace,
    actor: &Actor,
    volume: Option<&VolumeName>,
    tag: Option<&SnapshotTag>,
    detail: serde_json::Value,
) -> Event {
    Event {
        seq: 0,
        time: now(),
        namespace: ns.clone(),
        actor: actor.0.clone(),
        kind,
        volume: volume.map(|v| v.to_string()),
        tag: tag.map(|t| t.to_string()),
        detail,
    }
}

impl Engine {
    /// Opens the catalog and object store, and every volume (replaying
    /// unsealed journals).
    pub async fn open(config: EngineConfig) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir)?;
        let catalog = Arc::new(Catalog::open(&config.data_dir.join("catalog"))?);
        let opened = open_object_store(config.object_store.as_deref(), &config.data_dir)?;
        let faults = Faults::from_env();
        let store_stats = Arc::new(StoreStats::default());
        let store = layered(opened.store, faults.clone(), store_stats.clone());
        let (chunk_cache, node_cache) = crate::tree::split_cache_budget(config.cache_bytes);
        let mut objects = ObjectLayer::new(store, opened.prefix, catalog.clone(), chunk_cache)
            .with_store_stats(store_stats, faults);
        if let Some(root) = opened.local_root {
            objects = objects.with_local_root(root);
        }
        let remote = config
            .object_store
            .as_deref()
            .is_some_and(|url| url.starts_with("s3://"));
        if remote {
            let capacity = config
                .disk_cache_bytes
                .unwrap_or_else(|| default_disk_cache_bytes(&config.data_dir));
            let disk = DiskCache::open(&config.data_dir.join("cache"), capacity)?;
            tracing::info!(
                capacity,
                objects = disk.len(),
                bytes = disk.bytes(),
                "chunk cache on disk"
            );
            objects = objects.with_disk_cache(Arc::new(disk));
        }
        let objects = Arc::new(objects);
        let backend = Arc::new(Backend {
            catalog: catalog.clone(),
            trees: TreeStore::new(objects.clone(), node_cache),
            objects,
            journal: JournalDir::open(&config.data_dir.join("journal"))?,
            dirty_hard_limit: config.dirty_hard_limit,
            store_timeout: config.store_timeout,
            written_bytes: Default::default(),
            sealed_bytes: Default::default(),
            store_down: Default::default(),
            room: Default::default(),
            seal_slots: tokio::sync::Semaphore::new(SEALS_AT_ONCE),
            readahead: remote.then(Default::default),
            runtime: tokio::runtime::Handle::current(),
        });
        let mut volumes = HashMap::new();
        let mut live_ids = HashSet::new();
        let mut pending: HashMap<(Namespace, VolumeName), Vec<SnapshotRecord>> = HashMap::new();
        for s in catalog.snapshots(None, None)? {
            if s.pending.is_some() {
                pending
                    .entry((s.namespace.clone(), s.volume.clone()))
                    .or_default()
                    .push(s);
            }
        }
        let mut forks = Vec::new();
        for record in catalog.volumes(None)? {
            let key = (record.namespace.clone(), record.name.clone());
            live_ids.insert(record.id);
            let waiting = pending.remove(&key).unwrap_or_default();
            if record.base_pending {
                forks.push(record.clone());
            }
            volumes.insert(key, Volume::open(backend.clone(), record, waiting)?);
        }
        Self::resolve_bases(&catalog, &volumes, forks).await?;
        let shared = crate::shared::SharedBucket::open(&catalog, &config.data_dir)?;
        let orphans = backend.journal.remove_orphans(&live_ids)?;
        if orphans > 0 {
            tracing::info!(files = orphans, "removed journal files of deleted volumes");
        }
        Ok(Arc::new(Self {
            backend,
            config,
            volumes: Mutex::new(volumes),
            names: tokio::sync::Mutex::new(()),
            gc_running: tokio::sync::Mutex::new(()),
            warming: Mutex::new(HashMap::new()),
            shared,
            stored_memo: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(4096).expect("non-zero"),
            )),
        }))
    }

    /// Gives each fork of a pending snapshot (`forks`) its base at open:
    /// the source's pending view while the snapshot is pending, else the
    /// snapshot's final root, adopted now.
    async fn resolve_bases(
        catalog: &Catalog,
        volumes: &HashMap<(Namespace, VolumeName), Arc<Volume>>,
        forks: Vec<VolumeRecord>,
    ) -> Result<()> {
        for fork in forks {
            let corrupt = |reason: &str| StoreError::CatalogCorrupt {
                key: format!("volume {}", fork.name),
                reason: reason.to_string(),
            };
            let origin = fork
                .from_snapshot
                .as_ref()
                .ok_or_else(|| corrupt("pending base without a source snapshot"))?;
            let snapshot = catalog
                .snapshot(&fork.namespace, &origin.volume, &origin.tag)?
                .ok_or_else(|| corrupt("the snapshot of its pending base is gone"))?;
            let volume = &volumes[&(fork.namespace.clone(), fork.name.clone())];
            match snapshot.pending {
                Some(through) => {
                    let source = volumes
                        .get(&(fork.namespace.clone(), origin.volume.clone()))
                        .ok_or_else(|| corrupt("the volume of its pending base is gone"))?;
                    volume.attach_base(PendingBase {
                        source: source.clone(),
                        through,
                        size: snapshot.size,
                    });
                }
                None => volume.adopt_root(snapshot.root, snapshot.size).await?,
            }
        }
        Ok(())
    }

    /// Every live root with its tree level, read at one moment: no fork,
    /// rollback or delete moves or drops a root meanwhile (they hold
    /// `names`). For GC's mark.
    pub(crate) async fn live_roots(&self) -> Result<Vec<(NodeId, u8)>> {
        let _names = self.names.lock().await;
        self.live_roots_locked()
    }

    fn live_roots_locked(&self) -> Result<Vec<(NodeId, u8)>> {
        let catalog = &self.backend.catalog;
        let mut roots = Vec::new();
        for v in catalog.volumes(None)? {
            let geometry = Self::geometry(v.chunk_size)?;
            roots.push((v.root, levels_for(geometry.chunk_count(v.size))));
        }
        for s in catalog.snapshots(None, None)? {
            let geometry = Self::geometry(s.chunk_size)?;
            roots.push((s.root, levels_for(geometry.chunk_count(s.size))));
        }
        Ok(roots)
    }

    pub(crate) fn stored_memo(&self) -> &Mutex<lru::LruCache<NodeId, u64>> {
        &self.stored_memo
    }

    /// How much of a volume's sealed data is local (see [`crate::hydrate`]).
    pub async fn hydration(&self, ns: &Namespace, name: &VolumeName) -> Result<Hydration> {
        let volume = self.volume(ns, name)?;
        let (measured, _) = crate::hydrate::measure(&self.backend, volume.sealed_tree()).await?;
        Ok(match self.warming.lock().get(&volume.record().id) {
            Some(progress) => progress.annotate(measured),
            None => measured,
        })
    }

    /// Shared-bucket state (see [`crate::shared`]).
    pub fn shared(&self) -> &crate::shared::SharedBucket {
        &self.shared
    }

    /// Publishes `roots` as this server's live roots in the bucket (and
    /// marks it as sharing the bucket from now on).
    pub(crate) async fn publish_roots(&self, roots: &[(NodeId, u8)]) -> Result<()> {
        self.shared
            .publish(&self.backend.catalog, &self.backend.objects, roots)
            .await
    }

    /// Publishes this server's live roots to the bucket if it shares it.
    pub async fn publish_roots_if_shared(&self) -> Result<()> {
        if !self.shared.active() {
            return Ok(());
        }
        self.publish_roots(&self.live_roots().await?).await
    }

    /// A snapshot's reference, for another server over the same bucket to
    /// import (see [`crate::shared`]). From now on this server publishes its
    /// roots and its GC honours other servers' roots.
    pub async fn export_snapshot_ref(
        &self,
        ns: &Namespace,
        volume: &VolumeName,
        tag: &SnapshotTag,
    ) -> Result<crate::shared::SnapshotRefDoc> {
        // Another server reads the root: it must be final.
        let record = self.sealed_snapshot_record(ns, volume, tag).await?;
        self.publish_roots(&self.live_roots().await?).await?;
        Ok(crate::shared::SnapshotRefDoc::of(
            &record,
            self.shared.server_id(),
        ))
    }

    /// Imports another server's snapshot reference as a volume `name`
    /// (default: the exported volume's name) holding snapshot `TAG`; fork
    /// it to write. The root is published before it is checked, so the
    /// exporting server's GC keeps everything it references.
    pub async fn import_snapshot_ref(
        &self,
        ns: &Namespace,
        actor: &Actor,
        doc: &crate::shared::SnapshotRefDoc,
        name: Option<VolumeName>,
    ) -> Result<SnapshotRecord> {
        let root = doc.root_id()?;
        let name = match name {
            Some(n) => n,
            None => VolumeName::new(&doc.volume)?,
        };
        let tag = SnapshotTag::new(&doc.tag)?;
        check_size(doc.size)?;
        let geometry = Self::geometry(doc.chunk_size)?;
        let level = levels_for(geometry.chunk_count(doc.size));
        let _names = self.names.lock().await;
        if self.backend.catalog.snapshot(ns, &name, &tag)?.is_some() {
            return Err(StoreError::SnapshotExists {
                volume: name.to_string(),
                tag: tag.to_string(),
            });
        }
        let mut record = self.new_record(ns, &name, doc.size, doc.chunk_size, root, doc.labels.clone())?;
        let mut roots = self.live_roots_locked()?;
        roots.push((root, level));
        self.publish_roots(&roots).await?;
        match self.backend.trees.load(root, level).await {
            Ok(_) => {}
            Err(StoreError::ObjectMissing { .. }) => {
                return Err(StoreError::RefRootMissing {
                    root: doc.root.clone(),
                })
            }
            Err(e) => return Err(e),
        }
        let snapshot = SnapshotRecord {
            namespace: ns.clone(),
            volume: name.clone(),
            tag: tag.clone(),
            size: doc.size,
            chunk_size: doc.chunk_size,
            root,
            created_at: doc.created_at,
            labels: doc.labels.clone(),
            pending: None,
        };
        record.from_snapshot = Some(SnapshotOrigin {
            volume: name.clone(),
            tag: tag.clone(),
        });
        let detail = json!({"server": doc.server, "volume": doc.volume, "tag": doc.tag, "root": doc.root, "size": doc.size});
        let mut batch = self.backend.catalog.batch();
        batch.put_volume(&record).put_snapshot(&snapshot).event(event(
            EventKind::ImportRef,
            ns,
            actor,
            Some(&name),
            Some(&tag),
            detail,
        ));
        batch.commit()?;
        let volume = Volume::open(self.backend.clone(), record.clone(), Vec::new())?;
        self.volumes.lock().insert((ns.clone(), name), volume);
        Ok(snapshot)
    }

    /// Hydration fraction of every volume, for metrics: 1 for every volume
    /// of a local store (nothing to fetch), measured for a remote one.
    pub async fn hydration_fractions(&self) -> Vec<(Namespace, VolumeName, f64)> {
        let open: Vec<Arc<Volume>> = self.volumes.lock().values().cloned().collect();
        let mut out = Vec::with_capacity(open.len());
        for volume in open {
            let record = volume.record();
            let fraction = match self.backend.objects.disk_cache() {
                None => 1.0,
                Some(_) => match crate::hydrate::measure(&self.backend, volume.sealed_tree()).await {
                    Ok((h, _)) => h.fraction,
                    Err(_) => continue,
                },
            };
            out.push((record.namespace, record.name, fraction));
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Unsealed bytes of all volumes (the write-back backlog).
    pub fn backlog_bytes(&self) -> u64 {
        let open: Vec<Arc<Volume>> = self.volumes.lock().values().cloned().collect();
        open.iter().map(|v| v.log_bytes()).sum()
    }

    /// Bytes acknowledged by writes, and chunk bytes written by seals,
    /// since start: their ratio is the seal's work amplification.
    pub fn write_and_seal_bytes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.backend.written_bytes.load(Relaxed),
            self.backend.sealed_bytes.load(Relaxed),
        )
    }

    /// Whether the last seal failed on the object store.
    pub fn store_down(&self) -> bool {
        self.backend.store_down.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts fetching every chunk of a volume that is not local into the
    /// disk cache, in the background (unless a warm of it runs already),
    /// and returns the hydration as of now.
    pub async fn warm(&self, ns: &Namespace, name: &VolumeName) -> Result<Hydration> {
        let volume = self.volume(ns, name)?;
        // One walk gives both the answer and the chunks to fetch.
        let (measured, missing) = crate::hydrate::measure(&self.backend, volume.sealed_tree()).await?;
        let progress = {
            let mut warming = self.warming.lock();
            warming.retain(|_, p| p.running());
            warming
                .entry(volume.record().id)
                .or_insert_with(|| {
                    let progress = Arc::new(crate::hydrate::WarmProgress::default());
                    crate::hydrate::start_warm(self.backend.clone(), missing, progress.clone());
                    progress
                })
                .clone()
        };
        tracing::info!(volume = %name, "warming");
        Ok(progress.annotate(measured))
    }

    /// Runs a garbage collection now (see [`crate::gc`]). A second one
    /// while one runs gets [`StoreError::GcRunning`]. Recorded in the
    /// audit log (namespace `ns`) and kept as the last report.
    pub async fn gc(&self, ns: &Namespace, actor: &Actor, options: GcOptions) -> Result<GcReport> {
        let Ok(_running) = self.gc_running.try_lock() else {
            return Err(StoreError::GcRunning);
        };
        let report = crate::gc::run(self, options).await?;
        tracing::info!(
            dry_run = report.dry_run,
            scanned = report.scanned_objects,
            marked = report.marked_objects,
            reclaimed_objects = report.reclaimed_objects,
            reclaimed_bytes = report.reclaimed_bytes,
            skipped_young = report.skipped_young_objects,
            ms = report.duration_ms,
            "garbage collection done"
        );
        let detail = serde_json::to_value(&report).expect("reports serialise");
        let mut batch = self.backend.catalog.batch();
        batch.event(event(EventKind::Gc, ns, actor, None, None, detail.clone()));
        batch.commit()?;
        self.backend
            .catalog
            .put_meta(LAST_GC, detail.to_string().as_bytes())?;
        Ok(report)
    }

    /// The last garbage collection's report, if any ran.
    pub fn last_gc(&self) -> Option<GcReport> {
        let bytes = self.backend.catalog.meta(LAST_GC).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Scrubs every volume and snapshot of `ns`, or one volume (`tag`
    /// None) or snapshot of it (see [`crate::verify`]).
    pub async fn verify(
        &self,
        ns: &Namespace,
        volume: Option<&VolumeName>,
        tag: Option<&SnapshotTag>,
    ) -> Result<VerifyReport> {
        crate::verify::run(self, Some(ns), volume.map(|v| (v, tag))).await
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The catalog (read access for listings and events).
    pub fn catalog(&self) -> &Catalog {
        &self.backend.catalog
    }

    /// The object layer (stats, tests).
    pub fn objects(&self) -> &ObjectLayer {
        &self.backend.objects
    }

    /// The tree store (walks for GC, verify, accounting).
    pub fn trees(&self) -> &TreeStore {
        &self.backend.trees
    }

    /// Seals volumes that are idle or over the soft limit until `stop`
    /// completes. Spawn it; `stop` is only looked at between passes, so a
    /// seal in progress finishes.
    pub async fn run_sealer(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_publish = std::time::Instant::now();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            self.seal_due().await;
            if last_publish.elapsed() >= ROOTS_PUBLISH_INTERVAL {
                last_publish = std::time::Instant::now();
                if let Err(e) = self.publish_roots_if_shared().await {
                    tracing::warn!(error = %e, "publishing live roots failed; will retry");
                }
            }
        }
    }

    /// One pass of the background sealer.
    pub async fn seal_due(&self) {
        let open: Vec<Arc<Volume>> = self.volumes.lock().values().cloned().collect();
        for volume in open {
            if volume.base_sealed() {
                if let Err(e) = volume.adopt_base().await {
                    tracing::warn!(volume = %volume.record().name, error = %e, "adopting a sealed base failed; will retry");
                }
            }
            let logged = volume.log_bytes();
            if logged == 0 {
                continue;
            }
            // Sealing late lets rewrites of a chunk coalesce: one object per
            // chunk per seal, however often it was written.
            let why = if logged >= self.config.dirty_soft_limit as u64 {
                "backlog"
            } else if volume.idle_ms() >= self.config.idle_seal_after.as_millis() as u64 {
                "idle"
            } else if volume.dirty_age() >= self.config.seal_age {
                "age"
            } else {
                continue;
            };
            tracing::debug!(volume = %volume.record().name, logged, why, "sealing");
            {
                if let Err(e) = volume.seal().await {
                    tracing::warn!(volume = %volume.record().name, error = %e, "background seal failed; will retry");
                }
            }
        }
    }

    /// Seals every volume and syncs the catalog: for shutdown.
    pub async fn seal_all(&self) -> Result<()> {
        let open: Vec<Arc<Volume>> = self.volumes.lock().values().cloned().collect();
        for volume in open {
            volume.seal().await?;
        }
        self.backend.catalog.sync()
    }

    /// An open volume.
    pub fn volume(&self, ns: &Namespace, name: &VolumeName) -> Result<Arc<Volume>> {
        self.volumes
            .lock()
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .ok_or_else(|| StoreError::VolumeNotFound {
                name: name.to_string(),
            })
    }

    /// All volumes of a namespace, sorted by name.
    pub fn list_volumes(&self, ns: &Namespace) -> Vec<VolumeRecord> {
        let mut out: Vec<VolumeRecord> = self
            .volumes
            .lock()
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|(_, v)| v.record())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(crate) fn geometry(chunk_size: u64) -> Result<ChunkGeometry> {
        ChunkGeometry::new(chunk_size).map_err(|e| StoreError::InvalidSize(e.to_string()))
    }

    /// Creates an empty volume.
    pub async fn create_volume(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
        size: u64,
        chunk_size: Option<u64>,
        labels: Labels,
    ) -> Result<VolumeRecord> {
        check_size(size)?;
        let chunk_size = chunk_size.unwrap_or(self.config.default_chunk_size);
        Self::geometry(chunk_size)?;
        let _names = self.names.lock().await;
        let record = self.new_record(ns, name, size, chunk_size, NodeId::ZERO, labels)?;
        let detail = json!({"size": size, "chunk_size": chunk_size});
        self.insert_volume(
            record,
            event(EventKind::Create, ns, actor, Some(name), None, detail),
            None,
        )
    }

    fn new_record(
        &self,
        ns: &Namespace,
        name: &VolumeName,
        size: u64,
        chunk_size: u64,
        root: NodeId,
        labels: Labels,
    ) -> Result<VolumeRecord> {
        if self.volumes.lock().contains_key(&(ns.clone(), name.clone())) {
            return Err(StoreError::VolumeExists {
                name: name.to_string(),
            });
        }
        let t = now();
        Ok(VolumeRecord {
            id: self.backend.catalog.allocate_volume_id(),
            namespace: ns.clone(),
            name: name.clone(),
            size,
            chunk_size,
            root,
            state: VolumeState::Ready,
            created_at: t,
            updated_at: t,
            labels,
            cloned_from: None,
            from_snapshot: None,
            journal_floor: 0,
            base_pending: false,
        })
    }

    /// Persists a new volume record with its event and opens it (on
    /// `base`, for a fork of a pending snapshot). Caller holds `names`.
    fn insert_volume(
        &self,
        record: VolumeRecord,
        ev: Event,
        base: Option<PendingBase>,
    ) -> Result<VolumeRecord> {
        let mut batch = self.backend.catalog.batch();
        batch.put_volume(&record).event(ev);
        batch.commit()?;
        let volume = Volume::open(self.backend.clone(), record.clone(), Vec::new())?;
        if let Some(base) = base {
            volume.attach_base(base);
        }
        self.volumes
            .lock()
            .insert((record.namespace.clone(), record.name.clone()), volume);
        Ok(record)
    }

    fn check_not_transitional(record: &VolumeRecord, operation: &'static str) -> Result<()> {
        if record.state.is_transitional() {
            return Err(StoreError::WrongState {
                name: record.name.to_string(),
                state: record.state.as_str().to_string(),
                operation,
            });
        }
        Ok(())
    }

    /// Sets a volume's state (NBD attach/detach), with an audit event for attach and detach.
    pub async fn set_state(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
        state: VolumeState,
    ) -> Result<VolumeRecord> {
        let volume = self.volume(ns, name)?;
        let guard = volume.exclusive(Hold::Record).await?;
        let mut updated = guard.record();
        updated.state = state;
        updated.updated_at = now();
        let mut batch = self.backend.catalog.batch();
        batch.put_volume(&updated);
        let kind = match state {
            VolumeState::Attached => Some(EventKind::Attach),
            VolumeState::Ready => Some(EventKind::Detach),
            _ => None,
        };
        if let Some(kind) = kind {
            batch.event(event(kind, ns, actor, Some(name), None, json!({})));
        }
        guard.commit(batch, updated.clone(), false, false)?;
        Ok(updated)
    }

    /// Deletes a volume, and its snapshots unless `keep_snapshots`.
    pub async fn delete_volume(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
        keep_snapshots: bool,
    ) -> Result<()> {
        self.adopt_dependents(&self.volume(ns, name)?).await?;
        let _names = self.names.lock().await;
        let volume = self.volume(ns, name)?;
        let guard = volume.exclusive(Hold::Delete).await?;
        let record = guard.record();
        Self::check_not_transitional(&record, "delete")?;
        let snapshots = if keep_snapshots {
            Vec::new()
        } else {
            self.backend.catalog.snapshots(Some(ns), Some(name))?
        };
        let mut batch = self.backend.catalog.batch();
        batch.delete_volume(&record);
        for s in &snapshots {
            batch.delete_snapshot(s);
        }
        let detail = json!({"keep_snapshots": keep_snapshots, "snapshots_deleted": snapshots.len(), "size": record.size});
        batch.event(event(EventKind::Delete, ns, actor, Some(name), None, detail));
        guard.commit(batch, record, true, true)?;
        self.volumes.lock().remove(&(ns.clone(), name.clone()));
        Ok(())
    }

    /// Grows a volume.
    pub async fn resize(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
        size: u64,
    ) -> Result<VolumeRecord> {
        check_size(size)?;
        let volume = self.volume(ns, name)?;
        let guard = volume.exclusive(Hold::Root).await?;
        let mut updated = guard.record();
        Self::check_not_transitional(&updated, "resize")?;
        if size < updated.size {
            return Err(StoreError::TooSmall {
                requested: size,
                source_size: updated.size,
            });
        }
        let geometry = volume.geometry();
        let (from, to) = (
            levels_for(geometry.chunk_count(updated.size)),
            levels_for(geometry.chunk_count(size)),
        );
        // New tree nodes are not reachable until the commit below.
        let _writing = self.backend.objects.begin_write();
        let old_size = updated.size;
        updated.root = self.backend.trees.grow(updated.root, from, to).await?;
        self.backend.objects.make_durable().await?;
        updated.size = size;
        updated.updated_at = now();
        let mut batch = self.backend.catalog.batch();
        batch.put_volume(&updated).event(event(
            EventKind::Resize,
            ns,
            actor,
            Some(name),
            None,
            json!({"from": old_size, "to": size}),
        ));
        guard.commit(batch, updated.clone(), false, false)?;
        Ok(updated)
    }

    /// Default snapshot tag: the UTC time, `YYYYMMDD-HHMMSS`.
    fn default_tag() -> SnapshotTag {
        let t = now();
        let text = format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        SnapshotTag::new(text).expect("timestamp tags are valid labels")
    }

    /// Snapshots a volume in O(1), dirty data or not: the volume's active
    /// writes are frozen into a generation that the snapshot reads at once
    /// and the sealer seals in the background (the snapshot is *pending*
    /// until then, see [`SnapshotRecord::pending`]). Without a tag, the UTC
    /// time is used (with `-2`, `-3`… when taken within the same second).
    pub async fn snapshot(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
        tag: Option<SnapshotTag>,
        labels: Labels,
    ) -> Result<SnapshotRecord> {
        let volume = self.volume(ns, name)?;
        let catalog = &self.backend.catalog;
        volume
            .snapshot(|record, pending| {
                let tag = match tag {
                    Some(tag) => {
                        if catalog.snapshot(ns, name, &tag)?.is_some() {
                            return Err(StoreError::SnapshotExists {
                                volume: name.to_string(),
                                tag: tag.to_string(),
                            });
                        }
                        tag
                    }
                    None => self.free_tag(ns, name, Self::default_tag())?,
                };
                let snapshot = SnapshotRecord {
                    namespace: ns.clone(),
                    volume: name.clone(),
                    tag: tag.clone(),
                    size: record.size,
                    chunk_size: record.chunk_size,
                    root: record.root,
                    created_at: now(),
                    labels,
                    pending,
                };
                let mut batch = catalog.batch();
                batch.put_snapshot(&snapshot).event(event(
                    EventKind::Snapshot,
                    ns,
                    actor,
                    Some(name),
                    Some(&tag),
                    json!({"root": record.root, "size": record.size, "pending": pending}),
                ));
                batch.commit()?;
                Ok(snapshot)
            })
            .await
    }

    /// A snapshot's record with its final root: a pending snapshot's
    /// volume is sealed first (fork, clone, diff and references need a
    /// root that holds everything).
    pub async fn sealed_snapshot_record(
        &self,
        ns: &Namespace,
        volume: &VolumeName,
        tag: &SnapshotTag,
    ) -> Result<SnapshotRecord> {
        let record = self.snapshot_record(ns, volume, tag)?;
        if record.pending.is_none() {
            return Ok(record);
        }
        self.volume(ns, volume)?.seal().await?;
        let record = self.snapshot_record(ns, volume, tag)?;
        match record.pending {
            None => Ok(record),
            Some(generation) => Err(StoreError::CatalogCorrupt {
                key: format!("snapshot {volume}@{tag}"),
                reason: format!("still pending on generation {generation} after a seal"),
            }),
        }
    }

    fn free_tag(&self, ns: &Namespace, name: &VolumeName, base: SnapshotTag) -> Result<SnapshotTag> {
        let mut tag = base.clone();
        let mut n = 2;
        while self.backend.catalog.snapshot(ns, name, &tag)?.is_some() {
            tag = SnapshotTag::new(format!("{base}-{n}"))?;
            n += 1;
        }
        Ok(tag)
    }

    /// One snapshot.
    pub fn snapshot_record(
        &self,
        ns: &Namespace,
        volume: &VolumeName,
        tag: &SnapshotTag,
    ) -> Result<SnapshotRecord> {
        self.backend
            .catalog
            .snapshot(ns, volume, tag)?
            .ok_or_else(|| StoreError::SnapshotNotFound {
                volume: volume.to_string(),
                tag: tag.to_string(),
            })
    }

    /// Snapshots of one volume or of the whole namespace.
    pub fn list_snapshots(&self, ns: &Namespace, volume: Option<&VolumeName>) -> Result<Vec<SnapshotRecord>> {
        if let Some(v) = volume {
            // Snapshots kept after their volume's deletion are still listed.
            let snaps = self.backend.catalog.snapshots(Some(ns), Some(v))?;
            if snaps.is_empty() {
                self.volume(ns, v)?;
            }
            return Ok(snaps);
        }
        self.backend.catalog.snapshots(Some(ns), None)
    }

    /// Deletes a snapshot (its data stays while anything else uses it).
    pub async fn delete_snapshot(
        &self,
        ns: &Namespace,
        actor: &Actor,
        volume: &VolumeName,
        tag: &SnapshotTag,
    ) -> Result<()> {
        if self.snapshot_record(ns, volume, tag)?.pending.is_some() {
            // Forks reading through it resolve their base from its record.
            if let Ok(open) = self.volume(ns, volume) {
                self.adopt_dependents(&open).await?;
            }
        }
        // Under `names`: a fork or rollback copying this root, and GC
        // reading the roots, see it either here or in its new place.
        let _names = self.names.lock().await;
        let snapshot = self.snapshot_record(ns, volume, tag)?;
        let commit = || {
            let mut batch = self.backend.catalog.batch();
            batch.delete_snapshot(&snapshot).event(event(
                EventKind::SnapshotDelete,
                ns,
                actor,
                Some(volume),
                Some(tag),
                json!({"root": snapshot.root}),
            ));
            batch.commit().map(drop)
        };
        match self.volume(ns, volume) {
            // A pending snapshot's seal must not write it back.
            Ok(open) => open.forget_snapshot(tag, commit).await,
            Err(_) => commit(),
        }
    }

    /// Creates volume `new` from a snapshot in O(1), pending or not (a
    /// fork of a pending snapshot reads through it until its seal, see
    /// [`crate::volume`]'s `base`). `size` defaults to the snapshot's and
    /// may not be smaller; every `require_labels` entry must match the
    /// snapshot's labels.
    #[allow(clippy::too_many_arguments)]
    pub async fn fork(
        &self,
        ns: &Namespace,
        actor: &Actor,
        volume: &VolumeName,
        tag: &SnapshotTag,
        new: &VolumeName,
        size: Option<u64>,
        require_labels: &Labels,
    ) -> Result<VolumeRecord> {
        let _names = self.names.lock().await;
        let snapshot = self.snapshot_record(ns, volume, tag)?;
        if let Ok(source) = self.volume(ns, volume) {
            Self::check_not_transitional(&source.record(), "fork")?;
        }
        for (key, expected) in require_labels {
            let actual = snapshot.labels.get(key);
            if actual != Some(expected) {
                return Err(StoreError::LabelMismatch {
                    key: key.clone(),
                    expected: expected.clone(),
                    actual: actual.cloned(),
                });
            }
        }
        let detail = json!({"source": volume, "snapshot": tag, "root": snapshot.root, "pending": snapshot.pending, "size": size.unwrap_or(snapshot.size)});
        let ev = event(EventKind::Fork, ns, actor, Some(new), Some(tag), detail);
        self.fork_locked(ns, new, &snapshot, size, None, ev).await
    }

    /// Creates `new` from `snapshot` (caller holds `names`): its root is
    /// the snapshot's, grown to `size`; a pending snapshot becomes its
    /// pending base.
    async fn fork_locked(
        &self,
        ns: &Namespace,
        new: &VolumeName,
        snapshot: &SnapshotRecord,
        size: Option<u64>,
        cloned_from: Option<VolumeName>,
        ev: Event,
    ) -> Result<VolumeRecord> {
        let base = match snapshot.pending {
            Some(through) => Some(PendingBase {
                source: self.volume(ns, &snapshot.volume)?,
                through,
                size: snapshot.size,
            }),
            None => None,
        };
        let size = size.unwrap_or(snapshot.size);
        check_size(size)?;
        if size < snapshot.size {
            return Err(StoreError::TooSmall {
                requested: size,
                source_size: snapshot.size,
            });
        }
        // New tree nodes are not reachable until the commit below.
        let _writing = self.backend.objects.begin_write();
        let geometry = Self::geometry(snapshot.chunk_size)?;
        let root = self
            .backend
            .trees
            .grow(
                snapshot.root,
                levels_for(geometry.chunk_count(snapshot.size)),
                levels_for(geometry.chunk_count(size)),
            )
            .await?;
        if root != snapshot.root {
            // Only the new top nodes need syncing: a fork of the same size
            // does not wait for a barrier (which may be a seal's).
            self.backend.objects.make_durable().await?;
        }
        let mut record = self.new_record(ns, new, size, snapshot.chunk_size, root, Labels::new())?;
        record.cloned_from = cloned_from;
        record.from_snapshot = Some(SnapshotOrigin {
            volume: snapshot.volume.clone(),
            tag: snapshot.tag.clone(),
        });
        record.base_pending = base.is_some();
        self.insert_volume(record, ev, base)
    }

    /// Lets every volume that reads through `source`'s pending generations
    /// adopt its base (sealing them): before a snapshot or volume they
    /// resolve their base from goes.
    async fn adopt_dependents(&self, source: &Arc<Volume>) -> Result<()> {
        let dependents: Vec<Arc<Volume>> = self
            .volumes
            .lock()
            .values()
            .filter(|v| v.depends_on(source))
            .cloned()
            .collect();
        for volume in dependents {
            volume.adopt_base().await?;
        }
        Ok(())
    }

    /// Snapshot now + fork, in O(1) both. `new` defaults to
    /// `<name>-clone-<unix seconds>`.
    pub async fn clone_volume(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
        new: Option<VolumeName>,
        size: Option<u64>,
    ) -> Result<VolumeRecord> {
        let source = self.volume(ns, name)?;
        Self::check_not_transitional(&source.record(), "clone")?;
        let new = match new {
            Some(n) => n,
            None => self.default_clone_name(ns, name)?,
        };
        if self.volumes.lock().contains_key(&(ns.clone(), new.clone())) {
            return Err(StoreError::VolumeExists {
                name: new.to_string(),
            });
        }
        if let Some(size) = size {
            check_size(size)?;
            if size < source.size() {
                return Err(StoreError::TooSmall {
                    requested: size,
                    source_size: source.size(),
                });
            }
        }
        let tag = self.free_tag(
            ns,
            name,
            SnapshotTag::new(format!("clone-{new}")).unwrap_or_else(|_| Self::default_tag()),
        )?;
        let snapshot = self
            .snapshot(ns, actor, name, Some(tag.clone()), Labels::new())
            .await?;
        let _names = self.names.lock().await;
        let detail = json!({"source": name, "snapshot": tag, "root": snapshot.root, "pending": snapshot.pending, "size": size.unwrap_or(snapshot.size)});
        let ev = event(EventKind::Clone, ns, actor, Some(&new), Some(&tag), detail);
        // The snapshot is this call's own: a concurrent deletion of it
        // fails the clone here rather than forking something else.
        let snapshot = self.snapshot_record(ns, name, &tag)?;
        self.fork_locked(ns, &new, &snapshot, size, Some(name.clone()), ev)
            .await
    }

    fn default_clone_name(&self, ns: &Namespace, name: &VolumeName) -> Result<VolumeName> {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let base = format!("{name}-clone-{ts}");
        let mut candidate = VolumeName::new(base.clone())?;
        let mut n = 2;
        while self.volumes.lock().contains_key(&(ns.clone(), candidate.clone())) {
            candidate = VolumeName::new(format!("{base}-{n}"))?;
            n += 1;
        }
        Ok(candidate)
    }

    /// Resets a volume's contents to a snapshot of it, discarding unsealed
    /// writes. The volume keeps its size (volumes only grow); bytes past
    /// the snapshot's size read as zeros.
    pub async fn rollback(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
        tag: &SnapshotTag,
    ) -> Result<VolumeRecord> {
        let _names = self.names.lock().await;
        let volume = self.volume(ns, name)?;
        self.snapshot_record(ns, name, tag)?;
        let guard = volume.exclusive(Hold::Root).await?;
        // Read after `exclusive`, which seals what pending snapshots wait for.
        let snapshot = self.snapshot_record(ns, name, tag)?;
        let mut updated = guard.record();
        Self::check_not_transitional(&updated, "rollback")?;
        if updated.state == VolumeState::Attached {
            return Err(StoreError::WrongState {
                name: name.to_string(),
                state: "attached".into(),
                operation: "rollback",
            });
        }
        // New tree nodes are not reachable until the commit below.
        let _writing = self.backend.objects.begin_write();
        let geometry = volume.geometry();
        updated.root = self
            .backend
            .trees
            .grow(
                snapshot.root,
                levels_for(geometry.chunk_count(snapshot.size)),
                levels_for(geometry.chunk_count(updated.size)),
            )
            .await?;
        self.backend.objects.make_durable().await?;
        updated.updated_at = now();
        let mut batch = self.backend.catalog.batch();
        batch.put_volume(&updated).event(event(
            EventKind::Rollback,
            ns,
            actor,
            Some(name),
            Some(tag),
            json!({"root": snapshot.root}),
        ));
        guard.commit(batch, updated.clone(), true, false)?;
        Ok(updated)
    }

    /// Byte ranges that differ between snapshot `tag` and `base` (or the
    /// empty disk), at chunk granularity, clipped to the larger size.
    pub async fn diff(
        &self,
        ns: &Namespace,
        volume: &VolumeName,
        tag: &SnapshotTag,
        base: Option<(&VolumeName, &SnapshotTag)>,
    ) -> Result<Extents> {
        let target = self.sealed_snapshot_record(ns, volume, tag).await?;
        let geometry = Self::geometry(target.chunk_size)?;
        let (base_root, base_size) = match base {
            Some((bv, bt)) => {
                let b = self.sealed_snapshot_record(ns, bv, bt).await?;
                if b.chunk_size != target.chunk_size {
                    return Err(StoreError::InvalidSize(format!(
                        "cannot diff snapshots of different chunk sizes ({} and {})",
                        b.chunk_size, target.chunk_size
                    )));
                }
                (b.root, b.size)
            }
            None => (NodeId::ZERO, 0),
        };
        let size = target.size.max(base_size);
        let level = levels_for(geometry.chunk_count(size));
        let trees = &self.backend.trees;
        let a = trees
            .grow(base_root, levels_for(geometry.chunk_count(base_size)), level)
            .await?;
        let b = trees
            .grow(target.root, levels_for(geometry.chunk_count(target.size)), level)
            .await?;
        let runs = trees.diff(a, b, level).await?;
        Ok(runs
            .into_iter()
            .filter_map(|run| {
                let start = geometry.chunk_start(run.start);
                let end = geometry.chunk_start(run.start + run.count).min(size);
                (end > start).then(|| ByteRange::new(start, end - start))
            })
            .collect())
    }

    /// A volume, or a snapshot with `tag`, to read from.
    pub fn readable(&self, ns: &Namespace, name: &VolumeName, tag: Option<&SnapshotTag>) -> Result<Readable> {
        match tag {
            None => Ok(Readable::Volume(self.volume(ns, name)?)),
            Some(tag) => {
                let s = self.snapshot_record(ns, name, tag)?;
                let pending = match s.pending {
                    Some(through) => Some(PendingView {
                        volume: self.volume(ns, name)?,
                        through,
                    }),
                    None => None,
                };
                Ok(Readable::Snapshot {
                    tree: SealedTree::new(s.root, s.size, Self::geometry(s.chunk_size)?),
                    size: s.size,
                    pending,
                })
            }
        }
    }

    /// Reads from a volume or snapshot.
    pub async fn read(&self, source: &Readable, offset: u64, buf: &mut [u8]) -> Result<()> {
        match source {
            Readable::Volume(v) => v.read(offset, buf).await,
            Readable::Snapshot { tree, size, pending } => {
                crate::volume::check_bounds(offset, buf.len() as u64, *size)?;
                match pending {
                    Some(p) => p.volume.read_view(View::Through(p.through), offset, buf).await,
                    None => self.backend.read_tree(*tree, offset, buf).await,
                }
            }
        }
    }

    /// Reads from dirty data and caches only, without waiting; `None` when
    /// [`Engine::read`] is needed.
    pub fn try_read(&self, source: &Readable, offset: u64, buf: &mut [u8]) -> Option<Result<()>> {
        match source {
            Readable::Volume(v) => v.try_read(offset, buf),
            Readable::Snapshot { tree, size, pending } => {
                if crate::volume::check_bounds(offset, buf.len() as u64, *size).is_err() {
                    return None;
                }
                if let Some(p) = pending {
                    return p.volume.try_read_view(View::Through(p.through), offset, buf);
                }
                let holes = crate::overlay::Hole::all(tree.geometry, offset, buf.len());
                self.backend
                    .read_sealed_cached(*tree, &holes, buf)
                    .then_some(Ok(()))
            }
        }
    }

    /// Allocation runs `(bytes, hole)` of a volume or snapshot range.
    pub async fn allocation(&self, source: &Readable, offset: u64, length: u64) -> Result<Vec<(u64, bool)>> {
        match source {
            Readable::Volume(v) => v.allocation(offset, length).await,
            Readable::Snapshot { tree, size, pending } => {
                crate::volume::check_bounds(offset, length, *size)?;
                match pending {
                    Some(p) => {
                        p.volume
                            .allocation_view(View::Through(p.through), offset, length)
                            .await
                    }
                    None => {
                        self.backend
                            .allocation(*tree, offset, length, &HashMap::new())
                            .await
                    }
                }
            }
        }
    }

    /// Streams `[offset, +length)` of a volume or snapshot into `out`.
    /// Returns the bytes written.
    pub async fn export<W: AsyncWrite + Unpin>(
        &self,
        source: &Readable,
        offset: u64,
        length: u64,
        out: &mut W,
    ) -> Result<u64> {
        let mut buf = vec![0u8; STREAM_STEP];
        let mut done = 0u64;
        while done < length {
            let n = (length - done).min(STREAM_STEP as u64) as usize;
            self.read(source, offset + done, &mut buf[..n]).await?;
            out.write_all(&buf[..n]).await?;
            done += n as u64;
        }
        out.flush().await?;
        Ok(done)
    }

    /// Streams a raw image into a volume at `offset`. When the volume does
    /// not exist it is created with `size` (required then). Whole chunks go
    /// straight to the object store; partial ones through the journal. The
    /// data is sealed and durable on return. An input longer than the
    /// volume is refused with [`StoreError::ImportTooLarge`]; a volume
    /// created by a failed import is removed again.
    #[allow(clippy::too_many_arguments)]
    pub async fn import<R: AsyncRead + Unpin>(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
        input: &mut R,
        size: Option<u64>,
        offset: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(VolumeRecord, u64, bool)> {
        let created = match self.volume(ns, name) {
            Ok(_) => false,
            Err(StoreError::VolumeNotFound { .. }) => {
                let size = size.ok_or_else(|| {
                    StoreError::InvalidSize("a size is needed to create a volume by import".into())
                })?;
                self.create_volume(ns, actor, name, size, None, Labels::new())
                    .await?;
                true
            }
            Err(e) => return Err(e),
        };
        let volume = self.volume(ns, name)?;
        match self.import_into(&volume, input, offset, progress).await {
            Ok(n) => Ok((volume.record(), n, created)),
            Err(e) => {
                if created {
                    let _ = self.delete_volume(ns, actor, name, false).await;
                }
                Err(e)
            }
        }
    }

    async fn import_into<R: AsyncRead + Unpin>(
        &self,
        volume: &Volume,
        input: &mut R,
        offset: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64> {
        let geometry = volume.geometry();
        let chunk = geometry.chunk_size();
        let size = volume.size();
        let step = STREAM_STEP.max(chunk);
        let mut pos = offset;
        let mut buf = vec![0u8; step];
        loop {
            // Align the first step to a chunk boundary so later steps are whole chunks.
            let want = if !pos.is_multiple_of(chunk as u64) {
                chunk - (pos % chunk as u64) as usize
            } else {
                step
            };
            let filled = read_full(input, &mut buf[..want]).await?;
            if filled == 0 {
                break;
            }
            if pos + filled as u64 > size {
                return Err(StoreError::ImportTooLarge {
                    offset,
                    length: pos + filled as u64 - offset,
                    size,
                });
            }
            let data = &buf[..filled];
            let whole = if pos.is_multiple_of(chunk as u64) {
                filled / chunk
            } else {
                0
            };
            if whole > 0 {
                let chunks = data[..whole * chunk]
                    .chunks_exact(chunk)
                    .map(<[u8]>::to_vec)
                    .collect();
                volume.write_chunks_direct(geometry.chunk_of(pos), chunks).await?;
            }
            let rest = &data[whole * chunk..];
            if !rest.is_empty() {
                volume.write(pos + (whole * chunk) as u64, rest).await?;
            }
            pos += filled as u64;
            progress(pos - offset);
            if filled < want {
                break;
            }
        }
        volume.seal().await?;
        self.backend.catalog.sync()?;
        Ok(pos - offset)
    }

    /// Audit events from `since_seq`, optionally of one volume.
    pub fn events(
        &self,
        ns: &Namespace,
        volume: Option<&str>,
        since_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        let mut from = since_seq;
        loop {
            let page = self.backend.catalog.events(from, 1024)?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            let full = page.len() == 1024;
            out.extend(
                page.into_iter()
                    .filter(|e| &e.namespace == ns && volume.is_none_or(|v| e.volume.as_deref() == Some(v))),
            );
            if out.len() >= limit || !full {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Data directory path.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

/// Reads until `buf` is full or the input ends.
async fn read_full<R: AsyncRead + Unpin>(input: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = input
            .read(&mut buf[filled..])
            .await
            .map_err(|e| StoreError::ImportStream(e.to_string()))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
