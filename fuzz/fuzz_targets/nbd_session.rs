//! Whole NBD sessions: the input is everything a client sends. The first
//! byte picks the mode. Bit 1 set: the server requires TLS-PSK (identity
//! `mem`), so options before STARTTLS are refused and, after it, the bytes
//! are a TLS handshake. Bit 0 set: a valid prefix is sent first — without
//! TLS the whole negotiation (structured replies, base:allocation, GO to a
//! 1 MiB RAM disk), so the rest is the transmission phase; with TLS the
//! client flags and STARTTLS, so the rest is the TLS handshake. The server
//! must never panic or hang, whatever the bytes.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cairn_nbd_server::memory::MemoryExports;
use cairn_nbd_server::TlsPsk;
use cairn_nbd_server::proto::{self, opt};
use libfuzzer_sys::fuzz_target;

fn option(out: &mut Vec<u8>, code: u32, data: &[u8]) {
    out.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

fn negotiation() -> Vec<u8> {
    let mut out = (proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    option(&mut out, opt::STRUCTURED_REPLY, &[]);
    let mut meta = 3u32.to_be_bytes().to_vec();
    meta.extend_from_slice(b"mem");
    meta.extend_from_slice(&1u32.to_be_bytes());
    meta.extend_from_slice(&15u32.to_be_bytes());
    meta.extend_from_slice(b"base:allocation");
    option(&mut out, opt::SET_META_CONTEXT, &meta);
    let mut go = 3u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"mem");
    go.extend_from_slice(&0u16.to_be_bytes());
    option(&mut out, opt::GO, &go);
    out
}

fn starttls() -> Vec<u8> {
    let mut out = (proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    option(&mut out, opt::STARTTLS, &[]);
    out
}

static TLS: LazyLock<Arc<TlsPsk>> = LazyLock::new(|| {
    let keys = HashMap::from([("mem".to_string(), vec![0x42; 32])]);
    Arc::new(TlsPsk::from_keys(keys).expect("TLS context"))
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let tls = mode & 2 == 2;
    let mut input = match (mode & 1 == 1, tls) {
        (true, false) => negotiation(),
        (true, true) => starttls(),
        (false, _) => Vec::new(),
    };
    input.extend_from_slice(rest);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let exports = Arc::new(MemoryExports::new("mem", 1 << 20));
    runtime.block_on(async move {
        let reader = std::io::Cursor::new(input);
        let tls = tls.then(|| TLS.clone());
        let _ = cairn_nbd_server::server::handle_tls(reader, tokio::io::sink(), exports, tls).await;
    });
});
