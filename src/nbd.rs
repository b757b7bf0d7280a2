//! Wiring of the NBD server to the engine: export `VOLUME` is the live
//! volume (read-write), `VOLUME@TAG` a snapshot (read-only). Plain NBD
//! carries no credentials, so its exports are the `default` namespace's
//! volumes; over TLS-PSK the client's identity names its namespace.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_nbd_server::{BlockDevice, DeviceError, Exports, Extent};
use cairn_store::{Actor, Engine, Namespace, Readable, SnapshotRef, StoreError, VolumeName, VolumeState};
use parking_lot::Mutex;

fn device_error(e: StoreError) -> DeviceError {
    DeviceError {
        errno: e.errno(),
        message: e.to_string(),
    }
}

/// The engine's volumes and snapshots as NBD exports.
pub struct EngineExports {
    engine: Arc<Engine>,
    ns: Namespace,
    /// Open read-write connections per (namespace, volume), shared by every
    /// namespace's view (the volume is `attached` while there is at least one).
    writers: Arc<Mutex<HashMap<(Namespace, String), usize>>>,
}

impl EngineExports {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            ns: Namespace::default_ns(),
            writers: Arc::default(),
        }
    }
}

struct Device {
    engine: Arc<Engine>,
    source: Readable,
    size: u64,
    /// A snapshot export keeps its snapshot from deletion while open.
    _lease: Option<cairn_store::SnapshotLease>,
}

impl Device {
    /// The live volume behind a read-write export.
    fn writable(&self) -> Result<&Arc<cairn_store::Volume>, DeviceError> {
        match &self.source {
            Readable::Volume(v) => Ok(v),
            Readable::Snapshot { .. } => Err(DeviceError {
                errno: 1,
                message: "snapshot exports are read-only".into(),
            }),
        }
    }
}

#[async_trait::async_trait]
impl BlockDevice for Device {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        matches!(self.source, Readable::Snapshot { .. })
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.engine
            .read(&self.source, offset, buf)
            .await
            .map_err(device_error)
    }

    fn try_read(&self, offset: u64, buf: &mut [u8]) -> Option<Result<(), DeviceError>> {
        self.engine
            .try_read(&self.source, offset, buf)
            .map(|r| r.map_err(device_error))
    }

    fn try_write(&self, offset: u64, data: &[u8]) -> Option<Result<(), DeviceError>> {
        let v = self.writable().ok()?;
        v.try_write(offset, data).map(|r| r.map_err(device_error))
    }

    async fn write(&self, offset: u64, data: bytes::Bytes, fua: bool) -> Result<(), DeviceError> {
        let v = self.writable()?;
        v.write_bytes(offset, data).await.map_err(device_error)?;
        if fua {
            v.flush().await.map_err(device_error)?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, length: u64, fua: bool) -> Result<(), DeviceError> {
        let v = self.writable()?;
        v.write_zeroes(offset, length).await.map_err(device_error)?;
        if fua {
            v.flush().await.map_err(device_error)?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        match &self.source {
            Readable::Volume(v) => v.flush().await.map_err(device_error),
            Readable::Snapshot { .. } => Ok(()),
        }
    }

    async fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, DeviceError> {
        let runs = self
            .engine
            .allocation(&self.source, offset, length)
            .await
            .map_err(device_error)?;
        Ok(runs
            .into_iter()
            .map(|(length, hole)| Extent { length, hole })
            .collect())
    }
}

#[async_trait::async_trait]
impl Exports for EngineExports {
    async fn open(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        let (volume, tag) = if name.contains('@') {
            let r: SnapshotRef = name.parse().ok()?;
            (r.volume, Some(r.tag))
        } else {
            (VolumeName::new(name).ok()?, None)
        };
        let lease = match &tag {
            Some(tag) => Some(self.engine.lease_snapshot(&self.ns, &volume, tag).await.ok()?),
            None => None,
        };
        let source = self.engine.readable(&self.ns, &volume, tag.as_ref()).ok()?;
        let size = match &source {
            Readable::Volume(v) => v.size(),
            Readable::Snapshot { size, .. } => *size,
        };
        Some(Arc::new(Device {
            engine: self.engine.clone(),
            source,
            size,
            _lease: lease,
        }))
    }

    async fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .engine
            .list_volumes(&self.ns)
            .into_iter()
            .map(|v| v.name.to_string())
            .collect();
        if let Ok(snaps) = self.engine.list_snapshots(&self.ns, None) {
            names.extend(snaps.into_iter().map(|s| format!("{}@{}", s.volume, s.tag)));
        }
        names
    }

    async fn attached(&self, name: &str, attached: bool) {
        let edge = {
            let mut writers = self.writers.lock();
            let n = writers.entry((self.ns.clone(), name.to_string())).or_insert(0);
            if attached {
                *n += 1;
                *n == 1
            } else {
                *n = n.saturating_sub(1);
                *n == 0
            }
        };
        if !edge {
            return;
        }
        let Ok(volume) = VolumeName::new(name) else { return };
        let state = if attached {
            VolumeState::Attached
        } else {
            VolumeState::Ready
        };
        if let Err(e) = self
            .engine
            .set_state(&self.ns, &Actor("nbd".into()), &volume, state)
            .await
        {
            tracing::warn!(volume = name, error = %e, "could not record NBD attach state");
        }
    }

    fn scoped(&self, identity: &str) -> Option<Arc<dyn Exports>> {
        let ns = Namespace::new(identity).ok()?;
        Some(Arc::new(Self {
            engine: self.engine.clone(),
            ns,
            writers: self.writers.clone(),
        }))
    }
}
