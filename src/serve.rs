//! `cairn serve`: open the engine on a data directory, run the background
//! sealer, and on Ctrl-C or SIGTERM seal everything acknowledged and exit 0.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cairn_store::{Engine, EngineConfig};

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub object_store: Option<String>,
    pub chunk_size: u64,
}

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let mut engine_config = EngineConfig::new(&config.data_dir);
    engine_config.object_store = config.object_store.clone();
    engine_config.default_chunk_size = config.chunk_size;
    let engine = Engine::open(engine_config)
        .await
        .with_context(|| format!("opening data dir {}", config.data_dir.display()))?;
    let volumes = engine.catalog().volumes(None)?.len();
    tracing::info!(data_dir = %config.data_dir.display(), volumes, "engine open");
    let sealer = tokio::spawn(Arc::clone(&engine).run_sealer());
    shutdown_signal().await;
    tracing::info!("shutting down: sealing acknowledged writes");
    sealer.abort();
    engine.seal_all().await.context("sealing on shutdown")?;
    tracing::info!("shutdown complete");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
