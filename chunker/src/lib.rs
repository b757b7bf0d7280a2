//! Pure-CPU chunk work for cairn.
//!
//! A volume's bytes are cut into fixed-size, aligned chunks ([`geometry`]).
//! Each chunk is identified by the BLAKE3 hash of its plaintext ([`ChunkId`]);
//! an all-zero chunk is never stored ([`is_zero`]). Stored chunks (and
//! manifest tree nodes) are wrapped in a self-checking [`frame`]: a header
//! and a zstd or raw payload, protected by a crc32 that covers every byte of
//! the frame, so any corruption is detected before data is handed out.
//! [`pipeline`] runs these steps over batches on every core.
//!
//! Nothing here performs I/O; everything is deterministic and exhaustively
//! testable.

pub mod frame;
pub mod geometry;
mod id;
pub mod pipeline;
pub mod testdata;
mod zero;

pub use frame::{decode, encode, Codec, FrameError, FRAME_HEADER_LEN};
pub use geometry::{ByteRange, ChunkGeometry, ChunkSpan, GeometryError, BLOCK_SIZE};
pub use id::{ChunkId, ContentId, ParseIdError};
pub use zero::is_zero;

#[doc(hidden)]
pub use hex as __hex;
#[doc(hidden)]
pub use serde as __serde;
