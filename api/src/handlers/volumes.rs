//! Volumes: create, list, show, resize, delete, warm, repair.

use super::*;

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
        .map(|r| body_with_usage(&state, &usage, r))
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
