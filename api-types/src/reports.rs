//! Reports and documents the store produces and the API returns as they
//! are: garbage collection and scrub reports, hydration, snapshot
//! references.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// What a GC run found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcReport {
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Grace period, seconds.
    pub grace_seconds: u64,
    /// Objects older than this (unix seconds) could go.
    pub cutoff_unix: u64,
    /// Unix seconds at start.
    pub started_unix: u64,
    /// Live roots walked (volumes and snapshots, before dedup of equal roots).
    pub roots: u64,
    /// Objects in the store.
    pub scanned_objects: u64,
    /// Their stored bytes.
    pub scanned_bytes: u64,
    /// Objects reachable from a root.
    pub marked_objects: u64,
    /// Their stored bytes.
    pub marked_bytes: u64,
    /// Objects deleted (or, in a dry run, that would be).
    pub reclaimed_objects: u64,
    /// Their stored bytes.
    pub reclaimed_bytes: u64,
    /// Unreachable objects kept because they are newer than the cutoff.
    pub skipped_young_objects: u64,
    /// Their stored bytes.
    pub skipped_young_bytes: u64,
    /// Existence-index entries dropped because their object is gone.
    pub stale_index_entries: u64,
    /// Bytes held by the mark set at its largest.
    pub mark_set_bytes: u64,
    /// Wall time of the mark phase, milliseconds.
    pub mark_ms: u64,
    /// Wall time of the whole run, milliseconds.
    pub duration_ms: u64,
    /// Roots published by other servers over the same bucket, marked too.
    #[serde(default)]
    pub foreign_roots: u64,
    /// Unreachable objects kept because another server over the same
    /// bucket uploaded them.
    #[serde(default)]
    pub kept_foreign_objects: u64,
}

/// A garbage collection in progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcProgress {
    /// `mark` (walking the roots), `sweep` (listing the store, deleting
    /// as it goes) or `index` (dropping index entries of lost objects).
    pub phase: String,
    /// Nothing is deleted.
    pub dry_run: bool,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
    /// Live roots to walk.
    pub roots: u64,
    /// Objects reachable so far (fingerprints in the mark set).
    pub marked_objects: u64,
    /// Objects listed so far.
    pub scanned_objects: u64,
    /// Objects planned for deletion so far (the dry run's answer).
    pub planned_objects: u64,
    /// Their stored bytes.
    pub planned_bytes: u64,
    /// Objects deleted so far.
    pub reclaimed_objects: u64,
    /// Their stored bytes.
    pub reclaimed_bytes: u64,
}

/// `GET /gc`: the run in progress, if any, and the last finished one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcStatus {
    /// The run in progress.
    pub running: Option<GcProgress>,
    /// The last run that finished.
    pub last: Option<GcReport>,
}

/// A byte range of a volume or snapshot that a bad object breaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Affected {
    /// Namespace.
    pub namespace: String,
    /// Volume name.
    pub volume: String,
    /// Snapshot tag (absent for the live volume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
}

/// One missing or corrupt object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyProblem {
    /// "chunk" or "node".
    pub kind: String,
    /// Object id (hex).
    pub id: String,
    /// "missing" or "corrupt".
    pub problem: String,
    /// What the check said.
    pub detail: String,
    /// Ranges it breaks.
    pub affected: Vec<Affected>,
}

/// What a scrub checked and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    /// Volumes and snapshots walked.
    pub targets: u64,
    /// Distinct objects fetched and checked.
    pub objects_checked: u64,
    /// Their plaintext bytes.
    pub bytes_checked: u64,
    /// Objects missing from the store.
    pub missing: u64,
    /// Objects whose frame or hash is wrong.
    pub corrupt: u64,
    /// Each bad object and the ranges it breaks.
    pub problems: Vec<VerifyProblem>,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
}

/// How much of a volume's sealed data is local.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, ToSchema)]
pub struct Hydration {
    /// Logical bytes of the volume's non-zero chunks.
    pub total_bytes: u64,
    /// The part of `total_bytes` readable without the object store.
    pub local_bytes: u64,
    /// `local_bytes / total_bytes` (1 for an empty volume).
    pub fraction: f64,
    /// A warm of this volume is running.
    pub warming: bool,
    /// Why the last warm stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_error: Option<String>,
}

/// A snapshot as another server over the same bucket imports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotRefDoc {
    /// Always [`REF_FORMAT`].
    pub format: String,
    /// Server that exported it.
    pub server: String,
    /// Volume it was taken of.
    pub volume: String,
    /// Tag.
    pub tag: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Manifest root (hex BLAKE3).
    pub root: String,
    /// RFC 3339 UTC.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// User labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}
/// One dropped stretch of a damaged write-back log (`POST /volumes/{name}/repair`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DroppedRecord {
    /// Log generation.
    pub generation: u64,
    /// Byte offset in that log.
    pub at: u64,
    /// Bytes dropped.
    pub length: u64,
    /// Why it could not be read.
    pub reason: String,
}

/// What a repair dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RepairReport {
    /// Every dropped stretch, in log order.
    pub dropped: Vec<DroppedRecord>,
    /// Their total bytes.
    pub dropped_bytes: u64,
}

impl VerifyReport {
    /// True when nothing is missing or corrupt.
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.corrupt == 0
    }
}

impl Hydration {
    /// Figures for `local_bytes` of `total_bytes` local, no warm running.
    pub fn from_counts(total_bytes: u64, local_bytes: u64) -> Self {
        Self {
            total_bytes,
            local_bytes,
            fraction: match total_bytes {
                0 => 1.0,
                t => local_bytes as f64 / t as f64,
            },
            warming: false,
            warm_error: None,
        }
    }
}
