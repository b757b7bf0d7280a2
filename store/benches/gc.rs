//! GC on a large store: mark and sweep rate (objects per second) and the
//! memory the mark set and the process take.
//!
//! Builds a store of OBJECTS objects (default 1,000,000): half are the 4 KiB
//! chunks (plus tree nodes) of one live volume, imported through the engine;
//! half are unreachable garbage objects put straight into the object layer.
//! Then one GC with a zero grace period keeps the first half and deletes
//! the second.
//!
//!   cargo bench -p cairn-store --bench gc
//!   OBJECTS=200000 cargo bench -p cairn-store --bench gc

use std::time::{Duration, Instant};

use cairn_chunker::{frame, ChunkId};
use cairn_store::objects::ObjectKind;
use cairn_store::{Actor, Engine, EngineConfig, GcOptions, Labels, Namespace, VolumeName};
use futures::stream::{StreamExt, TryStreamExt};

fn vm_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let objects: u64 = std::env::var("OBJECTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut config = EngineConfig::new(dir.path());
        config.cache_bytes = 16 << 20;
        let engine = Engine::open(config).await.unwrap();
        let (ns, actor) = (Namespace::default_ns(), Actor("bench".into()));
        let live = objects / 2;
        let name = VolumeName::new("live").unwrap();
        let size = live * 4096;
        engine
            .create_volume(&ns, &actor, &name, size, Some(4096), Labels::new())
            .await
            .unwrap();
        let started = Instant::now();
        // In 64 MiB pieces, so building the store does not set the peak RSS.
        const PIECE: u64 = 16384;
        for first in (0..live).step_by(PIECE as usize) {
            let mut image = Vec::with_capacity((PIECE * 4096) as usize);
            for i in first..(first + PIECE).min(live) {
                let mut block = [0u8; 4096];
                block[..8].copy_from_slice(&i.to_le_bytes());
                block[8..16].copy_from_slice(&0x5eed_u64.to_le_bytes());
                image.extend_from_slice(&block);
            }
            engine
                .import(&ns, &actor, &name, futures::stream::iter([Ok(bytes::Bytes::from(image))]), None, first * 4096, &|_| {})
                .await
                .unwrap();
        }
        let layer = engine.objects();
        futures::stream::iter(0..objects - live)
            .map(|i| async move {
                let body = [i.to_le_bytes(), 0xdead_u64.to_le_bytes()].concat();
                let id = ChunkId::of(&body);
                layer
                    .put_if_absent(ObjectKind::Chunk, id.0, frame::encode(&body).into())
                    .await
            })
            .buffer_unordered(32)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        // Durable and indexed, as a seal's commit would make them (GC keeps
        // objects that are not yet).
        layer.make_durable().await.unwrap();
        println!(
            "built a store of ~{objects} objects in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Peak RSS from here on only (building the store has its own peak).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let rss_before = vm_kib("VmRSS:");
        // The plan first (a dry run), then the run that executes it.
        let plan = engine
            .gc(
                &ns,
                &actor,
                GcOptions {
                    dry_run: true,
                    grace: Duration::ZERO,
                },
            )
            .await
            .unwrap();
        println!(
            "dry run: plan of {} objects ({} bytes) of {} scanned in {:.2} s",
            plan.reclaimed_objects,
            plan.reclaimed_bytes,
            plan.scanned_objects,
            plan.duration_ms as f64 / 1000.0
        );
        let report = engine
            .gc(
                &ns,
                &actor,
                GcOptions {
                    dry_run: false,
                    grace: Duration::ZERO,
                },
            )
            .await
            .unwrap();
        let hwm = vm_kib("VmHWM:");
        let secs = report.duration_ms as f64 / 1000.0;
        let mark_secs = report.mark_ms as f64 / 1000.0;
        println!(
            "gc: scanned {} objects, marked {}, reclaimed {} ({} bytes) in {:.2} s",
            report.scanned_objects, report.marked_objects, report.reclaimed_objects, report.reclaimed_bytes, secs
        );
        println!(
            "gc rate: {:.0} objects/s overall; mark {:.0} objects/s ({:.2} s); sweep {:.0} objects/s",
            report.scanned_objects as f64 / secs,
            report.marked_objects as f64 / mark_secs.max(1e-3),
            mark_secs,
            report.scanned_objects as f64 / (secs - mark_secs).max(1e-3),
        );
        println!(
            "memory: mark + listing sets {} bytes ({:.1} bytes per scanned object); process RSS {} MiB before GC, \
             peak {} MiB during the dry run and the run: {:.1} bytes per scanned object above the start",
            report.mark_set_bytes,
            report.mark_set_bytes as f64 / report.scanned_objects.max(1) as f64,
            rss_before / 1024,
            hwm / 1024,
            (hwm.saturating_sub(rss_before) * 1024) as f64 / report.scanned_objects.max(1) as f64
        );
        // The garbage, plus the tree nodes the piecewise import replaced.
        assert!(report.reclaimed_objects >= objects - live);
        assert_eq!(
            (report.reclaimed_objects, report.reclaimed_bytes),
            (plan.reclaimed_objects, plan.reclaimed_bytes),
            "with no writer running, the run deletes exactly the plan"
        );
        println!("plan equals deleted: {} objects", report.reclaimed_objects);
    });
}
