//! Object store URLs: `file:///path` (default `<data-dir>/objects`: pack
//! files, see [`crate::pack`]; `file:///path?layout=files`, or a directory
//! that already holds one file per object, keeps that older layout),
//! `memory://`, and `s3://bucket/prefix` (credentials, region and endpoint
//! from the standard `AWS_*` variables; `AWS_ENDPOINT_URL` and
//! `AWS_ALLOW_HTTP=true` for S3-compatible servers; path-style requests).

use std::path::Path;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use crate::durable::LocalDurability;
use crate::error::{Result, StoreError};
use crate::pack::{PackObjects, PackStore};

/// An opened object store.
pub struct OpenedStore {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Key prefix of cairn's objects inside it.
    pub prefix: ObjectPath,
    /// How puts are made durable (see [`crate::durable`]); `None` when
    /// they are durable when they return.
    pub local: Option<crate::durable::LocalDurability>,
}

/// Opens the object store named by `url` (or the default under `data_dir`).
pub fn open_object_store(url: Option<&str>, data_dir: &Path) -> Result<OpenedStore> {
    let default = format!(
        "file://{}",
        std::path::absolute(data_dir.join("objects"))?.display()
    );
    let text = url.unwrap_or(&default);
    let refuse = |reason: &str| StoreError::ObjectStoreUrl {
        url: text.to_string(),
        reason: reason.to_string(),
    };
    let parsed = url::Url::parse(text).map_err(|e| refuse(&e.to_string()))?;
    match parsed.scheme() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|_| refuse("not an absolute local path"))?;
            let files = match parsed.query() {
                None => PackStore::holds_loose_objects(&path),
                Some("layout=files") => true,
                Some("layout=packs") => false,
                Some(other) => {
                    return Err(refuse(&format!(
                        "unknown option {other:?}; use layout=packs or layout=files"
                    )))
                }
            };
            std::fs::create_dir_all(&path)?;
            let root = std::fs::canonicalize(&path)?;
            if files {
                let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| refuse(&e.to_string()))?;
                return Ok(OpenedStore {
                    store: Arc::new(store),
                    prefix: ObjectPath::default(),
                    local: Some(LocalDurability::Files(root)),
                });
            }
            let packs = PackStore::open(&root)?;
            Ok(OpenedStore {
                store: Arc::new(PackObjects::new(packs.clone())),
                prefix: ObjectPath::default(),
                local: Some(LocalDurability::Packs(packs)),
            })
        }
        "memory" => Ok(OpenedStore {
            store: Arc::new(InMemory::new()),
            prefix: ObjectPath::default(),
            local: None,
        }),
        "s3" => {
            let bucket = parsed
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| refuse("no bucket: write s3://BUCKET/PREFIX"))?;
            let prefix = ObjectPath::from(parsed.path().trim_matches('/'));
            Ok(OpenedStore {
                store: Arc::new(s3(bucket).map_err(|e| refuse(&e.to_string()))?),
                prefix,
                local: None,
            })
        }
        other => Err(refuse(&format!(
            "unsupported scheme {other:?}; use file://, memory:// or s3://"
        ))),
    }
}

/// An S3 client for `bucket`: the standard `AWS_*` environment, path-style
/// addressing, timeouts. Retries are the [`crate::wrap`] layer's job, so the
/// client's own are off.
fn s3(bucket: &str) -> object_store::Result<object_store::aws::AmazonS3> {
    // reqwest is built without a bundled TLS provider: install ring once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(false)
        .with_retry(object_store::RetryConfig {
            max_retries: 0,
            ..Default::default()
        })
        .with_client_options(
            object_store::ClientOptions::new()
                .with_timeout(std::time::Duration::from_secs(30))
                .with_connect_timeout(std::time::Duration::from_secs(5)),
        );
    if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
        builder = builder.with_endpoint(endpoint);
    }
    if std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v == "true" || v == "1") {
        builder = builder.with_allow_http(true);
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        builder = builder.with_region("us-east-1");
    }
    builder.build()
}
