//! Volume lifecycle: create, state changes (attach/detach), delete, resize.

use super::*;

impl Engine {
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

    pub(super) fn new_record(
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
    pub(super) fn insert_volume(
        &self,
        record: VolumeRecord,
        ev: Event,
        base: Option<PendingBase>,
    ) -> Result<VolumeRecord> {
        let mut batch = self.backend.catalog.batch();
        batch.put_volume(&record).event(ev);
        batch.commit()?;
        self.open_volume(record, base)
    }

    /// Opens a volume whose record was just committed (on `base`, for a
    /// fork of a pending snapshot). Caller holds `names`.
    pub(super) fn open_volume(
        &self,
        record: VolumeRecord,
        base: Option<PendingBase>,
    ) -> Result<VolumeRecord> {
        let volume = Volume::open_new(self.backend.clone(), record.clone())?;
        if let Some(base) = base {
            volume.attach_base(base);
        }
        self.volumes
            .lock()
            .insert((record.namespace.clone(), record.name.clone()), volume);
        Ok(record)
    }

    pub(super) fn check_not_transitional(record: &VolumeRecord, operation: &'static str) -> Result<()> {
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

    /// Deletes a volume, and its snapshots unless `keep_snapshots`. A
    /// damaged volume is repaired first (its readable log records
    /// replayed, the report in a `repair` event), so its logs are retired
    /// like any volume's and its pending snapshots stay whole.
    pub async fn delete_volume(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
        keep_snapshots: bool,
    ) -> Result<()> {
        if self.damage(ns, name).is_some() {
            self.repair_volume(ns, actor, name).await?;
        }
        self.adopt_dependents(&self.volume(ns, name)?).await?;
        let _names = self.names.lock().await;
        let volume = self.volume(ns, name)?;
        let guard = volume.exclusive(Hold::Delete).await?;
        let record = guard.record();
        Self::check_not_transitional(&record, "delete")?;
        let snapshots = if keep_snapshots {
            Vec::new()
        } else {
            self.check_volume_unleased(ns, name)?;
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
        check_not_smaller(size, updated.size)?;
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
}
