//! NBD wire formats (fixed newstyle handshake, options, requests, simple
//! and structured replies), as pure encode/decode functions.
//!
//! Nothing here does I/O: parsers take byte slices and say what they need,
//! so every malformed input can be tested (and fuzzed) without sockets.

/// `NBDMAGIC`.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: starts the server greeting and every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: no 124 zero bytes after EXPORT_NAME.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flag: fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: no zeroes.
pub const CLIENT_NO_ZEROES: u32 = 2;

/// Options.
pub mod opt {
    /// Old-style export selection; enters transmission.
    pub const EXPORT_NAME: u32 = 1;
    /// Close the session.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// TLS (not offered).
    pub const STARTTLS: u32 = 5;
    /// Describe an export.
    pub const INFO: u32 = 6;
    /// Describe an export and enter transmission.
    pub const GO: u32 = 7;
    /// Use structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types.
pub mod rep {
    /// Done.
    pub const ACK: u32 = 1;
    /// One export of a LIST.
    pub const SERVER: u32 = 2;
    /// One item of INFO/GO.
    pub const INFO: u32 = 3;
    /// One metadata context.
    pub const META_CONTEXT: u32 = 4;
    /// Option not supported.
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    /// Option refused by policy.
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    /// Malformed option.
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    /// TLS required / not possible.
    pub const ERR_TLS_REQD: u32 = (1 << 31) + 5;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// Option data too big.
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// INFO item types.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Name.
    pub const NAME: u16 = 1;
    /// Description.
    pub const DESCRIPTION: u16 = 2;
    /// Block size constraints.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags.
pub mod tflag {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1;
    /// Export is read-only.
    pub const READ_ONLY: u16 = 2;
    /// FLUSH supported.
    pub const SEND_FLUSH: u16 = 4;
    /// FUA supported.
    pub const SEND_FUA: u16 = 8;
    /// TRIM supported.
    pub const SEND_TRIM: u16 = 32;
    /// WRITE_ZEROES supported.
    pub const SEND_WRITE_ZEROES: u16 = 64;
    /// DF (don't fragment) supported.
    pub const SEND_DF: u16 = 128;
    /// Many connections see one consistent export.
    pub const CAN_MULTI_CONN: u16 = 256;
}

/// Commands.
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write.
    pub const WRITE: u16 = 1;
    /// Disconnect.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Trim.
    pub const TRIM: u16 = 4;
    /// Cache (prefetch).
    pub const CACHE: u16 = 5;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Block status.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cflag {
    /// Force unit access.
    pub const FUA: u16 = 1;
    /// WRITE_ZEROES must not punch a hole.
    pub const NO_HOLE: u16 = 2;
    /// Don't fragment a structured read.
    pub const DF: u16 = 4;
    /// BLOCK_STATUS: one extent is enough.
    pub const REQ_ONE: u16 = 8;
    /// WRITE_ZEROES: fail unless fast.
    pub const FAST_ZERO: u16 = 16;
}

/// Structured reply chunk types.
pub mod chunk {
    /// Done, nothing else.
    pub const NONE: u16 = 0;
    /// Data at an offset.
    pub const OFFSET_DATA: u16 = 1;
    /// Zeros at an offset.
    pub const OFFSET_HOLE: u16 = 2;
    /// Block status descriptors.
    pub const BLOCK_STATUS: u16 = 5;
    /// Error for the whole request.
    pub const ERROR: u16 = (1 << 15) + 1;
    /// Flag on the last chunk.
    pub const FLAG_DONE: u16 = 1;
}

/// errno values NBD carries.
pub mod errno {
    /// Operation not permitted (write to a read-only export).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space.
    pub const ENOSPC: u32 = 28;
    /// Value too large (request beyond limits).
    pub const EOVERFLOW: u32 = 75;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
}

/// `base:allocation` extent flag: hole.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` extent flag: reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// Length of a request header.
pub const REQUEST_LEN: usize = 28;

/// A transmission request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command type.
    pub kind: u16,
    /// Client cookie, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (payload length for WRITE).
    pub length: u32,
}

/// A malformed header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Wrong magic: the stream is out of sync; the connection must close.
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    /// Option data shorter than its own fields say.
    #[error("option data malformed: {0}")]
    Malformed(&'static str),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Request {
    /// Parses a 28-byte request header.
    pub fn parse(b: &[u8; REQUEST_LEN]) -> Result<Self, WireError> {
        let magic = u32_at(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(WireError::BadMagic(magic as u64));
        }
        Ok(Self {
            flags: u16_at(b, 4),
            kind: u16_at(b, 6),
            cookie: u64_at(b, 8),
            offset: u64_at(b, 16),
            length: u32_at(b, 24),
        })
    }

    /// Encodes a request (for tests and clients).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.kind.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// Parses an option header (16 bytes): returns (option, data length).
pub fn parse_option_header(b: &[u8; 16]) -> Result<(u32, u32), WireError> {
    let magic = u64_at(b, 0);
    if magic != IHAVEOPT {
        return Err(WireError::BadMagic(magic));
    }
    Ok((u32_at(b, 8), u32_at(b, 12)))
}

/// The export name and requested info items of INFO/GO option data.
pub fn parse_info_request(data: &[u8]) -> Result<(String, Vec<u16>), WireError> {
    if data.len() < 4 {
        return Err(WireError::Malformed("INFO/GO shorter than its name length"));
    }
    let name_len = u32_at(data, 0) as usize;
    let rest = &data[4..];
    if rest.len() < name_len + 2 {
        return Err(WireError::Malformed("INFO/GO name longer than the option"));
    }
    let name = String::from_utf8(rest[..name_len].to_vec())
        .map_err(|_| WireError::Malformed("export name is not UTF-8"))?;
    let count = u16_at(rest, name_len) as usize;
    let items = &rest[name_len + 2..];
    if items.len() != count * 2 {
        return Err(WireError::Malformed("INFO/GO item count disagrees with length"));
    }
    Ok((
        name,
        items
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    ))
}

/// The export name and queries of LIST/SET_META_CONTEXT option data.
pub fn parse_meta_request(data: &[u8]) -> Result<(String, Vec<String>), WireError> {
    let bad = WireError::Malformed("meta context request truncated");
    if data.len() < 4 {
        return Err(bad);
    }
    let name_len = u32_at(data, 0) as usize;
    if data.len() < 4 + name_len + 4 {
        return Err(bad);
    }
    let name = String::from_utf8(data[4..4 + name_len].to_vec())
        .map_err(|_| WireError::Malformed("export name is not UTF-8"))?;
    let count = u32_at(data, 4 + name_len) as usize;
    let mut pos = 8 + name_len;
    let mut queries = Vec::new();
    for _ in 0..count {
        if data.len() < pos + 4 {
            return Err(bad);
        }
        let len = u32_at(data, pos) as usize;
        pos += 4;
        if data.len() < pos + len {
            return Err(bad);
        }
        queries.push(String::from_utf8_lossy(&data[pos..pos + len]).into_owned());
        pos += len;
    }
    if pos != data.len() {
        return Err(WireError::Malformed("trailing bytes after meta context queries"));
    }
    Ok((name, queries))
}

/// An option reply.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// NBD_INFO_EXPORT payload.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&info::EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// NBD_INFO_BLOCK_SIZE payload.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&min.to_be_bytes());
    out.extend_from_slice(&preferred.to_be_bytes());
    out.extend_from_slice(&max.to_be_bytes());
    out
}

/// Simple reply header.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// Structured reply chunk header.
pub fn structured_header(flags: u16, kind: u16, cookie: u64, length: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&length.to_be_bytes());
    b
}

/// A structured error chunk (with DONE), message included.
pub fn structured_error(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let msg = &message.as_bytes()[..message.len().min(4096)];
    let mut out = structured_header(chunk::FLAG_DONE, chunk::ERROR, cookie, 6 + msg.len() as u32).to_vec();
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trip_and_bad_magic() {
        let r = Request {
            flags: cflag::FUA,
            kind: cmd::WRITE,
            cookie: 7,
            offset: 4096,
            length: 512,
        };
        assert_eq!(Request::parse(&r.encode()).unwrap(), r);
        let mut b = r.encode();
        b[0] ^= 1;
        assert!(matches!(Request::parse(&b), Err(WireError::BadMagic(_))));
    }

    #[test]
    fn info_request_parses_and_rejects_lies() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"vol");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        assert_eq!(
            parse_info_request(&d).unwrap(),
            ("vol".into(), vec![info::BLOCK_SIZE])
        );
        for cut in 0..d.len() {
            assert!(parse_info_request(&d[..cut]).is_err(), "cut {cut}");
        }
        let mut lying = d.clone();
        lying[0..4].copy_from_slice(&1000u32.to_be_bytes());
        assert!(parse_info_request(&lying).is_err());
    }

    #[test]
    fn meta_request_parses() {
        let mut d = Vec::new();
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(b"v");
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&15u32.to_be_bytes());
        d.extend_from_slice(b"base:allocation");
        assert_eq!(
            parse_meta_request(&d).unwrap(),
            ("v".into(), vec!["base:allocation".into()])
        );
        for cut in 0..d.len() {
            assert!(parse_meta_request(&d[..cut]).is_err(), "cut {cut}");
        }
    }

    proptest! {
        #[test]
        fn option_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_info_request(&data);
            let _ = parse_meta_request(&data);
        }
    }
}
