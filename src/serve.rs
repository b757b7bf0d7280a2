//! `cairn serve`: open the engine, serve the REST API, run the background
//! sealer; on Ctrl-C or SIGTERM stop accepting, seal everything
//! acknowledged and exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use cairn_api::{AppState, Auth, Metrics};
use cairn_store::{Engine, EngineConfig};

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub nbd_listen: SocketAddr,
    pub nbd: cairn_nbd_server::ServerConfig,
    /// psktool key file: NBD requires TLS, identities are namespaces.
    pub nbd_tls_psk: Option<PathBuf>,
    pub object_store: Option<String>,
    pub chunk_size: u64,
    pub cache_size: Option<u64>,
    pub memory_cache_size: u64,
    pub backlog_size: u64,
    pub seal_idle: std::time::Duration,
    pub store_timeout: std::time::Duration,
    pub tokens: Option<PathBuf>,
}

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let auth = match &config.tokens {
        Some(path) => Auth::from_file(path)?,
        None => Auth::open(),
    };
    if !auth.is_enforced() && !config.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on non-loopback address {} without --tokens: anyone could reach every volume",
            config.listen
        );
    }
    let nbd_tls = config.nbd_tls_psk.as_deref().map(load_psk).transpose()?;
    // NBD has no authentication without TLS: whoever reaches the port reads
    // and writes every volume of namespace `default`, tokens or not.
    if nbd_tls.is_none() && !config.nbd_listen.ip().is_loopback() {
        bail!(
            "refusing to serve NBD on non-loopback address {}: plain NBD has no authentication, so anyone who \
             can reach the port could read and write every volume; give --nbd-tls-psk FILE (TLS with a key per \
             namespace) or keep --nbd-listen on a loopback address (127.0.0.1:10809 by default)",
            config.nbd_listen
        );
    }
    let mut engine_config = EngineConfig::new(&config.data_dir);
    engine_config.object_store = config.object_store.clone();
    engine_config.default_chunk_size = config.chunk_size;
    engine_config.cache_bytes = config.memory_cache_size as usize;
    engine_config.disk_cache_bytes = config.cache_size;
    engine_config.dirty_hard_limit = config.backlog_size as usize;
    engine_config.idle_seal_after = config.seal_idle;
    engine_config.store_timeout = config.store_timeout;
    engine_config.dirty_soft_limit = config.backlog_size as usize / 2;
    crate::priority::background_pool();
    let engine = Engine::open(engine_config)
        .await
        .with_context(|| format!("opening data dir {}", config.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding REST listener {}", config.listen))?;
    let volumes = engine.catalog().volumes(None)?.len();
    tracing::info!(
        data_dir = %config.data_dir.display(),
        rest = %listener.local_addr()?,
        volumes,
        auth = if auth.is_enforced() { "tokens" } else { "none (namespace default)" },
        "cairn serving"
    );
    let nbd_listener = tokio::net::TcpListener::bind(config.nbd_listen)
        .await
        .with_context(|| format!("binding NBD listener {}", config.nbd_listen))?;
    let exports = Arc::new(crate::nbd::EngineExports::new(engine.clone()));
    let nbd_config = cairn_nbd_server::ServerConfig {
        transport: cairn_nbd_server::choose_transport(config.nbd.transport)?,
        tls: nbd_tls,
        ..config.nbd.clone()
    };
    let nbd = tokio::spawn(cairn_nbd_server::serve_config(nbd_listener, exports, nbd_config));
    let (stop_sealer, sealer_stopped) = tokio::sync::oneshot::channel::<()>();
    let sealer = tokio::spawn(Arc::clone(&engine).run_sealer(async {
        let _ = sealer_stopped.await;
    }));
    let trimmer = tokio::spawn(crate::allocator::trim_periodically());
    let requests = tokio_util::task::TaskTracker::new();
    let state = AppState {
        engine: engine.clone(),
        auth: Arc::new(auth),
        metrics: Arc::new(Metrics::default()),
        requests: requests.clone(),
    };
    axum::serve(listener, cairn_api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("REST server")?;
    // Stop accepting NBD connections; acknowledged writes of open ones are
    // in the journal, and a FLUSH not yet answered promised nothing.
    nbd.abort();
    trimmer.abort();
    tracing::info!("shutting down: waiting for requests in progress");
    requests.close();
    requests.wait().await;
    // The sealer finishes the pass it is in.
    let _ = stop_sealer.send(());
    if let Err(e) = sealer.await {
        tracing::warn!(error = %e, "background sealer ended abnormally");
    }
    tracing::info!("shutting down: sealing acknowledged writes");
    engine.seal_all().await.context("sealing on shutdown")?;
    let stopping = engine.clone();
    tokio::task::spawn_blocking(move || stopping.stop_background_work()).await?;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Loads the NBD key file; every identity must be a valid namespace name.
fn load_psk(path: &std::path::Path) -> anyhow::Result<Arc<cairn_nbd_server::TlsPsk>> {
    let tls = cairn_nbd_server::TlsPsk::from_file(path)?;
    for identity in tls.identities() {
        cairn_store::Namespace::new(identity).with_context(|| {
            format!(
                "TLS-PSK file {}: identity {identity:?} is not a namespace",
                path.display()
            )
        })?;
    }
    tracing::info!(
        file = %path.display(),
        identities = tls.identities().len(),
        "NBD requires TLS (PSK; the identity is the namespace)"
    );
    Ok(Arc::new(tls))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
