//! The S3 backend against a real S3-compatible server (moto, started per
//! test on loopback): objects in the bucket are immutable and
//! content-addressed; injected 5xx and latency are retried away; a store
//! that hangs for seconds in the middle of a write load loses nothing.

mod common;

use std::process::Command;
use std::time::Duration;

use common::nbd::RawNbd;
use common::*;

/// A server on a fresh moto bucket, with extra environment.
fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> (Server, u16) {
    assert!(
        have("moto_server"),
        "moto_server is not installed: run scripts/setup.sh"
    );
    let nbd_port = free_port();
    let server = Server::start_on_s3(
        &dir.join("data"),
        &["--nbd-listen", &format!("127.0.0.1:{nbd_port}")],
        env,
    );
    (server, nbd_port)
}

/// curl arguments for SigV4-signed requests with the test credentials.
const SIGNED: [&str; 4] = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "test:test"];

/// Every object key in the bucket with its bytes (moto's ListObjectsV2 and GET).
fn bucket_objects(s3: &S3Server) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut url = format!("{}/{}?list-type=2&prefix=objects/", s3.endpoint, s3.bucket);
        if let Some(t) = &token {
            url.push_str(&format!(
                "&continuation-token={}",
                t.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
            ));
        }
        let xml =
            String::from_utf8(Command::new("curl").args(["-sf", &url]).output().unwrap().stdout).unwrap();
        for part in xml.split("<Key>").skip(1) {
            let key = part.split("</Key>").next().unwrap().to_string();
            let body = Command::new("curl")
                .args(SIGNED)
                .args(["-sf", &format!("{}/{}/{}", s3.endpoint, s3.bucket, key)])
                .output()
                .unwrap()
                .stdout;
            out.push((key, body));
        }
        token = xml
            .split("<NextContinuationToken>")
            .nth(1)
            .map(|t| t.split("</NextContinuationToken>").next().unwrap().to_string());
        if token.is_none() {
            break;
        }
    }
    out
}

#[test]
fn objects_in_s3_are_content_addressed_and_survive_faults() {
    let dir = tempfile::tempdir().unwrap();
    // One request in four fails with an injected 503, each takes 2 ms more.
    let (server, nbd_port) = start(dir.path(), &[("CAIRN_FAULTS", "fail_one_in=4,latency_ms=2")]);
    let image = dir.path().join("img");
    let data = cairn_chunker::testdata::noise(17, 8 << 20);
    std::fs::write(&image, &data).unwrap();
    server.json(&["import", "vm", image.to_str().unwrap()]);
    server.json(&["snapshot", "create", "vm", "--tag", "base"]);
    let mut c = RawNbd::open(nbd_port, "vm");
    assert_eq!(c.write(1 << 20, &[0x5a; 65536]), 0);
    drop(c);
    server.json(&["fork", "vm@base", "vm2"]);
    server.json(&["snapshot", "create", "vm", "--tag", "after"]);

    // Reads are right despite the faults, and retries happened.
    let out = dir.path().join("out");
    server.ok(&["export", "vm2", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == data);
    let (_, metrics) = server.http("GET", "/metrics", None, None);
    let retries: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cairn_object_store_retries_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(retries > 0, "injected failures must have been retried");
    let verify = server.json(&["verify"]);
    assert_eq!(
        (verify["missing"].as_u64(), verify["corrupt"].as_u64()),
        (Some(0), Some(0))
    );

    // Every object in the bucket: its key is the BLAKE3 of its plaintext.
    let objects = bucket_objects(server.s3.as_ref().unwrap());
    assert!(objects.len() > 128, "{} objects", objects.len());
    for (key, body) in &objects {
        let id = key.rsplit('/').next().unwrap();
        let mut raw = [0u8; 32];
        hex::decode_to_slice(id, &mut raw).unwrap();
        let plain = cairn_chunker::frame::decode(body, Some(cairn_chunker::ChunkId(raw)));
        assert!(plain.is_ok(), "{key}: {:?}", plain.err());
    }
}

#[test]
fn a_hung_store_during_writes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, nbd_port) = start(dir.path(), &[]);
    server.json(&["volume", "create", "vm", "--size", "32M"]);
    let moto = server.s3.as_ref().unwrap().child.id() as i32;
    let mut model = vec![0u8; 32 << 20];
    let mut c = RawNbd::open(nbd_port, "vm");
    // The store hangs (SIGSTOP) while writes keep coming and are flushed.
    unsafe { libc::kill(moto, libc::SIGSTOP) };
    for i in 0..64u64 {
        let block = cairn_chunker::testdata::noise(100 + i, 256 << 10);
        let at = (i * (256 << 10)) as usize % (32 << 20);
        assert_eq!(
            c.write(at as u64, &block),
            0,
            "writes are acknowledged while the store hangs"
        );
        model[at..at + block.len()].copy_from_slice(&block);
    }
    c.send(3, 0, 77, 0, 0, &[]); // FLUSH: durable in the local journal
    assert_eq!(c.reply(), (0, 77));
    // Reads of acknowledged data are served locally meanwhile.
    assert_eq!(c.read(0, 4096).unwrap(), model[..4096]);
    std::thread::sleep(Duration::from_secs(3));
    unsafe { libc::kill(moto, libc::SIGCONT) };
    drop(c);
    // The backlog drains into the store: a snapshot seals everything.
    server.json(&["snapshot", "create", "vm", "--tag", "after-outage"]);
    let out = dir.path().join("out");
    server.ok(&["export", "vm@after-outage", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == model);
    let verify = server.json(&["verify"]);
    assert_eq!(
        (verify["missing"].as_u64(), verify["corrupt"].as_u64()),
        (Some(0), Some(0))
    );
}
