//! Forks and clones of pending snapshots are made without sealing: they
//! read through the source's unsealed generations, take their own writes,
//! survive restarts, and adopt the snapshot's final root once it is sealed
//! (or before anything would lose what they resolve it from).

mod common;

use cairn_store::{Engine, Labels};
use common::*;

const SIZE: u64 = 1 << 20;
const CHUNK: u64 = 16384;

async fn read(engine: &Engine, name: &str, t: Option<&str>, len: u64) -> Vec<u8> {
    let t = t.map(tag);
    let src = engine.readable(&ns(), &vol(name), t.as_ref()).unwrap();
    let mut buf = vec![0xa5u8; len as usize];
    engine.read(&src, 0, &mut buf).await.unwrap();
    buf
}

async fn create_dirty(engine: &Engine, name: &str, seed: u64) -> Vec<u8> {
    engine
        .create_volume(&ns(), &actor(), &vol(name), SIZE, Some(CHUNK), Labels::new())
        .await
        .unwrap();
    let data = noise(seed, 300_000);
    engine
        .volume(&ns(), &vol(name))
        .unwrap()
        .write(4096, &data)
        .await
        .unwrap();
    let mut model = vec![0u8; SIZE as usize];
    model[4096..4096 + data.len()].copy_from_slice(&data);
    model
}

fn write_model(model: &mut [u8], offset: usize, data: &[u8]) {
    model[offset..offset + data.len()].copy_from_slice(data);
}

fn base_pending(engine: &Engine, name: &str) -> bool {
    engine.volume(&ns(), &vol(name)).unwrap().record().base_pending
}

async fn flush_all(engine: &Engine, names: &[&str]) {
    for n in names {
        engine.volume(&ns(), &vol(n)).unwrap().flush().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_dirty_volumes_read_through_until_their_base_is_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let mut model = create_dirty(&engine, "v", 1).await;
    let v = engine.volume(&ns(), &vol("v")).unwrap();

    // A clone twice the size: its second half reads as zeros.
    let c = engine
        .clone_volume(&ns(), &actor(), &vol("v"), Some(vol("c")), Some(2 * SIZE))
        .await
        .unwrap();
    assert!(c.base_pending, "a clone of dirty data does not wait for a seal");
    assert!(v.log_bytes() > 0, "the source's data is still unsealed");
    let clone_snapshot = engine.snapshot_record(&ns(), &vol("v"), &tag("clone-c")).unwrap();
    assert!(clone_snapshot.pending.is_some());

    let mut c_model = model.clone();
    c_model.resize(2 * SIZE as usize, 0);
    // The source moves on; the clone takes its own (unaligned) writes.
    let later = noise(2, 70_000);
    v.write(0, &later).await.unwrap();
    write_model(&mut model, 0, &later);
    let own = noise(3, 50_000);
    engine
        .volume(&ns(), &vol("c"))
        .unwrap()
        .write(10_001, &own)
        .await
        .unwrap();
    write_model(&mut c_model, 10_001, &own);
    assert!(read(&engine, "c", None, 2 * SIZE).await == c_model);
    assert!(read(&engine, "v", None, SIZE).await == model);

    // Allocation reads through the base too: data where the source or the
    // clone wrote, holes past the source's size.
    let src = engine.readable(&ns(), &vol("c"), None).unwrap();
    let runs = engine.allocation(&src, 0, 2 * SIZE).await.unwrap();
    drop(src);
    let data: u64 = runs.iter().filter(|(_, hole)| !hole).map(|(n, _)| n).sum();
    let expected_chunks = (4096 + 300_000u64).div_ceil(CHUNK);
    assert_eq!(data, expected_chunks * CHUNK, "runs {runs:?}");
    assert_eq!(runs.last(), Some(&(2 * SIZE - expected_chunks * CHUNK, true)));

    // A clone of the clone chains through both.
    engine
        .clone_volume(&ns(), &actor(), &vol("c"), Some(vol("c2")), None)
        .await
        .unwrap();
    assert!(base_pending(&engine, "c2"));
    assert!(read(&engine, "c2", None, 2 * SIZE).await == c_model);

    // Restart with everything pending: rebuilt from the logs.
    flush_all(&engine, &["v", "c", "c2"]).await;
    drop(v);
    drop(engine);
    let engine = common::engine(dir.path()).await;
    assert!(base_pending(&engine, "c") && base_pending(&engine, "c2"));
    assert!(read(&engine, "c", None, 2 * SIZE).await == c_model);
    assert!(read(&engine, "c2", None, 2 * SIZE).await == c_model);
    assert!(read(&engine, "v", None, SIZE).await == model);

    // The source alone is sealed, then a restart: the clone adopts the
    // sealed snapshot at open.
    engine.volume(&ns(), &vol("v")).unwrap().seal().await.unwrap();
    drop(engine);
    let engine = common::engine(dir.path()).await;
    assert!(!base_pending(&engine, "c"), "adopted at open");
    assert!(base_pending(&engine, "c2"), "c's snapshot is still pending");
    assert!(read(&engine, "c", None, 2 * SIZE).await == c_model);
    assert!(read(&engine, "c2", None, 2 * SIZE).await == c_model);

    engine.seal_all().await.unwrap();
    assert!(!base_pending(&engine, "c2"));
    for (name, expected) in [("c", &c_model), ("c2", &c_model), ("v", &model)] {
        let len = expected.len() as u64;
        assert!(
            read(&engine, name, None, len).await == *expected,
            "{name} after the seals"
        );
    }
    assert!(engine.verify(&ns(), None, None).await.unwrap().is_clean());
    drop(engine);
    let engine = common::engine(dir.path()).await;
    assert!(read(&engine, "c2", None, 2 * SIZE).await == c_model);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_adopt_their_base_before_its_snapshot_or_volume_goes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let model = create_dirty(&engine, "v", 4).await;
    let none = Labels::new();
    engine
        .snapshot(&ns(), &actor(), &vol("v"), Some(tag("s")), none.clone())
        .await
        .unwrap();
    engine
        .fork(&ns(), &actor(), &vol("v"), &tag("s"), &vol("f1"), None, &none)
        .await
        .unwrap();
    assert!(base_pending(&engine, "f1"));
    engine
        .delete_snapshot(&ns(), &actor(), &vol("v"), &tag("s"))
        .await
        .unwrap();
    assert!(!base_pending(&engine, "f1"), "adopted before its snapshot went");
    assert!(read(&engine, "f1", None, SIZE).await == model);

    // Dirty again, a fork of a new pending snapshot, then the source and
    // its snapshots are deleted.
    let v = engine.volume(&ns(), &vol("v")).unwrap();
    let more = noise(5, 40_000);
    v.write(500_000, &more).await.unwrap();
    let mut model2 = model.clone();
    write_model(&mut model2, 500_000, &more);
    engine
        .snapshot(&ns(), &actor(), &vol("v"), Some(tag("s2")), none.clone())
        .await
        .unwrap();
    engine
        .fork(&ns(), &actor(), &vol("v"), &tag("s2"), &vol("f2"), None, &none)
        .await
        .unwrap();
    drop(v);
    engine
        .delete_volume(&ns(), &actor(), &vol("v"), false)
        .await
        .unwrap();
    assert!(!base_pending(&engine, "f2"));
    assert!(read(&engine, "f2", None, SIZE).await == model2);
    drop(engine);
    let engine = common::engine(dir.path()).await;
    assert!(read(&engine, "f1", None, SIZE).await == model);
    assert!(read(&engine, "f2", None, SIZE).await == model2);
    assert!(engine.verify(&ns(), None, None).await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_resize_and_rollback_of_a_fork_with_a_pending_base() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path()).await;
    let model = create_dirty(&engine, "v", 6).await;
    let none = Labels::new();
    for name in ["a", "b", "r"] {
        engine
            .clone_volume(&ns(), &actor(), &vol("v"), Some(vol(name)), None)
            .await
            .unwrap();
        assert!(base_pending(&engine, name));
    }

    // A snapshot of a clean fork is its base: it waits for the base's seal.
    let snap = engine
        .snapshot(&ns(), &actor(), &vol("a"), Some(tag("a1")), none.clone())
        .await
        .unwrap();
    assert!(snap.pending.is_none());
    assert!(!base_pending(&engine, "a"));
    assert!(read(&engine, "a", Some("a1"), SIZE).await == model);

    // Resize builds on the adopted base.
    engine.resize(&ns(), &actor(), &vol("b"), 2 * SIZE).await.unwrap();
    let mut grown = model.clone();
    grown.resize(2 * SIZE as usize, 0);
    assert!(read(&engine, "b", None, 2 * SIZE).await == grown);

    // Rollback to a pending snapshot of the fork's own writes.
    let r = engine.volume(&ns(), &vol("r")).unwrap();
    let own = noise(7, 20_000);
    r.write(100_000, &own).await.unwrap();
    let mut r_model = model.clone();
    write_model(&mut r_model, 100_000, &own);
    engine
        .snapshot(&ns(), &actor(), &vol("r"), Some(tag("r1")), none.clone())
        .await
        .unwrap();
    r.write(0, &noise(8, 8192)).await.unwrap();
    engine
        .rollback(&ns(), &actor(), &vol("r"), &tag("r1"))
        .await
        .unwrap();
    assert!(read(&engine, "r", None, SIZE).await == r_model);
    engine.seal_all().await.unwrap();
    assert!(engine.verify(&ns(), None, None).await.unwrap().is_clean());
}
