//! Batch chunk work on every core.
//!
//! Ingest is two passes so that duplicates never pay for compression:
//! [`classify`] hashes (or zero-detects) every chunk of a batch in parallel;
//! the caller drops the ids its store already holds; [`encode_all`] frames
//! only the new ones, again in parallel.
//!
//! A small batch (up to `SERIAL_BYTES`, one 1 MiB NBD write's chunks) is
//! done on the calling thread instead: handing it to the pool costs more
//! in wake-ups and context switches than it saves, and concurrent small
//! batches (one per request in flight) already keep the cores busy.

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

/// Batches of at most this many bytes are worked on the calling thread.
const SERIAL_BYTES: usize = 1 << 20;

fn is_small<T: AsRef<[u8]>>(chunks: &[T]) -> bool {
    chunks.iter().map(|c| c.as_ref().len()).sum::<usize>() <= SERIAL_BYTES
}

/// Classifies a batch of chunks (in parallel unless it is small),
/// preserving order.
pub fn classify<T: AsRef<[u8]> + Sync>(chunks: &[T]) -> Vec<Classified> {
    let of = |c: &T| Classified::of(c.as_ref());
    match is_small(chunks) {
        true => chunks.iter().map(of).collect(),
        false => chunks.par_iter().map(of).collect(),
    }
}

/// Frames a batch of chunks (in parallel unless it is small), preserving
/// order.
pub fn encode_all<T: AsRef<[u8]> + Sync>(chunks: &[T]) -> Vec<Vec<u8>> {
    let encode = |c: &T| frame::encode(c.as_ref());
    match is_small(chunks) {
        true => chunks.iter().map(encode).collect(),
        false => chunks.par_iter().map(encode).collect(),
    }
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

    #[test]
    fn small_and_large_batches_give_the_same_answers_in_order() {
        // 40 chunks of 64 KiB: 2.5 MiB, worked in parallel; the first 16
        // alone (1 MiB) on the calling thread.
        let chunks: Vec<Vec<u8>> = (0..40u8)
            .map(|i| match i % 5 {
                0 => vec![0u8; 65536],
                _ => (0..65536u32).map(|j| (j % 251) as u8 ^ i).collect(),
            })
            .collect();
        let large = classify(&chunks);
        let small = classify(&chunks[..16]);
        assert!(is_small(&chunks[..16]) && !is_small(&chunks));
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(large[i], Classified::of(chunk), "chunk {i}");
        }
        assert_eq!(small[..], large[..16]);
        let frames = encode_all(&chunks);
        assert_eq!(encode_all(&chunks[..16])[..], frames[..16]);
        for (i, framed) in frames.iter().enumerate() {
            assert_eq!(frame::decode(framed, None).unwrap(), chunks[i], "chunk {i}");
        }
    }
}
