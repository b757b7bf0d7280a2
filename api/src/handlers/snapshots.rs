//! Snapshots and what is made of them: forks, clones, rollbacks, diffs, references.

use super::*;

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
