//! Snapshot and clone latency of a 100 GiB volume through the real server
//! and its REST API (release build), with p50/p99 over many requests.
//!
//! The volume holds 1 GiB of random data (16 Ki chunks) plus sparse space;
//! each snapshot follows a 4 KiB write, so it seals a little dirty data,
//! as on a live VM disk. Run: `cargo bench --bench api_latency`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SIZE: u64 = 100 << 30;
const FILL: usize = 1 << 30;
const ROUNDS: usize = 200;

use cairn_chunker::testdata::noise;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<28} n={:<4} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--nbd-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if http
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ok = |r: reqwest::Response| {
            assert!(r.status().is_success(), "{}", r.status());
            r
        };
        ok(http
            .post(format!("{base}/volumes"))
            .json(&serde_json::json!({"name": "vm", "size": SIZE}))
            .send()
            .await
            .unwrap());
        let started = Instant::now();
        ok(http
            .put(format!("{base}/volumes/vm/data?offset=0"))
            .body(noise(1, FILL))
            .send()
            .await
            .unwrap());
        println!(
            "filled 1 GiB of a 100 GiB volume in {:.2} s",
            started.elapsed().as_secs_f64()
        );

        let mut snapshot = Vec::new();
        let mut clone = Vec::new();
        let mut fork = Vec::new();
        for i in 0..ROUNDS {
            // A little fresh dirty data, as on a live disk.
            let offset = (i as u64 * 7919 * 4096) % FILL as u64;
            ok(http
                .put(format!("{base}/volumes/vm/data?offset={offset}"))
                .body(noise(1000 + i as u64, 4096))
                .send()
                .await
                .unwrap());
            let t = Instant::now();
            ok(http
                .post(format!("{base}/volumes/vm/snapshots"))
                .json(&serde_json::json!({"tag": format!("s{i}")}))
                .send()
                .await
                .unwrap());
            snapshot.push(t.elapsed());
            let t = Instant::now();
            ok(http
                .post(format!("{base}/volumes/vm/snapshots/s{i}/fork"))
                .json(&serde_json::json!({"name": format!("f{i}")}))
                .send()
                .await
                .unwrap());
            fork.push(t.elapsed());
            let t = Instant::now();
            ok(http
                .post(format!("{base}/volumes/vm/clone"))
                .json(&serde_json::json!({"name": format!("c{i}")}))
                .send()
                .await
                .unwrap());
            clone.push(t.elapsed());
        }
        report("snapshot (4 KiB dirty)", snapshot);
        report("fork of a snapshot", fork);
        report("clone (snapshot + fork)", clone);
    });
    let _ = server.kill();
    let _ = server.wait();
}
