//! Connection limit and handshake timeout: a client over the limit is
//! closed at once, a client that never chooses an export is closed after
//! the timeout, and neither stops the server serving others.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_nbd_server::memory::MemoryExports;
use cairn_nbd_server::{serve_config, ServerConfig, Transport};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

async fn start(max_connections: usize, handshake_timeout: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        transport: Transport::Tokio,
        max_connections,
        handshake_timeout,
        tls: None,
        ..ServerConfig::default()
    };
    tokio::spawn(serve_config(
        listener,
        Arc::new(MemoryExports::new("m", 1 << 20)),
        config,
    ));
    addr
}

/// Reads the 18-byte greeting; Err when the server closed instead.
async fn greeting(s: &mut TcpStream) -> std::io::Result<()> {
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.map(|_| ())
}

/// Waits for the server to close `s` (EOF or reset), at most `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(limit, s.read(&mut byte))
        .await
        .expect("the server closed the connection in time");
    assert!(matches!(r, Ok(0) | Err(_)), "expected a close, read {r:?}");
    started.elapsed()
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let addr = start(2, Duration::from_secs(30)).await;
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    greeting(&mut a).await.unwrap();
    greeting(&mut b).await.unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert!(greeting(&mut c).await.is_err(), "a third connection is refused");
    // A slot frees when a client leaves.
    drop(a);
    let mut d = None;
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if greeting(&mut s).await.is_ok() {
            d = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(d.is_some(), "a new client gets the freed slot");
}

#[tokio::test]
async fn a_client_that_never_chooses_an_export_is_closed_after_the_timeout() {
    let addr = start(8, Duration::from_millis(300)).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    greeting(&mut idle).await.unwrap();
    let waited = closed_within(&mut idle, Duration::from_secs(10)).await;
    assert!(
        waited >= Duration::from_millis(200),
        "closed too early: {waited:?}"
    );
    // The server still serves.
    let mut next = TcpStream::connect(addr).await.unwrap();
    greeting(&mut next).await.unwrap();
}
