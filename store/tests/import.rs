//! Imports into an existing volume at any offset, from an input that
//! arrives in small, uneven pieces: the bytes land where they were sent,
//! the rest of the volume is untouched, and an import past the end is
//! refused.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};

use cairn_store::{Labels, StoreError};
use common::*;
use tokio::io::{AsyncRead, ReadBuf};

const CHUNK: usize = 64 * 1024;

/// Hands out its bytes at most `step` at a time, like a network body.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len() - self.at).min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

#[test]
fn imports_land_at_unaligned_offsets_from_uneven_pieces() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        let v = vol("v");
        let size = 4 * CHUNK;
        engine
            .create_volume(&ns(), &actor(), &v, size as u64, None, Labels::new())
            .await
            .unwrap();
        let mut model = vec![0u8; size];
        // (offset, length, piece size): a head, whole chunks and a tail; an
        // import shorter than its head; one ending exactly on a chunk.
        for (offset, len, step) in [
            (1000, 2 * CHUNK + 123, 777),
            (3 * CHUNK + 5000, 100, 7),
            (CHUNK, CHUNK, 4096),
        ] {
            let data = noise((offset + len) as u64, len);
            let mut input = Trickle {
                data: data.clone(),
                at: 0,
                step,
            };
            let (_, n, created) = engine
                .import(&ns(), &actor(), &v, &mut input, None, offset as u64, &|_| {})
                .await
                .unwrap();
            assert_eq!((n, created), (len as u64, false));
            model[offset..offset + len].copy_from_slice(&data);
            let src = engine.readable(&ns(), &v, None).unwrap();
            let mut back = vec![0u8; size];
            engine.read(&src, 0, &mut back).await.unwrap();
            assert!(back == model, "volume differs after the import at {offset}");
        }
        let mut input = Trickle {
            data: noise(9, 2 * CHUNK),
            at: 0,
            step: 1000,
        };
        let err = engine
            .import(&ns(), &actor(), &v, &mut input, None, (3 * CHUNK) as u64, &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ImportTooLarge { .. }), "{err}");
    });
}
