//! A volume's or a snapshot's raw bytes, streamed in and out.

use super::*;
use cairn_api_types::chunks::CHUNKS_CONTENT_TYPE;

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
    let (record, bytes, created) = state
        .engine
        .import(&ns, &actor(&ns), &name, stream, size, offset, &|_| {})
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

/// The range `q` asks for of `source`, checked: `(offset, length)`.
fn range_of(source: &cairn_store::Readable, q: &GetDataQuery) -> ApiResult<(u64, u64)> {
    let size = source.size();
    let offset = q.offset.unwrap_or(0);
    let length = q.length.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(StoreError::OutOfRange { offset, length, size }.into());
    }
    Ok((offset, length))
}

fn data_response(state: &AppState, source: cairn_store::Readable, q: GetDataQuery) -> ApiResult<Response> {
    let (offset, length) = range_of(&source, &q)?;
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

/// Runs one map answer holds at most: a longer map ends early, and the
/// client asks again from where it ends.
const MAP_MAX_RUNS: usize = 65_536;
/// Bytes mapped per step, so the runs held at once stay bounded.
const MAP_STEP: u64 = 1 << 30;
/// Bytes one map answer covers at most: mapping visits every chunk of the
/// range, and a sparse volume of petabytes is one zero run that would
/// keep a request busy for hours. A longer map ends early here too.
const MAP_MAX_BYTES: u64 = 16 * MAP_STEP;

/// Data and zero runs of `[offset, +length)` of `source`, adjacent runs of
/// one kind merged, in order and without gaps from `offset`; it ends early
/// after [`MAP_MAX_RUNS`] runs or [`MAP_MAX_BYTES`] bytes.
async fn map_of(
    state: &AppState,
    source: &cairn_store::Readable,
    q: GetDataQuery,
) -> ApiResult<Vec<MapExtent>> {
    let size = source.size();
    let offset = q.offset.unwrap_or(0);
    let length = q.length.unwrap_or(size.saturating_sub(offset));
    let end = match offset.checked_add(length) {
        Some(end) if end <= size => end,
        _ => return Err(StoreError::OutOfRange { offset, length, size }.into()),
    };
    let mut runs: Vec<MapExtent> = Vec::new();
    let mut pos = offset;
    'steps: while pos < end && pos - offset < MAP_MAX_BYTES {
        let step = (end - pos).min(MAP_STEP);
        for (length, zero) in state.engine.allocation(source, pos, step).await? {
            let full = runs.len() == MAP_MAX_RUNS;
            match runs.last_mut() {
                Some(last) if last.zero == zero => last.length += length,
                _ if full => break 'steps,
                _ => runs.push(MapExtent {
                    offset: pos,
                    length,
                    zero,
                }),
            }
            pos += length;
        }
    }
    Ok(runs)
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}/map", params(("name" = String, Path), GetDataQuery),
    responses((status = 200, body = Vec<MapExtent>), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
/// Which runs of a volume hold data and which read as zeros (chunk
/// granularity; dirty data counts as data). Exports skip the zero runs.
pub async fn get_map(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
    Query(q): Query<GetDataQuery>,
) -> ApiResult<Json<Vec<MapExtent>>> {
    let source = state.engine.readable(&ns, &volume_name(&name)?, None)?;
    Ok(Json(map_of(&state, &source, q).await?))
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}/snapshots/{tag}/map", params(("name" = String, Path), ("tag" = String, Path), GetDataQuery),
    responses((status = 200, body = Vec<MapExtent>), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
/// [`get_map`] of a snapshot.
pub async fn get_snapshot_map(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path((name, tag)): Path<(String, String)>,
    Query(q): Query<GetDataQuery>,
) -> ApiResult<Json<Vec<MapExtent>>> {
    let name = volume_name(&name)?;
    let tag = tag_name(&tag)?;
    let source = state.engine.readable(&ns, &name, Some(&tag))?;
    Ok(Json(map_of(&state, &source, q).await?))
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
    data_response(&state, source, q)
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
    let source = state.engine.readable(&ns, &name, Some(&tag))?;
    data_response(&state, source, q)
}

fn chunks_response(state: &AppState, source: cairn_store::Readable, q: GetDataQuery) -> ApiResult<Response> {
    let (offset, length) = range_of(&source, &q)?;
    let body = chunks_body(state.engine.clone(), source, offset, length);
    Ok(([(header::CONTENT_TYPE, CHUNKS_CONTENT_TYPE)], body).into_response())
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}/chunks", params(("name" = String, Path), GetDataQuery),
    responses((status = 200, content_type = "application/vnd.cairn.chunks", body = Vec<u8>), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
/// A volume range as chunk records: zero chunks as lengths, clean chunks
/// as their stored (compressed) frames for the client to decode and check,
/// the rest as plain bytes. `cairn export` reads this: about a third of the
/// bytes of `/data` move, and the client does the decompression.
pub async fn get_chunks(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path(name): Path<String>,
    Query(q): Query<GetDataQuery>,
) -> ApiResult<Response> {
    let source = state.engine.readable(&ns, &volume_name(&name)?, None)?;
    chunks_response(&state, source, q)
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}/snapshots/{tag}/chunks", params(("name" = String, Path), ("tag" = String, Path), GetDataQuery),
    responses((status = 200, content_type = "application/vnd.cairn.chunks", body = Vec<u8>), (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
/// [`get_chunks`] of a snapshot.
pub async fn get_snapshot_chunks(
    State(state): State<AppState>,
    Caller(ns): Caller,
    Path((name, tag)): Path<(String, String)>,
    Query(q): Query<GetDataQuery>,
) -> ApiResult<Response> {
    let name = volume_name(&name)?;
    let tag = tag_name(&tag)?;
    let source = state.engine.readable(&ns, &name, Some(&tag))?;
    chunks_response(&state, source, q)
}
