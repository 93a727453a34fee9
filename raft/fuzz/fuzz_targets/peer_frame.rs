//! A peer-port frame body, as an unauthenticated peer sends it: decoded as
//! a request under each of the limits the server uses. Whatever the bytes,
//! decoding answers Ok or Err, never panics, never allocates past the
//! limit (libFuzzer's -malloc_limit_mb catches that), and what decodes
//! encodes again to a frame that decodes.
#![no_main]

use flotilla_raft::wire::{decode_within, encode, Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = flotilla_raft::Limits::default();
    for max in [limits.unauthenticated_frame_max_bytes, limits.request_size_max_bytes] {
        if let Ok(request) = decode_within::<Request>(data, max) {
            let again = encode(&request).expect("a decoded request encodes");
            decode_within::<Request>(&again, again.len()).expect("a re-encoded request decodes");
        }
    }
    // Replies come from servers the client authenticated, but a client
    // must not fall over on a bad one either.
    let _ = decode_within::<Reply>(data, limits.reply_size_max_bytes);
});
