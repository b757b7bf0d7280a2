//! Snapshot leases: a reader that must keep a snapshot readable for a
//! while (an open read-only NBD export) holds a lease, and deleting that
//! snapshot, or its volume with its snapshots, answers 409
//! [`StoreError::SnapshotInUse`] until the last lease is dropped. GC never
//! collects a leased snapshot's data, since its record stays a root.
//! Leases are taken and checked under the engine's name lock, so a
//! deletion and a new reader cannot pass each other.

use super::*;

type Key = (Namespace, VolumeName, SnapshotTag);

/// Open leases per snapshot.
#[derive(Debug, Default)]
pub(super) struct Leases(Mutex<HashMap<Key, usize>>);

impl Leases {
    fn count(&self, key: &Key) -> usize {
        self.0.lock().get(key).copied().unwrap_or(0)
    }

    /// Leased snapshots of one volume and their lease counts.
    fn of_volume(&self, ns: &Namespace, volume: &VolumeName) -> Vec<(SnapshotTag, usize)> {
        self.0
            .lock()
            .iter()
            .filter(|((n, v, _), _)| n == ns && v == volume)
            .map(|((_, _, t), c)| (t.clone(), *c))
            .collect()
    }
}

/// Keeps one snapshot from being deleted while it lives.
#[derive(Debug)]
pub struct SnapshotLease {
    engine: Arc<Engine>,
    key: Key,
}

impl Drop for SnapshotLease {
    fn drop(&mut self) {
        let mut map = self.engine.leases.0.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Engine {
    /// Leases a snapshot that exists now (404 otherwise).
    pub async fn lease_snapshot(
        self: &Arc<Self>,
        ns: &Namespace,
        volume: &VolumeName,
        tag: &SnapshotTag,
    ) -> Result<SnapshotLease> {
        let _names = self.names.lock().await;
        self.snapshot_record(ns, volume, tag)?;
        let key = (ns.clone(), volume.clone(), tag.clone());
        *self.leases.0.lock().entry(key.clone()).or_default() += 1;
        Ok(SnapshotLease {
            engine: self.clone(),
            key,
        })
    }

    /// Refuses to delete a leased snapshot (call under the name lock).
    pub(super) fn check_unleased(
        &self,
        ns: &Namespace,
        volume: &VolumeName,
        tag: &SnapshotTag,
    ) -> Result<()> {
        match self.leases.count(&(ns.clone(), volume.clone(), tag.clone())) {
            0 => Ok(()),
            readers => Err(StoreError::SnapshotInUse {
                snapshot: format!("{volume}@{tag}"),
                readers,
            }),
        }
    }

    /// Refuses to delete a volume's snapshots while any is leased.
    pub(super) fn check_volume_unleased(&self, ns: &Namespace, volume: &VolumeName) -> Result<()> {
        match self.leases.of_volume(ns, volume).into_iter().next() {
            None => Ok(()),
            Some((tag, readers)) => Err(StoreError::SnapshotInUse {
                snapshot: format!("{volume}@{tag}"),
                readers,
            }),
        }
    }
}
