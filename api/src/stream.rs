//! Streamed exports: a response body that reads a volume or snapshot range
//! step by step, so no image is ever held whole in memory.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use cairn_store::{Engine, Readable};

/// Bytes read per step of a streamed export.
const STEP: u64 = 1 << 20;

/// A body streaming `[offset, offset + length)` of `source`.
pub fn export_body(engine: Arc<Engine>, source: Readable, offset: u64, length: u64) -> Body {
    let state = (engine, source, offset, offset + length);
    let stream = futures::stream::unfold(state, |(engine, source, pos, end)| async move {
        if pos >= end {
            return None;
        }
        let n = (end - pos).min(STEP) as usize;
        let mut buf = vec![0u8; n];
        match engine.read(&source, pos, &mut buf).await {
            Ok(()) => Some((Ok(Bytes::from(buf)), (engine, source, pos + n as u64, end))),
            Err(e) => {
                tracing::error!(error = %e, offset = pos, "export read failed; aborting the stream");
                // Ending the body early with an error makes the client see a
                // truncated transfer, never wrong bytes.
                Some((
                    Err(std::io::Error::other(e.to_string())),
                    (engine, source, end, end),
                ))
            }
        }
    });
    Body::from_stream(stream)
}
