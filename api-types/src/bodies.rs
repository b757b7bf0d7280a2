//! Request and response bodies of the REST API (also the OpenAPI schemas).

use std::collections::BTreeMap;

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
    /// `ready`, `attached`, `creating`, `deleting`, `rolling_back`, or
    /// `damaged` (see `damage`).
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
    /// Why the volume is `damaged` (its write-back log failed its checks
    /// when the server started); `cairn volume repair` brings it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damage: Option<String>,
    /// How much of the data is local (shown by `GET /volumes/{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydration: Option<crate::Hydration>,
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

/// A run of a volume's or snapshot's address space: data, or a hole that
/// reads as zeros (`GET …/map`).
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct MapExtent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// True when the run reads as zeros without stored data behind it.
    pub zero: bool,
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
    /// Only the last this many of the matching events (after `since`).
    #[serde(default)]
    pub tail: Option<usize>,
}

/// `GET /usage`: space figures of the caller's namespace.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SpaceUsage {
    /// The namespace.
    pub namespace: String,
    /// Volumes in it.
    pub volume_count: u64,
    /// Snapshots in it.
    pub snapshot_count: u64,
    /// Bytes its volumes and snapshots would take as full copies
    /// (referenced non-zero chunks × chunk size, counted per owner).
    pub logical_bytes: u64,
    /// Stored (compressed) bytes of the distinct chunks they reference.
    pub stored_bytes: u64,
    /// `logical_bytes - stored_bytes` (0 when negative).
    pub saved_bytes: u64,
    /// `logical_bytes / stored_bytes` (1 when nothing is stored).
    pub dedup_ratio: f64,
    /// The last garbage collection's report, if one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gc: Option<crate::GcReport>,
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
    pub reference: crate::SnapshotRefDoc,
    /// Name of the volume to hold the snapshot here (default: the
    /// exported volume's name). It must not exist.
    #[serde(default)]
    pub volume: Option<String>,
}
