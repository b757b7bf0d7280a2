//! Streamed exports: a response body that reads a volume or snapshot range
//! step by step, so no image is ever held whole in memory; as raw bytes or
//! as chunk records ([`cairn_api_types::chunks`]).
//!
//! Steps are read on their own tasks, a few ahead of the one being sent:
//! checking and decompressing chunks is CPU work, and one task would do it
//! on one core while the body waits for it.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use cairn_api_types::chunks::{RecordHead, MAX_BODY};
use cairn_store::{Engine, Piece, Readable, StoreError};
use futures::StreamExt;
use tokio_util::task::AbortOnDropHandle;

/// Bytes read per step of a streamed export.
const STEP: u64 = 1 << 20;
/// Bytes of range per step of a chunk-record export: its records are
/// about a third of that.
const CHUNKS_STEP: u64 = 4 << 20;
/// Steps read at once (each on its own task), the one being sent included:
/// enough to keep every core decoding, at most this many steps in memory.
const STEPS_IN_FLIGHT: usize = 4;

/// A body streaming the bytes of `[offset, offset + length)` of `source`.
pub fn export_body(engine: Arc<Engine>, source: Readable, offset: u64, length: u64) -> Body {
    let read = move |pos, n| {
        let (engine, source) = (engine.clone(), source.clone());
        async move {
            let mut buf = vec![0u8; n];
            engine
                .read(&source, pos, &mut buf)
                .await
                .map(|()| Bytes::from(buf))
        }
    };
    // Raw bytes have no room for a message: the body ends early with an
    // error, so the client sees a truncated transfer, never wrong bytes.
    stepped(offset, length, STEP, read, |_| None)
}

/// A body streaming `[offset, offset + length)` of `source` as chunk
/// records: clean chunks as their stored frames, which the reader decodes.
pub fn chunks_body(engine: Arc<Engine>, source: Readable, offset: u64, length: u64) -> Body {
    let read = move |pos, n| {
        let (engine, source) = (engine.clone(), source.clone());
        async move { Ok(records(&engine.read_pieces(&source, pos, n).await?)) }
    };
    stepped(offset, length, CHUNKS_STEP, read, |message| {
        Some(error_record(message))
    })
}

/// The record that tells a chunk-record reader why the body ends.
fn error_record(message: &str) -> Bytes {
    let mut end = message.len().min(MAX_BODY as usize);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = BytesMut::from(&RecordHead::Error { len: end as u32 }.encode()[..]);
    out.put_slice(&message.as_bytes()[..end]);
    out.freeze()
}

/// One step's pieces as records, in one buffer.
fn records(pieces: &[Piece]) -> Bytes {
    let size = pieces
        .iter()
        .map(|p| cairn_api_types::chunks::FRAME_HEAD + body(p).len())
        .sum();
    let mut out = BytesMut::with_capacity(size);
    for piece in pieces {
        let len = piece.len() as u32;
        let head = match piece {
            Piece::Zero(_) => RecordHead::Zeros { len },
            Piece::Plain(_) => RecordHead::Plain { len },
            Piece::Frame { id, framed, .. } => RecordHead::Frame {
                len,
                id: id.0,
                frame_len: framed.len() as u32,
            },
        };
        out.put_slice(&head.encode());
        out.put_slice(body(piece));
    }
    out.freeze()
}

/// The bytes that follow a piece's record header.
fn body(piece: &Piece) -> &[u8] {
    match piece {
        Piece::Zero(_) => &[],
        Piece::Plain(bytes) => bytes,
        Piece::Frame { framed, .. } => framed,
    }
}

/// A body of the steps of `step` bytes that `read(pos, bytes)` makes of
/// `[offset, +length)`, [`STEPS_IN_FLIGHT`] read at once and sent in
/// order. A failed step ends the body: with the bytes `last(message)`
/// gives, or with an error (the transfer cut short) where it gives none.
fn stepped<F, Fut>(offset: u64, length: u64, step: u64, read: F, last: fn(&str) -> Option<Bytes>) -> Body
where
    F: Fn(u64, usize) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Bytes, StoreError>> + Send + 'static,
{
    let end = offset + length;
    let reads = futures::stream::iter((offset..end).step_by(step as usize))
        .map(move |pos| {
            let n = (end - pos).min(step) as usize;
            // Dropped with the body (client gone): the reads ahead stop too.
            AbortOnDropHandle::new(tokio::spawn(read(pos, n)))
        })
        .buffered(STEPS_IN_FLIGHT)
        .zip(futures::stream::iter((offset..end).step_by(step as usize)));
    let stream = reads.scan(false, move |failed, (read, pos)| {
        if *failed {
            return std::future::ready(None);
        }
        let step = match read {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("read task failed: {e}")),
        };
        std::future::ready(Some(step.or_else(|e| {
            tracing::error!(error = %e, offset = pos, "export read failed; ending the stream");
            *failed = true;
            let message = format!("reading byte {pos}: {e}");
            last(&message).ok_or_else(|| std::io::Error::other(message))
        })))
    });
    Body::from_stream(stream)
}
