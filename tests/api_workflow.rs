//! End-to-end: the whole snapshot/fork/clone workflow through the real
//! binary, driven with the CLI and with HTTP.

mod common;

use common::*;

const MIB: usize = 1 << 20;

#[test]
fn snapshot_fork_clone_rollback_diff_delete_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let work = dir.path();

    // create -> import a random 64 MiB image
    let image = noise(1, 64 * MIB);
    let image_path = work.join("image.raw");
    std::fs::write(&image_path, &image).unwrap();
    let v = server.json(&["volume", "create", "src", "--size", "64M", "--label", "team=ci"]);
    assert_eq!(v["size"], 64 * MIB as u64);
    assert_eq!(v["state"], "ready");
    assert_eq!(v["labels"]["team"], "ci");
    let imported = server.json(&["import", "src", image_path.to_str().unwrap()]);
    assert_eq!(imported["bytes"], 64 * MIB as u64);

    // snapshot
    let s1 = server.json(&[
        "snapshot",
        "create",
        "src",
        "--tag",
        "s1",
        "--label",
        "kernel=6.1",
    ]);
    assert_eq!(s1["tag"], "s1");
    assert_eq!(s1["volume"], "src");

    // write more: 128 KiB at 1 MiB and 64 KiB at 40 MiB (chunk aligned)
    let patch_a = noise(2, 128 * 1024);
    let patch_b = noise(3, 64 * 1024);
    for (offset, data, name) in [(MIB, &patch_a, "a"), (40 * MIB, &patch_b, "b")] {
        let path = work.join(format!("patch-{name}"));
        std::fs::write(&path, data).unwrap();
        let r = server.json(&[
            "import",
            "src",
            path.to_str().unwrap(),
            "--offset",
            &offset.to_string(),
        ]);
        assert_eq!(r["bytes"], data.len() as u64);
    }
    let mut modified = image.clone();
    modified[MIB..MIB + patch_a.len()].copy_from_slice(&patch_a);
    modified[40 * MIB..40 * MIB + patch_b.len()].copy_from_slice(&patch_b);

    // fork from the snapshot; export it and compare with the original image
    let fork = server.json(&["fork", "src@s1", "fork1", "--require-label", "kernel=6.1"]);
    assert_eq!(fork["from_snapshot"], "src@s1");
    let fork_path = work.join("fork1.raw");
    server.ok(&["export", "fork1", fork_path.to_str().unwrap()]);
    assert_eq!(hash_file(&fork_path), blake3::hash(&image).to_hex().to_string());

    // clone: default name pattern, cloned_from
    let clone = server.json(&["clone", "src"]);
    let clone_name = clone["name"].as_str().unwrap().to_string();
    let suffix = clone_name
        .strip_prefix("src-clone-")
        .expect("default clone name src-clone-<ts>");
    assert!(suffix.chars().all(|c| c.is_ascii_digit()), "{clone_name}");
    assert_eq!(clone["cloned_from"], "src");
    let clone_path = work.join("clone.raw");
    server.ok(&["export", &clone_name, clone_path.to_str().unwrap()]);
    assert!(
        std::fs::read(&clone_path).unwrap() == modified,
        "clone holds the modified contents"
    );

    // diff lists exactly the changed ranges
    server.json(&["snapshot", "create", "src", "--tag", "s2"]);
    let diff = server.json(&["diff", "src@s2", "src@s1"]);
    assert_eq!(
        diff,
        serde_json::json!([
            {"offset": MIB, "length": 128 * 1024},
            {"offset": 40 * MIB, "length": 64 * 1024}
        ])
    );
    let full = server.json(&["diff", "src@s1"]);
    assert_eq!(full, serde_json::json!([{"offset": 0, "length": 64 * MIB}]));

    // rollback restores the snapshot's bytes
    let rolled = server.json(&["rollback", "src@s1"]);
    assert_eq!(rolled["name"], "src");
    let src_path = work.join("src.raw");
    server.ok(&["export", "src", src_path.to_str().unwrap()]);
    assert!(std::fs::read(&src_path).unwrap() == image);
    // ... and a snapshot export via HTTP range reads
    let range = std::process::Command::new("curl")
        .args([
            "-sf",
            &format!(
                "{}/api/v1/volumes/src/snapshots/s2/data?offset=1048576&length=16",
                server.url
            ),
        ])
        .output()
        .unwrap();
    assert!(range.status.success());
    assert_eq!(range.stdout, patch_a[..16]);

    // stored vs unique bytes: the fork shares everything with s1
    let shown = server.json(&["volume", "show", "fork1"]);
    assert!(shown["stored_bytes"].as_u64().unwrap() >= 64 * MIB as u64);
    assert_eq!(shown["unique_bytes"], 0);

    // delete the source volume and its snapshots
    server.ok(&["volume", "delete", "src"]);
    assert!(server.fails(&["volume", "show", "src"]).contains("not found"));
    let snaps = server.json(&["snapshot", "list"]);
    assert!(snaps["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["volume"] != "src"));

    // the fork and the clone still export byte-identical data
    server.ok(&["export", "fork1", fork_path.to_str().unwrap()]);
    assert!(std::fs::read(&fork_path).unwrap() == image);
    server.ok(&["export", &clone_name, clone_path.to_str().unwrap()]);
    assert!(std::fs::read(&clone_path).unwrap() == modified);

    // the audit log outlives the volume it describes
    let events = server.json(&["events", "--volume", "src"]);
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["create", "snapshot", "rollback", "delete"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let forks = server.json(&["events", "--volume", "fork1"]);
    let fork_event = &forks["events"][0];
    assert_eq!(fork_event["kind"], "fork");
    assert_eq!(fork_event["detail"]["source"], "src");
    assert_eq!(fork_event["actor"], "default");

    // metrics speak Prometheus
    let (code, metrics) = server.http("GET", "/metrics", None, None);
    assert_eq!(code, 200);
    assert!(metrics
        .contains("cairn_http_requests_total{method=\"POST\",route=\"/api/v1/volumes\",status=\"201\"}"));
    assert!(metrics.contains("cairn_dedup_ratio"));
    // The snapshot latency histogram counts this test's snapshots.
    let snapshots_within_10s = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "cairn_http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/v1/volumes/{name}/snapshots\",le=\"10\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no snapshot latency histogram in {metrics}"));
    assert!(snapshots_within_10s.parse::<u64>().unwrap() >= 1, "{metrics}");

    // SIGTERM: exit 0
    assert_eq!(server.terminate(), Some(0));
}

#[test]
fn acknowledged_api_writes_survive_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"), &[]);
    let data = noise(9, 3 * MIB + 4096);
    let path = dir.path().join("img");
    std::fs::write(&path, &data).unwrap();
    server.json(&["import", "vol", path.to_str().unwrap()]);
    server.json(&["snapshot", "create", "vol", "--tag", "t"]);
    server.kill9_and_restart();
    let out = dir.path().join("out");
    server.ok(&["export", "vol@t", out.to_str().unwrap()]);
    let mut want = data.clone();
    want.resize(want.len().div_ceil(4096) * 4096, 0);
    assert!(std::fs::read(&out).unwrap() == want);
    server.ok(&["export", "vol", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == want);
}

/// A sparse image: its data runs travel, its holes do not, and the bytes
/// come back the same through both export paths; imported over an existing
/// volume, its holes become zeros there; piped through standard input, the
/// same bytes arrive.
#[test]
fn sparse_images_round_trip_and_their_holes_stay_holes() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let len = 6 * MIB + 8192;
    let runs = [
        (100_000, noise(20, 200_000)),
        (3 * MIB, noise(21, 70_000)),
        (len - 5000, noise(22, 5000)),
    ];
    let mut image = vec![0u8; len];
    let path = dir.path().join("sparse.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(len as u64).unwrap();
    for (at, data) in &runs {
        f.write_all_at(data, *at as u64).unwrap();
        image[*at..*at + data.len()].copy_from_slice(data);
    }
    drop(f);

    let imported = server.json(&["import", "sp", path.to_str().unwrap()]);
    assert_eq!(imported["bytes"], len as u64);
    assert_eq!(imported["volume"]["size"], len as u64);

    // The map covers the volume without gaps; holes far from data are zero.
    let (status, body) = server.http("GET", "/api/v1/volumes/sp/map", None, None);
    assert_eq!(status, 200, "{body}");
    let map: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let mut pos = 0;
    for run in &map {
        assert_eq!(run["offset"], pos, "{body}");
        let (offset, length) = (pos as usize, run["length"].as_u64().unwrap() as usize);
        if run["zero"] == true {
            assert!(image[offset..offset + length].iter().all(|&b| b == 0), "{body}");
        }
        pos += length as u64;
    }
    assert_eq!(pos, len as u64);
    let zero: u64 = map
        .iter()
        .filter(|r| r["zero"] == true)
        .map(|r| r["length"].as_u64().unwrap())
        .sum();
    assert!(zero >= 4 * MIB as u64, "the holes are mapped as zeros: {body}");
    let (status, body) = server.http(
        "GET",
        &format!("/api/v1/volumes/sp/map?offset=4096&length={len}"),
        None,
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("out_of_range"), "{body}");

    // Export to a file (which stays sparse) and to standard output.
    let out = dir.path().join("out.raw");
    server.ok(&["export", "sp", out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == image,
        "export to a file equals the image"
    );
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        allocated < 3 * MIB as u64,
        "holes are skipped in the file: {allocated} bytes allocated"
    );
    let piped = server.cli(&["export", "sp", "-"]);
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(
        piped.stdout == image,
        "export to standard output equals the image"
    );

    // A map ends early after 16 GiB, however sparse: asking again goes on.
    server.json(&["volume", "create", "huge", "--size", "1T"]);
    let (status, body) = server.http("GET", "/api/v1/volumes/huge/map", None, None);
    assert_eq!(status, 200, "{body}");
    let huge: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(huge.len(), 1, "{body}");
    assert_eq!(
        (huge[0]["offset"].as_u64(), huge[0]["zero"].as_bool()),
        (Some(0), Some(true))
    );
    assert_eq!(huge[0]["length"].as_u64(), Some(16 << 30), "{body}");
    let (status, body) = server.http(
        "GET",
        &format!("/api/v1/volumes/huge/map?offset={}", 16u64 << 30),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("\"offset\":{}", 16u64 << 30)), "{body}");

    // Snapshots have a map too.
    server.json(&["snapshot", "create", "sp", "--tag", "t"]);
    let (status, body) = server.http("GET", "/api/v1/volumes/sp/snapshots/t/map", None, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap(),
        map
    );

    // Over an existing volume full of data, the holes become zeros.
    let full = dir.path().join("full.raw");
    std::fs::write(&full, noise(23, len)).unwrap();
    server.json(&["import", "over", full.to_str().unwrap()]);
    server.json(&["import", "over", path.to_str().unwrap()]);
    server.ok(&["export", "over", out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == image,
        "holes read as zeros after the import"
    );

    // From standard input (length unknown, read as it comes).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--server", &server.url, "import", "piped", "-", "--size"])
        .arg(len.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &image).unwrap();
    assert!(child.wait().unwrap().success(), "import from standard input");
    server.ok(&["export", "piped", out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == image,
        "an import from standard input equals the image"
    );
}
