//! A snapshot of a volume with unsealed writes is taken without sealing
//! (pending), reads right at once, survives a restart while pending, takes
//! no later write, and gets its final root from the background seal;
//! forking it does not seal (see `pending_fork.rs` for forks).

mod common;

use cairn_store::Labels;
use common::*;

const SIZE: u64 = 1 << 20;

async fn read(engine: &cairn_store::Engine, name: &str, t: Option<&str>) -> Vec<u8> {
    let t = t.map(tag);
    let src = engine.readable(&ns(), &vol(name), t.as_ref()).unwrap();
    let mut buf = vec![0xa5u8; SIZE as usize];
    engine.read(&src, 0, &mut buf).await.unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_snapshot_reads_survives_restart_and_seals() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, v) = engine_with_v(dir.path(), SIZE).await;
    let first = noise(1, 300_000);
    v.write(4096, &first).await.unwrap();
    let mut model = vec![0u8; SIZE as usize];
    model[4096..4096 + first.len()].copy_from_slice(&first);

    let s1 = engine
        .snapshot(&ns(), &actor(), &vol("v"), Some(tag("s1")), Labels::new())
        .await
        .unwrap();
    assert!(s1.pending.is_some(), "a snapshot with dirty data does not seal");
    // Writes after the snapshot are not in it.
    let later = noise(2, 100_000);
    v.write(0, &later).await.unwrap();
    let mut live = model.clone();
    live[..later.len()].copy_from_slice(&later);
    assert!(
        read(&engine, "v", Some("s1")).await == model,
        "pending snapshot reads its data"
    );
    assert!(read(&engine, "v", None).await == live);
    let s2 = engine
        .snapshot(&ns(), &actor(), &vol("v"), Some(tag("s2")), Labels::new())
        .await
        .unwrap();
    assert!(
        s2.pending > s1.pending,
        "each snapshot waits for its own generation"
    );

    // Restart with both pending: rebuilt from the logs.
    v.flush().await.unwrap();
    drop(v);
    drop(engine);
    let engine = common::engine(dir.path()).await;
    assert!(engine
        .snapshot_record(&ns(), &vol("v"), &tag("s1"))
        .unwrap()
        .pending
        .is_some());
    assert!(
        read(&engine, "v", Some("s1")).await == model,
        "after restart, still pending"
    );
    assert!(read(&engine, "v", Some("s2")).await == live);
    assert!(read(&engine, "v", None).await == live);

    // Fork of a pending snapshot does not seal it.
    let fork = engine
        .fork(
            &ns(),
            &actor(),
            &vol("v"),
            &tag("s1"),
            &vol("f"),
            None,
            &Labels::new(),
        )
        .await
        .unwrap();
    assert!(fork.base_pending);
    let s1 = engine.snapshot_record(&ns(), &vol("v"), &tag("s1")).unwrap();
    assert!(s1.pending.is_some(), "not sealed for the fork");
    assert!(read(&engine, "f", None).await == model);
    engine.seal_all().await.unwrap();
    let s1 = engine.snapshot_record(&ns(), &vol("v"), &tag("s1")).unwrap();
    assert!(s1.pending.is_none(), "sealed by seal_all");
    let fork = engine.volume(&ns(), &vol("f")).unwrap().record();
    assert!(!fork.base_pending, "the fork adopted its base");
    assert_eq!(fork.root, s1.root);
    assert!(read(&engine, "f", None).await == model);
    assert!(
        read(&engine, "v", Some("s1")).await == model,
        "sealed snapshot reads the same"
    );
    let s2 = engine.snapshot_record(&ns(), &vol("v"), &tag("s2")).unwrap();
    assert!(s2.pending.is_none());
    assert!(read(&engine, "v", Some("s2")).await == live);
    assert!(engine.verify(&ns(), None, None).await.unwrap().is_clean());
}

/// The log files in the data dir's journal.
fn logs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut logs: Vec<_> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs
}

/// A snapshot's record commits while its log syncs, so a power cut
/// between the two keeps the record with only what reached the log (its
/// unflushed writes were never promised; the snapshot call had not
/// returned). Modelled as such a cut leaves the files: the snapshot's log
/// cut back to what the last flush made durable. The volume and the
/// snapshot open with the flushed writes, later writes stay out of the
/// snapshot, and its seal gives it that content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_between_a_snapshots_commit_and_its_log_sync_keeps_it_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, v) = engine_with_v(dir.path(), SIZE).await;
    let flushed = noise(3, 65536);
    v.write(0, &flushed).await.unwrap();
    v.flush().await.unwrap();
    let log = logs(dir.path());
    assert_eq!(log.len(), 1, "one generation written: {log:?}");
    let durable = std::fs::metadata(&log[0]).unwrap().len();
    v.write(131072, &noise(4, 65536)).await.unwrap();
    let s = engine
        .snapshot(&ns(), &actor(), &vol("v"), Some(tag("s")), Labels::new())
        .await
        .unwrap();
    assert!(s.pending.is_some(), "the snapshot is pending");
    drop(v);
    drop(engine);
    assert_eq!(logs(dir.path()), log, "the snapshot froze the only generation");
    std::fs::File::options()
        .write(true)
        .open(&log[0])
        .unwrap()
        .set_len(durable)
        .unwrap();

    let engine = common::engine(dir.path()).await;
    let mut model = vec![0u8; SIZE as usize];
    model[..flushed.len()].copy_from_slice(&flushed);
    let s = engine.snapshot_record(&ns(), &vol("v"), &tag("s")).unwrap();
    assert!(s.pending.is_some(), "still pending after the cut");
    assert!(
        read(&engine, "v", Some("s")).await == model,
        "the snapshot holds what reached its log"
    );
    assert!(read(&engine, "v", None).await == model, "so does the volume");
    let later = noise(5, 65536);
    let v = engine.volume(&ns(), &vol("v")).unwrap();
    v.write(262144, &later).await.unwrap();
    let mut live = model.clone();
    live[262144..262144 + later.len()].copy_from_slice(&later);
    assert!(
        read(&engine, "v", Some("s")).await == model,
        "a later write went into the snapshot"
    );
    v.flush().await.unwrap();
    drop(v);
    drop(engine);
    let engine = common::engine(dir.path()).await;
    assert!(
        read(&engine, "v", Some("s")).await == model,
        "a later write went into the snapshot's log"
    );
    assert!(read(&engine, "v", None).await == live);
    engine.seal_all().await.unwrap();
    let s = engine.snapshot_record(&ns(), &vol("v"), &tag("s")).unwrap();
    assert!(s.pending.is_none(), "sealed");
    assert!(read(&engine, "v", Some("s")).await == model);
    assert!(read(&engine, "v", None).await == live);
    assert!(engine.verify(&ns(), None, None).await.unwrap().is_clean());
}
