//! The data plane end to end: the real standalone binary ingests a real ffmpeg publish
//! (H.264 High + AAC) and pushes it to real destinations (nginx-rtmp recording, ffmpeg
//! receivers); what arrived is checked with ffprobe.

use std::path::Path;
use std::time::Duration;

use pushcast_media::FrameKind;
use pushcast_testkit::api::Node;
use pushcast_testkit::ffmpeg::{
    Receiver, RtmpRecorder, assert_starts_on_a_keyframe_at_zero, longest_gap_ms,
};
use pushcast_testkit::ffprobe;
use pushcast_testkit::flv::count_media;
use pushcast_testkit::media::{Clip, test_media};
use pushcast_testkit::net::free_udp_port;
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::proc::Guard;
use pushcast_testkit::stats::rss_kb;
use pushcast_testkit::wait_for;
use serde_json::{Value, json};

const TOKEN: &str = "data-plane";

/// ffmpeg publishing the test FLV in real time (`-re`), `loops` extra times.
fn publish(node: &Node, stream: &str, loops: u32, log_dir: &Path) -> Guard {
    let url = node.ingest_url("app", stream);
    pushcast_testkit::ffmpeg::publish(&url, log_dir, &format!("publish-{stream}"), loops)
}

async fn start_push(node: &Node, body: Value) {
    let r = node.action("startPush", body).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Polls the task until `pred` holds.
async fn wait_task(
    node: &Node,
    id: &str,
    what: &str,
    secs: u64,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(
        &format!("task {id}: {what}"),
        Duration::from_secs(secs),
        || async {
            let t = node.task(id).await;
            pred(&t).then_some(t)
        },
    )
    .await
}

/// At least 98% of `sent` source frames (video + audio) are in the recording.
fn assert_most_frames(path: &Path, sent: usize) {
    let streams = ffprobe::probe(path);
    let got: usize = streams.iter().map(|s| s.frames).sum();
    assert!(
        got * 100 >= sent * 98,
        "{got} of {sent} frames arrived (< 98%)"
    );
}

/// The recording holds a clean H.264 + AAC stream with `min_video` video frames or more.
/// (How it starts is checked with a recorder that keeps what arrives, [`RtmpRecorder`]:
/// nginx-rtmp's own recorder skips video until the first keyframe and rebases times.)
fn assert_clean_recording(path: &Path, min_video: usize, min_audio: usize) {
    let streams = ffprobe::probe(path);
    let v = ffprobe::stream(&streams, "h264");
    let a = ffprobe::stream(&streams, "aac");
    assert!(
        v.frames >= min_video,
        "video frames {} < {min_video}",
        v.frames
    );
    assert!(
        a.frames >= min_audio,
        "audio frames {} < {min_audio}",
        a.frames
    );
    let errors = ffprobe::decode_errors(path);
    assert!(errors.trim().is_empty(), "decode errors: {errors}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reserved_rtmp_push_starts_on_publish_and_restarts_on_republish() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    let nginx = Nginx::start();
    let media = test_media();

    // Reserved: the stream is not live yet.
    start_push(
        &node,
        json!({"id": "yt", "stream": {"name": "cam"}, "protocol": "rtmp",
                             "url": nginx.rtmp_url(), "streamKey": "first"}),
    )
    .await;
    assert_eq!(node.task("yt").await["state"], "ready");

    let mut publisher = publish(&node, "cam", 0, dir.path());
    let t = wait_task(&node, "yt", "started and sending", 20, |t| {
        t["state"] == "started" && t["sentBytes"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_ne!(t["startTime"], "1970-01-01T00:00:00.000+00:00");
    // Counters move while it runs (read live from the worker).
    let before = t["sentBytes"].as_u64().unwrap();
    let later = wait_task(&node, "yt", "sentBytes growing", 10, |t| {
        t["sentBytes"].as_u64().unwrap_or(0) > before
    })
    .await;
    assert!(later["sentTime"].as_u64().unwrap() > 0);
    // The full listing shows live counters too.
    let listed = node.action("pushes", json!({})).await.json["response"][0].clone();
    assert!(listed["sentBytes"].as_u64().unwrap() >= later["sentBytes"].as_u64().unwrap());

    // The source ends: the session ends, sequence + 1, the task waits again.
    assert!(
        publisher.wait_exit(Duration::from_secs(20)).is_some(),
        "publisher finished"
    );
    let t = wait_task(&node, "yt", "session ended", 20, |t| {
        t["sequence"] == 1 && (t["state"] == "ready" || t["state"] == "stopped")
    })
    .await;
    let first_total = t["totalsentBytes"].as_u64().unwrap();
    assert!(first_total > 0);
    assert_ne!(t["finishTime"], "1970-01-01T00:00:00.000+00:00");
    let rec = nginx.finished_recording("first", Duration::from_secs(15));
    // Reserved before the publish: every frame of the source arrives.
    assert_clean_recording(&rec, media.video_frames(), 1);
    assert_most_frames(&rec, media.video_frames() + media.audio_frames());

    // Republish: the task pushes again by itself; totals keep growing.
    let mut again = publish(&node, "cam", 0, dir.path());
    wait_task(&node, "yt", "pushing again after republish", 20, |t| {
        t["state"] == "started" && t["totalsentBytes"].as_u64().unwrap_or(0) > first_total
    })
    .await;
    assert!(again.wait_exit(Duration::from_secs(20)).is_some());
    wait_task(&node, "yt", "second session ended", 20, |t| {
        t["sequence"] == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_started_mid_stream_begins_on_a_keyframe_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    // A destination that keeps what arrives as it arrives (nginx-rtmp's recorder would
    // skip video until a keyframe and rebase the timestamps itself).
    let mut recorder = RtmpRecorder::start(&dir.path().join("late.flv"));
    let media = test_media();
    let mut publisher = publish(&node, "live1", 1, dir.path());
    // Live, and past the first GOP (2 s): the cache then starts at a later keyframe.
    node.proc
        .wait_logged(&["publish started"], Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let t0 = std::time::Instant::now();
    start_push(
        &node,
        json!({"id": "late", "stream": {"name": "live1"}, "protocol": "rtmp",
                             "url": recorder.rtmp_url(), "streamKey": "late"}),
    )
    .await;
    wait_task(&node, "late", "started", 10, |t| t["state"] == "started").await;
    println!("startPush to started (GOP cache): {:?}", t0.elapsed());
    assert!(publisher.wait_exit(Duration::from_secs(20)).is_some());
    let frames = recorder.finish(Duration::from_secs(15));
    assert_starts_on_a_keyframe_at_zero(&frames, "the late push");
    // It began at a GOP boundary of the source (the cached GOP, every frame of it and
    // after): 2 plays of 120 frames, GOPs of 60; one whole GOP or more was before it.
    let sent = media.video_frames() * 2;
    let got = count_media(&frames, FrameKind::Video);
    assert!(
        got < sent,
        "the push started mid-stream: {got} of {sent} video frames"
    );
    assert_eq!(
        (sent - got) % 60,
        0,
        "{got} of {sent}: frames lost after the keyframe"
    );
    assert!(
        longest_gap_ms(&frames, FrameKind::Video) <= 100,
        "no gap in the video"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mpegts_over_udp_reaches_an_ffmpeg_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    let port = free_udp_port();
    let out = dir.path().join("udp.ts");
    let url =
        format!("udp://127.0.0.1:{port}?timeout=5000000&fifo_size=1000000&overrun_nonfatal=1");
    let mut rx = Receiver::start(&url, &[], &out);
    start_push(
        &node,
        json!({"id": "ts", "stream": {"name": "cam"}, "protocol": "mpegts",
                             "url": format!("udp://127.0.0.1:{port}")}),
    )
    .await;
    let mut publisher = publish(&node, "cam", 0, dir.path());
    wait_task(&node, "ts", "started", 20, |t| t["state"] == "started").await;
    assert!(publisher.wait_exit(Duration::from_secs(20)).is_some());
    rx.finish(Duration::from_secs(10));
    let streams = ffprobe::probe(&out);
    let v = ffprobe::stream(&streams, "h264");
    let a = ffprobe::stream(&streams, "aac");
    let media = test_media();
    // Every frame, the last ones included: the end of the stream is flushed (what the
    // pacer holds when the source ends is sent, not dropped).
    let span = |stream: u64| {
        let pts: Vec<i64> = ffprobe::packets(&out)
            .into_iter()
            .filter(|p| p.stream == stream)
            .filter_map(|p| p.pts)
            .collect();
        (pts.iter().max().copied().unwrap_or(0) - pts.iter().min().copied().unwrap_or(0)) / 90
    };
    println!(
        "MEASURED TS over UDP: {} of {} video frames, {} of {} audio frames, video spans {} ms",
        v.frames,
        media.video_frames(),
        a.frames,
        media.audio_frames(),
        span(v.index)
    );
    assert_eq!(v.frames, media.video_frames(), "video frames");
    assert_eq!(a.frames, media.audio_frames(), "audio frames");
    let errors = ffprobe::decode_errors(&out);
    assert!(
        errors.trim().is_empty(),
        "decode errors: {errors}\n{}",
        rx.log_text()
    );
}

/// A TS push that joins a live stream starts on its cached GOP, so its pacer (which
/// sends in real time) runs behind the source by up to a GOP; when the source ends, what
/// it still holds is sent, not dropped: the recording ends with the source's last frame
/// (a whole number of GOPs arrives, from a keyframe to the end).
#[tokio::test(flavor = "multi_thread")]
async fn mpegts_joining_a_live_stream_still_gets_its_last_frames() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    // A first task shows how far the stream is (UDP needs no receiver).
    let idle_port = free_udp_port();
    start_push(
        &node,
        json!({"id": "clock", "stream": {"name": "cam"}, "protocol": "mpegts",
               "url": format!("udp://127.0.0.1:{idle_port}")}),
    )
    .await;
    let mut publisher = publish(&node, "cam", 0, dir.path());
    wait_task(&node, "clock", "1.2 s into the stream", 20, |t| {
        t["state"] == "started" && t["sentTime"].as_u64().unwrap_or(0) >= 1200
    })
    .await;
    let port = free_udp_port();
    let out = dir.path().join("late.ts");
    let url =
        format!("udp://127.0.0.1:{port}?timeout=5000000&fifo_size=1000000&overrun_nonfatal=1");
    let mut rx = Receiver::start(&url, &[], &out);
    start_push(
        &node,
        json!({"id": "late", "stream": {"name": "cam"}, "protocol": "mpegts",
               "url": format!("udp://127.0.0.1:{port}")}),
    )
    .await;
    assert!(publisher.wait_exit(Duration::from_secs(20)).is_some());
    rx.finish(Duration::from_secs(10));
    let streams = ffprobe::probe(&out);
    let v = ffprobe::stream(&streams, "h264");
    let gop = Clip::TEST.gop as usize;
    println!(
        "MEASURED TS joining a live stream: {} video frames (GOP {gop}, clip {})",
        v.frames,
        test_media().video_frames()
    );
    assert!(
        v.frames >= gop && v.frames.is_multiple_of(gop),
        "whole GOPs to the end of the stream: {} frames",
        v.frames
    );
    assert!(ffprobe::decode_errors(&out).trim().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_pushes_of_one_stream_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    let nginx = Nginx::start();
    let media = test_media();
    for i in 0..20 {
        start_push(
            &node,
            json!({"id": format!("p{i}"), "stream": {"name": "cam"}, "protocol": "rtmp",
                                 "url": nginx.rtmp_url(), "streamKey": format!("k{i}")}),
        )
        .await;
    }
    let mut publisher = publish(&node, "cam", 0, dir.path());
    assert!(publisher.wait_exit(Duration::from_secs(30)).is_some());
    for i in 0..20 {
        let id = format!("p{i}");
        wait_task(&node, &id, "session ended", 20, |t| t["sequence"] == 1).await;
        let rec = nginx.finished_recording(&format!("k{i}"), Duration::from_secs(15));
        assert_clean_recording(&rec, media.video_frames(), media.audio_frames());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn destination_down_at_start_errors_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    // Nothing listens on this port yet.
    let port = pushcast_testkit::net::free_tcp_port();
    start_push(
        &node,
        json!({"id": "down", "stream": {"name": "cam"}, "protocol": "rtmp",
                             "url": format!("rtmp://127.0.0.1:{port}/live"), "streamKey": "k"}),
    )
    .await;
    let _publisher = publish(&node, "cam", 5, dir.path());
    let t = wait_task(&node, "down", "error", 20, |t| t["state"] == "error").await;
    let err = t["lastError"].as_str().unwrap_or_default().to_lowercase();
    assert!(err.contains("refused"), "lastError names the cause: {err}");
    // Retries with growing intervals: the worker logs each failed attempt. The n-th wait
    // is drawn in [b/2, b] with b = 1, 2, 4 s (equal jitter, `retry/`); a refused connect
    // takes a few ms, the log's clock has µs. So each gap lies in its own range (with
    // 50 ms below for clocks and 500 ms above for a loaded machine), whatever the draws:
    // a backoff that did not grow would miss the third range.
    let attempts = wait_for("four failed attempts", Duration::from_secs(30), || async {
        let times = failure_times(&node);
        (times.len() >= 4).then_some(times)
    })
    .await;
    let gaps: Vec<f64> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    println!("retry gaps (s): {gaps:?}");
    for (gap, base) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        assert!(
            (base / 2.0 - 0.05..=base + 0.5).contains(gap),
            "a wait of {gap:.3} s where the backoff draws in [{}, {base}] s: {gaps:?}",
            base / 2.0
        );
    }

    // The destination comes up on that port: the task starts by itself.
    let nginx = pushcast_testkit::nginx::Nginx::start_on(port);
    wait_task(
        &node,
        "down",
        "started after the destination came up",
        40,
        |t| t["state"] == "started",
    )
    .await;
    drop(nginx);
}

/// Seconds (of the log's clock) of each failed push attempt, from the node's log.
fn failure_times(node: &Node) -> Vec<f64> {
    node.proc
        .output()
        .iter()
        .filter(|l| l.contains("push failed; retrying"))
        .filter_map(|l| {
            let ts = l.split_whitespace().next()?;
            let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
            Some(t.timestamp_millis() as f64 / 1000.0)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_stops_reading_does_not_hurt_its_sibling() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    let healthy = Nginx::start();
    let stalling = Nginx::start();
    start_push(
        &node,
        json!({"id": "stalled", "stream": {"name": "cam"}, "protocol": "rtmp",
                             "url": stalling.rtmp_url(), "streamKey": "s"}),
    )
    .await;
    start_push(
        &node,
        json!({"id": "healthy", "stream": {"name": "cam"}, "protocol": "rtmp",
                             "url": healthy.rtmp_url(), "streamKey": "healthy"}),
    )
    .await;
    // A high bitrate (~12 Mb/s), so the stalled destination's socket buffers fill up.
    let heavy = pushcast_testkit::media::Clip::live("1280x720", 12_000, 10).make_in(dir.path());
    let heavy_frames = ffprobe::probe(&heavy);
    let heavy_video = ffprobe::stream(&heavy_frames, "h264").frames;
    let mut publisher = Guard::spawn(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-re",
            // Twice: the stalled push must still have a source when it is restarted.
            "-stream_loop",
            "1",
            "-i",
            heavy.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "flv",
            &node.ingest_url("app", "cam"),
        ],
        &dir.path().join("heavy-publish.log"),
    );
    wait_task(&node, "stalled", "started", 20, |t| t["state"] == "started").await;
    // The destination stops reading mid-stream (its TCP window fills up).
    let stop = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &stalling.pid().to_string()])
            .status()
            .unwrap()
    };
    // While the stalled one blocks and until it has failed, the healthy sibling keeps
    // receiving on time: its recording never stops growing for long. (A hub that held
    // every subscriber back for the stalled one's 2 s send timeout would stop it.)
    let growth = GrowthSampler::start(healthy.recording("healthy"));
    assert!(stop("-STOP").success());
    let t = wait_task(&node, "stalled", "error after the send timeout", 30, |t| {
        t["state"] == "error"
    })
    .await;
    println!("stalled destination: {}", t["lastError"]);
    // Reported as a stall, with its time, counted, and restarted by the backoff policy
    // once the destination reads again.
    assert!(
        t["lastError"]
            .as_str()
            .unwrap_or("")
            .starts_with("stalled: the destination accepted no data for 2000 ms"),
        "{t}"
    );
    assert!(t["lastErrorTime"].is_string(), "{t}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(stop("-CONT").success());
    let t = wait_task(&node, "stalled", "restarted after the stall", 30, |t| {
        t["state"] == "started" && t["stalls"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    assert!(t["reconnects"].as_u64().unwrap_or(0) >= 1, "{t}");
    let (longest, samples) = growth.stop();
    println!(
        "healthy sibling during the stall: longest time without growth {longest:?} ({samples} samples)"
    );
    assert!(samples > 20, "the stall lasted long enough to be observed");
    assert!(
        longest < Duration::from_millis(1500),
        "the healthy destination stood still for {longest:?} while its sibling stalled"
    );
    assert!(publisher.wait_exit(Duration::from_secs(30)).is_some());
    let rec = healthy.finished_recording("healthy", Duration::from_secs(15));
    assert_clean_recording(&rec, heavy_video * 98 / 100, 1);
    let rss = rss_kb(node.proc.pid());
    println!("worker RSS after the run: {rss} kB");
    assert!(rss < 300_000, "memory stays bounded: {rss} kB");
}

/// Samples the size of a growing file every 50 ms on a thread of its own.
struct GrowthSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Duration, usize)>,
}

impl GrowthSampler {
    fn start(path: std::path::PathBuf) -> GrowthSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let (mut last, mut since) = (size(), std::time::Instant::now());
            let (mut longest, mut samples) = (Duration::ZERO, 0);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let now = size();
                samples += 1;
                if now != last {
                    (last, since) = (now, std::time::Instant::now());
                }
                longest = longest.max(since.elapsed());
            }
            (longest, samples)
        });
        GrowthSampler { stop, thread }
    }

    /// The longest time the file did not grow, and how many samples were taken.
    fn stop(self) -> (Duration, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The stream's end reaches the destination whole: the task is unassigned when its
/// stream ends, and that used to cut its session before it had sent the last frames it
/// held (the clip's last five audio frames, which follow its last video frame).
#[tokio::test(flavor = "multi_thread")]
async fn a_push_sends_its_stream_to_the_last_frame() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    let media = test_media();
    let mut recorder = RtmpRecorder::start(&dir.path().join("whole.flv"));
    start_push(
        &node,
        json!({"id": "whole", "stream": {"name": "cam"}, "protocol": "rtmp",
                             "url": recorder.rtmp_url(), "streamKey": "whole"}),
    )
    .await;
    let mut publisher = publish(&node, "cam", 0, dir.path());
    assert!(publisher.wait_exit(Duration::from_secs(20)).is_some());
    let frames = recorder.finish(Duration::from_secs(15));
    let tail = |frames: &[pushcast_media::Frame]| -> Vec<(FrameKind, u32)> {
        let media: Vec<_> = frames
            .iter()
            .filter(|f| f.kind != FrameKind::Data)
            .collect();
        media[media.len().saturating_sub(8)..]
            .iter()
            .map(|f| (f.kind, f.timestamp_ms))
            .collect()
    };
    assert_eq!(
        (
            count_media(&frames, FrameKind::Video),
            count_media(&frames, FrameKind::Audio)
        ),
        (media.video_frames(), media.audio_frames()),
        "every frame of the stream (video, audio); the last ones sent: {:?}, the clip's: {:?}",
        tail(&frames),
        tail(&media.frames)
    );
}
