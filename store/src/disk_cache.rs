//! A bounded on-disk cache of framed objects, for object stores that are
//! not local (S3): a server's disk holds the objects its volumes touched,
//! so a chunk is fetched from the store once, not once per memory-cache
//! miss.
//!
//! Objects are appended to segment files (`<dir>/seg-<n>.cache`, up to
//! [`SEGMENT_BYTES`] each), each entry `[magic][kind][id][len]` followed by
//! the object's frame as stored (compressed, crc-framed). One file per
//! object would cost an inode allocation per insert, which profiling showed
//! to be half the CPU of a cold read. The index (object → segment, offset)
//! is in memory and rebuilt at start by scanning the segments (a torn tail
//! is cut off). Space is reclaimed a whole segment at a time, oldest first;
//! once the cache is more than half full, a hit on an object in the older
//! half of the segments appends it again, so objects in use survive (an
//! approximation of LRU, like CLOCK).
//!
//! Entries are checked like store reads (crc and BLAKE3) when used; a
//! damaged one is dropped and fetched again. The cache only ever holds
//! sealed, immutable objects: acknowledged writes that are not yet in the
//! object store live in the write-back journal, never here, so eviction
//! cannot lose data.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use cairn_chunker::ChunkId;

use crate::hydrate::ChangeFeed;
use crate::objects::ObjectKind;

/// Largest segment file.
pub const SEGMENT_BYTES: u64 = 64 << 20;
const MAGIC: u32 = 0xCA1C_0B1E;
const HEADER: usize = 4 + 1 + 32 + 4;

/// Hit, miss and eviction counters.
#[derive(Debug, Default)]
pub struct DiskCacheStats {
    /// Reads served from the disk cache.
    pub hits: AtomicU64,
    /// Reads the disk cache could not serve.
    pub misses: AtomicU64,
    /// Objects evicted to stay within the budget.
    pub evictions: AtomicU64,
    /// Objects written into the cache.
    pub inserts: AtomicU64,
    /// Entries dropped because they were damaged.
    pub damaged: AtomicU64,
}

type Key = (ObjectKind, [u8; 32]);

#[derive(Clone, Copy, Debug)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    bytes: u64,
    keys: Vec<Key>,
}

#[derive(Debug)]
struct Inner {
    index: HashMap<Key, Loc>,
    segments: BTreeMap<u64, Segment>,
    /// Bytes of all segment files.
    bytes: u64,
}

/// Framed objects on local disk, bounded by bytes.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    /// Counters for metrics.
    pub stats: DiskCacheStats,
    /// Told of every chunk taken in or let go (hydration counts).
    feed: Option<Arc<ChangeFeed>>,
}

fn kind_byte(kind: ObjectKind) -> u8 {
    match kind {
        ObjectKind::Chunk => 0,
        ObjectKind::Node => 1,
    }
}

impl DiskCache {
    /// Opens (creating) a cache directory holding at most `capacity` bytes,
    /// indexing the segments already there and trimming to the budget.
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Several segments even for small budgets, so eviction frees a
        // fraction of the cache, not all of it.
        let segment_bytes = (capacity / 8).clamp(64 << 10, SEGMENT_BYTES);
        let mut inner = Inner {
            index: HashMap::new(),
            segments: BTreeMap::new(),
            bytes: 0,
        };
        let mut numbers: Vec<u64> = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("seg-")?.strip_suffix(".cache")?.parse().ok()
            })
            .collect();
        numbers.sort_unstable();
        for number in numbers {
            let path = dir.join(format!("seg-{number}.cache"));
            let file = std::fs::OpenOptions::new().read(true).append(true).open(&path)?;
            let data = std::fs::read(&path)?;
            let mut at = 0usize;
            let mut keys = Vec::new();
            while let Some((key, len)) = parse_header(&data[at..]) {
                if data.len() - at - HEADER < len as usize {
                    break;
                }
                inner.index.insert(
                    key,
                    Loc {
                        segment: number,
                        offset: (at + HEADER) as u64,
                        len,
                    },
                );
                keys.push(key);
                at += HEADER + len as usize;
            }
            // A torn tail (crash mid-append) is cut off.
            file.set_len(at as u64)?;
            inner.bytes += at as u64;
            inner.segments.insert(
                number,
                Segment {
                    file: Arc::new(file),
                    bytes: at as u64,
                    keys,
                },
            );
        }
        let cache = Self {
            dir: dir.to_path_buf(),
            capacity,
            segment_bytes,
            inner: Mutex::new(inner),
            stats: DiskCacheStats::default(),
            feed: None,
        };
        let evicted = cache.trim(&mut cache.inner.lock());
        cache.remove_segments(evicted);
        Ok(cache)
    }

    /// Notes every chunk taken in or let go in `feed` from now on.
    pub fn with_feed(mut self, feed: Arc<ChangeFeed>) -> Self {
        self.feed = Some(feed);
        self
    }

    fn noted(&self, key: &Key) {
        if let (Some(feed), ObjectKind::Chunk) = (&self.feed, key.0) {
            feed.note(ChunkId(key.1));
        }
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("seg-{number}.cache"))
    }

    /// Budget in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held on disk now (segment files, superseded entries included).
    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// Objects held now.
    pub fn len(&self) -> usize {
        self.inner.lock().index.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an object is cached.
    pub fn contains(&self, kind: ObjectKind, id: &[u8; 32]) -> bool {
        self.inner.lock().index.contains_key(&(kind, *id))
    }

    /// An object's frame, if cached. Blocking file I/O: call from a
    /// blocking context.
    pub fn get(&self, kind: ObjectKind, id: &[u8; 32]) -> Option<Bytes> {
        let key = (kind, *id);
        let found = {
            let inner = self.inner.lock();
            inner.index.get(&key).and_then(|loc| {
                let segment = inner.segments.get(&loc.segment)?;
                let oldest = *inner.segments.keys().next()?;
                let newest = *inner.segments.keys().next_back()?;
                // Re-append only when eviction draws near: a scan of a
                // cache with room to spare writes nothing.
                let old = loc.segment < oldest + (newest - oldest).div_ceil(2);
                let pressed = inner.bytes > self.capacity / 2;
                Some((
                    *loc,
                    segment.file.clone(),
                    old && pressed && inner.segments.len() > 2,
                ))
            })
        };
        let Some((loc, file, promote)) = found else {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let mut data = vec![0u8; loc.len as usize];
        if file.read_exact_at(&mut data, loc.offset).is_err() {
            self.forget(kind, id);
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        if promote {
            // Still in use: keep it past the eviction of its old segment.
            self.append(key, &data);
        }
        Some(Bytes::from(data))
    }

    /// Drops an entry that turned out damaged.
    pub fn forget(&self, kind: ObjectKind, id: &[u8; 32]) {
        if self.inner.lock().index.remove(&(kind, *id)).is_some() {
            self.stats.damaged.fetch_add(1, Ordering::Relaxed);
            self.noted(&(kind, *id));
        }
    }

    /// Caches an object's frame, evicting the oldest segments past the
    /// budget. Blocking file I/O: call from a blocking context. Errors (a
    /// full disk) leave the cache without the object, which only costs a
    /// later fetch.
    pub fn insert(&self, kind: ObjectKind, id: &[u8; 32], framed: &[u8]) {
        let key = (kind, *id);
        if framed.len() as u64 + HEADER as u64 > self.segment_bytes || self.contains(kind, id) {
            return;
        }
        if self.append(key, framed) {
            self.stats.inserts.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn append(&self, key: Key, framed: &[u8]) -> bool {
        let mut entry = Vec::with_capacity(HEADER + framed.len());
        entry.extend_from_slice(&MAGIC.to_le_bytes());
        entry.push(kind_byte(key.0));
        entry.extend_from_slice(&key.1);
        entry.extend_from_slice(&(framed.len() as u32).to_le_bytes());
        entry.extend_from_slice(framed);
        let mut inner = self.inner.lock();
        let need_new = inner
            .segments
            .last_key_value()
            .is_none_or(|(_, s)| s.bytes + entry.len() as u64 > self.segment_bytes);
        if need_new {
            let number = inner.segments.last_key_value().map_or(0, |(n, _)| n + 1);
            let file = match std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(self.segment_path(number))
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "could not create a chunk cache segment");
                    return false;
                }
            };
            inner.segments.insert(
                number,
                Segment {
                    file: Arc::new(file),
                    bytes: 0,
                    keys: Vec::new(),
                },
            );
        }
        let (&number, segment) = inner.segments.last_key_value().expect("a segment exists");
        let offset = segment.bytes;
        if let Err(e) = (&*segment.file).write_all(&entry) {
            // Cut off whatever part was written.
            let _ = segment.file.set_len(offset);
            tracing::warn!(error = %e, "could not write to the chunk cache");
            return false;
        }
        let segment = inner.segments.get_mut(&number).expect("just used");
        segment.bytes += entry.len() as u64;
        segment.keys.push(key);
        inner.bytes += entry.len() as u64;
        inner.index.insert(
            key,
            Loc {
                segment: number,
                offset: offset + HEADER as u64,
                len: framed.len() as u32,
            },
        );
        self.noted(&key);
        let evicted = self.trim(&mut inner);
        drop(inner);
        self.remove_segments(evicted);
        true
    }

    /// Drops the oldest segments from the index until within the budget
    /// (never the one being appended to) and returns their numbers, for
    /// [`DiskCache::remove_segments`] once the lock is released.
    fn trim(&self, inner: &mut Inner) -> Vec<u64> {
        let mut gone = Vec::new();
        while inner.bytes > self.capacity && inner.segments.len() > 1 {
            let (number, segment) = inner.segments.pop_first().expect("more than one");
            inner.bytes -= segment.bytes;
            let mut evicted = 0;
            for key in segment.keys {
                if inner.index.get(&key).is_some_and(|loc| loc.segment == number) {
                    inner.index.remove(&key);
                    self.noted(&key);
                    evicted += 1;
                }
            }
            self.stats.evictions.fetch_add(evicted, Ordering::Relaxed);
            gone.push(number);
        }
        gone
    }

    /// Unlinks evicted segments, outside the lock: an unlink drops the
    /// file's cached pages (tens of ms for a full segment), and every
    /// lookup and append waits for the lock. A reader still holding a
    /// segment's file reads on from it; numbers only grow, so no new
    /// segment takes an evicted one's name.
    fn remove_segments(&self, numbers: Vec<u64>) {
        for number in numbers {
            if let Err(e) = std::fs::remove_file(self.segment_path(number)) {
                tracing::debug!(segment = number, error = %e, "could not remove an evicted cache segment");
            }
        }
    }
}

fn parse_header(data: &[u8]) -> Option<(Key, u32)> {
    if data.len() < HEADER || u32::from_le_bytes(data[..4].try_into().ok()?) != MAGIC {
        return None;
    }
    let kind = match data[4] {
        0 => ObjectKind::Chunk,
        1 => ObjectKind::Node,
        _ => return None,
    };
    let id: [u8; 32] = data[5..37].try_into().ok()?;
    let len = u32::from_le_bytes(data[37..41].try_into().ok()?);
    Some(((kind, id), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> [u8; 32] {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_le_bytes());
        id
    }

    #[test]
    fn stays_within_budget_keeps_objects_in_use_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        // 1 MiB budget: 128 KiB segments of 31 entries of 4 KiB.
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let frame = |i: u32| vec![i as u8; 4096];
        cache.insert(ObjectKind::Chunk, &id(0), &frame(0));
        for i in 1..1000u32 {
            cache.insert(ObjectKind::Chunk, &id(i), &frame(i));
            if i % 50 == 0 {
                // Object 0 is read now and then: it must survive.
                assert_eq!(cache.get(ObjectKind::Chunk, &id(0)).unwrap()[..], frame(0)[..]);
            }
            assert!(cache.bytes() <= 1 << 20, "{} bytes after {i}", cache.bytes());
        }
        assert!(
            cache.contains(ObjectKind::Chunk, &id(0)),
            "an object in use is kept"
        );
        assert!(
            !cache.contains(ObjectKind::Chunk, &id(1)),
            "an old unused one is evicted"
        );
        assert!(cache.contains(ObjectKind::Chunk, &id(999)));
        assert!(cache.stats.evictions.load(Ordering::Relaxed) > 700);
        let on_disk = || -> u64 {
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.metadata().unwrap().len())
                .sum()
        };
        assert!(
            on_disk() <= (1 << 20) + (128 << 10),
            "evicted segments leave the disk: {} bytes there",
            on_disk()
        );
        let held = cache.len();
        drop(cache);

        // A torn tail is cut off on reopen; everything before it is kept.
        let last = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .max_by_key(|p| {
                let name = p.file_name().unwrap().to_str().unwrap().to_string();
                name[4..name.len() - 6].parse::<u64>().unwrap()
            })
            .unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&MAGIC.to_le_bytes()).unwrap();
        let reopened = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(reopened.len(), held);
        assert_eq!(
            reopened.get(ObjectKind::Chunk, &id(999)).unwrap()[..],
            frame(999)[..]
        );
        reopened.insert(ObjectKind::Node, &id(5000), b"node");
        assert_eq!(
            reopened.get(ObjectKind::Node, &id(5000)).unwrap()[..],
            b"node"[..]
        );

        let smaller = {
            drop(reopened);
            DiskCache::open(dir.path(), 256 << 10).unwrap()
        };
        assert!(
            smaller.bytes() <= 256 << 10,
            "reopening trims to a smaller budget"
        );
        assert!(
            on_disk() <= (256 << 10) + (128 << 10),
            "and removes what it trims"
        );
    }

    #[test]
    fn a_forgotten_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        cache.insert(ObjectKind::Chunk, &id(7), b"frame");
        cache.forget(ObjectKind::Chunk, &id(7));
        assert!(cache.get(ObjectKind::Chunk, &id(7)).is_none());
        assert_eq!(cache.stats.damaged.load(Ordering::Relaxed), 1);
    }
}
