//! Long runs of records written around the page cache.
//!
//! Packs only grow, so a buffered append copies every byte into page-cache
//! pages that are new, and on machines whose memory is backed lazily (most
//! virtual machines) a new page costs several times a rewrite of an old
//! one: that copy was a third of the server's CPU on sequential writes.
//! Runs of at least [`DIRECT_MIN`] bytes are instead copied into one reused,
//! page-aligned buffer and written with `O_DIRECT`, at page-aligned offsets
//! and padded with zeros to whole pages. Short runs (manifest nodes, the
//! records compaction moves one by one) stay buffered: padding them would
//! waste most of a page each.
//!
//! Durability does not change: [`super::PackStore::sync`] still fdatasyncs
//! the pack (`O_DIRECT` skips the cache, not the device's write cache or the
//! file's size). Reads go through the buffered handle; the kernel drops any
//! cached page a direct write covers, so they see what was written.
//!
//! A filesystem that refuses `O_DIRECT` (tmpfs, some FUSE filesystems), at
//! open or at the first write, turns it off for the store: runs are then
//! written buffered, as short ones are.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Offsets, lengths and the buffer of a direct write are multiples of this
/// (the page size, and a multiple of every common logical block size).
pub(super) const ALIGN: u64 = 4096;
/// Runs of records at least this long are written directly.
pub(super) const DIRECT_MIN: u64 = 128 << 10;
/// Bytes written per direct write; the buffer holds this many.
const WINDOW: usize = 1 << 20;

/// `n` rounded up to a multiple of [`ALIGN`].
pub(super) fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// A write-only `O_DIRECT` handle on the pack at `path`, or `None` when the
/// filesystem refuses one.
pub(super) fn open(path: &Path) -> Option<File> {
    File::options()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| tracing::debug!(path = %path.display(), error = %e, "O_DIRECT refused; pack writes stay buffered"))
        .ok()
}

/// Whether a direct write failed because the filesystem does not do them
/// (rather than because the disk failed).
pub(super) fn refused(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// The reused, page-aligned buffer direct writes are made from. Allocated
/// on first use, so a store that never writes a long run holds none.
#[derive(Debug, Default)]
pub(super) struct Staging {
    buf: Vec<u8>,
}

impl Staging {
    /// The aligned window of the buffer.
    fn window(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0u8; WINDOW + ALIGN as usize];
        }
        let skip = self.buf.as_ptr().align_offset(ALIGN as usize);
        &mut self.buf[skip..skip + WINDOW]
    }

    /// Writes `parts`, one after the other, to `file` (an `O_DIRECT` handle)
    /// from offset `at` (a multiple of [`ALIGN`]), and zeros after them up
    /// to the next multiple of [`ALIGN`].
    pub(super) fn write<'a>(
        &mut self,
        file: &File,
        at: u64,
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) -> std::io::Result<()> {
        debug_assert_eq!(at % ALIGN, 0);
        let window = self.window();
        let (mut filled, mut at) = (0, at);
        for mut part in parts {
            while !part.is_empty() {
                let n = part.len().min(WINDOW - filled);
                window[filled..filled + n].copy_from_slice(&part[..n]);
                (filled, part) = (filled + n, &part[n..]);
                if filled == WINDOW {
                    file.write_all_at(window, at)?;
                    (filled, at) = (0, at + WINDOW as u64);
                }
            }
        }
        if filled > 0 {
            let end = align_up(filled as u64) as usize;
            window[filled..end].fill(0);
            file.write_all_at(&window[..end], at)?;
        }
        Ok(())
    }
}
