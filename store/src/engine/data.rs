//! Reading volumes and snapshots (NBD, HTTP) and streaming whole images
//! in and out.

use super::*;

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
    pub async fn import<R: AsyncRead + Unpin>(
        &self,
        ns: &Namespace,
        actor: &Actor,
        name: &VolumeName,
        input: &mut R,
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

    async fn import_into<R: AsyncRead + Unpin>(
        &self,
        volume: &Volume,
        input: &mut R,
        offset: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64> {
        let geometry = volume.geometry();
        let chunk = geometry.chunk_size();
        let size = volume.size();
        let step = STREAM_STEP.max(chunk);
        let mut pos = offset;
        let mut buf = vec![0u8; step];
        loop {
            // Align the first step to a chunk boundary so later steps are whole chunks.
            let want = if !pos.is_multiple_of(chunk as u64) {
                chunk - (pos % chunk as u64) as usize
            } else {
                step
            };
            let filled = read_full(input, &mut buf[..want]).await?;
            if filled == 0 {
                break;
            }
            if pos + filled as u64 > size {
                return Err(StoreError::ImportTooLarge {
                    offset,
                    length: pos + filled as u64 - offset,
                    size,
                });
            }
            let data = &buf[..filled];
            let whole = if pos.is_multiple_of(chunk as u64) {
                filled / chunk
            } else {
                0
            };
            if whole > 0 {
                let chunks = data[..whole * chunk]
                    .chunks_exact(chunk)
                    .map(<[u8]>::to_vec)
                    .collect();
                volume.write_chunks_direct(geometry.chunk_of(pos), chunks).await?;
            }
            let rest = &data[whole * chunk..];
            if !rest.is_empty() {
                volume.write(pos + (whole * chunk) as u64, rest).await?;
            }
            pos += filled as u64;
            progress(pos - offset);
            if filled < want {
                break;
            }
        }
        volume.seal().await?;
        self.backend.catalog.sync()?;
        Ok(pos - offset)
    }
}

/// Reads until `buf` is full or the input ends.
async fn read_full<R: AsyncRead + Unpin>(input: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = input
            .read(&mut buf[filled..])
            .await
            .map_err(|e| StoreError::ImportStream(e.to_string()))?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}
