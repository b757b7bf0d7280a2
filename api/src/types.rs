//! Request and response bodies of the REST API (also the OpenAPI schemas).

use std::collections::BTreeMap;

use cairn_store::{Event, SnapshotRecord, VolumeRecord, VolumeUsage};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

/// A volume.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    /// RFC 1123 label, unique in the namespace.
    pub name: String,
    /// Owning namespace.
    pub namespace: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// `ready`, `attached`, `creating`, `deleting` or `rolling_back`.
    pub state: String,
    /// RFC 3339 UTC.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// RFC 3339 UTC.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Source volume of a clone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloned_from: Option<String>,
    /// Source snapshot (`VOLUME@TAG`) of a fork or clone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// True while a fork or clone of a snapshot with unsealed data reads
    /// through it (until that snapshot's seal gives it its base).
    #[serde(default)]
    pub base_pending: bool,
    /// Stored (compressed) bytes of the distinct chunks the volume references.
    pub stored_bytes: u64,
    /// The part of `stored_bytes` no other volume or snapshot references.
    pub unique_bytes: u64,
    /// How much of the data is local (shown by `GET /volumes/{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydration: Option<cairn_store::Hydration>,
}

impl Volume {
    /// Builds the response from a record and its usage.
    pub fn from_record(r: VolumeRecord, usage: VolumeUsage) -> Self {
        Self {
            name: r.name.to_string(),
            namespace: r.namespace.to_string(),
            size: r.size,
            chunk_size: r.chunk_size,
            state: r.state.as_str().to_string(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            labels: r.labels,
            cloned_from: r.cloned_from.map(|v| v.to_string()),
            from_snapshot: r.from_snapshot.map(|o| format!("{}@{}", o.volume, o.tag)),
            base_pending: r.base_pending,
            stored_bytes: usage.stored_bytes,
            unique_bytes: usage.unique_bytes,
            hydration: None,
        }
    }
}

/// A snapshot.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// Volume it was taken of.
    pub volume: String,
    /// Tag.
    pub tag: String,
    /// Volume size at snapshot time.
    pub size: u64,
    /// RFC 3339 UTC.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Manifest root hash (hex).
    pub root: String,
    /// False right after a snapshot of a volume with unsealed writes: the
    /// snapshot is readable at once and its data is sealed in the
    /// background; until then `root` is the sealed root it builds on.
    pub sealed: bool,
}

impl From<SnapshotRecord> for Snapshot {
    fn from(s: SnapshotRecord) -> Self {
        Self {
            volume: s.volume.to_string(),
            tag: s.tag.to_string(),
            size: s.size,
            created_at: s.created_at,
            labels: s.labels,
            root: s.root.to_hex(),
            sealed: s.pending.is_none(),
        }
    }
}

/// `POST /volumes`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// RFC 1123 label.
    pub name: String,
    /// Bytes, a multiple of 4096.
    pub size: u64,
    /// Power of two, 4 KiB to 4 MiB (server default if absent).
    #[serde(default)]
    pub chunk_size: Option<u64>,
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `PATCH /volumes/{name}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolume {
    /// New size (grow only).
    pub size: u64,
}

/// `POST /volumes/{name}/snapshots`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Tag (default: UTC timestamp).
    #[serde(default)]
    pub tag: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `POST /volumes/{name}/snapshots/{tag}/fork`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// New volume's name.
    pub name: String,
    /// New size (default and minimum: the snapshot's).
    #[serde(default)]
    pub size: Option<u64>,
    /// Labels the snapshot must carry with these values.
    #[serde(default)]
    pub require_labels: Option<BTreeMap<String, String>>,
}

/// `POST /volumes/{name}/clone`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// New name (default `<name>-clone-<unix-ts>`).
    #[serde(default)]
    pub name: Option<String>,
    /// New size (default and minimum: the source's).
    #[serde(default)]
    pub size: Option<u64>,
}

/// `POST /volumes/{name}/rollback`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Snapshot tag of this volume.
    pub tag: String,
}

/// `GET /volumes`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VolumeList {
    /// Volumes, by name.
    pub volumes: Vec<Volume>,
}

/// `GET .../snapshots`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    /// Snapshots.
    pub snapshots: Vec<Snapshot>,
}

/// A changed byte range.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// An audit event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventBody {
    /// Position in the log.
    pub seq: u64,
    /// RFC 3339 UTC.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    /// Namespace.
    pub namespace: String,
    /// Who did it.
    pub actor: String,
    /// create, snapshot, snapshot_delete, fork, clone, rollback, resize, delete, gc, attach, detach.
    pub kind: String,
    /// Volume concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Snapshot tag concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Lineage and figures.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<Event> for EventBody {
    fn from(e: Event) -> Self {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Self {
            seq: e.seq,
            time: e.time,
            namespace: e.namespace.to_string(),
            actor: e.actor,
            kind,
            volume: e.volume,
            tag: e.tag,
            detail: e.detail,
        }
    }
}

/// `GET /events`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// Events, oldest first.
    pub events: Vec<EventBody>,
}

/// `?keep_snapshots=`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DeleteQuery {
    /// Keep the volume's snapshots.
    #[serde(default)]
    pub keep_snapshots: Option<bool>,
}

/// `?offset=&size=` of an import.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PutDataQuery {
    /// Where to write (default 0).
    #[serde(default)]
    pub offset: Option<u64>,
    /// Size of a volume created by this request (default: body length rounded up to 4096).
    #[serde(default)]
    pub size: Option<u64>,
}

/// `?offset=&length=` of an export.
#[derive(Debug, Deserialize, IntoParams)]
pub struct GetDataQuery {
    /// First byte (default 0).
    #[serde(default)]
    pub offset: Option<u64>,
    /// Bytes (default: to the end).
    #[serde(default)]
    pub length: Option<u64>,
}

/// `?base=` of a diff.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DiffQuery {
    /// Base snapshot tag of the same volume (default: the empty disk).
    #[serde(default)]
    pub base: Option<String>,
}

/// `?volume=&since=` of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EventsQuery {
    /// Only events of this volume.
    #[serde(default)]
    pub volume: Option<String>,
    /// RFC 3339 time or event sequence number: events from then on.
    #[serde(default)]
    pub since: Option<String>,
    /// At most this many (default 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Answer of a data upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportResult {
    /// The volume after the import.
    pub volume: Volume,
    /// Bytes written.
    pub bytes: u64,
}

/// `POST /gc`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    /// Report what would be reclaimed; delete nothing.
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// Unreachable objects younger than this are kept (default 3600).
    #[serde(default)]
    pub grace_seconds: Option<u64>,
}

/// `POST /verify`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// One volume (default: every volume and snapshot of the namespace).
    #[serde(default)]
    pub volume: Option<String>,
    /// With `volume`: one of its snapshots instead of the live volume.
    #[serde(default)]
    pub tag: Option<String>,
}

/// Body of `POST /snapshots/import`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportRef {
    /// A reference from `GET /volumes/{name}/snapshots/{tag}/ref` of a
    /// server over the same bucket.
    #[serde(rename = "ref")]
    pub reference: cairn_store::shared::SnapshotRefDoc,
    /// Name of the volume to hold the snapshot here (default: the
    /// exported volume's name). It must not exist.
    #[serde(default)]
    pub volume: Option<String>,
}
