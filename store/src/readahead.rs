//! Sequential-read detection for lazy hydration: when reads of one tree
//! walk forward chunk by chunk, the chunks ahead are fetched in the
//! background, in a window that doubles while the stream continues.
//!
//! Only used when the object store is remote; a local store is read
//! directly.

use lru::LruCache;
use parking_lot::Mutex;

use crate::tree::NodeId;

/// First window, in chunks.
const INITIAL_WINDOW: u64 = 8;
/// Largest window, in chunks (8 MiB at the default 64 KiB chunk).
const MAX_WINDOW: u64 = 128;
/// Trees followed at once.
const STREAMS: usize = 256;

#[derive(Clone, Copy, Debug)]
struct Stream {
    /// Chunk index the next sequential read starts at (or continues in,
    /// one before).
    next: u64,
    /// First chunk index not yet asked for.
    ahead_to: u64,
    window: u64,
}

/// Read streams by tree root.
#[derive(Debug)]
pub struct ReadAhead {
    streams: Mutex<LruCache<NodeId, Stream>>,
}

impl Default for ReadAhead {
    fn default() -> Self {
        Self {
            streams: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(STREAMS).expect("non-zero"),
            )),
        }
    }
}

impl ReadAhead {
    /// Records a read of chunks `first..=last` of the tree at `root` and
    /// returns the chunk range to fetch ahead, if any (`limit` is one past
    /// the tree's last chunk).
    pub fn note(&self, root: NodeId, first: u64, last: u64, limit: u64) -> Option<(u64, u64)> {
        let mut streams = self.streams.lock();
        let sequential = streams
            .peek(&root)
            .is_some_and(|s| first + 1 >= s.next && first <= s.next);
        if !sequential {
            streams.put(
                root,
                Stream {
                    next: last + 1,
                    ahead_to: last + 1,
                    window: INITIAL_WINDOW,
                },
            );
            return None;
        }
        let stream = streams.get_mut(&root).expect("peeked above");
        stream.next = last + 1;
        if !Self::low(stream, last) {
            return None;
        }
        let from = stream.ahead_to.max(last + 1);
        let to = (last + 1 + stream.window).min(limit);
        stream.window = (stream.window * 2).min(MAX_WINDOW);
        stream.ahead_to = to.max(from);
        (from < to).then_some((from, to))
    }

    /// Whether the chunks already asked for beyond `last` are down to half
    /// of the last request (`window` is already the next, doubled size).
    fn low(stream: &Stream, last: u64) -> bool {
        stream.ahead_to.saturating_sub(last + 1) <= stream.window / 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_grow_along_a_sequential_stream_and_reset_on_a_jump() {
        let ra = ReadAhead::default();
        let root = NodeId([1; 32]);
        assert_eq!(ra.note(root, 0, 0, 10_000), None, "a first read is no stream yet");
        assert_eq!(ra.note(root, 1, 1, 10_000), Some((2, 10)));
        // Reads inside the window ask for nothing until half of it is used.
        assert_eq!(ra.note(root, 2, 2, 10_000), None);
        assert_eq!(ra.note(root, 3, 3, 10_000), None);
        assert_eq!(ra.note(root, 4, 5, 10_000), Some((10, 22)));
        // Several small reads within one chunk continue the stream.
        assert_eq!(ra.note(root, 5, 5, 10_000), None);
        // A jump starts over.
        assert_eq!(ra.note(root, 500, 500, 10_000), None);
        assert_eq!(ra.note(root, 501, 501, 10_000), Some((502, 510)));
        // Never past the end of the tree.
        assert_eq!(ra.note(root, 502, 502, 505), None);
        let other = NodeId([2; 32]);
        ra.note(other, 0, 0, 4);
        assert_eq!(ra.note(other, 1, 1, 4), Some((2, 4)));
    }
}
