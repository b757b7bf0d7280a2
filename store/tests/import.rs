//! Imports into an existing volume at any offset, from an input that
//! arrives in small, uneven pieces: the bytes land where they were sent,
//! the rest of the volume is untouched, and an import past the end is
//! refused.

mod common;

use bytes::Bytes;
use cairn_store::{Labels, StoreError};
use common::*;
use futures::Stream;

const CHUNK: usize = 64 * 1024;

/// `data` in pieces of at most `step` bytes, like a network body's frames.
fn trickle(data: &[u8], step: usize) -> impl Stream<Item = std::io::Result<Bytes>> + Unpin {
    let pieces: Vec<_> = data.chunks(step).map(|p| Ok(Bytes::copy_from_slice(p))).collect();
    futures::stream::iter(pieces)
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
        // import shorter than its head; one ending exactly on a chunk;
        // pieces longer than a chunk, so chunks lie inside one piece,
        // straddle two, or span three.
        for (offset, len, step) in [
            (1000, 2 * CHUNK + 123, 777),
            (3 * CHUNK + 5000, 100, 7),
            (CHUNK, CHUNK, 4096),
            (0, 4 * CHUNK, CHUNK + 777),
            (500, 3 * CHUNK, 3 * CHUNK),
            (CHUNK - 1, 2 * CHUNK + 1, 100_000),
        ] {
            let data = noise((offset + len) as u64, len);
            let input = trickle(&data, step);
            let (_, n, created) = engine
                .import(&ns(), &actor(), &v, input, None, offset as u64, &|_| {})
                .await
                .unwrap();
            assert_eq!((n, created), (len as u64, false));
            model[offset..offset + len].copy_from_slice(&data);
            let src = engine.readable(&ns(), &v, None).unwrap();
            let mut back = vec![0u8; size];
            engine.read(&src, 0, &mut back).await.unwrap();
            assert!(back == model, "volume differs after the import at {offset}");
        }
        let input = trickle(&noise(9, 2 * CHUNK), 1000);
        let err = engine
            .import(&ns(), &actor(), &v, input, None, (3 * CHUNK) as u64, &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::ImportTooLarge { .. }), "{err}");
    });
}
