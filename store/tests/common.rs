//! Helpers shared by the store's integration tests.
#![allow(dead_code, missing_docs)]

use std::sync::Arc;

use cairn_store::{Actor, Engine, EngineConfig, Namespace, SnapshotTag, VolumeName};

pub fn ns() -> Namespace {
    Namespace::default_ns()
}

pub fn actor() -> Actor {
    Actor("test".into())
}

pub fn vol(name: &str) -> VolumeName {
    VolumeName::new(name).unwrap()
}

pub fn tag(name: &str) -> SnapshotTag {
    SnapshotTag::new(name).unwrap()
}

/// An engine on `dir` with a file object store under it and no background sealer.
pub async fn engine(dir: &std::path::Path) -> Arc<Engine> {
    let mut config = EngineConfig::new(dir);
    config.cache_bytes = 64 << 20;
    Engine::open(config).await.unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Number of files under `dir/objects/<kind>`.
pub fn count_objects(dir: &std::path::Path, kind: &str) -> (u64, u64) {
    let mut n = 0;
    let mut bytes = 0;
    let root = dir.join("objects").join(kind);
    if let Ok(subdirs) = std::fs::read_dir(&root) {
        for sub in subdirs.flatten() {
            for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
                n += 1;
                bytes += f.metadata().unwrap().len();
            }
        }
    }
    (n, bytes)
}
