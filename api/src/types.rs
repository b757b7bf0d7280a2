//! Request and response bodies of the REST API: defined in
//! `cairn-api-types` (shared with the CLI), built here from store records.

pub use cairn_api_types::*;
use cairn_store::{Event, SnapshotRecord, VolumeRecord, VolumeUsage};

/// The response body of a volume record and its usage.
pub fn volume_body(r: VolumeRecord, usage: VolumeUsage) -> Volume {
    Volume {
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
        damage: None,
        hydration: None,
    }
}

/// The response body of a snapshot record.
pub fn snapshot_body(s: SnapshotRecord) -> Snapshot {
    Snapshot {
        volume: s.volume.to_string(),
        tag: s.tag.to_string(),
        size: s.size,
        created_at: s.created_at,
        labels: s.labels,
        root: s.root.to_hex(),
        sealed: s.pending.is_none(),
    }
}

/// The response body of an audit event.
pub fn event_body(e: Event) -> EventBody {
    let kind = serde_json::to_value(e.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    EventBody {
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
