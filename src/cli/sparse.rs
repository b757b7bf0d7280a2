//! The data runs of a sparse file (`SEEK_DATA` / `SEEK_HOLE`).

use std::os::fd::AsRawFd;

/// Holes shorter than this travel with the data around them, both ways:
/// an import sends them, an export fetches them (one request instead of
/// two or three).
pub(super) const SMALL_HOLE: u64 = 1 << 20;

/// `(offset, length)` of the runs of `path` (of `len` bytes) that may hold
/// data, in order; holes shorter than [`SMALL_HOLE`] are folded into the
/// runs around them. A filesystem without hole reporting answers one run.
pub(super) fn data_runs(path: &str, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let file = std::fs::File::open(path)?;
    let fd = file.as_raw_fd();
    let seek = |at: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on a descriptor this function owns; no memory is passed.
        let r = unsafe { libc::lseek(fd, at as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            e => Err(e),
        }
    };
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut at = 0;
    while at < len {
        let Some(start) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        match runs.last_mut() {
            Some(last) if start - (last.0 + last.1) < SMALL_HOLE => last.1 = end - last.0,
            _ => runs.push((start, end - start)),
        }
        at = end;
    }
    Ok(runs)
}
