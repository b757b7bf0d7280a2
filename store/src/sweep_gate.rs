//! Who may touch an object key while GC deletes: dedup claims, uploads and
//! GC's deletions meet here, and nobody holds it across object-store I/O.
//!
//! - A dedup claim (index lookup and time refresh) and GC's last re-check
//!   of a candidate happen under one short mutex, so GC never deletes an
//!   object a writer has just claimed. While a GC runs, every key claimed
//!   or uploaded is noted ("touched"), so the re-check is a set lookup, not
//!   a second index read.
//! - An upload registers its key before its request and leaves after it
//!   is recorded: GC skips a key being uploaded.
//! - GC marks the keys it deletes; an upload of such a key waits for that
//!   delete to finish (else the delete could land after the upload).
//!
//! The uploads and deletes themselves run with no lock held, so a hung
//! upload stalls neither GC nor other writers' claims, and a slow delete
//! stalls no seal. Registrations are removed by guards on drop, so a
//! dropped future leaves nothing behind.

use std::collections::{HashMap, HashSet};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Keys {
    /// Keys with an upload in progress (count of uploaders).
    uploading: HashMap<String, u32>,
    /// Keys GC is deleting.
    deleting: HashSet<String>,
    /// While a GC runs: keys claimed or uploaded since it started.
    touched: Option<HashSet<String>>,
}

impl Keys {
    /// Notes that a writer claimed `key` (kept only while a GC runs).
    pub(crate) fn touch(&mut self, key: &str) {
        if let Some(touched) = &mut self.touched {
            touched.insert(key.to_string());
        }
    }

    /// Whether `key` was claimed or uploaded since the running GC started.
    pub(crate) fn was_touched(&self, key: &str) -> bool {
        self.touched.as_ref().is_some_and(|t| t.contains(key))
    }

    pub(crate) fn is_uploading(&self, key: &str) -> bool {
        self.uploading.contains_key(key)
    }

    pub(crate) fn is_deleting(&self, key: &str) -> bool {
        self.deleting.contains(key)
    }
}

#[derive(Debug, Default)]
pub(crate) struct SweepGate {
    keys: Mutex<Keys>,
    deleted: Notify,
}

impl SweepGate {
    /// The key sets, for a short check-and-act with no `.await` inside.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Keys> {
        self.keys.lock()
    }

    /// Runs `f` with the key sets locked once GC is not deleting `key`,
    /// waiting for the delete batch that holds it to end first.
    pub(crate) async fn unless_deleting<R>(&self, key: &str, mut f: impl FnMut(&mut Keys) -> R) -> R {
        loop {
            // Enabled before the check, so no wake-up is lost.
            let deleted = self.deleted.notified();
            tokio::pin!(deleted);
            deleted.as_mut().enable();
            {
                let mut keys = self.keys.lock();
                if !keys.is_deleting(key) {
                    return f(&mut keys);
                }
            }
            deleted.await;
        }
    }

    /// Starts noting touched keys, until the guard drops (one GC at a time).
    pub(crate) fn watch_touches(&self) -> Watching<'_> {
        self.keys.lock().touched = Some(HashSet::new());
        Watching { gate: self }
    }

    /// Registers an upload of `key` (call with the lock held).
    pub(crate) fn begin_upload<'a>(&'a self, keys: &mut Keys, key: &str) -> Upload<'a> {
        keys.touch(key);
        *keys.uploading.entry(key.to_string()).or_default() += 1;
        Upload {
            gate: self,
            key: key.to_string(),
        }
    }

    /// Marks `doomed` as being deleted (call with the lock held).
    pub(crate) fn begin_delete<'a>(&'a self, keys: &mut Keys, doomed: Vec<String>) -> Deleting<'a> {
        keys.deleting.extend(doomed.iter().cloned());
        Deleting {
            gate: self,
            keys: doomed,
        }
    }
}

/// A GC's watch over touched keys; ends on drop.
pub(crate) struct Watching<'a> {
    gate: &'a SweepGate,
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.gate.keys.lock().touched = None;
    }
}

/// An upload in progress; unregistered on drop.
pub(crate) struct Upload<'a> {
    gate: &'a SweepGate,
    key: String,
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        let mut keys = self.gate.keys.lock();
        if let Some(n) = keys.uploading.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                keys.uploading.remove(&self.key);
            }
        }
    }
}

/// Keys being deleted; released (and waiting uploads woken) on drop.
pub(crate) struct Deleting<'a> {
    gate: &'a SweepGate,
    keys: Vec<String>,
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        {
            let mut keys = self.gate.keys.lock();
            for k in &self.keys {
                keys.deleting.remove(k);
            }
        }
        self.gate.deleted.notify_waiters();
    }
}
