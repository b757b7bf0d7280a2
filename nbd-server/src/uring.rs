//! The io_uring transport for the transmission phase.
//!
//! After the handshake (on tokio), each connection gets one thread that
//! owns an io_uring and the socket: it keeps a RECV posted into a growing
//! buffer, parses request headers and payloads from it, and hands each
//! request to the tokio runtime to be served, unless the device answers it
//! without waiting ([`crate::BlockDevice::try_read`],
//! [`crate::BlockDevice::try_write`]): then it is served on this thread, a
//! WRITE straight from the buffer. Finished replies come back through a
//! queue; an eventfd READ posted on the ring wakes the thread, which sends
//! every queued reply with one SENDMSG (gathered iovecs). So socket I/O
//! never blocks a tokio worker, many requests are in flight (up to
//! [`MAX_IN_FLIGHT`]), and replies leave in completion order.
//!
//! Over TLS the thread also takes the TLS session: RECV fills a
//! ciphertext buffer, records are decrypted in memory into the request
//! buffer, and each reply is encrypted before it is queued.
//!
//! Where the kernel refuses io_uring (ENOSYS, or EPERM from
//! `io_uring_disabled` or a seccomp filter), [`probe`] says so and the
//! server uses the portable transport instead.

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use parking_lot::Mutex;

use crate::bridge::{decrypt, encrypt, Decrypted, TlsSession};
use crate::budget::Held;
use crate::proto::{cmd, errno, Request, REQUEST_LEN};
use crate::server::{
    admit, error_reply, execute_guarded, try_execute_read, try_execute_write, Connection, MAX_IN_FLIGHT,
};

const RING_ENTRIES: u32 = 64;
const RECV: u64 = 1;
const WAKE: u64 = 2;
const SEND: u64 = 3;
/// Receive buffer to start with; grows for large WRITE payloads.
const RECV_BUF: usize = 256 << 10;
/// A receive buffer grown for large WRITEs is kept up to this size (a
/// 4 MiB payload and its header), shrunk back past it once drained.
const KEEP_BUF: usize = (4 << 20) + 4096;
/// Free space below which the buffer is compacted before a RECV.
const MIN_FREE: usize = 16 << 10;
/// Replies gathered into one SENDMSG at most.
const MAX_IOVECS: usize = 256;
/// Over TLS: received ciphertext waiting to be decrypted before no more is
/// read.
const MAX_UNREAD_CIPHERTEXT: usize = 4 << 20;

/// Checks that this kernel lets the process use io_uring.
pub fn probe() -> io::Result<()> {
    let ring = IoUring::new(2)?;
    drop(ring);
    Ok(())
}

/// Replies finished by tokio tasks, waiting for the ring thread.
struct Outbox {
    replies: Mutex<Vec<Vec<u8>>>,
    /// The ring thread has been woken and not yet drained the queue.
    signalled: AtomicBool,
    /// A request panicked: the connection closes once its reply is out.
    poisoned: AtomicBool,
    /// Budget bytes granted to the WRITE the thread is waiting to dispatch.
    granted: Mutex<Option<Held>>,
    eventfd: OwnedFd,
}

impl Outbox {
    fn push(&self, reply: Vec<u8>) {
        self.replies.lock().push(reply);
        if !self.signalled.swap(true, Ordering::AcqRel) {
            self.wake();
        }
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let n = unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n != 8 {
            tracing::error!(error = %io::Error::last_os_error(), "NBD ring wake-up failed");
        }
    }
}

/// Serves the transmission phase of one connection on an io_uring thread.
pub(crate) async fn transmit(socket: TcpStream, conn: Arc<Connection>) -> io::Result<()> {
    run(socket, None, conn).await
}

/// [`transmit`] over an established TLS session: the ring thread receives
/// and sends ciphertext and decrypts and encrypts in memory.
pub(crate) async fn transmit_tls(
    socket: TcpStream,
    session: TlsSession,
    conn: Arc<Connection>,
) -> io::Result<()> {
    run(socket, Some(Box::new(session)), conn).await
}

async fn run(socket: TcpStream, tls: Option<Box<TlsSession>>, conn: Arc<Connection>) -> io::Result<()> {
    socket.set_nonblocking(false)?;
    // SAFETY: eventfd has no memory preconditions; the result is checked.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    let outbox = Arc::new(Outbox {
        replies: Mutex::new(Vec::new()),
        signalled: AtomicBool::new(false),
        poisoned: AtomicBool::new(false),
        granted: Mutex::new(None),
        // SAFETY: efd is a fresh descriptor nobody else owns.
        eventfd: unsafe { OwnedFd::from_raw_fd(efd) },
    });
    let runtime = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("nbd-uring".into())
        .spawn(move || {
            let result = RingLoop::new(socket, tls, conn, outbox, runtime).and_then(|mut l| l.run());
            let _ = done_tx.send(result);
        })?;
    done_rx
        .await
        .unwrap_or_else(|_| Err(io::Error::other("NBD ring thread died")))
}

/// Serves a request on the ring thread (`serve` is a `try_execute_*`). A
/// panic in it answers EIO, as [`execute_guarded`] does on tokio; `true`
/// then says the connection must close once the reply is out.
fn guarded(
    req: &Request,
    structured: bool,
    serve: impl FnOnce() -> Option<Vec<u8>>,
) -> (Option<Vec<u8>>, bool) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(serve)) {
        Ok(reply) => (reply, false),
        Err(_) => {
            tracing::error!(
                cookie = req.cookie,
                kind = req.kind,
                offset = req.offset,
                "NBD request panicked on the I/O thread: answering EIO and closing its connection"
            );
            let reply = error_reply(
                structured,
                req.cookie,
                errno::EIO,
                "internal error: the request panicked",
            );
            (Some(reply), true)
        }
    }
}

struct RingLoop {
    // The ring is declared first so it is dropped first: nothing is in
    // flight by then (see `run`), and buffers below outlive it anyway.
    ring: IoUring,
    socket: TcpStream,
    conn: Arc<Connection>,
    outbox: Arc<Outbox>,
    runtime: tokio::runtime::Handle,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    recv_posted: bool,
    wake_buf: Box<u64>,
    wake_posted: bool,
    /// Replies waiting to be sent, in completion order.
    queue: VecDeque<Vec<u8>>,
    /// The replies of the SENDMSG in flight, its iovecs and header, and
    /// how far into the first reply an earlier partial send got.
    sending: Vec<Vec<u8>>,
    iovecs: Vec<libc::iovec>,
    msghdr: Box<libc::msghdr>,
    send_posted: bool,
    sent_in_first: usize,
    in_flight: usize,
    /// A WRITE waits for budget bytes; a task asks for them and wakes the
    /// thread when they are granted.
    awaiting_budget: bool,
    /// No more requests will be read (EOF, DISC, or a fatal error).
    reading_done: bool,
    error: Option<io::Error>,
    /// Over TLS: the session, and the buffer RECV fills with ciphertext
    /// (plaintext is decrypted into `buf`, replies encrypted into `queue`).
    tls: Option<Box<TlsSession>>,
    cipher: Vec<u8>,
}

// SAFETY: the raw pointers inside `iovecs` and `msghdr` point into buffers
// owned by the same struct, which moves to its thread once.
unsafe impl Send for RingLoop {}

impl RingLoop {
    fn new(
        socket: TcpStream,
        tls: Option<Box<TlsSession>>,
        conn: Arc<Connection>,
        outbox: Arc<Outbox>,
        runtime: tokio::runtime::Handle,
    ) -> io::Result<Self> {
        Ok(Self {
            ring: IoUring::new(RING_ENTRIES)?,
            socket,
            conn,
            outbox,
            runtime,
            buf: vec![0u8; RECV_BUF],
            start: 0,
            end: 0,
            recv_posted: false,
            wake_buf: Box::new(0),
            wake_posted: false,
            queue: VecDeque::new(),
            sending: Vec::new(),
            iovecs: Vec::new(),
            // SAFETY: an all-zero msghdr is a valid empty header.
            msghdr: Box::new(unsafe { std::mem::zeroed() }),
            send_posted: false,
            sent_in_first: 0,
            in_flight: 0,
            awaiting_budget: false,
            reading_done: false,
            error: None,
            cipher: if tls.is_some() {
                vec![0u8; RECV_BUF]
            } else {
                Vec::new()
            },
            tls,
        })
    }

    fn push(&mut self, sqe: io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: every buffer an entry points to lives in `self` and is
        // not touched again until the entry's completion is reaped.
        unsafe {
            if self.ring.submission().push(&sqe).is_err() {
                self.ring.submit()?;
                self.ring
                    .submission()
                    .push(&sqe)
                    .map_err(|_| io::Error::other("submission queue full"))?;
            }
        }
        Ok(())
    }

    fn run(&mut self) -> io::Result<()> {
        loop {
            self.post()?;
            let idle = self.reading_done && self.in_flight == 0 && self.queue.is_empty() && !self.send_posted;
            if idle {
                break;
            }
            self.ring.submit_and_wait(1)?;
            let completions: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (tag, result) in completions {
                match tag {
                    RECV => self.received(result),
                    WAKE => self.woken(result),
                    SEND => self.sent(result),
                    _ => unreachable!("unknown completion tag {tag}"),
                }
            }
        }
        self.drain()?;
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Posts whatever should be in flight and is not.
    fn post(&mut self) -> io::Result<()> {
        let fd = types::Fd(self.socket.as_raw_fd());
        if !self.wake_posted {
            let sqe = opcode::Read::new(
                types::Fd(self.outbox.eventfd.as_raw_fd()),
                (&mut *self.wake_buf as *mut u64).cast(),
                8,
            )
            .build()
            .user_data(WAKE);
            self.push(sqe)?;
            self.wake_posted = true;
        }
        // Waiting for budget bytes: the socket is not read meanwhile (that
        // is the writer's backpressure).
        if !self.recv_posted && !self.reading_done && self.in_flight < MAX_IN_FLIGHT && !self.awaiting_budget
        {
            let target = match &self.tls {
                // Ciphertext waits in the bridge until there is room to
                // decrypt it; stop reading while much of it waits.
                Some(tls) if tls.get_ref().unread() >= MAX_UNREAD_CIPHERTEXT => None,
                Some(_) => Some(&mut self.cipher[..]),
                None => {
                    self.make_room();
                    Some(&mut self.buf[self.end..])
                }
            };
            // A zero-length RECV would read as end of stream.
            if let Some(free) = target.filter(|free| !free.is_empty()) {
                let sqe = opcode::Recv::new(fd, free.as_mut_ptr(), free.len() as u32)
                    .build()
                    .user_data(RECV);
                self.push(sqe)?;
                self.recv_posted = true;
            }
        }
        if !self.send_posted && !self.queue.is_empty() {
            let take = self.queue.len().min(MAX_IOVECS);
            self.sending = self.queue.drain(..take).collect();
            self.iovecs = self
                .sending
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let skip = if i == 0 { self.sent_in_first } else { 0 };
                    libc::iovec {
                        iov_base: r[skip..].as_ptr() as *mut libc::c_void,
                        iov_len: r.len() - skip,
                    }
                })
                .collect();
            self.msghdr.msg_iov = self.iovecs.as_mut_ptr();
            self.msghdr.msg_iovlen = self.iovecs.len() as _;
            let sqe = opcode::SendMsg::new(fd, &*self.msghdr as *const libc::msghdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(SEND);
            self.push(sqe)?;
            self.send_posted = true;
        }
        Ok(())
    }

    /// Makes free space after `end`: compacts, and grows for a request
    /// (header and WRITE payload) larger than the buffer.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP_BUF {
                // A very large payload is done: give the memory back. Up
                // to KEEP_BUF stays: regrowing it for every large write
                // cost page faults and zeroing on each.
                self.buf.truncate(RECV_BUF);
                self.buf.shrink_to(RECV_BUF);
            }
        }
        let needed = self.needed();
        if self.start > 0 && (self.buf.len() - self.start < needed || self.buf.len() - self.end < MIN_FREE) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.start + needed {
            self.buf.resize(self.start + needed, 0);
        }
    }

    /// Bytes the request at `start` needs in all (header plus payload).
    fn needed(&self) -> usize {
        let pending = &self.buf[self.start..self.end];
        let Ok(header) = <&[u8; REQUEST_LEN]>::try_from(pending.get(..REQUEST_LEN).unwrap_or(&[])) else {
            return REQUEST_LEN;
        };
        match Request::parse(header) {
            Ok(req) if req.kind == cmd::WRITE && admit(&req).is_ok() => REQUEST_LEN + req.length as usize,
            _ => REQUEST_LEN,
        }
    }

    fn received(&mut self, result: i32) {
        self.recv_posted = false;
        match result {
            0 => self.reading_done = true,
            n if n < 0 => self.fail(io::Error::from_raw_os_error(-n)),
            n => {
                match &mut self.tls {
                    Some(tls) => tls.get_mut().feed(&self.cipher[..n as usize]),
                    None => self.end += n as usize,
                }
                self.pump();
            }
        }
    }

    /// Parses what arrived; over TLS, decrypts first, again as parsing
    /// makes room.
    fn pump(&mut self) {
        loop {
            let decrypted = self.fill();
            self.parse();
            if decrypted == 0 {
                return;
            }
        }
    }

    /// Over TLS: decrypts buffered ciphertext into `buf` while there is
    /// room; returns the plaintext bytes added.
    fn fill(&mut self) -> usize {
        if self.tls.is_none() || self.reading_done {
            return 0;
        }
        let mut added = 0;
        loop {
            self.make_room();
            let Some(tls) = self.tls.as_mut() else {
                return added;
            };
            let free = &mut self.buf[self.end..];
            if free.is_empty() {
                break;
            }
            match decrypt(tls, free) {
                Ok(Decrypted::Bytes(n)) => {
                    self.end += n;
                    added += n;
                }
                Ok(Decrypted::NeedMore) => break,
                Ok(Decrypted::Closed) => {
                    self.reading_done = true;
                    break;
                }
                Err(e) => {
                    self.fail(e);
                    break;
                }
            }
        }
        // Reading can make records to send (alerts, key updates).
        if let Some(tls) = self.tls.as_mut() {
            let out = std::mem::take(&mut tls.get_mut().outgoing);
            if !out.is_empty() {
                self.queue.push_back(out);
            }
        }
        added
    }

    /// Queues a reply for sending, encrypted over TLS.
    fn enqueue(&mut self, reply: Vec<u8>) {
        let Some(tls) = self.tls.as_mut() else {
            self.queue.push_back(reply);
            return;
        };
        match encrypt(tls, &reply) {
            Ok(()) => {
                let out = std::mem::take(&mut tls.get_mut().outgoing);
                self.queue.push_back(out);
            }
            Err(e) => self.fail(e),
        }
    }

    /// Dispatches every whole request in the buffer.
    fn parse(&mut self) {
        while !self.reading_done && self.in_flight < MAX_IN_FLIGHT {
            let pending = &self.buf[self.start..self.end];
            let Some(header) = pending.get(..REQUEST_LEN) else {
                return;
            };
            let header: &[u8; REQUEST_LEN] = header.try_into().expect("28 bytes");
            let req = match Request::parse(header) {
                Ok(req) => req,
                Err(e) => {
                    self.fail(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                    return;
                }
            };
            if req.kind == cmd::DISC {
                self.reading_done = true;
                return;
            }
            if let Err((code, message)) = admit(&req) {
                self.enqueue(error_reply(self.conn.structured, req.cookie, code, message));
                self.fail(io::Error::new(io::ErrorKind::InvalidData, message));
                return;
            }
            let payload_len = if req.kind == cmd::WRITE {
                req.length as usize
            } else {
                0
            };
            if pending.len() < REQUEST_LEN + payload_len {
                return;
            }
            // Not while budget is asked for this request: the grant that
            // arrives must go to the request it was asked for.
            if req.kind == cmd::WRITE && !self.awaiting_budget {
                let payload = &pending[REQUEST_LEN..REQUEST_LEN + payload_len];
                let conn = &self.conn;
                let (reply, panicked) =
                    guarded(&req, conn.structured, || try_execute_write(&req, payload, conn));
                if let Some(reply) = reply {
                    // Taken at once, from the receive buffer: no copy, no
                    // budget, no hand-off.
                    self.consume(REQUEST_LEN + payload_len);
                    self.enqueue(reply);
                    if panicked {
                        self.close_after_panic();
                        return;
                    }
                    continue;
                }
            }
            // The payload leaves the receive buffer only with its bytes of
            // the server-wide budget; until they are free, parsing waits.
            let held = if req.kind == cmd::WRITE {
                match self.budget_for(payload_len) {
                    Some(held) => Some(held),
                    None => return,
                }
            } else {
                None
            };
            let pending = &self.buf[self.start..self.end];
            let payload =
                (req.kind == cmd::WRITE).then(|| pending[REQUEST_LEN..REQUEST_LEN + payload_len].to_vec());
            self.consume(REQUEST_LEN + payload_len);
            let conn = &self.conn;
            let (reply, panicked) = guarded(&req, conn.structured, || try_execute_read(&req, conn));
            if let Some(reply) = reply {
                // Cached: answered here, no hand-off.
                self.enqueue(reply);
                if panicked {
                    self.close_after_panic();
                    return;
                }
                continue;
            }
            self.in_flight += 1;
            let (conn, outbox) = (self.conn.clone(), self.outbox.clone());
            self.runtime.spawn(async move {
                let _held = held;
                let (reply, panicked) = execute_guarded(req, payload, &conn).await;
                if panicked {
                    outbox.poisoned.store(true, Ordering::Release);
                }
                outbox.push(reply);
            });
        }
    }

    /// A request panicked: read no more, and close once the replies
    /// queued (its EIO among them) are out.
    fn close_after_panic(&mut self) {
        self.fail(io::Error::other("a request panicked; connection closed"));
    }

    /// Drops `n` parsed bytes from the front of the receive buffer.
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Budget bytes for a payload of `len`: granted earlier, free now, or
    /// asked for (None; the thread is woken when they are granted).
    fn budget_for(&mut self, len: usize) -> Option<Held> {
        if let Some(held) = self.outbox.granted.lock().take() {
            self.awaiting_budget = false;
            return Some(held);
        }
        if self.awaiting_budget {
            return None;
        }
        if let Some(held) = self.conn.budget.try_acquire(len) {
            return Some(held);
        }
        self.awaiting_budget = true;
        let (budget, outbox) = (self.conn.budget.clone(), self.outbox.clone());
        self.runtime.spawn(async move {
            let held = budget.acquire(len).await;
            *outbox.granted.lock() = Some(held);
            outbox.wake();
        });
        None
    }

    fn woken(&mut self, result: i32) {
        self.wake_posted = false;
        if result < 0 {
            self.fail(io::Error::from_raw_os_error(-result));
            return;
        }
        self.outbox.signalled.store(false, Ordering::Release);
        let replies = std::mem::take(&mut *self.outbox.replies.lock());
        self.in_flight -= replies.len();
        for reply in replies {
            self.enqueue(reply);
        }
        if self.outbox.poisoned.load(Ordering::Acquire) {
            self.close_after_panic();
            return;
        }
        // Requests held back by the in-flight limit may go now.
        self.pump();
    }

    fn sent(&mut self, result: i32) {
        self.send_posted = false;
        if result < 0 {
            self.fail(io::Error::from_raw_os_error(-result));
            self.sending.clear();
            self.queue.clear();
            return;
        }
        // Put back what a short send left, in order, at the front.
        let mut sent = result as usize;
        let mut first_skip = self.sent_in_first;
        self.sent_in_first = 0;
        let mut rest = Vec::new();
        for reply in self.sending.drain(..) {
            let left = reply.len() - first_skip;
            if sent >= left {
                sent -= left;
            } else {
                if rest.is_empty() {
                    self.sent_in_first = first_skip + sent;
                }
                sent = 0;
                rest.push(reply);
            }
            first_skip = 0;
        }
        for reply in rest.into_iter().rev() {
            self.queue.push_front(reply);
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.reading_done = true;
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// Completes whatever is still in flight (an unfinished RECV or the
    /// wake-up READ) so no buffer is referenced once the loop ends, and
    /// waits for the requests still being served.
    fn drain(&mut self) -> io::Result<()> {
        if self.recv_posted {
            // SAFETY: shutdown on a descriptor we own.
            unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        }
        while self.recv_posted || self.wake_posted || self.send_posted {
            if self.wake_posted {
                self.outbox.wake();
            }
            self.ring.submit_and_wait(1)?;
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for tag in done {
                match tag {
                    RECV => self.recv_posted = false,
                    WAKE => self.wake_posted = false,
                    SEND => self.send_posted = false,
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_answers() {
        // Either way is fine; it must not panic, and must say why not.
        if let Err(e) = probe() {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn request_sizes_for_buffer_growth() {
        let req = Request {
            flags: 0,
            kind: cmd::WRITE,
            cookie: 1,
            offset: 0,
            length: 1 << 20,
        };
        assert!(admit(&req).is_ok());
        let too_big = Request {
            length: u32::MAX,
            ..req
        };
        assert!(admit(&too_big).is_err());
    }
}
