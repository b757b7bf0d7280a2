//! Lazy hydration bookkeeping: how much of a volume's data is held locally
//! (a local store, or the memory and disk caches of a remote one), and
//! warming, which fetches the rest into the disk cache in the background.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cairn_chunker::ChunkId;
use futures::stream::StreamExt;
use parking_lot::Mutex;

pub use cairn_api_types::Hydration;

mod counts;

pub use counts::{ChangeFeed, LocalCounts};

use crate::error::Result;
use crate::objects::ObjectKind;
use crate::sealed::{Backend, SealedTree};
use crate::tree::Reachable;

/// Chunk fetches in flight while warming.
const WARM_CONCURRENCY: usize = 16;

/// Progress of one warm.
#[derive(Debug, Default)]
pub struct WarmProgress {
    /// Objects fetched so far.
    pub fetched_objects: AtomicU64,
    /// Framed bytes fetched so far.
    pub fetched_bytes: AtomicU64,
    running: AtomicBool,
    error: Mutex<Option<String>>,
}

impl WarmProgress {
    /// Whether the warm is still running.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Why it stopped early, if it did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }

    /// Adds the warm's state to a measurement.
    pub fn annotate(&self, mut h: Hydration) -> Hydration {
        h.warming = self.running();
        h.warm_error = self.error();
        h
    }
}

/// How much of a tree is local: on a local store all of it (its mapped
/// chunks counted from its leaves, nothing kept); with a disk cache from
/// the kept counts ([`LocalCounts`]).
pub(crate) async fn hydration_of(backend: &Backend, tree: SealedTree) -> Result<Hydration> {
    let objects = &backend.objects;
    let chunk = tree.geometry.chunk_size() as u64;
    if objects.disk_cache().is_none() {
        let mut total = 0u64;
        for (_, leaf) in backend.trees.leaves(tree.root, tree.level).await? {
            total += backend.trees.load(leaf, 0).await?.entries.len() as u64;
        }
        return Ok(Hydration::from_counts(total * chunk, total * chunk));
    }
    let (total, local) = backend
        .local_counts
        .counts(
            &backend.trees,
            &objects.change_feed(),
            |id| objects.is_local(id),
            tree.root,
            tree.level,
        )
        .await?;
    Ok(Hydration::from_counts(total * chunk, local * chunk))
}

/// Measures a tree by walking it: total and local bytes, and the distinct
/// chunks that are not local (what a warm fetches).
pub(crate) async fn measure(backend: &Backend, tree: SealedTree) -> Result<(Hydration, Vec<ChunkId>)> {
    let chunk = tree.geometry.chunk_size() as u64;
    let (mut total, mut local) = (0u64, 0u64);
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    backend
        .trees
        .walk(tree.root, tree.level, &mut |reached| {
            if let Reachable::Chunk { id, .. } = reached {
                total += chunk;
                if backend.objects.is_local(&id) {
                    local += chunk;
                } else if seen.insert(id) {
                    missing.push(id);
                }
            }
            true
        })
        .await?;
    Ok((Hydration::from_counts(total, local), missing))
}

/// Starts fetching `missing` (from [`measure`]) into the disk cache;
/// `progress` tracks it.
pub(crate) fn start_warm(backend: Arc<Backend>, missing: Vec<ChunkId>, progress: Arc<WarmProgress>) {
    progress.running.store(true, Ordering::Release);
    *progress.error.lock() = None;
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        if let Err(e) = warm(&backend, missing, &progress).await {
            tracing::warn!(error = %e, "warm stopped");
            *progress.error.lock() = Some(e.to_string());
        }
        tracing::info!(
            objects = progress.fetched_objects.load(Ordering::Relaxed),
            bytes = progress.fetched_bytes.load(Ordering::Relaxed),
            ms = started.elapsed().as_millis() as u64,
            "warm done"
        );
        progress.running.store(false, Ordering::Release);
    });
}

async fn warm(backend: &Backend, missing: Vec<ChunkId>, progress: &WarmProgress) -> Result<()> {
    let Some(disk) = backend.objects.disk_cache() else {
        return Ok(());
    };
    // Stop short of the budget: warming past it would only evict what was
    // warmed first.
    let budget = disk.capacity() / 10 * 9;
    let mut fetches = futures::stream::iter(missing)
        .map(|id| {
            let objects = backend.objects.clone();
            async move { objects.hydrate(ObjectKind::Chunk, &id.0).await }
        })
        .buffer_unordered(WARM_CONCURRENCY);
    while let Some(fetched) = fetches.next().await {
        if let Some(len) = fetched? {
            progress.fetched_objects.fetch_add(1, Ordering::Relaxed);
            let total = progress.fetched_bytes.fetch_add(len, Ordering::Relaxed) + len;
            if total >= budget {
                *progress.error.lock() = Some(format!(
                    "the chunk cache ({} bytes) is too small to hold the whole volume; warmed {total} bytes",
                    disk.capacity()
                ));
                break;
            }
        }
    }
    Ok(())
}
