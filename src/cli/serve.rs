//! `cairn serve`: its flags and the start of the server.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::serve::{serve, ServeConfig};
use crate::size::parse_size;

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Directory for the catalog, journal and (by default) objects.
    #[arg(long, env = "CAIRN_DATA_DIR", default_value = "./cairn-data")]
    data_dir: PathBuf,
    /// REST API address.
    #[arg(long, env = "CAIRN_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// NBD address: exports VOLUME (read-write) and VOLUME@TAG (read-only).
    /// Plain NBD has no authentication, so only loopback addresses are
    /// allowed unless --nbd-tls-psk is given.
    #[arg(long, env = "CAIRN_NBD_LISTEN", default_value = "127.0.0.1:10809")]
    nbd_listen: SocketAddr,
    /// NBD transmission I/O: io-uring, tokio (portable), or auto (io_uring
    /// where the kernel allows it, else tokio, logged).
    #[arg(long, env = "CAIRN_NBD_TRANSPORT", default_value = "auto")]
    nbd_transport: cairn_nbd_server::Transport,
    /// NBD connections open at once; more are closed as they arrive.
    #[arg(long, env = "CAIRN_NBD_MAX_CONNECTIONS", default_value_t = 256)]
    nbd_max_connections: usize,
    /// Time an NBD client has from connecting to choosing an export.
    #[arg(long, env = "CAIRN_NBD_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    nbd_handshake_timeout: std::time::Duration,
    /// Memory for NBD WRITE payloads held at once, all connections
    /// together; past it, writers wait (their sockets are not read).
    #[arg(long, env = "CAIRN_NBD_WRITE_BUFFER", default_value = "256M", value_parser = parse_size)]
    nbd_write_buffer: u64,
    /// Require NBD over TLS with pre-shared keys from FILE: lines
    /// `IDENTITY:HEXKEY` (psktool's format, e.g. `psktool -u alice -p
    /// keys.psk`). The identity is a namespace: a client sees and opens only
    /// that namespace's volumes. Clients: `nbds://alice@HOST/VOLUME?tls-psk-file=FILE`
    /// (libnbd) or qemu's `tls-creds-psk`.
    #[arg(long, env = "CAIRN_NBD_TLS_PSK", value_name = "FILE")]
    nbd_tls_psk: Option<PathBuf>,
    /// Object store URL: file:///path, memory:// or s3://bucket/prefix
    /// (default file://<data-dir>/objects). A local store keeps objects in
    /// pack files; file:///path?layout=files (or a directory that already
    /// holds that layout) keeps one file per object. S3 reads the standard
    /// AWS_* variables, plus AWS_ENDPOINT_URL and AWS_ALLOW_HTTP.
    #[arg(long, env = "CAIRN_OBJECT_STORE")]
    object_store: Option<String>,
    /// Chunk size of new volumes that do not choose one (power of two, 4K..4M).
    #[arg(long, env = "CAIRN_CHUNK_SIZE", default_value = "64K", value_parser = parse_size)]
    chunk_size: u64,
    /// Local disk for chunks of a remote (s3://) object store, under
    /// <data-dir>/cache; least recently used chunks are evicted past it
    /// (default: a quarter of the free space, at least 1G).
    #[arg(long, env = "CAIRN_CACHE_SIZE", value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Memory for decompressed chunks and decoded manifest nodes (an
    /// eighth, at least 8M, goes to nodes).
    #[arg(long, env = "CAIRN_MEMORY_CACHE_SIZE", default_value = "256M", value_parser = parse_size)]
    memory_cache_size: u64,
    /// Local disk per volume for acknowledged writes not yet in the object
    /// store (the write-back backlog: its log files). Sealing starts at half
    /// of it (or after 2s idle, or when the oldest write is a minute old),
    /// so rewrites of a chunk coalesce. Past it writers wait for sealing; when the
    /// object store is unreachable (a seal failed on it, or see
    /// --store-timeout) they get ENOSPC (NBD) or 503 (HTTP).
    #[arg(long, env = "CAIRN_BACKLOG_SIZE", default_value = "2G", value_parser = parse_size)]
    backlog_size: u64,
    /// Seal a volume's acknowledged writes into the object store once it
    /// has had no write for this long (e.g. 2s, 500ms, 1m).
    #[arg(long, env = "CAIRN_SEAL_IDLE", default_value = "2s", value_parser = humantime::parse_duration)]
    seal_idle: std::time::Duration,
    /// Longest wait for the object store. One upload or download, retries
    /// included, fails after this long (a request that needs it answers
    /// 503); a writer waiting for backlog room while the store answers no
    /// request for this long gets ENOSPC (NBD) or 503 (HTTP), and so do
    /// later ones until a seal succeeds. While the store answers, writers
    /// past the backlog are slowed down, never refused.
    #[arg(long, env = "CAIRN_STORE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    store_timeout: std::time::Duration,
    /// Token file: one `TOKEN NAMESPACE [admin]` per line (only admin
    /// tokens run GC and whole-store verify). Without it, everything is
    /// namespace `default` and only loopback addresses are allowed.
    #[arg(long, env = "CAIRN_TOKENS")]
    tokens: Option<PathBuf>,
}

/// Runs the server until Ctrl-C or SIGTERM.
pub(super) fn run(runtime: &tokio::runtime::Runtime, args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    runtime.block_on(serve(ServeConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        nbd_listen: args.nbd_listen,
        nbd: cairn_nbd_server::ServerConfig {
            transport: args.nbd_transport,
            max_connections: args.nbd_max_connections,
            handshake_timeout: args.nbd_handshake_timeout,
            tls: None,
            write_buffer: args.nbd_write_buffer as usize,
        },
        nbd_tls_psk: args.nbd_tls_psk,
        object_store: args.object_store,
        chunk_size: args.chunk_size,
        cache_size: args.cache_size,
        memory_cache_size: args.memory_cache_size,
        backlog_size: args.backlog_size,
        seal_idle: args.seal_idle,
        store_timeout: args.store_timeout,
        tokens: args.tokens,
    }))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
