//! Background CPU work yields to requests.
//!
//! Sealing and imports hash and compress chunks on rayon's global pool
//! (`cairn_chunker::pipeline`), and seals read their dirty blocks back
//! from the logs there (`cairn_store`'s `behind`): on a small machine
//! they keep every core busy for seconds after a burst of writes, and a
//! REST request or NBD reply then waits for a time slice behind them. The
//! pool's threads run at a lower scheduling priority (nice
//! [`BACKGROUND_NICE`]); the kernel still gives them every cycle nothing
//! else wants, and writers waiting for backlog room leave those cycles to
//! them.

/// Nice value of the compression threads (0 is the default; higher is
/// lower priority).
const BACKGROUND_NICE: i32 = 10;

/// Sets up rayon's global pool with lowered priority: call before the
/// first seal or import.
pub fn background_pool() {
    let built = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("cairn-compress-{i}"))
        .start_handler(|_| lower_this_thread())
        .build_global();
    if let Err(e) = built {
        tracing::warn!(error = %e, "compression threads keep the default priority");
    }
}

fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on this thread's own id.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE)
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "lowering a compression thread's priority failed");
        }
    }
}
