//! TLS records made in memory: OpenSSL reads ciphertext from, and writes
//! ciphertext to, two buffers ([`Bridge`]) instead of a socket. Whoever
//! owns the socket moves the bytes: [`BridgedTls`] does it with tokio (the
//! TLS handshake, option haggling and the portable transport), and the
//! io_uring ring thread does it with its own RECV and SENDMSG
//! ([`TlsSession`], handed over after the handshake), so TLS connections
//! run on either transport.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use openssl::ssl::{ErrorCode, SslStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Ciphertext buffered before the writer is made to wait.
const MAX_PENDING_OUT: usize = 1 << 20;

/// The two ciphertext buffers OpenSSL sees as its transport.
#[derive(Debug, Default)]
pub(crate) struct Bridge {
    /// Received, not yet consumed by OpenSSL: `incoming[read..]`.
    incoming: Vec<u8>,
    read: usize,
    /// Made by OpenSSL, not yet sent.
    pub(crate) outgoing: Vec<u8>,
}

impl Bridge {
    /// Adds received ciphertext.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if self.read == self.incoming.len() {
            self.incoming.clear();
            self.read = 0;
        }
        self.incoming.extend_from_slice(bytes);
    }

    /// Ciphertext received and not yet decrypted.
    pub(crate) fn unread(&self) -> usize {
        self.incoming.len() - self.read
    }
}

impl Read for Bridge {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = &self.incoming[self.read..];
        if available.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.read += n;
        Ok(n)
    }
}

impl Write for Bridge {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An established TLS session over a [`Bridge`].
pub(crate) type TlsSession = SslStream<Bridge>;

/// What decrypting gave.
pub(crate) enum Decrypted {
    /// This many plaintext bytes.
    Bytes(usize),
    /// Nothing more until more ciphertext arrives.
    NeedMore,
    /// The peer closed the session (close_notify).
    Closed,
}

/// Decrypts into `buf` from what the bridge holds.
pub(crate) fn decrypt(session: &mut TlsSession, buf: &mut [u8]) -> io::Result<Decrypted> {
    match session.ssl_read(buf) {
        Ok(0) => Ok(Decrypted::Closed),
        Ok(n) => Ok(Decrypted::Bytes(n)),
        Err(e) if e.code() == ErrorCode::WANT_READ => Ok(Decrypted::NeedMore),
        Err(e) if e.code() == ErrorCode::ZERO_RETURN => Ok(Decrypted::Closed),
        Err(e) => Err(tls_error(e)),
    }
}

/// Encrypts all of `plain` into the bridge's outgoing buffer.
pub(crate) fn encrypt(session: &mut TlsSession, mut plain: &[u8]) -> io::Result<()> {
    while !plain.is_empty() {
        // A memory transport never blocks a write.
        let n = session.ssl_write(plain).map_err(tls_error)?;
        plain = &plain[n..];
    }
    Ok(())
}

fn tls_error(e: openssl::ssl::Error) -> io::Error {
    match e.into_io_error() {
        Ok(io) => io,
        Err(e) => io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")),
    }
}

/// A TLS session whose ciphertext travels over an async stream.
pub(crate) struct BridgedTls<S> {
    session: TlsSession,
    io: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> BridgedTls<S> {
    /// Runs the server handshake of `session` over `io`.
    pub(crate) async fn accept(mut session: TlsSession, mut io: S) -> io::Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            let result = session.accept();
            let out = std::mem::take(&mut session.get_mut().outgoing);
            if !out.is_empty() {
                io.write_all(&out).await?;
                io.flush().await?;
            }
            match result {
                Ok(()) => return Ok(Self { session, io }),
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    let n = io.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the client closed during the TLS handshake",
                        ));
                    }
                    session.get_mut().feed(&chunk[..n]);
                }
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("TLS handshake failed (unknown identity, wrong key or not TLS-PSK): {e}"),
                    ))
                }
            }
        }
    }

    pub(crate) fn session(&self) -> &TlsSession {
        &self.session
    }

    /// The session and the stream, for a transport that moves the
    /// ciphertext itself. Unsent ciphertext stays in the session's bridge.
    pub(crate) fn into_parts(self) -> (TlsSession, S) {
        (self.session, self.io)
    }

    /// Sends buffered ciphertext; Ready once all of it is out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let out = &mut self.session.get_mut().outgoing;
        while !out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            out.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for BridgedTls<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match decrypt(&mut this.session, buf.initialize_unfilled())? {
                Decrypted::Bytes(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Decrypted::Closed => return Poll::Ready(Ok(())),
                Decrypted::NeedMore => {}
            }
            // Records reading made (alerts, key updates) leave with the next
            // write or flush: the reading side never waits on the socket's
            // write readiness, which belongs to the writing task.
            let mut chunk = [0u8; 16 << 10];
            let mut raw = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut raw))?;
            if raw.filled().is_empty() {
                // End of the TCP stream without close_notify: end of data.
                return Poll::Ready(Ok(()));
            }
            this.session.get_mut().feed(raw.filled());
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for BridgedTls<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.session.get_ref().outgoing.len() > MAX_PENDING_OUT {
            ready!(this.poll_send(cx))?;
        }
        encrypt(&mut this.session, data)?;
        // Best effort now; poll_flush finishes.
        let _ = this.poll_send(cx)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Queue close_notify once; then send it and close the stream.
        if this.session.get_shutdown().is_empty() {
            let _ = this.session.shutdown();
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_reads_what_was_fed_and_blocks_when_empty() {
        let mut b = Bridge::default();
        let mut buf = [0u8; 4];
        assert_eq!(b.read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        b.feed(b"abcdef");
        assert_eq!(b.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"abcd");
        assert_eq!(b.unread(), 2);
        b.feed(b"gh");
        let mut rest = [0u8; 8];
        assert_eq!(b.read(&mut rest).unwrap(), 4);
        assert_eq!(&rest[..4], b"efgh");
        b.write_all(b"out").unwrap();
        assert_eq!(b.outgoing, b"out");
    }
}
