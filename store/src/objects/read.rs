//! Reads of objects: a frame from the store, checked (crc and BLAKE3) and
//! decompressed; through the disk cache for stores that are not local;
//! chunks through the memory cache, one fetch shared by concurrent readers.

use super::*;

impl ObjectLayer {
    /// An object's frame from the object store, unchecked.
    pub(crate) async fn get_framed(&self, kind: ObjectKind, id: &[u8; 32]) -> Result<Bytes> {
        let path = self.path(kind, id);
        let got = match self.store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::ObjectMissing {
                    key: path.to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let framed = got.bytes().await?;
        self.answered.mark();
        bump(&self.stats.gets, 1);
        Ok(framed)
    }

    /// Checks a frame (crc and BLAKE3) and decompresses it.
    pub(super) async fn decode_checked(
        &self,
        kind: ObjectKind,
        id: &[u8; 32],
        framed: Bytes,
    ) -> Result<Vec<u8>> {
        let expected = ChunkId(*id);
        // Checking and decompressing a default-size chunk takes tens of
        // microseconds: cheaper in place than a hand-off to the blocking
        // pool. Large ones go there so they do not stall the reactor.
        let decoded = if framed.len() <= INLINE_DECODE_MAX {
            frame::decode(&framed, Some(expected))
        } else {
            tokio::task::spawn_blocking(move || frame::decode(&framed, Some(expected)))
                .await
                .expect("frame decoding does not panic")
        };
        decoded.map_err(|source| match kind {
            ObjectKind::Chunk => StoreError::ChunkCorrupt { id: expected, source },
            ObjectKind::Node => StoreError::NodeCorrupt {
                id: expected.to_hex(),
                reason: source.to_string(),
            },
        })
    }

    /// An object's checked plaintext: from the disk cache when it holds a
    /// sound copy, else from the object store (then kept on disk).
    async fn fetch(&self, kind: ObjectKind, id: &[u8; 32]) -> Result<Vec<u8>> {
        if let Some(disk) = &self.disk {
            let (reader, key) = (disk.clone(), *id);
            let cached = tokio::task::spawn_blocking(move || reader.get(kind, &key))
                .await
                .expect("cache read does not panic");
            if let Some(framed) = cached {
                match self.decode_checked(kind, id, framed).await {
                    Ok(plain) => return Ok(plain),
                    Err(e) => {
                        tracing::warn!(error = %e, "damaged chunk cache entry dropped; fetching from the object store");
                        disk.forget(kind, id);
                    }
                }
            }
        }
        let framed = self.get_framed(kind, id).await?;
        let plain = self.decode_checked(kind, id, framed.clone()).await?;
        self.keep_on_disk(kind, *id, framed);
        Ok(plain)
    }

    /// A chunk's plaintext, from the caches or the store. Concurrent
    /// callers for one chunk share a single fetch.
    pub async fn chunk(&self, id: ChunkId) -> Result<Bytes> {
        if let Some(hit) = self.cache.get(&id) {
            bump(&self.stats.cache_hits, 1);
            return Ok(hit);
        }
        bump(&self.stats.cache_misses, 1);
        let cell = self.inflight.lock().entry(id).or_default().clone();
        let mut fetched = false;
        let result = cell
            .get_or_try_init(|| {
                fetched = true;
                async {
                    let data: Bytes = self.fetch(ObjectKind::Chunk, &id.0).await?.into();
                    Ok::<_, StoreError>(self.cache.insert(id, data))
                }
            })
            .await
            .cloned();
        if !fetched {
            bump(&self.stats.fetch_joins, 1);
        }
        let mut inflight = self.inflight.lock();
        if inflight.get(&id).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&id);
        }
        result
    }

    /// A chunk's plaintext for a caller about to replace it with a new
    /// version (a seal merging dirty blocks into it): the cached copy if
    /// there is one, else read from the store without filling the memory
    /// cache, whose room is better spent on the new version.
    pub async fn chunk_to_rewrite(&self, id: ChunkId) -> Result<Vec<u8>> {
        if let Some(hit) = self.cache.get(&id) {
            bump(&self.stats.cache_hits, 1);
            return Ok(hit.to_vec());
        }
        bump(&self.stats.cache_misses, 1);
        self.fetch(ObjectKind::Chunk, &id.0).await
    }

    /// A chunk's plaintext if it is cached.
    pub fn chunk_cached(&self, id: &ChunkId) -> Option<Bytes> {
        let hit = self.cache.get(id)?;
        bump(&self.stats.cache_hits, 1);
        Some(hit)
    }

    /// A chunk's plaintext if it is cached, not counted as a read.
    pub fn chunk_cached_quiet(&self, id: &ChunkId) -> Option<Bytes> {
        self.cache.get(id)
    }

    /// Puts a chunk's plaintext straight into the cache (it was just written).
    pub fn cache_chunk(&self, id: ChunkId, data: Bytes) {
        self.cache.insert(id, data);
    }

    /// A node's encoded bytes from the store, checked.
    pub async fn node_bytes(&self, id: &[u8; 32]) -> Result<Vec<u8>> {
        self.fetch(ObjectKind::Node, id).await
    }
}
