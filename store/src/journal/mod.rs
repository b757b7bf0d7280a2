//! Write-back journal: the durable form of acknowledged writes that are not
//! yet sealed into chunk objects.
//!
//! Each volume appends to one log file per *generation*
//! (`<data-dir>/journal/<volume id>-<generation>.log`, both 16 hex
//! digits); sealing freezes a generation and starts the next. A record on
//! disk is `[len u32 LE][crc32 u32 LE][payload]`, the payload an encoded
//! [`Record`]. The logs are also where dirty data *lives*: the overlay
//! holds only each dirty block's position in a log, and reads and seals
//! read the bytes back (from the page cache, usually). Scanning a volume's
//! live generations in order rebuilds its dirty overlay exactly.
//!
//! Which generations are live is decided by the catalog, not by the files:
//! the volume record's `journal_floor` says that every generation below it
//! is sealed (or discarded by a rollback), and it changes in the same
//! synced batch as the root. Files below the floor are garbage, removed
//! after the commit or at the next open, so a crash between the two never
//! replays stale writes.
//!
//! All offsets and lengths are 4 KiB aligned: unaligned writes are merged
//! to whole blocks before they are journaled.

mod files;
mod record;

pub use files::{JournalDir, LogFile};
pub use record::{chunk_ids, scan_salvaging, Dropped, Record, WRITE_DATA_AT};
