//! Cancellation: seals, snapshots, clones, forks and imports are started
//! on their own task and aborted at random points (an object store that
//! answers slowly puts many `.await`s inside each). After each abort:
//! every flushed write reads back, and the aborted operation either
//! happened whole or not at all (an import: each chunk old or new; a
//! clone: the volume and its snapshot both or neither). At the
//! end, and again after a restart, every volume and snapshot equals the
//! model and `verify` finds nothing wrong.
//!
//! `CAIRN_TEST_SEED` replays one run; `CAIRN_TEST_ITERATIONS` sets its
//! length.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_store::{Engine, Labels, Readable};
use common::*;

const CHUNK: u64 = 16 << 10;
const SIZE: u64 = 64 * CHUNK;

/// xorshift64*: small, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn read_volume(engine: &Engine, name: &str) -> Vec<u8> {
    let src = engine.readable(&ns(), &vol(name), None).unwrap();
    read_all(engine, &src).await
}

async fn read_snapshot(engine: &Engine, name: &str, t: &str) -> Vec<u8> {
    let src = engine.readable(&ns(), &vol(name), Some(&tag(t))).unwrap();
    read_all(engine, &src).await
}

async fn read_all(engine: &Engine, src: &Readable) -> Vec<u8> {
    let mut buf = vec![0xa5u8; SIZE as usize];
    engine.read(src, 0, &mut buf).await.unwrap();
    buf
}

/// Volumes and snapshots as they must read.
#[derive(Default)]
struct Model {
    volumes: BTreeMap<String, Vec<u8>>,
    snapshots: BTreeMap<(String, String), Vec<u8>>,
}

impl Model {
    async fn check(&self, engine: &Engine, when: &str) {
        for (name, want) in &self.volumes {
            let got = read_volume(engine, name).await;
            assert!(got == *want, "{when}: volume {name} differs from the model");
        }
        for ((name, t), want) in &self.snapshots {
            let got = read_snapshot(engine, name, t).await;
            assert!(got == *want, "{when}: snapshot {name}@{t} differs from the model");
        }
        let listed = engine.list_volumes(&ns()).len();
        assert_eq!(listed, self.volumes.len(), "{when}: volume count");
    }

    /// Takes in what an aborted operation left behind: a new snapshot of
    /// `source` must hold its content; a new volume must equal its origin.
    async fn adopt(&mut self, engine: &Engine, source: &str) {
        for s in engine.list_snapshots(&ns(), None).unwrap() {
            let key = (s.volume.to_string(), s.tag.to_string());
            if self.snapshots.contains_key(&key) {
                continue;
            }
            assert_eq!(key.0, source, "only {source} is snapshotted");
            let got = read_snapshot(engine, &key.0, &key.1).await;
            assert!(
                got == self.volumes[source],
                "new snapshot {}@{} is not the volume",
                key.0,
                key.1
            );
            self.snapshots.insert(key, got);
        }
        for v in engine.list_volumes(&ns()) {
            let name = v.name.to_string();
            if self.volumes.contains_key(&name) {
                continue;
            }
            let origin = v.from_snapshot.as_ref().expect("new volumes are forks or clones");
            let want = &self.snapshots[&(origin.volume.to_string(), origin.tag.to_string())];
            let got = read_volume(engine, &name).await;
            assert!(got == *want, "new volume {name} is not its snapshot");
            self.volumes.insert(name, got);
        }
    }
}

async fn open(dir: &std::path::Path) -> Arc<Engine> {
    let e = engine(dir).await;
    // Every object store request waits: seals and imports span many awaits.
    e.objects()
        .faults
        .latency_ms
        .store(1, std::sync::atomic::Ordering::Relaxed);
    e
}

#[test]
fn dropped_operations_lose_no_flushed_write() {
    let seed: u64 = std::env::var("CAIRN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let iterations: u64 = std::env::var("CAIRN_TEST_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    println!("CAIRN_TEST_SEED={seed} CAIRN_TEST_ITERATIONS={iterations}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = open(dir.path()).await;
        engine
            .create_volume(&ns(), &actor(), &vol("v"), SIZE, Some(CHUNK), Labels::new())
            .await
            .unwrap();
        let v = engine.volume(&ns(), &vol("v")).unwrap();
        let mut model = Model::default();
        model.volumes.insert("v".into(), vec![0u8; SIZE as usize]);
        let mut completed = [0u32; 5];
        let mut aborted = [0u32; 5];
        for i in 0..iterations {
            for _ in 0..4 {
                let offset = rng.below(SIZE - 1);
                let len = (1 + rng.below(40_000)).min(SIZE - offset) as usize;
                let data = noise(rng.next(), len);
                v.write(offset, &data).await.unwrap();
                model.volumes.get_mut("v").unwrap()[offset as usize..offset as usize + len]
                    .copy_from_slice(&data);
            }
            v.flush().await.unwrap();
            let before = model.volumes["v"].clone();
            let op = rng.below(5);
            let import_at = rng.below(SIZE / CHUNK - 4) * CHUNK;
            let import = noise(rng.next(), 4 * CHUNK as usize);
            let e = engine.clone();
            let task = match op {
                0 => {
                    let v = v.clone();
                    tokio::spawn(async move { v.seal().await.map(drop) })
                }
                1 => tokio::spawn(async move {
                    e.snapshot(
                        &ns(),
                        &actor(),
                        &vol("v"),
                        Some(tag(&format!("s{i}"))),
                        Labels::new(),
                    )
                    .await
                    .map(drop)
                }),
                2 => tokio::spawn(async move {
                    e.clone_volume(&ns(), &actor(), &vol("v"), Some(vol(&format!("c{i}"))), None)
                        .await
                        .map(drop)
                }),
                3 => {
                    let data = import.clone();
                    tokio::spawn(async move {
                        e.import(
                            &ns(),
                            &actor(),
                            &vol("v"),
                            futures::stream::iter([Ok(bytes::Bytes::from(data))]),
                            None,
                            import_at,
                            &|_| {},
                        )
                        .await
                        .map(drop)
                    })
                }
                _ => match model.snapshots.keys().next().cloned() {
                    Some((from, t)) => tokio::spawn(async move {
                        e.fork(
                            &ns(),
                            &actor(),
                            &vol(&from),
                            &tag(&t),
                            &vol(&format!("f{i}")),
                            None,
                            &Labels::new(),
                        )
                        .await
                        .map(drop)
                    }),
                    None => continue,
                },
            };
            // Mostly early cuts, some late ones, some after completion.
            let r = rng.below(1000);
            tokio::time::sleep(Duration::from_micros(r * r / 25)).await;
            task.abort();
            match task.await {
                Ok(result) => {
                    result.unwrap();
                    completed[op as usize] += 1;
                }
                Err(e) => {
                    assert!(e.is_cancelled());
                    aborted[op as usize] += 1;
                }
            }
            if op == 2 {
                // A clone and its snapshot are committed together.
                let clone = format!("c{i}");
                let volume = engine
                    .list_volumes(&ns())
                    .iter()
                    .any(|v| v.name.as_str() == clone);
                let snapshots = engine.list_snapshots(&ns(), Some(&vol("v"))).unwrap();
                let snapshot = snapshots
                    .iter()
                    .any(|s| s.tag.to_string() == format!("clone-{clone}"));
                assert_eq!(
                    volume, snapshot,
                    "iteration {i}: clone {clone} without its snapshot or the reverse"
                );
            }
            if op == 3 {
                // Each imported chunk is either all old or all new.
                let got = read_volume(&engine, "v").await;
                let at = import_at as usize;
                for c in 0..4 {
                    let r = at + c * CHUNK as usize..at + (c + 1) * CHUNK as usize;
                    let new = &import[c * CHUNK as usize..(c + 1) * CHUNK as usize];
                    assert!(
                        got[r.clone()] == before[r.clone()] || got[r.clone()] == *new,
                        "iteration {i}: imported chunk {c} is neither old nor new"
                    );
                }
                model.volumes.insert("v".into(), got);
            }
            model.adopt(&engine, "v").await;
            model
                .check(&engine, &format!("after iteration {i} (op {op})"))
                .await;
        }
        println!(
            "completed per op (seal, snapshot, clone, import, fork): {completed:?}; aborted: {aborted:?}"
        );
        assert!(
            aborted.iter().sum::<u32>() > 0,
            "some operation must have been cut short"
        );
        engine.seal_all().await.unwrap();
        model.check(&engine, "after sealing everything").await;
        let report = engine.verify(&ns(), None, None).await.unwrap();
        assert!(report.problems.is_empty(), "verify: {:?}", report.problems);
        drop(v);
        drop(engine);
        // Background work of aborted tasks lets go of the catalog.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let engine = open(dir.path()).await;
        model.check(&engine, "after a restart").await;
        let report = engine.verify(&ns(), None, None).await.unwrap();
        assert!(
            report.problems.is_empty(),
            "verify after restart: {:?}",
            report.problems
        );
    });
}
