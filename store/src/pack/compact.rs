//! Compaction: a pack's live records move to the active pack, then the
//! pack goes.
//!
//! The records are found by reading the pack front to back (each names its
//! key; zeros up to a page boundary may come before a record); one is live
//! when the index names exactly its place. Live records are copied in
//! batches; each batch is made durable *before* the index is repointed, so
//! an index entry never names data a crash can lose. Each entry is
//! repointed only if it still names the old place (a put or delete of the
//! key since wins). The pack is unlinked after the index is synced,
//! and only when no live byte is left in it.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::{Location, PackStore, HEADER, MAGIC};
use crate::error::Result;

/// Live bytes copied before they are synced and the index repointed.
const BATCH_BYTES: u64 = 32 << 20;

pub(super) fn compact(store: &PackStore, id: u32) -> Result<()> {
    let started = std::time::Instant::now();
    store.close_if_active(id)?;
    store.wait_for_writers(id);
    let Some(file) = store.state.lock().packs.get(&id).map(|p| p.file.clone()) else {
        return Ok(());
    };
    let size = file.metadata()?.len();
    let mut batch: Vec<(String, Location, Location)> = Vec::new();
    let mut batch_bytes = 0;
    let (mut moved, mut moved_bytes) = (0u64, 0u64);
    let mut at = 0u64;
    let mut head = [0u8; HEADER];
    while at + HEADER as u64 <= size {
        if store.closing.load(Ordering::Acquire) {
            // What was moved is repointed below; the pack stays.
            break;
        }
        file.read_exact_at(&mut head, at)?;
        if head[..4] != MAGIC {
            // Zeros before a direct run, which starts on a page boundary.
            let page = super::direct::align_up(at);
            if page != at {
                at = page;
                continue;
            }
            // A reserved range a failed write left empty: nothing after it
            // can be found. The live check below keeps the pack then.
            break;
        }
        let key_len = u16::from_le_bytes([head[4], head[5]]) as usize;
        let data_len = u32::from_le_bytes(head[6..10].try_into().unwrap());
        let mut key = vec![0u8; key_len];
        file.read_exact_at(&mut key, at + HEADER as u64)?;
        let data_at = at + (HEADER + key_len) as u64;
        at = data_at + u64::from(data_len);
        let Ok(key) = String::from_utf8(key) else {
            continue;
        };
        let Some(old) = store.head(&key)? else {
            continue;
        };
        if old.pack != id || old.offset != data_at {
            continue;
        }
        let mut data = vec![0u8; data_len as usize];
        file.read_exact_at(&mut data, data_at)?;
        let (mut new, written) = store.append(&key, &[&data])?;
        if let Err(e) = written {
            PackStore::finish(&mut store.state.lock(), new.pack);
            return Err(e.into());
        }
        new.put_at = old.put_at;
        batch_bytes += u64::from(data_len);
        batch.push((key, old, new));
        if batch_bytes >= BATCH_BYTES {
            let (n, b) = repoint(store, std::mem::take(&mut batch))?;
            (moved, moved_bytes) = (moved + n, moved_bytes + b);
            batch_bytes = 0;
        }
    }
    let (n, b) = repoint(store, batch)?;
    (moved, moved_bytes) = (moved + n, moved_bytes + b);
    store.index.flush_wal(true)?;
    let mut st = store.state.lock();
    let left = st.packs.get(&id).map_or(0, |p| p.live);
    if left > 0 {
        if store.closing.load(Ordering::Acquire) {
            return Ok(());
        }
        return Err(std::io::Error::other(format!(
            "pack {id}: {left} live bytes were not found by reading it; kept"
        ))
        .into());
    }
    st.packs.remove(&id);
    st.unsynced.remove(&id);
    drop(st);
    crate::gradual::remove(&super::pack_path(&store.dir, id), || {
        store.foreground.wait_clear()
    })?;
    tracing::info!(
        pack = id,
        bytes = size,
        moved,
        moved_bytes,
        ms = started.elapsed().as_millis() as u64,
        "pack compacted"
    );
    Ok(())
}

/// Makes the copies durable, then points the index at them where it still
/// names the old place. Returns the objects and bytes moved.
pub(super) fn repoint(store: &PackStore, batch: Vec<(String, Location, Location)>) -> Result<(u64, u64)> {
    if batch.is_empty() {
        return Ok((0, 0));
    }
    store.sync_packs()?;
    let mut st = store.state.lock();
    let (mut moved, mut bytes) = (0, 0);
    let mut failed = None;
    for (key, old, new) in batch {
        PackStore::finish(&mut st, new.pack);
        if failed.is_some() {
            continue;
        }
        let current = match store.head(&key) {
            Ok(current) => current,
            Err(e) => {
                failed = Some(e);
                continue;
            }
        };
        if current != Some(old) {
            continue;
        }
        if let Err(e) = store.index.put(&key, new.encode()) {
            failed = Some(e.into());
            continue;
        }
        PackStore::repoint(&mut st, Some(old), new);
        moved += 1;
        bytes += u64::from(new.len);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok((moved, bytes)),
    }
}
