//! The server-wide WRITE payload budget: many clients pipelining large
//! writes to a slow device never have more payload bytes in the server
//! than the budget, on either transport, and every write still succeeds
//! (writers wait, they are not refused).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_nbd_server::proto::{self, cmd, opt, rep};
use cairn_nbd_server::{serve_config, BlockDevice, DeviceError, Exports, Extent, ServerConfig, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BUDGET: usize = 1 << 20;
const WRITE: usize = 512 << 10;
const CLIENTS: usize = 4;
const WRITES_EACH: usize = 8;

/// A device whose writes take a while, counting the payload bytes it
/// holds at once.
#[derive(Default)]
struct Slow {
    holding: AtomicUsize,
    most: AtomicUsize,
}

#[async_trait::async_trait]
impl BlockDevice for Slow {
    fn size(&self) -> u64 {
        64 << 20
    }
    fn read_only(&self) -> bool {
        false
    }
    async fn read(&self, _: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        buf.fill(0);
        Ok(())
    }
    async fn write(&self, _: u64, data: bytes::Bytes, _: bool) -> Result<(), DeviceError> {
        let now = self.holding.fetch_add(data.len(), Ordering::SeqCst) + data.len();
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.holding.fetch_sub(data.len(), Ordering::SeqCst);
        Ok(())
    }
    async fn write_zeroes(&self, _: u64, _: u64, _: bool) -> Result<(), DeviceError> {
        Ok(())
    }
    async fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    async fn extents(&self, _: u64, length: u64) -> Result<Vec<Extent>, DeviceError> {
        Ok(vec![Extent { length, hole: false }])
    }
}

struct One(Arc<Slow>);

#[async_trait::async_trait]
impl Exports for One {
    async fn open(&self, _: &str) -> Option<Arc<dyn BlockDevice>> {
        Some(self.0.clone())
    }
    async fn list(&self) -> Vec<String> {
        vec!["slow".into()]
    }
}

async fn client(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await.unwrap();
    s.write_u32(proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES)
        .await
        .unwrap();
    let mut go = proto::IHAVEOPT.to_be_bytes().to_vec();
    go.extend_from_slice(&opt::GO.to_be_bytes());
    go.extend_from_slice(&10u32.to_be_bytes());
    go.extend_from_slice(&4u32.to_be_bytes());
    go.extend_from_slice(b"slow");
    go.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&go).await.unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).await.unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut data = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        s.read_exact(&mut data).await.unwrap();
        if kind == rep::ACK {
            break;
        }
    }
    let (mut r, mut w) = s.into_split();
    let sender = tokio::spawn(async move {
        let payload = vec![0x7au8; WRITE];
        for i in 0..WRITES_EACH {
            let req = proto::Request {
                flags: 0,
                kind: cmd::WRITE,
                cookie: i as u64,
                offset: (i * WRITE) as u64,
                length: WRITE as u32,
            };
            w.write_all(&req.encode()).await.unwrap();
            w.write_all(&payload).await.unwrap();
        }
        w
    });
    for _ in 0..WRITES_EACH {
        let mut reply = [0u8; 16];
        r.read_exact(&mut reply).await.unwrap();
        assert_eq!(
            u32::from_be_bytes(reply[4..8].try_into().unwrap()),
            0,
            "write refused"
        );
    }
    drop(sender.await.unwrap());
}

async fn most_held(transport: Transport) -> usize {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let device = Arc::new(Slow::default());
    let config = ServerConfig {
        transport,
        write_buffer: BUDGET,
        ..ServerConfig::default()
    };
    let server = tokio::spawn(serve_config(listener, Arc::new(One(device.clone())), config));
    let clients: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(client(addr))).collect();
    for c in clients {
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("every write answered")
            .unwrap();
    }
    server.abort();
    device.most.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_in_the_server_stay_within_the_budget_on_both_transports() {
    for transport in [Transport::Tokio, Transport::Auto] {
        let most = most_held(transport).await;
        println!("{transport:?}: at most {most} payload bytes held at once (budget {BUDGET})");
        assert!(
            most <= BUDGET,
            "{transport:?}: {most} bytes held, budget {BUDGET}"
        );
        assert!(most >= WRITE, "writes ran");
    }
}
