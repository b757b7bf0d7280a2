//! Reading a `…/chunks` body ([`cairn_api_types::chunks`]): records parsed
//! as they arrive, cut into batches, each batch's frames decoded and
//! checked against their ids on the blocking pool, a few batches at once
//! (decompression is most of an export's work, and this spreads it over
//! the cores), handed on in order.

use anyhow::{anyhow, bail};
use bytes::{Buf, Bytes};
use cairn_api_types::chunks::RecordHead;
use cairn_chunker::{frame, ChunkId};
use futures::{Stream, StreamExt, TryStreamExt};

/// Records per batch at most.
const BATCH_RECORDS: usize = 64;
/// Bytes of range per batch at most (one record at least).
const BATCH_BYTES: u64 = 4 << 20;
/// Batches decoded at once.
const BATCHES_IN_FLIGHT: usize = 4;

/// A decoded part of the range, in order.
pub(super) enum Part {
    Data(Bytes),
    Zeros(u64),
}

impl Part {
    /// Bytes of the range it stands for.
    pub(super) fn len(&self) -> u64 {
        match self {
            Part::Data(bytes) => bytes.len() as u64,
            Part::Zeros(n) => *n,
        }
    }
}

/// One record as received.
enum Record {
    Zeros(u64),
    Plain(Bytes),
    Frame { len: usize, id: ChunkId, framed: Bytes },
}

/// A batch of records and the offset of its first byte.
struct Batch {
    offset: u64,
    records: Vec<Record>,
}

/// The parts of the range starting at `offset` that `body` carries,
/// decoded and checked, in batches.
pub(super) fn decoded<S>(body: S, offset: u64) -> impl Stream<Item = anyhow::Result<Vec<Part>>>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    batches(body, offset)
        .map_ok(|batch| async move {
            tokio::task::spawn_blocking(move || decode(batch))
                .await
                .map_err(|e| anyhow!("decoding task failed: {e}"))?
        })
        .try_buffered(BATCHES_IN_FLIGHT)
}

/// Decodes a batch's frames.
fn decode(batch: Batch) -> anyhow::Result<Vec<Part>> {
    let mut at = batch.offset;
    let mut parts = Vec::with_capacity(batch.records.len());
    for record in batch.records {
        let part = match record {
            Record::Zeros(n) => Part::Zeros(n),
            Record::Plain(bytes) => Part::Data(bytes),
            Record::Frame { len, id, framed } => {
                let plain = frame::decode(&framed, Some(id))
                    .map_err(|e| anyhow!("the chunk at byte {at} is corrupt: {e}"))?;
                if plain.len() < len {
                    bail!("the chunk at byte {at} holds {} bytes, not {len}", plain.len());
                }
                Part::Data(Bytes::from(plain).slice(..len))
            }
        };
        at += part.len();
        parts.push(part);
    }
    Ok(parts)
}

/// What the parser holds between polls: the rest of the last block
/// received, and the start of a record that block ended inside. Records
/// inside one block are cut from it without a copy; only those that span
/// two blocks are gathered.
struct Parser<S> {
    body: S,
    block: Bytes,
    carry: Vec<u8>,
    /// Offset of the next record.
    at: u64,
    ended: bool,
}

/// The records of `body` in batches of at most [`BATCH_RECORDS`] records
/// and [`BATCH_BYTES`] bytes of range.
fn batches<S>(body: S, offset: u64) -> impl Stream<Item = anyhow::Result<Batch>>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    let parser = Parser {
        body,
        block: Bytes::new(),
        carry: Vec::new(),
        at: offset,
        ended: false,
    };
    futures::stream::try_unfold(parser, |mut p| async move {
        let mut batch = Batch {
            offset: p.at,
            records: Vec::new(),
        };
        let mut bytes = 0u64;
        while batch.records.len() < BATCH_RECORDS && bytes < BATCH_BYTES {
            match p.next_record().await? {
                Some(record) => {
                    let n = match &record {
                        Record::Zeros(n) => *n,
                        Record::Plain(b) => b.len() as u64,
                        Record::Frame { len, .. } => *len as u64,
                    };
                    bytes += n;
                    p.at += n;
                    batch.records.push(record);
                }
                None => break,
            }
        }
        Ok((!batch.records.is_empty()).then_some((batch, p)))
    })
}

impl<S> Parser<S>
where
    S: Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    /// The next record; `None` at the end of a body that ends between
    /// records.
    async fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        loop {
            if self.carry.is_empty() {
                if let Some((head, at)) = RecordHead::decode(&self.block)? {
                    if self.block.len() >= at + head.body_len() {
                        self.block.advance(at);
                        return record(head, self.block.split_to(head.body_len())).map(Some);
                    }
                }
                self.carry.extend_from_slice(&self.block);
                self.block.clear();
            } else {
                if let Some((head, at)) = RecordHead::decode(&self.carry)? {
                    let want = at + head.body_len();
                    let take = want.saturating_sub(self.carry.len()).min(self.block.len());
                    self.carry.reserve_exact(want - self.carry.len());
                    self.carry.extend_from_slice(&self.block.split_to(take));
                    if self.carry.len() == want {
                        let body = Bytes::from(std::mem::take(&mut self.carry)).slice(at..);
                        return record(head, body).map(Some);
                    }
                } else {
                    // Not even the whole header yet: the rest of it.
                    let head_len = RecordHead::len_for(self.carry[0])?;
                    let take = (head_len - self.carry.len()).min(self.block.len());
                    self.carry.extend_from_slice(&self.block.split_to(take));
                }
                if !self.block.is_empty() {
                    continue;
                }
            }
            if self.ended {
                match self.carry.is_empty() && self.block.is_empty() {
                    true => return Ok(None),
                    false => bail!("the stream ends inside a chunk record"),
                }
            }
            match self.body.next().await {
                Some(block) => self.block = block?,
                None => self.ended = true,
            }
        }
    }
}

/// A record from its header and body; the server's message where it
/// sent an error record.
fn record(head: RecordHead, body: Bytes) -> anyhow::Result<Record> {
    Ok(match head {
        RecordHead::Zeros { len } => Record::Zeros(u64::from(len)),
        RecordHead::Plain { .. } => Record::Plain(body),
        RecordHead::Frame { len, id, .. } => Record::Frame {
            len: len as usize,
            id: ChunkId(id),
            framed: body,
        },
        RecordHead::Error { .. } => bail!("the server stopped: {}", String::from_utf8_lossy(&body)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record stream of every kind, records split across blocks at every
    /// cut, decodes to the same parts, and a corrupt frame, a stream that
    /// stops inside a record or an error record is an error.
    #[tokio::test]
    async fn records_decode_across_any_block_boundaries() {
        let chunk: Vec<u8> = (0..65536u32).map(|i| (i / 64 % 7) as u8).collect();
        let id = ChunkId::of(&chunk);
        let framed = frame::encode(&chunk);
        let mut stream = Vec::new();
        stream.extend(RecordHead::Zeros { len: 65536 }.encode());
        stream.extend(RecordHead::Plain { len: 3 }.encode());
        stream.extend([1, 2, 3]);
        stream.extend(
            RecordHead::Frame {
                len: 4096,
                id: id.0,
                frame_len: framed.len() as u32,
            }
            .encode(),
        );
        stream.extend(&framed);
        stream.extend(RecordHead::Zeros { len: 7 }.encode());
        let mut expected = vec![0u8; 65536];
        expected.extend([1, 2, 3]);
        expected.extend(&chunk[..4096]);
        expected.extend([0; 7]);

        let collect = |blocks: Vec<Bytes>| async move {
            let body = futures::stream::iter(blocks.into_iter().map(Ok::<_, reqwest::Error>));
            let batches: Vec<Vec<Part>> = decoded(body, 0).try_collect().await?;
            let mut out = Vec::new();
            for part in batches.into_iter().flatten() {
                match part {
                    Part::Data(bytes) => out.extend_from_slice(&bytes),
                    Part::Zeros(n) => out.resize(out.len() + n as usize, 0),
                }
            }
            anyhow::Ok(out)
        };
        let whole = Bytes::from(stream.clone());
        for cut in (0..whole.len()).step_by(7).chain([1, 5, 6, 46, 47, 50]) {
            let blocks = vec![whole.slice(..cut), whole.slice(cut..)];
            assert_eq!(collect(blocks).await.unwrap(), expected, "cut at {cut}");
        }
        let bytewise = (0..whole.len()).map(|i| whole.slice(i..i + 1)).collect();
        assert_eq!(collect(bytewise).await.unwrap(), expected);

        let truncated = vec![whole.slice(..whole.len() - 3)];
        let err = collect(truncated).await.unwrap_err().to_string();
        assert!(err.contains("ends inside a chunk record"), "{err}");

        let mut corrupt = stream.clone();
        let payload_at = 5 + 5 + 3 + 41 + 30;
        corrupt[payload_at] ^= 1;
        let err = collect(vec![Bytes::from(corrupt)]).await.unwrap_err().to_string();
        assert!(err.contains("the chunk at byte 65539 is corrupt"), "{err}");

        // An error record: the server's reason, split across blocks too.
        let mut failed = stream.clone();
        let reason = b"reading byte 65536: object missing";
        failed.extend(
            RecordHead::Error {
                len: reason.len() as u32,
            }
            .encode(),
        );
        failed.extend(reason);
        let failed = Bytes::from(failed);
        for cut in [stream.len() + 2, failed.len() - 4] {
            let blocks = vec![failed.slice(..cut), failed.slice(cut..)];
            let err = collect(blocks).await.unwrap_err().to_string();
            assert_eq!(err, "the server stopped: reading byte 65536: object missing");
        }
    }
}
