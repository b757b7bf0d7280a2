//! A minimal NBD client for protocol tests: fixed newstyle, GO, simple replies.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct RawNbd {
    pub stream: TcpStream,
    pub size: u64,
    pub flags: u16,
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

pub fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

/// Reads the greeting and sends client flags.
pub fn greet(s: &mut TcpStream) {
    let g = read_exact(s, 18);
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap();
}

pub fn send_option(s: &mut TcpStream, option: u32, data: &[u8]) {
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// Reads one option reply: (type, data).
pub fn option_reply(s: &mut TcpStream) -> (u32, Vec<u8>) {
    let h = read_exact(s, 20);
    assert_eq!(
        u64::from_be_bytes(h[..8].try_into().unwrap()),
        0x0003_e889_0455_65a9
    );
    let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
    (kind, read_exact(s, len))
}

pub fn go_data(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

impl RawNbd {
    /// Connects and enters transmission on `export` with NBD_OPT_GO.
    pub fn open(port: u16, export: &str) -> RawNbd {
        let mut s = connect(port);
        greet(&mut s);
        send_option(&mut s, 7, &go_data(export));
        let (mut size, mut flags) = (0, 0);
        loop {
            let (kind, data) = option_reply(&mut s);
            match kind {
                1 => break,
                3 if u16::from_be_bytes([data[0], data[1]]) == 0 => {
                    size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                    flags = u16::from_be_bytes([data[10], data[11]]);
                }
                3 => {}
                other => panic!(
                    "GO {export}: reply {other:#x} {:?}",
                    String::from_utf8_lossy(&data)
                ),
            }
        }
        RawNbd {
            stream: s,
            size,
            flags,
        }
    }

    pub fn send(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, length: u32, payload: &[u8]) {
        let mut m = 0x2560_9513u32.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&length.to_be_bytes());
        m.extend_from_slice(payload);
        self.stream.write_all(&m).unwrap();
    }

    /// Reads a simple reply: (errno, cookie).
    pub fn reply(&mut self) -> (u32, u64) {
        let h = read_exact(&mut self.stream, 16);
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
        (
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
        )
    }

    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.send(0, 0, 1, offset, len, &[]);
        let (err, _) = self.reply();
        if err != 0 {
            return Err(err);
        }
        Ok(read_exact(&mut self.stream, len as usize))
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.send(1, 0, 2, offset, data.len() as u32, data);
        self.reply().0
    }
}
