//! Feeds arbitrary datagrams to the heartbeat decoder: it must return an error, never panic.
//! Run with `cargo +nightly fuzz run wire_decode` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

const KEY: &[u8] = b"enipeer fuzzing key, not secret";

fuzz_target!(|data: &[u8]| {
    let _ = enipeer::peer::wire::decode(data, KEY);
});
