//! The wire types of cairn's REST API: request and response bodies, the
//! reports the store produces (GC, scrub, hydration, snapshot references)
//! and their OpenAPI schemas.
//!
//! Plain data with serde and utoipa derives and nothing else, so that the
//! CLI (and any other client in Rust) speaks the API without linking the
//! storage engine, and the server, the CLI and the OpenAPI document cannot
//! disagree about a field.

mod bodies;
pub mod chunks;
mod reports;

pub use bodies::*;
pub use reports::*;
