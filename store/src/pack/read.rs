//! Reads, one by one or in batches.
//!
//! A batch (the queue of [`super::PackObjects`]: an export, a read-ahead,
//! many readers at once) is sorted by place, and records that lie close
//! together in one pack are read with one `pread`. Chunks written together
//! lie together (an import, a sequential write, a seal batch), and since
//! long runs are written around the page cache ([`super::direct`]) a read
//! of them often goes to the disk: one read of a few MiB there costs about
//! what one of a single record does.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use object_store::GetRange;

use super::{direct, Got, Location, PackStore};
use crate::error::Result;

/// Records at most this far apart are read together (the bytes between
/// are read and dropped).
const GAP: u64 = 16 << 10;
/// At most this many bytes per read (the size the read buffer grows to).
const SPAN: u64 = 2 << 20;

/// One record of a batch to read: where, and for which request.
struct Wanted {
    request: usize,
    loc: Location,
    /// The part of the object asked for.
    range: Range<u64>,
    file: Arc<File>,
}

impl Wanted {
    /// The bytes of the pack to read.
    fn span(&self) -> Range<u64> {
        self.loc.offset + self.range.start..self.loc.offset + self.range.end
    }
}

/// The part of an object of `len` bytes that `range` asks for.
fn resolve(range: Option<&GetRange>, len: u32) -> Result<Range<u64>> {
    match range {
        None => Ok(0..u64::from(len)),
        Some(r) => Ok(r
            .as_range(u64::from(len))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?),
    }
}

/// What one `pread` of a batch read.
enum Read {
    /// A lone record's bytes.
    Own(Vec<u8>),
    /// Where in the read buffer a run of records (and the bytes between
    /// them) is.
    Run(Range<usize>),
}

impl PackStore {
    /// Reads `span` of `first`'s pack into `buf`: directly from
    /// [`direct::DIRECT_MIN`] bytes on where the filesystem allows it.
    /// Returns where in `buf` the span is.
    fn read_run(
        &self,
        buf: &mut direct::Aligned,
        first: &Wanted,
        span: Range<u64>,
    ) -> std::io::Result<Range<usize>> {
        let long =
            span.end - span.start >= direct::DIRECT_MIN && !self.direct_refused.load(Ordering::Relaxed);
        // Opened per run: a handle per pack would be kept for every pack.
        if let Some(handle) = long
            .then(|| direct::open(&super::pack_path(&self.dir, first.loc.pack), false))
            .flatten()
        {
            match buf.read(&handle, span.clone(), true) {
                Err(e) if self.refuses_direct(&e) => {}
                read => return read,
            }
        }
        buf.read(&first.file, span, false)
    }

    /// Reads `range` of `key` (the whole object when `None`; blocking) with
    /// one index read; `None` when there is no such object.
    #[cfg(test)]
    pub(super) fn get(&self, key: &str, range: Option<&GetRange>) -> Result<Option<Got>> {
        self.get_many(&[(key, range)]).pop().expect("one answer per read")
    }

    /// Reads `key` whole (blocking) to recover it after a restart: its pack
    /// counts as unsynced again, so the next [`PackStore::sync`] makes it
    /// durable. `None` when there is no such object.
    pub(crate) fn read_to_recover(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let got = self
            .get_many(&[(key, None)])
            .pop()
            .expect("one answer per read")?;
        Ok(got.map(|got| {
            self.state.lock().unsynced.insert(got.loc.pack);
            got.data
        }))
    }

    /// Answers each read of `reads`, in their order, reading neighbouring
    /// records with one `pread` (module docs).
    pub(super) fn get_many(&self, reads: &[(&str, Option<&GetRange>)]) -> Vec<Result<Option<Got>>> {
        let mut answers: Vec<Option<Result<Option<Got>>>> = reads.iter().map(|_| None).collect();
        let mut wanted = Vec::with_capacity(reads.len());
        for (request, (key, range)) in reads.iter().enumerate() {
            let located = self.locate(key).and_then(|found| {
                found
                    .map(|(loc, file)| Ok((loc, file, resolve(*range, loc.len)?)))
                    .transpose()
            });
            match located {
                Ok(Some((loc, file, range))) => wanted.push(Wanted {
                    request,
                    loc,
                    range,
                    file,
                }),
                Ok(None) => answers[request] = Some(Ok(None)),
                Err(e) => answers[request] = Some(Err(e)),
            }
        }
        wanted.sort_unstable_by_key(|w| (w.loc.pack, w.span().start));
        let mut rest = &wanted[..];
        while let Some(first) = rest.first() {
            let (start, mut end) = (first.span().start, first.span().end);
            let mut n = 1;
            while let Some(next) = rest.get(n) {
                let span = next.span();
                if next.loc.pack != first.loc.pack
                    || span.start > end + GAP
                    || span.end.max(end) - start > SPAN
                {
                    break;
                }
                end = end.max(span.end);
                n += 1;
            }
            let (run, after) = rest.split_at(n);
            rest = after;
            let mut read_buf = self.read_buf.lock();
            let mut read = match n {
                // One record: into its own buffer, through the page cache.
                1 => {
                    let mut own = vec![0u8; (end - start) as usize];
                    first.file.read_exact_at(&mut own, start).map(|()| Read::Own(own))
                }
                _ => self.read_run(&mut read_buf, first, start..end).map(Read::Run),
            };
            for w in run {
                answers[w.request] = Some(match &mut read {
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string()).into()),
                    Ok(read) => {
                        let at = (w.span().start - start) as usize;
                        let data = match read {
                            Read::Own(own) => std::mem::take(own),
                            Read::Run(run) => read_buf
                                .bytes(
                                    run.start + at..run.start + at + (w.range.end - w.range.start) as usize,
                                )
                                .to_vec(),
                        };
                        Ok(Some(Got {
                            loc: w.loc,
                            range: w.range.clone(),
                            data,
                        }))
                    }
                });
            }
        }
        answers
            .into_iter()
            .map(|a| a.expect("every read is answered"))
            .collect()
    }
}
