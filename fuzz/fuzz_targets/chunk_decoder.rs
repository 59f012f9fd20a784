//! cargo fuzz target: see `pushcast_fuzz::chunk_decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushcast_fuzz::chunk_decoder(data));
