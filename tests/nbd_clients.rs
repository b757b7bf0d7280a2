//! NBD exports driven by real clients: qemu-io, qemu-img, nbdcopy,
//! nbdinfo and fio (Debian packages installed by scripts/setup.sh).

mod common;

use std::process::Command;

use common::*;

fn start(dir: &std::path::Path) -> (Server, u16) {
    start_with(dir, "auto")
}

fn start_with(dir: &std::path::Path, transport: &str) -> (Server, u16) {
    let nbd_port = free_port();
    let server = Server::start(
        &dir.join("data"),
        &[
            "--nbd-listen",
            &format!("127.0.0.1:{nbd_port}"),
            "--nbd-transport",
            transport,
        ],
    );
    (server, nbd_port)
}

#[test]
fn qemu_io_patterns_snapshot_export_and_image_copies() {
    for tool in ["qemu-io", "qemu-img", "nbdcopy", "nbdinfo"] {
        assert!(have(tool), "{tool} is not installed: run scripts/setup.sh");
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = start(dir.path());
    let uri = |export: &str| format!("nbd://127.0.0.1:{port}/{export}");
    server.json(&["volume", "create", "vm", "--size", "64M"]);

    // qemu-io writes patterns (aligned and not), reads them back.
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xab 1M 3M",
        "-c",
        "write -P 0x5c 4097 12345",
        "-c",
        "write -z 2M 64k",
        // Unaligned at both ends around whole chunks (stored directly).
        "-c",
        "write -P 0x3d 5000000 300000",
        &uri("vm"),
    ]));
    let checked = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "read -P 0xab 1M 1M",
        "-c",
        "read -P 0x5c 4097 12345",
        "-c",
        "read -P 0 2M 64k",
        "-c",
        "read -P 0x3d 5000000 300000",
        "-c",
        "read -P 0 4999000 1000",
        "-c",
        "read -P 0 5300000 1000",
        &uri("vm"),
    ]));
    assert!(!checked.contains("verification failed"), "{checked}");
    // ... and through the read-only @TAG export after a snapshot.
    server.json(&["snapshot", "create", "vm", "--tag", "s1"]);
    run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0xee 1M 4k", &uri("vm")]));
    run(Command::new("qemu-io").args([
        "-r",
        "-f",
        "raw",
        "-c",
        "read -P 0xab 1M 4k",
        "-c",
        "read -P 0xab 3M 1M",
        &uri("vm@s1"),
    ]));
    let ro = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 1 0 4k", &uri("vm@s1")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ro.stdout).to_string() + &String::from_utf8_lossy(&ro.stderr);
    assert!(
        !ro.status.success() || text.contains("failed") || text.contains("read-only"),
        "write to a snapshot: {text}"
    );

    // nbdinfo: size, flags, allocation; zeroed ranges are holes.
    let info = run(Command::new("nbdinfo").arg(uri("vm")));
    assert!(info.contains("export-size: 67108864"), "{info}");
    assert!(
        info.contains("can_multi_conn: true")
            && info.contains("can_trim: true")
            && info.contains("can_flush: true"),
        "{info}"
    );
    let info = run(Command::new("nbdinfo").arg(uri("vm@s1")));
    assert!(info.contains("is_read_only: true"), "{info}");
    run(Command::new("qemu-io").args(["-f", "raw", "-c", "discard 1M 1M", &uri("vm")]));
    let map = run(Command::new("nbdinfo").args(["--map", &uri("vm")]));
    let holes: Vec<(u64, u64)> = map
        .lines()
        .filter(|l| l.contains("hole"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap())
        })
        .collect();
    let in_hole = |off: u64, len: u64| holes.iter().any(|&(o, l)| o <= off && off + len <= o + l);
    assert!(in_hole(1 << 20, 1 << 20), "trimmed range is a hole: {map}");
    assert!(in_hole(2 << 20, 64 << 10), "write -z range is a hole: {map}");
    assert!(in_hole(8 << 20, 56 << 20), "never-written space is a hole: {map}");
    assert!(!in_hole(3 << 20, 4096), "written data is not a hole: {map}");

    // qemu-img convert and nbdcopy copy an image in and out byte-identically.
    let image = noise(5, 32 << 20);
    let src = dir.path().join("src.img");
    std::fs::write(&src, &image).unwrap();
    server.json(&["volume", "create", "img", "--size", "32M"]);
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(uri("img")));
    let back = dir.path().join("back.img");
    run(Command::new("nbdcopy").arg(uri("img")).arg(&back));
    assert!(std::fs::read(&back).unwrap() == image);
    server.json(&["volume", "create", "img2", "--size", "32M"]);
    run(Command::new("nbdcopy").arg(&src).arg(uri("img2")));
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&src)
        .arg(uri("img2")));

    // qemu-img compare between a fork and its snapshot.
    server.json(&["snapshot", "create", "img", "--tag", "gold"]);
    server.json(&["fork", "img@gold", "img-fork"]);
    run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &uri("img-fork"),
        &uri("img@gold"),
    ]));
    // The REST export agrees with what NBD wrote.
    let via_rest = dir.path().join("rest.img");
    server.ok(&["export", "img-fork", via_rest.to_str().unwrap()]);
    assert!(std::fs::read(&via_rest).unwrap() == image);
}

#[test]
fn fio_verify_single_and_multi_connection() {
    assert!(have("fio"), "fio is not installed: run scripts/setup.sh");
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for transport in ["io-uring", "tokio"] {
        let (server, port) = start_with(&dir.path().join(transport), transport);
        server.json(&["volume", "create", "fio", "--size", "64M"]);
        servers.push((transport, server, port));
    }
    let runs = servers
        .iter()
        .flat_map(|(t, _, port)| [(*t, *port, "1", "32M"), (*t, *port, "4", "16M")]);
    let mut flushes_sent = std::collections::HashMap::new();
    for (transport, port, jobs, size) in runs {
        let out = dir.path().join(format!("fio-{transport}-{jobs}.json"));
        // fio leaves verify state files in its working directory.
        run(Command::new("fio").current_dir(dir.path()).args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri=nbd://127.0.0.1:{port}/fio"),
            "--rw=randwrite",
            "--bs=4k",
            &format!("--size={size}"),
            &format!("--numjobs={jobs}"),
            "--offset_increment=16M",
            "--iodepth=16",
            // Flushes from four connections at once: those that arrive
            // while one syncs the log share its sync.
            "--fsync=64",
            "--verify=crc32c",
            "--do_verify=1",
            "--output-format=json",
            &format!("--output={}", out.display()),
        ]));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        for job in report["jobs"].as_array().unwrap() {
            assert_eq!(job["error"], 0, "fio job failed over {transport}: {job}");
            assert!(job["write"]["io_bytes"].as_u64().unwrap() > 0);
            *flushes_sent.entry(transport).or_insert(0) += job["sync"]["total_ios"].as_u64().unwrap();
        }
    }
    for (transport, server, _) in &servers {
        let (status, metrics) = server.http("GET", "/metrics", None, None);
        assert_eq!(status, 200);
        let counter = |name: &str| -> u64 {
            let line = metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} ")));
            line.unwrap_or_else(|| panic!("no {name} in {metrics}"))
                .parse()
                .unwrap()
        };
        let (flushes, syncs) = (counter("cairn_flushes_total"), counter("cairn_log_syncs_total"));
        let sent = flushes_sent[transport];
        assert!(
            sent > 0 && flushes >= sent,
            "{transport}: fio sent {sent} flushes, the server counted {flushes}"
        );
        assert!(
            (1..=flushes).contains(&syncs),
            "{transport}: {syncs} log syncs for {flushes} flushes"
        );
    }
}

#[test]
fn attached_volume_refuses_rollback_until_detached() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = start(dir.path());
    server.json(&["volume", "create", "live", "--size", "1M"]);
    server.json(&["snapshot", "create", "live", "--tag", "t"]);
    let mut client = nbd::RawNbd::open(port, "live");
    assert_eq!(client.write(0, &[7u8; 4096]), 0);
    let shown = server.json(&["volume", "show", "live"]);
    assert_eq!(shown["state"], "attached");
    assert!(server.fails(&["rollback", "live@t"]).contains("wrong_state"));
    // A snapshot of an attached volume holds what the client saw acknowledged.
    server.json(&["snapshot", "create", "live", "--tag", "while-attached"]);
    let out = dir.path().join("snap");
    server.ok(&["export", "live@while-attached", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap()[..4096], [7u8; 4096]);
    client.send(2, 0, 9, 0, 0, &[]); // DISC
    drop(client);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.json(&["volume", "show", "live"])["state"] != "ready" {
        assert!(
            std::time::Instant::now() < deadline,
            "volume stayed attached after disconnect"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server.json(&["rollback", "live@t"]);
}

#[test]
fn attached_state_left_by_a_kill9_is_cleared_at_start() {
    assert!(have("qemu-io"), "qemu-io is not installed: run scripts/setup.sh");
    let dir = tempfile::tempdir().unwrap();
    let (mut server, port) = start(dir.path());
    server.json(&["volume", "create", "vm", "--size", "16M"]);
    server.json(&["snapshot", "create", "vm", "--tag", "t"]);
    // A client that stays connected: the volume is attached.
    let mut client = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "sleep 60000",
            &format!("nbd://127.0.0.1:{port}/vm"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = |server: &Server| server.json(&["volume", "show", "vm"])["state"].clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while state(&server) != "attached" {
        assert!(std::time::Instant::now() < deadline, "never attached");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let refused = server.fails(&["rollback", "vm@t"]);
    assert!(refused.contains("attached"), "{refused}");
    server.kill9_and_restart();
    let _ = client.kill();
    let _ = client.wait();
    assert_eq!(state(&server), "ready", "cleared at start");
    server.ok(&["rollback", "vm@t"]);
}

#[test]
fn a_snapshot_open_read_only_is_kept_until_its_readers_leave() {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = start(dir.path());
    server.json(&["volume", "create", "base", "--size", "1M"]);
    server.json(&["snapshot", "create", "base", "--tag", "t"]);
    let reader = nbd::RawNbd::open(port, "base@t");
    // Deleting the snapshot, or the volume with its snapshots, waits for
    // the reader: 409, nothing deleted.
    assert!(server
        .fails(&["snapshot", "delete", "base@t"])
        .contains("snapshot_in_use"));
    assert!(server
        .fails(&["volume", "delete", "base"])
        .contains("snapshot_in_use"));
    assert_eq!(
        server.json(&["snapshot", "list", "base"])["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Keeping the snapshots, the volume itself may go.
    server.json(&["volume", "create", "other", "--size", "1M"]);
    server.json(&["snapshot", "create", "other", "--tag", "t"]);
    server.ok(&["volume", "delete", "other"]);
    drop(reader);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.cli(&["snapshot", "delete", "base@t"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "snapshot still refused after its reader left"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
