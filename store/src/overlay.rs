//! The dirty overlay: acknowledged, not yet sealed writes of one volume,
//! at 4 KiB granularity, grouped by chunk.
//!
//! A chunk's entry says, per block, "these bytes, at this place in a log
//! file" or "zeros", and may say "the whole chunk was zeroed first", so
//! that a large TRIM costs one entry per chunk and no data. The bytes stay
//! in the journal's log files (page cache, then disk): memory holds about
//! 24 bytes per dirty block (a sorted vector per chunk: a lone random 4 KiB
//! block costs about 100 bytes with its chunk's entry), so the dirty set can
//! be GiBs. A whole chunk written straight to the object store is one
//! entry naming its stored chunk: its bytes are in no log. Reads consult
//! the overlay first and fall through to older layers only for the blocks
//! it does not hold.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_chunker::{ChunkGeometry, ChunkId, BLOCK_SIZE};

use crate::error::Result;
use crate::journal::{self, LogFile, Record};

const BLOCK: usize = BLOCK_SIZE as usize;

/// One 4 KiB block's dirty contents (16 bytes: `Zero` takes the `Arc`'s
/// niche).
#[derive(Clone, Debug)]
pub enum Block {
    /// These bytes (exactly 4 KiB), in a log file at `at`.
    Logged {
        /// The log holding them.
        log: Arc<LogFile>,
        /// Their offset in it.
        at: u64,
    },
    /// All zeros.
    Zero,
}

/// The dirty state of one chunk.
#[derive(Clone, Debug, Default)]
pub struct DirtyChunk {
    /// The whole chunk was zeroed; blocks not listed read as zeros.
    pub zero_base: bool,
    /// The whole chunk was written as this stored chunk; blocks not listed
    /// read from it (never set together with `zero_base`).
    pub stored: Option<ChunkId>,
    /// Dirty blocks by index within the chunk, sorted, no index twice.
    blocks: Vec<(u16, Block)>,
}

impl DirtyChunk {
    /// True when every block is known without reading any chunk.
    pub fn is_complete(&self, blocks_per_chunk: usize) -> bool {
        self.zero_base || self.blocks.len() == blocks_per_chunk
    }

    /// True when no block was written over the whole chunk's base.
    pub fn has_blocks(&self) -> bool {
        !self.blocks.is_empty()
    }

    /// A chunk that is wholly `base`: zeros or a stored chunk.
    fn whole(base: Option<ChunkId>) -> Self {
        Self {
            zero_base: base.is_none(),
            stored: base,
            blocks: Vec::new(),
        }
    }

    /// The dirty block at `index`, if any.
    fn get(&self, index: u16) -> Option<&Block> {
        self.blocks
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()
            .map(|at| &self.blocks[at].1)
    }

    /// Sets block `index`; returns what it replaced. Grows by one slot at a
    /// time while small (most chunks of random writes hold one block).
    fn insert(&mut self, index: u16, value: Block) -> Option<Block> {
        match self.blocks.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => Some(std::mem::replace(&mut self.blocks[at].1, value)),
            Err(at) => {
                if self.blocks.len() == self.blocks.capacity() {
                    let more = self.blocks.len().clamp(1, 64);
                    self.blocks
                        .reserve_exact(if self.blocks.len() < 4 { 1 } else { more });
                }
                self.blocks.insert(at, (index, value));
                None
            }
        }
    }

    /// Number of blocks holding data (not zeros).
    fn data_blocks(&self) -> usize {
        self.blocks
            .iter()
            .filter(|(_, b)| matches!(b, Block::Logged { .. }))
            .count()
    }

    /// Builds the chunk's full contents over `base` (the sealed or the
    /// `stored` chunk, whose buffer it takes and writes over, or None for
    /// zeros), reading dirty blocks from their logs (contiguous runs in
    /// one read).
    pub fn materialize(&self, chunk_size: usize, base: Option<Vec<u8>>) -> Result<Vec<u8>> {
        let mut out = match (self.zero_base, base) {
            (false, Some(base)) => base,
            _ => vec![0u8; chunk_size],
        };
        debug_assert_eq!(out.len(), chunk_size);
        let mut reads = Vec::new();
        for (index, block) in &self.blocks {
            let at = usize::from(*index) * BLOCK;
            match block {
                Block::Logged { log, at: pos } => push_read(&mut reads, log, *pos, BLOCK, at),
                Block::Zero => out[at..at + BLOCK].fill(0),
            }
        }
        read_logs(&reads, &mut out)?;
        Ok(out)
    }
}

/// A piece of a read served from a log file.
#[derive(Clone, Debug)]
pub struct LogRead {
    /// The log.
    pub log: Arc<LogFile>,
    /// Offset in the log.
    pub at: u64,
    /// Bytes.
    pub len: usize,
    /// Where they go in the caller's buffer.
    pub buf_offset: usize,
}

/// Adds a log read, merged with the previous one when it continues it in
/// both the log and the buffer.
fn push_read(reads: &mut Vec<LogRead>, log: &Arc<LogFile>, at: u64, len: usize, buf_offset: usize) {
    if let Some(last) = reads.last_mut() {
        if Arc::ptr_eq(&last.log, log)
            && last.at + last.len as u64 == at
            && last.buf_offset + last.len == buf_offset
        {
            last.len += len;
            return;
        }
    }
    reads.push(LogRead {
        log: log.clone(),
        at,
        len,
        buf_offset,
    });
}

/// Performs log reads into `buf`.
pub fn read_logs(reads: &[LogRead], buf: &mut [u8]) -> Result<()> {
    for r in reads {
        r.log
            .read_at(&mut buf[r.buf_offset..r.buf_offset + r.len], r.at)?;
    }
    Ok(())
}

/// A part of a read served from a stored chunk a layer names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredRead {
    /// The stored chunk.
    pub id: ChunkId,
    /// What of it goes where.
    pub hole: Hole,
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

impl Hole {
    /// The whole of `[offset, +len)`, one hole per chunk it touches.
    pub fn all(geometry: ChunkGeometry, offset: u64, len: usize) -> Vec<Hole> {
        geometry
            .spans(cairn_chunker::ByteRange::new(offset, len as u64))
            .map(|s| Hole {
                chunk: s.index,
                offset_in_chunk: s.offset_in_chunk,
                len: s.len,
                buf_offset: s.offset_in_range,
            })
            .collect()
    }
}

/// The dirty overlay of one volume (or one frozen generation of it).
#[derive(Clone, Debug, Default)]
pub struct Overlay {
    chunks: HashMap<u64, DirtyChunk>,
    data_blocks: usize,
    /// Entries naming a stored chunk.
    stored_chunks: usize,
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

    /// Number of whole chunks written as stored chunks (their bytes are
    /// in the object store, not in a log).
    pub fn stored_chunks(&self) -> usize {
        self.stored_chunks
    }

    /// The stored chunks the layer names.
    pub fn stored_ids(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.chunks.values().filter_map(|c| c.stored)
    }

    /// Makes chunk `index` wholly `base` (zeros when `None`), dropping
    /// what was dirty in it.
    fn replace_whole(&mut self, index: u64, base: Option<ChunkId>) {
        self.stored_chunks += usize::from(base.is_some());
        if let Some(old) = self.chunks.insert(index, DirtyChunk::whole(base)) {
            self.data_blocks -= old.data_blocks();
            self.stored_chunks -= usize::from(old.stored.is_some());
        }
    }

    /// Records that chunks `first, first + 1, …` are now the stored chunks
    /// `ids` (the zero id reads as zeros).
    pub fn store_chunks(&mut self, first: u64, ids: impl IntoIterator<Item = ChunkId>) {
        for (i, id) in ids.into_iter().enumerate() {
            self.replace_whole(first + i as u64, (!id.is_zero()).then_some(id));
        }
    }

    /// Dirty chunks in index order.
    pub fn sorted_chunks(&self) -> Vec<(u64, &DirtyChunk)> {
        let mut out: Vec<_> = self.chunks.iter().map(|(i, c)| (*i, c)).collect();
        out.sort_unstable_by_key(|(i, _)| *i);
        out
    }

    fn set_block(&mut self, chunk: u64, block: u16, value: Block) {
        let entry = self.chunks.entry(chunk).or_default();
        let is_data = matches!(value, Block::Logged { .. });
        match entry.insert(block, value) {
            Some(Block::Logged { .. }) => self.data_blocks -= 1,
            Some(Block::Zero) | None => {}
        }
        if is_data {
            self.data_blocks += 1;
        }
    }

    /// Applies a journal record appended to `log` at `at` (its first
    /// byte): how writes and replay build a layer alike.
    pub fn apply(&mut self, geometry: ChunkGeometry, record: &Record<'_>, log: &Arc<LogFile>, at: u64) {
        match *record {
            Record::Write { offset, data } => {
                self.write(geometry, offset, data.len(), log, at + journal::WRITE_DATA_AT)
            }
            Record::Chunks { offset, ids } => {
                self.store_chunks(offset / geometry.chunk_size() as u64, journal::chunk_ids(ids))
            }
            Record::Zero { offset, length } => self.zero(geometry, offset, length),
        }
    }

    /// Records `len` bytes of block-aligned data at a block-aligned
    /// `offset`, stored in `log` from `at` on.
    pub fn write(&mut self, geometry: ChunkGeometry, offset: u64, len: usize, log: &Arc<LogFile>, at: u64) {
        debug_assert!(offset.is_multiple_of(BLOCK_SIZE) && len.is_multiple_of(BLOCK));
        let per_chunk = geometry.blocks_per_chunk() as u64;
        for i in 0..(len / BLOCK) as u64 {
            let block = offset / BLOCK_SIZE + i;
            self.set_block(
                block / per_chunk,
                (block % per_chunk) as u16,
                Block::Logged {
                    log: log.clone(),
                    at: at + i * BLOCK_SIZE,
                },
            );
        }
    }

    /// Records that a block-aligned range reads as zeros.
    pub fn zero(&mut self, geometry: ChunkGeometry, offset: u64, length: u64) {
        debug_assert!(offset.is_multiple_of(BLOCK_SIZE) && length.is_multiple_of(BLOCK_SIZE));
        let range = cairn_chunker::ByteRange::new(offset, length);
        for span in geometry.spans(range) {
            if span.is_full(geometry) {
                self.replace_whole(span.index, None);
            } else {
                let first = span.offset_in_chunk / BLOCK;
                for block in first..first + span.len / BLOCK {
                    self.set_block(span.index, block as u16, Block::Zero);
                }
            }
        }
    }

    /// Serves what the overlay holds for `[offset_in_chunk, +out.len())` of
    /// `chunk`: zeros are filled into `out` at once, dirty data is listed
    /// in `reads` (from the logs, done by the caller outside any lock),
    /// parts of a stored chunk in `stored`, and the rest is listed as
    /// holes.
    #[allow(clippy::too_many_arguments)]
    pub fn fill(
        &self,
        chunk: u64,
        offset_in_chunk: usize,
        out: &mut [u8],
        buf_offset: usize,
        holes: &mut Vec<Hole>,
        reads: &mut Vec<LogRead>,
        stored: &mut Vec<StoredRead>,
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
            match dirty.get(block as u16) {
                Some(Block::Logged { log, at: logged }) => {
                    push_read(reads, log, logged + in_block as u64, n, buf_offset + pos)
                }
                Some(Block::Zero) => out[pos..pos + n].fill(0),
                None if dirty.zero_base => out[pos..pos + n].fill(0),
                None => {
                    let hole = Hole {
                        chunk,
                        offset_in_chunk: at,
                        len: n,
                        buf_offset: buf_offset + pos,
                    };
                    match dirty.stored {
                        Some(id) => match stored.last_mut() {
                            Some(s)
                                if s.hole.chunk == chunk
                                    && s.hole.buf_offset + s.hole.len == hole.buf_offset =>
                            {
                                s.hole.len += n
                            }
                            _ => stored.push(StoredRead { id, hole }),
                        },
                        None => match holes.last_mut() {
                            Some(h) if h.chunk == chunk && h.buf_offset + h.len == hole.buf_offset => {
                                h.len += n
                            }
                            _ => holes.push(hole),
                        },
                    }
                }
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
                c.stored.is_some() || c.blocks.iter().any(|(_, b)| matches!(b, Block::Logged { .. })),
            )
        })
    }

    /// Lays `newer` over `self`: used to put a frozen layer back under the
    /// active one when a seal fails.
    pub fn absorb_newer(&mut self, newer: Overlay) {
        for (index, chunk) in newer.chunks {
            if chunk.zero_base || chunk.stored.is_some() {
                self.replace_whole(index, chunk.stored);
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
    use crate::journal::{JournalDir, Record, WRITE_DATA_AT};

    fn geo() -> ChunkGeometry {
        ChunkGeometry::new(16384).unwrap()
    }

    /// A log in a temp dir, and a helper writing `data` at `offset` through
    /// it into an overlay.
    struct Log {
        _dir: tempfile::TempDir,
        file: Arc<LogFile>,
    }

    impl Log {
        fn new() -> Log {
            let dir = tempfile::tempdir().unwrap();
            let file = JournalDir::open(dir.path()).unwrap().create(1, 0).unwrap();
            Log { _dir: dir, file }
        }

        fn write(&self, o: &mut Overlay, offset: u64, data: &[u8]) {
            let at = self.file.append(&Record::Write { offset, data }).unwrap();
            o.write(geo(), offset, data.len(), &self.file, at + WRITE_DATA_AT);
        }
    }

    /// Runs `fill` over every chunk that `[offset, +out.len())` touches.
    fn fill_range(o: &Overlay, offset: u64, out: &mut [u8]) -> (Vec<Hole>, Vec<LogRead>, Vec<StoredRead>) {
        let (mut holes, mut reads, mut stored) = (Vec::new(), Vec::new(), Vec::new());
        for span in geo().spans(cairn_chunker::ByteRange::new(offset, out.len() as u64)) {
            let buf = &mut out[span.offset_in_range..span.offset_in_range + span.len];
            o.fill(
                span.index,
                span.offset_in_chunk,
                buf,
                span.offset_in_range,
                &mut holes,
                &mut reads,
                &mut stored,
            );
        }
        (holes, reads, stored)
    }

    #[test]
    fn fill_serves_dirty_blocks_and_reports_holes() {
        let log = Log::new();
        let mut o = Overlay::default();
        log.write(&mut o, 4096, &[1u8; 4096]);
        o.zero(geo(), 16384, 16384); // whole chunk 1
        let mut out = vec![9u8; 32768];
        let (holes, reads, _) = fill_range(&o, 0, &mut out);
        read_logs(&reads, &mut out).unwrap();
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
    fn contiguous_blocks_are_read_at_once() {
        let log = Log::new();
        let mut o = Overlay::default();
        let data: Vec<u8> = (0..32768u32).map(|i| (i / 7) as u8).collect();
        log.write(&mut o, 0, &data);
        let mut out = vec![0u8; 30000];
        let (holes, reads, _) = fill_range(&o, 1000, &mut out);
        assert!(holes.is_empty());
        assert_eq!(reads.len(), 1, "one log read for one contiguous write");
        read_logs(&reads, &mut out).unwrap();
        assert_eq!(out, data[1000..31000]);
    }

    #[test]
    fn dirty_chunk_blocks_stay_sorted_unique_and_small() {
        assert_eq!(std::mem::size_of::<Block>(), 16, "Zero uses the Arc's niche");
        let log = Log::new();
        let logged = |at| Block::Logged {
            log: log.file.clone(),
            at,
        };
        let mut c = DirtyChunk::default();
        assert!(c.insert(9, logged(1)).is_none());
        assert_eq!(c.blocks.capacity(), 1, "a lone block takes one slot");
        for (i, index) in [3u16, 15, 0, 9, 7, 3].into_iter().enumerate() {
            c.insert(index, logged(100 + i as u64));
        }
        let indices: Vec<u16> = c.blocks.iter().map(|(i, _)| *i).collect();
        assert_eq!(indices, vec![0, 3, 7, 9, 15]);
        assert!(
            matches!(c.get(3), Some(Block::Logged { at: 105, .. })),
            "the later write wins"
        );
        assert!(matches!(
            c.insert(9, Block::Zero),
            Some(Block::Logged { at: 103, .. })
        ));
        assert_eq!(c.data_blocks(), 4);
        assert!(c.get(4).is_none());
    }

    #[test]
    fn a_stored_chunk_serves_what_no_later_block_covers() {
        let log = Log::new();
        let mut o = Overlay::default();
        log.write(&mut o, 0, &[1u8; 4096]);
        let id = ChunkId::of(&[5u8; 16384]);
        o.store_chunks(0, [id, ChunkId::ZERO, id]);
        assert_eq!(o.dirty_bytes(), 0, "the logged block was replaced");
        assert_eq!(o.stored_chunks(), 2, "the zero id is no stored chunk");
        log.write(&mut o, 8192, &[2u8; 4096]);
        let mut out = vec![9u8; 49152];
        let (holes, reads, stored) = fill_range(&o, 0, &mut out);
        assert!(holes.is_empty(), "nothing left for the sealed tree");
        assert_eq!(reads.len(), 1);
        let part = |chunk, offset_in_chunk, len, buf_offset| StoredRead {
            id,
            hole: Hole {
                chunk,
                offset_in_chunk,
                len,
                buf_offset,
            },
        };
        assert_eq!(
            stored,
            vec![
                part(0, 0, 8192, 0),
                part(0, 12288, 4096, 12288),
                part(2, 0, 16384, 32768)
            ],
            "one part per chunk, even of the same content"
        );
        assert!(
            out[16384..32768].iter().all(|&b| b == 0),
            "chunk 1 reads as zeros"
        );
        assert_eq!(o.peek(0), Some((false, true)));
        o.zero(geo(), 0, 16384);
        assert_eq!(o.stored_chunks(), 1);
    }

    #[test]
    fn absorb_keeps_newer_data() {
        let log = Log::new();
        let mut old = Overlay::default();
        log.write(&mut old, 0, &[1u8; 8192]);
        let mut new = Overlay::default();
        log.write(&mut new, 4096, &[2u8; 4096]);
        old.absorb_newer(new);
        let c = old.sorted_chunks()[0].1.materialize(16384, None).unwrap();
        assert_eq!(&c[..4096], &[1u8; 4096][..]);
        assert_eq!(&c[4096..8192], &[2u8; 4096][..]);
        assert_eq!(old.dirty_bytes(), 8192);
    }
}
