//! cairn's NBD server: the protocol (fixed newstyle handshake, INFO/GO/
//! LIST/ABORT/EXPORT_NAME, structured replies, `base:allocation`
//! metadata, READ/WRITE/FLUSH/TRIM/WRITE_ZEROES/BLOCK_STATUS/DISC with
//! FUA, STARTTLS with pre-shared keys) over a [`BlockDevice`] trait. It knows nothing of cairn's store.
//!
//! [`proto`] holds the wire formats as pure functions; [`server`] runs
//! connections: requests are read in order, served concurrently (bounded
//! per connection) and answered as they complete.

mod bridge;
mod budget;
pub mod device;
mod handshake;
pub mod memory;
mod portable;
pub mod proto;
pub mod server;
pub mod tls;
mod uring;

pub use device::{BlockDevice, DeviceError, Exports, Extent};
pub use server::{choose_transport, serve, serve_config, serve_with, ServerConfig, Transport};
pub use tls::{TlsError, TlsPsk};
