//! Streamed exports: a response body that reads a volume or snapshot range
//! step by step, so no image is ever held whole in memory.
//!
//! Steps are read on their own tasks, a few ahead of the one being sent:
//! checking and decompressing chunks is CPU work, and one task would do it
//! on one core while the body waits for it.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use cairn_store::{Engine, Readable};
use futures::StreamExt;
use tokio_util::task::AbortOnDropHandle;

/// Bytes read per step of a streamed export.
const STEP: u64 = 1 << 20;
/// Steps read at once (each on its own task), the one being sent included:
/// enough to keep every core decoding, at most this many steps in memory.
const STEPS_IN_FLIGHT: usize = 4;

/// A body streaming `[offset, offset + length)` of `source`.
pub fn export_body(engine: Arc<Engine>, source: Readable, offset: u64, length: u64) -> Body {
    let end = offset + length;
    let reads = futures::stream::iter((offset..end).step_by(STEP as usize))
        .map(move |pos| {
            let (engine, source) = (engine.clone(), source.clone());
            let n = (end - pos).min(STEP) as usize;
            // Dropped with the body (client gone): the reads ahead stop too.
            AbortOnDropHandle::new(tokio::spawn(async move {
                let mut buf = vec![0u8; n];
                engine
                    .read(&source, pos, &mut buf)
                    .await
                    .map(|()| Bytes::from(buf))
            }))
        })
        .buffered(STEPS_IN_FLIGHT)
        .zip(futures::stream::iter((offset..end).step_by(STEP as usize)));
    let stream = reads.scan(false, |failed, (read, pos)| {
        if *failed {
            return std::future::ready(None);
        }
        let step = match read {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("read task failed: {e}")),
        };
        std::future::ready(Some(step.map_err(|e| {
            tracing::error!(error = %e, offset = pos, "export read failed; aborting the stream");
            // Ending the body early with an error makes the client see
            // a truncated transfer, never wrong bytes.
            *failed = true;
            std::io::Error::other(e)
        })))
    });
    Body::from_stream(stream)
}
