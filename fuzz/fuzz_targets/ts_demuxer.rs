//! cargo fuzz target: see `pushcast_fuzz::ts_demuxer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushcast_fuzz::ts_demuxer(data));
