//! CPU cost per destination of RTMP pushes, to compare with nginx-rtmp's `push` (0.21
//! CPU-ms per stream-second per destination at 3.15 Mb/s 720p30, STACK.md). Ignored by
//! default (it takes ~20 s and wants a release build):
//!
//! ```text
//! cargo test --release -p pushcast-worker --test push_bench -- --ignored --nocapture
//! ```
//!
//! N sessions push the same 720p clip in real time to one nginx-rtmp; the CPU time of
//! this process (sessions + the paced sources standing in for the hub) is divided by
//! N × stream seconds. `PUSH_BENCH_N`, `PUSH_BENCH_CHUNK` and `PUSH_BENCH_INTERVAL_MS` override
//! N (default 20), the RTMP chunk size and the write interval.

use std::time::{Duration, Instant};

use crate::Paced as PacedSource;
use pushcast_proto::model::Protocol;
use pushcast_testkit::destination;
use pushcast_testkit::flv::read_flv_file;
use pushcast_testkit::media::Clip;
use pushcast_testkit::nginx::Nginx;
use pushcast_worker::push::{PushConfig, SessionCounters, SessionEnd, TrackSelection, run_attempt};

/// utime + stime of this process, in ms (from /proc/self/stat, clock ticks of 10 ms).
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f[11] + f[12]) * 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored"]
async fn rtmp_cpu_per_destination() {
    let n: usize = std::env::var("PUSH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let seconds = 10;
    let frames = read_flv_file(&Clip::live("1280x720", 3000, seconds).make_in(dir.path()));
    let bytes: usize = frames.iter().map(|f| f.payload.len()).sum();
    eprintln!(
        "clip: {} frames, {:.2} Mb/s",
        frames.len(),
        bytes as f64 * 8.0 / f64::from(seconds) / 1e6
    );
    let nginx = Nginx::start();
    let mut cfg = PushConfig::default();
    if let Some(c) = std::env::var("PUSH_BENCH_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.rtmp_chunk_size = c;
    }
    if let Some(ms) = std::env::var("PUSH_BENCH_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.write_interval = Duration::from_millis(ms);
    }
    let url = nginx.rtmp_url();
    let cpu0 = cpu_ms();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (frames, cfg, url) = (frames.clone(), cfg.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let dest = destination(Protocol::Rtmp, &url, &format!("bench{i}"));
            let mut source = PacedSource::new(frames, 1.0);
            if std::env::var_os("PUSH_BENCH_SOURCE_ONLY").is_some() {
                // Baseline: the cost of the paced sources alone.
                use pushcast_worker::push::FrameSource;
                let mut n = 0u64;
                while let Some(f) = source.next_frame().await {
                    n += f.payload.len() as u64;
                }
                return (Ok(SessionEnd::SourceEnded), n);
            }
            let counters = SessionCounters::new();
            let cancel = tokio_util::sync::CancellationToken::new();
            let r = run_attempt(
                &dest,
                TrackSelection::ALL,
                &mut source,
                &counters,
                &cfg,
                &cancel,
                |_| {},
            )
            .await;
            (r.map_err(|e| e.to_string()), counters.sent_bytes())
        }));
    }
    for t in tasks {
        let (r, sent) = t.await.unwrap();
        assert_eq!(r, Ok(SessionEnd::SourceEnded));
        assert!(sent > 0);
    }
    let wall = t0.elapsed();
    let cpu = cpu_ms() - cpu0;
    let stream_seconds = wall.as_secs_f64().min(f64::from(seconds) + 1.0);
    let per = cpu as f64 / (n as f64 * stream_seconds);
    eprintln!(
        "{n} destinations, chunk size {}, write interval {:?}: {cpu} CPU-ms over {wall:?} = \
         {per:.3} CPU-ms per stream-second per destination (nginx-rtmp push: 0.21)",
        cfg.rtmp_chunk_size, cfg.write_interval
    );
    assert!(wall < Duration::from_secs(u64::from(seconds) + 5));
}
