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
//! Reads of long runs ([`super::read`]: an export, a read-ahead) are made
//! the same way, for the same reason: filling new page-cache pages from
//! the disk cost more CPU than the rest of an export (a buffered read of a
//! file written directly: 575 MB/s and 1.8 s of system time per GiB; a
//! direct read: 2.1 GB/s and 0.08 s).
//!
//! Durability does not change: [`super::PackStore::sync`] still fdatasyncs
//! the pack (`O_DIRECT` skips the cache, not the device's write cache or the
//! file's size). Short reads go through the buffered handle; the kernel
//! drops any cached page a direct write covers and writes back dirty ones a
//! direct read covers, so both kinds of read see what was written.
//!
//! Direct writes in the background ([`super::Pace::Paced`]) are also
//! fdatasynced every [`SYNC_EVERY`] bytes on the way. Left to pile up in
//! the device's write cache (a virtual disk's host page cache), a seal's
//! hundreds of MiB made every other fsync wait behind them: the log and
//! catalog syncs of a snapshot taken while a 1 GiB seal ran took 80-250
//! ms, and 1.5-15 ms with a sync every 2 MiB, for a seal no slower. These
//! syncs are for latency only; durability still comes
//! from [`super::PackStore::sync`]. A client's whole-chunk writes are not
//! paced: a sync every 2 MiB held 1 MiB writes to the device's synced
//! speed (222 MiB/s here against 589 without), and the client's own flush
//! must drain what it wrote anyway. Paced writes also hold back while a
//! user waits on a sync ([`Foreground`]: a snapshot's, fork's or clone's),
//! for at most [`MAX_YIELD`] per write: the write already in the device
//! still goes first, but the ones after it do not.
//!
//! A filesystem that refuses `O_DIRECT` (some FUSE filesystems, older
//! tmpfs), at open or at the first write or read, turns it off for the
//! store: runs are then written and read buffered, as short ones are.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Pace;

/// Offsets, lengths and the buffer of a direct write are multiples of this
/// (the page size, and a multiple of every common logical block size).
pub(super) const ALIGN: u64 = 4096;
/// Runs of records at least this long are written directly.
pub(super) const DIRECT_MIN: u64 = 128 << 10;
/// Bytes written per direct write; the buffer holds this many.
const WINDOW: usize = 1 << 20;
/// Direct writes are fdatasynced each time this many bytes were written
/// since the last such sync (see the module's docs).
pub(super) const SYNC_EVERY: u64 = 2 << 20;

/// Longest a paced write waits for foreground syncs to finish (see
/// [`Foreground`]), so that back-to-back snapshots cannot stall a seal.
const MAX_YIELD: Duration = Duration::from_millis(100);
/// How often a paced write waiting for foreground syncs looks again.
const YIELD_STEP: Duration = Duration::from_micros(500);

/// Syncs in progress that a user waits on (a snapshot's log sync and
/// catalog commit): while there is one, paced writes do not start, so
/// the sync does not queue on the device behind a seal's bulk writes.
#[derive(Debug, Default)]
pub struct Foreground(AtomicUsize);

impl Foreground {
    /// Marks a foreground sync until the guard drops.
    pub fn enter(&self) -> ForegroundGuard<'_> {
        self.0.fetch_add(1, Ordering::AcqRel);
        ForegroundGuard(self)
    }

    /// Waits (at most [`MAX_YIELD`]) until no foreground sync runs.
    pub(crate) fn wait_clear(&self) {
        let started = Instant::now();
        while self.0.load(Ordering::Acquire) > 0 && started.elapsed() < MAX_YIELD {
            std::thread::sleep(YIELD_STEP);
        }
    }
}

/// A foreground sync in progress ([`Foreground::enter`]).
#[derive(Debug)]
pub struct ForegroundGuard<'a>(&'a Foreground);

impl Drop for ForegroundGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `n` rounded up to a multiple of [`ALIGN`].
pub(super) fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// An `O_DIRECT` handle on the pack at `path` (to write, or to read), or
/// `None` when the filesystem refuses one.
pub(super) fn open(path: &Path, write: bool) -> Option<File> {
    File::options()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| tracing::debug!(path = %path.display(), error = %e, "O_DIRECT refused; pack I/O stays buffered"))
        .ok()
}

impl super::PackStore {
    /// Whether a direct write or read failed because the filesystem does
    /// not do them (rather than because the disk failed); if so, direct I/O
    /// is off for the store from now on.
    pub(super) fn refuses_direct(&self, e: &std::io::Error) -> bool {
        if e.raw_os_error() != Some(libc::EINVAL) {
            return false;
        }
        tracing::info!(error = %e, "the filesystem refused direct I/O; pack writes and reads stay buffered");
        self.direct_refused
            .store(true, std::sync::atomic::Ordering::Relaxed);
        true
    }
}

/// A reused, page-aligned buffer: direct writes are made from one, direct
/// reads land in another. Allocated on first use, so a store that never
/// writes or reads a long run holds none.
#[derive(Debug, Default)]
pub(super) struct Aligned {
    buf: Vec<u8>,
    /// Bytes written directly since the last data sync of this buffer's
    /// writes.
    unsynced: u64,
    /// Data syncs made because [`SYNC_EVERY`] was reached.
    syncs: u64,
}

impl Aligned {
    /// An aligned slice of `len` bytes, kept for the next call.
    fn window(&mut self, len: usize) -> &mut [u8] {
        if self.buf.len() < len + ALIGN as usize {
            self.buf = vec![0u8; len + ALIGN as usize];
        }
        let skip = self.buf.as_ptr().align_offset(ALIGN as usize);
        &mut self.buf[skip..skip + len]
    }

    /// Writes `parts`, one after the other, to `file` (an `O_DIRECT` handle)
    /// from offset `at` (a multiple of [`ALIGN`]), and zeros after them up
    /// to the next multiple of [`ALIGN`]; when `pace` is
    /// [`Pace::Paced`], fdatasyncs `file` each time [`SYNC_EVERY`] bytes
    /// were written since the last time (unpaced bytes count too), and
    /// waits before each write while a `foreground` sync runs.
    pub(super) fn write<'a>(
        &mut self,
        file: &File,
        at: u64,
        parts: impl IntoIterator<Item = &'a [u8]>,
        pace: Pace,
        foreground: &Foreground,
    ) -> std::io::Result<()> {
        debug_assert_eq!(at % ALIGN, 0);
        let (mut unsynced, mut syncs) = (self.unsynced, self.syncs);
        let mut put = |bytes: &[u8], at: u64| -> std::io::Result<()> {
            if pace == Pace::Paced {
                foreground.wait_clear();
            }
            file.write_all_at(bytes, at)?;
            unsynced += bytes.len() as u64;
            if pace == Pace::Paced && unsynced >= SYNC_EVERY {
                file.sync_data()?;
                (unsynced, syncs) = (0, syncs + 1);
            }
            Ok(())
        };
        let window = self.window(WINDOW);
        let (mut filled, mut at) = (0, at);
        for mut part in parts {
            while !part.is_empty() {
                let n = part.len().min(WINDOW - filled);
                window[filled..filled + n].copy_from_slice(&part[..n]);
                (filled, part) = (filled + n, &part[n..]);
                if filled == WINDOW {
                    put(window, at)?;
                    (filled, at) = (0, at + WINDOW as u64);
                }
            }
        }
        if filled > 0 {
            let end = align_up(filled as u64) as usize;
            window[filled..end].fill(0);
            put(&window[..end], at)?;
        }
        (self.unsynced, self.syncs) = (unsynced, syncs);
        Ok(())
    }

    /// Data syncs [`Aligned::write`] made on the way.
    #[cfg(test)]
    pub(super) fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Reads `span` of `file` (an `O_DIRECT` handle, when `direct`; the
    /// pages around the span are read too) into the buffer, and returns
    /// where in it ([`Aligned::bytes`]) those bytes are.
    pub(super) fn read(
        &mut self,
        file: &File,
        span: Range<u64>,
        direct: bool,
    ) -> std::io::Result<Range<usize>> {
        let from = match direct {
            true => span.start / ALIGN * ALIGN,
            false => span.start,
        };
        let need = (span.end - from) as usize;
        let len = match direct {
            true => align_up(need as u64) as usize,
            false => need,
        };
        let buf = self.window(len);
        let mut got = 0;
        while got < need {
            // A direct read past the end of the file stops short there.
            match file.read_at(&mut buf[got..], from + got as u64)? {
                n if n > 0 && (got + n >= need || !direct || n % ALIGN as usize == 0) => got += n,
                _ => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            }
        }
        Ok((span.start - from) as usize..need)
    }

    /// Bytes of the window read last (`range` as [`Aligned::read`] gave it).
    pub(super) fn bytes(&self, range: Range<usize>) -> &[u8] {
        let skip = self.buf.as_ptr().align_offset(ALIGN as usize);
        &self.buf[skip + range.start..skip + range.end]
    }
}
