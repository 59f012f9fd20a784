//! Multi-destination tasks end to end (`spec/relay-tasks.md`, where they are called relay
//! tasks): one task pushing one live stream to several destinations (three stream keys on
//! one nginx-rtmp), changed while live with `:updatePush`; the destinations left
//! untouched keep their sessions, the added one starts on a keyframe.

use std::path::Path;
use std::time::Duration;

use pushcast_media::FrameKind;
use pushcast_testkit::api::Node;
use pushcast_testkit::ffmpeg::{RtmpRecorder, assert_starts_on_a_keyframe_at_zero, longest_gap_ms};
use pushcast_testkit::ffprobe;
use pushcast_testkit::flv::{count_media, read_flv_file};
use pushcast_testkit::media::test_media;
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::proc::Guard;
use pushcast_testkit::wait_for;
use serde_json::{Value, json};

const TOKEN: &str = "relay-tasks";

/// ffmpeg publishing the test FLV (4 s) in real time, `loops` extra times.
fn publish(node: &Node, stream: &str, loops: u32, log_dir: &Path) -> Guard {
    let url = node.ingest_url("app", stream);
    pushcast_testkit::ffmpeg::publish(&url, log_dir, &format!("publish-{stream}"), loops)
}

/// The `destinations` entry of the task with stream key `key`.
fn dest<'a>(task: &'a Value, key: &str) -> Option<&'a Value> {
    task["destinations"]
        .as_array()?
        .iter()
        .find(|d| d["streamKey"] == key)
}

fn sent(task: &Value, key: &str) -> u64 {
    dest(task, key)
        .and_then(|d| d["sentBytes"].as_u64())
        .unwrap_or(0)
}

/// How many times nginx accepted a publish of stream `key`.
fn publishes(nginx: &Nginx, key: &str) -> usize {
    nginx
        .error_log()
        .lines()
        .filter(|l| l.contains("publish: name='") && l.contains(&format!("name='{key}'")))
        .count()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_destination_task_changes_destinations_live_without_touching_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    let nginx = Nginx::start();
    let url = nginx.rtmp_url();
    let rtmp = |key: &str| json!({"protocol": "rtmp", "url": url, "streamKey": key});
    // The destination added while live keeps what arrives as it arrives.
    let mut k4 = RtmpRecorder::start(&dir.path().join("k4.flv"));

    let r = node
        .action(
            "startPush",
            json!({"id": "relay", "stream": {"name": "cam"},
                   "destinations": [rtmp("k1"), rtmp("k2"), rtmp("k3")]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = &r.json["response"];
    // The first destination is the task's url/streamKey, as in a plain task.
    assert_eq!(
        (t["url"].as_str(), t["streamKey"].as_str()),
        (Some(url.as_str()), Some("k1"))
    );
    assert_eq!(t["destinations"].as_array().unwrap().len(), 3);
    assert_eq!(t["destinations"][1]["state"], "ready");

    // 4 s × 4 of stream.
    let mut publisher = publish(&node, "cam", 3, dir.path());
    let published = std::time::Instant::now();
    wait_for(
        "3 destinations sending",
        Duration::from_secs(15),
        || async {
            let t = node.task("relay").await;
            let all = ["k1", "k2", "k3"]
                .iter()
                .all(|k| dest(&t, k).is_some_and(|d| d["state"] == "started") && sent(&t, k) > 0);
            (all && t["state"] == "started").then_some(())
        },
    )
    .await;
    // k4 is to join mid-stream: past the first GOP of what the others push.
    wait_for("1.5 s pushed to k2", Duration::from_secs(10), || async {
        let t = node.task("relay").await;
        let pushed = dest(&t, "k2").and_then(|d| d["sentTime"].as_u64());
        pushed.is_some_and(|ms| ms >= 1500).then_some(())
    })
    .await;

    // Counters of the destinations that stay, before the update.
    let mut last = [0u64; 2];
    for _ in 0..3 {
        let t = node.task("relay").await;
        for (i, k) in ["k2", "k3"].iter().enumerate() {
            let s = sent(&t, k);
            assert!(
                s >= last[i],
                "{k}: sentBytes went back from {} to {s}",
                last[i]
            );
            last[i] = s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // While live: add k4, remove k1 (by url + key).
    let k4_added = published.elapsed();
    let r = node
        .action(
            "updatePush",
            json!({"id": "relay", "addDestinations": [{"protocol": "rtmp",
                      "url": k4.rtmp_url(), "streamKey": "k4"}],
                   "removeDestinations": [{"url": url, "streamKey": "k1"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let keys: Vec<&str> = r.json["response"]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["streamKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["k2", "k3", "k4"]);
    assert_eq!(r.json["response"]["streamKey"], "k2");

    // The kept destinations' counters only grow across the update.
    for _ in 0..8 {
        let t = node.task("relay").await;
        for (i, k) in ["k2", "k3"].iter().enumerate() {
            let s = sent(&t, k);
            assert!(
                s >= last[i],
                "{k}: sentBytes went back from {} to {s}",
                last[i]
            );
            last[i] = s;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let t = wait_for("k4 sending", Duration::from_secs(10), || async {
        let t = node.task("relay").await;
        (dest(&t, "k4").is_some_and(|d| d["state"] == "started") && sent(&t, "k4") > 0).then_some(t)
    })
    .await;
    assert!(dest(&t, "k1").is_none());
    for (i, k) in ["k2", "k3"].iter().enumerate() {
        assert!(sent(&t, k) > last[i], "{k} still sending after the update");
        assert_eq!(dest(&t, k).unwrap()["state"], "started");
    }

    // The removed destination stopped: its recording no longer grows.
    let k1 = nginx.recording("k1");
    let size = file_len(&k1);
    assert!(size > 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        file_len(&k1),
        size,
        "k1 is still being pushed after its removal"
    );

    // A destination belongs to one task: a second task naming k2 is refused.
    let r = node
        .action(
            "startPush",
            json!({"id": "other", "stream": {"name": "cam"}, "protocol": "rtmp",
                   "url": url, "streamKey": "k2"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(
        r.json["message"],
        "[HTTP] Destination already in use by push 'relay' (409)"
    );
    // Unknown id.
    let r = node
        .action(
            "updatePush",
            json!({"id": "nope", "addDestinations": [rtmp("k9")]}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(
        r.json["message"],
        "[HTTP] Could not find id 'nope': [default/app] (404)"
    );
    // The removed destination is free again.
    let r = node
        .action(
            "startPush",
            json!({"id": "other", "stream": {"name": "nothing"}, "protocol": "rtmp",
                   "url": url, "streamKey": "k1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    assert!(
        publisher.wait_exit(Duration::from_secs(25)).is_some(),
        "publisher finished"
    );
    // k2 and k3: one publish each, one continuous recording (no gap beyond one GOP,
    // video or audio, across the update), every frame, clean.
    let media = test_media();
    let (all_video, all_audio) = (media.video_frames() * 4, media.audio_frames() * 4);
    for k in ["k2", "k3"] {
        let rec = nginx.finished_recording(k, Duration::from_secs(15));
        assert_eq!(
            publishes(&nginx, k),
            1,
            "{k} reconnected:\n{}",
            nginx.error_log()
        );
        let frames = read_flv_file(&rec);
        for kind in [FrameKind::Video, FrameKind::Audio] {
            let gap = longest_gap_ms(&frames, kind);
            assert!(
                gap <= 2_000,
                "{k}: a {kind:?} gap of {gap} ms (more than one GOP)"
            );
        }
        let (video, audio) = (
            count_media(&frames, FrameKind::Video),
            count_media(&frames, FrameKind::Audio),
        );
        println!("{k}: {video} of {all_video} video, {audio} of {all_audio} audio frames");
        assert!(
            video * 100 >= all_video * 98,
            "{k}: {video} of {all_video} video frames"
        );
        assert!(
            audio * 100 >= all_audio * 98,
            "{k}: {audio} of {all_audio} audio frames"
        );
        let errors = ffprobe::decode_errors(&rec);
        assert!(errors.trim().is_empty(), "{k} decode errors: {errors}");
    }
    // k4 started mid-stream on a keyframe at 0, with no audio ahead of it, and got the
    // rest of the stream from there without a gap.
    let frames = k4.finish(Duration::from_secs(15));
    assert_starts_on_a_keyframe_at_zero(&frames, "k4");
    assert!(
        longest_gap_ms(&frames, FrameKind::Video) <= 100,
        "k4: a gap in the video"
    );
    let video = count_media(&frames, FrameKind::Video);
    // What was left of the 16 s when k4 was added (it starts from the cached keyframe,
    // up to one GOP earlier).
    let left = (16.0 - k4_added.as_secs_f64()) * 30.0;
    println!("k4: {video} video frames, {left:.0} left of the stream when it was added");
    assert!(
        video as f64 >= left * 0.95,
        "k4: {video} video frames, {left:.0} were left when it was added"
    );
    assert_eq!(publishes(&nginx, "k1"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_update_push_has_the_rest_semantics() {
    use pushcast_proto::v1::{self, push_service_client::PushServiceClient};

    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    let channel = crate::grpc_channel(&node).await;
    let mut pushes = PushServiceClient::new(channel);
    let d = |key: &str| v1::Destination {
        protocol: "rtmp".into(),
        url: "rtmp://127.0.0.1:1/live".into(),
        stream_key: key.into(),
        variant_names: vec![],
    };
    let task = pushes
        .start_push(authed(v1::StartPushRequest {
            vhost: "default".into(),
            app: "app".into(),
            id: "g".into(),
            stream: Some(v1::StreamSelector {
                name: "s".into(),
                ..Default::default()
            }),
            destinations: vec![d("a"), d("b")],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(
        (task.stream_key.as_str(), task.destinations.len()),
        ("a", 2)
    );

    let update = |add: Vec<v1::Destination>, remove: Vec<v1::DestinationRef>| {
        authed(v1::UpdatePushRequest {
            vhost: "default".into(),
            app: "app".into(),
            id: "g".into(),
            add_destinations: add,
            remove_destinations: remove,
            variant_names: Some(v1::StringList {
                values: vec!["bypass_video".into()],
            }),
            track_ids: None,
        })
    };
    let task = pushes
        .update_push(update(
            vec![d("c")],
            vec![v1::DestinationRef {
                index: 0,
                ..Default::default()
            }],
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let keys: Vec<&str> = task
        .destinations
        .iter()
        .map(|d| d.stream_key.as_str())
        .collect();
    assert_eq!(keys, ["b", "c"]);
    assert_eq!(task.stream.unwrap().variant_names, ["bypass_video"]);
    // Seen over REST the same way.
    let t = node.task("g").await;
    assert_eq!(t["streamKey"], "b");
    assert_eq!(t["destinations"][1]["streamKey"], "c");

    // Another task cannot take "c"; removing down to nothing is refused.
    let err = pushes
        .start_push(authed(v1::StartPushRequest {
            vhost: "default".into(),
            app: "app".into(),
            id: "h".into(),
            stream: Some(v1::StreamSelector {
                name: "s".into(),
                ..Default::default()
            }),
            destinations: vec![d("c")],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert_eq!(err.message(), "Destination already in use by push 'g'");
    let all = |n: u32| {
        (0..n)
            .map(|index| v1::DestinationRef {
                index,
                ..Default::default()
            })
            .collect()
    };
    let err = pushes
        .update_push(update(vec![], all(2)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // "a" was released by the update: another task may take it.
    pushes
        .start_push(authed(v1::StartPushRequest {
            vhost: "default".into(),
            app: "app".into(),
            id: "h".into(),
            stream: Some(v1::StreamSelector {
                name: "s".into(),
                ..Default::default()
            }),
            destinations: vec![d("a")],
            ..Default::default()
        }))
        .await
        .unwrap();
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    use base64::Engine;
    let mut r = tonic::Request::new(msg);
    let v = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(TOKEN)
    );
    r.metadata_mut().insert("authorization", v.parse().unwrap());
    r
}
