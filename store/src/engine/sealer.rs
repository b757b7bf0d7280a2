//! The background sealer: which volumes to seal and when (backlog, idle,
//! age), and the seal of everything at shutdown.

use super::*;

impl Engine {
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
            let logged = volume.unsealed_bytes();
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
}
