//! The log record format: framing, encoding and scanning.

use std::io::Read;

use crate::error::{Result, StoreError};

const WRITE: u8 = 1;
const ZERO: u8 = 2;
const CHUNKS: u8 = 3;
/// Bytes of a chunk id in a [`Record::Chunks`].
const ID_LEN: usize = 32;
/// Bytes before each record's payload: length and crc32.
const HEADER: usize = 8;
/// No record is larger (an NBD WRITE carries at most 32 MiB, an HTTP
/// import appends 4 MiB at a time): a larger length field is damage.
const MAX_RECORD: usize = 64 << 20;

/// One acknowledged change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// Block-aligned data.
    Write {
        /// Byte offset (aligned).
        offset: u64,
        /// The bytes (a multiple of 4 KiB).
        data: &'a [u8],
    },
    /// Block-aligned range that now reads as zeros.
    Zero {
        /// Byte offset (aligned).
        offset: u64,
        /// Length (aligned).
        length: u64,
    },
    /// Whole chunks written straight to the object store: from the
    /// chunk-aligned `offset` on, consecutive chunks are the stored
    /// chunks `ids` (32 bytes each). Appended only once those objects are
    /// durable, so a replayed record never names a lost object.
    Chunks {
        /// Byte offset (chunk-aligned).
        offset: u64,
        /// The chunks' ids, concatenated.
        ids: &'a [u8],
    },
}

/// Where a write record's data starts, from the record's first byte.
pub const WRITE_DATA_AT: u64 = (HEADER + 9) as u64;

impl Record<'_> {
    /// The record's header and fixed fields (everything before a write's
    /// data), with the crc over the whole payload; and its length.
    pub(super) fn head(&self) -> ([u8; HEADER + 17], usize) {
        let mut head = [0u8; HEADER + 17];
        let (fixed, data): (usize, &[u8]) = match self {
            Record::Write { offset, data } => {
                head[HEADER] = WRITE;
                head[HEADER + 1..HEADER + 9].copy_from_slice(&offset.to_le_bytes());
                (9, data)
            }
            Record::Chunks { offset, ids } => {
                head[HEADER] = CHUNKS;
                head[HEADER + 1..HEADER + 9].copy_from_slice(&offset.to_le_bytes());
                (9, ids)
            }
            Record::Zero { offset, length } => {
                head[HEADER] = ZERO;
                head[HEADER + 1..HEADER + 9].copy_from_slice(&offset.to_le_bytes());
                head[HEADER + 9..HEADER + 17].copy_from_slice(&length.to_le_bytes());
                (17, &[])
            }
        };
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[HEADER..HEADER + fixed]);
        crc.update(data);
        head[..4].copy_from_slice(&((fixed + data.len()) as u32).to_le_bytes());
        head[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
        (head, HEADER + fixed)
    }

    pub(super) fn data(&self) -> &[u8] {
        match self {
            Record::Write { data, .. } => data,
            Record::Chunks { ids, .. } => ids,
            Record::Zero { .. } => &[],
        }
    }

    /// Serialises the record with its on-disk header (length, crc32).
    pub fn encode(&self) -> Vec<u8> {
        let (head, n) = self.head();
        [&head[..n], self.data()].concat()
    }
}

/// The chunk ids of a [`Record::Chunks`], in order.
pub fn chunk_ids(ids: &[u8]) -> impl Iterator<Item = cairn_chunker::ChunkId> + '_ {
    ids.chunks_exact(ID_LEN)
        .map(|id| cairn_chunker::ChunkId(id.try_into().expect("32 bytes")))
}

/// Parses one record payload (without its header).
pub(super) fn decode(bytes: &[u8]) -> Result<Record<'_>> {
    let bad = || StoreError::CatalogCorrupt {
        key: "journal".into(),
        reason: format!("bad journal record of {} bytes", bytes.len()),
    };
    if bytes.len() < 9 {
        return Err(bad());
    }
    let offset = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
    match bytes[0] {
        WRITE => Ok(Record::Write {
            offset,
            data: &bytes[9..],
        }),
        CHUNKS if bytes.len() > 9 && (bytes.len() - 9).is_multiple_of(ID_LEN) => Ok(Record::Chunks {
            offset,
            ids: &bytes[9..],
        }),
        ZERO if bytes.len() == 17 => Ok(Record::Zero {
            offset,
            length: u64::from_le_bytes(bytes[9..17].try_into().expect("8 bytes")),
        }),
        _ => Err(bad()),
    }
}

/// A stretch of a log that [`scan_salvaging`] could not read and dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// Byte offset in the log.
    pub at: u64,
    /// Bytes dropped (one record, or the rest of the log when the damage
    /// hides where the next record starts).
    pub length: u64,
    /// What was wrong.
    pub reason: String,
}

/// Reads a log's records in order, calling `f(start, record)` for each,
/// where `start` is the record's offset in the log. A torn record at the
/// very end (a crash mid-append) ends the log; damage anywhere else is a
/// [`StoreError::JournalDamaged`] error, never silently skipped. Streams:
/// memory is one record.
pub(super) fn scan(log: impl Read, len: u64, f: impl FnMut(u64, Record<'_>) -> Result<()>) -> Result<()> {
    scan_with(log, len, f, None)
}

/// Reads a log's records as [`super::LogFile::scan`] does, but goes past
/// damage: a record failing its crc or decoding is dropped and reading
/// resumes after it (its length field still frames it); a length running
/// past the end drops the rest of the log. Returns exactly what was
/// dropped.
pub fn scan_salvaging(
    log: impl Read,
    len: u64,
    f: impl FnMut(u64, Record<'_>) -> Result<()>,
) -> Result<Vec<Dropped>> {
    let mut dropped = Vec::new();
    scan_with(log, len, f, Some(&mut dropped))?;
    Ok(dropped)
}

fn scan_with(
    log: impl Read,
    len: u64,
    mut f: impl FnMut(u64, Record<'_>) -> Result<()>,
    mut salvage: Option<&mut Vec<Dropped>>,
) -> Result<()> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, log);
    let mut payload = Vec::new();
    let mut at = 0u64;
    while at + HEADER as u64 <= len {
        let mut head = [0u8; HEADER];
        reader.read_exact(&mut head)?;
        let n = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let end = at + HEADER as u64 + n;
        if n as usize > MAX_RECORD || end > len {
            let impossible = n as usize > MAX_RECORD;
            match salvage.as_deref_mut() {
                // Reported: records may have followed a damaged length.
                Some(dropped) => dropped.push(Dropped {
                    at,
                    length: len - at,
                    reason: if impossible {
                        format!("record length {n} is impossible")
                    } else {
                        "record runs past the end of the log (a torn append or a damaged length)".into()
                    },
                }),
                None if impossible => {
                    return Err(StoreError::JournalDamaged {
                        at,
                        reason: format!("record at byte {at} claims an impossible length {n}"),
                    })
                }
                // A torn tail: a crash mid-append, never acknowledged.
                None => {}
            }
            break;
        }
        payload.resize(n as usize, 0);
        reader.read_exact(&mut payload)?;
        let record = if crc32fast::hash(&payload) != crc {
            Err("fails its crc".to_string())
        } else {
            decode(&payload).map_err(|e| e.to_string())
        };
        match (record, salvage.as_deref_mut()) {
            (Ok(record), _) => f(at, record)?,
            // A bad last record is a torn append.
            (Err(_), _) if end == len => break,
            (Err(reason), Some(dropped)) => dropped.push(Dropped {
                at,
                length: end - at,
                reason,
            }),
            (Err(reason), None) => {
                return Err(StoreError::JournalDamaged {
                    at,
                    reason: format!("record at byte {at} {reason}"),
                })
            }
        }
        at = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(encoded: &[u8]) -> &[u8] {
        &encoded[HEADER..]
    }

    /// Offsets of the records `scan` finds in `log`.
    fn starts(log: &[u8]) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        scan(log, log.len() as u64, |at, _| {
            out.push(at);
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn records_round_trip() {
        let data = vec![7u8; 8192];
        let ids: Vec<u8> = (0..96u8).collect();
        for r in [
            Record::Write {
                offset: 4096,
                data: &data,
            },
            Record::Chunks {
                offset: 1 << 20,
                ids: &ids,
            },
            Record::Zero {
                offset: 1 << 40,
                length: 1 << 30,
            },
        ] {
            let encoded = r.encode();
            assert_eq!(decode(payload(&encoded)).unwrap(), r);
            let mut seen = Vec::new();
            scan(&encoded[..], encoded.len() as u64, |at, got| {
                seen.push((at, got == r));
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, vec![(0, true)]);
        }
        assert!(decode(&[1, 2]).is_err());
        assert!(decode(&[9; 17]).is_err());
        assert!(decode(&[CHUNKS; 9 + 31]).is_err(), "ids are whole");
        assert!(decode(&[CHUNKS; 9]).is_err(), "at least one id");
    }

    #[test]
    fn torn_tail_ends_the_log_but_damage_inside_is_an_error() {
        let a = Record::Zero {
            offset: 0,
            length: 4096,
        }
        .encode();
        let data = [3u8; 4096];
        let b = Record::Write {
            offset: 8192,
            data: &data,
        }
        .encode();
        let mut log = [a.clone(), b.clone()].concat();
        assert_eq!(starts(&log).unwrap(), vec![0, a.len() as u64]);
        // Every truncation inside the second record: the first survives.
        for cut in a.len()..log.len() {
            assert_eq!(starts(&log[..cut]).unwrap().len(), 1, "cut at {cut}");
        }
        // A flipped byte in the last record: torn, dropped.
        let last = log.len() - 1;
        log[last] ^= 1;
        assert_eq!(starts(&log).unwrap().len(), 1);
        // A flipped byte in the first record, with a record after it: error.
        let mut log = [a, b].concat();
        log[HEADER + 3] ^= 1;
        assert!(starts(&log).is_err());
    }
}
