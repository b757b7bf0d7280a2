//! Prometheus metrics: requests by route and status with latency (totals,
//! and a histogram per route for its tail), and the store's space figures,
//! rendered as text on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_store::Engine;
use parking_lot::Mutex;

#[derive(Default, Clone, Copy)]
struct RouteStats {
    count: u64,
    seconds: f64,
}

/// Upper bounds (seconds) of the request latency histogram's buckets:
/// fine below 10 ms, where snapshots, forks and clones answer.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Requests of one route by latency: `counts[i]` answered within
/// `BUCKETS[i]` (not cumulative; the last slot is above every bound).
#[derive(Default, Clone, Copy)]
struct Histogram {
    counts: [u64; BUCKETS.len() + 1],
    seconds: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let slot = BUCKETS.partition_point(|&bound| bound < seconds);
        self.counts[slot] += 1;
        self.seconds += seconds;
    }

    /// Requests observed.
    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The histogram's lines for one route, in the Prometheus text format.
    fn render(&self, out: &mut String, method: &str, route: &str) {
        let labels = format!("method=\"{method}\",route=\"{route}\"");
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "cairn_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "cairn_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            self.count()
        );
        let _ = writeln!(
            out,
            "cairn_http_request_duration_seconds_sum{{{labels}}} {:.6}",
            self.seconds
        );
        let _ = writeln!(
            out,
            "cairn_http_request_duration_seconds_count{{{labels}}} {}",
            self.count()
        );
    }
}

/// Request metrics.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<(String, String, u16), RouteStats>>,
    /// By method and route, every status together.
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
}

impl Metrics {
    /// Records one request.
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let mut routes = self.routes.lock();
        let entry = routes
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        entry.count += 1;
        entry.seconds += elapsed.as_secs_f64();
        drop(routes);
        self.latency
            .lock()
            .entry((method.to_string(), route.to_string()))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Renders everything in the Prometheus text format.
    pub async fn render(&self, engine: &Engine) -> String {
        let mut out = String::new();
        out.push_str("# HELP cairn_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE cairn_http_requests_total counter\n");
        let routes = self.routes.lock().clone();
        for ((method, route, status), s) in &routes {
            let _ = writeln!(
                out,
                "cairn_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP cairn_http_request_seconds_total Time spent answering, by route and status.\n");
        out.push_str("# TYPE cairn_http_request_seconds_total counter\n");
        for ((method, route, status), s) in &routes {
            let _ = writeln!(
                out,
                "cairn_http_request_seconds_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {:.6}",
                s.seconds
            );
        }
        out.push_str("# HELP cairn_http_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE cairn_http_request_duration_seconds histogram\n");
        let latency = self.latency.lock().clone();
        for ((method, route), h) in &latency {
            h.render(&mut out, method, route);
        }
        let stats = &engine.objects().stats;
        let store = &engine.objects().store_stats;
        let disk = engine.objects().disk_cache();
        let disk_counter =
            |pick: fn(&cairn_store::disk_cache::DiskCacheStats) -> &std::sync::atomic::AtomicU64| {
                disk.map_or(0, |d| pick(&d.stats).load(Ordering::Relaxed))
            };
        for (name, help, value) in [
            (
                "cairn_object_puts_total",
                "Objects uploaded.",
                stats.puts.load(Ordering::Relaxed),
            ),
            (
                "cairn_object_put_bytes_total",
                "Bytes uploaded.",
                stats.put_bytes.load(Ordering::Relaxed),
            ),
            (
                "cairn_dedup_hits_total",
                "Chunk or node puts skipped as already stored.",
                stats.dedup_hits.load(Ordering::Relaxed),
            ),
            (
                "cairn_object_gets_total",
                "Objects fetched from the object store.",
                stats.gets.load(Ordering::Relaxed),
            ),
            (
                "cairn_chunk_cache_hits_total",
                "Chunk reads served from the cache.",
                stats.cache_hits.load(Ordering::Relaxed),
            ),
            (
                "cairn_chunk_cache_misses_total",
                "Chunk reads the memory cache could not serve.",
                stats.cache_misses.load(Ordering::Relaxed),
            ),
            (
                "cairn_chunk_fetch_joins_total",
                "Chunk reads that shared another reader's fetch of the same chunk (single-flight).",
                stats.fetch_joins.load(Ordering::Relaxed),
            ),
            (
                "cairn_disk_cache_hits_total",
                "Object reads served by the on-disk cache (remote stores).",
                disk_counter(|d| &d.hits),
            ),
            (
                "cairn_disk_cache_misses_total",
                "Object reads the on-disk cache could not serve.",
                disk_counter(|d| &d.misses),
            ),
            (
                "cairn_disk_cache_evictions_total",
                "Objects evicted from the on-disk cache to stay within its budget.",
                disk_counter(|d| &d.evictions),
            ),
            (
                "cairn_disk_cache_inserts_total",
                "Objects written into the on-disk cache.",
                disk_counter(|d| &d.inserts),
            ),
            (
                "cairn_object_store_put_requests_total",
                "PUT requests to the object store that succeeded (after retries).",
                store.puts_ok.load(Ordering::Relaxed),
            ),
            (
                "cairn_object_store_put_failures_total",
                "PUT requests to the object store that failed after retries.",
                store.puts_failed.load(Ordering::Relaxed),
            ),
            (
                "cairn_object_store_get_requests_total",
                "GET requests to the object store that succeeded (after retries).",
                store.gets_ok.load(Ordering::Relaxed),
            ),
            (
                "cairn_object_store_get_failures_total",
                "GET requests to the object store that failed (not-found included).",
                store.gets_failed.load(Ordering::Relaxed),
            ),
            (
                "cairn_object_store_retries_total",
                "Object store requests retried after a transient error.",
                store.retries.load(Ordering::Relaxed),
            ),
            (
                "cairn_write_bytes_total",
                "Bytes acknowledged by writes (NBD and HTTP).",
                engine.write_and_seal_bytes().0,
            ),
            (
                "cairn_flushes_total",
                "Flushes asked by clients (NBD FLUSH and FUA writes).",
                engine.flushes_and_log_syncs().0,
            ),
            (
                "cairn_log_syncs_total",
                "fdatasyncs of write-back logs for flushes and snapshots; a flush that a sync already running covers makes none.",
                engine.flushes_and_log_syncs().1,
            ),
            (
                "cairn_sealed_bytes_total",
                "Chunk bytes materialised and stored by seals (divided by cairn_write_bytes_total: the seal's work amplification).",
                engine.write_and_seal_bytes().1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP cairn_chunk_cache_bytes Bytes in the decompressed chunk cache.\n# TYPE cairn_chunk_cache_bytes gauge\ncairn_chunk_cache_bytes {}",
            engine.objects().cache_bytes()
        );
        let _ = writeln!(
            out,
            "# HELP cairn_node_cache_bytes Bytes of decoded manifest nodes cached (part of the memory cache budget).\n# TYPE cairn_node_cache_bytes gauge\ncairn_node_cache_bytes {}",
            engine.trees().cached_bytes()
        );
        for (name, help, value) in [
            (
                "cairn_disk_cache_bytes",
                "Bytes in the on-disk chunk cache (remote stores).",
                disk.map_or(0, |d| d.bytes()),
            ),
            (
                "cairn_disk_cache_capacity_bytes",
                "Budget of the on-disk chunk cache (0: the store is local).",
                disk.map_or(0, |d| d.capacity()),
            ),
            (
                "cairn_backlog_bytes",
                "Bytes of write-back log files not yet retired by a seal (all volumes): acknowledged writes not yet in the object store.",
                engine.backlog_bytes(),
            ),
            (
                "cairn_object_store_down",
                "1 when the last seal failed on the object store.",
                engine.store_down() as u64,
            ),
            (
                "cairn_volumes_damaged",
                "Volumes quarantined because their write-back log is damaged (see `cairn volume repair`).",
                engine.damaged_count() as u64,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        if let Some(packs) = engine.objects().packs() {
            let usage = packs.usage();
            for (name, help, value) in [
                (
                    "cairn_pack_files",
                    "Pack files of the local object store.",
                    usage.files as u64,
                ),
                (
                    "cairn_pack_bytes",
                    "Bytes of the pack files, records deleted but not yet compacted away included.",
                    usage.bytes,
                ),
                (
                    "cairn_pack_live_bytes",
                    "Bytes of the objects the pack files hold.",
                    usage.live_bytes,
                ),
                (
                    "cairn_pack_objects",
                    "Objects the pack files hold.",
                    usage.objects,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
            }
        }
        out.push_str("# HELP cairn_volume_hydration_ratio Fraction of a volume's data readable without the object store.\n");
        out.push_str("# TYPE cairn_volume_hydration_ratio gauge\n");
        for (ns, volume, fraction) in engine.hydration_fractions().await {
            let _ = writeln!(
                out,
                "cairn_volume_hydration_ratio{{namespace=\"{ns}\",volume=\"{volume}\"}} {fraction}"
            );
        }
        match engine.usage().await {
            Ok(usage) => {
                for (name, help, value) in [
                    ("cairn_volumes", "Volumes.", usage.volume_count as f64),
                    ("cairn_snapshots", "Snapshots.", usage.snapshot_count as f64),
                    (
                        "cairn_stored_bytes",
                        "Stored bytes of all referenced chunks.",
                        usage.stored_bytes as f64,
                    ),
                    (
                        "cairn_logical_bytes",
                        "Referenced non-zero chunk bytes of all volumes and snapshots.",
                        usage.logical_bytes as f64,
                    ),
                    (
                        "cairn_dedup_ratio",
                        "Logical bytes per stored byte.",
                        usage.dedup_ratio(),
                    ),
                ] {
                    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
                }
            }
            Err(e) => tracing::warn!(error = %e, "space accounting failed for /metrics"),
        }
        if let Some(gc) = engine.last_gc() {
            for (name, help, value) in [
                (
                    "cairn_gc_last_run_timestamp_seconds",
                    "Unix time the last garbage collection started.",
                    gc.started_unix as f64,
                ),
                (
                    "cairn_gc_last_duration_seconds",
                    "Wall time of the last garbage collection.",
                    gc.duration_ms as f64 / 1000.0,
                ),
                (
                    "cairn_gc_last_reclaimed_bytes",
                    "Stored bytes the last garbage collection deleted (or would have, dry run).",
                    gc.reclaimed_bytes as f64,
                ),
                (
                    "cairn_gc_last_reclaimed_objects",
                    "Objects the last garbage collection deleted (or would have, dry run).",
                    gc.reclaimed_objects as f64,
                ),
                (
                    "cairn_gc_last_scanned_objects",
                    "Objects in the store at the last garbage collection.",
                    gc.scanned_objects as f64,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(out: &str, le: &str) -> u64 {
        let key = format!(
            "cairn_http_request_duration_seconds_bucket{{method=\"POST\",route=\"/r\",le=\"{le}\"}} "
        );
        let line = out
            .lines()
            .find(|l| l.starts_with(&key))
            .unwrap_or_else(|| panic!("no {key} in {out}"));
        line[key.len()..].parse().unwrap()
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let mut h = Histogram::default();
        for seconds in [0.0003, 0.001, 0.003, 0.003, 0.2, 20.0] {
            h.observe(seconds);
        }
        let mut out = String::new();
        h.render(&mut out, "POST", "/r");
        assert_eq!(bucket(&out, "0.0005"), 1);
        assert_eq!(bucket(&out, "0.001"), 2, "a bound holds what equals it");
        assert_eq!(bucket(&out, "0.0025"), 2);
        assert_eq!(bucket(&out, "0.005"), 4);
        assert_eq!(bucket(&out, "0.1"), 4);
        assert_eq!(bucket(&out, "0.25"), 5);
        assert_eq!(bucket(&out, "10"), 5);
        assert_eq!(bucket(&out, "+Inf"), 6);
        assert!(out.contains("cairn_http_request_duration_seconds_count{method=\"POST\",route=\"/r\"} 6\n"));
        assert!(
            out.contains("cairn_http_request_duration_seconds_sum{method=\"POST\",route=\"/r\"} 20.207300\n")
        );
        let buckets = out.lines().filter(|l| l.contains("_bucket{")).count();
        assert_eq!(buckets, BUCKETS.len() + 1);
    }

    #[test]
    fn requests_are_counted_per_route_across_statuses() {
        let m = Metrics::default();
        m.observe("POST", "/r", 201, Duration::from_millis(2));
        m.observe("POST", "/r", 409, Duration::from_millis(30));
        m.observe("GET", "/r", 200, Duration::from_millis(1));
        let latency = m.latency.lock();
        let post = latency[&("POST".to_string(), "/r".to_string())];
        assert_eq!(post.count(), 2);
        assert_eq!(post.counts[BUCKETS.partition_point(|&b| b < 0.002)], 1);
        assert_eq!(post.counts[BUCKETS.partition_point(|&b| b < 0.03)], 1);
        assert_eq!(latency[&("GET".to_string(), "/r".to_string())].count(), 1);
    }
}
