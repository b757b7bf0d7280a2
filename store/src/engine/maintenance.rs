//! Garbage collection and verification of the store.

use super::*;

impl Engine {
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
        let report = crate::gc::run(self, options, &self.gc_progress).await?;
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

    /// The garbage collection in progress, if one runs.
    pub fn gc_progress(&self) -> Option<crate::gc::GcProgress> {
        self.gc_progress.snapshot()
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

    /// Scrubs every volume and snapshot of every namespace.
    pub async fn verify_all(&self) -> Result<VerifyReport> {
        crate::verify::run(self, None, None).await
    }
}
