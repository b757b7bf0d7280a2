//! Power loss: the data dir lives on LazyFS, a FUSE filesystem that keeps
//! whatever was written and not fsynced in a cache of its own and drops it
//! on `lazyfs::clear-cache`. `kill -9` of the server plus a cache clear is a
//! power cut for everything cairn stored. Scenarios, each followed by a
//! cut and a restart on the same data dir:
//! - data only in the write-back log (flushed, not sealed);
//! - data sealed into objects and committed;
//! - a seal racing the cut (killed while it runs);
//! - a snapshot and a fork of it, with flushed writes to the fork;
//! - writes never flushed, then a snapshot taken before their seal (its
//!   success makes them durable);
//! - GC and the pack compaction it sets off, racing the cut;
//! - (a test of its own) a cut in the middle of a GC, after compaction
//!   removed what it deleted, then the same content written again.
//!
//! After every restart every flushed byte reads back (NBD writes with
//! qemu-io, reads through `cairn export`) and `cairn verify` is clean.
//!
//! LazyFS is built by `scripts/test.sh` (tools/lazyfs-build.sh) into
//! `target/lazyfs`; `CAIRN_LAZYFS` names another binary. Needs /dev/fuse
//! and root; where anything is missing the test prints why and skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1 << 20;

fn lazyfs_binary() -> PathBuf {
    match std::env::var_os("CAIRN_LAZYFS") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/lazyfs/src/lazyfs/build/lazyfs"),
    }
}

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    let bin = lazyfs_binary();
    if !bin.exists() {
        return Some(format!(
            "no LazyFS binary at {} (scripts/test.sh builds it with tools/lazyfs-build.sh)",
            bin.display()
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("mounting LazyFS with allow_other needs root".into());
    }
    for tool in ["qemu-io", "fusermount3"] {
        if !have(tool) {
            return Some(format!("{tool} is not installed (scripts/setup.sh installs it)"));
        }
    }
    None
}

/// A LazyFS mount; unmounted on drop.
struct LazyFs {
    _dir: tempfile::TempDir,
    child: Child,
    mnt: PathBuf,
    fifo: PathBuf,
    log: PathBuf,
    clears: usize,
}

impl LazyFs {
    fn mount() -> LazyFs {
        let dir = tempfile::tempdir().unwrap();
        let (mnt, root) = (dir.path().join("mnt"), dir.path().join("root"));
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        let (fifo, log) = (dir.path().join("faults.fifo"), dir.path().join("lazyfs.log"));
        let config = dir.path().join("cfg.toml");
        std::fs::write(
            &config,
            format!(
                "[faults]\nfifo_path=\"{}\"\n[cache]\napply_eviction=false\n[cache.simple]\ncustom_size=\"2gb\"\nblocks_per_page=1\n[filesystem]\nlog_all_operations=false\nlogfile=\"{}\"\n",
                fifo.display(),
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new(lazyfs_binary())
            .arg(&mnt)
            .arg("--config-path")
            .arg(&config)
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", root.display()))
            // Single-threaded: LazyFS's cache takes its locks in different
            // orders in open and getattr, and deadlocks when they run at
            // once (seen with concurrent reads, writes and opens).
            .args(["-f", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut fs = LazyFs {
            _dir: dir,
            child,
            mnt,
            fifo,
            log,
            clears: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fs.is_mounted() {
            assert!(Instant::now() < deadline, "LazyFS did not mount");
            if let Ok(Some(status)) = fs.child.try_wait() {
                panic!("LazyFS exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        fs
    }

    fn is_mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let mnt = self.mnt.to_str().unwrap();
        mounts.lines().any(|l| l.split(' ').nth(1) == Some(mnt)) && self.fifo.exists()
    }

    /// Drops everything written and not fsynced.
    fn clear_cache(&mut self) {
        std::fs::write(&self.fifo, "lazyfs::clear-cache\n").unwrap();
        self.clears += 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.matches("cache is cleared").count() >= self.clears {
                return;
            }
            assert!(Instant::now() < deadline, "LazyFS did not clear its cache");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `data` at `offset` of NBD export `name` with qemu-io (the
/// buffer filled from a file), then FLUSH.
fn nbd_write(nbd_port: u16, name: &str, offset: usize, data: &[u8]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), data).unwrap();
    let uri = format!("nbd://127.0.0.1:{nbd_port}/{name}");
    let write = format!("write -s {} {offset} {}", file.path().display(), data.len());
    run(Command::new("qemu-io").args(["-f", "raw", &uri, "-c", &write, "-c", "flush"]));
}

/// The volume (or `VOLUME@TAG`) through `cairn export`.
fn export(server: &Server, source: &str) -> Vec<u8> {
    let out = tempfile::NamedTempFile::new().unwrap();
    server.ok(&["export", source, out.path().to_str().unwrap()]);
    std::fs::read(out.path()).unwrap()
}

struct Cut<'a> {
    fs: &'a mut LazyFs,
    server: Server,
    nbd_port: u16,
}

impl<'a> Cut<'a> {
    /// A server on a data dir in `fs`, with NBD, chunks of `chunk_size`
    /// and idle seals after 1 s (so they run only when the test waits).
    fn start(fs: &'a mut LazyFs, chunk_size: &str, env: &[(&str, &str)]) -> Cut<'a> {
        let nbd_port = free_port();
        let nbd = format!("127.0.0.1:{nbd_port}");
        let server = Server::start_on(
            &fs.mnt.join("cairn"),
            &[
                "--nbd-listen",
                &nbd,
                "--seal-idle",
                "1s",
                "--chunk-size",
                chunk_size,
            ],
            env,
        );
        Cut { fs, server, nbd_port }
    }

    /// kill -9, drop the unsynced cache, start again.
    fn power_cut(&mut self) {
        self.server.child.kill().unwrap();
        self.server.child.wait().unwrap();
        self.fs.clear_cache();
        self.server.kill9_and_restart();
    }

    fn backlog(&self) -> f64 {
        self.server.metric("cairn_backlog_bytes")
    }

    /// Waits for the sealer to empty the backlog.
    fn wait_sealed(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.backlog() > 0.0 {
            assert!(Instant::now() < deadline, "the sealer did not seal");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for pack compaction to give dead bytes back (packs at most
    /// twice their live bytes).
    fn wait_compacted(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.server.metric("cairn_pack_bytes") > 2.0 * self.server.metric("cairn_pack_live_bytes") {
            assert!(Instant::now() < deadline, "packs were not compacted");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn assert_reads(&self, models: &[(&str, &[u8])], when: &str) {
        for (source, model) in models {
            let got = export(&self.server, source);
            assert_eq!(got.len(), model.len(), "{when}: {source} size");
            if let Some(at) = got.iter().zip(model.iter()).position(|(a, b)| a != b) {
                panic!("{when}: {source} differs from what was flushed, first at byte {at}");
            }
        }
        self.server.assert_verify_clean();
    }
}

#[test]
fn power_cut_loses_no_flushed_byte() {
    if let Some(why) = missing() {
        println!("SKIPPED power_cut_loses_no_flushed_byte: {why}");
        return;
    }
    let mut fs = LazyFs::mount();
    let mut cut = Cut::start(&mut fs, "64K", &[]);
    let size = 24 * MIB;
    cut.server.ok(&["volume", "create", "v", "--size", "24M"]);
    let mut v = vec![0u8; size];

    // 1. Flushed, not sealed: only in the write-back log.
    let a = noise(1, 4 * MIB);
    nbd_write(cut.nbd_port, "v", 0, &a);
    v[..4 * MIB].copy_from_slice(&a);
    assert!(cut.backlog() > 0.0, "still unsealed when cut");
    cut.power_cut();
    cut.assert_reads(&[("v", &v)], "log only");

    // 2. Sealed and committed, the log retired.
    let b = noise(2, 4 * MIB);
    nbd_write(cut.nbd_port, "v", 4 * MIB, &b);
    v[4 * MIB..8 * MIB].copy_from_slice(&b);
    cut.wait_sealed();
    cut.power_cut();
    cut.assert_reads(&[("v", &v)], "sealed");

    // 3. A seal racing the cut: killed at points through the idle seal.
    for (round, wait_ms) in [1000u64, 1150, 1300, 1500].into_iter().enumerate() {
        let c = noise(10 + round as u64, 8 * MIB);
        let at = 8 * MIB + (round % 2) * 8 * MIB;
        nbd_write(cut.nbd_port, "v", at, &c);
        v[at..at + 8 * MIB].copy_from_slice(&c);
        std::thread::sleep(Duration::from_millis(wait_ms));
        cut.power_cut();
        cut.assert_reads(&[("v", &v)], &format!("seal racing the cut after {wait_ms} ms"));
    }

    // 4. A snapshot and a fork of it, the fork written and flushed.
    cut.server.json(&["snapshot", "create", "v", "--tag", "s1"]);
    cut.server.json(&["fork", "v@s1", "w"]);
    let mut w = v.clone();
    let d = noise(20, 2 * MIB);
    nbd_write(cut.nbd_port, "w", 2 * MIB, &d);
    w[2 * MIB..4 * MIB].copy_from_slice(&d);
    cut.power_cut();
    cut.assert_reads(&[("v", &v), ("v@s1", &v), ("w", &w)], "snapshot and fork");
    let v_s1 = v.clone();

    // 5. Writes acknowledged but never flushed, then a snapshot (pending:
    //    its seal has not run) and a cut: the snapshot's success covers them.
    let e = noise(30, 4 * MIB);
    let mut raw = common::nbd::RawNbd::open(cut.nbd_port, "v");
    for (i, block) in e.chunks(MIB).enumerate() {
        assert_eq!(raw.write((12 * MIB + i * MIB) as u64, block), 0);
    }
    drop(raw);
    v[12 * MIB..16 * MIB].copy_from_slice(&e);
    let s2 = cut.server.json(&["snapshot", "create", "v", "--tag", "s2"]);
    if s2["sealed"] != false {
        println!("note: the idle seal ran before the snapshot; it was not pending");
    }
    cut.power_cut();
    cut.assert_reads(&[("v@s2", &v), ("v", &v)], "pending snapshot of unflushed writes");

    // 6. GC, and the compaction of packs its deletes set off (live objects
    //    copied, the index repointed, the old pack unlinked), racing the cut.
    for (round, wait_ms) in [0u64, 100, 400].into_iter().enumerate() {
        let name = format!("x{round}");
        cut.server.ok(&["volume", "create", &name, "--size", "8M"]);
        nbd_write(cut.nbd_port, &name, 0, &noise(40 + round as u64, 8 * MIB));
        cut.wait_sealed();
        cut.server.ok(&["volume", "delete", &name]);
        std::thread::sleep(Duration::from_millis(1100));
        let report = cut.server.json(&["gc", "--grace", "0s"]);
        assert!(report["reclaimed_objects"].as_u64().unwrap() >= 128, "{report}");
        std::thread::sleep(Duration::from_millis(wait_ms));
        cut.power_cut();
        cut.assert_reads(
            &[("v", &v), ("v@s1", &v_s1), ("v@s2", &v), ("w", &w)],
            &format!("GC and pack compaction racing the cut after {wait_ms} ms"),
        );
    }
    // The deleted volumes' space came back.
    cut.wait_compacted();
}

/// A power cut in the middle of a GC, after pack compaction has unlinked
/// objects the GC deleted in its first batches: those objects must be
/// forgotten by the existence index for good (GC syncs each batch's forget
/// before it deletes). Content written again after the restart is then
/// stored again, not deduplicated against objects that are gone. The store
/// deletes slowly (`CAIRN_FAULTS`, 200 ms a delete, 32 at once) so the GC
/// is still running when compaction ends; small chunks give it four
/// delete batches.
#[test]
fn power_cut_during_gc_forgets_deleted_objects() {
    if let Some(why) = missing() {
        println!("SKIPPED power_cut_during_gc_forgets_deleted_objects: {why}");
        return;
    }
    let mut fs = LazyFs::mount();
    let mut cut = Cut::start(&mut fs, "4K", &[("CAIRN_FAULTS", "delete_latency_ms=200")]);
    // 4,096 chunk objects: four of GC's delete batches.
    let size = 16 * MIB;
    let gone = noise(60, size);
    cut.server.ok(&["volume", "create", "x", "--size", "16M"]);
    nbd_write(cut.nbd_port, "x", 0, &gone);
    cut.wait_sealed();
    cut.server.ok(&["volume", "delete", "x"]);
    std::thread::sleep(Duration::from_millis(1100));
    let packed = cut.server.metric("cairn_pack_bytes");
    assert!(packed >= size as f64, "{packed} pack bytes");

    let mut gc = Command::new(BIN)
        .arg("--server")
        .arg(&cut.server.url)
        .args(["gc", "--grace", "0s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let running = loop {
        assert!(Instant::now() < deadline, "no pack was compacted during the GC");
        // Compaction first, then the GC still running: the cut comes
        // between the two.
        let compacted = cut.server.metric("cairn_pack_bytes") < packed / 2.0;
        let (status, body) = cut.server.http("GET", "/api/v1/gc", None, None);
        assert_eq!(status, 200, "{body}");
        let state: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            state["last"].is_null(),
            "the GC ended before compaction gave space back; the test needs slower deletes: {state}"
        );
        if compacted {
            break state["running"].clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "cut {} ms into the GC, {} objects deleted, their pack compacted away",
        running["elapsed_ms"], running["reclaimed_objects"]
    );
    cut.power_cut();
    let _ = gc.wait();

    cut.server.ok(&["volume", "create", "y", "--size", "16M"]);
    nbd_write(cut.nbd_port, "y", 0, &gone);
    cut.wait_sealed();
    cut.power_cut();
    cut.assert_reads(
        &[("y", &gone)],
        "content deleted by an interrupted GC, written again",
    );
}
