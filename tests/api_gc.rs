//! `cairn gc` and `cairn verify` against the real server: space comes back
//! after deletes, dry runs delete nothing, reports, events and metrics are
//! there, a damaged object makes verify exit 1 and its range an NBD EIO.

mod common;

use common::nbd::RawNbd;
use common::*;

/// Objects in the server's local store.
fn object_count(server: &Server) -> u64 {
    server.metric("cairn_pack_objects") as u64
}

/// Flips one byte in the middle of a stored chunk (the server stopped), as
/// a failing disk would. Returns its key.
fn damage_a_chunk(objects_dir: &std::path::Path) -> String {
    use futures::StreamExt;
    use object_store::{ObjectStore, ObjectStoreExt};
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let packs = cairn_store::pack::PackStore::open(objects_dir).unwrap();
        let store = cairn_store::pack::PackObjects::new(packs.clone());
        let mut chunks: Vec<String> = store
            .list(Some(&"chunks".into()))
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        chunks.sort();
        let victim = chunks[chunks.len() / 2].clone();
        let mut bytes = store
            .get(&victim.as_str().into())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        bytes[100] ^= 1;
        store.put(&victim.as_str().into(), bytes.into()).await.unwrap();
        packs.sync().unwrap();
        victim
    })
}

#[test]
fn gc_and_verify_from_the_cli() {
    if s3_mode() {
        println!("SKIPPED in S3 mode: this test counts and damages objects in the local store's packs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let nbd_port = free_port();
    let mut server = Server::start(&data, &["--nbd-listen", &format!("127.0.0.1:{nbd_port}")]);
    let image = dir.path().join("img");
    std::fs::write(&image, cairn_chunker::testdata::noise(5, 4 << 20)).unwrap();
    server.json(&["import", "keep", image.to_str().unwrap()]);
    server.json(&["import", "drop", image.to_str().unwrap()]);
    std::fs::write(&image, cairn_chunker::testdata::noise(6, 2 << 20)).unwrap();
    server.json(&["import", "drop", image.to_str().unwrap()]);
    server.json(&["snapshot", "create", "keep", "--tag", "s"]);
    let before = object_count(&server);
    server.ok(&["volume", "delete", "drop"]);

    // Default grace: nothing goes yet; the summary says so.
    let out = server.ok(&["gc"]);
    assert!(out.contains("reclaimed 0 objects"), "{out}");
    // Zero grace, dry run: reports the dropped volume's 32 chunks and
    // deletes nothing.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let dry = server.json(&["gc", "--dry-run", "--grace", "0s"]);
    assert_eq!(dry["dry_run"], true);
    assert!(dry["reclaimed_objects"].as_u64().unwrap() >= 32, "{dry}");
    assert_eq!(object_count(&server), before);
    let report = server.json(&["gc", "--grace", "0s"]);
    let reclaimed = report["reclaimed_objects"].as_u64().unwrap();
    assert_eq!(reclaimed, dry["reclaimed_objects"].as_u64().unwrap());
    assert_eq!(object_count(&server), before - reclaimed);
    assert!(report["mark_set_bytes"].as_u64().unwrap() > 0);
    // GET /gc: nothing running now, and the last report is this run's.
    let (status, body) = server.http("GET", "/api/v1/gc", None, None);
    assert_eq!(status, 200, "{body}");
    let gc_status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(gc_status["running"].is_null(), "{gc_status}");
    assert_eq!(gc_status["last"]["reclaimed_objects"].as_u64(), Some(reclaimed));
    assert_eq!(gc_status["last"]["started_unix"], report["started_unix"]);

    // Events and metrics.
    let events = server.json(&["events"]);
    let gcs = events
        .as_array()
        .or_else(|| events["events"].as_array())
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "gc")
        .count();
    assert_eq!(gcs, 3);
    let (status, metrics) = server.http("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!("cairn_gc_last_reclaimed_objects {reclaimed}")),
        "{metrics}"
    );
    assert!(metrics.contains("cairn_gc_last_run_timestamp_seconds"));

    // Bad requests.
    let (status, body) = server.http("POST", "/api/v1/gc", Some(r#"{"grace_seconds":"soon"}"#), None);
    assert_eq!(status, 400, "{body}");
    let (status, _) = server.http("POST", "/api/v1/verify", Some(r#"{"tag":"s"}"#), None);
    assert_eq!(status, 400);
    let (status, _) = server.http("POST", "/api/v1/verify", Some(r#"{"volume":"nope"}"#), None);
    assert_eq!(status, 404);
    assert!(server.fails(&["gc", "--grace", "soon"]).contains("grace"));

    // Verify: clean, then a flipped byte in one chunk.
    let clean = server.json(&["verify"]);
    assert_eq!(clean["missing"], 0);
    assert_eq!(clean["corrupt"], 0);
    assert_eq!(clean["targets"], 2, "volume keep and snapshot keep@s");
    server.while_stopped(|| {
        damage_a_chunk(&data.join("objects"));
    });
    let err = server.fails(&["verify"]);
    assert!(err.contains("0 missing and 1 corrupt"), "{err}");
    let report = server.cli(&["--json", "verify", "keep@s"]);
    assert!(!report.status.success());
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let problem = &report["problems"][0];
    assert_eq!(problem["problem"], "corrupt");
    let affected = problem["affected"].as_array().unwrap();
    assert_eq!(affected.len(), 1);
    assert_eq!(affected[0]["tag"], "s");
    let offset = affected[0]["offset"].as_u64().unwrap();
    let length = affected[0]["length"].as_u64().unwrap();
    assert_eq!(length, 64 << 10);

    // Through NBD (after a restart, so no cache holds the good copy): EIO
    // for exactly that chunk, data around it.
    server.kill9_and_restart();
    let mut c = RawNbd::open(nbd_port, "keep");
    assert_eq!(c.read(offset, 4096), Err(5), "EIO for the damaged chunk");
    assert_eq!(c.read(offset + length - 4096, 4096), Err(5));
    let expected = cairn_chunker::testdata::noise(5, 4 << 20);
    if offset >= 4096 {
        assert_eq!(
            c.read(offset - 4096, 4096).unwrap(),
            expected[offset as usize - 4096..offset as usize]
        );
    }
    if offset + length < 4 << 20 {
        let end = (offset + length) as usize;
        assert_eq!(c.read(offset + length, 4096).unwrap(), expected[end..end + 4096]);
    }
    // Export of the damaged volume fails rather than writing wrong data.
    let out = dir.path().join("out");
    let err = server.fails(&["export", "keep", out.to_str().unwrap()]);
    assert!(
        err.contains("interrupted") && err.contains("cairn verify keep"),
        "{err}"
    );
    // The server's own reason, not the transport's.
    assert!(err.contains("the server stopped: reading byte"), "{err}");
    assert!(!err.contains("decoding response body"), "{err}");
}
