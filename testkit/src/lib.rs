//! The test sandbox of pushcast, shared by the end-to-end tests, the crates' integration
//! tests and the benchmark: real peers on 127.0.0.1 with free ports, started and stopped
//! by the tests (garage / quickwit style).
//!
//! - the pushcast binaries as child processes ([`process`]), found where Cargo built
//!   them for the test ([`process::binary`]), and their APIs ([`api::Node`]);
//! - a cluster sandbox: etcd, controllers, workers, nginx-rtmp destinations and faults
//!   ([`cluster`], [`etcd`]);
//! - encoders and receivers: ffmpeg ([`ffmpeg`]), ffprobe ([`ffprobe`]), nginx-rtmp
//!   ([`nginx`]), stunnel ([`stunnel`]), a scripted RTMP server ([`rtmp_server`]), HTTP
//!   receivers ([`receiver`], [`http`]);
//! - test media: the test clip ([`media`]), FLV reading ([`flv`]), paced sources
//!   ([`source`]);
//! - processes that are always cleaned up ([`proc`]), free ports and readiness
//!   ([`net`]), and [`wait_for`].
//!
//! Every helper that needs an external program fails the test with a message naming the
//! missing program and its Debian package; nothing passes silently when a tool is
//! missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod browser;
pub mod cluster;
pub mod etcd;
pub mod ffmpeg;
pub mod ffmpeg9;
pub mod ffprobe;
pub mod flv;
pub mod http;
pub mod media;
pub mod net;
pub mod nginx;
pub mod pki;
pub mod proc;
pub mod process;
pub mod receiver;
pub mod rtmp_server;
pub mod source;
pub mod stats;
pub mod stunnel;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pushcast_proto::destination::Destination;
use pushcast_proto::model::Protocol;

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The destination `url` (+ `stream_key` for rtmp), parsed as the API would.
pub fn destination(protocol: Protocol, url: &str, stream_key: &str) -> Arc<Destination> {
    Destination::parse(protocol, url, stream_key, Vec::new()).expect("a valid destination")
}
