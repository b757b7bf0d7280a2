//! The volume model under concurrency: writers, seals and snapshots at
//! once on one volume. Each writer owns a region and writes blocks in
//! order, logging every write; a snapshot taken while they run must show,
//! for every block, a state the block had at some moment between the
//! snapshot's start and end (at least every write completed before it
//! started, nothing issued after it returned). At the end, and after a
//! restart, the volume equals every writer's log replayed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_store::Labels;
use common::*;
use parking_lot::Mutex;

const WRITERS: usize = 3;
const BLOCKS_PER_WRITER: u64 = 96;
const BLOCK: u64 = 4096;
const SIZE: u64 = WRITERS as u64 * BLOCKS_PER_WRITER * BLOCK;

/// One writer's history: (first block, block count, seed) per write, and
/// counters of writes issued and completed.
#[derive(Default)]
struct Writer {
    log: Mutex<Vec<(u64, u64, u64)>>,
    issued: AtomicUsize,
    done: AtomicUsize,
}

impl Writer {
    /// Block `b`'s contents (as a seed; 0 = zeros) after the first `k` writes.
    fn block_after(&self, b: u64, k: usize) -> u64 {
        let log = self.log.lock();
        log[..k]
            .iter()
            .rev()
            .find(|(first, n, _)| (*first..first + n).contains(&b))
            .map_or(0, |(first, _, seed)| seed + (b - first))
    }
}

fn block_data(seed: u64) -> Vec<u8> {
    if seed == 0 {
        vec![0u8; BLOCK as usize]
    } else {
        noise(seed, BLOCK as usize)
    }
}

#[test]
fn writers_seals_and_snapshots_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (engine, v) = engine_with_v(dir.path(), SIZE).await;
        let writers: Arc<Vec<Writer>> = Arc::new((0..WRITERS).map(|_| Writer::default()).collect());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (v, writers, stop) = (v.clone(), writers.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let me = &writers[w];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let first = (i * 37 + w as u64 * 11) % BLOCKS_PER_WRITER;
                    let n = (1 + i % 3).min(BLOCKS_PER_WRITER - first);
                    let seed = ((w as u64 + 1) << 40) + i * 8;
                    let data: Vec<u8> = (0..n).flat_map(|k| block_data(seed + k)).collect();
                    me.log.lock().push((first, n, seed));
                    me.issued.fetch_add(1, Ordering::SeqCst);
                    let offset = (w as u64 * BLOCKS_PER_WRITER + first) * BLOCK;
                    v.write(offset, &data).await.unwrap();
                    me.done.fetch_add(1, Ordering::SeqCst);
                    if i.is_multiple_of(16) {
                        v.flush().await.unwrap();
                    }
                }
            }));
        }
        {
            let v = v.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    v.seal().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }));
        }
        let mut snapshots = Vec::new();
        for s in 0..12 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            let before: Vec<usize> = writers.iter().map(|w| w.done.load(Ordering::SeqCst)).collect();
            let t = format!("s{s}");
            engine
                .snapshot(&ns(), &actor(), &vol("v"), Some(tag(&t)), Labels::new())
                .await
                .unwrap();
            let after: Vec<usize> = writers.iter().map(|w| w.issued.load(Ordering::SeqCst)).collect();
            snapshots.push((t, before, after));
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let writes: usize = writers.iter().map(|w| w.done.load(Ordering::SeqCst)).sum();
        assert!(writes > 100, "writers made progress ({writes} writes)");
        for (t, before, after) in &snapshots {
            let src = engine.readable(&ns(), &vol("v"), Some(&tag(t))).unwrap();
            let mut image = vec![0u8; SIZE as usize];
            engine.read(&src, 0, &mut image).await.unwrap();
            for (w, writer) in writers.iter().enumerate() {
                for b in 0..BLOCKS_PER_WRITER {
                    let at = ((w as u64 * BLOCKS_PER_WRITER + b) * BLOCK) as usize;
                    let got = &image[at..at + BLOCK as usize];
                    let ok = (before[w]..=after[w]).any(|k| got == block_data(writer.block_after(b, k)));
                    assert!(ok, "snapshot {t}: writer {w} block {b} holds a state it never had while the snapshot ran");
                }
            }
        }
        let expected: Vec<u8> = writers
            .iter()
            .flat_map(|w| {
                let k = w.log.lock().len();
                (0..BLOCKS_PER_WRITER).flat_map(move |b| block_data(w.block_after(b, k)))
            })
            .collect();
        let src = engine.readable(&ns(), &vol("v"), None).unwrap();
        let mut image = vec![0u8; SIZE as usize];
        engine.read(&src, 0, &mut image).await.unwrap();
        assert!(image == expected, "the volume equals every writer's log replayed");
        v.flush().await.unwrap();
        drop((src, v));
        drop(engine);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let engine = common::engine(dir.path()).await;
        let src = engine.readable(&ns(), &vol("v"), None).unwrap();
        let mut image = vec![0u8; SIZE as usize];
        engine.read(&src, 0, &mut image).await.unwrap();
        assert!(image == expected, "after a restart too");
        println!("{writes} writes, {} snapshots checked", snapshots.len());
    });
}
