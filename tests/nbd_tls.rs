//! NBD over TLS with a pre-shared key per namespace, driven by the real
//! GnuTLS clients: qemu-io (`tls-creds-psk`), nbdinfo and nbdcopy
//! (`nbds://IDENTITY@HOST/EXPORT?tls-psk-file=`), keys made by psktool.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

struct TlsServer {
    server: Server,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsServer {
    fn start() -> TlsServer {
        Self::start_with("auto")
    }

    fn start_with(transport: &str) -> TlsServer {
        for tool in ["qemu-io", "nbdinfo", "nbdcopy", "psktool"] {
            assert!(have(tool), "{tool} is not installed: run scripts/setup.sh");
        }
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.psk");
        for user in ["alice", "bob"] {
            run(Command::new("psktool").args(["-u", user, "-p"]).arg(&keys));
        }
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "ta alice\ntb bob\n").unwrap();
        let port = free_port();
        let server = Server::start(
            &dir.path().join("data"),
            &[
                "--nbd-listen",
                &format!("127.0.0.1:{port}"),
                "--nbd-transport",
                transport,
                "--nbd-tls-psk",
                keys.to_str().unwrap(),
                "--tokens",
                tokens.to_str().unwrap(),
            ],
        );
        TlsServer { server, port, dir }
    }

    fn keys(&self) -> std::path::PathBuf {
        self.dir.path().join("keys.psk")
    }

    fn nbds(&self, identity: &str, export: &str, keys: &Path) -> String {
        format!(
            "nbds://{identity}@127.0.0.1:{}/{export}?tls-psk-file={}",
            self.port,
            keys.display()
        )
    }

    /// qemu-io over TLS as `identity`, keys from the server's file.
    fn qemu_io(&self, identity: &str, export: &str, commands: &[&str]) -> Output {
        let mut cmd = Command::new("qemu-io");
        if export.contains('@') {
            cmd.arg("-r");
        }
        cmd.arg("--object").arg(format!(
            "tls-creds-psk,id=t0,endpoint=client,dir={},username={identity}",
            self.dir.path().display()
        ));
        for c in commands {
            cmd.args(["-c", c]);
        }
        cmd.arg("--image-opts").arg(format!(
            "driver=nbd,host=127.0.0.1,port={},export={export},tls-creds=t0",
            self.port
        ));
        cmd.output().unwrap()
    }

    fn create(&self, token: &str, name: &str, size: u64) {
        let body = format!(r#"{{"name":"{name}","size":{size}}}"#);
        let (code, text) = self
            .server
            .http("POST", "/api/v1/volumes", Some(&body), Some(token));
        assert_eq!(code, 201, "{text}");
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn succeeds(out: Output) -> String {
    let t = text(&out);
    assert!(out.status.success() && !t.contains("failed"), "{t}");
    t
}

#[test]
fn tenants_read_and_write_their_own_volumes_over_tls() {
    tenants_over_tls("auto");
}

#[test]
fn tenants_over_tls_on_the_portable_transport() {
    tenants_over_tls("tokio");
}

fn tenants_over_tls(transport: &str) {
    let s = TlsServer::start_with(transport);
    s.create("ta", "secret", 64 << 20);
    s.create("tb", "other", 32 << 20);

    // qemu-io writes alice's volume over TLS and reads it back.
    succeeds(s.qemu_io(
        "alice",
        "secret",
        &["write -P 0xab 1M 2M", "write -P 0x5c 4097 12345", "flush"],
    ));
    succeeds(s.qemu_io(
        "alice",
        "secret",
        &["read -P 0xab 1M 1M", "read -P 0x5c 4097 12345"],
    ));
    let (code, _) = s.server.http(
        "POST",
        "/api/v1/volumes/secret/snapshots",
        Some(r#"{"tag":"s1"}"#),
        Some("ta"),
    );
    assert_eq!(code, 201);

    // nbdinfo lists only alice's namespace, snapshots included.
    let list = succeeds(
        Command::new("nbdinfo")
            .args(["--list", &s.nbds("alice", "", &s.keys())])
            .output()
            .unwrap(),
    );
    assert!(
        list.contains("export=\"secret\"") && list.contains("export=\"secret@s1\""),
        "{list}"
    );
    assert!(
        !list.contains("other"),
        "bob's volume is not listed to alice: {list}"
    );
    let info = succeeds(
        Command::new("nbdinfo")
            .arg(s.nbds("alice", "secret", &s.keys()))
            .output()
            .unwrap(),
    );
    assert!(info.contains("with TLS") && info.contains("67108864"), "{info}");

    // nbdcopy: an image into the volume and the snapshot out, over TLS.
    let image = s.dir.path().join("image");
    let data = noise(42, 8 << 20);
    std::fs::write(&image, &data).unwrap();
    succeeds(
        Command::new("nbdcopy")
            .arg(&image)
            .arg(s.nbds("alice", "secret", &s.keys()))
            .output()
            .unwrap(),
    );
    let back = s.dir.path().join("back");
    succeeds(
        Command::new("nbdcopy")
            .arg(s.nbds("alice", "secret", &s.keys()))
            .arg(&back)
            .output()
            .unwrap(),
    );
    let back = std::fs::read(&back).unwrap();
    assert_eq!(back.len(), 64 << 20);
    assert!(back[..data.len()] == data[..], "nbdcopy round trip over TLS");
    let stray = back[data.len()..].iter().position(|&b| b != 0);
    assert_eq!(stray, None, "zeros past the image");
    // The snapshot still holds the qemu-io patterns.
    succeeds(s.qemu_io("alice", "secret@s1", &["read -P 0xab 1M 2M"]));

    // bob, with his own valid key, cannot open or list alice's volume.
    let bob = Command::new("nbdinfo")
        .arg(s.nbds("bob", "secret", &s.keys()))
        .output()
        .unwrap();
    assert!(!bob.status.success(), "bob opened alice's volume: {}", text(&bob));
    let bob_list = succeeds(
        Command::new("nbdinfo")
            .args(["--list", &s.nbds("bob", "", &s.keys())])
            .output()
            .unwrap(),
    );
    assert!(
        bob_list.contains("export=\"other\"") && !bob_list.contains("secret"),
        "{bob_list}"
    );
    let bob_qemu = s.qemu_io("bob", "secret", &["read 0 4k"]);
    assert!(!bob_qemu.status.success() || text(&bob_qemu).contains("failed"));
}

#[test]
fn plain_nbd_wrong_keys_and_unknown_identities_are_refused() {
    let s = TlsServer::start();
    s.create("ta", "secret", 16 << 20);

    // Plain NBD: every option before STARTTLS is refused.
    let plain = Command::new("nbdinfo")
        .arg(format!("nbd://127.0.0.1:{}/secret", s.port))
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plain NBD opened: {}", text(&plain));
    let plain = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 4k"])
        .arg(format!("nbd://127.0.0.1:{}/secret", s.port))
        .output()
        .unwrap();
    let t = text(&plain);
    assert!(t.contains("TLS"), "qemu says TLS is required: {t}");

    // A wrong key for alice.
    let keys = std::fs::read_to_string(s.keys()).unwrap();
    let wrong = s.dir.path().join("wrong.psk");
    let line = keys.lines().find(|l| l.starts_with("alice:")).unwrap();
    let (_, key) = line.split_once(':').unwrap();
    let flipped: String = key.chars().map(|c| if c == '0' { '1' } else { '0' }).collect();
    std::fs::write(&wrong, format!("alice:{flipped}\n")).unwrap();
    let out = Command::new("nbdinfo")
        .arg(s.nbds("alice", "secret", &wrong))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong key opened: {}", text(&out));
    // An identity the server has no key for.
    let carol = s.dir.path().join("carol.psk");
    run(Command::new("psktool").args(["-u", "carol", "-p"]).arg(&carol));
    let out = Command::new("nbdinfo")
        .args(["--list", &s.nbds("carol", "", &carol)])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "an unknown identity listed: {}",
        text(&out)
    );

    // The server still serves the right client.
    succeeds(s.qemu_io("alice", "secret", &["write -P 7 0 64k", "read -P 7 0 64k"]));
}

#[test]
fn serve_refuses_bad_key_files_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = "00112233445566778899aabbccddeeff";
    for (content, needle) in [
        (format!("alice:{good}\nbob:nothex\n"), "line 2"),
        (format!("Not A Namespace:{good}\n"), "is not a namespace"),
        (String::from("alice:0011\n"), "has 2 bytes"),
        (String::new(), "holds no keys"),
    ] {
        let keys = dir.path().join("keys.psk");
        std::fs::write(&keys, &content).unwrap();
        let out = Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--nbd-listen",
                "127.0.0.1:0",
                "--nbd-tls-psk",
            ])
            .arg(&keys)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{content:?} accepted");
        assert!(stderr.contains(needle), "{content:?}: {stderr}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--nbd-tls-psk"])
        .arg(dir.path().join("missing.psk"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.psk"));
}
