//! Space and data shared with other servers and remote stores: hydration
//! of a volume's chunks on local disk, warming, and snapshot references
//! published to a shared bucket.

use super::*;

impl Engine {
    /// How much of a volume's sealed data is local (see [`crate::hydrate`]).
    pub async fn hydration(&self, ns: &Namespace, name: &VolumeName) -> Result<Hydration> {
        let volume = self.volume(ns, name)?;
        let measured = crate::hydrate::hydration_of(&self.backend, volume.sealed_tree()).await?;
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
        Ok(crate::shared::ref_of(&record, self.shared.server_id()))
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
        let root = crate::shared::ref_root(doc)?;
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
                Some(_) => match crate::hydrate::hydration_of(&self.backend, volume.sealed_tree()).await {
                    Ok(h) => h.fraction,
                    Err(_) => continue,
                },
            };
            out.push((record.namespace, record.name, fraction));
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}
