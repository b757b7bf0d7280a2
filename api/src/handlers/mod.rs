//! Route handlers: HTTP in, engine call, HTTP out. This file holds the
//! router, the extractors and the helpers; the handlers live by resource
//! in `volumes`, `data` (raw bytes in and out), `snapshots` (snapshots,
//! forks, clones, rollbacks, diffs) and `admin` (events, usage, GC,
//! verify, OpenAPI, health, metrics).

use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_store::{Actor, Labels, Namespace, SnapshotTag, StoreError, VolumeName, VolumeRecord};
use futures::TryStreamExt;

use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::openapi::openapi_json;
use crate::stream::{chunks_body, export_body};
use crate::types::*;
use crate::AppState;

mod admin;
mod data;
mod snapshots;
mod volumes;

pub use admin::*;
pub use data::*;
pub use snapshots::*;
pub use volumes::*;

type ApiResult<T> = Result<T, ApiError>;

/// JSON body extractor whose rejections use the API's error shape.
pub struct Body400<T>(pub T);

impl<T, S> FromRequest<S> for Body400<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body400(v)),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// Like [`Body400`], but an empty body means `T::default()`.
pub struct OptionalBody<T>(pub T);

impl<T, S> FromRequest<S> for OptionalBody<T>
where
    T: serde::de::DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = bytes::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalBody(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(OptionalBody)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

pub fn routes(state: AppState) -> Router {
    let api = Router::new()
        .route("/volumes", post(create_volume).get(list_volumes))
        .route(
            "/volumes/{name}",
            get(show_volume).patch(resize_volume).delete(delete_volume),
        )
        .route("/volumes/{name}/data", get(get_data).put(put_data))
        .route("/volumes/{name}/chunks", get(get_chunks))
        .route("/volumes/{name}/map", get(get_map))
        .route(
            "/volumes/{name}/snapshots",
            post(create_snapshot).get(list_volume_snapshots),
        )
        .route("/snapshots", get(list_snapshots))
        .route("/snapshots/import", post(import_snapshot_ref))
        .route("/volumes/{name}/snapshots/{tag}/ref", get(snapshot_ref))
        .route(
            "/volumes/{name}/snapshots/{tag}",
            get(show_snapshot).delete(delete_snapshot),
        )
        .route("/volumes/{name}/snapshots/{tag}/data", get(get_snapshot_data))
        .route("/volumes/{name}/snapshots/{tag}/chunks", get(get_snapshot_chunks))
        .route("/volumes/{name}/snapshots/{tag}/map", get(get_snapshot_map))
        .route("/volumes/{name}/snapshots/{tag}/fork", post(fork))
        .route("/volumes/{name}/snapshots/{tag}/diff", get(diff))
        .route("/volumes/{name}/clone", post(clone_volume))
        .route("/volumes/{name}/rollback", post(rollback))
        .route("/volumes/{name}/warm", post(warm_volume))
        .route("/volumes/{name}/repair", post(repair_volume))
        .route("/events", get(events))
        .route("/gc", post(gc).get(gc_status))
        .route("/verify", post(verify))
        .route("/usage", get(space_usage))
        .route("/openapi.json", get(openapi));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(crate::ui::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Runs every request on its own task, tracked by [`AppState::requests`]:
/// a client that disconnects (axum then drops the handler's future) does
/// not cut an operation short between its steps, and shutdown waits for
/// requests in progress. Records metrics and a log line.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = match state.requests.spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: only when the runtime shuts down.
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    };
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state.metrics.observe(&method, &route, status, elapsed);
    tracing::info!(%method, %route, status, ms = elapsed.as_secs_f64() * 1e3, "request");
    response
}

async fn not_found() -> ApiError {
    ApiError::BadRequest("no such route; see /api/v1/openapi.json".into())
}

fn actor(ns: &Namespace) -> Actor {
    Actor(ns.to_string())
}

fn volume_name(name: &str) -> ApiResult<VolumeName> {
    Ok(VolumeName::new(name)?)
}

fn tag_name(tag: &str) -> ApiResult<SnapshotTag> {
    Ok(SnapshotTag::new(tag)?)
}

fn labels(map: Option<std::collections::BTreeMap<String, String>>) -> Labels {
    map.unwrap_or_default()
}

/// The body of a volume that was just created, forked or cloned: it shares
/// every chunk with its source snapshot (or has none), so `unique_bytes` is
/// 0 by construction and `stored_bytes` is the root's, memoised.
async fn fresh_volume_body(state: &AppState, record: VolumeRecord) -> ApiResult<Volume> {
    let stored_bytes = state
        .engine
        .stored_bytes_of(record.root, record.size, record.chunk_size)
        .await?;
    Ok(volume_body(
        record,
        cairn_store::VolumeUsage {
            stored_bytes,
            unique_bytes: 0,
        },
    ))
}

async fn volume_with_usage(state: &AppState, record: VolumeRecord) -> ApiResult<Volume> {
    let usage = state.engine.usage().await?;
    Ok(body_with_usage(state, &usage, record))
}

/// A volume's body with its figures from `usage`, marked `damaged` (with
/// the reason) when it is quarantined.
fn body_with_usage(state: &AppState, usage: &cairn_store::Usage, record: VolumeRecord) -> Volume {
    let damage = state.engine.damage(&record.namespace, &record.name);
    let figures = usage
        .volumes
        .get(&(record.namespace.clone(), record.name.clone()))
        .copied()
        .unwrap_or_default();
    let mut body = volume_body(record, figures);
    if let Some(reason) = damage {
        body.state = "damaged".into();
        body.damage = Some(reason);
    }
    body
}
