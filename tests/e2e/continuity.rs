//! Source continuity (issue 17), end to end with the real standalone binary, real ffmpeg
//! encoders and a real nginx-rtmp destination recording to disk: an encoder that drops
//! and comes back within the app's reconnect window, a window that passes, a primary
//! with a backup, and the refusals around backups.
//!
//! nginx-rtmp logs every publish session it accepts (`publish: name='KEY'` at info): the
//! tests count them to prove the destination saw one session, and decode the recording
//! to prove it holds one stream with monotonic timestamps.

use std::path::Path;
use std::time::{Duration, Instant};

use pushcast_testkit::api::Node;
use pushcast_testkit::ffmpeg::publish_file;
use pushcast_testkit::ffprobe;
use pushcast_testkit::media::test_media;
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::proc::Guard;
use pushcast_testkit::receiver::Receiver;
use pushcast_testkit::wait_for;
use serde_json::{Value, json};

const TOKEN: &str = "continuity";

/// Sets the app's settings (open publishing, continuity, callbacks).
async fn set_app(node: &Node, body: Value) {
    let r = node
        .call(
            "PATCH",
            "/v1/vhosts/default/apps/app",
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// An encoder publishing the test clip in a loop until killed.
fn encoder(node: &Node, name: &str, dir: &Path, tag: &str) -> Guard {
    let url = node.ingest_url("app", name);
    publish_file(&test_media().flv, &url, -1, &dir.join(format!("{tag}.log")))
}

async fn wait_task(node: &Node, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(
        &format!("task {id}: {what}"),
        Duration::from_secs(30),
        || async {
            let t = node.task(id).await;
            pred(&t).then_some(t)
        },
    )
    .await
}

fn sent(t: &Value) -> u64 {
    t["sentBytes"].as_u64().unwrap_or(0)
}

fn source_event(t: &Value) -> (String, u64) {
    (
        t["sourceEvent"]["type"].as_str().unwrap_or("").to_string(),
        t["sourceEvent"]["count"].as_u64().unwrap_or(0),
    )
}

/// Starts task `id` pushing stream `cam` to `nginx` under `key`.
async fn push_cam(node: &Node, id: &str, nginx: &Nginx, key: &str) {
    let r = node
        .action(
            "startPush",
            json!({"id": id, "stream": {"name": "cam"}, "protocol": "rtmp",
                   "url": nginx.rtmp_url(), "streamKey": key}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Publish sessions nginx accepted for `key`.
fn publish_sessions(nginx: &Nginx, key: &str) -> usize {
    nginx
        .error_log()
        .lines()
        .filter(|l| l.contains(&format!("publish: name='{key}'")))
        .count()
}

/// The video packets' decode times (ms) of a recording, in file order.
fn video_dts(path: &Path) -> Vec<i64> {
    ffprobe::packets(path)
        .iter()
        .filter(|p| p.stream == 0)
        .filter_map(|p| p.dts)
        .collect()
}

/// The recording holds one H.264 + AAC stream that decodes cleanly, whose video times
/// never go back, with exactly `gaps` pauses longer than `gap` (the blips).
fn assert_one_clean_stream(path: &Path, gaps: usize, gap: i64) -> Vec<i64> {
    let streams = ffprobe::probe(path);
    assert!(ffprobe::stream(&streams, "h264").frames > 0);
    assert!(ffprobe::stream(&streams, "aac").frames > 0);
    let errors = ffprobe::decode_errors(path);
    assert!(errors.trim().is_empty(), "decode errors: {errors}");
    let dts = video_dts(path);
    assert!(
        dts.windows(2).all(|w| w[1] >= w[0]),
        "video timestamps go back: {dts:?}"
    );
    let long: Vec<(i64, i64)> = dts
        .windows(2)
        .filter(|w| w[1] - w[0] > gap)
        .map(|w| (w[0], w[1]))
        .collect();
    assert_eq!(long.len(), gaps, "pauses longer than {gap} ms: {long:?}");
    dts
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encoder_back_within_the_window_continues_the_same_destination_session() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    let rx = Receiver::start().await;
    set_app(
        &node,
        json!({"openPublish": true, "reconnectWindowMs": 10000,
               "callbacks": {"status": [{"url": rx.url("/status"), "secret": "s"}]}}),
    )
    .await;
    let app = node.call("GET", "/v1/vhosts/default/apps/app", None).await;
    assert_eq!(
        app.json["response"]["reconnectWindowMs"], 10000,
        "{}",
        app.text
    );
    let nginx = Nginx::start();
    push_cam(&node, "yt", &nginx, "one").await;

    let mut first = encoder(&node, "cam", dir.path(), "first");
    let t = wait_task(&node, "yt", "pushing", |t| {
        t["state"] == "started" && sent(t) > 100_000
    })
    .await;
    assert_eq!(t["sequence"], 0);
    // The encoder drops (killed: the connection breaks without an unpublish).
    first.signal("KILL");
    let killed_at = Instant::now();
    first.wait_exit(Duration::from_secs(5));
    let t = wait_task(&node, "yt", "source interrupted", |t| {
        source_event(t).0 == "sourceInterrupted"
    })
    .await;
    assert_eq!(t["state"], "started", "still started during the blip");
    // Back 2 s later, through a new connection. Meanwhile nothing is sent (what was
    // queued went out in the first second) and the task stays started.
    tokio::time::sleep_until((killed_at + Duration::from_secs(1)).into()).await;
    let paused = sent(&node.task("yt").await);
    tokio::time::sleep_until((killed_at + Duration::from_secs(2)).into()).await;
    let t = node.task("yt").await;
    assert_eq!(
        (t["state"].as_str(), sent(&t)),
        (Some("started"), paused),
        "nothing sent, still started"
    );
    let mut second = encoder(&node, "cam", dir.path(), "second");
    let t = wait_task(&node, "yt", "resumed and sending on", |t| {
        source_event(t).0 == "sourceResumed" && sent(t) > paused + 100_000
    })
    .await;
    assert_eq!(t["sequence"], 0, "the same session: {t}");
    assert_eq!(t["state"], "started");
    assert_eq!(publish_sessions(&nginx, "one"), 1, "{}", nginx.error_log());
    second.signal("KILL");
    second.wait_exit(Duration::from_secs(5));

    // The window passes: the session ends as it always did (one session, recorded).
    let t = wait_task(&node, "yt", "the session ended after the window", |t| {
        t["sequence"] == 1
    })
    .await;
    assert_eq!(t["state"], "ready");
    let rec = nginx.finished_recording("one", Duration::from_secs(15));
    assert_eq!(publish_sessions(&nginx, "one"), 1);
    assert_one_clean_stream(&rec, 1, 1500);

    // The status callbacks said what happened, in order, with no stop in between.
    let got = rx
        .wait_until(Duration::from_secs(15), "the stopped event", |log| {
            log.iter().any(|r| r.json()["event"] == "stopped")
        })
        .await;
    let events: Vec<String> = got
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        events,
        [
            "created",
            "started",
            "sourceInterrupted",
            "sourceResumed",
            "sourceInterrupted",
            "stopped"
        ],
        "{events:?}"
    );
    let resumed = got
        .iter()
        .find(|r| r.json()["event"] == "sourceResumed")
        .unwrap();
    assert_eq!(resumed.json()["input"], "primary");
    assert!(resumed.json()["sourceTime"].as_u64().unwrap_or(0) > 0);
}

/// The app's window (2 s) passes: a task without a window of its own stops as before,
/// and a new publish starts it again (a second session at the destination). A task that
/// asked for 8 s keeps its session through the same blip; one that asked for 0 stops at
/// once.
#[tokio::test(flavor = "multi_thread")]
async fn a_window_that_passes_stops_the_push_and_a_task_may_ask_for_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    set_app(
        &node,
        json!({"openPublish": true, "reconnectWindowMs": 2000}),
    )
    .await;
    let nginx = Nginx::start();
    for (id, window) in [("t", None), ("long", Some(8000)), ("zero", Some(0))] {
        let mut body = json!({"id": id, "stream": {"name": "cam"}, "protocol": "rtmp",
                              "url": nginx.rtmp_url(), "streamKey": id});
        if let Some(w) = window {
            body["reconnectWindowMs"] = json!(w);
        }
        let r = node.action("startPush", body).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(node.task("long").await["reconnectWindowMs"], 8000);
    let mut first = encoder(&node, "cam", dir.path(), "first");
    for id in ["t", "long", "zero"] {
        wait_task(&node, id, "pushing", |t| sent(t) > 50_000).await;
    }
    first.signal("KILL");
    let killed_at = Instant::now();
    first.wait_exit(Duration::from_secs(5));
    wait_task(&node, "zero", "stopped at once", |t| t["sequence"] == 1).await;
    let zero_took = killed_at.elapsed();
    let t = wait_task(&node, "t", "stopped after the app's window", |t| {
        t["sequence"] == 1
    })
    .await;
    let t_took = killed_at.elapsed();
    assert_eq!(source_event(&t).0, "sourceInterrupted");
    assert!(zero_took < Duration::from_secs(2), "{zero_took:?}");
    assert!(t_took >= Duration::from_secs(2), "{t_took:?}");
    let long = node.task("long").await;
    assert_eq!(
        (long["state"].as_str(), long["sequence"].as_u64()),
        (Some("started"), Some(0)),
        "{long}"
    );
    // Back at 4 s: within the 8 s the long task asked for, past the app's 2 s.
    tokio::time::sleep_until((killed_at + Duration::from_secs(4)).into()).await;
    let again = encoder(&node, "cam", dir.path(), "again");
    for id in ["t", "zero"] {
        wait_task(&node, id, "pushing again", |t| {
            t["state"] == "started" && t["sequence"] == 1 && sent(t) > 0
        })
        .await;
    }
    let long = wait_task(&node, "long", "resumed", |t| {
        source_event(t).0 == "sourceResumed" && sent(t) > 0
    })
    .await;
    assert_eq!(long["sequence"], 0, "{long}");
    wait_for(
        "second sessions of t and zero",
        Duration::from_secs(10),
        || async {
            (publish_sessions(&nginx, "t") == 2 && publish_sessions(&nginx, "zero") == 2)
                .then_some(())
        },
    )
    .await;
    assert_eq!(publish_sessions(&nginx, "long"), 1, "{}", nginx.error_log());
    again.signal("KILL");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_takes_over_when_the_primary_dies_and_hands_back_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    set_app(&node, json!({"openPublish": true})).await;
    let nginx = Nginx::start();
    push_cam(&node, "t", &nginx, "k").await;
    // A backup with no primary is refused, with the reason.
    let mut lone = encoder(&node, "cam?backup=1", dir.path(), "lone");
    let exit = lone.wait_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|e| !e.success()),
        "{exit:?} {}",
        std::fs::read_to_string(dir.path().join("lone.log")).unwrap_or_default()
    );
    let log = std::fs::read_to_string(dir.path().join("lone.log")).unwrap();
    assert!(
        log.contains("NoPrimary: a backup of cam is admitted only while its primary is live"),
        "{log}"
    );

    let mut primary = encoder(&node, "cam", dir.path(), "primary");
    wait_task(&node, "t", "pushing from the primary", |t| sent(t) > 50_000).await;
    let mut backup = encoder(&node, "cam?backup=1", dir.path(), "backup");

    let streams = wait_for("two inputs", Duration::from_secs(10), || async {
        let s = node
            .call("GET", "/v1/vhosts/default/apps/app/streams/cam", None)
            .await;
        (s.json["response"]["inputs"] == 2).then_some(s.json)
    })
    .await;
    assert_eq!(streams["response"]["input"], "primary", "{streams}");
    // A second backup is refused; the first stays.
    let mut extra = encoder(&node, "cam?backup=1", dir.path(), "extra");
    let exit = extra.wait_exit(Duration::from_secs(10));
    assert!(exit.is_some_and(|e| !e.success()), "{exit:?}");
    let log = std::fs::read_to_string(dir.path().join("extra.log")).unwrap();
    assert!(log.contains("cam has a backup publisher already"), "{log}");
    assert!(
        backup.try_status().is_none(),
        "the first backup is still publishing"
    );

    primary.signal("KILL");
    let killed_at = Instant::now();
    primary.wait_exit(Duration::from_secs(5));
    let t = wait_task(&node, "t", "switched to the backup", |t| {
        source_event(t) == ("inputSwitched".to_string(), 1) && t["sourceEvent"]["input"] == "backup"
    })
    .await;
    assert_eq!(t["sequence"], 0);
    let at_switch = sent(&t);
    wait_task(&node, "t", "sending from the backup", |t| {
        sent(t) > at_switch + 50_000
    })
    .await;
    let switched_within = killed_at.elapsed();

    // The primary returns: the stream goes back to it at its keyframe.
    let mut primary = encoder(&node, "cam", dir.path(), "primary-again");
    wait_task(&node, "t", "back on the primary", |t| {
        source_event(t) == ("inputSwitched".to_string(), 2)
            && t["sourceEvent"]["input"] == "primary"
    })
    .await;
    // The backup ends; the primary goes on alone, the destination's session too.
    backup.signal("KILL");
    backup.wait_exit(Duration::from_secs(5));
    let t = node.task("t").await;
    wait_task(&node, "t", "still sending from the primary", |x| {
        sent(x) > sent(&t) + 50_000
    })
    .await;
    primary.signal("KILL");
    primary.wait_exit(Duration::from_secs(5));
    let t = wait_task(&node, "t", "ended with its last input", |t| {
        t["sequence"] == 1
    })
    .await;
    assert_eq!(t["sequence"], 1);
    let rec = nginx.finished_recording("k", Duration::from_secs(15));
    assert_eq!(publish_sessions(&nginx, "k"), 1, "{}", nginx.error_log());
    // Two switches, neither longer than a GOP of the test clip (2 s) plus the time to
    // see the primary gone: no pause over 2.5 s in the recording.
    let dts = assert_one_clean_stream(&rec, 0, 2500);
    assert!(dts.len() > 60, "{} video frames", dts.len());
    assert!(switched_within < Duration::from_secs(20));
}

/// The encoder comes back on another worker of a cluster: the pushes stay on the worker
/// that holds their destination connections, fed over a forward from the new one; the
/// destination sees one publish session.
#[tokio::test(flavor = "multi_thread")]
async fn an_encoder_back_on_another_worker_continues_the_same_destination_session() {
    use pushcast_testkit::cluster::{Cluster, WorkerOpts};
    use pushcast_testkit::etcd::EtcdProcess;
    let _serial = crate::cluster::SERIAL.lock().await;
    let mut c = Cluster::start(EtcdProcess::start()).await;
    c.add_controller().await;
    c.add_worker(WorkerOpts::default()).await;
    c.add_worker(WorkerOpts::default()).await;
    c.wait_for_leader(Duration::from_secs(15)).await;
    let node = c.api();
    set_app(
        node,
        json!({"openPublish": true, "reconnectWindowMs": 6000}),
    )
    .await;
    // A destination of its own: the sandbox's drops publishers idle for 2 s.
    let nginx = Nginx::start();
    push_cam(node, "yt", &nginx, "one").await;
    let media = &test_media().flv;
    let log = |n: &str| c.path().join(format!("{n}.log"));
    let mut first = publish_file(media, &c.workers[0].ingest_url("cam"), -1, &log("first"));
    let t = wait_task(node, "yt", "pushing from w0", |t| {
        t["state"] == "started" && sent(t) > 100_000
    })
    .await;
    assert_eq!(t["worker"], "w0");
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5));
    wait_task(node, "yt", "source interrupted", |t| {
        source_event(t).0 == "sourceInterrupted"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut second = publish_file(media, &c.workers[1].ingest_url("cam"), -1, &log("second"));
    let t = wait_task(node, "yt", "resumed through w1", |t| {
        source_event(t).0 == "sourceResumed" && sent(t) > 250_000
    })
    .await;
    assert_eq!(
        (
            t["worker"].as_str(),
            t["sequence"].as_u64(),
            t["state"].as_str()
        ),
        (Some("w0"), Some(0), Some("started")),
        "{t}"
    );
    let streams = node
        .call("GET", "/v1/vhosts/default/apps/app/streams", None)
        .await;
    let cam = &streams.json["response"][0];
    assert_eq!(
        (cam["name"].as_str(), cam["worker"].as_str()),
        (Some("cam"), Some("w1")),
        "{cam}"
    );
    assert_eq!(cam["resumedFrom"], "w0", "{cam}");
    assert!(
        !c.log_lines("w1", "the publish continues an interrupted stream")
            .is_empty(),
        "w1 took the stream over"
    );
    second.signal("KILL");
    second.wait_exit(Duration::from_secs(5));
    wait_task(node, "yt", "the session ended after the windows", |t| {
        t["sequence"] == 1
    })
    .await;
    let rec = nginx.finished_recording("one", Duration::from_secs(15));
    assert_eq!(publish_sessions(&nginx, "one"), 1, "{}", nginx.error_log());
    assert_one_clean_stream(&rec, 1, 1500);
    c.assert_no_double_publish();
}

/// A primary that stalls (its encoder frozen with SIGSTOP: connected, sending nothing)
/// is switched away from after `inputStallMs`, at the backup's next keyframe; thawed, it
/// takes over again at its own keyframe. One session at the destination throughout.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_primary_is_replaced_by_its_backup_and_takes_over_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    set_app(&node, json!({"openPublish": true, "inputStallMs": 1000})).await;
    let nginx = Nginx::start();
    push_cam(&node, "t", &nginx, "k").await;
    let mut primary = encoder(&node, "cam", dir.path(), "primary");
    wait_task(&node, "t", "pushing from the primary", |t| sent(t) > 50_000).await;
    let backup = encoder(&node, "cam?backup=1", dir.path(), "backup");
    wait_for("the backup attached", Duration::from_secs(10), || async {
        let s = node
            .call("GET", "/v1/vhosts/default/apps/app/streams/cam", None)
            .await;
        (s.json["response"]["inputs"] == 2).then_some(())
    })
    .await;
    primary.signal("STOP");
    let stopped_at = Instant::now();
    let t = wait_task(&node, "t", "switched to the backup", |t| {
        t["sourceEvent"]["input"] == "backup"
    })
    .await;
    // The stall (1 s) plus at most a GOP of the backup (2 s), with room for a loaded
    // machine: well before the ingest's 30 s idle timeout would close the primary.
    let took = stopped_at.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "switched {took:?} after the stall began"
    );
    let at_switch = sent(&t);
    wait_task(&node, "t", "sending from the backup", |t| {
        sent(t) > at_switch + 50_000
    })
    .await;
    primary.signal("CONT");
    let t = wait_task(&node, "t", "back on the primary", |t| {
        t["sourceEvent"]["input"] == "primary"
    })
    .await;
    assert_eq!(source_event(&t), ("inputSwitched".to_string(), 2));
    assert_eq!(
        (t["state"].as_str(), t["sequence"].as_u64()),
        (Some("started"), Some(0))
    );
    backup.signal("KILL");
    let t = node.task("t").await;
    wait_task(&node, "t", "sending from the primary", |x| {
        sent(x) > sent(&t) + 50_000
    })
    .await;
    primary.signal("KILL");
    primary.wait_exit(Duration::from_secs(5));
    wait_task(&node, "t", "ended with its last input", |t| {
        t["sequence"] == 1
    })
    .await;
    let rec = nginx.finished_recording("k", Duration::from_secs(15));
    assert_eq!(publish_sessions(&nginx, "k"), 1, "{}", nginx.error_log());
    // The stall shows as one pause: the second before it was seen plus the wait for
    // the backup's keyframe (GOP 2 s); nothing goes back, everything decodes.
    assert_one_clean_stream(&rec, 1, 900);
}

/// A backup that reaches another worker than its primary (a load balancer in front of
/// the workers) is relayed to the primary's worker and takes over there when the
/// primary dies: one publish session at the destination.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_on_another_worker_is_relayed_to_its_primary() {
    use pushcast_testkit::cluster::{Cluster, WorkerOpts};
    use pushcast_testkit::etcd::EtcdProcess;
    let _serial = crate::cluster::SERIAL.lock().await;
    let mut c = Cluster::start(EtcdProcess::start()).await;
    c.add_controller().await;
    c.add_worker(WorkerOpts::default()).await;
    c.add_worker(WorkerOpts::default()).await;
    c.wait_for_leader(Duration::from_secs(15)).await;
    let node = c.api();
    set_app(node, json!({"openPublish": true})).await;
    let nginx = Nginx::start();
    push_cam(node, "t", &nginx, "k").await;
    let media = &test_media().flv;
    let log = |n: &str| c.path().join(format!("{n}.log"));
    let mut primary = publish_file(media, &c.workers[0].ingest_url("cam"), -1, &log("primary"));
    wait_task(node, "t", "pushing from w0", |t| sent(t) > 50_000).await;
    let backup_url = format!("{}?backup=1", c.workers[1].ingest_url("cam"));
    let mut backup = publish_file(media, &backup_url, -1, &log("backup"));
    wait_for(
        "the relayed backup attached on w0",
        Duration::from_secs(20),
        || async {
            let s = node
                .call("GET", "/v1/vhosts/default/apps/app/streams/cam", None)
                .await;
            (s.json["response"]["inputs"] == 2).then_some(())
        },
    )
    .await;
    assert!(backup.try_status().is_none(), "the backup publishes");
    primary.signal("KILL");
    primary.wait_exit(Duration::from_secs(5));
    let t = wait_task(node, "t", "switched to the relayed backup", |t| {
        t["sourceEvent"]["input"] == "backup"
    })
    .await;
    assert_eq!(
        (t["worker"].as_str(), t["sequence"].as_u64()),
        (Some("w0"), Some(0)),
        "{t}"
    );
    let at_switch = sent(&t);
    wait_task(node, "t", "sending from the backup", |t| {
        sent(t) > at_switch + 50_000
    })
    .await;
    backup.signal("KILL");
    backup.wait_exit(Duration::from_secs(5));
    wait_task(node, "t", "ended with its last input", |t| {
        t["sequence"] == 1
    })
    .await;
    let rec = nginx.finished_recording("k", Duration::from_secs(15));
    assert_eq!(publish_sessions(&nginx, "k"), 1, "{}", nginx.error_log());
    assert_one_clean_stream(&rec, 0, 2500);
    c.assert_no_double_publish();
}
