//! A range of a volume or snapshot as chunk pieces, for exports that
//! decode elsewhere: a clean chunk is handed on as its stored frame
//! (compressed, crc-checked here; its reader decompresses it and checks its
//! hash), a zero chunk as a length, and anything else (dirty data, part of
//! a chunk, a chunk of a clone's base still being copied, a cached chunk)
//! as plain bytes.
//!
//! Moving frames instead of plaintext takes decompression and hashing off
//! the server and moves about a third of the bytes (what `zfs send
//! --compressed` does for ZFS).

use std::sync::Arc;

use bytes::Bytes;
use cairn_chunker::{frame, ChunkGeometry, ChunkId};
use futures::future::BoxFuture;
use futures::stream::{StreamExt, TryStreamExt};

use crate::error::{Result, StoreError};
use crate::objects::ObjectLayer;
use crate::overlay::Hole;
use crate::sealed::{Backend, SealedTree};

/// Frames fetched at once for one range: a 4 MiB export step of default
/// chunks at once, so the pack store reads their frames together.
const FETCH_CONCURRENCY: usize = 64;

/// One chunk's part of a range.
#[derive(Clone, Debug)]
pub enum Piece {
    /// This many bytes of zeros.
    Zero(usize),
    /// These bytes.
    Plain(Bytes),
    /// The first `len` bytes of the plaintext of `framed`, a stored chunk
    /// frame whose crc is checked: its plaintext must hash to `id`.
    Frame {
        /// Bytes of the range it stands for.
        len: usize,
        /// The chunk's id.
        id: ChunkId,
        /// The frame as stored.
        framed: Bytes,
    },
}

impl Piece {
    /// Bytes of the range it stands for.
    pub fn len(&self) -> usize {
        match self {
            Piece::Zero(len) | Piece::Frame { len, .. } => *len,
            Piece::Plain(bytes) => bytes.len(),
        }
    }

    /// Whether it stands for no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The per-chunk parts of `[offset, +length)` of a source of `size` bytes,
/// each with whether it is a whole chunk (it starts one and runs to its
/// end or to the end of the source), the only parts a tree can hand on
/// as stored.
pub(crate) fn parts(geometry: ChunkGeometry, offset: u64, length: usize, size: u64) -> Vec<(Hole, bool)> {
    let chunk = geometry.chunk_size();
    Hole::all(geometry, offset, length)
        .into_iter()
        .map(|h| {
            let end = offset + (h.buf_offset + h.len) as u64;
            let whole = h.offset_in_chunk == 0 && (h.len == chunk || end == size);
            (h, whole)
        })
        .collect()
}

/// Reads one part of a range as plain bytes: `(offset, length)`.
pub(crate) type ReadPlain<'a> = Box<dyn Fn(u64, usize) -> BoxFuture<'a, Result<Bytes>> + Send + Sync + 'a>;

impl Backend {
    /// The pieces of `[offset, …)` cut into `parts`: the parts marked
    /// clean from `tree` (there must be one if any is), the others through
    /// `read`.
    pub(crate) async fn assemble(
        self: &Arc<Self>,
        tree: Option<SealedTree>,
        offset: u64,
        parts: Vec<(Hole, bool)>,
        read: ReadPlain<'_>,
    ) -> Result<Vec<Piece>> {
        let clean: Vec<Hole> = parts.iter().filter(|(_, c)| *c).map(|(h, _)| *h).collect();
        let mut stored = match tree {
            Some(tree) => self.tree_pieces(tree, &clean).await?.into_iter(),
            None => Vec::new().into_iter(),
        };
        let mut pieces = Vec::with_capacity(parts.len());
        for (hole, clean) in parts {
            let piece = match clean {
                true => stored.next().expect("one piece per clean part"),
                false => Piece::Plain(read(offset + hole.buf_offset as u64, hole.len).await?),
            };
            pieces.push(piece);
        }
        Ok(pieces)
    }

    /// Pieces of whole chunks of `tree`, in order.
    async fn tree_pieces(self: &Arc<Self>, tree: SealedTree, holes: &[Hole]) -> Result<Vec<Piece>> {
        let mut wanted = Vec::with_capacity(holes.len());
        for hole in holes {
            let id = self.trees.lookup(tree.root, tree.level, hole.chunk).await?;
            wanted.push((hole.len, id));
        }
        futures::stream::iter(wanted.into_iter().map(|(len, id)| {
            let objects = self.objects.clone();
            async move {
                if id.is_zero() {
                    return Ok(Piece::Zero(len));
                }
                if let Some(chunk) = objects.chunk_cached(&id) {
                    return Ok(Piece::Plain(chunk.slice(..len.min(chunk.len()))));
                }
                let framed = objects.chunk_frame(id).await?;
                Ok(Piece::Frame { len, id, framed })
            }
        }))
        .buffered(FETCH_CONCURRENCY)
        .try_collect()
        .await
    }
}

impl ObjectLayer {
    /// A chunk's stored frame with its crc checked, not decoded: from the
    /// disk cache when it holds a sound copy, else from the object store.
    pub(crate) async fn chunk_frame(&self, id: ChunkId) -> Result<Bytes> {
        let kind = crate::objects::ObjectKind::Chunk;
        if let Some(disk) = self.disk_cache() {
            let reader = disk.clone();
            let cached = tokio::task::spawn_blocking(move || reader.get(kind, &id.0))
                .await
                .expect("cache read does not panic");
            if let Some(framed) = cached {
                match frame::check(&framed) {
                    Ok(_) => return Ok(framed),
                    Err(e) => {
                        tracing::warn!(error = %e, "damaged chunk cache entry dropped; fetching from the object store");
                        disk.forget(kind, &id.0);
                    }
                }
            }
        }
        let framed = self.get_framed(kind, &id.0).await?;
        frame::check(&framed).map_err(|source| StoreError::ChunkCorrupt { id, source })?;
        Ok(framed)
    }
}
