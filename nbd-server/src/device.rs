//! What the NBD server serves: block devices, found by export name.

use std::sync::Arc;

/// An error with the errno the client should see.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DeviceError {
    /// errno sent to the client (see [`crate::proto::errno`]).
    pub errno: u32,
    /// Logged on the server, and sent in structured error replies.
    pub message: String,
}

/// One allocation extent for `base:allocation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Bytes.
    pub length: u64,
    /// Not allocated (and reads as zeros).
    pub hole: bool,
}

/// A block device behind an export.
#[async_trait::async_trait]
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// True for snapshot exports.
    fn read_only(&self) -> bool;
    /// Reads `buf.len()` bytes at `offset`.
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// Reads without waiting on I/O, if the device can (cached data);
    /// `None` means "use [`BlockDevice::read`]". Transports use it to
    /// answer from the I/O thread without a hand-off.
    fn try_read(&self, _offset: u64, _buf: &mut [u8]) -> Option<Result<(), DeviceError>> {
        None
    }
    /// Writes without waiting on I/O beyond a local append, if the device
    /// can (a small write it takes at once); `None` means "use
    /// [`BlockDevice::write`]". Never called for FUA writes. Transports use
    /// it to answer from the I/O thread, straight from the receive buffer.
    fn try_write(&self, _offset: u64, _data: &[u8]) -> Option<Result<(), DeviceError>> {
        None
    }
    /// Writes; durable before returning when `fua`. The payload is handed
    /// over, so a device may keep slices of it instead of copying.
    async fn write(&self, offset: u64, data: bytes::Bytes, fua: bool) -> Result<(), DeviceError>;
    /// Makes a range read as zeros (WRITE_ZEROES and TRIM).
    async fn write_zeroes(&self, offset: u64, length: u64, fua: bool) -> Result<(), DeviceError>;
    /// Makes every acknowledged write durable.
    async fn flush(&self) -> Result<(), DeviceError>;
    /// Allocation of `[offset, offset + length)`, in order, covering it.
    async fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, DeviceError>;
}

/// Finds exports by name.
#[async_trait::async_trait]
pub trait Exports: Send + Sync {
    /// Opens an export, or None if it does not exist.
    async fn open(&self, name: &str) -> Option<Arc<dyn BlockDevice>>;
    /// Names for NBD_OPT_LIST.
    async fn list(&self) -> Vec<String>;
    /// Called when a read-write connection to export `name` opens
    /// (`attached` true) and when it closes (false).
    async fn attached(&self, _name: &str, _attached: bool) {}
    /// The exports a client that authenticated over TLS as `identity` may
    /// see and open; `None` (the default) closes its connection.
    fn scoped(&self, _identity: &str) -> Option<std::sync::Arc<dyn Exports>> {
        None
    }
}
