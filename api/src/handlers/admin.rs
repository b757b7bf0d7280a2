//! The audit log, space usage, GC, verify, and the documents outside `/api/v1`.

use super::*;

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
    let events =
        state
            .engine
            .events_matching(&ns, q.volume.as_deref(), since_seq, since_time, limit, q.tail)?;
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

#[utoipa::path(get, path = "/api/v1/gc",
    responses((status = 200, body = cairn_api_types::GcStatus),
        (status = 403, description = "not an admin token", body = crate::error::ErrorBody)))]
/// The garbage collection in progress (phase and counters), if any, and the
/// last one's report.
pub async fn gc_status(
    State(state): State<AppState>,
    caller: Admin,
) -> ApiResult<Json<cairn_api_types::GcStatus>> {
    caller.require("garbage collection covers the whole store: it needs an admin token")?;
    Ok(Json(cairn_api_types::GcStatus {
        running: state.engine.gc_progress(),
        last: state.engine.last_gc(),
    }))
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
