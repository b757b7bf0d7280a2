//! How an engine is opened: its directory, object store, cache budgets
//! and sealing thresholds, with their defaults.

use std::path::PathBuf;
use std::time::Duration;

use super::DEFAULT_CHUNK_SIZE;

/// How to open an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Data directory: holds the catalog (and the default object store).
    pub data_dir: PathBuf,
    /// Object store URL; `None` means `file://<data_dir>/objects`.
    pub object_store: Option<String>,
    /// Chunk size for new volumes that do not name one.
    pub default_chunk_size: u64,
    /// Budget of the memory cache: decompressed chunks and decoded
    /// manifest nodes (an eighth, at least 8 MiB).
    pub cache_bytes: usize,
    /// Budget of the on-disk chunk cache, used when the object store is not
    /// local (`s3://`); `None` picks [`default_disk_cache_bytes`].
    pub disk_cache_bytes: Option<u64>,
    /// Log bytes of one volume that make the background sealer act.
    pub dirty_soft_limit: usize,
    /// Log bytes of one volume (its write-back backlog, on local disk) past
    /// which writers wait for sealing.
    pub dirty_hard_limit: usize,
    /// Idle time after which dirty data is sealed anyway.
    pub idle_seal_after: Duration,
    /// Age of the oldest unsealed write after which it is sealed even
    /// while writes go on.
    pub seal_age: Duration,
    /// How long a writer waits for backlog room while the object store
    /// answers nothing before writes are refused.
    pub store_timeout: Duration,
}

impl EngineConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            object_store: None,
            default_chunk_size: DEFAULT_CHUNK_SIZE,
            cache_bytes: 256 << 20,
            disk_cache_bytes: None,
            dirty_soft_limit: 1 << 30,
            dirty_hard_limit: 2 << 30,
            idle_seal_after: Duration::from_secs(2),
            seal_age: Duration::from_secs(60),
            store_timeout: Duration::from_secs(30),
        }
    }
}

/// The default on-disk cache budget: a quarter of the space free on the
/// data dir's filesystem at start, at least 1 GiB (or all of it when less
/// is free).
pub fn default_disk_cache_bytes(data_dir: &std::path::Path) -> u64 {
    let free = free_bytes(data_dir).unwrap_or(4 << 30);
    (free / 4).max(1 << 30).min(free)
}

fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a
    // properly sized out-parameter; statvfs writes it fully on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}
