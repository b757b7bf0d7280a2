//! Garbage collection and scrub against the real file object store and
//! RocksDB: what GC deletes, what it must keep (shared subtrees, young
//! objects, everything writers are using while it runs), and what verify
//! finds when objects are damaged.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_store::objects::ObjectKind;
use cairn_store::{Engine, GcOptions, Labels, Readable, StoreError};
use common::*;
use futures::StreamExt;
use object_store::ObjectStoreExt;

const MIB: u64 = 1 << 20;

fn zero_grace() -> GcOptions {
    GcOptions {
        dry_run: false,
        grace: Duration::ZERO,
    }
}

/// Waits until the wall clock is in a new second, so objects written
/// before are strictly older than a zero-grace cutoff.
async fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    tokio::time::sleep(Duration::from_nanos(
        1_000_000_000 - now.subsec_nanos() as u64 + 1_000_000,
    ))
    .await;
}

async fn read_all(engine: &Engine, src: &Readable, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    engine.read(src, 0, &mut buf).await.unwrap();
    buf
}

async fn total_objects(engine: &Engine) -> (u64, u64) {
    let (c, cb) = count_objects(engine, "chunks").await;
    let (n, nb) = count_objects(engine, "nodes").await;
    (c + n, cb + nb)
}

#[test]
fn fork_survives_deleting_its_source_and_everything_deleted_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        let (a, b) = (vol("src"), vol("fork"));
        engine
            .create_volume(&ns(), &actor(), &a, 8 * MIB, None, Labels::new())
            .await
            .unwrap();
        let va = engine.volume(&ns(), &a).unwrap();
        let base = noise(1, 8 * MIB as usize);
        va.write(0, &base).await.unwrap();
        engine
            .snapshot(&ns(), &actor(), &a, Some(tag("s")), Labels::new())
            .await
            .unwrap();
        engine
            .fork(&ns(), &actor(), &a, &tag("s"), &b, None, &Labels::new())
            .await
            .unwrap();
        // The source moves on, then goes with its snapshot.
        va.write(MIB, &noise(2, 2 * MIB as usize)).await.unwrap();
        va.seal().await.unwrap();
        let vb = engine.volume(&ns(), &b).unwrap();
        let mut fork_model = base.clone();
        let patch = noise(3, 64 << 10);
        vb.write(5 * MIB, &patch).await.unwrap();
        fork_model[5 * MIB as usize..5 * MIB as usize + patch.len()].copy_from_slice(&patch);
        vb.seal().await.unwrap();
        engine.delete_volume(&ns(), &actor(), &a, false).await.unwrap();

        // Default grace: nothing is old enough yet.
        let report = engine.gc(&ns(), &actor(), GcOptions::default()).await.unwrap();
        assert_eq!(report.reclaimed_objects, 0);
        assert!(report.skipped_young_objects > 0, "{report:?}");

        next_second().await;
        let before = total_objects(&engine).await;
        // Dry run: reports, deletes nothing.
        let dry = engine
            .gc(
                &ns(),
                &actor(),
                GcOptions {
                    dry_run: true,
                    ..zero_grace()
                },
            )
            .await
            .unwrap();
        assert!(dry.reclaimed_objects > 0);
        assert_eq!(total_objects(&engine).await, before, "dry run deletes nothing");
        let report = engine.gc(&ns(), &actor(), zero_grace()).await.unwrap();
        assert_eq!(report.reclaimed_objects, dry.reclaimed_objects);
        assert_eq!(report.reclaimed_bytes, dry.reclaimed_bytes);
        let after = total_objects(&engine).await;
        assert_eq!(before.0 - after.0, report.reclaimed_objects, "{report:?}");
        assert_eq!(before.1 - after.1, report.reclaimed_bytes);
        // The source's later 2 MiB (32 chunks) and its dead tree nodes went.
        assert!(report.reclaimed_objects >= 32, "{report:?}");
        assert_eq!(after.0, report.marked_objects);

        // The fork, sharing the snapshot's subtrees, is intact.
        let src = engine.readable(&ns(), &b, None).unwrap();
        assert!(read_all(&engine, &src, 8 * MIB).await == fork_model);
        let verify = engine.verify(&ns(), None, None).await.unwrap();
        assert!(verify.is_clean(), "{verify:?}");
        assert_eq!(verify.objects_checked, after.0);

        // Delete everything: the store empties, and so does the index.
        engine.delete_volume(&ns(), &actor(), &b, false).await.unwrap();
        next_second().await;
        let report = engine.gc(&ns(), &actor(), zero_grace()).await.unwrap();
        assert_eq!(total_objects(&engine).await, (0, 0), "{report:?}");
        assert_eq!(engine.catalog().known_object_count().unwrap(), 0);
        // The disk space comes back: every pack that held them is compacted
        // away (in the background), the active one included.
        let packs = engine
            .objects()
            .packs()
            .expect("a local store is in packs")
            .clone();
        // A compacted pack's file is cut down a step at a time after it
        // leaves the store's state: wait for both.
        let files = || {
            std::fs::read_dir(dir.path().join("objects/packs"))
                .unwrap()
                .count()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (packs.usage().bytes > 0 || files() > 1) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let usage = packs.usage();
        assert_eq!(
            (usage.bytes, usage.live_bytes, usage.objects),
            (0, 0, 0),
            "{usage:?}"
        );
        assert_eq!(files(), 1, "only the new, empty active pack is left");
        let last = engine.last_gc().unwrap();
        assert_eq!(last, report);
        let events = engine.catalog().events(0, 1000).unwrap();
        assert_eq!(
            events
                .iter()
                .filter(|e| e.kind == cairn_store::EventKind::Gc)
                .count(),
            4
        );
    });
}

#[test]
fn one_gc_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        engine
            .create_volume(&ns(), &actor(), &vol("v"), 64 * MIB, None, Labels::new())
            .await
            .unwrap();
        let v = engine.volume(&ns(), &vol("v")).unwrap();
        v.write(0, &noise(9, 64 * MIB as usize)).await.unwrap();
        v.seal().await.unwrap();
        drop(v);
        drop(engine);
        // Reopened (no tree node cached) on a slow store: the first GC's
        // mark waits on node reads while the second starts.
        let engine = common::engine(dir.path()).await;
        engine
            .objects()
            .faults
            .latency_ms
            .store(100, std::sync::atomic::Ordering::Relaxed);
        let (ns, actor) = (ns(), actor());
        let (first, second) = tokio::join!(
            engine.gc(&ns, &actor, GcOptions::default()),
            engine.gc(&ns, &actor, GcOptions::default())
        );
        let refused = [&first, &second]
            .iter()
            .filter(|r| matches!(r, Err(StoreError::GcRunning)))
            .count();
        assert_eq!(refused, 1, "{first:?} {second:?}");
    });
}

#[test]
fn verify_reports_flipped_and_deleted_objects_and_reads_fail_only_there() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (a, b) = (vol("a"), vol("b"));
        let damaged;
        {
            let engine = engine(dir.path()).await;
            engine
                .create_volume(&ns(), &actor(), &a, 4 * MIB, None, Labels::new())
                .await
                .unwrap();
            let va = engine.volume(&ns(), &a).unwrap();
            va.write(0, &noise(11, 4 * MIB as usize)).await.unwrap();
            engine
                .snapshot(&ns(), &actor(), &a, Some(tag("s")), Labels::new())
                .await
                .unwrap();
            engine
                .fork(&ns(), &actor(), &a, &tag("s"), &b, None, &Labels::new())
                .await
                .unwrap();
            engine.seal_all().await.unwrap();
            // Damage two chunks: flip a byte in one, delete another.
            let store = engine.objects().store();
            let mut chunks: Vec<String> = store
                .list(Some(&object_store::path::Path::from("chunks")))
                .map(|m| m.unwrap().location.to_string())
                .collect()
                .await;
            chunks.sort();
            let (flipped, deleted) = (chunks[3].clone(), chunks[40].clone());
            let mut bytes = store
                .get(&flipped.as_str().into())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x40;
            store.put(&flipped.as_str().into(), bytes.into()).await.unwrap();
            store.delete(&deleted.as_str().into()).await.unwrap();
            engine.objects().make_durable().await.unwrap();
            damaged = (flipped, deleted);
        }
        let (flipped, deleted) = (&damaged.0, &damaged.1);
        let name_of = |key: &str| key.rsplit('/').next().unwrap().to_string();

        // A fresh engine: nothing cached.
        let engine = engine(dir.path()).await;
        let report = engine.verify(&ns(), None, None).await.unwrap();
        assert_eq!((report.missing, report.corrupt), (1, 1), "{report:?}");
        let mut bad_ranges: HashMap<String, Vec<Range>> = HashMap::new();
        for p in &report.problems {
            assert_eq!(p.kind, "chunk");
            let expected = if p.problem == "missing" {
                name_of(deleted)
            } else {
                name_of(flipped)
            };
            assert_eq!(p.id, expected);
            // The chunk is shared by the volume, its snapshot and the fork.
            assert_eq!(p.affected.len(), 3, "{p:?}");
            for r in &p.affected {
                assert_eq!(r.length, 64 << 10);
                bad_ranges.entry(p.problem.clone()).or_default().push((
                    r.volume.clone(),
                    r.tag.clone(),
                    r.offset,
                    r.length,
                ));
            }
        }
        // Reads: exactly the affected chunk ranges fail, with data errors.
        let src = engine.readable(&ns(), &b, None).unwrap();
        let mut failed = Vec::new();
        for chunk in 0..64u64 {
            let mut buf = vec![0u8; 64 << 10];
            match engine.read(&src, chunk << 16, &mut buf).await {
                Ok(()) => {}
                Err(e) => {
                    assert!(e.is_data_error(), "{e}");
                    assert_eq!(e.errno(), 5, "EIO for NBD");
                    failed.push(chunk << 16);
                }
            }
        }
        let mut expected: Vec<u64> = bad_ranges
            .values()
            .flatten()
            .filter(|(v, t, _, _)| v == "b" && t.is_none())
            .map(|(_, _, off, _)| *off)
            .collect();
        expected.sort_unstable();
        assert_eq!(failed, expected);
        // Verify of one target reports only that target's ranges.
        let one = engine.verify(&ns(), Some(&a), Some(&tag("s"))).await.unwrap();
        assert_eq!(one.targets, 1);
        assert!(one
            .problems
            .iter()
            .all(|p| p.affected.len() == 1 && p.affected[0].tag.as_deref() == Some("s")));
    });
}

/// The rule that makes a zero grace period safe: an unreachable, old
/// object that a write in progress has deduplicated against (claimed)
/// survives GC; the same object unclaimed does not.
#[test]
fn claimed_objects_survive_gc_during_a_write() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = engine(dir.path()).await;
        let (claimed, unclaimed) = (noise(21, 64 << 10), noise(22, 64 << 10));
        engine
            .create_volume(&ns(), &actor(), &vol("gone"), MIB, None, Labels::new())
            .await
            .unwrap();
        let v = engine.volume(&ns(), &vol("gone")).unwrap();
        v.write(0, &[claimed.clone(), unclaimed.clone()].concat())
            .await
            .unwrap();
        v.seal().await.unwrap();
        engine
            .delete_volume(&ns(), &actor(), &vol("gone"), false)
            .await
            .unwrap();
        next_second().await;
        next_second().await;

        // A write starts, and deduplicates one chunk against the dead one.
        let objects = engine.objects();
        let writing = objects.begin_write();
        let id = |c: &[u8]| cairn_chunker::ChunkId::of(c).0;
        assert!(objects.claim(ObjectKind::Chunk, &id(&claimed)).await.unwrap());
        let report = engine.gc(&ns(), &actor(), zero_grace()).await.unwrap();
        drop(writing);
        let exists = |c: &[u8]| {
            let path = objects.path(ObjectKind::Chunk, &id(c));
            async move { objects.store().head(&path).await.is_ok() }
        };
        assert!(exists(&claimed).await, "a claimed chunk was deleted: {report:?}");
        assert!(
            !exists(&unclaimed).await,
            "the unclaimed dead chunk stays: {report:?}"
        );
    });
}

/// Writers keep writing, snapshotting, forking, cloning and deleting while
/// GC runs again and again with a zero grace period. At the end every live
/// volume and snapshot reads back its model, verify is clean, and after the
/// last deletions a GC leaves only what the survivors reference.
#[test]
fn gc_under_concurrent_writers_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let seconds: u64 = std::env::var("CAIRN_GC_STRESS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let engine = engine(dir.path()).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
            let mut writers = Vec::new();
            for w in 0..3u64 {
                let engine = engine.clone();
                writers.push(tokio::spawn(async move { writer(engine, w, deadline).await }));
            }
            let gc_engine = engine.clone();
            let collector = tokio::spawn(async move {
                let mut runs = 0u64;
                let mut reclaimed = 0u64;
                while tokio::time::Instant::now() < deadline {
                    let report = gc_engine.gc(&ns(), &actor(), zero_grace()).await.unwrap();
                    reclaimed += report.reclaimed_objects;
                    runs += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (runs, reclaimed)
            });
            let mut models = HashMap::new();
            for w in writers {
                models.extend(w.await.unwrap());
            }
            let (runs, reclaimed) = collector.await.unwrap();
            println!("{runs} GC runs reclaimed {reclaimed} objects while writers ran");
            assert!(runs >= 3);
            assert!(
                reclaimed > 0,
                "writers delete volumes: something must have been reclaimed"
            );

            for ((name, tag), model) in &models {
                let src = engine
                    .readable(&ns(), &vol(name), tag.as_ref().map(|t| common::tag(t)).as_ref())
                    .unwrap();
                let got = read_all(&engine, &src, model.len() as u64).await;
                assert!(got == *model, "{name}@{tag:?} differs from its model");
            }
            engine.seal_all().await.unwrap();
            let verify = engine.verify(&ns(), None, None).await.unwrap();
            assert!(verify.is_clean(), "{verify:?}");

            // Delete all but one volume; after a GC past the cutoff the store
            // holds exactly what the survivor references.
            let mut names: Vec<&String> = models
                .keys()
                .filter(|(_, t)| t.is_none())
                .map(|(n, _)| n)
                .collect();
            names.sort();
            let keep = names[0].clone();
            for name in &names[1..] {
                engine
                    .delete_volume(&ns(), &actor(), &vol(name), false)
                    .await
                    .unwrap();
            }
            for (name, tag) in models.keys() {
                if let (true, Some(tag)) = (*name == keep, tag) {
                    engine
                        .delete_snapshot(&ns(), &actor(), &vol(name), &common::tag(tag))
                        .await
                        .unwrap();
                }
            }
            next_second().await;
            let report = engine.gc(&ns(), &actor(), zero_grace()).await.unwrap();
            let (objects, bytes) = total_objects(&engine).await;
            assert_eq!(objects, report.marked_objects, "{report:?}");
            assert_eq!(bytes, report.marked_bytes);
            let verify = engine.verify(&ns(), None, None).await.unwrap();
            assert!(verify.is_clean());
            assert_eq!(
                verify.objects_checked, objects,
                "only the survivor's objects remain"
            );
            let src = engine.readable(&ns(), &vol(&keep), None).unwrap();
            let model = &models[&(keep.clone(), None)];
            assert!(read_all(&engine, &src, model.len() as u64).await == *model);
        });
}

type Models = HashMap<(String, Option<String>), Vec<u8>>;
/// (volume, tag, offset, length) of a broken range.
type Range = (String, Option<String>, u64, u64);

/// One writer's life: its own volumes, random writes, seals, snapshots,
/// forks, clones and deletes; returns the models of what survives.
async fn writer(engine: Arc<Engine>, w: u64, deadline: tokio::time::Instant) -> Models {
    const SIZE: usize = 2 << 20;
    let mut models: Models = HashMap::new();
    let mut seq = 0u64;
    let mut rng = w * 7919 + 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let first = format!("w{w}-v0");
    engine
        .create_volume(&ns(), &actor(), &vol(&first), SIZE as u64, None, Labels::new())
        .await
        .unwrap();
    models.insert((first, None), vec![0u8; SIZE]);
    while tokio::time::Instant::now() < deadline {
        seq += 1;
        let mut live: Vec<String> = models
            .keys()
            .filter(|(_, t)| t.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        live.sort();
        let name = live[(next() % live.len() as u64) as usize].clone();
        let v = engine.volume(&ns(), &vol(&name)).unwrap();
        match next() % 10 {
            0..=1 => {
                let len = ((next() % 32) as usize + 1) * 4096;
                let offset = (next() as usize % (SIZE - len)) & !4095;
                let data = noise(next(), len);
                v.write(offset as u64, &data).await.unwrap();
                models.get_mut(&(name, None)).unwrap()[offset..offset + len].copy_from_slice(&data);
            }
            2..=4 => {
                // Whole chunks from a small pool of contents: writers keep
                // deduplicating against chunks that deleted volumes left.
                const CHUNK: usize = 64 << 10;
                let n = (next() % 4) as usize + 1;
                let offset = (next() as usize % (SIZE / CHUNK - n)) * CHUNK;
                let data: Vec<u8> = (0..n).flat_map(|_| noise(1000 + next() % 64, CHUNK)).collect();
                let len = data.len();
                v.write(offset as u64, &data).await.unwrap();
                models.get_mut(&(name, None)).unwrap()[offset..offset + len].copy_from_slice(&data);
            }
            5 => {
                v.seal().await.unwrap();
            }
            6 => {
                let t = format!("t{seq}");
                engine
                    .snapshot(&ns(), &actor(), &vol(&name), Some(tag(&t)), Labels::new())
                    .await
                    .unwrap();
                let model = models[&(name.clone(), None)].clone();
                models.insert((name, Some(t)), model);
            }
            7 => {
                let snaps: Vec<String> = models
                    .keys()
                    .filter(|(n, t)| *n == name && t.is_some())
                    .map(|(_, t)| t.clone().unwrap())
                    .collect();
                if let Some(t) = snaps.first() {
                    let new = format!("w{w}-f{seq}");
                    engine
                        .fork(
                            &ns(),
                            &actor(),
                            &vol(&name),
                            &tag(t),
                            &vol(&new),
                            None,
                            &Labels::new(),
                        )
                        .await
                        .unwrap();
                    let model = models[&(name.clone(), Some(t.clone()))].clone();
                    models.insert((new, None), model);
                }
            }
            8 => {
                let new = format!("w{w}-c{seq}");
                engine
                    .clone_volume(&ns(), &actor(), &vol(&name), Some(vol(&new)), None)
                    .await
                    .unwrap();
                let model = models[&(name.clone(), None)].clone();
                // A clone snapshots its source under a generated tag.
                let tags: Vec<String> = engine
                    .list_snapshots(&ns(), Some(&vol(&name)))
                    .unwrap()
                    .into_iter()
                    .map(|s| s.tag.to_string())
                    .filter(|t| !models.contains_key(&(name.clone(), Some(t.clone()))))
                    .collect();
                for t in tags {
                    models.insert((name.clone(), Some(t)), model.clone());
                }
                models.insert((new, None), model);
            }
            _ => {
                if live.len() > 1 {
                    engine
                        .delete_volume(&ns(), &actor(), &vol(&name), false)
                        .await
                        .unwrap();
                    models.retain(|(n, _), _| *n != name);
                }
            }
        }
        tokio::task::yield_now().await;
    }
    models
}

/// A hung upload holds no lock: while a seal's upload hangs, GC runs to
/// the end and reclaims, and another writer whose data deduplicates seals;
/// once the store answers again the hung seal finishes and everything
/// reads back.
#[test]
fn a_hung_upload_stalls_neither_gc_nor_other_writers() {
    let dir = tempfile::tempdir().unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let engine = engine(dir.path()).await;
            let (garbage, kept, hung, twin) = (vol("garbage"), vol("kept"), vol("hung"), vol("twin"));
            for v in [&garbage, &kept, &hung, &twin] {
                engine
                    .create_volume(&ns(), &actor(), v, MIB, None, Labels::new())
                    .await
                    .unwrap();
            }
            let g = engine.volume(&ns(), &garbage).unwrap();
            g.write(0, &noise(1, MIB as usize)).await.unwrap();
            g.seal().await.unwrap();
            engine
                .delete_volume(&ns(), &actor(), &garbage, false)
                .await
                .unwrap();
            let k = engine.volume(&ns(), &kept).unwrap();
            k.write(0, &noise(2, MIB as usize)).await.unwrap();
            k.seal().await.unwrap();
            next_second().await;

            let h = engine.volume(&ns(), &hung).unwrap();
            h.write(0, &noise(3, MIB as usize)).await.unwrap();
            let faults = engine.objects().faults.clone();
            faults.hang_puts.store(true, std::sync::atomic::Ordering::Relaxed);
            let sealing = tokio::spawn({
                let h = h.clone();
                async move { h.seal().await }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!sealing.is_finished(), "the seal is inside a hung upload");

            let report =
                tokio::time::timeout(Duration::from_secs(10), engine.gc(&ns(), &actor(), zero_grace()))
                    .await
                    .expect("GC does not wait for a hung upload")
                    .unwrap();
            assert!(report.reclaimed_objects > 0, "{report:?}");

            // Same bytes as `kept`: every chunk and node is a dedup claim.
            let t = engine.volume(&ns(), &twin).unwrap();
            t.write(0, &noise(2, MIB as usize)).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), t.seal())
                .await
                .expect("dedup claims do not wait for a hung upload")
                .unwrap();

            faults
                .hang_puts
                .store(false, std::sync::atomic::Ordering::Relaxed);
            sealing.await.unwrap().unwrap();
            for (v, seed) in [(&kept, 2), (&hung, 3), (&twin, 2)] {
                let src = engine.readable(&ns(), v, None).unwrap();
                assert!(
                    read_all(&engine, &src, MIB).await == noise(seed, MIB as usize),
                    "{v}"
                );
            }
            assert!(engine.verify(&ns(), None, None).await.unwrap().is_clean());
        });
}
