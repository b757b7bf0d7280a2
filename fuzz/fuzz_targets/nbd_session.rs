//! Whole NBD sessions: the input is everything a client sends. With the
//! first byte odd, a valid negotiation (structured replies, base:allocation,
//! GO to a 1 MiB RAM disk) is sent first and the rest of the input is the
//! transmission phase, so the fuzzer reaches commands quickly. The server
//! must never panic or hang, whatever the bytes.
#![no_main]

use std::sync::Arc;

use cairn_nbd_server::memory::MemoryExports;
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

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut input = if mode & 1 == 1 { negotiation() } else { Vec::new() };
    input.extend_from_slice(rest);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let exports = Arc::new(MemoryExports::new("mem", 1 << 20));
    runtime.block_on(async move {
        let reader = std::io::Cursor::new(input);
        let _ = cairn_nbd_server::server::handle(reader, tokio::io::sink(), exports).await;
    });
});
