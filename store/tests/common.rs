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

/// [`engine`] with a new volume `v` of `size` bytes in 16 KiB chunks.
pub async fn engine_with_v(dir: &std::path::Path, size: u64) -> (Arc<Engine>, Arc<cairn_store::Volume>) {
    let engine = engine(dir).await;
    engine
        .create_volume(
            &ns(),
            &actor(),
            &vol("v"),
            size,
            Some(16384),
            cairn_store::Labels::new(),
        )
        .await
        .unwrap();
    let v = engine.volume(&ns(), &vol("v")).unwrap();
    (engine, v)
}

#[allow(unused_imports)]
pub use cairn_chunker::testdata::noise;

/// Number and bytes of the objects of `kind` ("chunks", "nodes") in the
/// engine's object store, whatever its layout.
pub async fn count_objects(engine: &Engine, kind: &str) -> (u64, u64) {
    use futures::StreamExt;
    let prefix = object_store::path::Path::from(kind);
    let mut listing = engine.objects().store().list(Some(&prefix));
    let (mut n, mut bytes) = (0, 0);
    while let Some(meta) = listing.next().await {
        n += 1;
        bytes += meta.unwrap().size;
    }
    (n, bytes)
}
