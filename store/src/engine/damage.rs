//! Quarantine of volumes whose write-back log is damaged.
//!
//! A log record that fails its check before the end of its log (a torn
//! last record is a crash mid-append and is simply dropped) used to stop
//! the engine from opening, taking every volume offline. Now that volume
//! alone is *damaged*: the server starts, the others serve, and it reports
//! state `damaged` with the reason (list/show, `/metrics`, a `damaged`
//! event) while every operation on it answers 409
//! [`StoreError::VolumeDamaged`] and its logs stay on disk untouched.
//! [`Engine::repair_volume`] replays every record that still reads,
//! drops exactly the unreadable ones (reported: log, byte offset, length,
//! reason), and returns the volume to service; the next seal commits it
//! and retires the damaged logs.

use super::*;

/// A quarantined volume.
#[derive(Clone, Debug)]
pub(super) struct Damage {
    pub(super) record: VolumeRecord,
    pub(super) reason: String,
    /// A GC write session from time 0, so GC keeps every unreferenced
    /// object until the volume is repaired or deleted.
    _hold: Arc<crate::objects::WriteSession>,
}

pub use cairn_api_types::{DroppedRecord, RepairReport};

/// Records the quarantine of `record` (an event) and says why.
pub(super) fn quarantine(
    catalog: &Catalog,
    objects: &ObjectLayer,
    record: VolumeRecord,
    error: &StoreError,
) -> Result<Damage> {
    let reason = error.to_string();
    tracing::error!(
        volume = %record.name,
        namespace = %record.namespace,
        error = %reason,
        "volume quarantined: its write-back log is damaged; the other volumes serve; `cairn volume repair` brings it back"
    );
    let mut batch = catalog.batch();
    batch.event(event(
        EventKind::Damaged,
        &record.namespace,
        &Actor::system(),
        Some(&record.name),
        None,
        json!({"reason": reason}),
    ));
    batch.commit()?;
    Ok(Damage {
        record,
        reason,
        _hold: Arc::new(objects.begin_write_at(0)),
    })
}

impl Engine {
    /// Why a volume is quarantined, if it is.
    pub fn damage(&self, ns: &Namespace, name: &VolumeName) -> Option<String> {
        self.damaged
            .lock()
            .get(&(ns.clone(), name.clone()))
            .map(|d| d.reason.clone())
    }

    /// Number of quarantined volumes (all namespaces).
    pub fn damaged_count(&self) -> usize {
        self.damaged.lock().len()
    }

    /// The record of a volume, damaged or not.
    pub fn volume_record(&self, ns: &Namespace, name: &VolumeName) -> Result<VolumeRecord> {
        match self.volume(ns, name) {
            Ok(v) => Ok(v.record()),
            Err(StoreError::VolumeDamaged { .. }) => {
                Ok(self.damaged.lock()[&(ns.clone(), name.clone())].record.clone())
            }
            Err(e) => Err(e),
        }
    }

    /// Brings a damaged volume back: every readable log record is
    /// replayed, the unreadable ones are dropped and reported. 409 when
    /// the volume is not damaged.
    pub async fn repair_volume(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
    ) -> Result<RepairReport> {
        let _names = self.names.lock().await;
        let key = (ns.clone(), name.clone());
        if !self.damaged.lock().contains_key(&key) {
            let record = self.volume(ns, name)?.record();
            return Err(StoreError::WrongState {
                name: name.to_string(),
                state: record.state.as_str().to_string(),
                operation: "repair (it is not damaged)",
            });
        }
        let record = self
            .backend
            .catalog
            .volume(ns, name)?
            .ok_or_else(|| StoreError::VolumeNotFound {
                name: name.to_string(),
            })?;
        let pending: Vec<SnapshotRecord> = self
            .backend
            .catalog
            .snapshots(Some(ns), Some(name))?
            .into_iter()
            .filter(|s| s.pending.is_some())
            .collect();
        let (volume, dropped) = Volume::open_salvaging(self.backend.clone(), record.clone(), pending)?;
        if record.base_pending {
            // Refused (409) while its source is still damaged.
            let volumes = self.volumes.lock().clone();
            Self::resolve_base(&self.backend.catalog, &volumes, &volume, &record).await?;
        }
        let report = RepairReport {
            dropped_bytes: dropped.iter().map(|(_, d)| d.length).sum(),
            dropped: dropped
                .into_iter()
                .map(|(generation, d)| DroppedRecord {
                    generation,
                    at: d.at,
                    length: d.length,
                    reason: d.reason,
                })
                .collect(),
        };
        let mut batch = self.backend.catalog.batch();
        batch.event(event(
            EventKind::Repair,
            ns,
            actor,
            Some(name),
            None,
            json!(report),
        ));
        batch.commit()?;
        tracing::warn!(volume = %name, dropped_records = report.dropped.len(), dropped_bytes = report.dropped_bytes, "damaged volume repaired");
        self.volumes.lock().insert(key.clone(), volume.clone());
        self.damaged.lock().remove(&key);
        // Seal now: the commit moves the volume past its damaged logs, which
        // are then removed, so a restart finds nothing left to quarantine.
        volume.seal().await?;
        Ok(report)
    }
}
