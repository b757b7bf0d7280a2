//! Durability under SIGKILL: a child process writes, flushes and seals in
//! the background; it is killed at random points; after reopening, every
//! write acknowledged before a completed flush is there, and the catalog
//! opens cleanly. Whole-chunk writes (stored as objects at once) survive
//! a restart once flushed, and an unflushed one is dropped cleanly.
//!
//! The child is this same test binary, re-run with `CAIRN_CRASH_DIR` set.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_store::Labels;
use common::*;

const BLOCKS: u64 = 2048; // 8 MiB volume
const SIZE: u64 = BLOCKS * 4096;
const CHUNK: u64 = 16384;

/// Block and contents of write number `i`: odd sizes and offsets too, and
/// every fourth write two whole chunks (stored as chunk objects at once).
fn write_of(i: u64) -> (u64, Vec<u8>) {
    if i % 4 == 3 {
        let chunk = i.wrapping_mul(7919) % (SIZE / CHUNK - 2);
        return (chunk * CHUNK, noise(i + 1, 2 * CHUNK as usize));
    }
    let block = i.wrapping_mul(7919) % (BLOCKS - 4);
    let len = 4096 * (1 + i % 3) as usize - if i.is_multiple_of(5) { 100 } else { 0 };
    let offset = block * 4096 + if i.is_multiple_of(5) { 50 } else { 0 };
    (offset, noise(i + 1, len))
}

#[test]
#[ignore = "child process of kill9_loses_no_flushed_write"]
fn crash_child() {
    let Ok(dir) = std::env::var("CAIRN_CRASH_DIR") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut config = cairn_store::EngineConfig::new(&dir);
        config.dirty_soft_limit = 256 << 10; // seal often, so kills land mid-seal too
        config.idle_seal_after = Duration::from_millis(20);
        let engine = cairn_store::Engine::open(config).await.unwrap();
        engine
            .create_volume(&ns(), &actor(), &vol("crash"), SIZE, Some(16384), Labels::new())
            .await
            .unwrap();
        tokio::spawn(engine.clone().run_sealer(std::future::pending()));
        let v = engine.volume(&ns(), &vol("crash")).unwrap();
        let mut i = 0u64;
        loop {
            for _ in 0..7 {
                let (offset, data) = write_of(i);
                v.write(offset, &data).await.unwrap();
                i += 1;
            }
            v.flush().await.unwrap();
            println!("flushed {i}");
        }
    });
}

#[test]
fn kill9_loses_no_flushed_write() {
    let exe = std::env::current_exe().unwrap();
    for round in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CAIRN_CRASH_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Every "flushed N" line is printed after a completed flush, so the
        // last line read, even after the kill, is a durable promise.
        let reader = std::thread::spawn(move || {
            let mut last = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("flushed ") {
                    last = n.trim().parse().unwrap();
                }
            }
            last
        });
        std::thread::sleep(Duration::from_millis(300 + round * 450));
        // SIGKILL: no destructor, no clean shutdown.
        child.kill().unwrap();
        child.wait().unwrap();
        let flushed = reader.join().unwrap();
        assert!(
            flushed > 0,
            "round {round}: child flushed nothing before the kill"
        );

        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let engine = engine(dir.path()).await;
            let v = engine.volume(&ns(), &vol("crash")).unwrap();
            let mut disk = vec![0u8; SIZE as usize];
            v.read(0, &mut disk).await.unwrap();
            // Each byte must hold the last flushed write to it, or a later
            // (acknowledged, unflushed) write that happened to survive.
            let mut expected = vec![0u8; SIZE as usize];
            for i in 0..flushed {
                let (offset, data) = write_of(i);
                expected[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
            }
            // At most one unflushed batch (7 writes) can follow the last line.
            let later: Vec<(u64, Vec<u8>)> = (flushed..flushed + 14).map(write_of).collect();
            for pos in 0..SIZE as usize {
                if disk[pos] != expected[pos] {
                    let explained = later.iter().any(|(o, d)| {
                        (*o as usize..*o as usize + d.len()).contains(&pos)
                            && d[pos - *o as usize] == disk[pos]
                    });
                    assert!(
                        explained,
                        "round {round}: byte {pos} lost (flushed {flushed} writes)"
                    );
                }
            }
            // The volume is usable after recovery.
            v.write(0, &[7u8; 4096]).await.unwrap();
            v.seal().await.unwrap();
        });
    }
}

/// Every `.pack` file under `dir`.
fn packs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "pack") {
                found.push(path);
            }
        }
    }
    found
}

/// A whole-chunk write's objects become durable at the next flush (before
/// the log names them durably), not when the write returns. After a
/// restart without a clean shutdown, a flushed one reads back; so does an
/// unflushed one whose objects are still there (a killed process leaves
/// them in the page cache), made durable by the next flush; one whose
/// objects a power cut took (here: its pack emptied) is dropped, and the
/// volume reads the data from before it, not an error.
#[tokio::test]
async fn whole_chunk_writes_after_a_restart_flushed_recovered_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let open = || async {
        let mut config = cairn_store::EngineConfig::new(dir.path());
        config.idle_seal_after = Duration::from_secs(3600);
        cairn_store::Engine::open(config).await.unwrap()
    };
    let data = |seed| noise(seed, 2 * CHUNK as usize);
    let read = |v: std::sync::Arc<cairn_store::Volume>, offset: u64| async move {
        let mut got = vec![0u8; 2 * CHUNK as usize];
        v.read(offset, &mut got).await.unwrap();
        got
    };
    let engine = open().await;
    engine
        .create_volume(&ns(), &actor(), &vol("w"), SIZE, Some(CHUNK), Labels::new())
        .await
        .unwrap();
    let v = engine.volume(&ns(), &vol("w")).unwrap();
    v.write(0, &data(1)).await.unwrap();
    v.flush().await.unwrap();
    v.write(4 * CHUNK, &data(2)).await.unwrap();
    assert!(
        read(v.clone(), 4 * CHUNK).await == data(2),
        "a write reads back at once"
    );
    // No clean shutdown: nothing seals, no barrier runs.
    drop((v, engine));
    let before = packs(dir.path());

    let engine = open().await;
    let v = engine.volume(&ns(), &vol("w")).unwrap();
    assert!(
        read(v.clone(), 0).await == data(1),
        "a flushed whole-chunk write was lost"
    );
    assert!(
        read(v.clone(), 4 * CHUNK).await == data(2),
        "a whole-chunk write still on disk was not recovered"
    );
    v.write(8 * CHUNK, &data(3)).await.unwrap();
    drop((v, engine));
    // A power cut took what this run wrote: the pack it put objects in.
    let new: Vec<_> = packs(dir.path())
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(!new.is_empty(), "the second run wrote no pack");
    for pack in new {
        std::fs::File::options()
            .write(true)
            .open(pack)
            .unwrap()
            .set_len(0)
            .unwrap();
    }

    let engine = open().await;
    let v = engine.volume(&ns(), &vol("w")).unwrap();
    assert!(read(v.clone(), 0).await == data(1));
    assert!(read(v.clone(), 4 * CHUNK).await == data(2));
    assert!(
        read(v.clone(), 8 * CHUNK).await.iter().all(|&b| b == 0),
        "a whole-chunk write whose objects are gone was replayed"
    );
    v.flush().await.unwrap();
    v.seal().await.unwrap();
    assert!(read(v.clone(), 0).await == data(1), "lost in the seal");
    assert!(
        read(v, 4 * CHUNK).await == data(2),
        "the recovered write did not seal"
    );
}
