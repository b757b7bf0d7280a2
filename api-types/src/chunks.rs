//! The body of `GET …/chunks`: a range of a volume or snapshot as a
//! sequence of records, one per chunk the range touches, in order.
//!
//! ```text
//! record := tag u8 | len u32 LE | body
//!   tag 0  zeros      body: none                  len zero bytes
//!   tag 1  plain      body: len bytes             those bytes
//!   tag 2  frame      body: id [32] | flen u32 LE | frame [flen]
//!                     a stored chunk frame (see the chunk object format in
//!                     DESIGN.md); its plaintext must hash (BLAKE3) to id;
//!                     its first len bytes
//!   tag 3  error      body: len bytes of UTF-8    why the server stopped;
//!                     the last record of the body
//! ```
//!
//! The server checks each frame's crc before sending it; the reader
//! decodes it and checks its hash. A server that cannot read a step (a
//! missing or corrupt object) sends an error record and ends the body
//! there; a body that ends early without one (a connection lost) is as
//! incomplete, since the reader counts the bytes it asked for.

/// Media type of the body.
pub const CHUNKS_CONTENT_TYPE: &str = "application/vnd.cairn.chunks";

/// Bytes of a record header before its body: tag and len.
const HEAD: usize = 5;
/// Bytes of a frame record's header: tag, len, id and frame length.
pub const FRAME_HEAD: usize = HEAD + 32 + 4;
/// Longest plain body or frame a reader accepts: above the largest chunk
/// size (16 MiB) and its frame header, below anything hostile.
pub const MAX_BODY: u32 = (16 << 20) + 64;

const ZEROS: u8 = 0;
const PLAIN: u8 = 1;
const FRAME: u8 = 2;
const ERROR: u8 = 3;

/// A record's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordHead {
    /// `len` bytes of zeros; no body.
    Zeros {
        /// Bytes of the range.
        len: u32,
    },
    /// `len` bytes follow.
    Plain {
        /// Bytes of the range (and of the body).
        len: u32,
    },
    /// A frame of `frame_len` bytes follows, standing for the first `len`
    /// bytes of its plaintext.
    Frame {
        /// Bytes of the range.
        len: u32,
        /// The chunk's id.
        id: [u8; 32],
        /// Bytes of the frame (the body).
        frame_len: u32,
    },
    /// The server failed: a message of `len` bytes follows, and nothing
    /// after it.
    Error {
        /// Bytes of the message.
        len: u32,
    },
}

/// Why a record could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The tag is not one of the four.
    #[error("unknown chunk record tag {0}")]
    UnknownTag(u8),
    /// A body longer than [`MAX_BODY`].
    #[error("chunk record body of {0} bytes, more than {MAX_BODY}")]
    TooLong(u32),
}

impl RecordHead {
    /// Bytes of the body that follows the header.
    pub fn body_len(&self) -> usize {
        match *self {
            RecordHead::Zeros { .. } => 0,
            RecordHead::Plain { len } | RecordHead::Error { len } => len as usize,
            RecordHead::Frame { frame_len, .. } => frame_len as usize,
        }
    }

    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEAD);
        match *self {
            RecordHead::Zeros { len } => {
                out.push(ZEROS);
                out.extend_from_slice(&len.to_le_bytes());
            }
            RecordHead::Plain { len } => {
                out.push(PLAIN);
                out.extend_from_slice(&len.to_le_bytes());
            }
            RecordHead::Error { len } => {
                out.push(ERROR);
                out.extend_from_slice(&len.to_le_bytes());
            }
            RecordHead::Frame { len, id, frame_len } => {
                out.push(FRAME);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&id);
                out.extend_from_slice(&frame_len.to_le_bytes());
            }
        }
        out
    }

    /// Bytes of the header a record with `tag` starts with.
    pub fn len_for(tag: u8) -> Result<usize, RecordError> {
        match tag {
            ZEROS | PLAIN | ERROR => Ok(HEAD),
            FRAME => Ok(FRAME_HEAD),
            other => Err(RecordError::UnknownTag(other)),
        }
    }

    /// The header at the start of `buf` and its length in bytes; `None`
    /// while `buf` holds only part of it.
    pub fn decode(buf: &[u8]) -> Result<Option<(RecordHead, usize)>, RecordError> {
        let Some(&tag) = buf.first() else {
            return Ok(None);
        };
        let word = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        let need = Self::len_for(tag)?;
        if buf.len() < need {
            return Ok(None);
        }
        let len = word(1);
        let head = match tag {
            ZEROS => RecordHead::Zeros { len },
            PLAIN => RecordHead::Plain { len },
            ERROR => RecordHead::Error { len },
            _ => RecordHead::Frame {
                len,
                id: buf[HEAD..HEAD + 32].try_into().expect("32 bytes"),
                frame_len: word(HEAD + 32),
            },
        };
        match head.body_len() as u32 {
            n if n > MAX_BODY => Err(RecordError::TooLong(n)),
            _ => Ok(Some((head, need))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_wait_for_their_bytes() {
        let heads = [
            RecordHead::Zeros { len: 65536 },
            RecordHead::Plain { len: 4096 },
            RecordHead::Error { len: 17 },
            RecordHead::Frame {
                len: 65536,
                id: [7; 32],
                frame_len: 1234,
            },
        ];
        for head in heads {
            let bytes = head.encode();
            assert_eq!(RecordHead::decode(&bytes), Ok(Some((head, bytes.len()))));
            for cut in 0..bytes.len() {
                assert_eq!(
                    RecordHead::decode(&bytes[..cut]),
                    Ok(None),
                    "{head:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn bad_tags_and_huge_bodies_are_refused() {
        assert_eq!(
            RecordHead::decode(&[9, 0, 0, 0, 0]),
            Err(RecordError::UnknownTag(9))
        );
        let huge = RecordHead::Plain { len: MAX_BODY + 1 }.encode();
        assert_eq!(RecordHead::decode(&huge), Err(RecordError::TooLong(MAX_BODY + 1)));
    }
}
