//! An in-memory block device and export table.
//!
//! Serves the protocol with no storage behind it: the fuzz target drives
//! whole sessions against it, and the `memory_server` example serves it so
//! benchmarks can measure what the protocol layer alone costs (against
//! `nbdkit memory`).
//! Zero-filled until written; allocation is tracked per 4 KiB block.

use std::sync::Arc;

use parking_lot::RwLock;

use crate::device::{BlockDevice, DeviceError, Exports, Extent};
use crate::proto::errno;

const BLOCK: u64 = 4096;

/// A RAM disk of a fixed size.
pub struct MemoryDevice {
    data: RwLock<Vec<u8>>,
    /// One bit per 4 KiB block: written with data since creation.
    allocated: RwLock<Vec<bool>>,
    read_only: bool,
}

impl MemoryDevice {
    /// A zeroed device of `size` bytes.
    pub fn new(size: u64, read_only: bool) -> Self {
        let blocks = size.div_ceil(BLOCK) as usize;
        Self {
            data: RwLock::new(vec![0u8; size as usize]),
            allocated: RwLock::new(vec![false; blocks]),
            read_only,
        }
    }

    fn range(&self, offset: u64, length: u64) -> Result<std::ops::Range<usize>, DeviceError> {
        let size = self.data.read().len() as u64;
        match offset.checked_add(length) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(DeviceError {
                errno: errno::EINVAL,
                message: format!("{offset}+{length} beyond {size}"),
            }),
        }
    }

    fn mark(&self, range: &std::ops::Range<usize>, allocated: bool) {
        if range.is_empty() {
            return;
        }
        let first = range.start / BLOCK as usize;
        let last = (range.end - 1) / BLOCK as usize;
        self.allocated.write()[first..=last].fill(allocated);
    }
}

#[async_trait::async_trait]
impl BlockDevice for MemoryDevice {
    fn size(&self) -> u64 {
        self.data.read().len() as u64
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let range = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.read()[range]);
        Ok(())
    }

    fn try_read(&self, offset: u64, buf: &mut [u8]) -> Option<Result<(), DeviceError>> {
        Some(
            self.range(offset, buf.len() as u64)
                .map(|range| buf.copy_from_slice(&self.data.read()[range])),
        )
    }

    async fn write(&self, offset: u64, data: bytes::Bytes, _fua: bool) -> Result<(), DeviceError> {
        let range = self.range(offset, data.len() as u64)?;
        self.data.write()[range.clone()].copy_from_slice(&data);
        self.mark(&range, true);
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, length: u64, _fua: bool) -> Result<(), DeviceError> {
        let range = self.range(offset, length)?;
        self.data.write()[range.clone()].fill(0);
        self.mark(&range, false);
        Ok(())
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }

    async fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, DeviceError> {
        let range = self.range(offset, length)?;
        let allocated = self.allocated.read();
        let mut out: Vec<Extent> = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let block = at / BLOCK as usize;
            let end = ((block + 1) * BLOCK as usize).min(range.end);
            let hole = !allocated[block];
            let len = (end - at) as u64;
            match out.last_mut() {
                Some(last) if last.hole == hole => last.length += len,
                _ => out.push(Extent { length: len, hole }),
            }
            at = end;
        }
        Ok(out)
    }
}

/// One read-write export and its read-only twin (`NAME@ro`), both over the
/// same RAM disk.
pub struct MemoryExports {
    name: String,
    device: Arc<MemoryDevice>,
    read_only: Arc<ReadOnly>,
}

impl MemoryExports {
    /// An export called `name` of `size` bytes.
    pub fn new(name: &str, size: u64) -> Self {
        let device = Arc::new(MemoryDevice::new(size, false));
        Self {
            name: name.to_string(),
            read_only: Arc::new(ReadOnly(device.clone())),
            device,
        }
    }
}

/// A read-only view of a memory device.
struct ReadOnly(Arc<MemoryDevice>);

#[async_trait::async_trait]
impl BlockDevice for ReadOnly {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        true
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.0.read(offset, buf).await
    }
    async fn write(&self, _: u64, _: bytes::Bytes, _: bool) -> Result<(), DeviceError> {
        Err(read_only())
    }
    async fn write_zeroes(&self, _: u64, _: u64, _: bool) -> Result<(), DeviceError> {
        Err(read_only())
    }
    async fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    async fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, DeviceError> {
        self.0.extents(offset, length).await
    }
}

fn read_only() -> DeviceError {
    DeviceError {
        errno: errno::EPERM,
        message: "read-only export".into(),
    }
}

#[async_trait::async_trait]
impl Exports for MemoryExports {
    async fn open(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        if name == self.name {
            Some(self.device.clone())
        } else if name.strip_suffix("@ro") == Some(self.name.as_str()) {
            Some(self.read_only.clone())
        } else {
            None
        }
    }

    async fn list(&self) -> Vec<String> {
        vec![self.name.clone(), format!("{}@ro", self.name)]
    }

    /// A TLS client whose identity is the export's name sees it; others
    /// are closed.
    fn scoped(&self, identity: &str) -> Option<Arc<dyn Exports>> {
        (identity == self.name).then(|| {
            Arc::new(Self {
                name: self.name.clone(),
                device: self.device.clone(),
                read_only: self.read_only.clone(),
            }) as Arc<dyn Exports>
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_writes_zeroes_and_extents() {
        let d = MemoryDevice::new(64 << 10, false);
        d.write(8192, bytes::Bytes::from(vec![7u8; 5000]), false)
            .await
            .unwrap();
        let mut buf = vec![0u8; 5000];
        d.read(8192, &mut buf).await.unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        let ext = d.extents(0, 64 << 10).await.unwrap();
        assert_eq!(
            ext,
            vec![
                Extent {
                    length: 8192,
                    hole: true
                },
                Extent {
                    length: 8192,
                    hole: false
                },
                Extent {
                    length: 48 << 10,
                    hole: true
                },
            ]
        );
        d.write_zeroes(8192, 4096, false).await.unwrap();
        d.read(8192, &mut buf).await.unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(d.read((64 << 10) - 1, &mut [0u8; 2]).await.is_err());
    }
}
