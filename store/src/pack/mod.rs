//! Pack files: the local object store's layout.
//!
//! One file per 64 KiB chunk made the local store pay an inode per object:
//! creating, fsyncing and later unlinking hundreds of thousands of small
//! files was most of the filesystem's work on sequential writes and
//! imports. Here objects are appended to large pack files instead:
//!
//! - `packs/NNNNNNNN.pack`: records `magic, key length (u16), data length
//!   (u32), key, data`, appended; a pack is never rewritten. Puts append to
//!   the one *active* pack (a new one per process start and every
//!   [`PACK_BYTES`]); concurrent puts reserve their ranges under the state
//!   lock and write one run at a time ([`append`]). Long runs are written
//!   around the page cache, page-aligned and zero-padded ([`direct`]).
//! - `pack-index/`: a RocksDB mapping each object key to (pack, offset of
//!   its data, length, put time). Written when a put's data is written,
//!   unsynced.
//!
//! Reads are served in batches, neighbours in one `pread` ([`read`]).
//!
//! Durability ([`PackStore::sync`]): the packs written since the last sync
//! are fdatasynced, then the pack directory (when a pack was created), then
//! the index's log. Callers (see [`crate::durable`]) run it before a
//! catalog batch that references new objects. An index entry that reached
//! the disk before its data (a crash between the two) names an object no
//! committed root references: its frame fails its checksum if read, and a
//! later put of the key points the index elsewhere.
//!
//! Deletes only drop index entries. A pack whose live bytes fall under half
//! of its size is *compacted* on a background thread: its live records are
//! copied to the active pack, made durable, the index repointed (entry by
//! entry, only where it still names the old place), the index synced, and
//! only then the old pack unlinked ([`compact`]). The active pack qualifies
//! too (from 1 MiB): it is closed first, so deleting everything gives all
//! the space back.

mod append;
mod compact;
mod direct;
pub use direct::ForegroundGuard;
mod read;
mod store_impl;

pub use store_impl::PackObjects;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::Result;

/// A pack is closed and a new one started past this size.
pub const PACK_BYTES: u64 = 256 << 20;
/// The active pack is compacted (after it is closed) only from this size,
/// unless nothing in it is live.
const MIN_ACTIVE_COMPACTION: u64 = 1 << 20;
/// Record magic: "cairn pack record, version 1".
const MAGIC: [u8; 4] = *b"CPK1";
/// Record header: magic, key length (u16), data length (u32).
const HEADER: usize = 10;

/// Whether a put's direct writes are fdatasynced on the way ([`direct`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Synced every [`direct::SYNC_EVERY`] bytes: bulk writes in the
    /// background (seals, imports, compaction), which would otherwise fill
    /// the device's write cache ahead of every other fsync.
    Paced,
    /// Not synced on the way: a client's own writes, which wait for the
    /// device on every sync and which the client's next flush drains anyway.
    Unpaced,
}

/// Where an object's data is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Location {
    pack: u32,
    offset: u64,
    len: u32,
    /// Unix seconds of the put.
    put_at: u64,
}

impl Location {
    fn encode(&self) -> [u8; 24] {
        let mut v = [0u8; 24];
        v[..4].copy_from_slice(&self.pack.to_le_bytes());
        v[4..12].copy_from_slice(&self.offset.to_le_bytes());
        v[12..16].copy_from_slice(&self.len.to_le_bytes());
        v[16..].copy_from_slice(&self.put_at.to_le_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Self> {
        if v.len() != 24 {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().unwrap());
        Some(Self {
            pack: u32_at(0),
            offset: u64_at(4),
            len: u32_at(12),
            put_at: u64_at(16),
        })
    }
}

/// What [`PackStore::get`] read.
#[derive(Debug)]
struct Got {
    loc: Location,
    /// The range of the object read.
    range: std::ops::Range<u64>,
    data: Vec<u8>,
}

/// One pack file and what is known of it.
#[derive(Debug)]
struct Pack {
    file: Arc<File>,
    /// An `O_DIRECT` handle for long runs ([`direct`]); the active pack's
    /// only, and only where the filesystem allows one.
    direct: Option<Arc<File>>,
    /// Bytes appended (or reserved for puts in flight).
    size: u64,
    /// Data bytes of the records the index points at.
    live: u64,
    /// Puts that reserved room here and have not yet indexed it.
    writers: usize,
}

#[derive(Debug)]
struct State {
    active: u32,
    packs: HashMap<u32, Pack>,
    /// Packs written since the last sync.
    unsynced: BTreeSet<u32>,
    /// A pack was created since the last sync (the directory needs one).
    created: bool,
    /// Objects in the index.
    objects: u64,
}

/// What the pack files hold (see [`PackStore::usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackUsage {
    /// Pack files.
    pub files: usize,
    /// Their bytes on disk, dead records included.
    pub bytes: u64,
    /// Data bytes of the objects they hold.
    pub live_bytes: u64,
    /// Objects they hold.
    pub objects: u64,
}

/// Objects in pack files under one directory (see the module docs).
#[derive(Debug)]
pub struct PackStore {
    dir: PathBuf,
    index: rocksdb::DB,
    state: Mutex<State>,
    /// One sync at a time (a later one then covers everything before it).
    sync_lock: Mutex<()>,
    /// One run of records written at a time, and the buffer direct writes
    /// are made from. The kernel serialises buffered writes to a file on
    /// its inode lock anyway, and its waiters spin while the holder copies:
    /// with eight 1 MiB writes in flight that spinning took a fifth of the
    /// CPU. Waiting here sleeps instead.
    append_lock: Mutex<direct::Aligned>,
    /// Syncs a user waits on; paced writes wait for them ([`direct`]).
    foreground: Arc<direct::Foreground>,
    /// The buffer runs of neighbouring records are read into ([`read`]),
    /// kept: a new one per read came as fresh pages, and filling them
    /// cost more than the read.
    read_buf: Mutex<direct::Aligned>,
    /// The filesystem refused a direct write or read: every run is
    /// buffered.
    direct_refused: AtomicBool,
    compacting: AtomicBool,
    /// Set by [`PackStore::stop_compaction`]: no compaction starts, and one
    /// in progress stops between records.
    closing: AtomicBool,
    /// The compaction thread last started.
    compactor: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join("packs").join(format!("{pack:08}.pack"))
}

fn unix_now() -> u64 {
    crate::objects::unix_now()
}

impl PackStore {
    /// Opens (or creates) the pack store in `dir`: reads the index once to
    /// learn each pack's live bytes, removes packs nothing points at, and
    /// starts a new active pack.
    pub fn open(dir: &Path) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir.join("packs"))?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_max_background_jobs(2);
        // Entries are small (key and 24 bytes) and hot ones are read soon
        // after they are written: small memtables keep its memory in check.
        opts.set_write_buffer_size(8 << 20);
        opts.set_max_write_buffer_number(2);
        crate::catalog::tune_for_point_lookups(&mut opts);
        let index = rocksdb::DB::open(&opts, dir.join("pack-index"))?;
        let mut live: HashMap<u32, u64> = HashMap::new();
        let mut objects = 0;
        for item in index.iterator(rocksdb::IteratorMode::Start) {
            let (_, value) = item?;
            if let Some(loc) = Location::decode(&value) {
                *live.entry(loc.pack).or_default() += u64::from(loc.len);
                objects += 1;
            }
        }
        let mut packs = HashMap::new();
        let mut newest = 0;
        for entry in std::fs::read_dir(dir.join("packs"))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".pack"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            newest = newest.max(id);
            let live = live.get(&id).copied().unwrap_or(0);
            if live == 0 {
                // Nothing indexed in it: a pack compacted away whose unlink a
                // crash undid, or puts that never reached a sync.
                std::fs::remove_file(entry.path())?;
                continue;
            }
            let file = File::options().read(true).write(true).open(entry.path())?;
            let size = file.metadata()?.len();
            packs.insert(
                id,
                Pack {
                    file: Arc::new(file),
                    direct: None,
                    size,
                    live,
                    writers: 0,
                },
            );
        }
        let active = newest + 1;
        packs.insert(active, Self::create_pack(dir, active, true)?);
        tracing::info!(
            packs = packs.len(),
            objects_bytes = live.values().sum::<u64>(),
            "pack store opened"
        );
        let store = Arc::new(Self {
            dir: dir.to_path_buf(),
            index,
            state: Mutex::new(State {
                active,
                packs,
                unsynced: BTreeSet::new(),
                created: true,
                objects,
            }),
            sync_lock: Mutex::new(()),
            append_lock: Mutex::new(direct::Aligned::default()),
            foreground: Arc::default(),
            read_buf: Mutex::new(direct::Aligned::default()),
            direct_refused: AtomicBool::new(false),
            compacting: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            compactor: Mutex::new(None),
        });
        store.maybe_compact();
        Ok(store)
    }

    /// Creates pack `id`, with a direct handle when `direct` and the
    /// filesystem allows one.
    fn create_pack(dir: &Path, id: u32, direct: bool) -> Result<Pack> {
        let path = pack_path(dir, id);
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Pack {
            file: Arc::new(file),
            direct: direct.then(|| direct::open(&path, true)).flatten().map(Arc::new),
            size: 0,
            live: 0,
            writers: 0,
        })
    }

    /// Whether `dir` holds objects of the older one-file-per-object layout
    /// (it is then opened as such).
    pub fn holds_loose_objects(dir: &Path) -> bool {
        ["chunks", "nodes"].iter().any(|kind| dir.join(kind).is_dir()) && !dir.join("pack-index").exists()
    }

    /// Moves an object's live bytes from `old` (if any) to `new`.
    fn repoint(st: &mut State, old: Option<Location>, new: Location) {
        if let Some(old) = old {
            if let Some(p) = st.packs.get_mut(&old.pack) {
                p.live = p.live.saturating_sub(u64::from(old.len));
            }
        }
        if let Some(p) = st.packs.get_mut(&new.pack) {
            p.live += u64::from(new.len);
        }
    }

    /// Where `key` is, with its pack's file.
    fn locate(&self, key: &str) -> Result<Option<(Location, Arc<File>)>> {
        // A compaction may move the object between the index read and the
        // file lookup: then the index names the new place.
        for _ in 0..3 {
            let Some(loc) = self.head(key)? else {
                return Ok(None);
            };
            if let Some(pack) = self.state.lock().packs.get(&loc.pack) {
                return Ok(Some((loc, pack.file.clone())));
            }
        }
        Err(std::io::Error::other(format!(
            "object {key} moved between packs three times while being read"
        ))
        .into())
    }

    /// The object's location without reading it.
    fn head(&self, key: &str) -> Result<Option<Location>> {
        Ok(self.index.get(key)?.and_then(|v| Location::decode(&v)))
    }

    /// Forgets `key` (blocking); a missing key is no error. Returns whether
    /// the delete may have made its pack worth compacting.
    fn delete(&self, key: &str) -> Result<bool> {
        let mut st = self.state.lock();
        let Some(old) = self.head(key)? else {
            return Ok(false);
        };
        self.index.delete(key)?;
        st.objects -= 1;
        // Worth a look when the pack falls under half live, or empties.
        Ok(st.packs.get_mut(&old.pack).is_some_and(|p| {
            let was = p.live * 2 < p.size;
            p.live = p.live.saturating_sub(u64::from(old.len));
            (!was && p.live * 2 < p.size) || p.live == 0
        }))
    }

    /// Up to `limit` (key, location) pairs with keys starting with `prefix`
    /// and greater than `after`.
    fn page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<(String, Location)>> {
        let from = after.unwrap_or(prefix);
        let mut out = Vec::new();
        let iter = self.index.iterator(rocksdb::IteratorMode::From(
            from.as_bytes(),
            rocksdb::Direction::Forward,
        ));
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            if after.is_some_and(|a| a.as_bytes() == &key[..]) {
                continue;
            }
            let (Ok(key), Some(loc)) = (String::from_utf8(key.to_vec()), Location::decode(&value)) else {
                continue;
            };
            out.push((key, loc));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Makes every put that returned before this call durable: their packs'
    /// data, the directory entry of a new pack, then the index.
    pub fn sync(&self) -> Result<()> {
        self.sync_packs()?;
        self.index.flush_wal(true)?;
        Ok(())
    }

    /// The data half of [`PackStore::sync`]: packs written since the last
    /// one, and the directory when a pack was created.
    fn sync_packs(&self) -> Result<()> {
        let _one = self.sync_lock.lock();
        let (ids, files, created) = {
            let mut st = self.state.lock();
            let ids = std::mem::take(&mut st.unsynced);
            let files: Vec<Arc<File>> = ids
                .iter()
                .filter_map(|id| st.packs.get(id).map(|p| p.file.clone()))
                .collect();
            (ids, files, std::mem::take(&mut st.created))
        };
        let synced = files
            .iter()
            .try_for_each(|f| f.sync_data())
            .and_then(|()| match created {
                true => File::open(self.dir.join("packs"))?.sync_all(),
                false => Ok(()),
            });
        if let Err(e) = synced {
            // A later sync tries them all again.
            let mut st = self.state.lock();
            st.unsynced.extend(ids);
            st.created |= created;
            return Err(e.into());
        }
        Ok(())
    }

    /// Packs worth compacting: under half live, and for the active pack
    /// (which [`compact::compact`] first closes) at least
    /// [`MIN_ACTIVE_COMPACTION`] of records or nothing live, so that
    /// deleting everything gives the space back without churning small
    /// packs.
    fn candidates(&self) -> Vec<u32> {
        let st = self.state.lock();
        let mut ids: Vec<u32> = st
            .packs
            .iter()
            .filter(|(&id, p)| {
                p.live * 2 < p.size && (id != st.active || p.size >= MIN_ACTIVE_COMPACTION || p.live == 0)
            })
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Starts a compaction thread when a pack is worth it and none runs.
    pub(crate) fn maybe_compact(self: &Arc<Self>) {
        if self.closing.load(Ordering::Acquire)
            || self.candidates().is_empty()
            || self.compacting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let me = self.clone();
        let thread = std::thread::Builder::new()
            .name("pack-compact".into())
            .spawn(move || loop {
                while let Some(&id) = me.candidates().first() {
                    if me.closing.load(Ordering::Acquire) {
                        me.compacting.store(false, Ordering::Release);
                        return;
                    }
                    if let Err(e) = compact::compact(&me, id) {
                        tracing::warn!(pack = id, error = %e, "pack compaction failed; tried again after later deletes");
                        me.compacting.store(false, Ordering::Release);
                        return;
                    }
                }
                me.compacting.store(false, Ordering::Release);
                // A delete may have found the flag still set just now.
                if me.candidates().is_empty() || me.compacting.swap(true, Ordering::AcqRel) {
                    return;
                }
            })
            .expect("a thread can be started");
        // The one before has left its loop (the flag was clear): joining
        // it waits at most for its last check.
        if let Some(before) = self.compactor.lock().replace(thread) {
            let _ = before.join();
        }
    }

    /// Stops compaction and waits for its thread: call before the process
    /// exits or the store is opened again. A pack part way through keeps
    /// what was not moved yet (the next compaction moves it).
    pub(crate) fn stop_compaction(&self) {
        self.closing.store(true, Ordering::Release);
        let thread = self.compactor.lock().take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Marks a sync a user waits on (a snapshot's) until the guard
    /// drops: paced writes (seals, imports, compaction) do not start
    /// meanwhile, up to a bound.
    pub fn foreground(&self) -> direct::ForegroundGuard<'_> {
        self.foreground.enter()
    }

    /// What background removals wait on before each step (see
    /// [`crate::gradual`]): the foreground syncs of this store's engine.
    pub(crate) fn foreground_gate(&self) -> Arc<direct::Foreground> {
        self.foreground.clone()
    }

    /// What the pack files hold now.
    pub fn usage(&self) -> PackUsage {
        let st = self.state.lock();
        PackUsage {
            files: st.packs.len(),
            bytes: st.packs.values().map(|p| p.size).sum(),
            live_bytes: st.packs.values().map(|p| p.live).sum(),
            objects: st.objects,
        }
    }
}

#[cfg(test)]
mod tests;
