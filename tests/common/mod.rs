//! Test harness: starts the real `cairn` binary on a temp data dir and a
//! free loopback port, and drives it with the CLI and with HTTP.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod nbd;
pub mod proxy;

pub const BIN: &str = env!("CARGO_BIN_EXE_cairn");

/// A loopback port that no other test holds and nothing listens on.
///
/// The port is chosen below the kernel's ephemeral range, so the client
/// sockets that tests open (curl, NBD clients, the object store client)
/// can never take it between this call and the server's bind, and it is
/// locked with `flock` on a file in the temp dir for as long as this test
/// process lives, so parallel tests never pick the same one.
pub fn free_port() -> u16 {
    use std::os::fd::AsRawFd;
    use std::sync::Mutex;
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());

    let (low, high) = unreserved_port_range();
    let dir = std::env::temp_dir().join("cairn-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    let span = u32::from(high - low);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    for i in 0..span {
        let port = low + ((seed.wrapping_add(i)) % span) as u16;
        let lock = std::fs::File::create(dir.join(port.to_string())).unwrap();
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap().push(lock);
            return port;
        }
    }
    // No room outside the ephemeral range: let the kernel choose.
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Ports below the ephemeral range (`ip_local_port_range`), or above it
/// when it starts too low to leave room.
fn unreserved_port_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text.split_whitespace().filter_map(|v| v.parse::<u16>().ok());
    let (first, last) = (bounds.next().unwrap_or(32768), bounds.next().unwrap_or(60999));
    if first >= 12_000 {
        (first.saturating_sub(10_000).max(1024), first)
    } else {
        (last.saturating_add(1), u16::MAX)
    }
}

/// A running `cairn serve`; killed (SIGKILL) when dropped.
///
/// With `CAIRN_TEST_OBJECT_STORE=s3` every server stores its objects in a
/// bucket of its own S3-compatible server (moto, started here on a free
/// loopback port) instead of the local default, so the same tests run
/// against both backends.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub port: u16,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// The S3 server behind this one (S3 mode, or [`Server::start_on_s3`]).
    pub s3: Option<S3Server>,
}

/// A moto S3 server process with one bucket.
pub struct S3Server {
    pub child: Child,
    pub endpoint: String,
    pub bucket: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; scripts/setup.sh does)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let bucket = "cairn-test".to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("curl")
                .args(["-sf", "-X", "PUT", &format!("{endpoint}/{bucket}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "moto did not start on {endpoint}");
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server {
            child,
            endpoint,
            bucket,
        }
    }

    /// The object store URL of this bucket.
    pub fn url(&self) -> String {
        format!("s3://{}/objects", self.bucket)
    }

    /// Environment that points a cairn server at this S3 server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Environment and flag that point a cairn server at this bucket.
    fn apply(&self, cmd: &mut Command) {
        cmd.args(["--object-store", &self.url()]).envs(self.env());
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when the tests run against S3 (see [`Server`]).
pub fn s3_mode() -> bool {
    std::env::var("CAIRN_TEST_OBJECT_STORE").is_ok_and(|v| v == "s3")
}

impl Server {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let s3 = s3_mode().then(S3Server::start);
        Self::launch(data_dir, extra, &[], s3)
    }

    /// A server on a fresh S3 bucket of its own, whatever the mode, with
    /// extra environment (e.g. `CAIRN_FAULTS`).
    pub fn start_on_s3(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::launch(data_dir, extra, env, Some(S3Server::start()))
    }

    /// A server with exactly these flags and environment, whatever the mode.
    pub fn start_on(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::launch(data_dir, extra, env, None)
    }

    /// A second server on its own data dir over the same bucket as `other`.
    pub fn start_beside(data_dir: &Path, extra: &[&str], other: &Server) -> Server {
        let s3 = other.s3.as_ref().expect("the other server runs on S3");
        let url = s3.url();
        let mut args = vec!["--object-store", url.as_str()];
        args.extend_from_slice(extra);
        let env = s3.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Self::launch(data_dir, &args, &env, None)
    }

    fn launch(data_dir: &Path, extra: &[&str], env: &[(&str, &str)], s3: Option<S3Server>) -> Server {
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let child = spawn(data_dir, port, &extra, &env, s3.as_ref());
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
            port,
            extra,
            env,
            s3,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cairn serve exited during start-up: {status}");
            }
            if let Ok(out) = Command::new("curl")
                .args(["-sf", &format!("{}/healthz", self.url)])
                .output()
            {
                if out.status.success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cairn serve did not become ready on {}", self.url);
    }

    /// Kills with SIGKILL and starts again on the same data dir and port.
    pub fn kill9_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.restart();
    }

    /// Stops with SIGTERM, runs `offline` while the server is down, and
    /// starts it again on the same data dir and port.
    pub fn while_stopped(&mut self, offline: impl FnOnce()) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "cairn serve exited with {status} on SIGTERM");
        offline();
        self.restart();
    }

    fn restart(&mut self) {
        self.child = spawn(
            &self.data_dir,
            self.port,
            &self.extra,
            &self.env,
            self.s3.as_ref(),
        );
        self.wait_ready();
    }

    /// Sends SIGTERM and waits; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        status.code()
    }

    /// The value of an unlabelled metric on `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.http("GET", "/metrics", None, None);
        assert_eq!(status, 200);
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no metric {name}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// `cairn verify` finds nothing missing or corrupt.
    pub fn assert_verify_clean(&self) {
        let verify = self.json(&["verify"]);
        assert_eq!(
            (verify["missing"].as_u64(), verify["corrupt"].as_u64()),
            (Some(0), Some(0)),
            "{verify}"
        );
    }

    /// Snapshots `volume` as `tag` and asserts its export equals `model`.
    pub fn assert_snapshot_equals(&self, volume: &str, tag: &str, model: &[u8]) {
        self.json(&["snapshot", "create", volume, "--tag", tag]);
        let out = tempfile::NamedTempFile::new().unwrap();
        self.ok(&["export", &format!("{volume}@{tag}"), out.path().to_str().unwrap()]);
        assert!(
            std::fs::read(out.path()).unwrap() == model,
            "no acknowledged write lost"
        );
    }

    /// Runs a CLI command against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--server")
            .arg(&self.url)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs a CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a CLI command with --json that must succeed; returns the JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Runs a CLI command that must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "cairn {args:?} unexpectedly succeeded");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim().lines().count(), 1, "error is one line: {err:?}");
        err
    }

    /// An HTTP request with curl: returns (status, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
            &format!("{}{}", self.url, path),
        ]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().parse().unwrap(), body.to_string())
    }
}

fn spawn(
    data_dir: &Path,
    port: u16,
    extra: &[String],
    env: &[(String, String)],
    s3: Option<&S3Server>,
) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    if let Some(s3) = s3 {
        s3.apply(&mut cmd);
    }
    if !extra.iter().any(|a| a == "--nbd-listen") {
        cmd.args(["--nbd-listen", &format!("127.0.0.1:{}", free_port())]);
    }
    cmd.args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unused_imports)]
pub use cairn_chunker::testdata::noise;

pub fn hash_file(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap()).to_hex().to_string()
}

/// True when `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
