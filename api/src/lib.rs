//! cairn's REST API (`/api/v1`), as in INTERFACE.md: axum handlers over
//! [`cairn_store::Engine`], bearer-token namespaces, the OpenAPI document,
//! `/healthz` and Prometheus `/metrics`.
//!
//! Handlers only translate HTTP to engine calls and back; every rule lives
//! in the store. Each [`cairn_store::StoreError`] maps to one status code
//! in [`error`].

pub mod auth;
pub mod error;
mod handlers;
pub mod metrics;
pub mod openapi;
mod stream;
pub mod types;
mod ui;

use std::sync::Arc;

use axum::Router;
use cairn_store::Engine;

pub use auth::Auth;
pub use metrics::Metrics;

/// Shared state of the API.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Token → namespace mapping.
    pub auth: Arc<Auth>,
    /// Request and storage metrics.
    pub metrics: Arc<Metrics>,
    /// Requests in progress: each runs on its own task, to completion even
    /// when its client goes away; shutdown waits for them.
    pub requests: tokio_util::task::TaskTracker,
}

/// The whole HTTP router: `/api/v1/...`, `/healthz`, `/metrics`.
pub fn router(state: AppState) -> Router {
    handlers::routes(state)
}
