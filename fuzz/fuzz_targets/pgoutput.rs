//! The pgoutput decoder on arbitrary bytes, and on the same bytes behind each
//! message tag, so every body parser sees every input.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walhook::source::pgoutput::decode;

/// The tags of pgoutput protocol version 1, plus one it must reject.
const TAGS: &[u8] = b"BCORYIUDTMS";

fuzz_target!(|data: &[u8]| {
    let _ = decode(&Bytes::copy_from_slice(data));
    let mut tagged = Vec::with_capacity(data.len() + 1);
    for &tag in TAGS {
        tagged.clear();
        tagged.push(tag);
        tagged.extend_from_slice(data);
        // Decoding never panics; a message that decodes must have used every byte.
        let _ = decode(&Bytes::copy_from_slice(&tagged));
    }
});
