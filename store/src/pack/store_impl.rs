//! The pack store seen as an [`ObjectStore`], so the layers above it
//! (limits, faults, retries, metering, GC, verify) treat it as any other.
//! File I/O runs on the blocking pool, as `object_store`'s local backend
//! does. Reads are queued and served by one blocking task while any are
//! waiting: an export or a read-ahead asks for many chunks at once, and a
//! hop to the pool per chunk cost more than the read of a cached page.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use super::{Got, Location, PackStore};

/// Keys listed per index read.
const LIST_PAGE: usize = 1024;

/// [`PackStore`] behind the [`ObjectStore`] interface.
#[derive(Debug, Clone)]
pub struct PackObjects {
    packs: Arc<PackStore>,
    reads: Arc<Mutex<Reads>>,
}

/// A read waiting for the blocking task, and where its answer goes.
type Read = (
    String,
    Option<GetRange>,
    oneshot::Sender<crate::error::Result<Option<Got>>>,
);

/// Reads waiting, and whether a blocking task is serving them.
#[derive(Debug, Default)]
struct Reads {
    waiting: Vec<Read>,
    serving: bool,
}

/// The task serving the queue. Dropped without having emptied it (the
/// task panicked, or the pool dropped it unrun at shutdown), it clears the
/// queue: the waiting reads fail instead of waiting for a task that will
/// never come.
struct Serving {
    reads: Arc<Mutex<Reads>>,
    done: bool,
}

impl Serving {
    /// Answers the waiting reads, batch by batch, until none are left.
    fn serve(mut self, packs: &PackStore) {
        loop {
            let batch = {
                let mut reads = self.reads.lock();
                if reads.waiting.is_empty() {
                    reads.serving = false;
                    self.done = true;
                    return;
                }
                std::mem::take(&mut reads.waiting)
            };
            let reads: Vec<(&str, Option<&GetRange>)> = batch
                .iter()
                .map(|(key, range, _)| (key.as_str(), range.as_ref()))
                .collect();
            let answers = packs.get_many(&reads);
            drop(reads);
            for ((_, _, tx), answer) in batch.into_iter().zip(answers) {
                // A reader that gave up dropped its receiver.
                let _ = tx.send(answer);
            }
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if !self.done {
            let mut reads = self.reads.lock();
            reads.waiting.clear();
            reads.serving = false;
        }
    }
}

impl fmt::Display for PackObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackObjects({})", self.packs.dir.display())
    }
}

fn failed(e: crate::error::StoreError) -> object_store::Error {
    object_store::Error::Generic {
        store: "packs",
        source: Box::new(e),
    }
}

fn not_implemented(operation: &str) -> object_store::Error {
    object_store::Error::NotImplemented {
        operation: operation.to_string(),
        implementer: "PackObjects".to_string(),
    }
}

fn not_found(location: &Path) -> object_store::Error {
    object_store::Error::NotFound {
        path: location.to_string(),
        source: "no such object in the pack index".into(),
    }
}

fn meta(location: Path, loc: &Location) -> ObjectMeta {
    ObjectMeta {
        location,
        last_modified: chrono::DateTime::from_timestamp(loc.put_at as i64, 0).unwrap_or_default(),
        size: u64::from(loc.len),
        e_tag: None,
        version: None,
    }
}

impl PackObjects {
    /// The pack store as an object store.
    pub fn new(packs: Arc<PackStore>) -> Self {
        Self {
            packs,
            reads: Arc::default(),
        }
    }

    /// Reads through the queue (module doc).
    async fn read(&self, key: String, range: Option<GetRange>) -> Result<Option<Got>> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut reads = self.reads.lock();
            reads.waiting.push((key, range, tx));
            !std::mem::replace(&mut reads.serving, true)
        };
        if start {
            // Made before the task: a task the pool drops unrun drops it too.
            let serving = Serving {
                reads: self.reads.clone(),
                done: false,
            };
            let packs = self.packs.clone();
            tokio::task::spawn_blocking(move || serving.serve(&packs));
        }
        rx.await
            .map_err(|_| {
                failed(crate::error::StoreError::Io(std::io::Error::other(
                    "pack read abandoned",
                )))
            })?
            .map_err(failed)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&PackStore) -> crate::error::Result<T> + Send + 'static,
    ) -> Result<T> {
        let packs = self.packs.clone();
        tokio::task::spawn_blocking(move || f(&packs))
            .await
            .map_err(|e| object_store::Error::JoinError { source: e })?
            .map_err(failed)
    }
}

/// A listing prefix as an index key prefix (whole path segments).
fn key_prefix(prefix: Option<&Path>) -> String {
    match prefix.map(|p| p.as_ref()) {
        None | Some("") => String::new(),
        Some(p) => format!("{p}/"),
    }
}

#[async_trait]
impl ObjectStore for PackObjects {
    async fn put_opts(&self, location: &Path, payload: PutPayload, _opts: PutOptions) -> Result<PutResult> {
        let key = location.to_string();
        self.blocking(move |packs| {
            let parts: Vec<&[u8]> = payload.iter().map(|b| &b[..]).collect();
            packs.put(&key, &parts)
        })
        .await?;
        Ok(PutResult {
            e_tag: None,
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Err(not_implemented("put_multipart"))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let key = location.to_string();
        if options.head {
            let loc = self.blocking(move |packs| packs.head(&key)).await?;
            let loc = loc.ok_or_else(|| not_found(location))?;
            return Ok(GetResult {
                payload: GetResultPayload::Stream(stream::empty().boxed()),
                range: 0..u64::from(loc.len),
                meta: meta(location.clone(), &loc),
                attributes: Default::default(),
                extensions: Default::default(),
            });
        }
        let range = options.range.clone();
        let got = self.read(key, range).await?;
        let super::Got { loc, range, data } = got.ok_or_else(|| not_found(location))?;
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream::once(async move { Ok(Bytes::from(data)) }).boxed()),
            range,
            meta: meta(location.clone(), &loc),
            attributes: Default::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let me = self.clone();
        locations
            .then(move |location| {
                let me = me.clone();
                async move {
                    let location = location?;
                    let key = location.to_string();
                    let worth_compacting = me.blocking(move |packs| packs.delete(&key)).await?;
                    if worth_compacting {
                        me.packs.maybe_compact();
                    }
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let prefix = key_prefix(prefix);
        let me = self.clone();
        stream::try_unfold(
            (me, prefix, None::<String>, false),
            |(me, prefix, after, done)| async move {
                if done {
                    return Ok::<_, object_store::Error>(None);
                }
                let (p, a) = (prefix.clone(), after.clone());
                let page = me
                    .blocking(move |packs| packs.page(&p, a.as_deref(), LIST_PAGE))
                    .await?;
                let done = page.len() < LIST_PAGE;
                let after = page.last().map(|(k, _)| k.clone()).or(after);
                let metas: Vec<Result<ObjectMeta>> = page
                    .into_iter()
                    .map(|(key, loc)| Ok(meta(Path::from(key), &loc)))
                    .collect();
                Result::Ok(Some((stream::iter(metas), (me, prefix, after, done))))
            },
        )
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, _prefix: Option<&Path>) -> Result<ListResult> {
        Err(not_implemented("list_with_delimiter"))
    }

    async fn copy_opts(&self, _from: &Path, _to: &Path, _options: CopyOptions) -> Result<()> {
        Err(not_implemented("copy"))
    }
}
