//! Batch chunk work on every core.
//!
//! Ingest is two passes so that duplicates never pay for compression:
//! [`classify`] hashes (or zero-detects) every chunk of a batch in parallel;
//! the caller drops the ids its store already holds; [`encode_all`] frames
//! only the new ones, again in parallel.

use rayon::prelude::*;

use crate::{frame, is_zero, ChunkId};

/// What a chunk turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classified {
    /// Every byte zero: stored as the manifest's zero sentinel.
    Zero,
    /// Data with this content id.
    Data(ChunkId),
}

impl Classified {
    /// Classifies one chunk: a zero check, then a hash if needed.
    pub fn of(chunk: &[u8]) -> Self {
        if is_zero(chunk) {
            Classified::Zero
        } else {
            Classified::Data(ChunkId::of(chunk))
        }
    }

    /// The id to record in a manifest (`ChunkId::ZERO` for zero chunks).
    pub fn id(&self) -> ChunkId {
        match self {
            Classified::Zero => ChunkId::ZERO,
            Classified::Data(id) => *id,
        }
    }
}

/// Classifies a batch of chunks in parallel, preserving order.
pub fn classify<T: AsRef<[u8]> + Sync>(chunks: &[T]) -> Vec<Classified> {
    chunks.par_iter().map(|c| Classified::of(c.as_ref())).collect()
}

/// Frames a batch of chunks in parallel, preserving order.
pub fn encode_all<T: AsRef<[u8]> + Sync>(chunks: &[T]) -> Vec<Vec<u8>> {
    chunks.par_iter().map(|c| frame::encode(c.as_ref())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_keeps_order_and_spots_zeros() {
        let chunks = vec![vec![0u8; 4096], vec![1u8; 4096], vec![0u8; 4096], vec![2u8; 4096]];
        let out = classify(&chunks);
        assert_eq!(out[0], Classified::Zero);
        assert_eq!(out[2], Classified::Zero);
        assert_eq!(out[1], Classified::Data(ChunkId::of(&chunks[1])));
        assert_eq!(out[3].id(), ChunkId::of(&chunks[3]));
        let frames = encode_all(&chunks[1..2]);
        assert_eq!(frame::decode(&frames[0], Some(out[1].id())).unwrap(), chunks[1]);
    }
}
