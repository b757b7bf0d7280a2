//! The store's error type: what went wrong, in the caller's terms.

use cairn_chunker::{ChunkId, FrameError};

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A volume name, snapshot tag or namespace breaks the naming rule.
    #[error("invalid {kind} {name:?}: {rule}")]
    InvalidName {
        /// "volume name", "snapshot tag" or "namespace".
        kind: &'static str,
        /// The offending text.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A size or chunk size is not acceptable.
    #[error("invalid size: {0}")]
    InvalidSize(String),
    /// No such volume.
    #[error("volume {name:?} not found")]
    VolumeNotFound {
        /// Volume name.
        name: String,
    },
    /// No such snapshot.
    #[error("snapshot {volume}@{tag} not found")]
    SnapshotNotFound {
        /// Volume name.
        volume: String,
        /// Snapshot tag.
        tag: String,
    },
    /// A volume of that name exists already.
    #[error("volume {name:?} already exists")]
    VolumeExists {
        /// Volume name.
        name: String,
    },
    /// A snapshot of that tag exists already.
    #[error("snapshot {volume}@{tag} already exists")]
    SnapshotExists {
        /// Volume name.
        volume: String,
        /// Snapshot tag.
        tag: String,
    },
    /// The volume's state forbids the operation.
    #[error("volume {name:?} is {state}; {operation} is not allowed in that state")]
    WrongState {
        /// Volume name.
        name: String,
        /// Its current state.
        state: String,
        /// What was attempted.
        operation: &'static str,
    },
    /// A write-back log is damaged before its end (not a torn append).
    #[error("write-back log damaged: {reason}")]
    JournalDamaged {
        /// Byte offset of the damaged record in its log.
        at: u64,
        /// What is wrong.
        reason: String,
    },
    /// The volume's write-back log is damaged: it serves nothing until
    /// repaired (`cairn volume repair`).
    #[error("volume {name:?} is damaged ({reason}); run `cairn volume repair {name}` to bring it back")]
    VolumeDamaged {
        /// Volume name.
        name: String,
        /// The damage found when the server started.
        reason: String,
    },
    /// A snapshot being read (an open read-only NBD export) cannot be deleted.
    #[error("snapshot {snapshot} is open read-only by {readers} NBD client(s); it can be deleted once they disconnect")]
    SnapshotInUse {
        /// `VOLUME@TAG`.
        snapshot: String,
        /// Leases held.
        readers: usize,
    },
    /// A resize, fork or clone asked for less than the source size.
    #[error("size {requested} is smaller than the source size {source_size}; volumes only grow")]
    TooSmall {
        /// Requested size.
        requested: u64,
        /// Size of the source.
        source_size: u64,
    },
    /// A fork's `require_labels` does not match the snapshot's labels.
    #[error("snapshot label {key:?} is {}, required {expected:?}", actual.as_deref().map(|a| format!("{a:?}")).unwrap_or_else(|| "absent".into()))]
    LabelMismatch {
        /// Label key.
        key: String,
        /// Required value.
        expected: String,
        /// Value on the snapshot (None when absent).
        actual: Option<String>,
    },
    /// I/O outside the volume.
    #[error("range {offset}+{length} is outside the volume (size {size})")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        length: u64,
        /// Volume size.
        size: u64,
    },
    /// An import carries more bytes than the volume holds.
    #[error("import of at least {length} bytes at offset {offset} exceeds volume size {size}")]
    ImportTooLarge {
        /// Import offset.
        offset: u64,
        /// Bytes seen so far.
        length: u64,
        /// Volume size.
        size: u64,
    },
    /// A write to a read-only snapshot.
    #[error("{0} is read-only")]
    ReadOnly(String),
    /// An object the manifest refers to is not in the object store.
    #[error("object {key} is missing from the object store")]
    ObjectMissing {
        /// Object key.
        key: String,
    },
    /// A stored chunk failed its crc or hash check.
    #[error("chunk {id} is corrupt: {source}")]
    ChunkCorrupt {
        /// The chunk's id.
        id: ChunkId,
        /// What the check found.
        source: FrameError,
    },
    /// A stored manifest node failed its checks.
    #[error("manifest node {id} is corrupt: {reason}")]
    NodeCorrupt {
        /// Node id (hex).
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// The object store failed (unreachable, refused, timed out).
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// The object store URL is not usable.
    #[error("object store URL {url:?}: {reason}")]
    ObjectStoreUrl {
        /// The URL given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The local catalog failed.
    #[error("catalog: {0}")]
    Catalog(#[from] rocksdb::Error),
    /// A catalog record could not be decoded.
    #[error("catalog record {key:?} is corrupt: {reason}")]
    CatalogCorrupt {
        /// Record key.
        key: String,
        /// Decoding error.
        reason: String,
    },
    /// Local file I/O failed.
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Input stream failed during import.
    #[error("import stream: {0}")]
    ImportStream(String),
    /// The write-back backlog is at its limit and the object store does not
    /// take it (the last seal failed on it, or it answers nothing).
    #[error("write-back backlog full: {held} unsealed bytes, limit {limit} and the object store is unreachable; retry when it drains")]
    BacklogFull {
        /// Unsealed bytes held.
        held: usize,
        /// The backlog limit.
        limit: usize,
    },
    /// The object store is unreachable (the last seal failed on it), so a
    /// write that must go straight to it is refused.
    #[error("the object store is unreachable (the last seal failed on it); retry when it is back")]
    StoreDown,
    /// A snapshot reference could not be used.
    #[error("invalid snapshot reference: {0}")]
    InvalidRef(String),
    /// A snapshot reference names a root this server's object store lacks.
    #[error("the object store holds no manifest root {root}: is this server on the bucket and prefix of the exporting one?")]
    RefRootMissing {
        /// Root hash (hex).
        root: String,
    },
    /// Another server's published roots could not be read.
    #[error("roots document {key} is corrupt: {reason}")]
    RootsDocCorrupt {
        /// Object key.
        key: String,
        /// Decoding error.
        reason: String,
    },
    /// Another garbage collection is running; one runs at a time.
    #[error("a garbage collection is already running; try again when it ends")]
    GcRunning,
}

impl From<cairn_chunker::GeometryError> for StoreError {
    fn from(e: cairn_chunker::GeometryError) -> Self {
        StoreError::InvalidSize(e.to_string())
    }
}

impl StoreError {
    /// The POSIX errno a block-device client (NBD) should see.
    pub fn errno(&self) -> u32 {
        match self {
            StoreError::OutOfRange { .. }
            | StoreError::InvalidSize(_)
            | StoreError::InvalidName { .. }
            | StoreError::InvalidRef(_) => 22,
            StoreError::ReadOnly(_) | StoreError::WrongState { .. } | StoreError::SnapshotInUse { .. } => 1,
            StoreError::Io(e) if e.raw_os_error() == Some(28) => 28,
            StoreError::ImportTooLarge { .. } | StoreError::BacklogFull { .. } => 28,
            _ => 5,
        }
    }

    /// True when the error says the data (not the request) is bad or gone:
    /// the caller should answer with an I/O error for that range.
    pub fn is_data_error(&self) -> bool {
        matches!(
            self,
            StoreError::ObjectMissing { .. }
                | StoreError::ChunkCorrupt { .. }
                | StoreError::NodeCorrupt { .. }
        )
    }
}
