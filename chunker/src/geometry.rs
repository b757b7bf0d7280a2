//! Chunk geometry: how a byte range of a volume maps onto fixed-size,
//! aligned chunks.

/// Granularity of the write-back layer and of volume sizes.
pub const BLOCK_SIZE: u64 = 4096;
/// Smallest chunk size a volume may use.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest chunk size a volume may use.
pub const MAX_CHUNK_SIZE: u32 = 4 << 20;

/// A half-open byte range `[offset, offset + length)` within a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

impl ByteRange {
    /// A range starting at `offset` of `length` bytes.
    pub fn new(offset: u64, length: u64) -> Self {
        Self { offset, length }
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Invalid geometry parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// Chunk size outside 4 KiB..=4 MiB or not a power of two.
    #[error("chunk size {0} must be a power of two between 4 KiB and 4 MiB")]
    BadChunkSize(u64),
}

/// The fixed chunk size of one volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkGeometry {
    shift: u32,
}

/// The part of one chunk touched by a byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    /// Index of the chunk within the volume.
    pub index: u64,
    /// Offset of the first touched byte within the chunk.
    pub offset_in_chunk: usize,
    /// Number of touched bytes.
    pub len: usize,
    /// Offset of the first touched byte relative to the start of the range.
    pub offset_in_range: usize,
}

impl ChunkSpan {
    /// True when the span covers its whole chunk.
    pub fn is_full(&self, geometry: ChunkGeometry) -> bool {
        self.offset_in_chunk == 0 && self.len == geometry.chunk_size()
    }
}

impl ChunkGeometry {
    /// Validates a chunk size: a power of two between 4 KiB and 4 MiB.
    pub fn new(chunk_size: u64) -> Result<Self, GeometryError> {
        if !chunk_size.is_power_of_two()
            || chunk_size < MIN_CHUNK_SIZE as u64
            || chunk_size > MAX_CHUNK_SIZE as u64
        {
            return Err(GeometryError::BadChunkSize(chunk_size));
        }
        Ok(Self {
            shift: chunk_size.trailing_zeros(),
        })
    }

    /// Bytes per chunk.
    pub fn chunk_size(&self) -> usize {
        1usize << self.shift
    }

    /// 4 KiB blocks per chunk.
    pub fn blocks_per_chunk(&self) -> usize {
        self.chunk_size() / BLOCK_SIZE as usize
    }

    /// Number of chunks needed to hold `size` bytes.
    pub fn chunk_count(&self, size: u64) -> u64 {
        size.div_ceil(self.chunk_size() as u64)
    }

    /// Byte offset at which chunk `index` starts.
    pub fn chunk_start(&self, index: u64) -> u64 {
        index << self.shift
    }

    /// Index of the chunk holding byte `offset`.
    pub fn chunk_of(&self, offset: u64) -> u64 {
        offset >> self.shift
    }

    /// The chunks touched by `range`, in order.
    pub fn spans(&self, range: ByteRange) -> impl Iterator<Item = ChunkSpan> {
        let geometry = *self;
        let mut pos = range.offset;
        let end = range.end();
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let index = geometry.chunk_of(pos);
            let offset_in_chunk = (pos - geometry.chunk_start(index)) as usize;
            let len = (geometry.chunk_size() - offset_in_chunk).min((end - pos) as usize);
            let span = ChunkSpan {
                index,
                offset_in_chunk,
                len,
                offset_in_range: (pos - range.offset) as usize,
            };
            pos += len as u64;
            Some(span)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_bad_chunk_sizes() {
        for bad in [0, 1, 2048, 4095, 5000, 8 << 20, 3 << 12] {
            assert!(ChunkGeometry::new(bad).is_err(), "{bad}");
        }
        for good in [4096, 65536, 4 << 20] {
            assert_eq!(ChunkGeometry::new(good).unwrap().chunk_size() as u64, good);
        }
    }

    proptest! {
        #[test]
        fn spans_tile_the_range(shift in 12u32..=22, offset in 0u64..(1 << 30), length in 0u64..(1 << 24)) {
            let g = ChunkGeometry::new(1 << shift).unwrap();
            let spans: Vec<_> = g.spans(ByteRange::new(offset, length)).collect();
            let mut pos = offset;
            let mut in_range = 0usize;
            for s in &spans {
                prop_assert_eq!(g.chunk_start(s.index) + s.offset_in_chunk as u64, pos);
                prop_assert_eq!(s.offset_in_range, in_range);
                prop_assert!(s.len > 0 && s.offset_in_chunk + s.len <= g.chunk_size());
                pos += s.len as u64;
                in_range += s.len;
            }
            prop_assert_eq!(pos, offset + length);
        }
    }
}
