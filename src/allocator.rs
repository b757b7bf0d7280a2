//! glibc malloc settings: for a long-running server, and for a client
//! that moves an image.
//!
//! glibc gives busy threads their own arenas (up to 8 per core) and
//! returns freed memory inside an arena to the system only when it lies
//! at the arena's top. A server whose seals, NBD payloads and caches pass
//! 64 KiB - 1 MiB buffers between tokio workers and blocking threads then
//! holds freed memory in many arenas. Two arenas, and a trim every few
//! seconds, keep the resident set nearer what is live (measured with
//! `benches/write_path.sh`); the chunk cache keeps its chunks apart from
//! the heap (`store/src/slab.rs`).
//!
//! A client is the opposite case: it runs for one command and holds a
//! bounded amount in flight, but an export passes gigabytes through
//! 64 KiB buffers. With glibc's defaults their memory went back to the
//! system and came back as fresh pages, over and over: 0.85 s of system
//! time of a 2 s export of a 4 GiB image, 0.24 s with the settings of
//! [`keep_freed`].

use std::time::Duration;

/// How often freed memory is handed back.
const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Caps the number of malloc arenas: call before threads start.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before
    // the runtime's threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Keeps freed memory for reuse instead of returning it to the system,
/// and serves buffers up to 32 MiB from the heap: for a short-lived
/// process whose memory in flight is bounded. Call before threads start.
pub fn keep_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before
    // the runtime's threads exist.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

/// Returns freed memory of every arena to the system, every
/// [`TRIM_EVERY`], until the task is dropped.
pub async fn trim_periodically() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free pages; any thread may call it.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}
