//! cargo fuzz target: see `pushcast_fuzz::ts_muxer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushcast_fuzz::ts_muxer(data));
