//! The OpenAPI document: valid OpenAPI 3 and covering every route of the
//! interface table.

mod common;

use common::*;

#[test]
fn openapi_documents_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let (code, body) = server.http("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let table = [
        ("post", "/api/v1/volumes"),
        ("get", "/api/v1/volumes"),
        ("get", "/api/v1/volumes/{name}"),
        ("patch", "/api/v1/volumes/{name}"),
        ("delete", "/api/v1/volumes/{name}"),
        ("put", "/api/v1/volumes/{name}/data"),
        ("get", "/api/v1/volumes/{name}/data"),
        ("post", "/api/v1/volumes/{name}/snapshots"),
        ("get", "/api/v1/volumes/{name}/snapshots"),
        ("get", "/api/v1/snapshots"),
        ("get", "/api/v1/volumes/{name}/snapshots/{tag}"),
        ("delete", "/api/v1/volumes/{name}/snapshots/{tag}"),
        ("get", "/api/v1/volumes/{name}/snapshots/{tag}/data"),
        ("post", "/api/v1/volumes/{name}/snapshots/{tag}/fork"),
        ("post", "/api/v1/volumes/{name}/clone"),
        ("post", "/api/v1/volumes/{name}/rollback"),
        ("get", "/api/v1/volumes/{name}/snapshots/{tag}/diff"),
        ("get", "/api/v1/events"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/healthz"),
        ("get", "/metrics"),
    ];
    for (method, path) in table {
        let op = &doc["paths"][path][method];
        assert!(
            op.is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
        assert!(op["responses"].is_object(), "{method} {path} has no responses");
    }
    // Schemas referenced by operations exist.
    for schema in [
        "Volume",
        "Snapshot",
        "CreateVolume",
        "ForkRequest",
        "ErrorBody",
        "Extent",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
}
