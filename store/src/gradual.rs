//! Removing large files without stalling other fsyncs.
//!
//! On ext4 mounted with online discard (`-o discard`, as on this project's
//! machines) the blocks of an unlinked file are freed and discarded inside
//! the next journal commit, and every fsync that lands on that commit waits
//! for it: measured there, unlinking a 256 MiB file held a concurrent 64 KiB
//! `fdatasync` for 40-70 ms (1 ms otherwise). A sealed generation's log can
//! hold GiBs, a pack 256 MiB, and a snapshot or catalog batch that fsyncs
//! meanwhile must not wait for their removal.
//!
//! [`remove`] cuts such a file from its end in [`STEP`]-sized truncations,
//! each synced on its own so that one commit frees at most one step, with a
//! pause between steps for other commits; then unlinks what is left. One
//! file at a time in the process: two removals at once would free twice as
//! much per commit. The steps are small and slow on purpose (4 MiB every
//! 25 ms or so, at most 160 MiB/s, where a seal of random 4 KiB writes
//! retires logs at about 60 MiB/s): each step's discard keeps the device
//! busy for a while after its commit, and an fsync landing then waits.
//! Measured there, a 4 KiB append's `fdatasync` at random times during
//! the removal of a 1 GiB file: p90 2.6-3.0 ms and p99 5.6-6.5 ms this way
//! (the removal takes 7.6 s), against p90 4.9-6.3 ms and p99 8.4-8.5 ms in
//! 8 MiB steps 10 ms apart (2.3 s), and 0.8 ms at p50 with no removal.
//! The caller's `before_step` holds each step back while a snapshot, fork
//! or clone syncs (as paced pack writes are, `pack::direct::Foreground`).
//! Blocking: call it off the async runtime. A crash part way leaves a
//! shorter file that its owner already treats as garbage (a
//! log below its volume's floor, a pack with nothing indexed in it).

use std::path::Path;
use std::time::Duration;

use parking_lot::Mutex;

/// Bytes freed per journal commit.
const STEP: u64 = 4 << 20;
/// Pause between steps.
const PAUSE: Duration = Duration::from_millis(25);

/// One removal at a time in the process.
static REMOVING: Mutex<()> = Mutex::new(());

/// Removes `path` a step at a time (see the module docs), calling
/// `before_step` before each (to hold back while a snapshot syncs). A
/// file that is already gone is not an error.
pub(crate) fn remove(path: &Path, before_step: impl Fn()) -> std::io::Result<()> {
    let _one = REMOVING.lock();
    let file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut len = file.metadata()?.len();
    while len > STEP {
        before_step();
        len -= STEP;
        file.set_len(len)?;
        file.sync_data()?;
        std::thread::sleep(PAUSE);
    }
    drop(file);
    remove_now(path)
}

/// Unlinks `path` at once, without the steps of [`remove`]; a file that
/// is already gone is not an error.
pub(crate) fn remove_now(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_large_small_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(3 * STEP + 12_345).unwrap();
        drop(f);
        let small = dir.path().join("small");
        std::fs::write(&small, b"x").unwrap();
        // Called before each cut, with the file as the last cut left it.
        let seen = std::cell::RefCell::new(Vec::new());
        remove(&big, || {
            seen.borrow_mut().push(std::fs::metadata(&big).unwrap().len())
        })
        .unwrap();
        let full = 3 * STEP + 12_345;
        assert_eq!(seen.into_inner(), vec![full, full - STEP, full - 2 * STEP]);
        let calls = std::cell::Cell::new(0);
        remove(&small, || calls.set(calls.get() + 1)).unwrap();
        remove(&dir.path().join("missing"), || calls.set(calls.get() + 1)).unwrap();
        assert_eq!(calls.get(), 0, "a file under one step is unlinked at once");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(remove(dir.path(), || {}).is_err());
    }
}
