//! Test sandbox: real etcd and the real pushcast binaries as child processes on
//! 127.0.0.1, started and stopped by the tests (garage / quickwit style).
#![allow(dead_code, clippy::unwrap_used)]

pub mod api;
pub mod cluster;
#[path = "../../store/tests/support/etcd.rs"]
pub mod etcd;
pub mod process;

/// Real peers and media from the worker's test support: nginx-rtmp, ffmpeg, ffprobe,
/// stunnel, the test FLV.
#[path = "../../worker/tests/support/mod.rs"]
pub mod peers;

use std::time::{Duration, Instant};

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

/// ffmpeg publishing the test FLV (H.264 High + AAC) to `url` in real time (`-re`),
/// repeated `loops` more times; its output goes to `dir/{tag}.log`.
pub fn publish(url: &str, dir: &std::path::Path, tag: &str, loops: u32) -> peers::proc::Guard {
    let loops = loops.to_string();
    let media = peers::media::test_media();
    peers::proc::Guard::spawn(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-re",
            "-stream_loop",
            &loops,
            "-i",
            media.flv.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "flv",
            url,
        ],
        &dir.join(format!("{tag}.log")),
    )
}

/// A free TCP port on 127.0.0.1 (bound and released; used only for peers like etcd
/// that cannot report the port they bound).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
