//! Bad NBD clients: malformed handshakes, unknown options, out-of-range and
//! oversized requests, writes to read-only exports, disconnects mid-request.
//! Each gets the right errno or a clean close; the server keeps serving.

mod common;

use std::io::{Read, Write};

use common::nbd::*;
use common::*;

fn start(dir: &std::path::Path, transport: &str) -> (Server, u16) {
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
    server.json(&["volume", "create", "v", "--size", "1M"]);
    server.json(&["snapshot", "create", "v", "--tag", "ro"]);
    (server, nbd_port)
}

fn closed(s: &mut std::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn malformed_and_hostile_inputs_io_uring() {
    hostile_inputs("io-uring");
}

#[test]
fn malformed_and_hostile_inputs_tokio() {
    hostile_inputs("tokio");
}

fn hostile_inputs(transport: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (server, port) = start(dir.path(), transport);

    // Client flags without fixed newstyle: closed.
    let mut s = connect(port);
    read_exact(&mut s, 18);
    s.write_all(&0u32.to_be_bytes()).unwrap();
    assert!(closed(&mut s));

    // Garbage instead of an option: closed.
    let mut s = connect(port);
    greet(&mut s);
    s.write_all(b"GARBAGE!GARBAGE!").unwrap();
    assert!(closed(&mut s));

    // Unknown option: ERR_UNSUP, the session goes on; unknown export: ERR_UNKNOWN;
    // malformed GO: ERR_INVALID; meta context before structured replies: ERR_INVALID.
    let mut s = connect(port);
    greet(&mut s);
    send_option(&mut s, 999, b"xyz");
    assert_eq!(option_reply(&mut s).0, (1 << 31) + 1);
    send_option(&mut s, 7, &go_data("nope"));
    assert_eq!(option_reply(&mut s).0, (1 << 31) + 6);
    send_option(&mut s, 7, &[0, 0, 0, 50, b'v']);
    assert_eq!(option_reply(&mut s).0, (1 << 31) + 3);
    send_option(&mut s, 10, &[0u8; 8]);
    assert_eq!(option_reply(&mut s).0, (1 << 31) + 3);
    send_option(&mut s, 5, &[]);
    assert_eq!(
        option_reply(&mut s).0,
        (1 << 31) + 2,
        "STARTTLS refused by policy"
    );
    // LIST shows volumes and snapshots.
    send_option(&mut s, 3, &[]);
    let mut names = Vec::new();
    loop {
        let (kind, data) = option_reply(&mut s);
        if kind == 1 {
            break;
        }
        names.push(String::from_utf8_lossy(&data[4..]).to_string());
    }
    assert!(
        names.contains(&"v".to_string()) && names.contains(&"v@ro".to_string()),
        "{names:?}"
    );
    // A huge option length: refused and closed.
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&m).unwrap();
    assert_eq!(option_reply(&mut s).0, (1 << 31) + 9);
    assert!(closed(&mut s));
    // ABORT: acknowledged and closed.
    let mut s = connect(port);
    greet(&mut s);
    send_option(&mut s, 2, &[]);
    assert_eq!(option_reply(&mut s).0, 1);
    assert!(closed(&mut s));

    // Transmission: errors per request, connection stays usable.
    let mut c = RawNbd::open(port, "v");
    assert_eq!(c.size, 1 << 20);
    assert_eq!(c.read(1 << 20, 1), Err(22), "read past the end: EINVAL");
    assert_eq!(c.read(u64::MAX - 10, 100), Err(22), "offset overflow: EINVAL");
    assert_eq!(
        c.write((1 << 20) - 10, &[1u8; 20]),
        28,
        "write past the end: ENOSPC"
    );
    c.send(99, 0, 5, 0, 0, &[]);
    assert_eq!(c.reply(), (22, 5), "unknown command: EINVAL");
    c.send(7, 0, 6, 0, 4096, &[]);
    assert_eq!(c.reply().0, 22, "BLOCK_STATUS without a meta context: EINVAL");
    c.send(0, 0, 7, 0, 64 << 20, &[]);
    assert_eq!(c.reply().0, 75, "oversized read: EOVERFLOW");
    assert_eq!(c.write(4096, &[3u8; 4096]), 0);
    assert_eq!(c.read(4096, 4096).unwrap(), vec![3u8; 4096]);
    // Oversized write: refused and closed (its payload cannot be skipped safely).
    c.send(1, 0, 8, 0, 64 << 20, &[]);
    assert_eq!(c.reply().0, 75);
    assert!(closed(&mut c.stream));

    // Writes to a snapshot export: EPERM; reads work.
    let mut r = RawNbd::open(port, "v@ro");
    assert_ne!(r.flags & 2, 0, "READ_ONLY flag");
    assert_eq!(r.write(0, &[1u8; 4096]), 1);
    r.send(4, 0, 3, 0, 4096, &[]);
    assert_eq!(r.reply().0, 1, "trim on a snapshot: EPERM");
    assert_eq!(r.read(0, 4096).unwrap(), vec![0u8; 4096]);

    // Disconnect in the middle of a write payload: the server shrugs.
    let mut d = RawNbd::open(port, "v");
    let mut m = 0x2560_9513u32.to_be_bytes().to_vec();
    m.extend_from_slice(&[0, 0, 0, 1]);
    m.extend_from_slice(&[0u8; 16]);
    m.extend_from_slice(&65536u32.to_be_bytes());
    m.extend_from_slice(&[9u8; 1000]);
    d.stream.write_all(&m).unwrap();
    drop(d);

    // Still serving, and nothing half-written landed.
    let mut ok = RawNbd::open(port, "v");
    assert_eq!(ok.read(0, 4096).unwrap(), vec![0u8; 4096]);
    assert_eq!(ok.read(4096, 4096).unwrap(), vec![3u8; 4096]);

    // A pipelined burst past the in-flight limit: every cookie answered once.
    let burst = 240u64;
    let at = |cookie: u64| (4 + cookie) * 4096;
    for cookie in 0..burst {
        let offset = at(cookie);
        ok.send(1, 0, 1000 + cookie, offset, 4096, &[cookie as u8; 4096]);
    }
    let mut answered: Vec<u64> = (0..burst)
        .map(|_| {
            let (err, cookie) = ok.reply();
            assert_eq!(err, 0, "burst write {cookie}");
            cookie - 1000
        })
        .collect();
    answered.sort_unstable();
    assert_eq!(answered, (0..burst).collect::<Vec<_>>());
    for cookie in [0, 63, 64, 65, burst - 1] {
        assert_eq!(ok.read(at(cookie), 4096).unwrap(), vec![cookie as u8; 4096]);
    }

    // The largest payload allowed (32 MiB) in one WRITE, then read back.
    server.json(&["volume", "create", "big", "--size", "64M"]);
    let mut big = RawNbd::open(port, "big");
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i / 4096) as u8).collect();
    assert_eq!(big.write(8 << 20, &data), 0);
    assert_eq!(big.read(8 << 20, 32 << 20).unwrap(), data);
    server.json(&["volume", "show", "v"]);
}
