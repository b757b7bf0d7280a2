//! A request whose device call panics gets EIO, its connection closes, and
//! the server goes on serving other connections: on both transports.

use std::sync::Arc;

use cairn_nbd_server::memory::MemoryDevice;
use cairn_nbd_server::proto::{self, cmd};
use cairn_nbd_server::{serve_with, BlockDevice, DeviceError, Exports, Extent, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads at offset 4096 panic, and so do the no-wait paths (which only the
/// io_uring transport takes) at offsets 12288 (read) and 16384 (write);
/// everything else is a RAM disk.
struct Bomb(MemoryDevice);

#[async_trait::async_trait]
impl BlockDevice for Bomb {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        assert_ne!(offset, 4096, "injected panic");
        self.0.read(offset, buf).await
    }
    fn try_read(&self, offset: u64, buf: &mut [u8]) -> Option<Result<(), DeviceError>> {
        assert_ne!(offset, 12288, "injected panic on the no-wait read path");
        // The read at 4096 must reach the panicking async path.
        (offset != 4096).then(|| self.0.try_read(offset, buf)).flatten()
    }
    fn try_write(&self, offset: u64, _data: &[u8]) -> Option<Result<(), DeviceError>> {
        assert_ne!(offset, 16384, "injected panic on the no-wait write path");
        None
    }
    async fn write(&self, offset: u64, data: bytes::Bytes, fua: bool) -> Result<(), DeviceError> {
        self.0.write(offset, data, fua).await
    }
    async fn write_zeroes(&self, offset: u64, length: u64, fua: bool) -> Result<(), DeviceError> {
        self.0.write_zeroes(offset, length, fua).await
    }
    async fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    async fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, DeviceError> {
        self.0.extents(offset, length).await
    }
}

struct One(Arc<Bomb>);

#[async_trait::async_trait]
impl Exports for One {
    async fn open(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        (name == "bomb").then(|| self.0.clone() as Arc<dyn BlockDevice>)
    }
    async fn list(&self) -> Vec<String> {
        vec!["bomb".into()]
    }
}

/// Fixed newstyle, NO_ZEROES, EXPORT_NAME "bomb"; simple replies.
async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await.unwrap();
    s.write_u32(proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES)
        .await
        .unwrap();
    s.write_u64(proto::IHAVEOPT).await.unwrap();
    s.write_u32(1).await.unwrap(); // NBD_OPT_EXPORT_NAME
    s.write_u32(4).await.unwrap();
    s.write_all(b"bomb").await.unwrap();
    let mut export = [0u8; 10];
    s.read_exact(&mut export).await.unwrap();
    assert_eq!(u64::from_be_bytes(export[..8].try_into().unwrap()), 1 << 20);
    s
}

/// Sends a request header for 512 bytes at `offset` (and `payload`, if
/// any) and reads the simple reply's header; returns its error.
async fn request(
    s: &mut TcpStream,
    kind: u16,
    offset: u64,
    cookie: u64,
    payload: &[u8],
) -> std::io::Result<u32> {
    s.write_u32(proto::REQUEST_MAGIC).await?;
    s.write_u16(0).await?;
    s.write_u16(kind).await?;
    s.write_u64(cookie).await?;
    s.write_u64(offset).await?;
    s.write_u32(512).await?;
    s.write_all(payload).await?;
    assert_eq!(s.read_u32().await?, proto::SIMPLE_REPLY_MAGIC);
    let error = s.read_u32().await?;
    assert_eq!(s.read_u64().await?, cookie);
    Ok(error)
}

/// Sends a 512-byte READ; returns the reply's error and data.
async fn read(s: &mut TcpStream, offset: u64, cookie: u64) -> std::io::Result<(u32, Vec<u8>)> {
    let error = request(s, cmd::READ, offset, cookie, &[]).await?;
    let mut data = vec![0u8; if error == 0 { 512 } else { 0 }];
    s.read_exact(&mut data).await?;
    Ok((error, data))
}

/// Sends a 512-byte WRITE; returns the reply's error.
async fn write(s: &mut TcpStream, offset: u64, cookie: u64) -> std::io::Result<u32> {
    request(s, cmd::WRITE, offset, cookie, &[7u8; 512]).await
}

/// After a panic, the victim's connection is closed (EOF or reset, not a
/// hang) and the server still serves a new connection.
async fn closed_and_others_served(victim: &mut TcpStream, addr: std::net::SocketAddr) {
    let after = tokio::time::timeout(std::time::Duration::from_secs(10), read(victim, 0, 99))
        .await
        .expect("the panicked connection closes instead of hanging");
    assert!(after.is_err(), "connection still served after a panic: {after:?}");
    let mut fresh = connect(addr).await;
    assert_eq!(read(&mut fresh, 0, 100).await.unwrap().0, 0);
}

async fn panic_closes_only_its_connection(transport: Transport) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let device = Arc::new(Bomb(MemoryDevice::new(1 << 20, false)));
    tokio::spawn(serve_with(listener, Arc::new(One(device)), transport));

    let mut healthy = connect(addr).await;
    let mut victim = connect(addr).await;
    assert_eq!(read(&mut victim, 0, 1).await.unwrap().0, 0);
    let (error, _) = read(&mut victim, 4096, 2).await.unwrap();
    assert_eq!(error, proto::errno::EIO, "a panicking request answers EIO");
    // Then the connection is closed: the next read sees EOF or a reset.
    let after = tokio::time::timeout(std::time::Duration::from_secs(10), read(&mut victim, 0, 3))
        .await
        .expect("the panicked connection closes instead of hanging");
    assert!(after.is_err(), "connection still served after a panic: {after:?}");
    // The server and other connections are unaffected.
    assert_eq!(read(&mut healthy, 8192, 4).await.unwrap().0, 0);
    let mut fresh = connect(addr).await;
    assert_eq!(read(&mut fresh, 0, 5).await.unwrap().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_on_the_tokio_transport() {
    panic_closes_only_its_connection(Transport::Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_on_the_io_uring_transport() {
    if let Err(e) = cairn_nbd_server::choose_transport(Transport::IoUring) {
        eprintln!("SKIP: io_uring unavailable here ({e})");
        return;
    }
    panic_closes_only_its_connection(Transport::IoUring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_on_the_io_uring_threads_own_paths() {
    if let Err(e) = cairn_nbd_server::choose_transport(Transport::IoUring) {
        eprintln!("SKIP: io_uring unavailable here ({e})");
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let device = Arc::new(Bomb(MemoryDevice::new(1 << 20, false)));
    tokio::spawn(serve_with(listener, Arc::new(One(device)), Transport::IoUring));

    let mut victim = connect(addr).await;
    assert_eq!(write(&mut victim, 0, 1).await.unwrap(), 0);
    assert_eq!(
        write(&mut victim, 16384, 2).await.unwrap(),
        proto::errno::EIO,
        "a panicking write answers EIO"
    );
    closed_and_others_served(&mut victim, addr).await;

    let mut victim = connect(addr).await;
    let (error, _) = read(&mut victim, 12288, 3).await.unwrap();
    assert_eq!(error, proto::errno::EIO, "a panicking read answers EIO");
    closed_and_others_served(&mut victim, addr).await;
}
