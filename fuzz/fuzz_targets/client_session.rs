//! cargo fuzz target: see `pushcast_fuzz::client_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushcast_fuzz::client_session(data));
