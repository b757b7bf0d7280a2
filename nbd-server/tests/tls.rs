//! STARTTLS with pre-shared keys, driven by an OpenSSL client on a real
//! socket: TLS is required before anything else, the identity scopes the
//! exports, wrong keys and unknown identities are refused, a stalled TLS
//! handshake is closed by the handshake timeout, and transmission works
//! over TLS. (Real GnuTLS clients — qemu, libnbd — are driven against the
//! whole server in the workspace's tests/nbd_tls.rs.)

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cairn_nbd_server::memory::MemoryExports;
use cairn_nbd_server::proto::{self, cmd, opt, rep};
use cairn_nbd_server::{serve_config, ServerConfig, TlsPsk, Transport};
use openssl::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

const KEY: [u8; 32] = [7; 32];

async fn start(transport: Transport, handshake_timeout: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let keys = HashMap::from([
        ("mem".to_string(), KEY.to_vec()),
        ("other".to_string(), vec![9; 32]),
    ]);
    let config = ServerConfig {
        transport,
        max_connections: 16,
        handshake_timeout,
        tls: Some(Arc::new(TlsPsk::from_keys(keys).unwrap())),
        ..ServerConfig::default()
    };
    tokio::spawn(serve_config(
        listener,
        Arc::new(MemoryExports::new("mem", 1 << 20)),
        config,
    ));
    addr
}

async fn greet(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.unwrap();
    assert_eq!(&g[..8], b"NBDMAGIC");
    s.write_u32(proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES)
        .await
        .unwrap();
    s
}

async fn send_option<S: AsyncWrite + Unpin>(s: &mut S, option: u32, data: &[u8]) {
    let mut m = proto::IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).await.unwrap();
}

/// One option reply: (option, type, data).
async fn option_reply<S: AsyncRead + Unpin>(s: &mut S) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(
        u64::from_be_bytes(h[..8].try_into().unwrap()),
        proto::OPT_REPLY_MAGIC
    );
    let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let mut data = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
    s.read_exact(&mut data).await.unwrap();
    (option, kind, data)
}

/// STARTTLS, then a TLS 1.x handshake as `identity` with `key`.
async fn starttls(
    mut s: TcpStream,
    identity: &'static str,
    key: Vec<u8>,
) -> Result<SslStream<TcpStream>, openssl::ssl::Error> {
    send_option(&mut s, opt::STARTTLS, &[]).await;
    let (option, kind, _) = option_reply(&mut s).await;
    assert_eq!((option, kind), (opt::STARTTLS, rep::ACK));
    let mut b = SslContext::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_cipher_list("PSK").unwrap();
    b.set_psk_client_callback(move |_, _hint, id, psk| {
        id[..identity.len()].copy_from_slice(identity.as_bytes());
        id[identity.len()] = 0;
        psk[..key.len()].copy_from_slice(&key);
        Ok(key.len())
    });
    let ssl = Ssl::new(&b.build()).unwrap();
    let mut tls = SslStream::new(ssl, s).unwrap();
    Pin::new(&mut tls).connect().await?;
    Ok(tls)
}

async fn list<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Vec<String> {
    send_option(s, opt::LIST, &[]).await;
    let mut names = Vec::new();
    loop {
        let (_, kind, data) = option_reply(s).await;
        if kind == rep::ACK {
            return names;
        }
        assert_eq!(kind, rep::SERVER);
        names.push(String::from_utf8(data[4..].to_vec()).unwrap());
    }
}

#[tokio::test]
async fn every_option_but_starttls_is_refused_until_tls_runs() {
    let addr = start(Transport::Tokio, Duration::from_secs(10)).await;
    let mut s = greet(addr).await;
    for option in [
        opt::LIST,
        opt::INFO,
        opt::GO,
        opt::STRUCTURED_REPLY,
        opt::SET_META_CONTEXT,
    ] {
        send_option(&mut s, option, &[]).await;
        let (echo, kind, message) = option_reply(&mut s).await;
        assert_eq!((echo, kind), (option, rep::ERR_TLS_REQD), "option {option}");
        assert!(String::from_utf8_lossy(&message).contains("STARTTLS"));
    }
    // EXPORT_NAME has no error reply: the connection is closed.
    send_option(&mut s, opt::EXPORT_NAME, b"mem").await;
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "closed, got {r:?}");
}

#[tokio::test]
async fn the_identity_scopes_exports_and_transmission_runs_over_tls() {
    for transport in [Transport::Tokio, Transport::Auto] {
        let addr = start(transport, Duration::from_secs(10)).await;
        let mut tls = starttls(greet(addr).await, "mem", KEY.to_vec()).await.unwrap();
        // A second STARTTLS is refused; the session goes on.
        send_option(&mut tls, opt::STARTTLS, &[]).await;
        assert_eq!(option_reply(&mut tls).await.1, rep::ERR_INVALID);
        assert_eq!(
            list(&mut tls).await,
            vec!["mem".to_string(), "mem@ro".to_string()]
        );
        let mut go = 3u32.to_be_bytes().to_vec();
        go.extend_from_slice(b"mem");
        go.extend_from_slice(&0u16.to_be_bytes());
        send_option(&mut tls, opt::GO, &go).await;
        loop {
            if option_reply(&mut tls).await.1 == rep::ACK {
                break;
            }
        }
        // WRITE then READ back over TLS, simple replies.
        let payload = vec![0x5au8; 8192];
        let write = proto::Request {
            flags: 0,
            kind: cmd::WRITE,
            cookie: 1,
            offset: 4096,
            length: payload.len() as u32,
        };
        tls.write_all(&write.encode()).await.unwrap();
        tls.write_all(&payload).await.unwrap();
        let mut reply = [0u8; 16];
        tls.read_exact(&mut reply).await.unwrap();
        assert_eq!(
            u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            0,
            "write error"
        );
        let read = proto::Request {
            kind: cmd::READ,
            cookie: 2,
            ..write
        };
        tls.write_all(&read.encode()).await.unwrap();
        tls.read_exact(&mut reply).await.unwrap();
        assert_eq!(
            u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            0,
            "read error"
        );
        let mut back = vec![0u8; payload.len()];
        tls.read_exact(&mut back).await.unwrap();
        assert_eq!(back, payload);

        // A payload of many TLS records, then 32 reads in flight at once.
        let big: Vec<u8> = (0..512u32 << 10).map(|i| (i % 251) as u8).collect();
        let write = proto::Request {
            cookie: 3,
            offset: 0,
            length: big.len() as u32,
            ..write
        };
        tls.write_all(&write.encode()).await.unwrap();
        tls.write_all(&big).await.unwrap();
        tls.read_exact(&mut reply).await.unwrap();
        assert_eq!(
            u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            0,
            "big write"
        );
        for i in 0..32u64 {
            let read = proto::Request {
                kind: cmd::READ,
                cookie: 100 + i,
                offset: i * (16 << 10),
                length: 16 << 10,
                ..write
            };
            tls.write_all(&read.encode()).await.unwrap();
        }
        let mut seen = 0;
        for _ in 0..32 {
            tls.read_exact(&mut reply).await.unwrap();
            assert_eq!(u32::from_be_bytes(reply[4..8].try_into().unwrap()), 0);
            let i = u64::from_be_bytes(reply[8..16].try_into().unwrap()) - 100;
            let mut data = vec![0u8; 16 << 10];
            tls.read_exact(&mut data).await.unwrap();
            let at = (i * (16 << 10)) as usize;
            assert!(data == big[at..at + (16 << 10)], "read {i} over TLS");
            seen |= 1u64 << i;
        }
        assert_eq!(seen, u32::MAX as u64, "every read answered once");
    }
}

#[tokio::test]
async fn wrong_keys_and_foreign_identities_cannot_open() {
    let addr = start(Transport::Tokio, Duration::from_secs(10)).await;
    // Wrong key for a known identity: the TLS handshake fails.
    assert!(starttls(greet(addr).await, "mem", vec![8; 32]).await.is_err());
    // Unknown identity: fails too.
    assert!(starttls(greet(addr).await, "nobody", KEY.to_vec()).await.is_err());
    // A valid identity without exports of its own is closed after TLS.
    let mut tls = starttls(greet(addr).await, "other", vec![9; 32]).await.unwrap();
    send_option(&mut tls, opt::LIST, &[]).await;
    let mut h = [0u8; 20];
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut h))
        .await
        .unwrap();
    assert!(
        r.is_err(),
        "a connection whose identity has no namespace is closed"
    );
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_by_the_handshake_timeout() {
    let addr = start(Transport::Tokio, Duration::from_millis(500)).await;
    let mut s = greet(addr).await;
    send_option(&mut s, opt::STARTTLS, &[]).await;
    let (_, kind, _) = option_reply(&mut s).await;
    assert_eq!(kind, rep::ACK);
    // Say nothing: no ClientHello.
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
        .await
        .expect("closed within the handshake timeout");
    assert!(matches!(r, Ok(0) | Err(_)), "closed, got {r:?}");
}
