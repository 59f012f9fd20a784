//! Test support shared by the worker's integration tests (and meant to be reused by the
//! end-to-end tests): real peers started and stopped by the tests on 127.0.0.1 with free
//! ports, the test media, and probes.
//!
//! Every helper that needs an external program (ffmpeg, ffprobe, nginx with the rtmp
//! module, stunnel) fails the test with a message naming the missing program and the
//! Debian package; nothing passes silently when a tool is missing.
//!
//! Use from a test file with `mod support;`. Each test binary uses a different subset,
//! hence the `dead_code` allowance.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod ffmpeg;
pub mod ffprobe;
pub mod flv;
pub mod http;
pub mod media;
pub mod net;
pub mod nginx;
pub mod proc;
pub mod rtmp_server;
pub mod source;
pub mod stunnel;

use std::sync::Arc;

use pushcast_proto::destination::Destination;
use pushcast_proto::model::Protocol;

/// The destination `url` (+ `stream_key` for rtmp), parsed as the API would.
pub fn destination(protocol: Protocol, url: &str, stream_key: &str) -> Arc<Destination> {
    Destination::parse(protocol, url, stream_key, Vec::new()).expect("a valid destination")
}
