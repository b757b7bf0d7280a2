//! Remote-store behaviour against a real S3-compatible server (moto on
//! loopback): two servers over one bucket exchange snapshots and read each
//! other's data lazily; the on-disk chunk cache is bounded, warms on
//! request and serves reads while the store is away; the write-back
//! backlog is bounded (ENOSPC) and drains when the store returns.

mod common;

use std::time::{Duration, Instant};

use common::nbd::RawNbd;
use common::*;

fn start(dir: &std::path::Path, extra: &[&str]) -> (Server, u16) {
    assert!(
        have("moto_server"),
        "moto_server is not installed: run scripts/setup.sh"
    );
    let nbd_port = free_port();
    let nbd = format!("127.0.0.1:{nbd_port}");
    let mut args = vec!["--nbd-listen", nbd.as_str()];
    args.extend_from_slice(extra);
    (Server::start_on_s3(&dir.join("a"), &args, &[]), nbd_port)
}

fn beside(other: &Server, dir: &std::path::Path, extra: &[&str]) -> (Server, u16) {
    let nbd_port = free_port();
    let nbd = format!("127.0.0.1:{nbd_port}");
    let mut args = vec!["--nbd-listen", nbd.as_str()];
    args.extend_from_slice(extra);
    (Server::start_beside(dir, &args, other), nbd_port)
}

fn read_all(port: u16, export: &str, size: usize, step: u32) -> Vec<u8> {
    let mut c = RawNbd::open(port, export);
    let mut out = Vec::with_capacity(size);
    for at in (0..size).step_by(step as usize) {
        out.extend(c.read(at as u64, step).expect("read"));
    }
    out
}

/// Server A on a fresh bucket with volume `vm` of `size` random bytes,
/// snapshot `vm@base` and its reference exported to a file.
fn exporting_server(dir: &std::path::Path, seed: u64, size: usize) -> (Server, Vec<u8>, std::path::PathBuf) {
    let (a, _) = start(dir, &[]);
    let data = cairn_chunker::testdata::noise(seed, size);
    let image = dir.join("img");
    std::fs::write(&image, &data).unwrap();
    a.json(&["import", "vm", image.to_str().unwrap()]);
    a.json(&["snapshot", "create", "vm", "--tag", "base"]);
    let reference = dir.join("base.ref");
    a.ok(&["snapshot", "export-ref", "vm@base", reference.to_str().unwrap()]);
    (a, data, reference)
}

#[test]
fn two_servers_over_one_bucket_fork_and_read_each_others_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (a, data, reference) = exporting_server(dir.path(), 5, 16 << 20);

    // B: its own data dir and a memory cache too small to hold the volume,
    // so reads go through the disk cache and the store.
    let (b, b_nbd) = beside(&a, &dir.path().join("b"), &["--memory-cache-size", "1M"]);
    let imported = b.json(&["snapshot", "import-ref", reference.to_str().unwrap()]);
    assert_eq!(imported["tag"], "base");
    b.json(&["fork", "vm@base", "work"]);
    let before = b.json(&["volume", "show", "work"]);
    assert_eq!(before["hydration"]["local_bytes"], 0, "{before}");
    assert_eq!(before["hydration"]["total_bytes"].as_u64(), Some(16 << 20));

    // First byte at once, then a sequential read of everything: correct,
    // and each chunk fetched from the store once (single-flight, caches).
    let started = Instant::now();
    let first = RawNbd::open(b_nbd, "work").read(0, 4096).unwrap();
    assert_eq!(first, data[..4096]);
    eprintln!("cold first 4 KiB read: {:?}", started.elapsed());
    assert!(read_all(b_nbd, "work", 16 << 20, 256 << 10) == data);
    let gets = b.metric("cairn_object_gets_total");
    assert!(
        gets <= 256.0 + 8.0,
        "256 chunks and a few nodes, fetched {gets} times"
    );
    let after = b.json(&["volume", "show", "work"]);
    assert_eq!(after["hydration"]["fraction"].as_f64(), Some(1.0), "{after}");
    assert!(b.metric("cairn_disk_cache_inserts_total") >= 256.0);

    // B writes, snapshots and hands the snapshot back to A.
    let mut c = RawNbd::open(b_nbd, "work");
    let patch = cairn_chunker::testdata::noise(6, 1 << 20);
    assert_eq!(c.write(3 << 20, &patch), 0);
    drop(c);
    let mut model = data.clone();
    model[3 << 20..4 << 20].copy_from_slice(&patch);
    b.json(&["snapshot", "create", "work", "--tag", "edited"]);
    let back = dir.path().join("edited.ref");
    b.ok(&["snapshot", "export-ref", "work@edited", back.to_str().unwrap()]);
    a.json(&[
        "snapshot",
        "import-ref",
        back.to_str().unwrap(),
        "--volume",
        "from-b",
    ]);
    a.json(&["fork", "from-b@edited", "mine"]);
    let out = dir.path().join("mine.raw");
    a.ok(&["export", "mine", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == model);

    // B's GC with no grace leaves A's objects alone (it marks A's
    // published roots and deletes only its own uploads).
    let gc = b.json(&["gc", "--grace", "0s"]);
    assert!(gc["foreign_roots"].as_u64().unwrap() >= 1, "{gc}");
    a.assert_verify_clean();
    // A deletes the volume B forked from and collects with no grace: B's
    // data stays in the bucket (B publishes its roots; A marks them).
    a.ok(&["volume", "delete", "vm"]);
    a.ok(&["volume", "delete", "from-b"]);
    a.ok(&["volume", "delete", "mine"]);
    let gc = a.json(&["gc", "--grace", "0s"]);
    assert!(gc["foreign_roots"].as_u64().unwrap() >= 1, "{gc}");
    b.assert_verify_clean();
    let out = dir.path().join("work.raw");
    b.ok(&["export", "work", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == model);

    // A reference to a root the bucket lacks is refused clearly.
    let text = std::fs::read_to_string(&reference).unwrap();
    let bogus = text.replace(imported["root"].as_str().unwrap(), &"ab".repeat(32));
    let bogus_path = dir.path().join("bogus.ref");
    std::fs::write(&bogus_path, bogus).unwrap();
    let err = b.fails(&[
        "snapshot",
        "import-ref",
        bogus_path.to_str().unwrap(),
        "--volume",
        "bogus",
    ]);
    assert!(err.contains("holds no manifest root"), "{err}");
}

#[test]
fn warm_fills_a_bounded_disk_cache_that_serves_reads_while_the_store_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let (a, data, reference) = exporting_server(dir.path(), 9, 8 << 20);

    // A cold server with room for the volume: warm, then the store stops
    // and every read is still served.
    let (b, b_nbd) = beside(&a, &dir.path().join("b"), &["--memory-cache-size", "1M"]);
    b.json(&["snapshot", "import-ref", reference.to_str().unwrap()]);
    b.json(&["fork", "vm@base", "work"]);
    let warmed = b.json(&["volume", "warm", "work"]);
    assert_eq!(warmed["fraction"].as_f64(), Some(1.0), "{warmed}");
    assert_eq!(warmed["warming"], false);
    let moto = a.s3.as_ref().unwrap().child.id() as i32;
    unsafe { libc::kill(moto, libc::SIGSTOP) };
    let read = read_all(b_nbd, "work", 8 << 20, 1 << 20);
    unsafe { libc::kill(moto, libc::SIGCONT) };
    assert!(read == data, "a warmed volume reads from local disk");
    assert!(b.metric("cairn_disk_cache_hits_total") >= 128.0);

    // A server whose disk cache holds a quarter of the volume: reads stay
    // correct, the cache stays within its budget and evicts.
    let (c, c_nbd) = beside(
        &a,
        &dir.path().join("c"),
        &["--memory-cache-size", "1M", "--cache-size", "2M"],
    );
    c.json(&["snapshot", "import-ref", reference.to_str().unwrap()]);
    c.json(&["fork", "vm@base", "work"]);
    for _ in 0..2 {
        assert!(read_all(c_nbd, "work", 8 << 20, 128 << 10) == data);
    }
    assert!(c.metric("cairn_disk_cache_bytes") <= (2 << 20) as f64);
    assert!(c.metric("cairn_disk_cache_evictions_total") > 0.0);
    let partial = c.json(&["volume", "show", "work"]);
    assert!(
        partial["hydration"]["fraction"].as_f64().unwrap() < 0.5,
        "{partial}"
    );
    let err = c.fails(&["volume", "warm", "work"]);
    assert!(err.contains("too small"), "{err}");
}

#[test]
fn a_full_backlog_answers_enospc_and_drains_when_the_store_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (server, nbd_port) = start(dir.path(), &["--backlog-size", "4M", "--store-timeout", "3s"]);
    server.json(&["volume", "create", "vm", "--size", "32M"]);
    let moto = server.s3.as_ref().unwrap().child.id() as i32;
    let mut model = vec![0u8; 32 << 20];
    let mut c = RawNbd::open(nbd_port, "vm");
    unsafe { libc::kill(moto, libc::SIGSTOP) };
    let block = 256 << 10;
    let mut accepted = 0usize;
    let mut refused = None;
    for i in 0..64u64 {
        let data = cairn_chunker::testdata::noise(300 + i, block);
        let at = i as usize * block;
        match c.write(at as u64, &data) {
            0 => {
                model[at..at + block].copy_from_slice(&data);
                accepted += block;
            }
            errno => {
                refused = Some(errno);
                break;
            }
        }
    }
    assert_eq!(refused, Some(28), "a full backlog is ENOSPC");
    assert!(
        (2 << 20..=4 << 20).contains(&accepted),
        "accepted {accepted} bytes against a 4 MiB backlog"
    );
    assert!(server.metric("cairn_backlog_bytes") as usize >= accepted);
    // Acknowledged data is still readable.
    assert_eq!(c.read(0, 4096).unwrap(), model[..4096]);
    std::thread::sleep(Duration::from_secs(2));
    unsafe { libc::kill(moto, libc::SIGCONT) };

    // The backlog drains; writes are taken again.
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.metric("cairn_backlog_bytes") > 0.0 {
        assert!(Instant::now() < deadline, "backlog did not drain");
        std::thread::sleep(Duration::from_millis(200));
    }
    let at = accepted + block;
    let late = cairn_chunker::testdata::noise(999, block);
    assert_eq!(c.write(at as u64, &late), 0);
    model[at..at + block].copy_from_slice(&late);
    drop(c);
    server.assert_snapshot_equals("vm", "after", &model);
    server.assert_verify_clean();
}
