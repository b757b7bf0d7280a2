//! `GET …/chunks` (what `cairn export` reads) against `GET …/data`: the
//! records of a volume with stored chunks, zero chunks, dirty data and a
//! short last chunk, of a part of it, and of a snapshot, decode (frames
//! checked against their ids) to the same bytes; bad ranges are refused.

mod common;

use std::process::Command;

use cairn_api_types::chunks::RecordHead;
use cairn_chunker::{frame, ChunkId};
use common::*;

const KIB: usize = 1024;

/// Counts of each kind of record, and the bytes they decode to.
#[derive(Debug, Default)]
struct Decoded {
    zeros: usize,
    plain: usize,
    frames: usize,
    bytes: Vec<u8>,
}

fn decode(mut body: &[u8]) -> Decoded {
    let mut out = Decoded::default();
    while !body.is_empty() {
        let (head, at) = RecordHead::decode(body).unwrap().expect("a whole header");
        let rest = &body[at..];
        let (content, n) = (&rest[..head.body_len()], head.body_len());
        match head {
            RecordHead::Zeros { len } => {
                out.zeros += 1;
                out.bytes.resize(out.bytes.len() + len as usize, 0);
            }
            RecordHead::Plain { len } => {
                out.plain += 1;
                assert_eq!(content.len(), len as usize);
                out.bytes.extend_from_slice(content);
            }
            RecordHead::Frame { len, id, .. } => {
                out.frames += 1;
                let plain = frame::decode(content, Some(ChunkId(id))).expect("a sound frame for its id");
                out.bytes.extend_from_slice(&plain[..len as usize]);
            }
            RecordHead::Error { .. } => panic!("the server stopped: {}", String::from_utf8_lossy(content)),
        }
        body = &rest[n..];
    }
    out
}

/// `GET path` as bytes: (status, body).
fn get(server: &Server, dir: &std::path::Path, path: &str) -> (u16, Vec<u8>) {
    let file = dir.join("body");
    let out = Command::new("curl")
        .args(["-s", "-o"])
        .arg(&file)
        .args(["-w", "%{http_code}", &format!("{}{path}", server.url)])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (status, std::fs::read(&file).unwrap_or_default())
}

#[test]
fn chunk_records_decode_to_the_same_bytes_as_data() {
    assert!(have("qemu-io"), "qemu-io is not installed: run scripts/setup.sh");
    let dir = tempfile::tempdir().unwrap();
    let nbd_port = free_port();
    let nbd = format!("127.0.0.1:{nbd_port}");
    // Dirty data stays unsealed for the test's length.
    let extra = ["--nbd-listen", nbd.as_str(), "--seal-idle", "1h"];
    let mut server = Server::start(&dir.path().join("data"), &extra);

    // 1 MiB + 12 KiB: the last 64 KiB chunk is short. Data in chunks 0-2
    // and the last one, zeros between.
    let len = 1024 * KIB + 12 * KIB;
    let mut image = vec![0u8; len];
    image[..3 * 64 * KIB].copy_from_slice(&noise(1, 3 * 64 * KIB));
    image[len - 10 * KIB..].copy_from_slice(&noise(2, 10 * KIB));
    let path = dir.path().join("image");
    std::fs::write(&path, &image).unwrap();
    server.json(&["import", "vol", path.to_str().unwrap()]);
    // A restart empties the memory cache, so stored chunks go as frames
    // (those a remote store's read-ahead or hydration caches again go as
    // plain bytes).
    server.kill9_and_restart();

    // Dirty data over part of a stored chunk and part of a zero one.
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 70000 5000",
        "-c",
        "write -P 0x3c 600000 4096",
        &format!("nbd://{nbd}/vol"),
    ]));
    image[70000..75000].fill(0x5a);
    image[600000..604096].fill(0x3c);

    let (status, body) = get(&server, dir.path(), "/api/v1/volumes/vol/chunks");
    assert_eq!(status, 200);
    let whole = decode(&body);
    assert!(whole.bytes == image, "the records decode to the volume");
    assert!(
        whole.frames >= 1 && whole.zeros >= 5 && whole.plain >= 2,
        "frames for stored chunks, zeros for zero chunks, plain bytes for dirty ones: {} / {} / {}",
        whole.frames,
        whole.zeros,
        whole.plain
    );
    assert!(
        body.len() < len / 2,
        "frames are compressed: {} bytes",
        body.len()
    );
    let (_, data) = get(&server, dir.path(), "/api/v1/volumes/vol/data");
    assert!(data == image, "and /data agrees");

    // Part of the volume, starting and ending inside chunks.
    let (offset, length) = (4096 + 100, 300 * KIB);
    let (status, body) = get(
        &server,
        dir.path(),
        &format!("/api/v1/volumes/vol/chunks?offset={offset}&length={length}"),
    );
    assert_eq!(status, 200);
    assert!(decode(&body).bytes == image[offset..offset + length]);

    // A snapshot (its dirty data pending a seal), then more writes to the
    // volume, which the snapshot does not see.
    server.json(&["snapshot", "create", "vol", "--tag", "t"]);
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x77 0 64k",
        &format!("nbd://{nbd}/vol"),
    ]));
    let (status, body) = get(&server, dir.path(), "/api/v1/volumes/vol/snapshots/t/chunks");
    assert_eq!(status, 200);
    assert!(decode(&body).bytes == image, "the snapshot decodes to its bytes");
    image[..64 * KIB].fill(0x77);
    let (_, body) = get(&server, dir.path(), "/api/v1/volumes/vol/chunks");
    assert!(
        decode(&body).bytes == image,
        "the volume decodes to its new bytes"
    );

    // The CLI's export reads these records.
    let out = dir.path().join("out");
    server.ok(&["export", "vol", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == image, "export equals the volume");

    // Ranges past the end and unknown sources are refused.
    let (status, body) = get(
        &server,
        dir.path(),
        &format!("/api/v1/volumes/vol/chunks?offset=4096&length={len}"),
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("out_of_range"));
    let (status, _) = get(&server, dir.path(), "/api/v1/volumes/nope/chunks");
    assert_eq!(status, 404);
    let (status, _) = get(&server, dir.path(), "/api/v1/volumes/vol/snapshots/nope/chunks");
    assert_eq!(status, 404);
}
