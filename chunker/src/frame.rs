//! The chunk object frame: how a chunk (or a manifest node) is stored.
//!
//! ```text
//! offset size field
//!      0    4 magic "CRNF"
//!      4    1 format version (1)
//!      5    1 codec (0 = raw, 1 = zstd)
//!      6    2 reserved, zero
//!      8    4 uncompressed length, little endian
//!     12    4 payload length, little endian
//!     16    4 crc32 (IEEE) of bytes 0..16 followed by the payload
//!     20    … payload
//! ```
//!
//! The crc covers the header as well as the payload, so every single-byte
//! change anywhere in a frame is detected (crc32 catches all bursts of up
//! to 32 bits), including a flip of the codec byte. Decoding optionally
//! re-hashes the plaintext with BLAKE3 against the expected id, which
//! catches a valid frame stored under the wrong key.

use std::cell::RefCell;

use crate::ChunkId;

/// Bytes before the payload.
pub const FRAME_HEADER_LEN: usize = 20;
const MAGIC: [u8; 4] = *b"CRNF";
const VERSION: u8 = 1;
/// zstd level for stored chunks: level 1 is the fastest positive level and
/// keeps most of zstd's ratio on disk images.
const ZSTD_LEVEL: i32 = 1;
/// Bytes compressed first to decide whether a chunk compresses at all.
const PROBE_LEN: usize = 4096;
/// zstd level of the probe: the first fast (negative) level, which on a
/// 4 KiB probe saves about what level 1 saves for 2.5× less CPU (fio's
/// buffers: 8.9 vs 22 µs per probe, the same size), so the probe keeps
/// level 1's rule ([`pays`]). Faster levels save visibly less and would
/// need a laxer rule, which lets barely compressible data through to a
/// whole-chunk compression that then fails.
const PROBE_LEVEL: i32 = -1;

/// Whether `compressed` bytes are worth storing instead of `plain`: they
/// must save at least an eighth (ZFS's rule). Data that barely compresses
/// is also zstd's slowest input (fio's default buffers save 11% at under
/// 200 MB/s per core); storing it raw costs 12% more bytes at most and
/// keeps the CPU for data that does compress.
fn pays(compressed: usize, plain: usize) -> bool {
    compressed <= plain - plain / 8
}

/// How the payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is: compression did not pay.
    Raw = 0,
    /// zstd-compressed.
    Zstd = 1,
}

/// Why a frame was rejected. Every variant means "do not use these bytes".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than a header, or payload length disagrees with the header.
    #[error("frame truncated: {len} bytes")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// Not a cairn frame.
    #[error("bad frame magic")]
    BadMagic,
    /// Written by an unknown format version.
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    /// The crc does not match the header and payload.
    #[error("frame crc mismatch: stored {stored:08x}, computed {computed:08x}")]
    CrcMismatch {
        /// crc recorded in the frame.
        stored: u32,
        /// crc of the bytes received.
        computed: u32,
    },
    /// The codec byte names no known codec.
    #[error("unknown frame codec {0}")]
    UnknownCodec(u8),
    /// The payload does not decompress to the recorded length.
    #[error("frame payload does not decode to {expected} bytes")]
    BadPayload {
        /// Uncompressed length recorded in the header.
        expected: usize,
    },
    /// The header claims more bytes than any object holds (a damaged or
    /// hostile frame): refused before anything is allocated for it.
    #[error("frame claims {len} bytes, more than the {max} an object may hold")]
    TooLarge {
        /// Length recorded in the header.
        len: usize,
        /// Largest object (the largest chunk size).
        max: usize,
    },
    /// The plaintext does not hash to the id it was stored under.
    #[error("content hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        /// Id the caller asked for.
        expected: ChunkId,
        /// Hash of the decoded plaintext.
        actual: ChunkId,
    },
}

/// A zstd context and its output buffer, kept per thread: a chunk is
/// compressed into the same warm buffer every time and only the frame is
/// allocated.
struct Compression {
    compressor: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
}

thread_local! {
    static COMPRESSION: RefCell<Option<Compression>> = const { RefCell::new(None) };
    static PROBING: RefCell<Option<Compression>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `data` at [`ZSTD_LEVEL`] and hands the compressed bytes to
/// `use_them`.
fn with_compressed<R>(data: &[u8], use_them: impl FnOnce(&[u8]) -> R) -> Option<R> {
    compress_with(&COMPRESSION, ZSTD_LEVEL, data, use_them)
}

/// Compresses `data` with this thread's context in `context` (made at
/// `level` on first use).
fn compress_with<R>(
    context: &'static std::thread::LocalKey<RefCell<Option<Compression>>>,
    level: i32,
    data: &[u8],
    use_them: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    context.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Compression {
                compressor: zstd::bulk::Compressor::new(level).ok()?,
                out: Vec::new(),
            });
        }
        let Compression { compressor, out } = slot.as_mut()?;
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        compressor.compress_to_buffer(data, out).ok()?;
        Some(use_them(out))
    })
}

/// Encodes `data` as a frame, compressing with zstd when that saves at
/// least an eighth ([`pays`]).
///
/// Data that does not is recognised from a 4 KiB probe (compressed fast,
/// [`PROBE_LEVEL`]) and stored raw without compressing the whole chunk.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let probe = &data[..data.len().min(PROBE_LEN)];
    let worth_trying = data.len() > PROBE_LEN / 4
        && compress_with(&PROBING, PROBE_LEVEL, probe, |c| pays(c.len(), probe.len())).unwrap_or(false);
    let framed = if worth_trying {
        with_compressed(data, |payload| {
            pays(payload.len(), data.len()).then(|| build(Codec::Zstd, data.len(), payload))
        })
        .flatten()
    } else {
        None
    };
    framed.unwrap_or_else(|| build(Codec::Raw, data.len(), data))
}

fn build(codec: Codec, uncompressed_len: usize, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(codec as u8);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(uncompressed_len as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[..16]);
    crc.update(payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The codec a valid frame uses, without decoding it.
pub fn codec_of(frame: &[u8]) -> Option<Codec> {
    match frame.get(5) {
        Some(0) => Some(Codec::Raw),
        Some(1) => Some(Codec::Zstd),
        _ => None,
    }
}

/// Checks a frame's header and crc without decoding it: what a reader
/// that passes frames on (to be decoded elsewhere) can check cheaply.
/// Returns the payload and its uncompressed length.
pub fn check(frame: &[u8]) -> Result<(&[u8], usize), FrameError> {
    if frame.len() < FRAME_HEADER_LEN {
        return Err(FrameError::Truncated { len: frame.len() });
    }
    if frame[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let word = |at: usize| u32::from_le_bytes(frame[at..at + 4].try_into().expect("4 bytes"));
    let uncompressed_len = word(8) as usize;
    let payload_len = word(12) as usize;
    let max = crate::geometry::MAX_CHUNK_SIZE as usize;
    if uncompressed_len > max || payload_len > max + FRAME_HEADER_LEN {
        return Err(FrameError::TooLarge {
            len: uncompressed_len.max(payload_len),
            max,
        });
    }
    let stored = word(16);
    let payload = &frame[FRAME_HEADER_LEN..];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&frame[..16]);
    crc.update(payload);
    let computed = crc.finalize();
    if computed != stored {
        return Err(FrameError::CrcMismatch { stored, computed });
    }
    if payload.len() != payload_len {
        return Err(FrameError::Truncated { len: frame.len() });
    }
    if frame[4] != VERSION {
        return Err(FrameError::UnsupportedVersion(frame[4]));
    }
    match frame[5] {
        0 if payload.len() != uncompressed_len => Err(FrameError::BadPayload {
            expected: uncompressed_len,
        }),
        0 | 1 => Ok((payload, uncompressed_len)),
        other => Err(FrameError::UnknownCodec(other)),
    }
}

/// Checks a frame and returns its plaintext.
///
/// With `expected` set, the plaintext must also hash to that id: use it for
/// every object that comes from outside the local cache.
pub fn decode(frame: &[u8], expected: Option<ChunkId>) -> Result<Vec<u8>, FrameError> {
    let (payload, uncompressed_len) = check(frame)?;
    let plain = match frame[5] {
        0 => payload.to_vec(),
        _ => decompress(payload, uncompressed_len)?,
    };
    if let Some(expected) = expected {
        let actual = ChunkId::of(&plain);
        if actual != expected {
            return Err(FrameError::HashMismatch { expected, actual });
        }
    }
    Ok(plain)
}

fn decompress(payload: &[u8], expected: usize) -> Result<Vec<u8>, FrameError> {
    let out = DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        slot.as_mut()?.decompress(payload, expected).ok()
    });
    match out {
        Some(plain) if plain.len() == expected => Ok(plain),
        _ => Err(FrameError::BadPayload { expected }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn compressible(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i / 64 % 7) as u8).collect()
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn compressible_data_uses_zstd_and_random_data_stays_raw() {
        let c = encode(&compressible(65536));
        assert_eq!(codec_of(&c), Some(Codec::Zstd));
        assert!(c.len() < 65536 / 4);
        let r = encode(&random(65536, 7));
        assert_eq!(codec_of(&r), Some(Codec::Raw));
        assert_eq!(r.len(), 65536 + FRAME_HEADER_LEN);
    }

    /// `len` bytes of which about `percent`% (at the start of each 4 KiB
    /// block) are zeros and the rest random.
    fn partly_compressible(len: usize, percent: usize) -> Vec<u8> {
        let mut data = random(len, 11);
        for block in data.chunks_mut(4096) {
            block[..4096 * percent / 100].fill(0);
        }
        data
    }

    #[test]
    fn compression_is_kept_only_when_it_saves_an_eighth() {
        let barely = encode(&partly_compressible(65536, 8));
        assert_eq!(codec_of(&barely), Some(Codec::Raw), "8% saved is not worth it");
        let enough = encode(&partly_compressible(65536, 15));
        assert_eq!(
            codec_of(&enough),
            Some(Codec::Zstd),
            "15% saved is, and the fast probe sees it"
        );
        let well = encode(&partly_compressible(65536, 30));
        assert_eq!(codec_of(&well), Some(Codec::Zstd), "30% saved is");
        assert!(well.len() < 65536 * 3 / 4);
        for data in [partly_compressible(65536, 8), partly_compressible(65536, 30)] {
            assert_eq!(decode(&encode(&data), Some(ChunkId::of(&data))).unwrap(), data);
        }
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        for data in [compressible(8192), random(8192, 3), vec![1u8; 100], Vec::new()] {
            let id = ChunkId::of(&data);
            let frame = encode(&data);
            assert_eq!(decode(&frame, Some(id)).unwrap(), data);
            for i in 0..frame.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = frame.clone();
                    bad[i] ^= flip;
                    assert!(
                        decode(&bad, None).is_err(),
                        "flip {flip:#x} at byte {i} undetected"
                    );
                }
            }
        }
    }

    #[test]
    fn truncation_and_extension_are_detected() {
        let frame = encode(&compressible(4096));
        for cut in 0..frame.len() {
            assert!(decode(&frame[..cut], None).is_err(), "cut at {cut}");
        }
        let mut long = frame.clone();
        long.push(0);
        assert!(decode(&long, None).is_err());
    }

    #[test]
    fn wrong_id_is_detected() {
        let frame = encode(b"hello");
        let err = decode(&frame, Some(ChunkId::of(b"other"))).unwrap_err();
        assert!(matches!(err, FrameError::HashMismatch { .. }));
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..20000), runs in 0usize..8) {
            let mut data = data;
            // Mix in runs so both codecs are exercised.
            for r in 0..runs {
                let start = (r * 997) % data.len().max(1);
                let end = (start + 3000).min(data.len());
                data[start..end].fill(r as u8);
            }
            let frame = encode(&data);
            prop_assert_eq!(decode(&frame, Some(ChunkId::of(&data))).unwrap(), data);
        }
    }

    #[test]
    fn a_header_claiming_gigabytes_is_refused_before_decompressing() {
        let mut frame = encode(&compressible(8192));
        frame[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        // A valid crc over the forged header: only the length check stops it.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&frame[..16]);
        crc.update(&frame[FRAME_HEADER_LEN..]);
        let crc = crc.finalize();
        frame[16..20].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode(&frame, None),
            Err(FrameError::TooLarge { len, .. }) if len == u32::MAX as usize
        ));
    }
}
