//! Write-back journal records: the durable form of acknowledged writes
//! that are not yet sealed into chunk objects.
//!
//! Records are stored in the catalog's `journal` column family under
//! `(volume id, generation, sequence)`; replaying a volume's records in key
//! order rebuilds its dirty overlay exactly. All offsets and lengths are
//! 4 KiB aligned: unaligned writes are merged to whole blocks before they
//! are journaled.

use crate::error::{Result, StoreError};

const WRITE: u8 = 1;
const ZERO: u8 = 2;

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
}

impl Record<'_> {
    /// Serialises the record.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::Write { offset, data } => {
                let mut out = Vec::with_capacity(9 + data.len());
                out.push(WRITE);
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(data);
                out
            }
            Record::Zero { offset, length } => {
                let mut out = Vec::with_capacity(17);
                out.push(ZERO);
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&length.to_le_bytes());
                out
            }
        }
    }
}

/// Parses a stored record.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>> {
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
        ZERO if bytes.len() == 17 => Ok(Record::Zero {
            offset,
            length: u64::from_le_bytes(bytes[9..17].try_into().expect("8 bytes")),
        }),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let data = vec![7u8; 8192];
        for r in [
            Record::Write {
                offset: 4096,
                data: &data,
            },
            Record::Zero {
                offset: 1 << 40,
                length: 1 << 30,
            },
        ] {
            assert_eq!(decode(&r.encode()).unwrap(), r);
        }
        assert!(decode(&[1, 2]).is_err());
        assert!(decode(&[9; 17]).is_err());
    }
}
