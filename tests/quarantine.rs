//! A write-back log damaged in its middle quarantines only its volume: the
//! server starts, other volumes serve, the damaged one reports `damaged`
//! and refuses work until `cairn volume repair` drops exactly the
//! unreadable record; then it serves again, also after a restart. GC
//! keeps what its log names meanwhile.

mod common;

use common::*;

const BLOCK: usize = 4096;
/// Journal record: 8-byte header, then kind (1) + offset (8) + data.
const RECORD: u64 = 8 + 9 + BLOCK as u64;

fn flush(c: &mut nbd::RawNbd) {
    c.send(3, 0, 9, 0, 0, &[]);
    assert_eq!(c.reply().0, 0);
}

/// A server that seals only on demand (the writes stay in the journal
/// until the kill), its NBD port, and volume `hurt` holding three flushed
/// 4 KiB writes (0x11, 0x22, 0x33): three journal records.
fn start_with_three_writes(dir: &std::path::Path) -> (Server, u16) {
    let nbd_port = free_port();
    let nbd_listen = format!("127.0.0.1:{nbd_port}");
    let server = Server::start_on(
        &dir.join("data"),
        &["--nbd-listen", &nbd_listen, "--seal-idle", "1h"],
        &[],
    );
    server.json(&["volume", "create", "hurt", "--size", "1M"]);
    let mut c = nbd::RawNbd::open(nbd_port, "hurt");
    for (i, byte) in [0x11u8, 0x22, 0x33].into_iter().enumerate() {
        assert_eq!(c.write((i * BLOCK) as u64, &[byte; BLOCK]), 0);
    }
    flush(&mut c);
    (server, nbd_port)
}

/// Flips a byte inside the second record's data of the one log that holds
/// the three writes.
fn damage_second_record(dir: &std::path::Path) {
    let logs: Vec<_> = std::fs::read_dir(dir.join("data/journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() >= 3 * RECORD)
        .collect();
    assert_eq!(logs.len(), 1, "one log holds the three writes: {logs:?}");
    let mut bytes = std::fs::read(&logs[0]).unwrap();
    bytes[(RECORD + 8 + 9 + 100) as usize] ^= 0xff;
    std::fs::write(&logs[0], &bytes).unwrap();
}

#[test]
fn a_damaged_log_quarantines_one_volume_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, nbd_port) = start_with_three_writes(dir.path());
    server.json(&["volume", "create", "fine", "--size", "1M"]);

    server.kill9_and_restart();
    damage_second_record(dir.path());
    server.kill9_and_restart();

    // The server is up; only `hurt` is out of service.
    let shown = server.json(&["volume", "show", "hurt"]);
    assert_eq!(shown["state"], "damaged", "{shown}");
    let reason = shown["damage"].as_str().unwrap();
    assert!(reason.contains(&format!("byte {RECORD}")), "{reason}");
    let listed = server.json(&["volume", "list"]);
    assert_eq!(listed["volumes"].as_array().unwrap().len(), 2);
    assert!(server
        .fails(&["snapshot", "create", "hurt"])
        .contains("volume_damaged"));
    let (status, metrics) = server.http("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(metrics.contains("cairn_volumes_damaged 1"), "metrics say so");
    let events = server.json(&["events", "--volume", "hurt"]);
    assert!(events["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "damaged"));
    let mut other = nbd::RawNbd::open(nbd_port, "fine");
    assert_eq!(other.write(0, &[0x44; BLOCK]), 0);
    assert_eq!(other.read(0, BLOCK as u32).unwrap(), vec![0x44; BLOCK]);
    drop(other);

    // Repair drops exactly the damaged record and keeps the others.
    let report = server.json(&["volume", "repair", "hurt"]);
    let dropped = report["dropped"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{report}");
    assert_eq!(dropped[0]["at"], RECORD);
    assert_eq!(dropped[0]["length"], RECORD);
    assert_eq!(report["dropped_bytes"], RECORD);
    assert_eq!(server.json(&["volume", "show", "hurt"])["state"], "ready");
    let check = |server: &Server| {
        let mut c = nbd::RawNbd::open(nbd_port, "hurt");
        assert_eq!(c.read(0, BLOCK as u32).unwrap(), vec![0x11; BLOCK]);
        assert_eq!(
            c.read(BLOCK as u64, BLOCK as u32).unwrap(),
            vec![0u8; BLOCK],
            "dropped write"
        );
        assert_eq!(c.read(2 * BLOCK as u64, BLOCK as u32).unwrap(), vec![0x33; BLOCK]);
        let _ = server;
    };
    check(&server);
    assert!(server
        .fails(&["volume", "repair", "hurt"])
        .contains("wrong_state"));
    server.kill9_and_restart();
    assert_eq!(server.json(&["volume", "show", "hurt"])["state"], "ready");
    check(&server);
    let verify = server.json(&["verify"]);
    assert_eq!(verify["corrupt"], 0);
}

#[test]
fn a_fork_reading_through_a_damaged_volume_is_quarantined_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, nbd_port) = start_with_three_writes(dir.path());
    // A snapshot of unsealed data, and a fork that reads through it.
    let snap = server.json(&["snapshot", "create", "hurt", "--tag", "s"]);
    assert_eq!(snap["sealed"], false, "{snap}");
    let fork = server.json(&["fork", "hurt@s", "child"]);
    assert_eq!(fork["base_pending"], true, "{fork}");

    server.kill9_and_restart();
    damage_second_record(dir.path());
    server.kill9_and_restart();

    let child = server.json(&["volume", "show", "child"]);
    assert_eq!(child["state"], "damaged", "{child}");
    assert!(
        child["damage"].as_str().unwrap().contains("repair hurt first"),
        "{child}"
    );
    assert!(server
        .fails(&["volume", "repair", "child"])
        .contains("volume_damaged"));
    server.json(&["volume", "repair", "hurt"]);
    let report = server.json(&["volume", "repair", "child"]);
    assert_eq!(report["dropped"].as_array().unwrap().len(), 0, "{report}");
    let mut c = nbd::RawNbd::open(nbd_port, "child");
    assert_eq!(c.read(0, BLOCK as u32).unwrap(), vec![0x11; BLOCK]);
    assert_eq!(c.read(2 * BLOCK as u64, BLOCK as u32).unwrap(), vec![0x33; BLOCK]);
    drop(c);
    server.kill9_and_restart();
    assert_eq!(server.json(&["volume", "show", "child"])["state"], "ready");
}

#[test]
fn a_damaged_volume_can_be_deleted_and_its_logs_go() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _) = start_with_three_writes(dir.path());
    server.kill9_and_restart();
    damage_second_record(dir.path());
    server.kill9_and_restart();
    assert_eq!(server.json(&["volume", "show", "hurt"])["state"], "damaged");

    server.ok(&["volume", "delete", "hurt"]);
    assert!(server.fails(&["volume", "show", "hurt"]).contains("not_found"));
    let events = server.json(&["events", "--volume", "hurt"]);
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"repair") && kinds.contains(&"delete"),
        "{kinds:?}"
    );
    // Nothing is left to quarantine after a restart, and the name is free.
    server.kill9_and_restart();
    assert_eq!(
        server.json(&["volume", "list"])["volumes"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let logs: Vec<_> = std::fs::read_dir(dir.path().join("data/journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() >= 3 * RECORD)
        .collect();
    assert!(logs.is_empty(), "the damaged log is gone: {logs:?}");
    server.json(&["volume", "create", "hurt", "--size", "1M"]);
}

#[test]
fn gc_keeps_the_stored_chunks_a_damaged_log_names() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, nbd_port) = start_with_three_writes(dir.path());
    // A whole 64 KiB chunk is stored at once; only its id is journaled,
    // after the three records.
    let chunk = 64 * 1024;
    let mut c = nbd::RawNbd::open(nbd_port, "hurt");
    assert_eq!(c.write(chunk as u64, &vec![0x55; chunk]), 0);
    flush(&mut c);
    drop(c);
    server.kill9_and_restart();
    damage_second_record(dir.path());
    server.kill9_and_restart();
    assert_eq!(server.json(&["volume", "show", "hurt"])["state"], "damaged");

    // No root holds the chunk yet: without the quarantine's hold, a GC
    // with no grace would delete it once it is older than GC's cutoff
    // (object times are in whole seconds).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let report = server.json(&["gc", "--grace", "0s"]);
    assert_eq!(report["scanned_objects"], 1, "{report}");
    assert_eq!(report["reclaimed_objects"], 0, "{report}");

    server.json(&["volume", "repair", "hurt"]);
    let mut c = nbd::RawNbd::open(nbd_port, "hurt");
    assert_eq!(c.read(chunk as u64, chunk as u32).unwrap(), vec![0x55; chunk]);
    drop(c);
    server.kill9_and_restart();
    let mut c = nbd::RawNbd::open(nbd_port, "hurt");
    assert_eq!(c.read(chunk as u64, chunk as u32).unwrap(), vec![0x55; chunk]);
    assert_eq!(c.read(0, BLOCK as u32).unwrap(), vec![0x11; BLOCK]);
}
