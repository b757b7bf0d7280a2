//! cairn's storage engine.
//!
//! - [`objects`]: content-addressed chunk and node objects in an `object_store`
//! - [`tree`]: the manifest, a content-addressed radix tree of chunk ids
//! - [`catalog`]: volumes, snapshots, events, journal and existence index in RocksDB
//! - [`overlay`] and [`journal`]: the write-back layer of acknowledged writes
//! - [`sealed`]: what volumes share, and reads of sealed trees
//! - [`volume`]: one open volume (read, write, flush; generations, seal)
//! - [`engine`]: every user-visible operation, for the API and NBD server
//! - [`gc`] and [`verify`]: space reclamation and scrubbing
//!
//! This crate knows nothing of HTTP or NBD.

mod behind;
pub mod cache;
pub mod catalog;
pub mod disk_cache;
pub mod durable;
pub mod engine;
pub mod error;
pub mod gc;
mod gradual;
pub mod hydrate;
pub mod journal;
pub mod names;
pub mod objects;
pub mod overlay;
pub mod pack;
pub mod pieces;
pub mod readahead;
pub mod records;
pub mod sealed;
pub mod shared;
mod slab;
mod sweep_gate;
pub mod tree;
pub mod url;
pub mod usage;
pub mod verify;
pub mod volume;
pub mod wrap;

pub use engine::SnapshotLease;
pub use engine::{Actor, Engine, EngineConfig, PendingView, Readable};
pub use error::{Result, StoreError};
pub use gc::{GcOptions, GcReport};
pub use hydrate::Hydration;
pub use names::{Namespace, SnapshotRef, SnapshotTag, VolumeName};
pub use pieces::Piece;
pub use records::{Event, EventKind, Labels, SnapshotRecord, VolumeRecord, VolumeState};
pub use tree::NodeId;
pub use usage::{NamespaceUsage, Usage, VolumeUsage};
pub use verify::{VerifyProblem, VerifyReport};
pub use volume::{View, Volume};
