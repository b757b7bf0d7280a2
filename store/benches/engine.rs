//! Engine benchmarks: snapshot latency against volume size (1 GiB vs
//! 1 TiB, same 64 MiB dirty), clean snapshot/fork/rollback latency, and
//! the cached read/write path.
//!
//! Prints the 1 TiB / 1 GiB snapshot-latency ratio at the end: it should be
//! ~1.0 (flat in volume size).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_store::{Actor, Engine, EngineConfig, Labels, Namespace, SnapshotTag, VolumeName};
use criterion::{BenchmarkId, Criterion, Throughput};
use parking_lot::Mutex;

const DIRTY: usize = 64 << 20;

use cairn_chunker::testdata::noise;

struct Fixture {
    rt: tokio::runtime::Runtime,
    engine: Arc<Engine>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.dirty_hard_limit = 1 << 30;
    // Room for the io group's whole 256 MiB volume in the chunk cache
    // (which gets 7/8 of this), so its reads are cached reads.
    config.cache_bytes = 512 << 20;
    let engine = rt.block_on(Engine::open(config)).unwrap();
    Fixture {
        rt,
        engine,
        _dir: dir,
    }
}

fn ns() -> Namespace {
    Namespace::default_ns()
}

fn actor() -> Actor {
    Actor("bench".into())
}

fn snapshot_vs_size(c: &mut Criterion, means: &Mutex<Vec<(u64, Duration)>>) {
    let mut group = c.benchmark_group("snapshot_64MiB_dirty");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (label, size) in [("1GiB", 1u64 << 30), ("1TiB", 1u64 << 40)] {
        let f = fixture();
        let name = VolumeName::new("v").unwrap();
        f.rt.block_on(
            f.engine
                .create_volume(&ns(), &actor(), &name, size, None, Labels::new()),
        )
        .unwrap();
        let volume = f.engine.volume(&ns(), &name).unwrap();
        let mut n = 0u64;
        let mut total = Duration::ZERO;
        let mut count = 0u32;
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    // Untimed: dirty 64 MiB spread over the volume (1 MiB runs).
                    f.rt.block_on(async {
                        for k in 0..64u64 {
                            let offset = (k * 7919 * (1 << 20)) % size;
                            volume
                                .write(offset, &noise(n * 1000 + k, DIRTY / 64))
                                .await
                                .unwrap();
                        }
                    });
                    let tag = SnapshotTag::new(format!("s{n}")).unwrap();
                    let start = Instant::now();
                    f.rt.block_on(
                        f.engine
                            .snapshot(&ns(), &actor(), &name, Some(tag), Labels::new()),
                    )
                    .unwrap();
                    elapsed += start.elapsed();
                }
                total += elapsed;
                count += iters as u32;
                elapsed
            })
        });
        means.lock().push((size, total / count.max(1)));
    }
    group.finish();
}

fn clean_ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("clean_volume");
    for (label, size) in [("1GiB", 1u64 << 30), ("1TiB", 1u64 << 40)] {
        let f = fixture();
        let name = VolumeName::new("v").unwrap();
        f.rt.block_on(async {
            f.engine
                .create_volume(&ns(), &actor(), &name, size, None, Labels::new())
                .await
                .unwrap();
            let v = f.engine.volume(&ns(), &name).unwrap();
            v.write(0, &noise(1, 4 << 20)).await.unwrap();
            f.engine
                .snapshot(
                    &ns(),
                    &actor(),
                    &name,
                    Some(SnapshotTag::new("base").unwrap()),
                    Labels::new(),
                )
                .await
                .unwrap();
        });
        let mut n = 0u64;
        group.bench_function(BenchmarkId::new("snapshot", label), |b| {
            b.iter(|| {
                n += 1;
                let tag = SnapshotTag::new(format!("c{n}")).unwrap();
                f.rt.block_on(
                    f.engine
                        .snapshot(&ns(), &actor(), &name, Some(tag), Labels::new()),
                )
                .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("fork", label), |b| {
            b.iter(|| {
                n += 1;
                let new = VolumeName::new(format!("f{n}")).unwrap();
                let base = SnapshotTag::new("base").unwrap();
                f.rt.block_on(
                    f.engine
                        .fork(&ns(), &actor(), &name, &base, &new, None, &Labels::new()),
                )
                .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("rollback", label), |b| {
            b.iter(|| {
                let base = SnapshotTag::new("base").unwrap();
                f.rt.block_on(f.engine.rollback(&ns(), &actor(), &name, &base))
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn io_path(c: &mut Criterion) {
    let f = fixture();
    let name = VolumeName::new("io").unwrap();
    let size = 256u64 << 20;
    let volume = f.rt.block_on(async {
        f.engine
            .create_volume(&ns(), &actor(), &name, size, None, Labels::new())
            .await
            .unwrap();
        let v = f.engine.volume(&ns(), &name).unwrap();
        let image = noise(7, size as usize);
        f.engine
            .import(
                &ns(),
                &actor(),
                &name,
                futures::stream::iter([Ok(bytes::Bytes::from(image))]),
                None,
                0,
                &|_| {},
            )
            .await
            .unwrap();
        v
    });
    let mut group = c.benchmark_group("io");
    let mut x = 1u64;
    let mut next_block = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % (size / 4096)) * 4096
    };
    let mut buf = vec![0u8; 4096];
    group.throughput(Throughput::Bytes(4096));
    group.bench_function("read_4k_cached_random", |b| {
        b.iter(|| f.rt.block_on(volume.read(next_block(), &mut buf)).unwrap())
    });
    let block = noise(9, 4096);
    group.bench_function("write_4k_random", |b| {
        b.iter(|| f.rt.block_on(volume.write(next_block(), &block)).unwrap())
    });
    let mut big = vec![0u8; 1 << 20];
    let mut seq = 0u64;
    group.throughput(Throughput::Bytes(1 << 20));
    group.bench_function("read_1m_sequential", |b| {
        b.iter(|| {
            seq = (seq + (1 << 20)) % size;
            f.rt.block_on(volume.read(seq, &mut big)).unwrap()
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let means = Mutex::new(Vec::new());
    snapshot_vs_size(&mut c, &means);
    clean_ops(&mut c);
    io_path(&mut c);
    c.final_summary();
    let means = means.into_inner();
    if let [(_, small), (_, large)] = means.as_slice() {
        println!(
            "snapshot with 64 MiB dirty: 1 GiB volume {:.1} ms, 1 TiB volume {:.1} ms, ratio 1TiB/1GiB = {:.2}",
            small.as_secs_f64() * 1e3,
            large.as_secs_f64() * 1e3,
            large.as_secs_f64() / small.as_secs_f64()
        );
    }
}
