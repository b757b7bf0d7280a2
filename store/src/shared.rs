//! Several servers over one bucket.
//!
//! Chunk and node objects are immutable and named by their hash, so any
//! server can read any tree whose root it knows. A snapshot moves between
//! servers as a **snapshot reference** ([`SnapshotRefDoc`]: root hash,
//! size, chunk size, labels), exported by one server's catalog and
//! imported into another's; the importing server then forks it and reads
//! it like its own, fetching chunks on first touch.
//!
//! GC must then see every server's roots. Each server that took part in
//! such an exchange publishes its live roots as `<prefix>/servers/<id>/roots.json`
//! (at export and import, before each GC, and every 30 s when they changed),
//! and from then on its GC:
//! - marks from its own roots and from every other server's published ones;
//! - deletes only objects its own existence index records (its uploads and
//!   dedup claims), never another server's, whose writes in progress it
//!   cannot see.
//!
//! An importing server publishes the imported root before it checks and
//! records it, so the exporting server's GC marks it from then on. Known
//! limit: a server that uploads again (content addressing makes it the same
//! object) an unreferenced object of another server while that server's
//! sweep has listed but not yet deleted it can lose the object; one GC
//! owner per bucket with a grace longer than the publication interval
//! avoids it.

use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use cairn_api_types::SnapshotRefDoc;

use crate::catalog::Catalog;
use crate::error::{Result, StoreError};
use crate::objects::ObjectLayer;
use crate::records::SnapshotRecord;
use crate::tree::NodeId;

/// Format name of a snapshot reference.
pub const REF_FORMAT: &str = "cairn.snapshot-ref.v1";
const META_SERVER_ID: &str = "server_id";
const META_SHARED: &str = "shared_bucket";

/// The reference of a snapshot record.
pub fn ref_of(record: &SnapshotRecord, server: &str) -> SnapshotRefDoc {
    SnapshotRefDoc {
        format: REF_FORMAT.into(),
        server: server.into(),
        volume: record.volume.to_string(),
        tag: record.tag.to_string(),
        size: record.size,
        chunk_size: record.chunk_size,
        root: record.root.to_hex(),
        created_at: record.created_at,
        labels: record.labels.clone(),
    }
}

/// The root id of a reference, checked.
pub fn ref_root(doc: &SnapshotRefDoc) -> Result<NodeId> {
    if doc.format != REF_FORMAT {
        return Err(StoreError::InvalidRef(format!(
            "format {:?} is not {REF_FORMAT:?}",
            doc.format
        )));
    }
    doc.root
        .parse()
        .map_err(|_| StoreError::InvalidRef(format!("root {:?} is not 64 hex digits", doc.root)))
}

#[derive(Serialize, Deserialize)]
struct RootsDoc {
    server: String,
    published_unix: u64,
    /// (root hex, level).
    roots: Vec<(String, u8)>,
}

/// This server's identity and published roots.
#[derive(Debug)]
pub struct SharedBucket {
    server_id: String,
    active: AtomicBool,
    last_published: Mutex<Option<blake3::Hash>>,
}

impl SharedBucket {
    /// Loads (or makes) this server's id from the catalog.
    pub fn open(catalog: &Catalog, data_dir: &std::path::Path) -> Result<Self> {
        let server_id = match catalog.meta(META_SERVER_ID)? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let mut seed = blake3::Hasher::new();
                seed.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
                seed.update(&std::process::id().to_le_bytes());
                seed.update(data_dir.as_os_str().as_encoded_bytes());
                let id = seed.finalize().to_hex()[..16].to_string();
                catalog.put_meta(META_SERVER_ID, id.as_bytes())?;
                id
            }
        };
        Ok(Self {
            server_id,
            active: AtomicBool::new(catalog.meta(META_SHARED)?.is_some()),
            last_published: Mutex::new(None),
        })
    }

    /// This server's id in the bucket.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Whether this server has exchanged snapshots over the bucket.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    fn doc_path(objects: &ObjectLayer, server: &str) -> Path {
        objects
            .prefix()
            .clone()
            .join("servers")
            .join(server)
            .join("roots.json")
    }

    /// Publishes this server's live roots (marking it as sharing the
    /// bucket from now on); skipped when unchanged since the last time.
    pub async fn publish(
        &self,
        catalog: &Catalog,
        objects: &ObjectLayer,
        roots: &[(NodeId, u8)],
    ) -> Result<()> {
        if !self.active.swap(true, Ordering::AcqRel) {
            catalog.put_meta(META_SHARED, b"1")?;
        }
        let mut listed: Vec<(String, u8)> = roots.iter().map(|(r, l)| (r.to_hex(), *l)).collect();
        listed.sort();
        listed.dedup();
        let fingerprint = blake3::hash(&serde_json::to_vec(&listed).expect("roots serialise"));
        if *self.last_published.lock() == Some(fingerprint) {
            return Ok(());
        }
        let doc = RootsDoc {
            server: self.server_id.clone(),
            published_unix: OffsetDateTime::now_utc().unix_timestamp().max(0) as u64,
            roots: listed,
        };
        let body = serde_json::to_vec(&doc).expect("roots serialise");
        objects
            .store()
            .put(&Self::doc_path(objects, &self.server_id), PutPayload::from(body))
            .await?;
        *self.last_published.lock() = Some(fingerprint);
        tracing::debug!(roots = doc.roots.len(), "published live roots to the bucket");
        Ok(())
    }

    /// Whether any server (this one included) publishes roots in the bucket,
    /// and the roots published by the others.
    pub async fn foreign_roots(&self, objects: &ObjectLayer) -> Result<(bool, Vec<(NodeId, u8)>)> {
        let base = objects.prefix().clone().join("servers");
        let mut listing = objects.store().list(Some(&base));
        let mut any = self.active();
        let mut roots = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            any = true;
            if meta.location == Self::doc_path(objects, &self.server_id) {
                continue;
            }
            let body = objects.store().get(&meta.location).await?.bytes().await?;
            let doc: RootsDoc = serde_json::from_slice(&body).map_err(|e| StoreError::RootsDocCorrupt {
                key: meta.location.to_string(),
                reason: e.to_string(),
            })?;
            for (hex_root, level) in doc.roots {
                if let Ok(id) = hex_root.parse::<NodeId>() {
                    roots.push((id, level));
                }
            }
        }
        Ok((any, roots))
    }
}
