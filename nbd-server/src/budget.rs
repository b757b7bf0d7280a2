//! Memory for WRITE payloads, shared by every connection of a server.
//!
//! A payload takes its size from the budget before it is read off the
//! socket (portable transport) or copied out of the receive buffer
//! (io_uring), and gives it back when its request is done. So however
//! many clients write at once, the payloads held by the server stay within
//! the budget; a writer past it waits (its socket stops being read), it is
//! never refused. A payload larger than the whole budget takes all of it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shared budget, in bytes.
#[derive(Debug)]
pub(crate) struct WriteBudget {
    bytes: Arc<Semaphore>,
    capacity: u32,
}

/// Bytes of the budget held by one payload; returned on drop.
pub(crate) type Held = OwnedSemaphorePermit;

impl WriteBudget {
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        let capacity = capacity.clamp(1, u32::MAX as usize) as u32;
        Arc::new(Self {
            bytes: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        })
    }

    fn units(&self, len: usize) -> u32 {
        (len.min(self.capacity as usize) as u32).max(1)
    }

    /// Waits until `len` bytes (at most the whole budget) are free.
    pub(crate) async fn acquire(&self, len: usize) -> Held {
        self.bytes
            .clone()
            .acquire_many_owned(self.units(len))
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// `len` bytes if they are free now.
    pub(crate) fn try_acquire(&self, len: usize) -> Option<Held> {
        self.bytes.clone().try_acquire_many_owned(self.units(len)).ok()
    }

    /// Bytes free now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn payloads_take_their_size_and_give_it_back() {
        let budget = WriteBudget::new(1 << 20);
        let a = budget.acquire(600 << 10).await;
        assert!(budget.try_acquire(600 << 10).is_none(), "over the budget");
        let b = budget.try_acquire(400 << 10).expect("fits");
        assert_eq!(budget.available(), (1 << 20) - (1000 << 10));
        drop(a);
        drop(b);
        assert_eq!(budget.available(), 1 << 20);
        // Larger than the whole budget: takes all of it, never waits forever.
        let all = budget.acquire(32 << 20).await;
        assert_eq!(budget.available(), 0);
        drop(all);
    }
}
