//! Serves one RAM disk over NBD with cairn's protocol layer and nothing
//! else: the protocol's own ceiling, to compare with `nbdkit memory`.
//!
//! `cargo run --release -p cairn-nbd-server --example memory_server -- 127.0.0.1:10900 1G`

use std::sync::Arc;

use cairn_nbd_server::memory::MemoryExports;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:10900".into());
    let size = args.next().unwrap_or_else(|| "1G".into());
    let bytes = match size.strip_suffix('G') {
        Some(g) => g.parse::<u64>().map(|g| g << 30),
        None => size
            .strip_suffix('M')
            .unwrap_or(&size)
            .parse::<u64>()
            .map(|m| m << 20),
    }
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("size {size:?}: {e}")))?;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("serving a {bytes}-byte RAM disk as export \"mem\" on {addr}");
    cairn_nbd_server::serve(listener, Arc::new(MemoryExports::new("mem", bytes))).await
}
