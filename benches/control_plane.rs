//! Control-plane scale benchmark: the standalone process and a cluster (etcd + controller
//! + worker), side by side in one run, with many reserved tasks.
//!
//! ```text
//! cargo bench --bench control_plane
//! ```
//!
//! For each size (`CP_SIZES`, default `10000,100000`; 0 gives the processes' own idle
//! cost) and each deployment:
//! 1. start it fresh (the standalone on a new embedded store; etcd, one controller and
//!    one worker, each its own process);
//! 2. create that many reserved tasks (their stream is not live) over REST `startPush`,
//!    `CP_CONCURRENCY` requests at a time (default 32): the rate and the p50/p99 latency;
//! 3. let it settle, then measure each process's CPU (utime + stime from /proc) over
//!    `CP_SECONDS` (default 20) of idling: nothing changes, so every CPU-ms is the cost of
//!    having the tasks;
//! 4. the resident memory each process gained from the tasks, per task (VmRSS after the
//!    tasks minus VmRSS before them, over the count);
//! 5. REST `:pushes` of every task: median and max of `CP_LISTS` (default 5) calls.
//!
//! Prints one table at the end. `CP_SMOKE` (any build; figures meaningless) runs it
//! small: the test suite runs `CP_SMOKE=1 CP_SIZES=200 CP_SECONDS=2 cargo test --bench
//! control_plane -- --bench`, so the bench cannot rot. `PUSHCAST_BIN_DIR` runs other
//! builds of the binaries (e.g. an older release, for a before/after table). Needs etcd
//! (`scripts/test.sh` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pushcast_testkit::api::Node;
use pushcast_testkit::etcd::EtcdProcess;
use pushcast_testkit::process::Proc;
use pushcast_testkit::stats::{cpu_ms, median, percentile, rss_kb};
use serde_json::json;

const TOKEN: &str = "control-plane-bench";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "control_plane: benchmark not run (run it with `cargo bench --bench control_plane`)"
        );
        return;
    }
    let s = Settings::from_env();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run_bench(s));
}

struct Settings {
    sizes: Vec<usize>,
    concurrency: usize,
    window: Duration,
    lists: usize,
    smoke: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
        let num = |name: &str, default: &str| -> f64 {
            let v = var(name, default);
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        };
        Settings {
            sizes: var("CP_SIZES", "10000,100000")
                .split(',')
                .map(|n| {
                    n.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("CP_SIZES: {n:?} is not a number"))
                })
                .collect(),
            concurrency: num("CP_CONCURRENCY", "32") as usize,
            window: Duration::from_secs_f64(num("CP_SECONDS", "20")),
            lists: (num("CP_LISTS", "5") as usize).max(1),
            smoke: std::env::var_os("CP_SMOKE").is_some(),
        }
    }
}

/// One deployment at one size.
struct Row {
    deployment: &'static str,
    tasks: usize,
    create_rate: f64,
    create_p50_ms: f64,
    create_p99_ms: f64,
    /// (process, CPU-ms per second idle, bytes of RSS per task)
    processes: Vec<(&'static str, f64, f64)>,
    list_median_ms: f64,
    list_max_ms: f64,
}

async fn run_bench(s: Settings) {
    let mut rows = Vec::new();
    for &n in &s.sizes {
        rows.push(standalone(&s, n).await);
        rows.push(cluster(&s, n).await);
    }
    println!();
    println!(
        "control plane, reserved tasks (idle over {:.0} s; {} concurrent creates; `:pushes` median of {}){}",
        s.window.as_secs_f64(),
        s.concurrency,
        s.lists,
        if s.smoke {
            " [SMOKE: figures mean nothing]"
        } else {
            ""
        }
    );
    println!(
        "| deployment | tasks | startPush/s | p50 ms | p99 ms | process | idle CPU-ms/s | RSS bytes/task | `:pushes` ms (median / max) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        for (i, (proc, cpu, mem)) in r.processes.iter().enumerate() {
            let first = i == 0;
            // The row's own figures on its first line only.
            let cell = |v: String| if first { v } else { String::new() };
            println!(
                "| {} | {} | {} | {} | {} | {proc} | {cpu:.1} | {mem:.0} | {} |",
                cell(r.deployment.to_string()),
                cell(r.tasks.to_string()),
                cell(format!("{:.0}", r.create_rate)),
                cell(format!("{:.1}", r.create_p50_ms)),
                cell(format!("{:.1}", r.create_p99_ms)),
                cell(format!("{:.1} / {:.1}", r.list_median_ms, r.list_max_ms)),
            );
        }
    }
}

async fn standalone(s: &Settings, n: usize) -> Row {
    let dir = tempfile::Builder::new()
        .prefix("pushcast-cp-")
        .tempdir()
        .expect("tempdir");
    let node = Node::standalone(dir.path(), TOKEN).await;
    let pid = node.proc.pid();
    let measured = [("pushcast", pid)];
    phases(s, "standalone", &node, n, &measured).await
}

async fn cluster(s: &Settings, n: usize) -> Row {
    let etcd = EtcdProcess::start();
    let dir = tempfile::Builder::new()
        .prefix("pushcast-cp-cluster-")
        .tempdir()
        .expect("tempdir");
    let controller = Node::controller(&etcd.endpoint(), TOKEN, "c0", &dir.path().join("c0")).await;
    let worker = Proc::worker(&etcd.endpoint(), "w0", &dir.path().join("w0"), &[]).await;
    let measured = [
        ("controller", controller.proc.pid()),
        ("etcd", etcd.pid()),
        ("worker", worker.pid()),
    ];
    let row = phases(s, "cluster", &controller, n, &measured).await;
    drop(worker);
    drop(controller);
    drop(etcd);
    row
}

type Measured<'a> = &'a [(&'static str, u32)];

/// Creates `n` tasks on `api`, then measures idling and listing: the row of
/// `deployment`.
async fn phases(
    s: &Settings,
    deployment: &'static str,
    api: &Node,
    n: usize,
    measured: Measured<'_>,
) -> Row {
    api.open_publish("app").await;
    settle().await;
    let rss_before: Vec<u64> = measured.iter().map(|(_, pid)| rss_kb(*pid)).collect();

    let t0 = Instant::now();
    let latencies = create(api, n, s.concurrency).await;
    let rate = n as f64 / t0.elapsed().as_secs_f64().max(1e-3);
    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);
    println!(
        "{} tasks created on {}: {rate:.0}/s, p50 {p50:.1} ms, p99 {p99:.1} ms",
        n, api.proc.name
    );

    settle().await;
    let cpu0: Vec<f64> = measured.iter().map(|(_, pid)| cpu_ms(*pid)).collect();
    let w0 = Instant::now();
    tokio::time::sleep(s.window).await;
    let secs = w0.elapsed().as_secs_f64();
    let cpu1: Vec<f64> = measured.iter().map(|(_, pid)| cpu_ms(*pid)).collect();
    let rss_after: Vec<u64> = measured.iter().map(|(_, pid)| rss_kb(*pid)).collect();
    let processes = measured
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let cpu = (cpu1[i] - cpu0[i]) / secs;
            let per_task = if n == 0 {
                0.0
            } else {
                (rss_after[i] as f64 - rss_before[i] as f64) * 1024.0 / n as f64
            };
            println!("  {name}: idle {cpu:.1} CPU-ms/s, {per_task:.0} bytes of RSS per task");
            (*name, cpu, per_task)
        })
        .collect();

    // Timed from the request to the last byte of the answer; parsed (and checked)
    // afterwards, outside the timing.
    let http = pushcast_testkit::http::client(std::time::Duration::from_secs(60));
    let url = format!("{}/v1/vhosts/default/apps/app:pushes", api.rest);
    let mut times = Vec::with_capacity(s.lists);
    for _ in 0..s.lists {
        let t = Instant::now();
        let r = http
            .get(&url)
            .header("Authorization", api.auth_header())
            .send()
            .await
            .expect("`:pushes` request");
        let status = r.status().as_u16();
        let body = r.bytes().await.expect("`:pushes` answer");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200, "`:pushes`: {}", String::from_utf8_lossy(&body));
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let listed = json["response"].as_array().map_or(0, Vec::len);
        assert_eq!(listed, n, "`:pushes` lists every task");
    }
    let list = (
        median(&times),
        times.iter().copied().fold(0.0_f64, f64::max),
    );
    println!("  `:pushes`: median {:.1} ms, max {:.1} ms", list.0, list.1);
    Row {
        deployment,
        tasks: n,
        create_rate: rate,
        create_p50_ms: p50,
        create_p99_ms: p99,
        processes,
        list_median_ms: list.0,
        list_max_ms: list.1,
    }
}

/// Lets a burst's after-effects (scheduler passes, status writes, compaction) pass.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// `n` reserved tasks, `concurrency` requests in flight; the latency of each (ms).
async fn create(api: &Node, n: usize, concurrency: usize) -> Vec<f64> {
    let api = Arc::new(api);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let body = json!({"id": format!("t{i:06}"), "stream": {"name": format!("s{}", i % 100)},
                              "protocol": "rtmp", "url": "rtmp://127.0.0.1:9/live",
                              "streamKey": format!("k{i}")});
                let t = Instant::now();
                let r = api.action("startPush", body).await;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(r.status, 200, "startPush t{i}: {}", r.text);
                ms
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}
