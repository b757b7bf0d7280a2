//! The local store's two layouts: pack files (the default) and one file per
//! object (`file://…?layout=files`, and any directory that already holds
//! that layout). Data written in either reads back after a reopen, and a
//! directory keeps the layout it was made with.

mod common;

use cairn_store::{EngineConfig, Labels};
use common::*;

async fn write_seal_reopen_read(dir: &std::path::Path, url: Option<String>, name: &str) {
    let config = || {
        let mut config = EngineConfig::new(dir);
        config.object_store = url.clone();
        config
    };
    let data = noise(7, 3 << 20);
    {
        let engine = cairn_store::Engine::open(config()).await.unwrap();
        engine
            .create_volume(&ns(), &actor(), &vol(name), 4 << 20, None, Labels::new())
            .await
            .unwrap();
        let v = engine.volume(&ns(), &vol(name)).unwrap();
        v.write(4096, &data).await.unwrap();
        engine.seal_all().await.unwrap();
    }
    let engine = cairn_store::Engine::open(config()).await.unwrap();
    let v = engine.volume(&ns(), &vol(name)).unwrap();
    let mut back = vec![0u8; data.len()];
    v.read(4096, &mut back).await.unwrap();
    assert!(back == data, "data read back differs");
    let (chunks, _) = count_objects(&engine, "chunks").await;
    assert!(chunks >= 48, "{chunks} chunk objects");
}

#[tokio::test]
async fn packs_by_default_files_on_request_and_each_directory_keeps_its_layout() {
    let packed = tempfile::tempdir().unwrap();
    write_seal_reopen_read(packed.path(), None, "a").await;
    let objects = packed.path().join("objects");
    assert!(objects.join("pack-index").is_dir());
    assert!(!objects.join("chunks").exists(), "no per-object files");

    let loose = tempfile::tempdir().unwrap();
    let url = format!("file://{}?layout=files", loose.path().join("objects").display());
    write_seal_reopen_read(loose.path(), Some(url), "a").await;
    let objects = loose.path().join("objects");
    assert!(objects.join("chunks").is_dir(), "one file per object");
    assert!(!objects.join("pack-index").exists());
    // Opened again without the option, the directory keeps its layout.
    write_seal_reopen_read(loose.path(), None, "b").await;
    assert!(
        !objects.join("pack-index").exists(),
        "a loose store was not turned into packs"
    );

    let bad = format!("file://{}?layout=zip", loose.path().join("objects").display());
    let mut config = EngineConfig::new(loose.path());
    config.object_store = Some(bad);
    let Err(err) = cairn_store::Engine::open(config).await else {
        panic!("an unknown layout is refused");
    };
    assert!(err.to_string().contains("layout=packs or layout=files"), "{err}");
}
