//! Object store URLs: `file:///path` (default `<data-dir>/objects`),
//! `memory://`, and `s3://bucket/prefix` (credentials, region and endpoint
//! from the standard `AWS_*` variables; `AWS_ENDPOINT_URL` and
//! `AWS_ALLOW_HTTP=true` for S3-compatible servers; path-style requests).

use std::path::Path;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use crate::error::{Result, StoreError};

/// An opened object store.
pub struct OpenedStore {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// Key prefix of cairn's objects inside it.
    pub prefix: ObjectPath,
    /// Its directory when it is a local filesystem (puts are not durable
    /// until synced: see [`crate::durable`]).
    pub local_root: Option<std::path::PathBuf>,
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
            std::fs::create_dir_all(&path)?;
            let store = LocalFileSystem::new_with_prefix(&path).map_err(|e| refuse(&e.to_string()))?;
            Ok(OpenedStore {
                store: Arc::new(store),
                prefix: ObjectPath::default(),
                local_root: Some(std::fs::canonicalize(&path)?),
            })
        }
        "memory" => Ok(OpenedStore {
            store: Arc::new(InMemory::new()),
            prefix: ObjectPath::default(),
            local_root: None,
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
                local_root: None,
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
