//! Opening a volume: replaying its write-back logs into frozen
//! generations (strictly, or past damaged records for a repair).

use super::*;
use crate::objects::Replayable;

/// A dropped stretch of a damaged log and that log's generation.
pub(crate) type DroppedIn = (u64, journal::Dropped);

impl Volume {
    /// Opens a volume and replays its unsealed journal: every replayed
    /// log becomes part of a frozen generation, split where `pending`
    /// snapshots (this volume's) need them apart.
    pub(crate) fn open(
        backend: Arc<Backend>,
        record: VolumeRecord,
        pending: Vec<SnapshotRecord>,
    ) -> Result<Arc<Self>> {
        Self::open_with(backend, record, pending, None)
    }

    /// Opens a volume whose record was just created (a new id, so no log
    /// of it can exist): nothing to replay, and the journal's directory,
    /// which holds every volume's logs, is not listed.
    pub(crate) fn open_new(backend: Arc<Backend>, record: VolumeRecord) -> Result<Arc<Self>> {
        let geometry = ChunkGeometry::new(record.chunk_size)?;
        let generation = record.journal_floor;
        Ok(Self::assemble(
            backend,
            record,
            geometry,
            Replayed::nothing(generation),
        ))
    }

    /// [`Volume::open`] past damaged log records: each one it drops is
    /// listed with its log generation (see [`journal::scan_salvaging`]).
    pub(crate) fn open_salvaging(
        backend: Arc<Backend>,
        record: VolumeRecord,
        pending: Vec<SnapshotRecord>,
    ) -> Result<(Arc<Self>, Vec<DroppedIn>)> {
        let mut dropped = Vec::new();
        let volume = Self::open_with(backend, record, pending, Some(&mut dropped))?;
        Ok((volume, dropped))
    }

    fn open_with(
        backend: Arc<Backend>,
        record: VolumeRecord,
        pending: Vec<SnapshotRecord>,
        mut salvage: Option<&mut Vec<DroppedIn>>,
    ) -> Result<Arc<Self>> {
        let geometry = ChunkGeometry::new(record.chunk_size)?;
        let mut waiting: BTreeMap<u64, Vec<SnapshotRecord>> = BTreeMap::new();
        for s in pending {
            if let Some(through) = s.pending {
                waiting.entry(through).or_default().push(s);
            }
        }
        let mut frozen = Vec::new();
        let mut layer = Overlay::default();
        let mut generation = record.journal_floor;
        let mut older_logs = Vec::new();
        let logs = backend.journal.replay(record.id, record.journal_floor)?;
        let last = logs.last().map(|l| l.generation);
        let (mut lost, mut recovered) = (0usize, 0usize);
        for log in logs {
            let replay = |at: u64, r: Record<'_>| {
                // A chunk record's objects are made durable by the barrier
                // of the flush that covers it, before the log is synced.
                // Those the existence index lacks are kept when they read
                // back whole (the next barrier makes them durable), and the
                // record dropped when a power cut took them: then it was
                // never flushed.
                if let Record::Chunks { ids, .. } = r {
                    match backend.objects.replayable_chunks(journal::chunk_ids(ids))? {
                        Replayable::Durable => {}
                        Replayable::Recovered => recovered += 1,
                        Replayable::Lost => {
                            lost += 1;
                            return Ok(());
                        }
                    }
                }
                layer.apply(geometry, &r, &log, at);
                Ok(())
            };
            match salvage.as_deref_mut() {
                None => log.scan(replay)?,
                Some(dropped) => dropped.extend(
                    log.scan_salvaging(replay)?
                        .into_iter()
                        .map(|d| (log.generation, d)),
                ),
            }
            generation = generation.max(log.generation + 1);
            if waiting.contains_key(&log.generation) || Some(log.generation) == last {
                frozen.push(Frozen {
                    layer: Arc::new(std::mem::take(&mut layer)),
                    through: log.generation,
                });
            }
            older_logs.push(log);
        }
        if let Some(lost) = waiting.keys().find(|g| !frozen.iter().any(|f| f.through == **g)) {
            return Err(StoreError::CatalogCorrupt {
                key: format!("volume {}", record.name),
                reason: format!("a pending snapshot needs journal generation {lost}, which is not there"),
            });
        }
        if lost > 0 {
            tracing::warn!(volume = %record.name, records = lost, "dropped whole-chunk writes that were not flushed before the crash: their objects did not survive it");
        }
        if !frozen.is_empty() {
            let dirty: usize = frozen.iter().map(|f| f.layer.dirty_bytes()).sum();
            tracing::info!(volume = %record.name, dirty_bytes = dirty, generations = frozen.len(), pending_snapshots = waiting.values().map(Vec::len).sum::<usize>(), "replayed write-back journal");
        }
        let replayed = Replayed {
            frozen,
            generation,
            older_logs,
            waiting,
        };
        let volume = Self::assemble(backend, record, geometry, replayed);
        if recovered > 0 {
            // Their objects are durable only after a barrier: the next
            // flush runs one.
            volume.chunk_records.store(1, Ordering::Release);
        }
        Ok(volume)
    }

    /// The open volume, from its record and what its logs held.
    fn assemble(
        backend: Arc<Backend>,
        record: VolumeRecord,
        geometry: ChunkGeometry,
        replayed: Replayed,
    ) -> Arc<Self> {
        let Replayed {
            frozen,
            generation,
            older_logs,
            waiting,
        } = replayed;
        Arc::new_cyclic(|me| Self {
            backend,
            id: record.id,
            geometry,
            state: Mutex::new(State {
                record,
                dirty_since: None,
                active: Overlay::default(),
                frozen,
                generation,
                log: None,
                older_logs,
                pending: waiting,
                sealed_roots: HashMap::new(),
                base: None,
                deleted: false,
            }),
            seal_lock: tokio::sync::Mutex::new(()),
            commit_lock: tokio::sync::Mutex::new(()),
            rmw_lock: tokio::sync::RwLock::new(()),
            last_write_ms: AtomicU64::new(0),
            opened: Instant::now(),
            me: me.clone(),
            seal_queued: std::sync::atomic::AtomicBool::new(false),
            chunk_records: AtomicU64::new(0),
            chunk_records_durable: AtomicU64::new(0),
            flush_turn: tokio::sync::Mutex::new(()),
        })
    }
}

/// What a volume's logs held at open.
struct Replayed {
    /// Frozen generations, oldest first.
    frozen: Vec<Frozen>,
    /// The next generation to write.
    generation: u64,
    /// The replayed logs, kept open until their generations are sealed.
    older_logs: Vec<Arc<LogFile>>,
    /// This volume's pending snapshots by the generation they wait for.
    waiting: BTreeMap<u64, Vec<SnapshotRecord>>,
}

impl Replayed {
    /// A volume without logs, writing `generation` next.
    fn nothing(generation: u64) -> Self {
        Self {
            frozen: Vec::new(),
            generation,
            older_logs: Vec::new(),
            waiting: BTreeMap::new(),
        }
    }
}
