//! The handshake's options: the greeting, then option haggling (INFO, GO,
//! LIST, EXPORT_NAME, ABORT, STRUCTURED_REPLY, LIST/SET_META_CONTEXT,
//! STARTTLS), with TLS required first when the server is configured for it.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::budget::WriteBudget;
use crate::device::{BlockDevice, Exports};
use crate::proto::{self, opt, rep, tflag};
use crate::server::{invalid, Connection, BASE_ALLOCATION_ID, MAX_PAYLOAD};

/// Largest option payload accepted during the handshake.
const MAX_OPTION: u32 = 64 << 10;
/// The only metadata context served.
const BASE_ALLOCATION: &str = "base:allocation";

/// Where TLS stands on a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsState {
    /// Not offered: STARTTLS is refused.
    Off,
    /// Required and not yet started: only STARTTLS and ABORT are served.
    Required,
    /// Running.
    Done,
}

pub(crate) struct Session {
    no_zeroes: bool,
    structured: bool,
    meta_allocation: bool,
    budget: Arc<WriteBudget>,
    pub(crate) tls: TlsState,
}

impl Session {
    pub(crate) fn new(tls_required: bool, budget: Arc<WriteBudget>) -> Self {
        Self {
            budget,
            no_zeroes: false,
            structured: false,
            meta_allocation: false,
            tls: if tls_required {
                TlsState::Required
            } else {
                TlsState::Off
            },
        }
    }
}

/// How option haggling ended.
pub(crate) enum Opened {
    /// Transmission on this export.
    Go(String, Arc<Connection>),
    /// The client asked for TLS and was told yes: the TLS handshake is next.
    StartTls,
}

/// The greeting, then option haggling.
pub(crate) async fn open<S>(
    io: &mut S,
    exports: &dyn Exports,
    session: &mut Session,
) -> std::io::Result<Opened>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&proto::NBD_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    io.write_all(&greeting).await?;
    let client_flags = io.read_u32().await?;
    if client_flags & proto::CLIENT_FIXED_NEWSTYLE == 0 {
        return Err(invalid("client does not speak fixed newstyle"));
    }
    session.no_zeroes = client_flags & proto::CLIENT_NO_ZEROES != 0;
    haggle(io, exports, session).await
}

/// Option haggling: returns the export chosen or STARTTLS, or an error
/// (the connection closes).
pub(crate) async fn haggle<S>(
    io: &mut S,
    exports: &dyn Exports,
    session: &mut Session,
) -> std::io::Result<Opened>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        // Every reply so far is on the wire before waiting for the client
        // (a TLS stream may hold records back until flushed).
        io.flush().await?;
        let mut header = [0u8; 16];
        io.read_exact(&mut header).await?;
        let (option, len) = proto::parse_option_header(&header).map_err(|e| invalid(&e.to_string()))?;
        if len > MAX_OPTION {
            // Too big to read: refuse and close, as the spec allows.
            io.write_all(&proto::option_reply(
                option,
                rep::ERR_TOO_BIG,
                b"option too large",
            ))
            .await?;
            return Err(invalid("option too large"));
        }
        let mut data = vec![0u8; len as usize];
        io.read_exact(&mut data).await?;
        match negotiate(option, &data, session, io, exports).await? {
            Step::Next => {}
            Step::StartTls => return Ok(Opened::StartTls),
            Step::Go(name, device) => {
                let conn = Connection {
                    device,
                    structured: session.structured,
                    meta_allocation: session.meta_allocation,
                    budget: session.budget.clone(),
                };
                return Ok(Opened::Go(name, Arc::new(conn)));
            }
        }
    }
}

fn transmission_flags(device: &dyn BlockDevice) -> u16 {
    let mut flags =
        tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::CAN_MULTI_CONN | tflag::SEND_DF;
    if device.read_only() {
        flags |= tflag::READ_ONLY;
    } else {
        flags |= tflag::SEND_TRIM | tflag::SEND_WRITE_ZEROES;
    }
    flags
}

/// Handles one option; returns the export when transmission starts.
async fn negotiate<W: AsyncWrite + Unpin>(
    option: u32,
    data: &[u8],
    session: &mut Session,
    w: &mut W,
    exports: &dyn Exports,
) -> std::io::Result<Step> {
    if session.tls == TlsState::Required {
        return match option {
            opt::STARTTLS | opt::ABORT => negotiate_plain(option, data, session, w, exports).await,
            // EXPORT_NAME has no error reply: closing is the answer.
            opt::EXPORT_NAME => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "TLS required: the client chose an export without NBD_OPT_STARTTLS",
            )),
            _ => {
                refuse(
                    w,
                    option,
                    rep::ERR_TLS_REQD,
                    b"TLS required: send NBD_OPT_STARTTLS first",
                )
                .await
            }
        };
    }
    negotiate_plain(option, data, session, w, exports).await
}

/// [`negotiate`] once TLS is settled (or not offered).
async fn negotiate_plain<W: AsyncWrite + Unpin>(
    option: u32,
    data: &[u8],
    session: &mut Session,
    w: &mut W,
    exports: &dyn Exports,
) -> std::io::Result<Step> {
    match option {
        opt::EXPORT_NAME => {
            let name = String::from_utf8_lossy(data).into_owned();
            let Some(device) = exports.open(&name).await else {
                // EXPORT_NAME has no error reply: closing is the answer.
                return Err(invalid(&format!("unknown export {name:?}")));
            };
            let mut out = Vec::with_capacity(134);
            out.extend_from_slice(&device.size().to_be_bytes());
            out.extend_from_slice(&transmission_flags(device.as_ref()).to_be_bytes());
            if !session.no_zeroes {
                out.extend_from_slice(&[0u8; 124]);
            }
            w.write_all(&out).await?;
            Ok(Step::Go(name, device))
        }
        opt::ABORT => {
            w.write_all(&proto::option_reply(option, rep::ACK, &[])).await?;
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "client aborted",
            ))
        }
        opt::LIST => {
            if !data.is_empty() {
                return refuse(w, option, rep::ERR_INVALID, b"LIST takes no data").await;
            }
            let mut out = Vec::new();
            for name in exports.list().await {
                let mut item = (name.len() as u32).to_be_bytes().to_vec();
                item.extend_from_slice(name.as_bytes());
                out.extend(proto::option_reply(option, rep::SERVER, &item));
            }
            out.extend(proto::option_reply(option, rep::ACK, &[]));
            w.write_all(&out).await?;
            Ok(Step::Next)
        }
        opt::STRUCTURED_REPLY => {
            if !data.is_empty() {
                return refuse(w, option, rep::ERR_INVALID, b"no data expected").await;
            }
            session.structured = true;
            w.write_all(&proto::option_reply(option, rep::ACK, &[])).await?;
            Ok(Step::Next)
        }
        opt::INFO | opt::GO => {
            let (name, items) = match proto::parse_info_request(data) {
                Ok(v) => v,
                Err(e) => {
                    return refuse(w, option, rep::ERR_INVALID, e.to_string().as_bytes()).await;
                }
            };
            let Some(device) = exports.open(&name).await else {
                let msg = format!("no export named {name:?}");
                return refuse(w, option, rep::ERR_UNKNOWN, msg.as_bytes()).await;
            };
            let mut out = proto::option_reply(
                option,
                rep::INFO,
                &proto::info_export(device.size(), transmission_flags(device.as_ref())),
            );
            if items.contains(&proto::info::BLOCK_SIZE) || option == opt::GO {
                out.extend(proto::option_reply(
                    option,
                    rep::INFO,
                    &proto::info_block_size(1, 4096, MAX_PAYLOAD),
                ));
            }
            if items.contains(&proto::info::NAME) {
                let mut item = proto::info::NAME.to_be_bytes().to_vec();
                item.extend_from_slice(name.as_bytes());
                out.extend(proto::option_reply(option, rep::INFO, &item));
            }
            out.extend(proto::option_reply(option, rep::ACK, &[]));
            w.write_all(&out).await?;
            Ok(if option == opt::GO {
                Step::Go(name, device)
            } else {
                Step::Next
            })
        }
        opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
            if !session.structured {
                return refuse(w, option, rep::ERR_INVALID, b"structured replies first").await;
            }
            let (name, queries) = match proto::parse_meta_request(data) {
                Ok(v) => v,
                Err(e) => {
                    return refuse(w, option, rep::ERR_INVALID, e.to_string().as_bytes()).await;
                }
            };
            if exports.open(&name).await.is_none() {
                return refuse(w, option, rep::ERR_UNKNOWN, b"no such export").await;
            }
            let listing = option == opt::LIST_META_CONTEXT;
            let matches = |q: &str| q == BASE_ALLOCATION || (listing && (q == "base:" || q.is_empty()));
            let selected = (listing && queries.is_empty()) || queries.iter().any(|q| matches(q));
            let mut out = Vec::new();
            if selected {
                let mut item = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                item.extend_from_slice(BASE_ALLOCATION.as_bytes());
                out.extend(proto::option_reply(option, rep::META_CONTEXT, &item));
            }
            if !listing {
                session.meta_allocation = selected;
            }
            out.extend(proto::option_reply(option, rep::ACK, &[]));
            w.write_all(&out).await?;
            Ok(Step::Next)
        }
        opt::STARTTLS => {
            if !data.is_empty() {
                return refuse(w, option, rep::ERR_INVALID, b"STARTTLS takes no data").await;
            }
            match session.tls {
                TlsState::Off => refuse(w, option, rep::ERR_POLICY, b"TLS is not offered").await,
                TlsState::Done => refuse(w, option, rep::ERR_INVALID, b"TLS is already running").await,
                TlsState::Required => {
                    w.write_all(&proto::option_reply(option, rep::ACK, &[])).await?;
                    w.flush().await?;
                    Ok(Step::StartTls)
                }
            }
        }
        _ => refuse(w, option, rep::ERR_UNSUP, b"unsupported option").await,
    }
}

/// What an option leads to.
enum Step {
    /// More options.
    Next,
    /// Transmission on this export.
    Go(String, Arc<dyn BlockDevice>),
    /// The TLS handshake.
    StartTls,
}

/// Answers an option with an error reply; the session goes on.
async fn refuse<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    kind: u32,
    message: &[u8],
) -> std::io::Result<Step> {
    w.write_all(&proto::option_reply(option, kind, message)).await?;
    Ok(Step::Next)
}
