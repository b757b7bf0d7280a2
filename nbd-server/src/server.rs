//! Connections: accepting, the handshake's course (plain or through
//! STARTTLS, see [`crate::handshake`] for the options), transmission, and
//! the request logic both transports share.
//!
//! Transport: tokio sockets (portable). Each connection reads requests in
//! order and runs up to [`MAX_IN_FLIGHT`] at once; replies are written as
//! requests complete (out of order, as the protocol allows), each reply
//! whole under a writer lock. A malformed header closes the connection; a
//! bad request gets an errno and the connection goes on.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::bridge::BridgedTls;
use crate::budget::WriteBudget;
use crate::device::{BlockDevice, DeviceError, Exports};
use crate::handshake::{haggle, open, Opened, Session, TlsState};
use crate::proto::{self, cflag, chunk, cmd, errno, Request};
use crate::tls::TlsPsk;

/// Requests served at once per connection.
pub const MAX_IN_FLIGHT: usize = 64;
/// Largest READ or WRITE payload accepted (32 MiB, as qemu and the kernel use).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Default [`ServerConfig::write_buffer`].
pub const DEFAULT_WRITE_BUFFER: usize = 256 << 20;
/// Id of the only metadata context served (`base:allocation`).
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Transmission I/O.
    pub transport: Transport,
    /// Connections open at once; more are closed as they arrive (logged).
    pub max_connections: usize,
    /// Time a client has from connecting to choosing an export; then it is
    /// closed, so half-open or idle handshakes cannot pile up.
    pub handshake_timeout: std::time::Duration,
    /// TLS-PSK: when set, every client must STARTTLS first and sees only
    /// the exports of its identity ([`Exports::scoped`]).
    pub tls: Option<Arc<TlsPsk>>,
    /// Bytes of WRITE payloads held at once, all connections together;
    /// writers past it wait.
    pub write_buffer: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            transport: Transport::Auto,
            max_connections: 256,
            handshake_timeout: std::time::Duration::from_secs(10),
            tls: None,
            write_buffer: DEFAULT_WRITE_BUFFER,
        }
    }
}

/// How transmission-phase I/O is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// io_uring where the kernel allows it, else tokio (logged at start).
    Auto,
    /// io_uring or fail.
    IoUring,
    /// tokio's portable sockets.
    Tokio,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Transport::Auto),
            "io-uring" | "io_uring" => Ok(Transport::IoUring),
            "tokio" => Ok(Transport::Tokio),
            _ => Err(format!("unknown transport {s:?} (auto, io-uring, tokio)")),
        }
    }
}

/// Resolves `Auto` by probing the kernel; says why io_uring is not used.
pub fn choose_transport(wanted: Transport) -> std::io::Result<Transport> {
    match (wanted, crate::uring::probe()) {
        (Transport::Tokio, _) => Ok(Transport::Tokio),
        (_, Ok(())) => Ok(Transport::IoUring),
        (Transport::IoUring, Err(e)) => Err(std::io::Error::new(
            e.kind(),
            format!("io_uring requested but unavailable: {e}"),
        )),
        (Transport::Auto, Err(e)) => {
            tracing::warn!(error = %e, "io_uring unavailable; NBD falls back to the portable tokio transport");
            Ok(Transport::Tokio)
        }
    }
}

/// Accepts connections forever, serving transmission with `transport`
/// (resolve `Auto` with [`choose_transport`] first; `Auto` here probes).
pub async fn serve(listener: TcpListener, exports: Arc<dyn Exports>) -> std::io::Result<()> {
    serve_with(listener, exports, Transport::Auto).await
}

/// [`serve`] with an explicit transport and default limits.
pub async fn serve_with(
    listener: TcpListener,
    exports: Arc<dyn Exports>,
    transport: Transport,
) -> std::io::Result<()> {
    let config = ServerConfig {
        transport,
        ..ServerConfig::default()
    };
    serve_config(listener, exports, config).await
}

/// [`serve`] with every setting explicit.
pub async fn serve_config(
    listener: TcpListener,
    exports: Arc<dyn Exports>,
    config: ServerConfig,
) -> std::io::Result<()> {
    let transport = choose_transport(config.transport)?;
    tracing::info!(
        addr = %listener.local_addr()?,
        transport = ?transport,
        max_connections = config.max_connections,
        handshake_timeout_ms = config.handshake_timeout.as_millis() as u64,
        write_buffer_mib = config.write_buffer >> 20,
        tls = match &config.tls {
            Some(tls) => format!("required (PSK, {} identities)", tls.identities().len()),
            None => "off".to_string(),
        },
        "NBD server listening"
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let budget = WriteBudget::new(config.write_buffer);
    loop {
        let (socket, peer) = listener.accept().await?;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = config.max_connections, "NBD connection refused: too many open connections");
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let exports = exports.clone();
        let timeout = config.handshake_timeout;
        let tls = config.tls.clone();
        let budget = budget.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match connection(socket, exports, transport, timeout, tls, budget).await {
                Ok(()) => tracing::debug!(%peer, "NBD client done"),
                Err(e) => tracing::info!(%peer, error = %e, "NBD connection closed"),
            }
        });
    }
}

/// One TCP connection: handshake on tokio, transmission on `transport`
/// (over TLS too: the ring thread takes the TLS session along).
async fn connection(
    mut socket: TcpStream,
    exports: Arc<dyn Exports>,
    transport: Transport,
    handshake_timeout: std::time::Duration,
    tls: Option<Arc<TlsPsk>>,
    budget: Arc<WriteBudget>,
) -> std::io::Result<()> {
    let deadline = Deadline::after(handshake_timeout);
    let mut session = Session::new(tls.is_some(), budget);
    match deadline
        .bound(open(&mut socket, exports.as_ref(), &mut session))
        .await?
    {
        Opened::Go(name, conn) => {
            attached(exports.as_ref(), &name, &conn, async {
                if transport == Transport::IoUring {
                    let std_socket = socket.into_std()?;
                    crate::uring::transmit(std_socket, conn.clone()).await
                } else {
                    let (reader, writer) = socket.into_split();
                    crate::portable::transmit(reader, writer, conn.clone()).await
                }
            })
            .await
        }
        Opened::StartTls => {
            let tls = tls.expect("STARTTLS is accepted only when TLS is configured");
            let (exports, name, conn, stream) = secure(socket, exports, &tls, session, deadline).await?;
            attached(exports.as_ref(), &name, &conn, async {
                if transport == Transport::IoUring {
                    let (session, socket) = stream.into_parts();
                    crate::uring::transmit_tls(socket.into_std()?, session, conn.clone()).await
                } else {
                    let (reader, writer) = tokio::io::split(stream);
                    crate::portable::transmit(reader, writer, conn.clone()).await
                }
            })
            .await
        }
    }
}

/// Runs one connection on any byte stream, with the portable transport
/// (tests and the fuzz target use it on in-memory streams).
pub async fn handle<R, W>(reader: R, writer: W, exports: Arc<dyn Exports>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    handle_tls(reader, writer, exports, None).await
}

/// [`handle`], requiring TLS first when `tls` is given.
pub async fn handle_tls<R, W>(
    reader: R,
    writer: W,
    exports: Arc<dyn Exports>,
    tls: Option<Arc<TlsPsk>>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut stream = tokio::io::join(reader, writer);
    let mut session = Session::new(tls.is_some(), WriteBudget::new(DEFAULT_WRITE_BUFFER));
    match open(&mut stream, exports.as_ref(), &mut session).await? {
        Opened::Go(name, conn) => {
            let (reader, writer) = stream.into_inner();
            portable(exports.as_ref(), &name, conn, reader, writer).await
        }
        Opened::StartTls => {
            let tls = tls.expect("STARTTLS is accepted only when TLS is configured");
            let (exports, name, conn, stream) =
                secure(stream, exports, &tls, session, Deadline::never()).await?;
            let (reader, writer) = tokio::io::split(stream);
            portable(exports.as_ref(), &name, conn, reader, writer).await
        }
    }
}

/// Transmission on the portable transport, the export attached meanwhile.
async fn portable<R, W>(
    exports: &dyn Exports,
    name: &str,
    conn: Arc<Connection>,
    reader: R,
    writer: W,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    attached(
        exports,
        name,
        &conn,
        crate::portable::transmit(reader, writer, conn.clone()),
    )
    .await
}

/// After STARTTLS: the TLS handshake, then option haggling over TLS with
/// the exports of the client's identity. Returns those exports, the export
/// chosen and the TLS stream, ready for transmission.
async fn secure<S>(
    stream: S,
    exports: Arc<dyn Exports>,
    tls: &TlsPsk,
    mut session: Session,
    deadline: Deadline,
) -> std::io::Result<(Arc<dyn Exports>, String, Arc<Connection>, BridgedTls<S>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut stream, identity) = deadline.bound(tls.accept(stream)).await?;
    let Some(exports) = exports.scoped(&identity) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("TLS identity {identity:?} names no namespace"),
        ));
    };
    session.tls = TlsState::Done;
    let Opened::Go(name, conn) = deadline
        .bound(haggle(&mut stream, exports.as_ref(), &mut session))
        .await?
    else {
        unreachable!("a second STARTTLS is refused");
    };
    // Everything haggling wrote is on the wire before transmission starts.
    stream.flush().await?;
    tracing::debug!(identity, export = name, "NBD client opened an export over TLS");
    Ok((exports, name, conn, stream))
}

/// When the handshake must be over.
#[derive(Clone, Copy)]
struct Deadline(Option<(tokio::time::Instant, std::time::Duration)>);

impl Deadline {
    fn after(timeout: std::time::Duration) -> Self {
        Self(Some((tokio::time::Instant::now() + timeout, timeout)))
    }

    fn never() -> Self {
        Self(None)
    }

    async fn bound<T>(
        self,
        step: impl std::future::Future<Output = std::io::Result<T>>,
    ) -> std::io::Result<T> {
        let Some((at, timeout)) = self.0 else {
            return step.await;
        };
        tokio::time::timeout_at(at, step).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no export chosen within the handshake timeout ({timeout:?})"),
            )
        })?
    }
}

/// Runs `transmission`, with the export marked attached meanwhile when it
/// is writable.
async fn attached(
    exports: &dyn Exports,
    name: &str,
    conn: &Connection,
    transmission: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    let rw = !conn.device.read_only();
    if rw {
        exports.attached(name, true).await;
    }
    let result = transmission.await;
    if rw {
        exports.attached(name, false).await;
    }
    result
}

pub(crate) fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// What a connection in transmission shares with its requests.
pub(crate) struct Connection {
    pub device: Arc<dyn BlockDevice>,
    pub structured: bool,
    pub meta_allocation: bool,
    /// The server's memory for WRITE payloads ([`crate::budget`]).
    pub budget: Arc<WriteBudget>,
}

/// [`execute`], with a panic turned into an EIO reply: the second value
/// says the request panicked, and then its connection is closed (after
/// that reply) while the server and its other connections go on.
pub(crate) async fn execute_guarded(
    req: Request,
    payload: Option<Vec<u8>>,
    conn: &Connection,
) -> (Vec<u8>, bool) {
    use futures::FutureExt;
    let (cookie, kind, offset) = (req.cookie, req.kind, req.offset);
    match std::panic::AssertUnwindSafe(execute(req, payload, conn))
        .catch_unwind()
        .await
    {
        Ok(reply) => (reply, false),
        Err(_) => {
            tracing::error!(
                cookie,
                kind,
                offset,
                "NBD request panicked: answering EIO and closing its connection"
            );
            let reply = error_reply(
                conn.structured,
                cookie,
                errno::EIO,
                "internal error: the request panicked",
            );
            (reply, true)
        }
    }
}

/// Checks a request header before its payload is read. An error means the
/// stream cannot be trusted any more (the caller replies, if it can, and
/// closes).
pub(crate) fn admit(req: &Request) -> Result<(), (u32, &'static str)> {
    if req.kind == cmd::WRITE && req.length > MAX_PAYLOAD {
        return Err((errno::EOVERFLOW, "write payload too large"));
    }
    Ok(())
}

fn check_range(device: &dyn BlockDevice, req: &Request) -> Result<(), DeviceError> {
    let end = req.offset.checked_add(req.length as u64);
    if end.is_none_or(|end| end > device.size()) {
        return Err(DeviceError {
            errno: if req.kind == cmd::WRITE || req.kind == cmd::WRITE_ZEROES {
                errno::ENOSPC
            } else {
                errno::EINVAL
            },
            message: format!(
                "request {}+{} beyond export size {}",
                req.offset,
                req.length,
                device.size()
            ),
        });
    }
    Ok(())
}

/// Bytes before a READ's data in its reply.
fn read_header_len(structured: bool) -> usize {
    if structured {
        20 + 8
    } else {
        16
    }
}

/// Serves one request and returns its whole reply, ready to send. READ
/// data is read straight into the reply buffer after its header.
pub(crate) async fn execute(req: Request, payload: Option<Vec<u8>>, conn: &Connection) -> Vec<u8> {
    let device = conn.device.as_ref();
    let fua = req.flags & cflag::FUA != 0;
    let result: Result<Vec<u8>, DeviceError> = async {
        let writes = matches!(req.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
        if writes && device.read_only() {
            return Err(DeviceError {
                errno: errno::EPERM,
                message: "export is read-only".into(),
            });
        }
        match req.kind {
            cmd::READ => {
                if req.length > MAX_PAYLOAD {
                    return Err(DeviceError {
                        errno: errno::EOVERFLOW,
                        message: "read too large".into(),
                    });
                }
                check_range(device, &req)?;
                let (mut reply, at) = read_reply(conn.structured, &req);
                device.read(req.offset, &mut reply[at..]).await?;
                Ok(reply)
            }
            cmd::WRITE => {
                check_range(device, &req)?;
                device
                    .write(req.offset, bytes::Bytes::from(payload.unwrap_or_default()), fua)
                    .await?;
                Ok(done_reply(conn.structured, req.cookie))
            }
            cmd::TRIM | cmd::WRITE_ZEROES => {
                check_range(device, &req)?;
                device.write_zeroes(req.offset, req.length as u64, fua).await?;
                Ok(done_reply(conn.structured, req.cookie))
            }
            cmd::FLUSH => {
                device.flush().await?;
                Ok(done_reply(conn.structured, req.cookie))
            }
            cmd::CACHE => {
                check_range(device, &req)?;
                Ok(done_reply(conn.structured, req.cookie))
            }
            cmd::BLOCK_STATUS => {
                if !conn.structured || !conn.meta_allocation {
                    return Err(DeviceError {
                        errno: errno::EINVAL,
                        message: "no metadata context negotiated".into(),
                    });
                }
                check_range(device, &req)?;
                if req.length == 0 {
                    return Err(DeviceError {
                        errno: errno::EINVAL,
                        message: "zero-length block status".into(),
                    });
                }
                let mut extents = device.extents(req.offset, req.length as u64).await?;
                if req.flags & cflag::REQ_ONE != 0 {
                    extents.truncate(1);
                }
                let mut body = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                for e in extents {
                    let flags = if e.hole {
                        proto::STATE_HOLE | proto::STATE_ZERO
                    } else {
                        0
                    };
                    body.extend_from_slice(&(e.length.min(u32::MAX as u64) as u32).to_be_bytes());
                    body.extend_from_slice(&flags.to_be_bytes());
                }
                let mut reply = proto::structured_header(
                    chunk::FLAG_DONE,
                    chunk::BLOCK_STATUS,
                    req.cookie,
                    body.len() as u32,
                )
                .to_vec();
                reply.extend_from_slice(&body);
                Ok(reply)
            }
            _ => Err(DeviceError {
                errno: errno::EINVAL,
                message: format!("unknown command {}", req.kind),
            }),
        }
    }
    .await;
    match result {
        Ok(reply) => reply,
        Err(e) => {
            tracing::debug!(cookie = req.cookie, kind = req.kind, errno = e.errno, error = %e.message, "request failed");
            error_reply(conn.structured, req.cookie, e.errno, &e.message)
        }
    }
}

/// A READ's reply buffer with its header filled in, and where the data goes.
fn read_reply(structured: bool, req: &Request) -> (Vec<u8>, usize) {
    let at = read_header_len(structured);
    let mut reply = vec![0u8; at + req.length as usize];
    if structured {
        reply[..20].copy_from_slice(&proto::structured_header(
            chunk::FLAG_DONE,
            chunk::OFFSET_DATA,
            req.cookie,
            8 + req.length,
        ));
        reply[20..28].copy_from_slice(&req.offset.to_be_bytes());
    } else {
        reply[..16].copy_from_slice(&proto::simple_reply(0, req.cookie));
    }
    (reply, at)
}

/// READs up to this size are tried inline (cached data) by the io_uring
/// transport before being handed to the runtime.
pub(crate) const INLINE_READ_MAX: u32 = 256 << 10;

/// Answers a READ at once when the device has the data cached; `None`
/// when it must go through [`execute`].
pub(crate) fn try_execute_read(req: &Request, conn: &Connection) -> Option<Vec<u8>> {
    if req.kind != cmd::READ || req.length > INLINE_READ_MAX || req.length == 0 {
        return None;
    }
    let device = conn.device.as_ref();
    check_range(device, req).ok()?;
    let (mut reply, at) = read_reply(conn.structured, req);
    match device.try_read(req.offset, &mut reply[at..])? {
        Ok(()) => Some(reply),
        Err(e) => Some(error_reply(conn.structured, req.cookie, e.errno, &e.message)),
    }
}

/// Answers a WRITE at once when the device takes it without waiting;
/// `None` when it must go through [`execute`] (which also answers every
/// refusal: read-only export, out of range, FUA).
pub(crate) fn try_execute_write(req: &Request, payload: &[u8], conn: &Connection) -> Option<Vec<u8>> {
    let device = conn.device.as_ref();
    if req.kind != cmd::WRITE || req.flags & cflag::FUA != 0 || device.read_only() {
        return None;
    }
    check_range(device, req).ok()?;
    match device.try_write(req.offset, payload)? {
        Ok(()) => Some(done_reply(conn.structured, req.cookie)),
        Err(e) => Some(error_reply(conn.structured, req.cookie, e.errno, &e.message)),
    }
}

/// Success without data.
fn done_reply(structured: bool, cookie: u64) -> Vec<u8> {
    if structured {
        proto::structured_header(chunk::FLAG_DONE, chunk::NONE, cookie, 0).to_vec()
    } else {
        proto::simple_reply(0, cookie).to_vec()
    }
}

/// An error reply (with the message when replies are structured).
pub(crate) fn error_reply(structured: bool, cookie: u64, error: u32, message: &str) -> Vec<u8> {
    if structured {
        proto::structured_error(cookie, error, message)
    } else {
        proto::simple_reply(error, cookie).to_vec()
    }
}
