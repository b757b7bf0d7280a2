//! All-zero detection, the cheapest test on the ingest path.

/// True when every byte of `data` is zero.
///
/// Scans 64 bytes at a time with word ORs, which the compiler vectorises;
/// a non-zero chunk usually exits within its first block.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        let mut acc = 0u64;
        for word in block.chunks_exact(8) {
            acc |= u64::from_ne_bytes(word.try_into().expect("chunks_exact(8) yields 8 bytes"));
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_any_single_non_zero_byte() {
        for len in [0usize, 1, 7, 63, 64, 65, 4096, 4100] {
            let mut buf = vec![0u8; len];
            assert!(is_zero(&buf));
            for i in 0..len {
                buf[i] = 0x10;
                assert!(!is_zero(&buf), "len {len} byte {i}");
                buf[i] = 0;
            }
        }
    }
}
