//! cargo fuzz target: see `pushcast_fuzz::media_tags`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushcast_fuzz::media_tags(data));
