//! Every NBD parser on arbitrary bytes: never panics, and what parses
//! re-encodes to the same bytes.
#![no_main]

use cairn_nbd_server::proto::{self, Request, REQUEST_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = <&[u8; REQUEST_LEN]>::try_from(data.get(..REQUEST_LEN).unwrap_or(&[])) {
        if let Ok(req) = Request::parse(header) {
            assert_eq!(&req.encode(), header, "request round trip");
        }
    }
    if let Some(header) = data.get(..16) {
        let header: &[u8; 16] = header.try_into().expect("16 bytes");
        if let Ok((option, len)) = proto::parse_option_header(header) {
            assert_eq!(option.to_be_bytes(), header[8..12]);
            assert_eq!(len.to_be_bytes(), header[12..16]);
        }
    }
    if let Ok((name, items)) = proto::parse_info_request(data) {
        assert_eq!(4 + name.len() + 2 + items.len() * 2, data.len());
    }
    if let Ok((name, queries)) = proto::parse_meta_request(data) {
        assert!(4 + name.len() + 4 + queries.len() * 4 <= data.len());
    }
});
