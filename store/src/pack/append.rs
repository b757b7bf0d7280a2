//! Appending: runs of records reserved in the active pack, written
//! (buffered, or directly for long runs: [`super::direct`]) and indexed;
//! rolling over to a new active pack.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::{direct, unix_now, Location, Pace, PackStore, State, HEADER, MAGIC, PACK_BYTES};
use crate::error::Result;

impl PackStore {
    /// Appends an object (blocking). It is readable when this returns and
    /// durable after the next [`PackStore::sync`].
    pub(super) fn put(&self, key: &str, parts: &[&[u8]]) -> Result<()> {
        self.put_many(&[(key, parts)], Pace::Paced)
    }

    /// Appends objects (blocking) as one run of records in the active pack
    /// and indexes them in one batch: one reservation and one index write
    /// for all. They are readable when this returns and durable after the
    /// next [`PackStore::sync`]; `pace` says whether a direct run is synced
    /// on the way.
    pub(crate) fn put_many(&self, objects: &[(&str, &[&[u8]])], pace: Pace) -> Result<()> {
        if objects.is_empty() {
            return Ok(());
        }
        let (pack, locations, written) = self.append_many(objects, pace)?;
        let mut st = self.state.lock();
        Self::finish(&mut st, pack);
        written?;
        let old = self.index.multi_get(objects.iter().map(|(key, _)| *key));
        let mut batch = rocksdb::WriteBatch::default();
        for ((key, _), loc) in objects.iter().zip(&locations) {
            batch.put(key, loc.encode());
        }
        self.index.write(batch)?;
        for (old, new) in old.into_iter().zip(locations) {
            let old = old?.and_then(|v| Location::decode(&v));
            st.objects += u64::from(old.is_none());
            Self::repoint(&mut st, old, new);
        }
        Ok(())
    }

    /// Reserves room for a record in the active pack and writes it. The
    /// pack counts the write as in flight until [`PackStore::finish`].
    pub(super) fn append(&self, key: &str, parts: &[&[u8]]) -> Result<(Location, std::io::Result<()>)> {
        let (_, mut locations, written) = self.append_many(&[(key, parts)], Pace::Paced)?;
        Ok((locations.pop().expect("one record"), written))
    }

    /// Reserves room for one record per object, one after the other in the
    /// active pack, and writes them. The pack counts the write as in
    /// flight until [`PackStore::finish`].
    #[allow(clippy::type_complexity)]
    pub(super) fn append_many(
        &self,
        objects: &[(&str, &[&[u8]])],
        pace: Pace,
    ) -> Result<(u32, Vec<Location>, std::io::Result<()>)> {
        let mut heads = Vec::with_capacity(objects.len());
        let mut total = 0u64;
        for (key, parts) in objects {
            let len: usize = parts.iter().map(|p| p.len()).sum();
            let data_len = u32::try_from(len).map_err(|_| std::io::Error::other("object over 4 GiB"))?;
            let key_len =
                u16::try_from(key.len()).map_err(|_| std::io::Error::other("object key too long"))?;
            let mut head = [0u8; HEADER];
            head[..4].copy_from_slice(&MAGIC);
            head[4..6].copy_from_slice(&key_len.to_le_bytes());
            head[6..].copy_from_slice(&data_len.to_le_bytes());
            heads.push((head, data_len));
            total += (HEADER + key.len() + len) as u64;
        }
        let (pack, start, file, direct) = {
            let mut st = self.state.lock();
            if st.packs[&st.active].size + total > PACK_BYTES && st.packs[&st.active].size > 0 {
                self.roll(&mut st)?;
            }
            let active = st.active;
            let pack = st.packs.get_mut(&active).expect("the active pack is open");
            let direct = pack.direct.clone().filter(|_| total >= direct::DIRECT_MIN);
            // A direct run starts and ends on a page boundary; the bytes
            // skipped are zeros (compaction's scan steps over them).
            let (start, end) = match direct {
                Some(_) => {
                    let start = direct::align_up(pack.size);
                    (start, start + direct::align_up(total))
                }
                None => (pack.size, pack.size + total),
            };
            pack.size = end;
            pack.writers += 1;
            (active, start, pack.file.clone(), direct)
        };
        let put_at = unix_now();
        let mut at = start;
        let mut locations = Vec::with_capacity(objects.len());
        let mut run: Vec<&[u8]> = Vec::with_capacity(objects.len() * 4);
        for ((key, parts), (head, len)) in objects.iter().zip(&heads) {
            locations.push(Location {
                pack,
                offset: at + (HEADER + key.len()) as u64,
                len: *len,
                put_at,
            });
            run.extend([&head[..], key.as_bytes()]);
            run.extend(parts.iter().copied());
            at += (HEADER + key.len()) as u64 + u64::from(*len);
        }
        let mut staging = self.append_lock.lock();
        let written = match direct {
            Some(direct) => {
                match staging.write(&direct, start, run.iter().copied(), pace, &self.foreground) {
                    Err(e) if self.refuses_direct(&e) => {
                        self.state
                            .lock()
                            .packs
                            .get_mut(&pack)
                            .expect("a pack with writers stays")
                            .direct = None;
                        write_buffered(&file, start, &run)
                    }
                    written => written,
                }
            }
            None => write_buffered(&file, start, &run),
        };
        drop(staging);
        // Noted for the next sync only now that the bytes are written: a
        // sync that took the set while they were in flight did not cover
        // them.
        self.state.lock().unsynced.insert(pack);
        Ok((pack, locations, written))
    }

    /// Starts a new active pack.
    pub(super) fn roll(&self, st: &mut State) -> Result<()> {
        let next = st.active + 1;
        let direct = !self.direct_refused.load(Ordering::Relaxed);
        st.packs.insert(next, Self::create_pack(&self.dir, next, direct)?);
        // Only the active pack is appended to.
        if let Some(old) = st.packs.get_mut(&st.active) {
            old.direct = None;
        }
        st.active = next;
        st.created = true;
        Ok(())
    }

    /// Closes the active pack if it is `id`: later puts go to a new one.
    pub(super) fn close_if_active(&self, id: u32) -> Result<()> {
        let mut st = self.state.lock();
        match st.active == id {
            true => self.roll(&mut st),
            false => Ok(()),
        }
    }

    /// Waits until no put writes into pack `id` any more (it is closed, so
    /// none starts).
    pub(super) fn wait_for_writers(&self, id: u32) {
        while self.state.lock().packs.get(&id).is_some_and(|p| p.writers > 0) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Ends a write begun by [`PackStore::append`].
    pub(super) fn finish(st: &mut State, pack: u32) {
        st.packs
            .get_mut(&pack)
            .expect("a pack with writers stays")
            .writers -= 1;
    }
}

/// Writes `run`'s parts one after the other from `at`, through the page
/// cache.
fn write_buffered(file: &File, mut at: u64, run: &[&[u8]]) -> std::io::Result<()> {
    for part in run {
        file.write_all_at(part, at)?;
        at += part.len() as u64;
    }
    Ok(())
}
