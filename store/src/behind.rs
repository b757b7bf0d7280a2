//! Blocking work that waits behind requests: a closure run on rayon's
//! global pool, whose threads the server runs at a lowered scheduling
//! priority (the binary's `priority` module), instead of on the runtime's
//! blocking threads, which run at the priority of the requests they serve.
//! For background work only (seals): a request that waits for its own
//! blocking work keeps `spawn_blocking`.

/// Runs `f` on rayon's global pool and waits for it without blocking the
/// runtime. Dropping the future does not stop `f`; its result is then
/// discarded. A panic in `f` is resumed in the caller.
pub(crate) async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.await.expect("rayon runs every job it is given") {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn returns_the_closures_value_and_resumes_its_panic() {
        assert_eq!(super::run(|| 6 * 7).await, 42);
        let panicked = tokio::spawn(super::run(|| -> u8 { panic!("inside") })).await;
        assert!(panicked.unwrap_err().is_panic());
    }
}
