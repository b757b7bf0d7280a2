//! The catalog's records: what cairn knows about volumes, snapshots and the
//! audit log. These are also the shapes the API returns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::names::{Namespace, SnapshotTag, VolumeName};
use crate::tree::NodeId;

/// Labels: free-form `key=value` pairs on volumes and snapshots.
pub type Labels = BTreeMap<String, String>;

/// Lifecycle state of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    /// Idle and usable.
    Ready,
    /// An NBD client has it open read-write.
    Attached,
    /// Being created.
    Creating,
    /// Being deleted.
    Deleting,
    /// Contents being reset to a snapshot.
    RollingBack,
}

impl VolumeState {
    /// True for the passing states that forbid clone, fork, rollback and delete.
    pub fn is_transitional(&self) -> bool {
        matches!(
            self,
            VolumeState::Creating | VolumeState::Deleting | VolumeState::RollingBack
        )
    }

    /// The state's wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            VolumeState::Ready => "ready",
            VolumeState::Attached => "attached",
            VolumeState::Creating => "creating",
            VolumeState::Deleting => "deleting",
            VolumeState::RollingBack => "rolling_back",
        }
    }
}

/// A snapshot a volume descends from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotOrigin {
    /// Source volume.
    pub volume: VolumeName,
    /// Source tag.
    pub tag: SnapshotTag,
}

/// A volume as the catalog stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Internal id: keys the write-back journal, never reused.
    pub id: u64,
    /// Owning namespace.
    pub namespace: Namespace,
    /// Name, unique in the namespace.
    pub name: VolumeName,
    /// Logical size in bytes (a multiple of 4096).
    pub size: u64,
    /// Chunk size in bytes (a power of two).
    pub chunk_size: u64,
    /// Root of the sealed manifest tree.
    pub root: NodeId,
    /// Lifecycle state.
    pub state: VolumeState,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change of metadata or sealed contents.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// User labels.
    #[serde(default)]
    pub labels: Labels,
    /// The volume this one was cloned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloned_from: Option<VolumeName>,
    /// The snapshot this one was forked or cloned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<SnapshotOrigin>,
    /// Write-back journal generations below this one are sealed into
    /// `root` (or were discarded): never replayed.
    #[serde(default)]
    pub journal_floor: u64,
    /// The volume was forked from `from_snapshot` while that snapshot was
    /// pending: until its seal, the volume reads below its own writes from
    /// the snapshot's view, and `root` (the snapshot's sealed root at the
    /// fork) is not yet its base. Cleared when the base is adopted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base_pending: bool,
}

/// An immutable snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Owning namespace.
    pub namespace: Namespace,
    /// Volume it was taken of.
    pub volume: VolumeName,
    /// Tag, unique per volume.
    pub tag: SnapshotTag,
    /// Volume size at snapshot time.
    pub size: u64,
    /// Chunk size of the volume.
    pub chunk_size: u64,
    /// Frozen manifest root.
    pub root: NodeId,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// User labels (e.g. a kernel hash a fork may require).
    #[serde(default)]
    pub labels: Labels,
    /// While its volume's dirty data is not yet sealed: the generation up
    /// to which it holds the volume's writes (`root` is then the sealed
    /// root it builds on). The seal of that generation sets the final root
    /// and clears this in the same catalog batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
}

/// What an audit event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Volume created (empty or by import).
    Create,
    /// Snapshot taken.
    Snapshot,
    /// Snapshot deleted.
    SnapshotDelete,
    /// Volume forked from a snapshot.
    Fork,
    /// Volume cloned (snapshot + fork).
    Clone,
    /// Volume rolled back to a snapshot.
    Rollback,
    /// Volume grown.
    Resize,
    /// Volume deleted.
    Delete,
    /// Garbage collection ran.
    Gc,
    /// NBD client attached.
    Attach,
    /// NBD client detached.
    Detach,
    /// A snapshot was imported from another server's reference.
    ImportRef,
    /// A volume's write-back log was found damaged at start: quarantined.
    Damaged,
    /// A damaged volume was repaired (its unreadable records dropped).
    Repair,
}

/// One entry of the append-only audit log. Events outlive what they describe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, increasing.
    pub seq: u64,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Namespace it happened in.
    pub namespace: Namespace,
    /// Who did it (the token's namespace, or "system").
    pub actor: String,
    /// What happened.
    pub kind: EventKind,
    /// The volume concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The snapshot tag concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Lineage and figures (source, sizes, counts).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// Current UTC time truncated to microseconds (what RFC 3339 round-trips).
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .expect("valid nanosecond")
}

/// A moment that threads can move forward and read without a lock: the
/// time since it was last marked (or created).
#[derive(Debug)]
pub struct Stopwatch {
    origin: std::time::Instant,
    /// Milliseconds from `origin` to the last mark.
    marked_ms: std::sync::atomic::AtomicU64,
}

impl Default for Stopwatch {
    fn default() -> Self {
        Self {
            origin: std::time::Instant::now(),
            marked_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Stopwatch {
    /// Marks now.
    pub fn mark(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.marked_ms.fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since the last mark.
    pub fn elapsed(&self) -> std::time::Duration {
        let marked = self.marked_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.origin
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(marked))
    }
}
