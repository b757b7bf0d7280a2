//! Behaviour composed around any [`ObjectStore`]: retries, metrics and
//! fault injection are wrappers, so the store code stays the same for the
//! local filesystem, memory and S3.
//!
//! The stack [`layered`] builds, outermost first:
//! `Metered → Retrying → Faulty → LimitStore → backend`. Faults sit below
//! the retries so tests see the retry path exactly as a flaky S3 would
//! exercise it. Content checks (frame crc, BLAKE3 id, length) happen above
//! all of this, in [`crate::objects::ObjectLayer`], on every object read.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Requests in flight to the backend at most.
pub const MAX_CONCURRENCY: usize = 64;

/// Builds the standard stack over a backend, with the default deadline.
pub fn layered(
    backend: Arc<dyn ObjectStore>,
    faults: Arc<Faults>,
    stats: Arc<StoreStats>,
) -> Arc<dyn ObjectStore> {
    layered_with(backend, faults, stats, RetryPolicy::default())
}

/// [`layered`] with a retry policy (its `deadline` bounds every put and
/// get, retries included).
pub fn layered_with(
    backend: Arc<dyn ObjectStore>,
    faults: Arc<Faults>,
    stats: Arc<StoreStats>,
    policy: RetryPolicy,
) -> Arc<dyn ObjectStore> {
    let limited: Arc<dyn ObjectStore> =
        Arc::new(object_store::limit::LimitStore::new(backend, MAX_CONCURRENCY));
    let faulty: Arc<dyn ObjectStore> = Arc::new(Faulty {
        inner: limited,
        faults,
    });
    let retrying: Arc<dyn ObjectStore> = Arc::new(Retrying {
        inner: faulty,
        policy,
        stats: stats.clone(),
    });
    Arc::new(Metered {
        inner: retrying,
        stats,
    })
}

/// Implements [`ObjectStore`] for a wrapper: the given methods, and the
/// rest delegated to `self.inner`.
macro_rules! wrapper_impl {
    ($ty:ty, { $($custom:item)* }) => {
        wrapper_impl!($ty, streams, {
            $($custom)*
            fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
                self.inner.delete_stream(locations)
            }

            fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
                self.inner.list(prefix)
            }
        });
    };
    // `delete_stream` and `list` among the custom items.
    ($ty:ty, streams, { $($custom:item)* }) => {
        #[async_trait]
        impl ObjectStore for $ty {
            $($custom)*
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
            self.inner.copy_opts(from, to, options).await
        }

        async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
            self.inner.get_ranges(location, ranges).await
        }
        }
    };
}

// ---------------------------------------------------------------- faults

/// Faults to inject, changeable while running (tests).
#[derive(Debug, Default)]
pub struct Faults {
    /// Every request fails as if the store were unreachable.
    pub down: AtomicBool,
    /// One request in `fail_one_in` fails with a server error (0: none).
    pub fail_one_in: AtomicU64,
    /// Added latency per request, milliseconds.
    pub latency_ms: AtomicU64,
    /// Uploads wait while this is set, as against a hung server.
    pub hang_puts: AtomicBool,
    /// Added latency per delete, milliseconds (a slow GC sweep).
    pub delete_latency_ms: AtomicU64,
    counter: AtomicU64,
}

impl Faults {
    /// From `CAIRN_FAULTS`, e.g. `fail_one_in=5,latency_ms=20` (tests only;
    /// empty or unset: none).
    pub fn from_env() -> Arc<Self> {
        let faults = Self::default();
        if let Ok(spec) = std::env::var("CAIRN_FAULTS") {
            for item in spec.split(',').filter(|s| !s.is_empty()) {
                let (key, value) = item.split_once('=').unwrap_or((item, "1"));
                let value: u64 = value.parse().unwrap_or(0);
                match key {
                    "fail_one_in" => faults.fail_one_in.store(value, Ordering::Relaxed),
                    "latency_ms" => faults.latency_ms.store(value, Ordering::Relaxed),
                    "down" => faults.down.store(value != 0, Ordering::Relaxed),
                    "hang_puts" => faults.hang_puts.store(value != 0, Ordering::Relaxed),
                    "delete_latency_ms" => faults.delete_latency_ms.store(value, Ordering::Relaxed),
                    _ => tracing::warn!(key, "unknown CAIRN_FAULTS key ignored"),
                }
            }
            tracing::warn!(spec, "object store fault injection is on");
        }
        Arc::new(faults)
    }

    /// Whether no fault that a put or get would meet is switched on (the
    /// pack store's batched puts, which go around this layer, are taken
    /// only then; a delete's latency does not matter to them).
    pub fn is_quiet(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
            && self.fail_one_in.load(Ordering::Relaxed) == 0
            && self.latency_ms.load(Ordering::Relaxed) == 0
            && !self.hang_puts.load(Ordering::Relaxed)
    }

    async fn before(&self, op: &'static str) -> Result<()> {
        let latency = self.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        while op == "put" && self.hang_puts.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.down.load(Ordering::Relaxed) {
            return Err(injected(op, "object store unreachable (injected)"));
        }
        let one_in = self.fail_one_in.load(Ordering::Relaxed);
        if one_in > 0 && self.counter.fetch_add(1, Ordering::Relaxed) % one_in == one_in - 1 {
            return Err(injected(op, "503 Service Unavailable (injected)"));
        }
        Ok(())
    }
}

/// The error of an operation that ran out of time.
fn timed_out(op: &'static str, deadline: Duration) -> object_store::Error {
    object_store::Error::Generic {
        store: "deadline",
        source: format!("{op}: the object store did not answer within {deadline:?}").into(),
    }
}

fn injected(op: &'static str, message: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "fault-injection",
        source: format!("{op}: {message}").into(),
    }
}

struct Faulty {
    inner: Arc<dyn ObjectStore>,
    faults: Arc<Faults>,
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

impl fmt::Debug for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

wrapper_impl!(Faulty, streams, {
    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let faults = self.faults.clone();
        let slowed = locations.then(move |location| {
            let latency = faults.delete_latency_ms.load(Ordering::Relaxed);
            async move {
                if latency > 0 {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                }
                location
            }
        });
        self.inner.delete_stream(slowed.boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.faults.before("put").await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.faults.before("get").await?;
        self.inner.get_opts(location, options).await
    }
});

// ---------------------------------------------------------------- retries

/// Exponential backoff with full jitter.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// First backoff.
    pub base: Duration,
    /// Backoff cap.
    pub cap: Duration,
    /// Longest one operation may take, all attempts and backoffs included:
    /// a store that hangs (rather than refusing) costs a caller this much,
    /// then it gets an error.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 6,
            base: Duration::from_millis(50),
            cap: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << attempt.min(16)).min(self.cap);
        // Full jitter: uniform in [0, ceiling].
        let nanos = ceiling.as_nanos() as u64;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(7)
            ^ (attempt as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Duration::from_nanos(if nanos == 0 {
            0
        } else {
            splitmix(seed) % (nanos + 1)
        })
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Errors worth another try: the store's own failures (5xx, throttling,
/// timeouts, connection resets), not answers about the object.
fn transient(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. })
}

/// `stream`, ended by a timeout error when an item takes longer than
/// `deadline` to come.
fn within_deadline<T: Send + 'static>(
    op: &'static str,
    stream: BoxStream<'static, Result<T>>,
    deadline: Duration,
) -> BoxStream<'static, Result<T>> {
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(deadline, stream.next()).await {
            Ok(Some(item)) => Some((item, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((Err(timed_out(op, deadline)), None)),
        }
    })
    .boxed()
}

struct Retrying {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    stats: Arc<StoreStats>,
}

impl fmt::Display for Retrying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retrying({})", self.inner)
    }
}

impl fmt::Debug for Retrying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Retrying {
    async fn attempt<T, F, Fut>(&self, op: &'static str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        let started = std::time::Instant::now();
        let deadline = self.policy.deadline;
        loop {
            let left = deadline.saturating_sub(started.elapsed());
            let Ok(result) = tokio::time::timeout(left, call()).await else {
                return Err(timed_out(op, deadline));
            };
            match result {
                Err(e) if transient(&e) && attempt < self.policy.retries => {
                    let delay = self.policy.delay(attempt);
                    if started.elapsed() + delay >= deadline {
                        return Err(e);
                    }
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(op, attempt, error = %e, delay_ms = delay.as_millis() as u64, "object store retry");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

wrapper_impl!(Retrying, streams, {
    // Listing and deleting are streams of requests: each item (a page or a
    // batch answered) must come within the deadline of the one before.
    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        within_deadline(
            "delete",
            self.inner.delete_stream(locations),
            self.policy.deadline,
        )
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        within_deadline("list", self.inner.list(prefix), self.policy.deadline)
    }

    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.attempt("put", || {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.attempt("get", || self.inner.get_opts(location, options.clone()))
            .await
    }
});

// ---------------------------------------------------------------- metrics

/// Object store request counters (for `/metrics`).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// PUT requests that succeeded / failed after retries.
    pub puts_ok: AtomicU64,
    /// PUT failures.
    pub puts_failed: AtomicU64,
    /// GET requests that succeeded.
    pub gets_ok: AtomicU64,
    /// GET failures (not-found included).
    pub gets_failed: AtomicU64,
    /// Retries taken.
    pub retries: AtomicU64,
    /// Total request time, microseconds.
    pub request_micros: AtomicU64,
}

struct Metered {
    inner: Arc<dyn ObjectStore>,
    stats: Arc<StoreStats>,
}

impl fmt::Display for Metered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metered({})", self.inner)
    }
}

impl fmt::Debug for Metered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl StoreStats {
    /// Counts `n` puts done as one request that took since `started`.
    pub fn count_puts(&self, started: std::time::Instant, n: u64, ok: bool) {
        self.request_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if ok { &self.puts_ok } else { &self.puts_failed }.fetch_add(n, Ordering::Relaxed);
    }
}

impl Metered {
    fn count<T>(&self, started: std::time::Instant, ok: &AtomicU64, failed: &AtomicU64, r: &Result<T>) {
        self.stats
            .request_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if r.is_ok() { ok } else { failed }.fetch_add(1, Ordering::Relaxed);
    }
}

wrapper_impl!(Metered, {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let started = std::time::Instant::now();
        let r = self.inner.put_opts(location, payload, opts).await;
        self.count(started, &self.stats.puts_ok, &self.stats.puts_failed, &r);
        r
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let started = std::time::Instant::now();
        let r = self.inner.get_opts(location, options).await;
        self.count(started, &self.stats.gets_ok, &self.stats.gets_failed, &r);
        r
    }
});

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn retries_hide_occasional_failures_and_outages_surface() {
        let faults = Arc::new(Faults::default());
        let stats = Arc::new(StoreStats::default());
        let store = layered(Arc::new(InMemory::new()), faults.clone(), stats.clone());
        faults.fail_one_in.store(2, Ordering::Relaxed);
        for i in 0..20 {
            let path = Path::from(format!("k/{i}"));
            store
                .put(&path, Bytes::from(vec![i as u8; 10]).into())
                .await
                .unwrap();
            let got = store.get(&path).await.unwrap().bytes().await.unwrap();
            assert_eq!(got, vec![i as u8; 10]);
        }
        assert!(stats.retries.load(Ordering::Relaxed) >= 10);
        assert_eq!(stats.puts_ok.load(Ordering::Relaxed), 20);
        faults.fail_one_in.store(0, Ordering::Relaxed);
        faults.down.store(true, Ordering::Relaxed);
        let started = std::time::Instant::now();
        assert!(store.get(&Path::from("k/1")).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(20), "retries are bounded");
        assert_eq!(stats.gets_failed.load(Ordering::Relaxed), 1);
        // Not-found is an answer, not retried.
        faults.down.store(false, Ordering::Relaxed);
        let before = stats.retries.load(Ordering::Relaxed);
        assert!(matches!(
            store.get(&Path::from("nope")).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert_eq!(stats.retries.load(Ordering::Relaxed), before);
    }

    #[test]
    fn backoff_grows_capped_with_jitter() {
        let p = RetryPolicy::default();
        for attempt in 0..20 {
            let d = p.delay(attempt);
            assert!(d <= p.cap);
            assert!(d <= p.base.saturating_mul(1 << attempt.min(16)));
        }
    }
}
