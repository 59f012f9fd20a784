//! cargo fuzz target: see `pushcast_fuzz::rest_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushcast_fuzz::rest_json(data));
