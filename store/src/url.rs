//! Object store URLs: `file:///path` (default `<data-dir>/objects`) and
//! `memory://`.

use std::path::Path;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use crate::error::{Result, StoreError};

/// Opens the object store named by `url` (or the default under `data_dir`).
/// Returns the store and the key prefix inside it.
pub fn open_object_store(url: Option<&str>, data_dir: &Path) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
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
            Ok((Arc::new(store), ObjectPath::default()))
        }
        "memory" => Ok((Arc::new(InMemory::new()), ObjectPath::default())),
        other => Err(refuse(&format!(
            "unsupported scheme {other:?}; use file:// or memory://"
        ))),
    }
}
