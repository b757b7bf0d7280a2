//! Sustained load on a healthy store: fio (nbd engine) runs 4 KiB random
//! writes at queue depth 32 and 1 MiB sequential writes at depth 8 on two
//! connections to two volumes, with a FLUSH every 256 writes, against a
//! small write-back backlog so that writers are held back by sealing all
//! the time. There must be zero I/O errors (backpressure, never ENOSPC),
//! throughput is printed per second, and the server's memory must stay
//! flat (the second half's peak RSS within 64 MiB of the first half's).
//!
//! `CAIRN_SOAK_SECONDS` sets the length (default 8 s; the bench runs it for
//! minutes: benches/soak.sh).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Per-second MiB/s of one fio bandwidth log (`msec, KiB/s, ...` lines).
fn per_second(log: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(',').nth(1)?.trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .collect()
}

#[test]
fn mixed_writes_with_flush_see_no_io_error_and_flat_memory() {
    assert!(have("fio"), "fio is not installed: run scripts/setup.sh");
    let seconds: u64 = std::env::var("CAIRN_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    let nbd_port = free_port();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--nbd-listen",
            &format!("127.0.0.1:{nbd_port}"),
            "--backlog-size",
            "32M",
            "--memory-cache-size",
            "64M",
        ],
    );
    for name in ["rand", "seq"] {
        server.json(&["volume", "create", name, "--size", "256M"]);
    }
    let pid = server.child.id();
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while running.load(Ordering::Relaxed) {
                samples.push(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        })
    };
    let out = dir.path().join("fio.json");
    let uri = |name: &str| format!("--uri=nbd://127.0.0.1:{nbd_port}/{name}");
    let fio = Command::new("fio")
        .current_dir(dir.path())
        .args([
            "--ioengine=nbd",
            "--time_based",
            &format!("--runtime={seconds}"),
            "--fsync=256",
            "--log_avg_msec=1000",
            "--output-format=json",
            &format!("--output={}", out.display()),
            "--name=rand",
            &uri("rand"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--write_bw_log=rand",
            "--name=seq",
            &uri("seq"),
            "--rw=write",
            "--bs=1M",
            "--iodepth=8",
            "--write_bw_log=seq",
        ])
        .output()
        .unwrap();
    running.store(false, Ordering::Relaxed);
    let rss = sampler.join().unwrap();
    assert!(
        fio.status.success(),
        "fio failed (an I/O error under load):\n{}\n{}",
        String::from_utf8_lossy(&fio.stdout),
        String::from_utf8_lossy(&fio.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for job in report["jobs"].as_array().unwrap() {
        let name = job["jobname"].as_str().unwrap();
        assert_eq!(job["error"].as_i64(), Some(0), "job {name}: I/O error");
        let bytes = job["write"]["io_bytes"].as_u64().unwrap();
        assert!(bytes > 0, "job {name} wrote nothing");
        let log = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}_bw"))
            });
        let series: Vec<String> = log
            .map(|l| per_second(&l))
            .unwrap_or_default()
            .iter()
            .map(|m| format!("{m:.1}"))
            .collect();
        println!(
            "{name}: {:.1} MiB/s, {:.0} IOPS; MiB/s per second: {}",
            job["write"]["bw_bytes"].as_f64().unwrap() / 1048576.0,
            job["write"]["iops"].as_f64().unwrap(),
            series.join(" ")
        );
    }
    let half = rss.len() / 2;
    let first = rss[..half].iter().max().copied().unwrap_or(0);
    let second = rss[half..].iter().max().copied().unwrap_or(0);
    println!(
        "server RSS peak: first half {} MiB, second half {} MiB ({} samples)",
        first / 1024,
        second / 1024,
        rss.len()
    );
    assert!(
        second <= first + 64 * 1024,
        "memory grows under sustained load: {first} KiB then {second} KiB"
    );
    server.assert_verify_clean();
}
