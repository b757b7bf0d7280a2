//! A bounded on-disk cache of framed objects, for object stores that are
//! not local (S3): a server's disk holds the objects its volumes touched,
//! so a chunk is fetched from the store once, not once per memory-cache
//! miss.
//!
//! Files are `<dir>/<kind>/<2 hex>/<64 hex>`, each the object's frame as
//! stored (compressed, crc-framed), written to a temporary name and renamed.
//! Entries are checked like store reads (crc and BLAKE3) when used; a
//! damaged or torn file is dropped and fetched again. The cache only ever
//! holds sealed, immutable objects: acknowledged writes that are not yet in
//! the object store live in the write-back journal, never here, so eviction
//! cannot lose data. Eviction is least-recently-used by bytes; the index is
//! in memory and rebuilt at start from the files (oldest modification
//! first).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

use crate::objects::ObjectKind;

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
    /// Entries dropped because their file was damaged.
    pub damaged: AtomicU64,
}

type Key = (ObjectKind, [u8; 32]);

#[derive(Debug)]
struct Index {
    lru: LruCache<Key, u64>,
    bytes: u64,
}

/// Framed objects on local disk, bounded by bytes.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    /// Counters for metrics.
    pub stats: DiskCacheStats,
}

impl DiskCache {
    /// Opens (creating) a cache directory holding at most `capacity` bytes,
    /// indexing the files already there and trimming to the budget.
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found: Vec<(std::time::SystemTime, Key, u64)> = Vec::new();
        for kind in [ObjectKind::Chunk, ObjectKind::Node] {
            let base = dir.join(kind.dir());
            let Ok(fans) = std::fs::read_dir(&base) else {
                continue;
            };
            for fan in fans.flatten() {
                for file in std::fs::read_dir(fan.path())?.flatten() {
                    let name = file.file_name();
                    let mut id = [0u8; 32];
                    let parsed = name
                        .to_str()
                        .is_some_and(|n| hex::decode_to_slice(n, &mut id).is_ok());
                    let meta = file.metadata()?;
                    if !parsed {
                        // A temporary file of an interrupted insert.
                        let _ = std::fs::remove_file(file.path());
                        continue;
                    }
                    let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    found.push((modified, (kind, id), meta.len()));
                }
            }
        }
        found.sort_by_key(|(modified, ..)| *modified);
        let cache = Self {
            dir: dir.to_path_buf(),
            capacity,
            index: Mutex::new(Index {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            stats: DiskCacheStats::default(),
        };
        let mut evicted = Vec::new();
        {
            let mut index = cache.index.lock();
            for (_, key, len) in found {
                index.lru.put(key, len);
                index.bytes += len;
            }
            cache.trim(&mut index, &mut evicted);
        }
        cache.remove_files(&evicted);
        Ok(cache)
    }

    fn file(&self, key: &Key) -> PathBuf {
        let hex = hex::encode(key.1);
        self.dir.join(key.0.dir()).join(&hex[..2]).join(hex)
    }

    /// Budget in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.index.lock().bytes
    }

    /// Objects held now.
    pub fn len(&self) -> usize {
        self.index.lock().lru.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an object is cached (does not touch its recency).
    pub fn contains(&self, kind: ObjectKind, id: &[u8; 32]) -> bool {
        self.index.lock().lru.contains(&(kind, *id))
    }

    /// An object's frame, if cached; marks it recently used. Blocking file
    /// I/O: call from a blocking context.
    pub fn get(&self, kind: ObjectKind, id: &[u8; 32]) -> Option<Bytes> {
        let key = (kind, *id);
        if self.index.lock().lru.get(&key).is_none() {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match std::fs::read(self.file(&key)) {
            Ok(data) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                Some(Bytes::from(data))
            }
            Err(_) => {
                self.forget(kind, id);
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Drops an entry whose file turned out damaged or missing.
    pub fn forget(&self, kind: ObjectKind, id: &[u8; 32]) {
        let key = (kind, *id);
        let removed = {
            let mut index = self.index.lock();
            index.lru.pop(&key).inspect(|len| index.bytes -= len)
        };
        if removed.is_some() {
            self.stats.damaged.fetch_add(1, Ordering::Relaxed);
            let _ = std::fs::remove_file(self.file(&key));
        }
    }

    /// Caches an object's frame, evicting least-recently-used objects past
    /// the budget. Blocking file I/O: call from a blocking context. Errors
    /// (a full disk) leave the cache without the object, which only costs
    /// a later fetch.
    pub fn insert(&self, kind: ObjectKind, id: &[u8; 32], framed: &[u8]) {
        let key = (kind, *id);
        let len = framed.len() as u64;
        if len > self.capacity || self.index.lock().lru.contains(&key) {
            return;
        }
        let path = self.file(&key);
        let tmp = path.with_extension("tmp");
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, framed))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(error = %e, "could not write to the chunk cache");
            return;
        }
        let mut evicted = Vec::new();
        {
            let mut index = self.index.lock();
            if index.lru.put(key, len).is_none() {
                index.bytes += len;
            }
            self.trim(&mut index, &mut evicted);
        }
        self.stats.inserts.fetch_add(1, Ordering::Relaxed);
        self.remove_files(&evicted);
    }

    fn trim(&self, index: &mut Index, evicted: &mut Vec<Key>) {
        while index.bytes > self.capacity {
            let Some((key, len)) = index.lru.pop_lru() else {
                break;
            };
            index.bytes -= len;
            evicted.push(key);
        }
    }

    fn remove_files(&self, evicted: &[Key]) {
        for key in evicted {
            let _ = std::fs::remove_file(self.file(key));
        }
        self.stats
            .evictions
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_by_bytes_and_reopens_with_the_same_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 3 * 1000).unwrap();
        let ids: Vec<[u8; 32]> = (0..4u8).map(|i| [i; 32]).collect();
        for (i, id) in ids.iter().take(3).enumerate() {
            cache.insert(ObjectKind::Chunk, id, &vec![i as u8; 1000]);
        }
        assert_eq!(
            cache.get(ObjectKind::Chunk, &ids[0]).unwrap()[..],
            [0u8; 1000][..]
        );
        cache.insert(ObjectKind::Node, &ids[3], &[9u8; 1000]);
        assert!(
            !cache.contains(ObjectKind::Chunk, &ids[1]),
            "least recently used goes first"
        );
        assert!(cache.contains(ObjectKind::Chunk, &ids[0]));
        assert_eq!(cache.bytes(), 3000);
        assert_eq!(cache.stats.evictions.load(Ordering::Relaxed), 1);
        drop(cache);

        let reopened = DiskCache::open(dir.path(), 2 * 1000).unwrap();
        assert_eq!(reopened.len(), 2, "reopening trims to the new budget");
        assert_eq!(reopened.bytes(), 2000);
        assert!(reopened.get(ObjectKind::Chunk, &ids[1]).is_none());
    }

    #[test]
    fn a_vanished_file_is_a_miss_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let id = [7u8; 32];
        cache.insert(ObjectKind::Chunk, &id, b"frame");
        std::fs::remove_file(cache.file(&(ObjectKind::Chunk, id))).unwrap();
        assert!(cache.get(ObjectKind::Chunk, &id).is_none());
        assert!(!cache.contains(ObjectKind::Chunk, &id));
        assert_eq!(cache.bytes(), 0);
    }
}
