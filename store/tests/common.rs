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

#[allow(unused_imports)]
pub use cairn_chunker::testdata::noise;

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
