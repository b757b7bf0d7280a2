//! The OpenAPI 3 document, generated from the handlers' annotations and
//! the request/response types.

use utoipa::OpenApi;

use crate::handlers;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cairn",
        description = "Content-addressed block storage: volumes, snapshots, forks, clones, rollbacks."
    ),
    paths(
        handlers::create_volume,
        handlers::gc,
        handlers::gc_status,
        handlers::verify,
        handlers::list_volumes,
        handlers::show_volume,
        handlers::resize_volume,
        handlers::delete_volume,
        handlers::put_data,
        handlers::get_data,
        handlers::get_chunks,
        handlers::create_snapshot,
        handlers::list_volume_snapshots,
        handlers::list_snapshots,
        handlers::show_snapshot,
        handlers::delete_snapshot,
        handlers::snapshot_ref,
        handlers::import_snapshot_ref,
        handlers::get_snapshot_data,
        handlers::get_snapshot_chunks,
        handlers::get_map,
        handlers::get_snapshot_map,
        handlers::fork,
        handlers::clone_volume,
        handlers::rollback,
        handlers::warm_volume,
        handlers::repair_volume,
        handlers::diff,
        handlers::events,
        handlers::space_usage,
        handlers::openapi,
        handlers::healthz,
        handlers::metrics,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail))
)]
struct ApiDoc;

/// The OpenAPI document as JSON text.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
}
