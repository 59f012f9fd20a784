//! Fan-out benchmark: pushcast against nginx-rtmp's `push`, side by side in one run.
//!
//! ```text
//! cargo bench --bench fanout
//! ```
//!
//! One 1280x720 30 fps H.264 + AAC source (~3.15 Mb/s FLV, made once with ffmpeg) is
//! published in real time (`ffmpeg -re -stream_loop -1 -c copy`) to the relay under test,
//! which pushes it to N destinations on one nginx-rtmp "sink" (application `live`, no
//! recording; the sink is not measured). The relays under test:
//!
//! - nginx-rtmp: an nginx (`master_process off`, so one process) with N `push` lines;
//! - pushcast: the release `pushcast` standalone binary with N tasks made over REST;
//! - pushcast wi 0: the same with `--write-interval-ms=0` (every frame written as it
//!   comes; the default gathers frames for 100 ms): what the write window buys;
//! - pushcast worker: the data plane alone, the release `pushcast-worker` of a cluster
//!   (etcd + `pushcast-controller` + one worker, the tasks made over the controller's
//!   REST API); only the worker process is measured, like nginx-rtmp's one process.
//!
//! For each relay, the CPU time (utime + stime from /proc/PID/stat) and the resident
//! memory (VmRSS, sampled twice a second, mean) of the relay process are measured over a
//! fixed window, once with 0 destinations (the publish only) and once with N. The
//! per-destination figures are (cost with N - cost with 0) / N; CPU is divided by the
//! window's wall-clock seconds (= stream seconds, the source is real time). The sink's
//! `rtmp_stat` proves that every destination received the whole stream during the window.
//!
//! Then startPush-to-first-keyframe: while pushcast's N pushes run, one more task is
//! started to a recording application on the sink, and the time from sending startPush
//! to the moment the sink has written that push's first H.264 keyframe to disk is
//! measured (the file is polled every 2 ms). Repeated `FANOUT_PROBES` times, spread over
//! the 2 s GOP.
//!
//! The run fails (after printing everything) when a destination did not receive the
//! stream during the window (bytes, for every destination), when a recorded destination
//! (the first three of each relay, application `rec`) misses frames or does not decode,
//! when a pushcast destination got audio ahead of its first keyframe, or when a relay
//! process died.
//!
//! Environment: `FANOUT_N` (destinations, default 50), `FANOUT_SECONDS` (measurement
//! window, default 20), `FANOUT_WARMUP_SECONDS` (settling time before a window, default
//! 3), `FANOUT_PROBES` (default 5), `FANOUT_SMOKE` (any build, figures meaningless: the
//! test suite's `FANOUT_SMOKE=1 FANOUT_N=5 FANOUT_SECONDS=3 FANOUT_WARMUP_SECONDS=1
//! FANOUT_PROBES=1 cargo test --bench fanout -- --bench`). Needs ffmpeg and nginx with the rtmp module (Debian:
//! `ffmpeg nginx libnginx-mod-rtmp`); a missing one fails the run with that message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pushcast_media::FrameKind;
use pushcast_testkit::api::Node;
use pushcast_testkit::etcd::EtcdProcess;
use pushcast_testkit::ffmpeg::publish_file;
use pushcast_testkit::flv::{read_flv, read_flv_file};
use pushcast_testkit::media::Clip;
use pushcast_testkit::net::free_tcp_port;
use pushcast_testkit::nginx::{Nginx, RTMP_MODULE};
use pushcast_testkit::proc::{Guard, run};
use pushcast_testkit::process::{Proc, binary};
use pushcast_testkit::stats::{cpu_ms, rss_kb};
use pushcast_testkit::wait_for;
use serde_json::json;

const TOKEN: &str = "fanout-bench";
/// Length of the source clip (it is looped for as long as a phase needs).
const CLIP_SECONDS: u32 = 20;
/// How long a relay may take to get all its destinations publishing on the sink.
const SETUP_LIMIT: Duration = Duration::from_secs(30);

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then only say so.
    if !std::env::args().any(|a| a == "--bench") {
        println!("fanout: benchmark not run (run it with `cargo bench --bench fanout`)");
        return;
    }
    let settings = Settings::from_env();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run_bench(settings));
}

struct Settings {
    /// A quick run of every phase and check on any build (the test suite runs one, so the
    /// bench cannot rot); its figures mean nothing.
    smoke: bool,
    n: usize,
    window: Duration,
    warmup: Duration,
    probes: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let s = Settings {
            smoke: std::env::var_os("FANOUT_SMOKE").is_some(),
            n: env_num("FANOUT_N", 50),
            window: Duration::from_secs_f64(env_num("FANOUT_SECONDS", 20.0)),
            warmup: Duration::from_secs_f64(env_num("FANOUT_WARMUP_SECONDS", 3.0)),
            probes: env_num("FANOUT_PROBES", 5),
        };
        assert!(s.n > 0, "FANOUT_N must be at least 1");
        assert!(
            s.window >= Duration::from_secs(2),
            "FANOUT_SECONDS must be at least 2 (CPU time is counted in 10 ms ticks)"
        );
        s
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

async fn run_bench(s: Settings) {
    let started = Instant::now();
    check_tools();
    // The binaries cargo built for this bench target (bench profile = release).
    let bin = binary("pushcast");
    if s.smoke {
        println!("fanout: smoke run (FANOUT_SMOKE): the checks hold, the figures mean nothing");
    } else {
        assert!(
            bin.parent().is_some_and(|d| d.ends_with("release")),
            "{} is not an optimized build: run the benchmark with `cargo bench`",
            bin.display()
        );
    }
    let work = tempfile::Builder::new()
        .prefix("pushcast-fanout-")
        .tempdir()
        .expect("tempdir");
    let src = make_source(work.path());
    println!(
        "fanout: source {}x{} {} fps H.264 + AAC, {:.2} Mb/s (FLV payload), {CLIP_SECONDS} s clip \
         looped; N = {}, window {:.0} s, warm-up {:.0} s, load average at start {}",
        1280,
        720,
        30,
        src.bits_per_sec / 1e6,
        s.n,
        s.window.as_secs_f64(),
        s.warmup.as_secs_f64(),
        load_average()
    );
    let sink = Sink::start(s.n + s.probes + 16);

    println!("fanout: nginx-rtmp push, 0 then {} destinations ...", s.n);
    let nginx = bench_nginx(&s, &src, &sink, work.path()).await;
    print_outcome(&nginx);
    println!("fanout: pushcast, 0 then {} destinations ...", s.n);
    let (pushcast, probes) = bench_pushcast(&s, &src, &sink, work.path(), None).await;
    print_outcome(&pushcast);
    println!(
        "fanout: pushcast with --write-interval-ms=0, 0 then {} destinations ...",
        s.n
    );
    let (unbatched, _) = bench_pushcast(&s, &src, &sink, work.path(), Some(0)).await;
    print_outcome(&unbatched);
    println!(
        "fanout: pushcast worker (cluster mode: etcd, controller, worker), 0 then {} \
         destinations ...",
        s.n
    );
    let worker = bench_worker(&s, &src, &sink, work.path()).await;
    print_outcome(&worker);

    report(&s, &src, &nginx, &[&pushcast, &unbatched, &worker], &probes);
    println!(
        "fanout: done in {:.0} s (load average now {})",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    // Fail loudly (after printing everything) when a destination did not get the stream:
    // a relay that drops data would look cheap.
    for r in [&nginx, &pushcast, &unbatched, &worker] {
        let min = r.full.delivered_min;
        assert!(
            min >= 0.9 * src.bits_per_sec,
            "{}: a destination received only {:.2} Mb/s of the {:.2} Mb/s source during the \
             window; the numbers above are not comparable",
            r.name,
            min / 1e6,
            src.bits_per_sec / 1e6
        );
    }
}

/// Fails with a clear message when ffmpeg or nginx-rtmp is missing.
fn check_tools() {
    let out = run("ffmpeg", &["-hide_banner", "-version"]);
    assert!(out.status.success(), "`ffmpeg -version` failed");
    let out = run("nginx", &["-v"]);
    assert!(out.status.success(), "`nginx -v` failed");
    assert!(
        Path::new(RTMP_MODULE).exists(),
        "{RTMP_MODULE} is missing: this benchmark needs nginx with the rtmp module \
         (Debian: apt-get install -y --no-install-recommends nginx libnginx-mod-rtmp)"
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------------------
// Source media

struct Source {
    flv: PathBuf,
    /// Audio + video payload bits per second of the clip (what a destination receives).
    bits_per_sec: f64,
}

/// 1280x720 30 fps H.264 at about 3 Mb/s (6 Mb VBV buffer), GOP 60, AAC 128 kb/s.
fn make_source(dir: &Path) -> Source {
    let clip = Clip {
        video_kbps: Some((3000, 6000)),
        ..Clip::live("1280x720", 3000, CLIP_SECONDS)
    };
    let flv = clip.make_in(dir);
    let frames = read_flv_file(&flv);
    let payload: usize = frames
        .iter()
        .filter(|f| f.kind != FrameKind::Data)
        .map(|f| f.payload.len())
        .sum();
    Source {
        flv,
        bits_per_sec: payload as f64 * 8.0 / f64::from(CLIP_SECONDS),
    }
}

/// `ffmpeg -re -stream_loop -1 -i SRC -c copy -f flv URL`: the source, live, until stopped.
fn publish(src: &Source, url: &str, log: &Path) -> Guard {
    publish_file(&src.flv, url, -1, log)
}

// ---------------------------------------------------------------------------------------
// The sink

/// The destinations: one nginx-rtmp with application `live` (not recorded, where the N
/// pushes go), application `probe` (recorded, for the start-latency probes) and an HTTP
/// `rtmp_stat` page.
struct Sink {
    nginx: Nginx,
    stat_url: String,
    record: PathBuf,
    http: reqwest::Client,
}

impl Sink {
    fn start(streams: usize) -> Sink {
        let port = free_tcp_port();
        let stat_port = free_tcp_port();
        let body = format!(
            "http {{\n\
               access_log off;\n\
               client_body_temp_path {r}/body;\n\
               proxy_temp_path {r}/proxy;\n\
               fastcgi_temp_path {r}/fastcgi;\n\
               uwsgi_temp_path {r}/uwsgi;\n\
               scgi_temp_path {r}/scgi;\n\
               server {{ listen 127.0.0.1:{stat_port}; location /stat {{ rtmp_stat all; }} }}\n\
             }}\n\
             rtmp {{\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 chunk_size 4096;\n\
                 application live {{ live on; }}\n\
                 application probe {{ live on; record all; record_path {r}; }}\n\
                 application rec {{ live on; record all; record_path {r}; }}\n\
               }}\n\
             }}\n",
            r = "{prefix}/record"
        );
        let nginx = Nginx::start_conf("sink", port, streams * 2 + 64, &body);
        Sink {
            record: nginx.dir.path().join("record"),
            nginx,
            stat_url: format!("http://127.0.0.1:{stat_port}/stat"),
            http: pushcast_testkit::http::client_builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    /// `rtmp://127.0.0.1:PORT/{app}`.
    fn url(&self, app: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{app}", self.nginx.port)
    }

    /// Bytes received so far by each live stream (rtmp_stat `bytes_in`: message payload
    /// bytes, i.e. FLV tag bodies).
    async fn streams(&self) -> HashMap<String, u64> {
        let mut last_error = String::new();
        for _ in 0..3 {
            let reply = match self.http.get(&self.stat_url).send().await {
                Ok(r) => r.text().await,
                Err(e) => Err(e),
            };
            match reply {
                Ok(xml) => return parse_stat(&xml),
                Err(e) => last_error = format!("{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "sink stat {} failed: {last_error}; sink log:\n{}",
            self.stat_url,
            self.nginx.error_log()
        )
    }

    /// Waits until every one of `names` is publishing on the sink and has received data.
    async fn wait_streams(&self, names: &[String], relay: &str, diag: &dyn Fn() -> String) {
        let deadline = Instant::now() + SETUP_LIMIT;
        loop {
            let live = self.streams().await;
            let missing: Vec<&String> = names
                .iter()
                .filter(|n| live.get(*n).is_none_or(|b| *b == 0))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{relay}: {} of {} destinations not receiving after {SETUP_LIMIT:?} (first: {}); \
                 relay log:\n{}\nsink log:\n{}",
                missing.len(),
                names.len(),
                missing[0],
                diag(),
                self.nginx.error_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until none of `names` is live any more (the previous relay's pushes ended).
    async fn wait_gone(&self, names: &[String]) {
        wait_for(
            "the sink to see the previous relay's pushes end",
            SETUP_LIMIT,
            || async {
                let live = self.streams().await;
                names.iter().all(|n| !live.contains_key(n)).then_some(())
            },
        )
        .await;
    }
}

/// `<stream><name>N</name>...<bytes_in>B</bytes_in>...` of nginx-rtmp's stat XML.
fn parse_stat(xml: &str) -> HashMap<String, u64> {
    fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
        let start = s.find(open)? + open.len();
        let len = s[start..].find(close)?;
        Some(&s[start..start + len])
    }
    xml.split("<stream>")
        .skip(1)
        .filter_map(|s| {
            let name = between(s, "<name>", "</name>")?;
            let bytes = between(s, "<bytes_in>", "</bytes_in>")?.parse().ok()?;
            Some((name.to_owned(), bytes))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Measurement

/// Clock ticks per second of /proc/PID/stat's utime and stime.
/// What one relay process cost over one window.
struct Cost {
    secs: f64,
    cpu_ms: f64,
    rss_kb_mean: f64,
    rss_kb_max: u64,
    /// Lowest and mean payload rate (bits/s) received by one destination in the window.
    delivered_min: f64,
    delivered_mean: f64,
}

/// Measures process `pid` for `window`: CPU from start to end, RSS twice a second, and
/// what each of `dests` received on the sink meanwhile.
async fn measure(pid: u32, window: Duration, sink: &Sink, dests: &[String]) -> Cost {
    let before = sink.streams().await;
    let cpu0 = cpu_ms(pid);
    let t0 = Instant::now();
    let mut rss = Vec::new();
    loop {
        rss.push(rss_kb(pid));
        let left = window.saturating_sub(t0.elapsed());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(Duration::from_millis(500))).await;
    }
    let cpu1 = cpu_ms(pid);
    let secs = t0.elapsed().as_secs_f64();
    let after = sink.streams().await;
    let rates: Vec<f64> = dests
        .iter()
        .map(|d| {
            let b0 = before.get(d).copied().unwrap_or(0);
            let b1 = after.get(d).copied().unwrap_or(0);
            b1.saturating_sub(b0) as f64 * 8.0 / secs
        })
        .collect();
    Cost {
        secs,
        cpu_ms: cpu1 - cpu0,
        rss_kb_mean: rss.iter().sum::<u64>() as f64 / rss.len() as f64,
        rss_kb_max: rss.iter().copied().max().unwrap_or(0),
        delivered_min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        delivered_mean: rates.iter().sum::<f64>() / rates.len().max(1) as f64,
    }
}

/// One relay, measured with 0 and with N destinations.
struct Outcome {
    name: &'static str,
    n: usize,
    base: Cost,
    full: Cost,
}

impl Outcome {
    fn cpu_per_dest(&self) -> f64 {
        (self.full.cpu_ms / self.full.secs - self.base.cpu_ms / self.base.secs) / self.n as f64
    }

    fn kb_per_dest(&self) -> f64 {
        (self.full.rss_kb_mean - self.base.rss_kb_mean) / self.n as f64
    }
}

/// How many destinations of each relay the sink records (application `rec`), to check
/// what arrived frame by frame; the others only count bytes (`live`).
const RECORDED: usize = 3;

/// The sink application destination `i` goes to.
fn dest_app(i: usize) -> &'static str {
    if i < RECORDED { "rec" } else { "live" }
}

/// What the recorded destinations of a relay got, checked once its pushes have ended:
/// every one decodes cleanly, has no hole (no video gap over 100 ms, as many frames as
/// its span holds), and (pushcast) starts on a keyframe with no audio ahead of it.
fn check_recorded(sink: &Sink, relay: &str, names: &[String], keyframe_first: bool) {
    for name in names.iter().take(RECORDED) {
        let path = sink.nginx.finished_recording(name, Duration::from_secs(20));
        let frames = read_flv_file(&path);
        let video: Vec<&pushcast_media::Frame> =
            pushcast_testkit::flv::media_frames(&frames, FrameKind::Video);
        let (Some(first), Some(last)) = (video.first(), video.last()) else {
            panic!("{relay}: {name} recorded no video");
        };
        let span = last.timestamp_ms.saturating_sub(first.timestamp_ms);
        let want = (f64::from(span) * 30.0 / 1000.0) as usize + 1;
        let gap = pushcast_testkit::ffmpeg::longest_gap_ms(&frames, FrameKind::Video);
        let audio_ahead = frames
            .iter()
            .take_while(|f| {
                !(f.kind == FrameKind::Video && f.is_keyframe() && !f.is_sequence_header())
            })
            .filter(|f| f.kind == FrameKind::Audio && f.payload.get(1) == Some(&1))
            .count();
        println!(
            "fanout: {relay}: {name}: {} video frames over {span} ms ({want} expected), longest \
             gap {gap} ms, {audio_ahead} audio frames before the first keyframe",
            video.len()
        );
        assert!(
            video.len() * 100 >= want * 98 && gap <= 100,
            "{relay}: {name} misses frames: {} of {want}, a gap of {gap} ms",
            video.len()
        );
        let errors = pushcast_testkit::ffprobe::decode_errors(&path);
        assert!(
            errors.trim().is_empty(),
            "{relay}: {name} does not decode: {errors}"
        );
        if keyframe_first {
            assert_eq!(
                audio_ahead, 0,
                "{relay}: {name}: audio ahead of the first keyframe"
            );
        }
    }
}

/// Fails the run when the relay process died.
fn assert_alive(pid: u32, relay: &str) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start())
        .unwrap_or("");
    assert!(
        !stat.is_empty() && !state.starts_with('Z'),
        "{relay}: the relay process ({pid}) died"
    );
}

fn dest_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

// ---------------------------------------------------------------------------------------
// Peer A: nginx-rtmp `push`

fn start_nginx_relay(what: &str, sink: &Sink, dests: &[String]) -> Nginx {
    let port = free_tcp_port();
    let pushes: String = dests
        .iter()
        .enumerate()
        .map(|(i, d)| format!("      push {}/{d};\n", sink.url(dest_app(i))))
        .collect();
    let body = format!(
        "rtmp {{\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             chunk_size 4096;\n\
             application live {{\n\
               live on;\n\
         {pushes}\
             }}\n\
           }}\n\
         }}\n"
    );
    Nginx::start_conf(what, port, dests.len() * 2 + 64, &body)
}

/// Runs the nginx relay with `dests` (may be empty) and the source published to it,
/// measures it, stops it.
async fn nginx_phase(
    s: &Settings,
    src: &Source,
    sink: &Sink,
    dests: &[String],
    logs: &Path,
) -> Cost {
    let what = format!("relay{}", dests.len());
    let relay = start_nginx_relay(&what, sink, dests);
    let url = format!("rtmp://127.0.0.1:{}/live/src", relay.port);
    let mut publisher = publish(src, &url, &logs.join(format!("publish-nginx-{what}.log")));
    wait_for("the nginx relay to log the publish", SETUP_LIMIT, || {
        let ok = relay.error_log().contains("publish: name='src'");
        async move { ok.then_some(()) }
    })
    .await;
    sink.wait_streams(dests, "nginx-rtmp", &|| relay.error_log())
        .await;
    tokio::time::sleep(s.warmup).await;
    assert!(
        publisher.try_status().is_none(),
        "the publisher (ffmpeg) exited"
    );
    let cost = measure(relay.pid(), s.window, sink, dests).await;
    assert_alive(relay.pid(), "nginx-rtmp");
    publisher.terminate(Duration::from_secs(3));
    drop(relay);
    sink.wait_gone(dests).await;
    // nginx-rtmp's push is the peer: it must deliver whole streams for the comparison to
    // hold; how it starts is its own business.
    check_recorded(sink, "nginx-rtmp", dests, false);
    cost
}

async fn bench_nginx(s: &Settings, src: &Source, sink: &Sink, logs: &Path) -> Outcome {
    let base = nginx_phase(s, src, sink, &[], logs).await;
    let full = nginx_phase(s, src, sink, &dest_names("d", s.n), logs).await;
    Outcome {
        name: "nginx-rtmp push",
        n: s.n,
        base,
        full,
    }
}

// ---------------------------------------------------------------------------------------
// Peer B: pushcast

/// The standalone binary (worker and controller in one process, embedded store), with
/// its app open for publishing; with `write_interval_ms`, that `--write-interval-ms`.
async fn start_standalone(data_dir: &Path, write_interval_ms: Option<u64>) -> Node {
    let extra: Vec<String> = write_interval_ms
        .map(|ms| format!("--write-interval-ms={ms}"))
        .into_iter()
        .collect();
    let node = Node::standalone_with(data_dir, TOKEN, &extra).await;
    node.open_publish("app").await;
    node
}

/// `startPush` of stream `src` to `url` + `key`; panics unless the answer is 200.
async fn start_push(api: &Node, id: &str, url: &str, key: &str) {
    let body = json!({"id": id, "stream": {"name": "src"}, "protocol": "rtmp",
                      "url": url, "streamKey": key});
    let r = api.action("startPush", body.clone()).await;
    assert_eq!(r.status, 200, "startPush {body}: {}", r.text);
}

/// Everything a process logged, as one text.
fn output(p: &Proc) -> String {
    p.output().join("\n")
}

/// The data plane alone: etcd, a controller and one worker, each its own process; the
/// worker process is measured. That is what compares with nginx-rtmp's relay, which has
/// no control plane; the standalone measurement above also holds the controller's and
/// the embedded store's per-task state.
async fn bench_worker(s: &Settings, src: &Source, sink: &Sink, logs: &Path) -> Outcome {
    let etcd = EtcdProcess::start();
    let data = tempfile::Builder::new()
        .prefix("pushcast-fanout-cluster-")
        .tempdir()
        .expect("tempdir");
    let controller = Node::controller(&etcd.endpoint(), TOKEN, "c0", &data.path().join("c0")).await;
    let mut worker = Proc::worker(&etcd.endpoint(), "w0", &data.path().join("w0"), &[]).await;
    let rtmp = worker.wait_for_field("RTMP ingest listening", "addr").await;
    controller.open_publish("app").await;
    let (base, full, mut publisher, dests) = fan_out(
        s,
        src,
        sink,
        logs,
        "pushcast worker",
        (&worker, &rtmp),
        &controller,
    )
    .await;
    publisher.terminate(Duration::from_secs(3));
    sink.wait_gone(&dests).await;
    check_recorded(sink, "pushcast worker", &dests, true);
    drop(worker);
    drop(controller);
    drop(etcd);
    Outcome {
        name: "pushcast worker",
        n: s.n,
        base,
        full,
    }
}

/// The two measurements of a pushcast relay: the source published to `ingest` and
/// measured (process `ingest`) with the publish only, then with N pushes made over
/// `api`'s REST API, once every destination receives. Returns the costs and the
/// publisher, still publishing.
async fn fan_out(
    s: &Settings,
    src: &Source,
    sink: &Sink,
    logs: &Path,
    name: &str,
    (ingest, rtmp): (&Proc, &str),
    api: &Node,
) -> (Cost, Cost, Guard, Vec<String>) {
    let pid = ingest.pid();
    let mut publisher = publish(
        src,
        &format!("rtmp://{rtmp}/app/src"),
        &logs.join(format!("publish-{}.log", name.replace(' ', "-"))),
    );
    ingest.wait_logged(&["publish started"], SETUP_LIMIT).await;
    tokio::time::sleep(s.warmup).await;
    assert!(
        publisher.try_status().is_none(),
        "the publisher (ffmpeg) exited"
    );
    // Baseline: the same process, the publish only, no task.
    let base = measure(pid, s.window, sink, &[]).await;

    // Named after the relay: the sink must not mistake one relay's streams for another's.
    let dests = dest_names(&format!("{}-", name.replace(' ', "-")), s.n);
    for (i, d) in dests.iter().enumerate() {
        start_push(api, d, &sink.url(dest_app(i)), d).await;
    }
    let diag = || format!("{}\n{}", output(&api.proc), output(ingest));
    sink.wait_streams(&dests, name, &diag).await;
    tokio::time::sleep(s.warmup).await;
    assert!(
        publisher.try_status().is_none(),
        "the publisher (ffmpeg) exited"
    );
    let full = measure(pid, s.window, sink, &dests).await;
    assert_alive(pid, name);
    (base, full, publisher, dests)
}

/// The standalone at the default write interval (and the start-latency probes), or at
/// `write_interval_ms` (no probes).
async fn bench_pushcast(
    s: &Settings,
    src: &Source,
    sink: &Sink,
    logs: &Path,
    write_interval_ms: Option<u64>,
) -> (Outcome, Vec<Probe>) {
    let data = tempfile::Builder::new()
        .prefix("pushcast-fanout-data-")
        .tempdir()
        .expect("tempdir");
    let node = start_standalone(data.path(), write_interval_ms).await;
    let rtmp = node.rtmp.clone().expect("standalone ingest");
    let name = if write_interval_ms.is_some() {
        "pushcast wi 0"
    } else {
        "pushcast"
    };
    let (base, full, mut publisher, dests) =
        fan_out(s, src, sink, logs, name, (&node.proc, &rtmp), &node).await;

    // Start latency, with the N pushes running: one more task at a time.
    let mut probes = Vec::new();
    let probes_here = if write_interval_ms.is_some() {
        0
    } else {
        s.probes
    };
    for i in 0..probes_here {
        probes.push(probe_start(&node, sink, i).await);
        // Spread the probes over the 2 s GOP (an irregular step, not a multiple of it).
        tokio::time::sleep(Duration::from_millis(730)).await;
    }
    assert_alive(node.proc.pid(), name);
    publisher.terminate(Duration::from_secs(3));
    sink.wait_gone(&dests).await;
    check_recorded(sink, name, &dests, true);
    let output = output(&node.proc);
    let warnings: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    if !warnings.is_empty() {
        println!(
            "fanout: pushcast logged {} warnings/errors, first: {}",
            warnings.len(),
            warnings[0]
        );
    }
    drop(node);
    let outcome = Outcome {
        name,
        n: s.n,
        base,
        full,
    };
    (outcome, probes)
}

/// What pushcast logged of one probe's task (lines naming it, at the node's log level),
/// each with its time since startPush was sent: the steps between the API and the
/// destination.
fn print_timeline(node: &Node, key: &str, wall0: std::time::SystemTime) {
    let t0 = wall0
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() % 86_400.0)
        .unwrap_or(0.0);
    let needle = key;
    for line in node.proc.output().iter().filter(|l| l.contains(needle)) {
        // `2026-11-30T01:07:22.025572Z  INFO ...`: seconds of the day from the time.
        let at = line.get(11..26).and_then(|t| {
            let mut p = t.split(':');
            let h: f64 = p.next()?.parse().ok()?;
            let m: f64 = p.next()?.parse().ok()?;
            let s: f64 = p.next()?.parse().ok()?;
            Some(h * 3600.0 + m * 60.0 + s)
        });
        if let Some(at) = at {
            let msg = line.get(27..).unwrap_or_default();
            println!(
                "    {:>7.1} ms  {}",
                (at - t0) * 1000.0,
                &msg[..msg.len().min(160)]
            );
        }
    }
}

/// One startPush-to-first-keyframe measurement.
struct Probe {
    /// startPush sent → the sink has written the push's first H.264 keyframe to disk.
    to_keyframe: Duration,
    /// startPush sent → its HTTP answer.
    api: Duration,
    /// startPush sent → the sink's recorder opened the file, i.e. it accepted the
    /// push's RTMP `publish` (connect, handshake and publish are done by then).
    publish: Duration,
    /// Audio frames the sink wrote before that keyframe (0: the push began on a keyframe;
    /// nginx's recorder drops video until the first keyframe but keeps audio).
    audio_before_key: usize,
}

async fn probe_start(node: &Node, sink: &Sink, i: usize) -> Probe {
    let key = format!("probe{i}");
    let path = sink.record.join(format!("{key}.flv"));
    let wall0 = std::time::SystemTime::now();
    let t0 = Instant::now();
    start_push(node, &key, &sink.url("probe"), &key).await;
    let api = t0.elapsed();
    let limit = Duration::from_secs(10);
    let mut publish = None;
    let audio_before_key = loop {
        if let Ok(data) = std::fs::read(&path) {
            publish.get_or_insert_with(|| t0.elapsed());
            if let Some(audio) = first_keyframe(&data) {
                break audio;
            }
        }
        assert!(
            t0.elapsed() < limit,
            "probe {key}: no keyframe recorded by the sink {limit:?} after startPush; sink log:\n{}",
            sink.nginx.error_log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let to_keyframe = t0.elapsed();
    print_timeline(node, &key, wall0);
    let r = node.action("stopPush", json!({"id": key})).await;
    assert_eq!(r.status, 200, "stopPush {key}: {}", r.text);
    Probe {
        to_keyframe,
        api,
        publish: publish.unwrap_or(to_keyframe),
        audio_before_key,
    }
}

/// When the (growing) FLV holds a complete H.264 keyframe (not a sequence header): the
/// number of AAC frames before it.
fn first_keyframe(data: &[u8]) -> Option<usize> {
    if data.len() < 13 || &data[..3] != b"FLV" {
        return None;
    }
    let frames = read_flv(data);
    let key = frames
        .iter()
        .position(|f| f.kind == FrameKind::Video && f.payload.get(1) == Some(&1))?;
    if !frames[key].is_keyframe() {
        return None;
    }
    Some(
        frames[..key]
            .iter()
            .filter(|f| f.kind == FrameKind::Audio && f.payload.get(1) == Some(&1))
            .count(),
    )
}

// ---------------------------------------------------------------------------------------
// Report

/// One line as soon as a relay is measured (so a later failure loses nothing).
fn print_outcome(o: &Outcome) {
    println!(
        "fanout: {}: {:.3} CPU-ms per stream-second per destination, {:.1} kB per destination",
        o.name,
        o.cpu_per_dest(),
        o.kb_per_dest()
    );
}

fn report(s: &Settings, src: &Source, nginx: &Outcome, ours: &[&Outcome], probes: &[Probe]) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "fan-out of one {:.2} Mb/s 720p30 H.264 + AAC source to N = {} nginx-rtmp destinations \
         on 127.0.0.1, {:.0} s windows, {cpus} CPUs",
        src.bits_per_sec / 1e6,
        s.n,
        s.window.as_secs_f64()
    );
    println!(
        "{:<16} {:>26} {:>18} {:>28}",
        "relay", "CPU-ms/stream-s/dest", "memory/dest", "received/dest (min, mean)"
    );
    let rows: Vec<&Outcome> = std::iter::once(nginx).chain(ours.iter().copied()).collect();
    for o in &rows {
        println!(
            "{:<16} {:>26.3} {:>15.1} kB {:>13.2} {:>6.2} Mb/s",
            o.name,
            o.cpu_per_dest(),
            o.kb_per_dest(),
            o.full.delivered_min / 1e6,
            o.full.delivered_mean / 1e6
        );
    }
    for o in ours {
        println!(
            "{:<16} {:>26.2} {:>18.2}",
            format!("{} / nginx", o.name.trim_start_matches("pushcast ")),
            o.cpu_per_dest() / nginx.cpu_per_dest(),
            o.kb_per_dest() / nginx.kb_per_dest()
        );
    }
    println!("raw (relay process; CPU over the window, RSS mean / max):");
    for o in &rows {
        for (label, c) in [("0 dest", &o.base), ("N dest", &o.full)] {
            println!(
                "  {:<16} {label}: {:>8.0} CPU-ms in {:.1} s ({:.1}% of one CPU), RSS {:.0} / {} kB",
                o.name,
                c.cpu_ms,
                c.secs,
                c.cpu_ms / c.secs / 10.0,
                c.rss_kb_mean,
                c.rss_kb_max
            );
        }
    }
    if probes.is_empty() {
        return;
    }
    let mut ms: Vec<f64> = probes
        .iter()
        .map(|p| p.to_keyframe.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    println!(
        "pushcast startPush -> first keyframe written by the destination, with {} pushes \
         running ({} probes): min {:.0} ms, median {:.0} ms, max {:.0} ms",
        s.n,
        ms.len(),
        ms[0],
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    );
    for (i, p) in probes.iter().enumerate() {
        println!(
            "  probe {i}: {:>5.0} ms to keyframe (startPush answered in {:.0} ms, publish \
             accepted by the sink at {:.0} ms), {} audio frames before it",
            p.to_keyframe.as_secs_f64() * 1000.0,
            p.api.as_secs_f64() * 1000.0,
            p.publish.as_secs_f64() * 1000.0,
            p.audio_before_key
        );
    }
}
