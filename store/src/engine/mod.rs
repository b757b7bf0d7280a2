//! The engine: every user-visible operation on volumes and snapshots, in
//! one place that both the REST API and the NBD server call.
//!
//! Rules enforced here: names are RFC 1123 labels; sizes are multiples of
//! 4 KiB and chunk sizes powers of two; volumes only grow (resize, fork and
//! clone sizes are at least the source's); a volume in a transitional state
//! cannot be cloned, forked from, rolled back or deleted; an attached volume
//! cannot be rolled back; `require_labels` must match the snapshot's labels.
//! Every change is one atomic catalog batch together with its audit event.

mod config;
mod cut;
mod damage;
mod data;
mod events;
mod leases;
mod maintenance;
mod remote;
mod sealer;
mod snapshots;
mod volumes;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_chunker::{ByteRange, ChunkGeometry};
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt};

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
use crate::wrap::{layered_with, Faults, RetryPolicy, StoreStats};

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

/// Clients' flushes syncing write-back logs at once across all volumes:
/// two, as many as a 2-core machine's runtime workers, which ran these
/// syncs before they moved to blocking threads. Unbounded, four
/// connections flushing every 256 writes kept the device's journal
/// committing for them and writes waited behind it (p99 20 ms against
/// 2-6 ms); one at a time cost 10-14% of their IOPS (BENCHMARKS.md).
pub(crate) const LOG_SYNCS_AT_ONCE: usize = 2;

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

impl Readable {
    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Readable::Volume(v) => v.size(),
            Readable::Snapshot { size, .. } => *size,
        }
    }
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
    /// Counters of the GC in progress.
    gc_progress: crate::gc::Progress,
    /// This server's identity and published roots in a shared bucket.
    shared: crate::shared::SharedBucket,
    /// Warms by volume id (see [`Engine::warm`]).
    warming: Mutex<HashMap<u64, Arc<crate::hydrate::WarmProgress>>>,
    /// The last space accounting and the owners it was computed for.
    usage_memo: Mutex<Option<(crate::usage::OwnersKey, crate::usage::Usage)>>,
    /// Reference counts behind space accounting.
    ledger: tokio::sync::Mutex<crate::usage::Ledger>,
    /// Snapshots kept from deletion by their readers.
    leases: leases::Leases,
    /// Volumes whose write-back log is damaged (see [`damage`]).
    damaged: Mutex<HashMap<(Namespace, VolumeName), damage::Damage>>,
}

pub use config::{default_disk_cache_bytes, EngineConfig};
pub use damage::{DroppedRecord, RepairReport};

pub use leases::SnapshotLease;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.config.data_dir)
            .finish()
    }
}

/// Checks that a new size (of a fork, clone or resize) is at least the
/// size it is made from: volumes only grow.
pub(crate) fn check_not_smaller(requested: u64, source_size: u64) -> Result<()> {
    if requested < source_size {
        return Err(StoreError::TooSmall {
            requested,
            source_size,
        });
    }
    Ok(())
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

/// A pack compaction thread outlives no engine: it would hold the pack
/// index open past a reopen, and a process that exits while it is inside
/// RocksDB can crash on the way out.
impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_background_work();
    }
}

impl Engine {
    /// Stops the engine's own threads (pack compaction) and waits for
    /// them: call before the process exits while other holders may keep
    /// the engine alive. Dropping the engine does it too.
    pub fn stop_background_work(&self) {
        if let Some(packs) = self.backend.objects.packs() {
            packs.stop_compaction();
        }
    }

    /// Opens the catalog and object store, and every volume (replaying
    /// unsealed journals).
    pub async fn open(config: EngineConfig) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir)?;
        let catalog = Arc::new(Catalog::open(&config.data_dir.join("catalog"))?);
        let opened = open_object_store(config.object_store.as_deref(), &config.data_dir)?;
        let faults = Faults::from_env();
        let store_stats = Arc::new(StoreStats::default());
        let policy = RetryPolicy {
            deadline: config.store_timeout,
            ..Default::default()
        };
        let store = layered_with(opened.store, faults.clone(), store_stats.clone(), policy);
        let (chunk_cache, node_cache) = crate::tree::split_cache_budget(config.cache_bytes);
        let mut objects = ObjectLayer::new(store, opened.prefix, catalog.clone(), chunk_cache)
            .with_store_stats(store_stats, faults);
        if let Some(how) = opened.local {
            objects = objects.with_local_durability(how);
        }
        let remote = config
            .object_store
            .as_deref()
            .is_some_and(|url| url.starts_with("s3://"));
        if remote {
            let capacity = config
                .disk_cache_bytes
                .unwrap_or_else(|| default_disk_cache_bytes(&config.data_dir));
            let disk =
                DiskCache::open(&config.data_dir.join("cache"), capacity)?.with_feed(objects.change_feed());
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
            flushes: Default::default(),
            log_syncs_made: Default::default(),
            sealed_bytes: Default::default(),
            store_down: Default::default(),
            room: Default::default(),
            seal_slots: tokio::sync::Semaphore::new(SEALS_AT_ONCE),
            log_syncs: tokio::sync::Semaphore::new(LOG_SYNCS_AT_ONCE),
            readahead: remote.then(Default::default),
            runtime: tokio::runtime::Handle::current(),
            accounting: crate::usage::RootMemo::new(),
            local_counts: Default::default(),
        });
        let mut volumes = HashMap::new();
        let mut damaged = HashMap::new();
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
        for mut record in catalog.volumes(None)? {
            if record.state == VolumeState::Attached {
                // No NBD client is connected to a server that is starting:
                // the state is left over from a crash or a kill.
                record.state = VolumeState::Ready;
                let mut batch = catalog.batch();
                batch.put_volume(&record).event(event(
                    EventKind::Detach,
                    &record.namespace,
                    &Actor::system(),
                    Some(&record.name),
                    None,
                    json!({"reason": "server start"}),
                ));
                batch.commit()?;
                tracing::info!(volume = %record.name, namespace = %record.namespace, "cleared the attached state left by the last run");
            }
            let key = (record.namespace.clone(), record.name.clone());
            live_ids.insert(record.id);
            let waiting = pending.remove(&key).unwrap_or_default();
            if record.base_pending {
                forks.push(record.clone());
            }
            match Volume::open(backend.clone(), record.clone(), waiting) {
                Ok(volume) => {
                    volumes.insert(key, volume);
                }
                Err(e @ StoreError::JournalDamaged { .. }) => {
                    damaged.insert(key, damage::quarantine(&catalog, &backend.objects, record, &e)?);
                }
                Err(e) => return Err(e),
            }
        }
        for fork in forks {
            let key = (fork.namespace.clone(), fork.name.clone());
            let Some(volume) = volumes.get(&key).cloned() else {
                continue; // damaged itself: its base is resolved at repair
            };
            match Self::resolve_base(&catalog, &volumes, &volume, &fork).await {
                Ok(()) => {}
                Err(e @ StoreError::VolumeDamaged { .. }) => {
                    volumes.remove(&key);
                    damaged.insert(key, damage::quarantine(&catalog, &backend.objects, fork, &e)?);
                }
                Err(e) => return Err(e),
            }
        }
        let shared = crate::shared::SharedBucket::open(&catalog, &config.data_dir)?;
        let orphans = backend.journal.remove_orphans(&live_ids)?;
        if orphans > 0 {
            tracing::info!(files = orphans, "removed journal files of deleted volumes");
        }
        Ok(Arc::new(Self {
            backend,
            config,
            volumes: Mutex::new(volumes),
            damaged: Mutex::new(damaged),
            names: tokio::sync::Mutex::new(()),
            gc_running: tokio::sync::Mutex::new(()),
            gc_progress: crate::gc::Progress::default(),
            warming: Mutex::new(HashMap::new()),
            shared,
            usage_memo: Mutex::new(None),
            ledger: tokio::sync::Mutex::default(),
            leases: Default::default(),
        }))
    }

    /// Gives a fork of a pending snapshot its base (at open and at repair):
    /// the source's pending view while the snapshot is pending, else the
    /// snapshot's final root, adopted now.
    pub(super) async fn resolve_base(
        catalog: &Catalog,
        volumes: &HashMap<(Namespace, VolumeName), Arc<Volume>>,
        volume: &Arc<Volume>,
        fork: &VolumeRecord,
    ) -> Result<()> {
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
        match snapshot.pending {
            Some(through) => {
                let source = match volumes.get(&(fork.namespace.clone(), origin.volume.clone())) {
                    Some(source) => source,
                    // Its base is unsealed data in a volume that is
                    // damaged (or was never opened): it cannot serve.
                    None if catalog.volume(&fork.namespace, &origin.volume)?.is_some() => {
                        return Err(StoreError::VolumeDamaged {
                            name: fork.name.to_string(),
                            reason: format!(
                                "it reads through pending snapshot {}@{} of volume {}, which is damaged; repair {} first",
                                origin.volume, origin.tag, origin.volume, origin.volume
                            ),
                        })
                    }
                    None => return Err(corrupt("the volume of its pending base is gone")),
                };
                volume.attach_base(PendingBase {
                    source: source.clone(),
                    through,
                    size: snapshot.size,
                });
            }
            None => volume.adopt_root(snapshot.root, snapshot.size).await?,
        }
        Ok(())
    }

    /// The stored chunks that open volumes' unsealed layers name (whole
    /// chunks written straight to the store, in no root yet).
    pub(crate) fn unsealed_stored_chunks(&self) -> Vec<cairn_chunker::ChunkId> {
        let open: Vec<Arc<Volume>> = self.volumes.lock().values().cloned().collect();
        open.iter().flat_map(|v| v.unsealed_stored_chunks()).collect()
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

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    pub(crate) fn ledger(&self) -> &tokio::sync::Mutex<crate::usage::Ledger> {
        &self.ledger
    }

    pub(crate) fn usage_memo(&self) -> &Mutex<Option<(crate::usage::OwnersKey, crate::usage::Usage)>> {
        &self.usage_memo
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

    /// Clients' flushes since start, and the log `fdatasync`s made for
    /// them and for snapshots: a flush that finds its writes covered by
    /// the sync before it makes none.
    pub fn flushes_and_log_syncs(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.backend.flushes.load(Relaxed),
            self.backend.log_syncs_made.load(Relaxed),
        )
    }

    /// Whether the last seal failed on the object store.
    pub fn store_down(&self) -> bool {
        self.backend.store_down.load(std::sync::atomic::Ordering::Relaxed)
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

    /// An open volume.
    pub fn volume(&self, ns: &Namespace, name: &VolumeName) -> Result<Arc<Volume>> {
        let key = (ns.clone(), name.clone());
        if let Some(v) = self.volumes.lock().get(&key).cloned() {
            return Ok(v);
        }
        Err(match self.damaged.lock().get(&key) {
            Some(d) => StoreError::VolumeDamaged {
                name: name.to_string(),
                reason: d.reason.clone(),
            },
            None => StoreError::VolumeNotFound {
                name: name.to_string(),
            },
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
        out.extend(
            self.damaged
                .lock()
                .iter()
                .filter(|((n, _), _)| n == ns)
                .map(|(_, d)| d.record.clone()),
        );
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(crate) fn geometry(chunk_size: u64) -> Result<ChunkGeometry> {
        Ok(ChunkGeometry::new(chunk_size)?)
    }

    /// Data directory path.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}
