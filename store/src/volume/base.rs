//! A volume forked from a pending snapshot, before that snapshot's seal.
//!
//! Forking (or cloning) must not wait for the source's dirty data to be
//! sealed. So a fork of a pending snapshot starts with a *pending base*:
//! below its own dirty layers it reads the source volume's view of the
//! snapshot (the source's sealed root and frozen generations up to the
//! snapshot's), and its record says so (`base_pending`). Before the fork's
//! first seal, or anything else that builds on its root, it *adopts* the
//! base: the source seals the snapshot's generation (if it has not yet),
//! and the fork's root becomes the snapshot's final root, grown to the
//! fork's size, in one catalog commit.
//!
//! The pending snapshot record is what a restart resolves the base from,
//! so a snapshot (or volume) with dependent forks is not deleted before
//! they adopt their bases (the engine sees to it).

use std::sync::Arc;

use cairn_chunker::{ByteRange, ChunkGeometry};
use futures::future::BoxFuture;

use super::seal::CommitLock;
use super::{View, Volume};
use crate::error::{Result, StoreError};
use crate::overlay::Hole;
use crate::tree::{levels_for, NodeId};

/// What a fork of a pending snapshot reads below its own writes.
#[derive(Clone)]
pub(crate) struct PendingBase {
    pub source: Arc<Volume>,
    /// The generation the snapshot waits for.
    pub through: u64,
    /// The snapshot's size: bytes past it read as zeros.
    pub size: u64,
}

impl PendingBase {
    fn view(&self) -> View {
        View::Through(self.through)
    }

    /// Contiguous byte ranges of `holes` as `(volume offset, buffer
    /// offset, length)`, clipped to the base's size (the rest is zeroed in
    /// `buf`).
    fn ranges(&self, geometry: ChunkGeometry, holes: &[Hole], buf: &mut [u8]) -> Vec<(u64, usize, usize)> {
        let mut ranges: Vec<(u64, usize, usize)> = Vec::new();
        for h in holes {
            let at = geometry.chunk_start(h.chunk) + h.offset_in_chunk as u64;
            let inside = (self.size.saturating_sub(at) as usize).min(h.len);
            buf[h.buf_offset + inside..h.buf_offset + h.len].fill(0);
            if inside == 0 {
                continue;
            }
            match ranges.last_mut() {
                Some((o, b, l)) if *o + *l as u64 == at && *b + *l == h.buf_offset => *l += inside,
                _ => ranges.push((at, h.buf_offset, inside)),
            }
        }
        ranges
    }

    /// Fills `holes` of `buf` from the source's view.
    pub fn read<'a>(
        &'a self,
        geometry: ChunkGeometry,
        holes: &'a [Hole],
        buf: &'a mut [u8],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for (at, b, len) in self.ranges(geometry, holes, buf) {
                self.source
                    .read_view(self.view(), at, &mut buf[b..b + len])
                    .await?;
            }
            Ok(())
        })
    }

    /// [`PendingBase::read`] from what is dirty or cached only.
    pub fn try_read(&self, geometry: ChunkGeometry, holes: &[Hole], buf: &mut [u8]) -> Option<Result<()>> {
        for (at, b, len) in self.ranges(geometry, holes, buf) {
            if let Err(e) = self.source.try_read_view(self.view(), at, &mut buf[b..b + len])? {
                return Some(Err(e));
            }
        }
        Some(Ok(()))
    }

    /// Allocation runs of `[offset, +length)` as the source's view has
    /// them (holes past the base's size); `known` overrides chunks (true =
    /// hole).
    pub fn allocation<'a>(
        &'a self,
        geometry: ChunkGeometry,
        offset: u64,
        length: u64,
        known: &'a std::collections::HashMap<u64, bool>,
    ) -> BoxFuture<'a, Result<Vec<(u64, bool)>>> {
        Box::pin(async move {
            let inside = self.size.saturating_sub(offset).min(length);
            let source = match inside {
                0 => Vec::new(),
                _ => self.source.allocation_view(self.view(), offset, inside).await?,
            };
            // Both sides are cut at the same chunk boundaries.
            let mut source = source.into_iter();
            let mut current: Option<(u64, bool)> = None;
            let mut runs: Vec<(u64, bool)> = Vec::new();
            for span in geometry.spans(ByteRange::new(offset, length)) {
                let below = if offset + (span.offset_in_range as u64) < self.size {
                    loop {
                        match current {
                            Some((left, hole)) if left > 0 => {
                                current = Some((left.saturating_sub(span.len as u64), hole));
                                break hole;
                            }
                            _ => match source.next() {
                                Some(run) => current = Some(run),
                                None => break true,
                            },
                        }
                    }
                } else {
                    true
                };
                let hole = known.get(&span.index).copied().unwrap_or(below);
                match runs.last_mut() {
                    Some((len, h)) if *h == hole => *len += span.len as u64,
                    _ => runs.push((span.len as u64, hole)),
                }
            }
            Ok(runs)
        })
    }
}

impl Volume {
    /// Gives a volume forked from a pending snapshot its base (at open or
    /// creation, before anyone reads it).
    pub(crate) fn attach_base(&self, base: PendingBase) {
        self.state.lock().base = Some(base);
    }

    /// Whether the volume has a pending base whose snapshot is sealed now
    /// (adopting it costs a commit, no seal).
    pub fn base_sealed(&self) -> bool {
        let base = self.state.lock().base.clone();
        base.is_some_and(|b| b.source.state.lock().sealed_roots.contains_key(&b.through))
    }

    /// Whether this volume reads through `source`'s pending generations.
    pub(crate) fn depends_on(&self, source: &Arc<Volume>) -> bool {
        self.state
            .lock()
            .base
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(&b.source, source))
    }

    /// The final root of generation `through`, sealing frozen generations
    /// up to it first if needed. Only generations a snapshot waited for
    /// are remembered.
    pub(crate) async fn generation_root(&self, through: u64) -> Result<NodeId> {
        if let Some(root) = self.state.lock().sealed_roots.get(&through) {
            return Ok(*root);
        }
        {
            let _seal = self.seal_lock.lock().await;
            self.seal_frozen_locked(CommitLock::Take).await?;
        }
        let st = self.state.lock();
        st.sealed_roots
            .get(&through)
            .copied()
            .ok_or_else(|| StoreError::CatalogCorrupt {
                key: format!("volume {}", st.record.name),
                reason: format!("generation {through} was sealed without a snapshot waiting for it"),
            })
    }

    /// Adopts a pending base, if the volume has one (caller holds the seal
    /// lock): the source seals the snapshot's generation, and the volume's
    /// root becomes its final root.
    pub(super) async fn adopt_base_locked(&self, commit_lock: CommitLock) -> Result<()> {
        let Some(base) = self.state.lock().base.clone() else {
            return Ok(());
        };
        // Boxed: the source's seal may adopt the source's own base.
        let root = Box::pin(base.source.generation_root(base.through)).await?;
        self.adopt_root_locked(root, base.size, commit_lock).await
    }

    /// Adopts a pending base, if any: see [`Volume::adopt_base_locked`].
    pub async fn adopt_base(&self) -> Result<()> {
        let _seal = self.seal_lock.lock().await;
        self.adopt_base_locked(CommitLock::Take).await
    }

    /// Makes `root` (a tree for `base_size` bytes) the volume's base and
    /// commits it (caller holds the seal lock). Used at open for a base
    /// whose snapshot was sealed before the fork adopted it.
    async fn adopt_root_locked(&self, root: NodeId, base_size: u64, commit_lock: CommitLock) -> Result<()> {
        // New tree nodes are not reachable until the commit below.
        let _writing = self.backend.objects.begin_write();
        let levels = |size| levels_for(self.geometry.chunk_count(size));
        let grown = self
            .backend
            .trees
            .grow(root, levels(base_size), levels(self.size()))
            .await?;
        if grown != root {
            self.backend.objects.make_durable().await?;
        }
        let _commit = self.commit_guard(commit_lock).await;
        self.commit_root(grown, None)?;
        tracing::debug!(volume = %self.state.lock().record.name, root = ?grown, "adopted the sealed base");
        Ok(())
    }

    /// [`Volume::adopt_root_locked`], taking the seal lock.
    pub(crate) async fn adopt_root(&self, root: NodeId, base_size: u64) -> Result<()> {
        let _seal = self.seal_lock.lock().await;
        self.adopt_root_locked(root, base_size, CommitLock::Take).await
    }
}
