//! Buffers for the chunk cache, carved from blocks of their own instead of
//! the heap.
//!
//! The cache holds thousands of 64 KiB chunks for a long time while seals,
//! NBD payloads and decodes pass short-lived buffers of the same size
//! through the heap at hundreds of MiB/s. Mixed in one heap, every cached
//! chunk pins the memory around it and freed buffers leave holes that
//! cannot be handed back: the process held up to 1.7× what was in use
//! (`benches/write_path.sh`). Here a cached chunk is copied into a slot of
//! a block that holds only slots of its size; a slot is reused once the
//! last `Bytes` of it is dropped, so the blocks stay about as large as
//! the cache at its fullest.
//!
//! Sizes that are a power of two from [`MIN_SLOT`] to [`MAX_SLOT`] (every
//! chunk size up to 1 MiB) get slots; other sizes are kept as they come.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

/// Smallest slot.
const MIN_SLOT: usize = 4 << 10;
/// Largest slot.
const MAX_SLOT: usize = 1 << 20;
/// Bytes per block (one slot at least).
const BLOCK: usize = 2 << 20;

/// Slot classes by size.
#[derive(Debug, Default)]
pub(crate) struct Slabs {
    classes: Mutex<HashMap<usize, Arc<Class>>>,
}

impl Slabs {
    /// `data` copied into a slot of its size, or `data` itself for a size
    /// without slots.
    pub(crate) fn keep(&self, data: &Bytes) -> Bytes {
        let len = data.len();
        if !(MIN_SLOT..=MAX_SLOT).contains(&len) || !len.is_power_of_two() {
            return data.clone();
        }
        let class = self
            .classes
            .lock()
            .entry(len)
            .or_insert_with(|| Arc::new(Class::new(len)))
            .clone();
        Bytes::from_owner(Class::fill(&class, data))
    }

    /// Bytes of all blocks.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.classes
            .lock()
            .values()
            .map(|c| c.inner.lock().blocks.len() * c.block_len())
            .sum()
    }
}

/// The blocks of one slot size and their free slots.
#[derive(Debug)]
struct Class {
    slot: usize,
    inner: Mutex<ClassInner>,
}

#[derive(Debug)]
struct ClassInner {
    /// Start of each block: memory from `Box<[u8]>::into_raw`, given back
    /// when the class is dropped (after its last slot, which holds the
    /// class).
    blocks: Vec<*mut u8>,
    /// Free slots: (block, slot).
    free: Vec<(u32, u32)>,
}

// SAFETY: the raw block pointers are only dereferenced through `Slot`s,
// each of which owns its range exclusively until it is dropped; the
// vectors themselves are guarded by the mutex.
unsafe impl Send for ClassInner {}

impl Class {
    fn new(slot: usize) -> Self {
        Self {
            slot,
            inner: Mutex::new(ClassInner {
                blocks: Vec::new(),
                free: Vec::new(),
            }),
        }
    }

    fn slots_per_block(&self) -> usize {
        (BLOCK / self.slot).max(1)
    }

    fn block_len(&self) -> usize {
        self.slots_per_block() * self.slot
    }

    /// A slot holding a copy of `data` (`self.slot` bytes).
    fn fill(class: &Arc<Class>, data: &[u8]) -> Slot {
        let (block, index, ptr) = {
            let mut inner = class.inner.lock();
            if inner.free.is_empty() {
                let block = Box::into_raw(vec![0u8; class.block_len()].into_boxed_slice()) as *mut u8;
                let b = inner.blocks.len() as u32;
                inner.blocks.push(block);
                inner
                    .free
                    .extend((0..class.slots_per_block() as u32).rev().map(|i| (b, i)));
            }
            let (b, i) = inner.free.pop().expect("a free slot");
            // SAFETY: slot `i` lies inside block `b`, which lives as long
            // as the class.
            let ptr = unsafe { inner.blocks[b as usize].add(i as usize * class.slot) };
            (b, i, ptr)
        };
        // SAFETY: the slot was free, so nothing else reads or writes its
        // bytes until this `Slot` is dropped.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, class.slot) };
        Slot {
            class: class.clone(),
            block,
            index,
            ptr,
        }
    }
}

impl Drop for Class {
    fn drop(&mut self) {
        let len = self.block_len();
        for &block in &self.inner.get_mut().blocks {
            // SAFETY: each block came from `Box::into_raw` of a slice of
            // `len` bytes, and no slot is left (each holds the class).
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(block, len)) });
        }
    }
}

/// One filled slot: the owner behind a cached chunk's `Bytes`.
struct Slot {
    class: Arc<Class>,
    block: u32,
    index: u32,
    ptr: *const u8,
}

// SAFETY: a slot's bytes are written once, before the `Slot` exists, and
// only read afterwards; the class it returns to is behind a mutex.
unsafe impl Send for Slot {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for Slot {}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` points at `class.slot` bytes this slot owns.
        unsafe { std::slice::from_raw_parts(self.ptr, self.class.slot) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.class.inner.lock().free.push((self.block, self.index));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_keep_their_bytes_and_are_reused_once_dropped() {
        let slabs = Slabs::default();
        let chunk = |seed: u8| {
            Bytes::from(
                (0..65536)
                    .map(|i| (i as u8).wrapping_mul(seed))
                    .collect::<Vec<u8>>(),
            )
        };
        let kept: Vec<Bytes> = (0..40).map(|i| slabs.keep(&chunk(i))).collect();
        for (i, k) in kept.iter().enumerate() {
            assert_eq!(k, &chunk(i as u8), "slot {i}");
        }
        // 40 slots of 64 KiB: two blocks of 32.
        assert_eq!(slabs.held(), 2 * BLOCK);
        // A slice outlives the `Bytes` it came from; its slot stays taken.
        let part = kept[3].slice(100..200);
        drop(kept);
        let again: Vec<Bytes> = (0..63).map(|i| slabs.keep(&chunk(i))).collect();
        assert_eq!(slabs.held(), 2 * BLOCK, "freed slots are reused");
        assert_eq!(part, chunk(3).slice(100..200), "a taken slot is not reused");
        for (i, k) in again.iter().enumerate() {
            assert_eq!(k, &chunk(i as u8));
        }
        assert_eq!(slabs.keep(&chunk(1)).len(), 65536);
        assert_eq!(slabs.held(), 3 * BLOCK, "a full class grows by a block");
    }

    #[test]
    fn other_sizes_are_kept_as_they_come() {
        let slabs = Slabs::default();
        for len in [0, 100, 65535, 2 << 20] {
            let data = Bytes::from(vec![7u8; len]);
            let kept = slabs.keep(&data);
            assert_eq!(kept.as_ptr(), data.as_ptr(), "{len} bytes are not copied");
        }
        assert_eq!(slabs.held(), 0);
    }

    #[test]
    fn slots_are_filled_and_freed_from_many_threads() {
        let slabs = Arc::new(Slabs::default());
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let slabs = slabs.clone();
                s.spawn(move || {
                    for round in 0..200u32 {
                        let byte = t.wrapping_add(round as u8);
                        let kept = slabs.keep(&Bytes::from(vec![byte; 4096]));
                        assert!(kept.iter().all(|&b| b == byte));
                    }
                });
            }
        });
        assert!(slabs.held() <= 4 * BLOCK, "slots are reused across threads");
    }
}
