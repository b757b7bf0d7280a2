//! A volume as a real block device: `nbdfuse` exposes the NBD export as a
//! file, a loop device turns the file into a block device, and the kernel's
//! ext4 mounts it. Files written through the filesystem must be in a fork
//! of a snapshot taken after unmount.
//!
//! Needs root, /dev/fuse, loop devices, nbdfuse, losetup, mkfs.ext4 and
//! mount; where any is missing the test prints why and skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<String> {
    for tool in [
        "nbdfuse",
        "losetup",
        "mkfs.ext4",
        "mount",
        "umount",
        "fusermount3",
    ] {
        if !have(tool) {
            return Some(format!("{tool} is not installed (scripts/setup.sh installs it)"));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("mounting needs root".into());
    }
    let probe = Command::new("losetup").arg("-f").output();
    match probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "no free loop device: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("losetup: {e}")),
    }
}

/// An export mounted through nbdfuse + loop + ext4; torn down in reverse
/// order on drop, also when an assertion fails.
struct Mounted {
    fuse_dir: PathBuf,
    nbdfuse: Option<Child>,
    loop_dev: Option<String>,
    mount_point: PathBuf,
    mounted: bool,
}

impl Mounted {
    fn attach(uri: &str, dir: &Path, format: bool) -> Mounted {
        let fuse_dir = dir.join("fuse");
        let mount_point = dir.join("mnt");
        std::fs::create_dir_all(&fuse_dir).unwrap();
        std::fs::create_dir_all(&mount_point).unwrap();
        let child = Command::new("nbdfuse")
            .arg(&fuse_dir)
            .arg(uri)
            .stdout(Stdio::null())
            .spawn()
            .expect("start nbdfuse");
        let mut m = Mounted {
            fuse_dir: fuse_dir.clone(),
            nbdfuse: Some(child),
            loop_dev: None,
            mount_point,
            mounted: false,
        };
        let file = fuse_dir.join("nbd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::metadata(&file).map(|md| md.len() > 0).unwrap_or(false) {
            assert!(
                Instant::now() < deadline,
                "nbdfuse did not expose {}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&file))
            .trim()
            .to_string();
        m.loop_dev = Some(dev.clone());
        if format {
            run(Command::new("mkfs.ext4").args(["-q", "-F", &dev]));
        }
        run(Command::new("mount").arg(&dev).arg(&m.mount_point));
        m.mounted = true;
        m
    }

    fn detach(&mut self) {
        if self.mounted {
            run(Command::new("umount").arg(&self.mount_point));
            self.mounted = false;
        }
        if let Some(dev) = self.loop_dev.take() {
            run(Command::new("losetup").args(["-d", &dev]));
        }
        if let Some(mut child) = self.nbdfuse.take() {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.fuse_dir).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nbdfuse did not exit after fusermount3 -u");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("umount").arg("-l").arg(&self.mount_point).status();
            if let Some(dev) = self.loop_dev.take() {
                let _ = Command::new("losetup").args(["-d", &dev]).status();
            }
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.fuse_dir)
                .status();
            if let Some(mut child) = self.nbdfuse.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        } else {
            self.detach();
        }
    }
}

#[test]
fn ext4_on_nbdfuse_loop_survives_snapshot_and_fork() {
    if let Some(reason) = missing() {
        println!("SKIPPED: real block device test: {reason}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nbd_port = free_port();
    let server = Server::start(
        &dir.path().join("data"),
        &["--nbd-listen", &format!("127.0.0.1:{nbd_port}")],
    );
    let uri = |export: &str| format!("nbd://127.0.0.1:{nbd_port}/{export}");
    server.json(&["volume", "create", "disk", "--size", "128M"]);

    // Format, mount, write files, unmount.
    let payload = cairn_chunker::testdata::noise(7, 5 << 20);
    let written_hash = blake3::hash(&payload).to_hex().to_string();
    {
        let mut m = Mounted::attach(&uri("disk"), &dir.path().join("a"), true);
        let volume = server.json(&["volume", "show", "disk"]);
        assert_eq!(volume["state"], "attached", "a mounted volume is attached");
        std::fs::create_dir(m.mount_point.join("etc")).unwrap();
        std::fs::write(m.mount_point.join("etc/hostname"), b"sandbox-7\n").unwrap();
        std::fs::write(m.mount_point.join("blob.bin"), &payload).unwrap();
        run(&mut Command::new("sync"));
        m.detach();
    }

    // Snapshot, fork, mount the fork: the files are there.
    server.json(&["snapshot", "create", "disk", "--tag", "installed"]);
    server.json(&["fork", "disk@installed", "disk-fork"]);
    let mut m = Mounted::attach(&uri("disk-fork"), &dir.path().join("b"), false);
    assert_eq!(
        std::fs::read(m.mount_point.join("etc/hostname")).unwrap(),
        b"sandbox-7\n"
    );
    let read_back = std::fs::read(m.mount_point.join("blob.bin")).unwrap();
    assert_eq!(blake3::hash(&read_back).to_hex().to_string(), written_hash);
    // The fork is writable and independent of its source.
    std::fs::write(m.mount_point.join("etc/hostname"), b"fork\n").unwrap();
    run(&mut Command::new("sync"));
    m.detach();
    let source = server.json(&["volume", "show", "disk"]);
    assert_eq!(source["state"], "ready", "unmounted volume is detached");
}
