//! Snapshots and what is built from them: fork, clone, rollback, diff.
//! A fork of a pending snapshot reads through it until it adopts the
//! snapshot's final root (see `crate::volume`).

use super::*;

impl Engine {
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
        let committed = volume
            .snapshot(|record, pending| {
                let (snapshot, batch) = self.snapshot_batch(ns, actor, record, tag, labels, pending)?;
                batch.commit()?;
                Ok(snapshot)
            })
            .await?;
        committed.durable().await
    }

    /// The record of a snapshot of the volume whose record is `record`
    /// (waiting for generation `pending`), and a batch that puts it with
    /// its event.
    fn snapshot_batch(
        &self,
        ns: &Namespace,
        actor: &Actor,
        record: &VolumeRecord,
        tag: Option<SnapshotTag>,
        labels: Labels,
        pending: Option<u64>,
    ) -> Result<(SnapshotRecord, crate::catalog::CatalogBatch<'_>)> {
        let catalog = &self.backend.catalog;
        let name = &record.name;
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
        Ok((snapshot, batch))
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
        self.check_unleased(ns, volume, tag)?;
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
        let base = self.pending_base(ns, snapshot)?;
        // Its catalog commit goes before the seals' bulk writes.
        let _foreground = self.backend.objects.foreground();
        let size = size.unwrap_or(snapshot.size);
        check_size(size)?;
        check_not_smaller(size, snapshot.size)?;
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
        let record = self.fork_record(ns, new, snapshot, size, root, cloned_from)?;
        self.insert_volume(record, ev, base)
    }

    /// The record of volume `new`, of `size` bytes at `root`, forked from
    /// `snapshot`.
    fn fork_record(
        &self,
        ns: &Namespace,
        new: &VolumeName,
        snapshot: &SnapshotRecord,
        size: u64,
        root: NodeId,
        cloned_from: Option<VolumeName>,
    ) -> Result<VolumeRecord> {
        let mut record = self.new_record(ns, new, size, snapshot.chunk_size, root, Labels::new())?;
        record.cloned_from = cloned_from;
        record.from_snapshot = Some(SnapshotOrigin {
            volume: snapshot.volume.clone(),
            tag: snapshot.tag.clone(),
        });
        record.base_pending = snapshot.pending.is_some();
        Ok(record)
    }

    /// What a fork of `snapshot` reads through until its seal: the
    /// source's pending generations, when it is pending.
    fn pending_base(&self, ns: &Namespace, snapshot: &SnapshotRecord) -> Result<Option<PendingBase>> {
        Ok(match snapshot.pending {
            Some(through) => Some(PendingBase {
                source: self.volume(ns, &snapshot.volume)?,
                through,
                size: snapshot.size,
            }),
            None => None,
        })
    }

    /// Lets every volume that reads through `source`'s pending generations
    /// adopt its base (sealing them): before a snapshot or volume they
    /// resolve their base from goes.
    pub(super) async fn adopt_dependents(&self, source: &Arc<Volume>) -> Result<()> {
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

    /// Snapshot now + fork, in O(1) both, committed as one catalog batch:
    /// the clone and its snapshot exist together or not at all. `new`
    /// defaults to `<name>-clone-<unix seconds>`. (A clone whose size
    /// needs a taller tree than the source's commits the snapshot, grows
    /// the tree, then commits the clone.)
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
        // Its syncs go before the seals' bulk writes.
        let _foreground = self.backend.objects.foreground();
        // Held throughout: the new name is checked and taken at once.
        let _names = self.names.lock().await;
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
            check_not_smaller(size, source.size())?;
        }
        let tag = self.free_tag(
            ns,
            name,
            SnapshotTag::new(format!("clone-{new}")).unwrap_or_else(|_| Self::default_tag()),
        )?;
        let clone_event = |snapshot: &SnapshotRecord| {
            let size = size.unwrap_or(snapshot.size);
            let detail = json!({"source": name, "snapshot": tag, "root": snapshot.root, "pending": snapshot.pending, "size": size});
            event(EventKind::Clone, ns, actor, Some(&new), Some(&tag), detail)
        };
        let mut joined = None;
        let snapshot = source
            .snapshot(|record, pending| {
                let clone_size = size.unwrap_or(record.size);
                // The source may have grown since the check above.
                check_not_smaller(clone_size, record.size)?;
                let (snapshot, mut batch) =
                    self.snapshot_batch(ns, actor, record, Some(tag.clone()), Labels::new(), pending)?;
                let geometry = Self::geometry(record.chunk_size)?;
                let levels = |size| levels_for(geometry.chunk_count(size));
                if levels(clone_size) == levels(record.size) {
                    let clone =
                        self.fork_record(ns, &new, &snapshot, clone_size, snapshot.root, Some(name.clone()))?;
                    batch.put_volume(&clone).event(clone_event(&snapshot));
                    joined = Some(clone);
                }
                batch.commit()?;
                Ok(snapshot)
            })
            .await?;
        match joined {
            Some(clone) => {
                // Opened at the commit, then durable.
                let base = self.pending_base(ns, &snapshot.snapshot)?;
                let clone = self.open_volume(clone, base)?;
                snapshot.durable().await?;
                Ok(clone)
            }
            None => {
                snapshot.durable().await?;
                // Its final root, if a seal gave it one meanwhile.
                let snapshot = self.snapshot_record(ns, name, &tag)?;
                let ev = clone_event(&snapshot);
                self.fork_locked(ns, &new, &snapshot, size, Some(name.clone()), ev)
                    .await
            }
        }
    }

    /// `<name>-clone-<unix seconds>` (then `-2`, `-3`, … while taken),
    /// with `name` shortened as needed so the result is a valid name: a
    /// clone of a clone of a clone stays clonable.
    fn default_clone_name(&self, ns: &Namespace, name: &VolumeName) -> Result<VolumeName> {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let named = |n: u32| {
            let suffix = match n {
                0 | 1 => format!("-clone-{ts}"),
                n => format!("-clone-{ts}-{n}"),
            };
            // Names are ASCII; the prefix keeps at least the first one.
            let keep = crate::names::MAX_NAME_LEN.saturating_sub(suffix.len()).max(1);
            let prefix = name.as_str()[..name.as_str().len().min(keep)].trim_end_matches('-');
            VolumeName::new(format!("{prefix}{suffix}"))
        };
        let mut n = 1;
        let mut candidate = named(n)?;
        while self.volumes.lock().contains_key(&(ns.clone(), candidate.clone())) {
            n += 1;
            candidate = named(n)?;
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
}
