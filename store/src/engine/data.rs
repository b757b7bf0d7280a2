//! Reading volumes and snapshots (NBD, HTTP) and streaming whole images
//! in and out.

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use tokio_util::task::AbortOnDropHandle;

use self::cut::Cutter;
use super::*;
use crate::pack::Pace;
use crate::pieces::Piece;
use crate::sealed::{Ingested, Keep};

/// Bytes of whole chunks read from an import stream per step.
const IMPORT_STEP: usize = 8 << 20;
/// Import steps stored at once, each on its own task. A step's puts wait
/// for the disk while later steps compress: with 2 in flight the cores
/// idled between steps (4 GiB ext4 image: 2 -> 4 -> 8 took 7.2-7.7 s ->
/// 6.6-7.0 s -> 6.4-6.5 s; 4 MiB steps with 8 in flight, 7.0 s). Up to
/// 64 MiB of chunks in flight.
const IMPORT_STEPS_IN_FLIGHT: usize = 8;
/// Bytes of stored import steps committed at once (one barrier each).
const IMPORT_COMMIT_BYTES: usize = 64 << 20;

impl Engine {
    /// A volume, or a snapshot with `tag`, to read from.
    pub fn readable(&self, ns: &Namespace, name: &VolumeName, tag: Option<&SnapshotTag>) -> Result<Readable> {
        match tag {
            None => Ok(Readable::Volume(self.volume(ns, name)?)),
            Some(tag) => {
                let s = self.snapshot_record(ns, name, tag)?;
                let pending = match s.pending {
                    Some(through) => Some(PendingView {
                        volume: self.volume(ns, name)?,
                        through,
                    }),
                    None => None,
                };
                Ok(Readable::Snapshot {
                    tree: SealedTree::new(s.root, s.size, Self::geometry(s.chunk_size)?),
                    size: s.size,
                    pending,
                })
            }
        }
    }

    /// Reads from a volume or snapshot.
    pub async fn read(&self, source: &Readable, offset: u64, buf: &mut [u8]) -> Result<()> {
        match source {
            Readable::Volume(v) => v.read(offset, buf).await,
            Readable::Snapshot { tree, size, pending } => {
                crate::volume::check_bounds(offset, buf.len() as u64, *size)?;
                match pending {
                    Some(p) => p.volume.read_view(View::Through(p.through), offset, buf).await,
                    None => self.backend.read_tree(*tree, offset, buf).await,
                }
            }
        }
    }

    /// `[offset, +length)` of a volume or snapshot as chunk pieces
    /// ([`crate::pieces`]): clean whole chunks as their stored frames, for a
    /// reader that decodes them itself (a streamed export).
    pub async fn read_pieces(&self, source: &Readable, offset: u64, length: usize) -> Result<Vec<Piece>> {
        match source {
            Readable::Volume(v) => v.pieces_view(View::Live, offset, length).await,
            Readable::Snapshot { tree, size, pending } => {
                crate::volume::check_bounds(offset, length as u64, *size)?;
                if let Some(p) = pending {
                    return p
                        .volume
                        .pieces_view(View::Through(p.through), offset, length)
                        .await;
                }
                let parts = crate::pieces::parts(tree.geometry, offset, length, *size);
                let read: crate::pieces::ReadPlain<'_> = Box::new(move |pos, len| {
                    async move {
                        let mut buf = vec![0u8; len];
                        self.backend.read_tree(*tree, pos, &mut buf).await?;
                        Ok(Bytes::from(buf))
                    }
                    .boxed()
                });
                self.backend.assemble(Some(*tree), offset, parts, read).await
            }
        }
    }

    /// Reads from dirty data and caches only, without waiting; `None` when
    /// [`Engine::read`] is needed.
    pub fn try_read(&self, source: &Readable, offset: u64, buf: &mut [u8]) -> Option<Result<()>> {
        match source {
            Readable::Volume(v) => v.try_read(offset, buf),
            Readable::Snapshot { tree, size, pending } => {
                if crate::volume::check_bounds(offset, buf.len() as u64, *size).is_err() {
                    return None;
                }
                if let Some(p) = pending {
                    return p.volume.try_read_view(View::Through(p.through), offset, buf);
                }
                let holes = crate::overlay::Hole::all(tree.geometry, offset, buf.len());
                self.backend
                    .read_sealed_cached(*tree, &holes, buf)
                    .then_some(Ok(()))
            }
        }
    }

    /// Allocation runs `(bytes, hole)` of a volume or snapshot range.
    pub async fn allocation(&self, source: &Readable, offset: u64, length: u64) -> Result<Vec<(u64, bool)>> {
        match source {
            Readable::Volume(v) => v.allocation(offset, length).await,
            Readable::Snapshot { tree, size, pending } => {
                crate::volume::check_bounds(offset, length, *size)?;
                match pending {
                    Some(p) => {
                        p.volume
                            .allocation_view(View::Through(p.through), offset, length)
                            .await
                    }
                    None => {
                        self.backend
                            .allocation(*tree, offset, length, &HashMap::new())
                            .await
                    }
                }
            }
        }
    }

    /// Streams `[offset, +length)` of a volume or snapshot into `out`.
    /// Returns the bytes written.
    pub async fn export<W: AsyncWrite + Unpin>(
        &self,
        source: &Readable,
        offset: u64,
        length: u64,
        out: &mut W,
    ) -> Result<u64> {
        let mut buf = vec![0u8; STREAM_STEP];
        let mut done = 0u64;
        while done < length {
            let n = (length - done).min(STREAM_STEP as u64) as usize;
            self.read(source, offset + done, &mut buf[..n]).await?;
            out.write_all(&buf[..n]).await?;
            done += n as u64;
        }
        out.flush().await?;
        Ok(done)
    }

    /// Streams a raw image into a volume at `offset`. When the volume does
    /// not exist it is created with `size` (required then). Whole chunks go
    /// straight to the object store; partial ones through the journal. The
    /// data is sealed and durable on return. An input longer than the
    /// volume is refused with [`StoreError::ImportTooLarge`]; a volume
    /// created by a failed import is removed again.
    #[allow(clippy::too_many_arguments)]
    pub async fn import<S: Stream<Item = std::io::Result<Bytes>> + Unpin>(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
        input: S,
        size: Option<u64>,
        offset: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(VolumeRecord, u64, bool)> {
        let created = match self.volume(ns, name) {
            Ok(_) => false,
            Err(StoreError::VolumeNotFound { .. }) => {
                let size = size.ok_or_else(|| {
                    StoreError::InvalidSize("a size is needed to create a volume by import".into())
                })?;
                self.create_volume(ns, actor, name, size, None, Labels::new())
                    .await?;
                true
            }
            Err(e) => return Err(e),
        };
        let volume = self.volume(ns, name)?;
        match self.import_into(&volume, input, offset, progress).await {
            Ok(n) => Ok((volume.record(), n, created)),
            Err(e) => {
                if created {
                    let _ = self.delete_volume(ns, actor, name, false).await;
                }
                Err(e)
            }
        }
    }

    /// Streams the input into the volume as a pipeline: the input is read
    /// in steps of whole chunks while earlier steps are stored (hashed,
    /// compressed and put, each step on its own task) and stored steps are
    /// committed in order, a batch at a time, one barrier per commit. A
    /// partial chunk at either end goes through the journal.
    async fn import_into<S: Stream<Item = std::io::Result<Bytes>> + Unpin>(
        &self,
        volume: &Volume,
        input: S,
        offset: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64> {
        let (steps, received) = tokio::sync::mpsc::channel(1);
        let read = read_import(volume, Cutter::new(input), offset, steps, progress);
        let store = self.store_import(volume, received);
        let (read, ()) = tokio::try_join!(read, store)?;
        volume.seal().await?;
        self.backend.catalog.sync()?;
        Ok(read)
    }

    /// The storing and committing side of [`Engine::import_into`].
    async fn store_import(
        &self,
        volume: &Volume,
        steps: tokio::sync::mpsc::Receiver<ImportStep>,
    ) -> Result<()> {
        let steps = futures::stream::unfold(steps, |mut rx| async { rx.recv().await.map(|s| (s, rx)) });
        let stored = steps
            .map(|(first, chunks): ImportStep| {
                let backend = self.backend.clone();
                // Held from before the puts until their commit: GC keeps
                // what this step stores.
                let session = backend.objects.begin_write();
                AbortOnDropHandle::new(tokio::spawn(async move {
                    let chunks = (first..).zip(chunks).collect();
                    backend
                        .ingest(chunks, Keep::Uncached, Pace::Paced)
                        .await
                        .map(|i| (i, session))
                }))
            })
            .buffered(IMPORT_STEPS_IN_FLIGHT);
        let mut stored = std::pin::pin!(stored);
        let chunk = volume.geometry().chunk_size();
        let (mut batch, mut sessions) = (Ingested::default(), Vec::new());
        while let Some(step) = stored.next().await {
            let (ingested, session) = step.expect("storing an import step does not panic")?;
            batch.extend(ingested);
            sessions.push(session);
            if batch.updates.len() * chunk >= IMPORT_COMMIT_BYTES {
                volume.commit_direct(&batch).await?;
                (batch, sessions) = (Ingested::default(), Vec::new());
            }
        }
        volume.commit_direct(&batch).await?;
        drop(sessions);
        Ok(())
    }
}

/// The first chunk of a step of an import and its whole chunks.
type ImportStep = (u64, Vec<Bytes>);

/// The reading side of [`Engine::import_into`]: whole chunks go to `steps`
/// (slices of the input's frames where they can be), a partial chunk at
/// either end is written through the journal. Returns the bytes read.
async fn read_import<S: Stream<Item = std::io::Result<Bytes>> + Unpin>(
    volume: &Volume,
    mut input: Cutter<S>,
    offset: u64,
    steps: tokio::sync::mpsc::Sender<ImportStep>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64> {
    let geometry = volume.geometry();
    let chunk = geometry.chunk_size();
    let size = volume.size();
    let too_large = |end: u64| StoreError::ImportTooLarge {
        offset,
        length: end - offset,
        size,
    };
    let mut pos = offset;
    if !pos.is_multiple_of(chunk as u64) {
        let want = chunk - (pos % chunk as u64) as usize;
        let head = input.take(want).await?;
        let filled = head.len();
        if pos + filled as u64 > size {
            return Err(too_large(pos + filled as u64));
        }
        volume.write(pos, &head[..filled]).await?;
        pos += filled as u64;
        progress(pos - offset);
        if filled < want {
            return Ok(pos - offset);
        }
    }
    loop {
        let mut chunks = Vec::with_capacity(IMPORT_STEP / chunk);
        let mut tail = None;
        while chunks.len() < (IMPORT_STEP / chunk).max(1) {
            let buf = input.take(chunk).await?;
            let filled = buf.len();
            let end = pos + ((chunks.len() * chunk) + filled) as u64;
            if end > size {
                return Err(too_large(end));
            }
            if filled < chunk {
                tail = Some(buf);
                break;
            }
            chunks.push(buf);
        }
        let whole = (chunks.len() * chunk) as u64;
        if !chunks.is_empty() {
            volume.check_store().await?;
            let step = (geometry.chunk_of(pos), chunks);
            if steps.send(step).await.is_err() {
                // The storing side stopped; its error is the one returned.
                return Ok(pos - offset);
            }
        }
        pos += whole;
        if let Some(tail) = tail {
            if !tail.is_empty() {
                volume.write(pos, &tail).await?;
                pos += tail.len() as u64;
            }
            progress(pos - offset);
            return Ok(pos - offset);
        }
        progress(pos - offset);
    }
}
