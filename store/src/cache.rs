//! A bounded, byte-budgeted LRU of decompressed chunks, so a cached read is
//! a memcpy.

use std::sync::Arc;

use bytes::Bytes;
use cairn_chunker::ChunkId;
use lru::LruCache;
use parking_lot::Mutex;

use crate::hydrate::ChangeFeed;

/// Decompressed chunks by id, evicted least-recently-used past `capacity` bytes.
#[derive(Debug)]
pub struct ChunkCache {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Where cached chunks are kept, apart from the heap.
    slabs: crate::slab::Slabs,
    /// Told of every chunk taken in or let go (hydration counts).
    feed: Option<Arc<ChangeFeed>>,
}

#[derive(Debug)]
struct Inner {
    map: LruCache<ChunkId, Bytes>,
    bytes: usize,
}

impl ChunkCache {
    /// A cache holding at most `capacity` bytes of chunk data.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity,
            slabs: Default::default(),
            feed: None,
        }
    }

    /// Notes every chunk taken in or let go in `feed` from now on.
    pub fn set_feed(&mut self, feed: Arc<ChangeFeed>) {
        self.feed = Some(feed);
    }

    fn noted(&self, id: ChunkId) {
        if let Some(feed) = &self.feed {
            feed.note(id);
        }
    }

    /// A cached chunk, marking it recently used.
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        self.inner.lock().map.get(id).cloned()
    }

    /// Whether a chunk is cached (does not touch its recency).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.inner.lock().map.contains(id)
    }

    /// Caches a chunk, evicting old ones past the budget. Returns the
    /// cached copy (in a slot of [`crate::slab`], so the caller's buffer
    /// can go), or `data` when it is not cached.
    pub fn insert(&self, id: ChunkId, data: Bytes) -> Bytes {
        if data.len() > self.capacity {
            return data;
        }
        let data = self.slabs.keep(&data);
        let mut inner = self.inner.lock();
        let len = data.len();
        if let Some(old) = inner.map.put(id, data.clone()) {
            inner.bytes -= old.len();
        }
        inner.bytes += len;
        self.noted(id);
        while inner.bytes > self.capacity {
            match inner.map.pop_lru() {
                Some((old_id, old)) => {
                    inner.bytes -= old.len();
                    self.noted(old_id);
                }
                None => break,
            }
        }
        data
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_past_budget() {
        let cache = ChunkCache::new(3 * 4096);
        let ids: Vec<ChunkId> = (0..4u8).map(|i| ChunkId::of(&[i])).collect();
        for id in &ids[..3] {
            cache.insert(*id, vec![0u8; 4096].into());
        }
        assert!(cache.get(&ids[0]).is_some()); // 0 is now most recent
        cache.insert(ids[3], vec![0u8; 4096].into());
        assert!(cache.get(&ids[1]).is_none());
        assert!(cache.get(&ids[0]).is_some());
        assert_eq!(cache.bytes(), 3 * 4096);
    }
}
