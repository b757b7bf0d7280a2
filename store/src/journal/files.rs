//! Log files: one per volume generation, appended, synced, replayed and
//! removed once a commit retires them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::record::{scan, scan_salvaging, Dropped, Record};
use crate::error::Result;

/// The journal directory.
#[derive(Debug)]
pub struct JournalDir {
    dir: PathBuf,
    /// A log file was created since the directory was last synced.
    dir_dirty: AtomicBool,
    /// Held across a directory sync, so a caller that finds the directory
    /// clean knows no sync of it is still running.
    dir_sync: parking_lot::Mutex<()>,
}

/// One generation's log file, appended under the volume's state lock.
#[derive(Debug)]
pub struct LogFile {
    /// Generation number.
    pub generation: u64,
    file: File,
    /// Bytes of whole records appended.
    len: AtomicU64,
    /// Bytes known durable: a sync with nothing appended since the last
    /// one is skipped. Zero at open, so a file found at replay is synced
    /// once before it counts as durable.
    synced: AtomicU64,
}

impl LogFile {
    fn new(generation: u64, file: File) -> Result<Arc<Self>> {
        let len = file.metadata()?.len();
        Ok(Arc::new(Self {
            generation,
            file,
            len: AtomicU64::new(len),
            synced: AtomicU64::new(0),
        }))
    }

    /// Appends one record with one vectored write (header, then the data
    /// in place: no copy) and returns its offset in the log. Callers
    /// serialise appends. A failed append (disk full) is cut off again, so
    /// the next record does not follow a torn one.
    pub fn append(&self, record: &Record<'_>) -> Result<u64> {
        let before = self.len.load(Ordering::Acquire);
        let (head, n) = record.head();
        let data = record.data();
        let mut parts = [std::io::IoSlice::new(&head[..n]), std::io::IoSlice::new(data)];
        let mut slices = &mut parts[..];
        let mut written = 0usize;
        let total = n + data.len();
        let result = loop {
            if written == total {
                break Ok(());
            }
            match (&self.file).write_vectored(slices) {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    written += k;
                    std::io::IoSlice::advance_slices(&mut slices, k);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            if let Err(cut) = self.file.set_len(before) {
                tracing::error!(generation = self.generation, error = %cut, "could not cut a failed journal append");
            }
            return Err(e.into());
        }
        self.len.store(before + total as u64, Ordering::Release);
        Ok(before)
    }

    /// Reads `buf.len()` bytes at `at` (data of an appended record).
    pub fn read_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, at)?;
        Ok(())
    }

    /// Bytes of whole records appended.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// True when nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads every record in order (a torn record at the very end ends
    /// the log, damage anywhere else is an error), from the start whatever
    /// the file position.
    pub fn scan(&self, f: impl FnMut(u64, Record<'_>) -> Result<()>) -> Result<()> {
        scan(
            Positional {
                file: &self.file,
                at: 0,
            },
            self.len(),
            f,
        )
    }

    /// Reads every readable record in order (see [`scan_salvaging`]).
    pub fn scan_salvaging(&self, f: impl FnMut(u64, Record<'_>) -> Result<()>) -> Result<Vec<Dropped>> {
        scan_salvaging(
            Positional {
                file: &self.file,
                at: 0,
            },
            self.len(),
            f,
        )
    }

    /// Makes every appended record durable and returns the length that
    /// is, for [`LogFile::mark_synced`] once what the records rely on (the
    /// file's directory entry) is durable too; `None`, at no cost, when
    /// nothing was appended since the last sync: every FLUSH syncs all of
    /// a volume's live logs, and the frozen ones waiting for their seal no
    /// longer change.
    pub fn sync_data(&self) -> Result<Option<u64>> {
        // Records appended before this point are covered by the fdatasync
        // below; ones appended during it may not be, so only this length
        // is recorded.
        let len = self.len();
        if self.synced() >= len {
            return Ok(None);
        }
        self.file.sync_data()?;
        Ok(Some(len))
    }

    /// Records that the first `len` bytes are durable, directory entry
    /// included.
    pub fn mark_synced(&self, len: u64) {
        self.synced.fetch_max(len, Ordering::AcqRel);
    }

    /// Bytes known durable.
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }
}

/// Reads a file from an offset of its own, not the shared file position.
struct Positional<'a> {
    file: &'a File,
    at: u64,
}

impl Read for Positional<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

fn file_name(volume_id: u64, generation: u64) -> String {
    format!("{volume_id:016x}-{generation:016x}.log")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".log")?;
    let (id, generation) = stem.split_once('-')?;
    if id.len() != 16 || generation.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(id, 16).ok()?,
        u64::from_str_radix(generation, 16).ok()?,
    ))
}

impl JournalDir {
    /// Opens (creating) the journal directory.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            dir_dirty: AtomicBool::new(false),
            dir_sync: parking_lot::Mutex::new(()),
        })
    }

    /// Every log file as (volume id, generation), unordered.
    fn files(&self) -> Result<Vec<(u64, u64)>> {
        files_in(&self.dir)
    }

    /// Creates the log file of a new generation.
    pub fn create(&self, volume_id: u64, generation: u64) -> Result<Arc<LogFile>> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(self.dir.join(file_name(volume_id, generation)))?;
        self.dir_dirty.store(true, Ordering::Release);
        LogFile::new(generation, file)
    }

    /// Makes newly created log files' directory entries durable.
    pub fn sync_dir(&self) -> Result<()> {
        let _one_at_a_time = self.dir_sync.lock();
        if self.dir_dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                self.dir_dirty.store(true, Ordering::Release);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Opens a volume's live generations (`>= floor`) in order, removing
    /// dead ones (opened for reading and appending, so flushes still cover
    /// them; see [`LogFile::scan`]).
    pub fn replay(&self, volume_id: u64, floor: u64) -> Result<Vec<Arc<LogFile>>> {
        let mut generations: Vec<u64> = self
            .files()?
            .into_iter()
            .filter(|(id, _)| *id == volume_id)
            .map(|(_, g)| g)
            .collect();
        generations.sort_unstable();
        let mut out = Vec::new();
        for generation in generations {
            let path = self.dir.join(file_name(volume_id, generation));
            if generation < floor {
                remove(&path)?;
                continue;
            }
            let file = OpenOptions::new().read(true).append(true).open(&path)?;
            out.push(LogFile::new(generation, file)?);
        }
        Ok(out)
    }

    /// Removes a volume's generations `<= up_to` (after the catalog has
    /// moved its floor past them) on the blocking pool, not awaited:
    /// unlinking a log drops its cached pages (about 200 ms per GiB),
    /// which a commit should not wait for, and each file is cut a step at
    /// a time ([`crate::gradual`]) so that freeing its blocks does not
    /// stall the fsyncs of snapshots meanwhile. A file it has not removed yet
    /// (or at all, on a crash) is below the volume's floor: replay removes
    /// it. Holds only the directory's path (and `before_step`, called
    /// before each step of a removal), so the engine can close and reopen
    /// meanwhile.
    pub fn remove_through_in_background(
        &self,
        volume_id: u64,
        up_to: u64,
        before_step: impl Fn() + Send + 'static,
    ) {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let gradually = |path: &Path| Ok(crate::gradual::remove(path, &before_step)?);
            if let Err(e) = remove_through_in(&dir, volume_id, up_to, gradually) {
                tracing::warn!(volume_id, error = %e, "removing sealed journal files failed");
            }
        });
    }

    /// Removes the logs of volumes that no longer exist.
    pub fn remove_orphans(&self, live: &std::collections::HashSet<u64>) -> Result<usize> {
        let mut removed = 0;
        for (id, generation) in self.files()? {
            if !live.contains(&id) {
                remove(&self.dir.join(file_name(id, generation)))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Every log file in `dir` as (volume id, generation), unordered.
fn files_in(dir: &Path) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(ids) = entry.file_name().to_str().and_then(parse_name) {
            out.push(ids);
        }
    }
    Ok(out)
}

fn remove_through_in(
    dir: &Path,
    volume_id: u64,
    up_to: u64,
    remove: impl Fn(&Path) -> Result<()>,
) -> Result<()> {
    for (id, generation) in files_in(dir)? {
        if id == volume_id && generation <= up_to {
            remove(&dir.join(file_name(id, generation)))?;
        }
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    Ok(crate::gradual::remove_now(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::WRITE_DATA_AT;

    #[test]
    fn appended_data_reads_back_where_the_record_says() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalDir::open(dir.path()).unwrap();
        let f = j.create(1, 0).unwrap();
        let zero = Record::Zero {
            offset: 0,
            length: 4096,
        };
        assert_eq!(f.append(&zero).unwrap(), 0);
        let data = (0..8192u32).map(|i| i as u8).collect::<Vec<u8>>();
        let at = f
            .append(&Record::Write {
                offset: 4096,
                data: &data,
            })
            .unwrap();
        assert_eq!(at, zero.encode().len() as u64);
        let mut back = vec![0u8; 8192];
        f.read_at(&mut back, at + WRITE_DATA_AT).unwrap();
        assert_eq!(back, data);
        let mut seen = Vec::new();
        f.scan(|at, r| {
            seen.push((at, matches!(r, Record::Write { .. })));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(0, false), (at, true)]);
        assert_eq!(f.len(), at + WRITE_DATA_AT + 8192);
    }

    #[test]
    fn files_replay_in_order_and_dead_generations_go() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalDir::open(dir.path()).unwrap();
        for generation in [3, 1, 2] {
            let f = j.create(9, generation).unwrap();
            f.append(&Record::Zero {
                offset: generation * 4096,
                length: 4096,
            })
            .unwrap();
        }
        j.create(10, 1).unwrap();
        j.sync_dir().unwrap();
        let live = j.replay(9, 2).unwrap();
        assert_eq!(live.iter().map(|f| f.generation).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(j.files().unwrap().len(), 3, "generation 1 of volume 9 removed");
        remove_through_in(&j.dir, 9, 2, remove).unwrap();
        assert_eq!(j.files().unwrap().len(), 2);
        let removed = j.remove_orphans(&[9].into_iter().collect()).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(j.files().unwrap(), vec![(9, 3)]);
    }

    #[tokio::test]
    async fn removal_in_the_background_takes_only_what_is_below_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalDir::open(dir.path()).unwrap();
        let open: Vec<_> = [(9, 1), (9, 2), (9, 3), (10, 1)]
            .into_iter()
            .map(|(volume, generation)| j.create(volume, generation).unwrap())
            .collect();
        j.remove_through_in_background(9, 2, || {});
        // The journal can go (an engine closing) before the removal ran.
        drop(j);
        let mut left = files_in(dir.path()).unwrap();
        for _ in 0..500 {
            if left.len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            left = files_in(dir.path()).unwrap();
        }
        left.sort_unstable();
        assert_eq!(left, vec![(9, 3), (10, 1)]);
        // Files still open when unlinked stay usable.
        open[0]
            .append(&Record::Zero {
                offset: 0,
                length: 4096,
            })
            .unwrap();
    }

    #[test]
    fn a_sync_covers_what_was_appended_and_a_replayed_file_is_synced_once() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalDir::open(dir.path()).unwrap();
        let f = j.create(1, 1).unwrap();
        let zero = |offset| Record::Zero { offset, length: 4096 };
        let sync = |f: &LogFile| f.sync_data().unwrap().map(|len| f.mark_synced(len));
        f.append(&zero(0)).unwrap();
        assert_eq!(f.synced(), 0, "nothing synced yet");
        let first = f.len();
        assert_eq!(f.sync_data().unwrap(), Some(first));
        assert_eq!(f.synced(), 0, "not durable before it is marked");
        f.mark_synced(first);
        assert_eq!(f.synced(), first);
        assert_eq!(f.sync_data().unwrap(), None, "nothing new to sync");
        f.append(&zero(4096)).unwrap();
        assert!(f.synced() < f.len(), "a new record is not durable yet");
        assert!(sync(&f).is_some());
        assert_eq!(f.synced(), f.len());
        drop(f);
        let replayed = j.replay(1, 1).unwrap();
        assert_eq!(replayed[0].len(), 2 * first);
        assert_eq!(
            replayed[0].synced(),
            0,
            "a file found at replay counts as unsynced"
        );
        assert!(sync(&replayed[0]).is_some());
        assert_eq!(replayed[0].synced(), 2 * first);
    }
}
