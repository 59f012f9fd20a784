//! The operator's view of a push (issue 18): health numbers next to the byte totals, in
//! REST and gRPC, read from a real push of a real encoder to nginx-rtmp.

use std::time::Duration;

use base64::Engine;
use pushcast_proto::v1;
use pushcast_testkit::api::Node;
use pushcast_testkit::ffmpeg::publish_file;
use pushcast_testkit::media::{Clip, test_media};
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::wait_for;
use serde_json::{Value, json};

const TOKEN: &str = "health";

async fn task_when(node: &Node, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(30), || async {
        let t = node.task("t").await;
        pred(&t).then_some(t)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_push_shows_its_bitrate_frame_rate_and_connection_time() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    let nginx = Nginx::start();
    let r = node
        .action(
            "startPush",
            json!({"id": "t", "stream": {"name": "cam"}, "protocol": "rtmp",
                   "url": nginx.rtmp_url(), "streamKey": "k"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let media = test_media();
    let log = dir.path().join("publish.log");
    let _encoder = publish_file(&media.flv, &node.ingest_url("app", "cam"), -1, &log);
    // The source's own rate: the clip's media bytes over its length.
    let clip_bps = media
        .frames
        .iter()
        .map(|f| f.payload.len() as u64)
        .sum::<u64>()
        * 8
        / u64::from(Clip::TEST.seconds);
    // Five seconds of sending fill the window the rates are measured over.
    let t = task_when(&node, "5 s of sending", |t| {
        t["connectedTime"].as_u64().unwrap_or(0) > 5500
    })
    .await;
    let bitrate = t["bitrate"].as_u64().unwrap_or(0);
    let fps = t["fps"].as_f64().unwrap_or(0.0);
    println!("health: bitrate {bitrate} b/s (clip {clip_bps}), fps {fps}: {t}");
    assert!(
        bitrate * 10 >= clip_bps * 6 && bitrate * 10 <= clip_bps * 16,
        "bitrate {bitrate} b/s for a {clip_bps} b/s source"
    );
    assert!(
        (25.0..=35.0).contains(&fps),
        "fps {fps} for a 30 fps source"
    );
    for absent in ["reconnects", "stalls", "lastErrorTime", "droppedFrames"] {
        assert!(t.get(absent).is_none(), "{absent} on a healthy push: {t}");
    }
    let later = task_when(&node, "the connection time grows", |x| {
        x["connectedTime"].as_u64().unwrap_or(0) > t["connectedTime"].as_u64().unwrap_or(0)
    })
    .await;
    assert_eq!(later["state"], "started");

    // The stream itself: what the encoder sends, as its worker measures it.
    let s = node
        .call("GET", "/v1/vhosts/default/apps/app/streams/cam", None)
        .await;
    let h = &s.json["response"]["health"];
    println!("stream: {}", s.json["response"]);
    assert_eq!(
        (h["width"].as_u64(), h["height"].as_u64()),
        (Some(320), Some(240)),
        "{s:?}",
        s = s.text
    );
    let stream_fps = h["fps"].as_f64().unwrap_or(0.0);
    assert!(
        (25.0..=35.0).contains(&stream_fps),
        "stream fps {stream_fps}"
    );
    let stream_bps = h["bitrate"].as_u64().unwrap_or(0);
    assert!(
        stream_bps * 10 >= clip_bps * 6 && stream_bps * 10 <= clip_bps * 16,
        "stream bitrate {stream_bps} for a {clip_bps} b/s source"
    );
    assert_eq!(h["codecs"], json!(["H.264", "AAC"]));
    assert!(
        h["encoder"].as_str().unwrap_or("").starts_with("Lavf"),
        "{h}"
    );
    let client = s.json["response"]["client"].as_str().unwrap_or("");
    assert!(client.starts_with("127.0.0.1:"), "{client}");
    assert!(
        s.json["response"]["software"]
            .as_str()
            .unwrap_or("")
            .contains("Lavf"),
        "flashVer: {}",
        s.json["response"]
    );

    // The same numbers over gRPC.
    let channel = crate::grpc_channel(&node).await;
    let mut pushes = v1::push_service_client::PushServiceClient::new(channel);
    let mut req = tonic::Request::new(v1::GetPushRequest {
        vhost: "default".into(),
        app: "app".into(),
        id: "t".into(),
    });
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(TOKEN)
    );
    req.metadata_mut()
        .insert("authorization", auth.parse().unwrap());
    let task = pushes
        .get_push(req)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let h = task.health.expect("health");
    assert!(h.bitrate_bps * 10 >= clip_bps * 6, "{h:?}");
    assert!((25.0..=35.0).contains(&h.fps), "{h:?}");
    assert!(h.connected_ms > 5500, "{h:?}");
}

/// An SRT destination's health carries what SRT counts of the connection (losses,
/// retransmissions, drops: srt-tokio 0.4.4's statistics leave the round trip unset).
#[tokio::test(flavor = "multi_thread")]
async fn an_srt_push_shows_the_connections_losses() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;
    let port = pushcast_testkit::net::free_udp_port();
    let out = dir.path().join("srt.ts");
    let _receiver = pushcast_testkit::ffmpeg::Receiver::start(
        &format!("srt://127.0.0.1:{port}?mode=listener"),
        &[],
        &out,
    );
    let r = node
        .action(
            "startPush",
            json!({"id": "t", "stream": {"name": "cam"}, "protocol": "srt",
                   "url": format!("srt://127.0.0.1:{port}")}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let log = dir.path().join("publish.log");
    let _encoder = publish_file(&test_media().flv, &node.ingest_url("app", "cam"), -1, &log);
    let t = task_when(&node, "SRT's statistics", |t| {
        t["state"] == "started" && t.get("lostPackets").is_some()
    })
    .await;
    println!("srt health: {t}");
    // Loopback loses nothing.
    assert_eq!(
        (
            &t["lostPackets"],
            &t["retransmittedPackets"],
            &t["droppedPackets"]
        ),
        (&json!(0), &json!(0), &json!(0)),
        "{t}"
    );
    assert!(t["bitrate"].as_u64().unwrap_or(0) > 0 || t["sentBytes"].as_u64().unwrap_or(0) > 0);
}
