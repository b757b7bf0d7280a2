//! The dirty overlay: acknowledged, not yet sealed writes of one volume,
//! at 4 KiB granularity, grouped by chunk.
//!
//! A chunk's entry says, per block, "these bytes" or "zeros", and may say
//! "the whole chunk was zeroed first", so that a large TRIM costs one entry
//! per chunk and no data. Reads consult the overlay first and fall through
//! to older layers only for the blocks it does not hold.

use std::collections::{BTreeMap, HashMap};

use cairn_chunker::{ChunkGeometry, BLOCK_SIZE};

const BLOCK: usize = BLOCK_SIZE as usize;

/// One 4 KiB block's dirty contents.
#[derive(Clone, Debug)]
pub enum Block {
    /// These bytes (exactly 4 KiB).
    Data(Box<[u8]>),
    /// All zeros.
    Zero,
}

/// The dirty state of one chunk.
#[derive(Clone, Debug, Default)]
pub struct DirtyChunk {
    /// The whole chunk was zeroed; blocks not listed read as zeros.
    pub zero_base: bool,
    /// Dirty blocks by index within the chunk.
    pub blocks: BTreeMap<u32, Block>,
}

impl DirtyChunk {
    /// True when every block is known without reading the sealed chunk.
    pub fn is_complete(&self, blocks_per_chunk: usize) -> bool {
        self.zero_base || self.blocks.len() == blocks_per_chunk
    }

    /// Builds the chunk's full contents over `base` (the sealed chunk, or
    /// None for zeros).
    pub fn materialize(&self, chunk_size: usize, base: Option<&[u8]>) -> Vec<u8> {
        let mut out = match (self.zero_base, base) {
            (false, Some(base)) => base.to_vec(),
            _ => vec![0u8; chunk_size],
        };
        for (index, block) in &self.blocks {
            let at = *index as usize * BLOCK;
            match block {
                Block::Data(bytes) => out[at..at + BLOCK].copy_from_slice(bytes),
                Block::Zero => out[at..at + BLOCK].fill(0),
            }
        }
        out
    }
}

/// A part of a read the overlay could not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hole {
    /// Chunk index.
    pub chunk: u64,
    /// Offset within the chunk.
    pub offset_in_chunk: usize,
    /// Bytes.
    pub len: usize,
    /// Where they go in the caller's buffer.
    pub buf_offset: usize,
}

/// The dirty overlay of one volume (or one frozen generation of it).
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    chunks: HashMap<u64, DirtyChunk>,
    data_blocks: usize,
}

impl Overlay {
    /// True when nothing is dirty.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes of dirty data held in memory.
    pub fn dirty_bytes(&self) -> usize {
        self.data_blocks * BLOCK
    }

    /// Number of dirty chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Dirty chunks in index order.
    pub fn sorted_chunks(&self) -> Vec<(u64, &DirtyChunk)> {
        let mut out: Vec<_> = self.chunks.iter().map(|(i, c)| (*i, c)).collect();
        out.sort_unstable_by_key(|(i, _)| *i);
        out
    }

    fn set_block(&mut self, chunk: u64, block: u32, value: Block) {
        let entry = self.chunks.entry(chunk).or_default();
        let is_data = matches!(value, Block::Data(_));
        match entry.blocks.insert(block, value) {
            Some(Block::Data(_)) => self.data_blocks -= 1,
            Some(Block::Zero) | None => {}
        }
        if is_data {
            self.data_blocks += 1;
        }
    }

    /// Records block-aligned data at a block-aligned offset.
    pub fn write(&mut self, geometry: ChunkGeometry, offset: u64, data: &[u8]) {
        debug_assert!(offset.is_multiple_of(BLOCK_SIZE) && data.len().is_multiple_of(BLOCK));
        let per_chunk = geometry.blocks_per_chunk() as u64;
        for (i, bytes) in data.chunks_exact(BLOCK).enumerate() {
            let block = offset / BLOCK_SIZE + i as u64;
            self.set_block(
                block / per_chunk,
                (block % per_chunk) as u32,
                Block::Data(bytes.into()),
            );
        }
    }

    /// Records that a block-aligned range reads as zeros.
    pub fn zero(&mut self, geometry: ChunkGeometry, offset: u64, length: u64) {
        debug_assert!(offset.is_multiple_of(BLOCK_SIZE) && length.is_multiple_of(BLOCK_SIZE));
        let range = cairn_chunker::ByteRange::new(offset, length);
        for span in geometry.spans(range) {
            if span.is_full(geometry) {
                if let Some(old) = self.chunks.insert(
                    span.index,
                    DirtyChunk {
                        zero_base: true,
                        ..Default::default()
                    },
                ) {
                    self.data_blocks -= old
                        .blocks
                        .values()
                        .filter(|b| matches!(b, Block::Data(_)))
                        .count();
                }
            } else {
                let first = span.offset_in_chunk / BLOCK;
                for block in first..first + span.len / BLOCK {
                    self.set_block(span.index, block as u32, Block::Zero);
                }
            }
        }
    }

    /// Copies what the overlay holds for `[offset_in_chunk, +out.len())` of
    /// `chunk` into `out`, and lists the rest as holes.
    pub fn fill(
        &self,
        chunk: u64,
        offset_in_chunk: usize,
        out: &mut [u8],
        buf_offset: usize,
        holes: &mut Vec<Hole>,
    ) {
        let Some(dirty) = self.chunks.get(&chunk) else {
            holes.push(Hole {
                chunk,
                offset_in_chunk,
                len: out.len(),
                buf_offset,
            });
            return;
        };
        let mut pos = 0usize;
        while pos < out.len() {
            let at = offset_in_chunk + pos;
            let block = at / BLOCK;
            let in_block = at % BLOCK;
            let n = (BLOCK - in_block).min(out.len() - pos);
            match dirty.blocks.get(&(block as u32)) {
                Some(Block::Data(bytes)) => out[pos..pos + n].copy_from_slice(&bytes[in_block..in_block + n]),
                Some(Block::Zero) => out[pos..pos + n].fill(0),
                None if dirty.zero_base => out[pos..pos + n].fill(0),
                None => match holes.last_mut() {
                    Some(h) if h.chunk == chunk && h.buf_offset + h.len == buf_offset + pos => h.len += n,
                    _ => holes.push(Hole {
                        chunk,
                        offset_in_chunk: at,
                        len: n,
                        buf_offset: buf_offset + pos,
                    }),
                },
            }
            pos += n;
        }
    }

    /// What the overlay knows of a chunk's allocation: None when it holds
    /// nothing for it; else (whole chunk zeroed first, any data block).
    pub fn peek(&self, chunk: u64) -> Option<(bool, bool)> {
        self.chunks.get(&chunk).map(|c| {
            (
                c.zero_base,
                c.blocks.values().any(|b| matches!(b, Block::Data(_))),
            )
        })
    }

    /// Lays `newer` over `self`: used to put a frozen layer back under the
    /// active one when a seal fails.
    pub fn absorb_newer(&mut self, newer: Overlay) {
        for (index, chunk) in newer.chunks {
            if chunk.zero_base {
                if let Some(old) = self.chunks.remove(&index) {
                    self.data_blocks -= old
                        .blocks
                        .values()
                        .filter(|b| matches!(b, Block::Data(_)))
                        .count();
                }
                self.chunks.insert(
                    index,
                    DirtyChunk {
                        zero_base: true,
                        ..Default::default()
                    },
                );
            }
            for (block, value) in chunk.blocks {
                self.set_block(index, block, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> ChunkGeometry {
        ChunkGeometry::new(16384).unwrap()
    }

    #[test]
    fn fill_serves_dirty_blocks_and_reports_holes() {
        let mut o = Overlay::default();
        o.write(geo(), 4096, &[1u8; 4096]);
        o.zero(geo(), 16384, 16384); // whole chunk 1
        let mut out = vec![9u8; 32768];
        let mut holes = Vec::new();
        for span in geo().spans(cairn_chunker::ByteRange::new(0, 32768)) {
            let buf = &mut out[span.offset_in_range..span.offset_in_range + span.len];
            o.fill(
                span.index,
                span.offset_in_chunk,
                buf,
                span.offset_in_range,
                &mut holes,
            );
        }
        assert_eq!(&out[4096..8192], &[1u8; 4096][..]);
        assert!(out[16384..].iter().all(|&b| b == 0));
        assert_eq!(
            holes,
            vec![
                Hole {
                    chunk: 0,
                    offset_in_chunk: 0,
                    len: 4096,
                    buf_offset: 0
                },
                Hole {
                    chunk: 0,
                    offset_in_chunk: 8192,
                    len: 8192,
                    buf_offset: 8192
                },
            ]
        );
        assert_eq!(o.dirty_bytes(), 4096);
    }

    #[test]
    fn absorb_keeps_newer_data() {
        let mut old = Overlay::default();
        old.write(geo(), 0, &[1u8; 8192]);
        let mut new = Overlay::default();
        new.write(geo(), 4096, &[2u8; 4096]);
        old.absorb_newer(new);
        let c = old.sorted_chunks()[0].1.materialize(16384, None);
        assert_eq!(&c[..4096], &[1u8; 4096][..]);
        assert_eq!(&c[4096..8192], &[2u8; 4096][..]);
        assert_eq!(old.dirty_bytes(), 8192);
    }
}
