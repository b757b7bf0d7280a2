//! The portable transport for the transmission phase: tokio sockets, one
//! task per request, replies written whole under a lock as requests
//! complete. Used where io_uring is unavailable, and by tests and the fuzz
//! target on in-memory streams.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, Notify, Semaphore};

use crate::proto::{self, cmd, Request};
use crate::server::{admit, error_reply, execute_guarded, invalid, Connection, MAX_IN_FLIGHT};

/// The portable transport: tokio sockets, one task per request, replies
/// written whole under a lock as requests complete.
pub(crate) async fn transmit<R, W>(reader: R, writer: W, conn: Arc<Connection>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = tokio::io::BufReader::with_capacity(256 << 10, reader);
    let writer = Arc::new(Mutex::new(writer));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let closing = Arc::new(Notify::new());
    let result = async {
        loop {
            let mut header = [0u8; proto::REQUEST_LEN];
            let read = tokio::select! {
                read = reader.read_exact(&mut header) => read,
                () = closing.notified() => return Err(invalid("a request panicked; connection closed")),
            };
            match read {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let req = Request::parse(&header).map_err(|e| invalid(&e.to_string()))?;
            if req.kind == cmd::DISC {
                return Ok(());
            }
            if let Err((code, message)) = admit(&req) {
                // Cannot resync without reading the payload; refuse and close.
                let reply = error_reply(conn.structured, req.cookie, code, message);
                let mut w = writer.lock().await;
                w.write_all(&reply).await?;
                w.flush().await?;
                return Err(invalid(message));
            }
            // Admission first: a payload is read (and its buffer allocated)
            // only once an in-flight slot is free, so a connection holds at
            // most MAX_IN_FLIGHT payloads. The payload must be consumed in
            // order, before the next header.
            let permit = in_flight.clone().acquire_owned().await.expect("semaphore open");
            // And the payload's bytes of the server-wide budget.
            let (payload, held) = if req.kind == cmd::WRITE {
                let held = conn.budget.acquire(req.length as usize).await;
                let mut data = vec![0u8; req.length as usize];
                reader.read_exact(&mut data).await?;
                (Some(data), Some(held))
            } else {
                (None, None)
            };
            let (conn, writer) = (conn.clone(), writer.clone());
            let closing = closing.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _held = held;
                let (reply, panicked) = execute_guarded(req, payload, &conn).await;
                let mut w = writer.lock().await;
                // Flushed: a TLS stream may hold records back until then.
                if let Err(e) = async {
                    w.write_all(&reply).await?;
                    w.flush().await
                }
                .await
                {
                    tracing::debug!(error = %e, "reply failed");
                }
                if panicked {
                    let _ = w.shutdown().await;
                    closing.notify_one();
                }
            });
        }
    }
    .await;
    // Let in-flight requests finish before the export is released.
    let _ = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
    result
}
