//! Route handlers: HTTP in, engine call, HTTP out.

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
use tokio_util::io::StreamReader;

use crate::auth::{Admin, Caller};
use crate::error::ApiError;
use crate::openapi::openapi_json;
use crate::stream::export_body;
use crate::types::*;
use crate::AppState;

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
        .route("/volumes/{name}/snapshots/{tag}/fork", post(fork))
        .route("/volumes/{name}/snapshots/{tag}/diff", get(diff))
        .route("/volumes/{name}/clone", post(clone_volume))
        .route("/volumes/{name}/rollback", post(rollback))
        .route("/volumes/{name}/warm", post(warm_volume))
        .route("/volumes/{name}/repair", post(repair_volume))
        .route("/events", get(events))
        .route("/gc", post(gc))
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
    let u = usage
        .volumes
        .get(&(record.namespace.clone(), record.name.clone()))
        .copied()
        .unwrap_or_default();
    Ok(with_damage(state, volume_body(record, u)))
}

/// Marks a quarantined volume `damaged`, with the reason.
fn with_damage(state: &AppState, mut body: Volume) -> Volume {
    let (Ok(ns), Ok(name)) = (Namespace::new(&body.namespace), VolumeName::new(&body.name)) else {
        return body;
    };
    if let Some(reason) = state.engine.damage(&ns, &name) {
        body.state = "damaged".into();
        body.damage = Some(reason);
    }
    body
}

#[utoipa::path(post, path = "/api/v1/volumes", request_body = CreateVolume,
    responses((status = 201, body = Volume), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_volume(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Body400(req): Body400<CreateVolume>,
) -> ApiResult<(StatusCode, Json<Volume>)> {
    let name = volume_name(&req.name)?;
    let record = state
        .engine
        .create_volume(
            &ns,
            &actor(&ns),
            &name,
            req.size,
            req.chunk_size,
            labels(req.labels),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(fresh_volume_body(&state, record).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/volumes", responses((status = 200, body = VolumeList)))]
pub async fn list_volumes(State(state): State<AppState>, Caller(ns): Caller) -> ApiResult<Json<VolumeList>> {
    let usage = state.engine.usage().await?;
    let volumes = state
        .engine
        .list_volumes(&ns)
        .into_iter()
        .map(|r| {
            let u = usage
                .volumes
                .get(&(r.namespace.clone(), r.name.clone()))
                .copied()
                .unwrap_or_default();
            with_damage(&state, volume_body(r, u))
        })
        .collect();
    Ok(Json(VolumeList { volumes }))
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}", params(("name" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = crate::error::ErrorBody)))]
pub async fn show_volume(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Volume>> {
    let name = volume_name(&name)?;
    let record = state.engine.volume_record(&ns, &name)?;
    let mut body = volume_with_usage(&state, record).await?;
    if body.damage.is_none() {
        body.hydration = Some(state.engine.hydration(&ns, &name).await?);
    }
    Ok(Json(body))
}

#[utoipa::path(post, path = "/api/v1/volumes/{name}/repair", params(("name" = String, Path)),
    responses((status = 200, body = cairn_api_types::RepairReport), (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "the volume is not damaged", body = crate::error::ErrorBody)))]
/// Brings a `damaged` volume back: replays every write-back log record
/// that still reads, drops the unreadable ones and reports them.
pub async fn repair_volume(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<cairn_api_types::RepairReport>> {
    let name = volume_name(&name)?;
    Ok(Json(state.engine.repair_volume(&ns, &actor(&ns), &name).await?))
}

#[utoipa::path(post, path = "/api/v1/volumes/{name}/warm", params(("name" = String, Path)),
    responses((status = 202, body = cairn_api_types::Hydration), (status = 404, body = crate::error::ErrorBody)))]
/// Starts fetching the volume's data that is not local into the disk
/// cache; progress shows in the volume's `hydration`.
pub async fn warm_volume(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<cairn_api_types::Hydration>)> {
    let hydration = state.engine.warm(&ns, &volume_name(&name)?).await?;
    Ok((StatusCode::ACCEPTED, Json(hydration)))
}

#[utoipa::path(patch, path = "/api/v1/volumes/{name}", params(("name" = String, Path)), request_body = ResizeVolume,
    responses((status = 200, body = Volume), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn resize_volume(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
    Body400(req): Body400<ResizeVolume>,
) -> ApiResult<Json<Volume>> {
    let record = state
        .engine
        .resize(&ns, &actor(&ns), &volume_name(&name)?, req.size)
        .await?;
    Ok(Json(volume_with_usage(&state, record).await?))
}

#[utoipa::path(delete, path = "/api/v1/volumes/{name}", params(("name" = String, Path), DeleteQuery),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn delete_volume(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    state
        .engine
        .delete_volume(
            &ns,
            &actor(&ns),
            &volume_name(&name)?,
            q.keep_snapshots.unwrap_or(false),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/volumes/{name}/data", params(("name" = String, Path), PutDataQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = ImportResult), (status = 200, body = ImportResult),
        (status = 411, body = crate::error::ErrorBody), (status = 413, body = crate::error::ErrorBody)))]
pub async fn put_data(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
    Query(q): Query<PutDataQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ImportResult>)> {
    let name = volume_name(&name)?;
    let offset = q.offset.unwrap_or(0);
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let exists = state.engine.volume(&ns, &name).is_ok();
    let size = match (exists, q.size, content_length) {
        (true, _, _) => None,
        (false, Some(size), _) => Some(size),
        (false, None, Some(len)) => Some((offset + len).div_ceil(4096).max(1) * 4096),
        (false, None, None) => {
            return Err(ApiError::LengthRequired(
                "creating a volume by upload needs ?size= or a Content-Length".into(),
            ))
        }
    };
    // Refuse an upload that cannot fit before reading a byte of it.
    if let Some(len) = content_length {
        let capacity = match size {
            Some(s) => s,
            None => state.engine.volume(&ns, &name)?.size(),
        };
        if offset.saturating_add(len) > capacity {
            return Err(StoreError::ImportTooLarge {
                offset,
                length: len,
                size: capacity,
            }
            .into());
        }
    }
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut reader = StreamReader::new(stream);
    let (record, bytes, created) = state
        .engine
        .import(&ns, &actor(&ns), &name, &mut reader, size, offset, &|_| {})
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(ImportResult {
            volume: volume_with_usage(&state, record).await?,
            bytes,
        }),
    ))
}

fn data_response(
    state: &AppState,
    source: cairn_store::Readable,
    size: u64,
    q: GetDataQuery,
) -> ApiResult<Response> {
    let offset = q.offset.unwrap_or(0);
    let length = q.length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(StoreError::OutOfRange { offset, length, size }.into());
    }
    let body = export_body(state.engine.clone(), source, offset, length);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        body,
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}/data", params(("name" = String, Path), GetDataQuery),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_data(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
    Query(q): Query<GetDataQuery>,
) -> ApiResult<Response> {
    let source = state.engine.readable(&ns, &volume_name(&name)?, None)?;
    let size = match &source {
        cairn_store::Readable::Volume(v) => v.size(),
        cairn_store::Readable::Snapshot { size, .. } => *size,
    };
    data_response(&state, source, size, q)
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}/snapshots/{tag}/data", params(("name" = String, Path), ("tag" = String, Path), GetDataQuery),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_snapshot_data(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path((name, tag)): Path<(String, String)>,
    Query(q): Query<GetDataQuery>,
) -> ApiResult<Response> {
    let name = volume_name(&name)?;
    let tag = tag_name(&tag)?;
    let size = state.engine.snapshot_record(&ns, &name, &tag)?.size;
    let source = state.engine.readable(&ns, &name, Some(&tag))?;
    data_response(&state, source, size, q)
}

#[utoipa::path(post, path = "/api/v1/volumes/{name}/snapshots", params(("name" = String, Path)), request_body = CreateSnapshot,
    responses((status = 201, body = Snapshot), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn create_snapshot(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
    OptionalBody(req): OptionalBody<CreateSnapshot>,
) -> ApiResult<(StatusCode, Json<Snapshot>)> {
    let tag = req.tag.as_deref().map(tag_name).transpose()?;
    let snap = state
        .engine
        .snapshot(&ns, &actor(&ns), &volume_name(&name)?, tag, labels(req.labels))
        .await?;
    Ok((StatusCode::CREATED, Json(snapshot_body(snap))))
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}/snapshots", params(("name" = String, Path)),
    responses((status = 200, body = SnapshotList), (status = 404, body = crate::error::ErrorBody)))]
pub async fn list_volume_snapshots(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<SnapshotList>> {
    let snaps = state.engine.list_snapshots(&ns, Some(&volume_name(&name)?))?;
    Ok(Json(SnapshotList {
        snapshots: snaps.into_iter().map(snapshot_body).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/snapshots", responses((status = 200, body = SnapshotList)))]
pub async fn list_snapshots(
    State(state): State<AppState>,
    Caller(ns): Caller,
) -> ApiResult<Json<SnapshotList>> {
    let snaps = state.engine.list_snapshots(&ns, None)?;
    Ok(Json(SnapshotList {
        snapshots: snaps.into_iter().map(snapshot_body).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}/snapshots/{tag}", params(("name" = String, Path), ("tag" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 404, body = crate::error::ErrorBody)))]
pub async fn show_snapshot(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path((name, tag)): Path<(String, String)>,
) -> ApiResult<Json<Snapshot>> {
    let snap = state
        .engine
        .snapshot_record(&ns, &volume_name(&name)?, &tag_name(&tag)?)?;
    Ok(Json(snapshot_body(snap)))
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}/snapshots/{tag}/ref", params(("name" = String, Path), ("tag" = String, Path)),
    responses((status = 200, body = cairn_store::shared::SnapshotRefDoc), (status = 404, body = crate::error::ErrorBody)))]
/// The snapshot's reference, for a server over the same bucket to import.
pub async fn snapshot_ref(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path((name, tag)): Path<(String, String)>,
) -> ApiResult<Json<cairn_store::shared::SnapshotRefDoc>> {
    let doc = state
        .engine
        .export_snapshot_ref(&ns, &volume_name(&name)?, &tag_name(&tag)?)
        .await?;
    Ok(Json(doc))
}

#[utoipa::path(post, path = "/api/v1/snapshots/import", request_body = crate::types::ImportRef,
    responses((status = 201, body = Snapshot), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
/// Imports a snapshot reference exported by a server over the same bucket.
pub async fn import_snapshot_ref(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Body400(req): Body400<crate::types::ImportRef>,
) -> ApiResult<(StatusCode, Json<Snapshot>)> {
    let name = req.volume.as_deref().map(volume_name).transpose()?;
    let snap = state
        .engine
        .import_snapshot_ref(&ns, &actor(&ns), &req.reference, name)
        .await?;
    Ok((StatusCode::CREATED, Json(snapshot_body(snap))))
}

#[utoipa::path(delete, path = "/api/v1/volumes/{name}/snapshots/{tag}", params(("name" = String, Path), ("tag" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_snapshot(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path((name, tag)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    state
        .engine
        .delete_snapshot(&ns, &actor(&ns), &volume_name(&name)?, &tag_name(&tag)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/volumes/{name}/snapshots/{tag}/fork", params(("name" = String, Path), ("tag" = String, Path)),
    request_body = ForkRequest,
    responses((status = 201, body = Volume), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody), (status = 412, body = crate::error::ErrorBody)))]
pub async fn fork(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path((name, tag)): Path<(String, String)>,
    Body400(req): Body400<ForkRequest>,
) -> ApiResult<(StatusCode, Json<Volume>)> {
    let new = volume_name(&req.name)?;
    let record = state
        .engine
        .fork(
            &ns,
            &actor(&ns),
            &volume_name(&name)?,
            &tag_name(&tag)?,
            &new,
            req.size,
            &labels(req.require_labels),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(fresh_volume_body(&state, record).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/volumes/{name}/clone", params(("name" = String, Path)), request_body = CloneRequest,
    responses((status = 201, body = Volume), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn clone_volume(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
    OptionalBody(req): OptionalBody<CloneRequest>,
) -> ApiResult<(StatusCode, Json<Volume>)> {
    let new = req.name.as_deref().map(volume_name).transpose()?;
    let record = state
        .engine
        .clone_volume(&ns, &actor(&ns), &volume_name(&name)?, new, req.size)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(fresh_volume_body(&state, record).await?),
    ))
}

#[utoipa::path(post, path = "/api/v1/volumes/{name}/rollback", params(("name" = String, Path)), request_body = RollbackRequest,
    responses((status = 200, body = Volume), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
pub async fn rollback(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
    Body400(req): Body400<RollbackRequest>,
) -> ApiResult<Json<Volume>> {
    let record = state
        .engine
        .rollback(&ns, &actor(&ns), &volume_name(&name)?, &tag_name(&req.tag)?)
        .await?;
    Ok(Json(volume_with_usage(&state, record).await?))
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}/snapshots/{tag}/diff", params(("name" = String, Path), ("tag" = String, Path), DiffQuery),
    responses((status = 200, body = Vec<Extent>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn diff(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path((name, tag)): Path<(String, String)>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<Json<Vec<Extent>>> {
    let name = volume_name(&name)?;
    let base = q.base.as_deref().map(tag_name).transpose()?;
    let extents = state
        .engine
        .diff(&ns, &name, &tag_name(&tag)?, base.as_ref().map(|b| (&name, b)))
        .await?;
    Ok(Json(
        extents
            .into_iter()
            .map(|r| Extent {
                offset: r.offset,
                length: r.length,
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/events", params(EventsQuery), responses((status = 200, body = EventList)))]
pub async fn events(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<EventList>> {
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let (since_seq, since_time) = match q.since.as_deref() {
        None | Some("") => (0, None),
        Some(s) => match s.parse::<u64>() {
            Ok(seq) => (seq, None),
            Err(_) => {
                let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                        ApiError::BadRequest(format!(
                            "since={s:?}: expected an RFC 3339 time or an event number"
                        ))
                    })?;
                (0, Some(t))
            }
        },
    };
    // Without a time filter or a tail the scan stops at `limit` matches.
    let scan = match (since_time, q.tail) {
        (None, None) => limit,
        _ => usize::MAX,
    };
    let mut events = state.engine.events(&ns, q.volume.as_deref(), since_seq, scan)?;
    if let Some(t) = since_time {
        events.retain(|e| e.time >= t);
    }
    if let Some(tail) = q.tail {
        events.drain(..events.len().saturating_sub(tail));
    }
    events.truncate(limit);
    Ok(Json(EventList {
        events: events.into_iter().map(event_body).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/usage", responses((status = 200, body = SpaceUsage)))]
/// Space figures of the caller's namespace and the last GC's report.
pub async fn space_usage(State(state): State<AppState>, Caller(ns): Caller) -> ApiResult<Json<SpaceUsage>> {
    let usage = state.engine.usage().await?;
    let mine = usage.namespaces.get(&ns).copied().unwrap_or_default();
    Ok(Json(SpaceUsage {
        namespace: ns.to_string(),
        volume_count: mine.volume_count,
        snapshot_count: mine.snapshot_count,
        logical_bytes: mine.logical_bytes,
        stored_bytes: mine.stored_bytes,
        saved_bytes: mine.logical_bytes.saturating_sub(mine.stored_bytes),
        dedup_ratio: mine.dedup_ratio(),
        last_gc: state.engine.last_gc(),
    }))
}

#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "This OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Ready", content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&state.engine).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[utoipa::path(post, path = "/api/v1/gc", request_body = GcRequest,
    responses((status = 200, body = cairn_api_types::GcReport), (status = 400, body = crate::error::ErrorBody),
        (status = 403, description = "not an admin token", body = crate::error::ErrorBody),
        (status = 409, description = "a garbage collection is already running", body = crate::error::ErrorBody)))]
pub async fn gc(
    State(state): State<AppState>,
    caller: Admin,
    OptionalBody(req): OptionalBody<GcRequest>,
) -> ApiResult<Json<cairn_api_types::GcReport>> {
    caller.require("garbage collection covers the whole store: it needs an admin token")?;
    let ns = caller.namespace;
    let mut options = cairn_store::GcOptions {
        dry_run: req.dry_run.unwrap_or(false),
        ..Default::default()
    };
    if let Some(grace) = req.grace_seconds {
        if grace > 10 * 365 * 24 * 3600 {
            return Err(ApiError::BadRequest(
                "grace_seconds is more than ten years".into(),
            ));
        }
        options.grace = std::time::Duration::from_secs(grace);
    }
    let report = state.engine.gc(&ns, &actor(&ns), options).await?;
    Ok(Json(report))
}

#[utoipa::path(post, path = "/api/v1/verify", request_body = VerifyRequest,
    responses((status = 200, body = cairn_api_types::VerifyReport), (status = 400, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Admin,
    OptionalBody(req): OptionalBody<VerifyRequest>,
) -> ApiResult<Json<cairn_api_types::VerifyReport>> {
    let volume = req.volume.as_deref().map(volume_name).transpose()?;
    let tag = req.tag.as_deref().map(tag_name).transpose()?;
    if tag.is_some() && volume.is_none() {
        return Err(ApiError::BadRequest("tag needs a volume".into()));
    }
    // An admin's scrub without a volume covers every namespace; anyone
    // else's covers their own.
    let report = if volume.is_none() && caller.admin {
        state.engine.verify_all().await?
    } else {
        state
            .engine
            .verify(&caller.namespace, volume.as_ref(), tag.as_ref())
            .await?
    };
    Ok(Json(report))
}
