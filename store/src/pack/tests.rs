use super::*;

fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read(store: &PackStore, key: &str) -> Option<Vec<u8>> {
    store.get(key, None).unwrap().map(|got| got.data)
}

fn keys(store: &PackStore, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.page(prefix, after.as_deref(), 3).unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        out.extend(page.into_iter().map(|(k, _)| k));
    }
    out
}

#[test]
fn objects_read_back_list_by_prefix_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    for i in 0..10u8 {
        let data = body(i, 1000 + usize::from(i));
        store
            .put(&format!("chunks/{i:02}"), &[&data[..10], &data[10..]])
            .unwrap();
    }
    store.put("nodes/x", &[b"node"]).unwrap();
    assert_eq!(read(&store, "chunks/03"), Some(body(3, 1003)));
    let range = object_store::GetRange::Bounded(5..9);
    let got = store.get("chunks/03", Some(&range)).unwrap().unwrap();
    assert_eq!(got.range, 5..9);
    let part = got.data;
    assert_eq!(part, body(3, 1003)[5..9]);
    assert_eq!(read(&store, "chunks/99"), None);
    assert_eq!(keys(&store, "chunks/").len(), 10, "pages of 3 cover all ten");
    assert_eq!(keys(&store, "nodes/"), vec!["nodes/x".to_string()]);
    assert_eq!(keys(&store, "").len(), 11);
    assert!(
        !store.delete("chunks/99").unwrap(),
        "deleting nothing is no error"
    );
    store.delete("chunks/00").unwrap();
    store.sync().unwrap();
    drop(store);

    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, "chunks/00"), None);
    assert_eq!(read(&store, "chunks/09"), Some(body(9, 1009)));
    assert_eq!(read(&store, "nodes/x"), Some(b"node".to_vec()));
    let usage = store.usage();
    assert_eq!(usage.files, 2, "the pack written before and the new active one");
    assert_eq!(usage.live_bytes, (1001..1010).sum::<u64>() + 4);
    assert_eq!(usage.objects, 10);
}

/// A store whose pack 1 holds objects `chunks/00`-`chunks/63` (4 KiB
/// each) and is full, so that it may be compacted once under half live.
fn pack_of_64_then_a_new_one(dir: &Path) -> Arc<PackStore> {
    let store = PackStore::open(dir).unwrap();
    for i in 0..64u8 {
        store.put(&format!("chunks/{i:02}"), &[&body(i, 4096)]).unwrap();
    }
    // Roll over to a new active pack so the first may be compacted.
    store.state.lock().packs.get_mut(&1).unwrap().size = PACK_BYTES;
    store.put("chunks/zz", &[&body(200, 4096)]).unwrap();
    store.state.lock().packs.get_mut(&1).unwrap().size = 64 * (4096 + 10 + 9) as u64;
    store.sync().unwrap();
    store
}

/// After [`pack_of_64_then_a_new_one`] and deletes of the even objects
/// and `chunks/01`: the others read back, the deleted ones are gone.
fn odd_objects_but_01_read_back(store: &PackStore) {
    for i in 0..64u8 {
        let expected = (i % 2 == 1 && i != 1).then(|| body(i, 4096));
        assert_eq!(read(store, &format!("chunks/{i:02}")), expected, "object {i}");
    }
}

#[test]
fn a_pack_under_half_live_is_compacted_and_its_objects_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = pack_of_64_then_a_new_one(dir.path());
    assert!(store.candidates().is_empty());
    let mut crossed = 0;
    for i in (0..64u8).step_by(2).chain([1]) {
        crossed += usize::from(store.delete(&format!("chunks/{i:02}")).unwrap());
    }
    assert_eq!(crossed, 1, "one delete takes the pack under half live");
    assert_eq!(store.candidates(), vec![1]);
    compact::compact(&store, 1).unwrap();
    assert!(!pack_path(dir.path(), 1).exists(), "the compacted pack is gone");
    odd_objects_but_01_read_back(&store);
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, "chunks/63"), Some(body(63, 4096)));
    assert_eq!(read(&store, "chunks/zz"), Some(body(200, 4096)));
    assert_eq!(store.usage().live_bytes, 31 * 4096 + 4096);
    assert_eq!(store.usage().objects, 32);
}

#[test]
fn stopping_compaction_joins_its_thread_and_keeps_every_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = pack_of_64_then_a_new_one(dir.path());
    // Deletes start the compaction thread once the pack is a candidate.
    for i in (0..64u8).step_by(2).chain([1]) {
        if store.delete(&format!("chunks/{i:02}")).unwrap() {
            store.maybe_compact();
        }
    }
    store.stop_compaction();
    assert!(store.compactor.lock().is_none(), "the thread was joined");
    assert_eq!(Arc::strong_count(&store), 1, "no thread holds the store");
    store.maybe_compact();
    assert!(
        store.compactor.lock().is_none(),
        "no compaction starts after a stop"
    );
    // A compaction asked for after the stop moves nothing and keeps the pack.
    compact::compact(&store, 1).unwrap();
    odd_objects_but_01_read_back(&store);
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, "chunks/63"), Some(body(63, 4096)));
    assert_eq!(store.usage().objects, 32);
    // Opening started a compaction of pack 1: a process that exits while
    // it is inside RocksDB crashes on the way out.
    store.stop_compaction();
}

#[test]
fn compaction_keeps_a_put_or_delete_that_raced_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    for i in 0..8u8 {
        store.put(&format!("k/{i}"), &[&body(i, 100)]).unwrap();
    }
    store.state.lock().packs.get_mut(&1).unwrap().size = PACK_BYTES;
    store.put("k/new", &[b"x"]).unwrap();
    store.state.lock().packs.get_mut(&1).unwrap().size = 8 * (100 + 10 + 3);
    for i in 0..5u8 {
        store.delete(&format!("k/{i}")).unwrap();
    }
    // As if the compactor had copied k/5 and k/6, then a writer rewrote k/5
    // and GC deleted k/6 before the index was repointed.
    let old5 = store.head("k/5").unwrap().unwrap();
    let old6 = store.head("k/6").unwrap().unwrap();
    let (new5, w) = store.append("k/5", &[&body(5, 100)]).unwrap();
    w.unwrap();
    let (new6, w) = store.append("k/6", &[&body(6, 100)]).unwrap();
    w.unwrap();
    store.put("k/5", &[b"rewritten"]).unwrap();
    store.delete("k/6").unwrap();
    compact::repoint(
        &store,
        vec![("k/5".into(), old5, new5), ("k/6".into(), old6, new6)],
    )
    .unwrap();
    assert_eq!(
        read(&store, "k/5"),
        Some(b"rewritten".to_vec()),
        "the later put wins"
    );
    assert_eq!(read(&store, "k/6"), None, "the delete wins");
    compact::compact(&store, 1).unwrap();
    assert_eq!(read(&store, "k/7"), Some(body(7, 100)));
    assert_eq!(read(&store, "k/5"), Some(b"rewritten".to_vec()));
}

#[test]
fn a_small_active_pack_is_compacted_only_when_nothing_in_it_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    for i in 0..4u8 {
        store.put(&format!("k/{i}"), &[&body(i, 1000)]).unwrap();
    }
    for i in 0..3u8 {
        store.delete(&format!("k/{i}")).unwrap();
    }
    assert!(
        store.candidates().is_empty(),
        "a quarter live, but small and active"
    );
    assert!(store.delete("k/3").unwrap(), "the last delete makes it worth it");
    assert_eq!(store.candidates(), vec![1]);
    compact::compact(&store, 1).unwrap();
    assert!(!pack_path(dir.path(), 1).exists());
    assert_eq!(store.usage().bytes, 0, "only the new, empty active pack");
    assert!(
        store.candidates().is_empty(),
        "an empty active pack is no candidate"
    );
}

#[test]
fn a_batch_of_puts_reads_back_counts_once_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    store.put("chunks/a", &[b"old"]).unwrap();
    let bodies: Vec<Vec<u8>> = (0..5u8).map(|i| body(i, 700 + usize::from(i))).collect();
    let keys = ["chunks/a", "chunks/b", "chunks/c", "chunks/d", "chunks/e"];
    let parts: Vec<[&[u8]; 1]> = bodies.iter().map(|b| [&b[..]]).collect();
    let batch: Vec<(&str, &[&[u8]])> = keys.iter().zip(&parts).map(|(k, p)| (*k, &p[..])).collect();
    store.put_many(&batch, Pace::Paced).unwrap();
    for (key, data) in keys.iter().zip(&bodies) {
        assert_eq!(read(&store, key).as_ref(), Some(data), "{key}");
    }
    let usage = store.usage();
    assert_eq!(usage.objects, 5, "the rewritten key counts once");
    assert_eq!(
        usage.live_bytes,
        (700..705).sum::<u64>(),
        "the old record of chunks/a is dead"
    );
    store.sync().unwrap();
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, "chunks/a"), Some(bodies[0].clone()));
    assert_eq!(read(&store, "chunks/e"), Some(bodies[4].clone()));
    assert_eq!(store.usage().objects, 5);
}

#[test]
fn queued_reads_answer_every_reader_and_survive_abandoned_ones() {
    use object_store::ObjectStoreExt;
    let dir = tempfile::tempdir().unwrap();
    let packs = PackStore::open(dir.path()).unwrap();
    for i in 0..64u8 {
        packs.put(&format!("chunks/{i:02}"), &[&body(i, 4000)]).unwrap();
    }
    let objects = std::sync::Arc::new(store_impl::PackObjects::new(packs));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for round in 0..20u64 {
            // Many readers at once, some of them given up at once.
            let tasks: Vec<_> = (0..64u8)
                .map(|i| {
                    let objects = objects.clone();
                    tokio::spawn(async move {
                        let path = object_store::path::Path::from(format!("chunks/{i:02}"));
                        (i, objects.get(&path).await.unwrap().bytes().await.unwrap())
                    })
                })
                .collect();
            for (i, task) in tasks.into_iter().enumerate() {
                if (i as u64 + round).is_multiple_of(3) {
                    task.abort();
                    continue;
                }
                let (i, data) = tokio::time::timeout(std::time::Duration::from_secs(10), task)
                    .await
                    .expect("a queued read is answered")
                    .unwrap();
                assert_eq!(data, body(i, 4000), "object {i} in round {round}");
            }
        }
        let missing = objects.get(&object_store::path::Path::from("chunks/none")).await;
        assert!(
            matches!(missing, Err(object_store::Error::NotFound { .. })),
            "{missing:?}"
        );
    });
}

#[test]
fn a_read_whose_serving_task_never_runs_fails_instead_of_waiting() {
    use object_store::ObjectStoreExt;
    let dir = tempfile::tempdir().unwrap();
    let packs = PackStore::open(dir.path()).unwrap();
    packs.put("chunks/a", &[b"abc"]).unwrap();
    let objects = store_impl::PackObjects::new(packs);
    // A runtime already shut down: its pool drops the serving task unrun.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let handle = runtime.handle().clone();
    runtime.shutdown_background();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _entered = handle.enter();
        let got = futures::executor::block_on(objects.get(&object_store::path::Path::from("chunks/a")));
        // The store (and its RocksDB index) is closed before the answer
        // goes: a process that exits while another thread closes a
        // database can crash in its teardown.
        drop(objects);
        let _ = tx.send(got.map(drop).map_err(|e| e.to_string()));
    });
    let got = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the read returns");
    reader.join().expect("the reader does not panic");
    assert!(got.unwrap_err().contains("abandoned"));
}

/// Puts `n` objects of `len` bytes under `prefix` as one paced run.
fn put_run(store: &PackStore, prefix: &str, n: u8, len: usize) {
    put_run_paced(store, prefix, n, len, Pace::Paced)
}

/// [`put_run`] at `pace`.
fn put_run_paced(store: &PackStore, prefix: &str, n: u8, len: usize, pace: Pace) {
    let bodies: Vec<(String, Vec<u8>)> = (0..n).map(|i| (format!("{prefix}{i}"), body(i, len))).collect();
    let parts: Vec<[&[u8]; 1]> = bodies.iter().map(|(_, b)| [&b[..]]).collect();
    let objects: Vec<(&str, &[&[u8]])> = bodies
        .iter()
        .zip(&parts)
        .map(|((k, _), p)| (k.as_str(), &p[..]))
        .collect();
    store.put_many(&objects, pace).unwrap();
}

#[test]
fn long_runs_start_on_pages_and_compaction_steps_over_the_padding() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    let direct = store.state.lock().packs[&1].direct.is_some();
    if !direct {
        eprintln!("the temporary directory refuses O_DIRECT: long runs are checked buffered");
    }
    store.put("n/a", &[&body(1, 100)]).unwrap();
    put_run(&store, "c/", 3, 60_000);
    store.put("n/b", &[&body(2, 100)]).unwrap();
    put_run(&store, "d/", 3, 60_000);
    let first = store.head("c/0").unwrap().unwrap();
    let after_small = (HEADER + 3 + 100) as u64;
    let run = 3 * (HEADER as u64 + 3 + 60_000);
    match direct {
        true => {
            assert_eq!(
                first.offset,
                direct::ALIGN + (HEADER + 3) as u64,
                "a direct run starts on a page"
            );
            let b = store.head("n/b").unwrap().unwrap();
            assert_eq!(
                b.offset,
                direct::ALIGN + direct::align_up(run) + (HEADER + 3) as u64
            );
            assert_eq!(
                store.head("d/0").unwrap().unwrap().offset % direct::ALIGN,
                (HEADER + 3) as u64
            );
        }
        false => assert_eq!(first.offset, after_small + (HEADER + 3) as u64),
    }
    for (prefix, n) in [("c/", 3), ("d/", 3)] {
        for i in 0..n {
            assert_eq!(
                read(&store, &format!("{prefix}{i}")),
                Some(body(i, 60_000)),
                "{prefix}{i}"
            );
        }
    }
    // Roll over to a new active pack, then leave the first under half live.
    let size = store.state.lock().packs[&1].size;
    store.state.lock().packs.get_mut(&1).unwrap().size = PACK_BYTES;
    store.put("z", &[b"z"]).unwrap();
    store.state.lock().packs.get_mut(&1).unwrap().size = size;
    for key in ["n/a", "c/0", "c/1", "c/2", "d/0"] {
        store.delete(key).unwrap();
    }
    store.sync().unwrap();
    compact::compact(&store, 1).expect("every live record is found past the padding");
    assert!(!pack_path(dir.path(), 1).exists());
    drop(store);
    let store = PackStore::open(dir.path()).unwrap();
    assert_eq!(read(&store, "n/b"), Some(body(2, 100)));
    assert_eq!(read(&store, "d/1"), Some(body(1, 60_000)));
    assert_eq!(read(&store, "d/2"), Some(body(2, 60_000)));
    assert_eq!(read(&store, "c/1"), None);
    assert_eq!(store.usage().objects, 4);
}

#[test]
fn once_the_filesystem_refuses_direct_writes_runs_are_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    // As after a refused write: the flag is set and the pack it happened in
    // is closed.
    store.direct_refused.store(true, Ordering::Relaxed);
    store.roll(&mut store.state.lock()).unwrap();
    let active = store.state.lock().active;
    assert!(
        store.state.lock().packs[&active].direct.is_none(),
        "new packs get no direct handle"
    );
    store.put("n/a", &[&body(1, 100)]).unwrap();
    put_run(&store, "c/", 3, 60_000);
    let first = store.head("c/0").unwrap().unwrap();
    assert_eq!(
        first.offset,
        (2 * (HEADER + 3) + 100) as u64,
        "no padding when buffered"
    );
    for i in 0..3 {
        assert_eq!(read(&store, &format!("c/{i}")), Some(body(i, 60_000)));
    }
}

#[test]
fn a_batch_of_reads_answers_each_in_order_across_packs_gaps_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    put_run(&store, "a/", 8, 40_000);
    // Far from the run above (more than the read gap between), then in a
    // second pack.
    store.put("far", &[&body(9, 70_000)]).unwrap();
    store.put("b/0", &[&body(7, 5)]).unwrap();
    store.roll(&mut store.state.lock()).unwrap();
    put_run(&store, "c/", 3, 50_000);
    let tail = object_store::GetRange::Suffix(10);
    let mid = object_store::GetRange::Bounded(100..200);
    let past = object_store::GetRange::Offset(1_000_000);
    let reads: Vec<(&str, Option<&object_store::GetRange>)> = vec![
        ("c/2", None),
        ("a/5", Some(&mid)),
        ("missing", None),
        ("a/4", None),
        ("far", Some(&tail)),
        ("a/0", None),
        ("c/0", None),
        ("b/0", None),
        ("a/5", None),
        ("a/1", Some(&past)),
    ];
    let answers = store.get_many(&reads);
    assert_eq!(answers.len(), reads.len());
    let data = |i: usize| answers[i].as_ref().unwrap().as_ref().map(|g| g.data.clone());
    assert_eq!(data(0), Some(body(2, 50_000)));
    assert_eq!(data(1), Some(body(5, 40_000)[100..200].to_vec()));
    assert_eq!(data(2), None, "a missing key is no error");
    assert_eq!(data(3), Some(body(4, 40_000)));
    assert_eq!(data(4), Some(body(9, 70_000)[70_000 - 10..].to_vec()));
    assert_eq!(data(5), Some(body(0, 40_000)));
    assert_eq!(data(6), Some(body(0, 50_000)));
    assert_eq!(data(7), Some(body(7, 5)));
    assert_eq!(data(8), Some(body(5, 40_000)), "the same object twice");
    assert!(answers[9].is_err(), "a range past the end fails alone");
    assert_eq!(answers[1].as_ref().unwrap().as_ref().unwrap().range, 100..200);

    // Short puts are written through the page cache, and may not have
    // reached the disk when a long run over them is read around it.
    for i in 0..6u8 {
        store.put(&format!("s/{i}"), &[&body(i, 30_000)]).unwrap();
    }
    let keys: Vec<String> = (0..6).rev().map(|i| format!("s/{i}")).collect();
    let reads: Vec<(&str, Option<&object_store::GetRange>)> =
        keys.iter().map(|k| (k.as_str(), None)).collect();
    for (answer, i) in store.get_many(&reads).into_iter().zip((0..6u8).rev()) {
        assert_eq!(answer.unwrap().unwrap().data, body(i, 30_000), "s/{i}");
    }
}

#[test]
fn paced_direct_runs_are_synced_on_the_way_every_few_mib_unpaced_ones_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    if store.state.lock().packs[&1].direct.is_none() {
        eprintln!(
            "skipped: the temporary directory refuses O_DIRECT, so no direct write is synced on the way"
        );
        return;
    }
    // 3 runs of 6 × 600 kB: about 10.8 MB written directly.
    for run in 0..3u8 {
        put_run(&store, &format!("r{run}/"), 6, 600_000);
    }
    let syncs = store.append_lock.lock().syncs();
    let written = 3 * 6 * 600_000u64;
    assert!(
        syncs >= written / direct::SYNC_EVERY - 1 && syncs <= written / direct::SYNC_EVERY,
        "{syncs} syncs on the way for {written} bytes"
    );
    // A client's own writes are not synced on the way.
    for run in 3..6u8 {
        put_run_paced(&store, &format!("r{run}/"), 6, 600_000, Pace::Unpaced);
    }
    assert_eq!(store.append_lock.lock().syncs(), syncs, "unpaced runs made syncs");
    for run in 0..6u8 {
        for i in 0..6 {
            assert_eq!(read(&store, &format!("r{run}/{i}")), Some(body(i, 600_000)));
        }
    }
}

#[test]
fn paced_runs_wait_for_a_foreground_sync_unpaced_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = PackStore::open(dir.path()).unwrap();
    if store.state.lock().packs[&1].direct.is_none() {
        eprintln!("skipped: the temporary directory refuses O_DIRECT, so no write is paced");
        return;
    }
    let guard = store.foreground();
    // A client's own run goes through at once.
    put_run_paced(&store, "u/", 2, 600_000, Pace::Unpaced);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            put_run(&store, "p/", 2, 600_000);
            done_tx.send(()).unwrap();
        });
        let waited = done_rx.recv_timeout(std::time::Duration::from_millis(40));
        assert!(
            waited.is_err(),
            "a paced run was written during a foreground sync"
        );
        drop(guard);
        done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the paced run goes on once the sync is done");
    });
    // A foreground sync that never ends holds paced writes back only for a
    // bounded time per window.
    let _held = store.foreground();
    let started = std::time::Instant::now();
    put_run(&store, "b/", 2, 600_000);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(100),
        "did not wait"
    );
    for prefix in ["u/", "p/", "b/"] {
        for i in 0..2 {
            assert_eq!(
                read(&store, &format!("{prefix}{i}")),
                Some(body(i, 600_000)),
                "{prefix}{i}"
            );
        }
    }
}
