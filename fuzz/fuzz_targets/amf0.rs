//! cargo fuzz target: see `pushcast_fuzz::amf0`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushcast_fuzz::amf0(data));
