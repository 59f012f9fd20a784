//! Enhanced RTMP end to end: a static ffmpeg 9 publishes HEVC, AV1 and Opus (and a second
//! audio track) over Enhanced RTMP, pushcast pushes them unchanged to an ffmpeg 9 RTMP
//! listener, and ffmpeg 9 decodes what arrived: the right codecs, the frames, no decode
//! errors. Each destination of a task gets the audio track it chose. A codec that
//! MPEG-TS cannot carry fails the push with a `lastError` naming it.

use std::time::Duration;

use pushcast_testkit::api::Node;
use pushcast_testkit::ffmpeg9::{self, Receiver, decode};
use pushcast_testkit::net::free_udp_port;
use serde_json::{Value, json};

const TOKEN: &str = "erpmt";

/// A 3 s clip (320x240 at 30 fps, a 440 Hz tone) made by ffmpeg 9: HEVC and `audio`.
fn hevc_clip(dir: &std::path::Path, name: &str, audio: &str) -> std::path::PathBuf {
    ffmpeg9::make_clip(
        dir,
        name,
        3,
        &[
            "testsrc2=size=320x240:rate=30",
            "sine=frequency=440:sample_rate=48000",
        ],
        &[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-x265-params",
            "log-level=error",
            "-c:a",
            audio,
        ],
    )
}

async fn node(dir: &std::path::Path) -> Node {
    let node = Node::standalone(dir, TOKEN).await;
    node.open_publish("app").await;
    node
}

async fn wait_task(node: &Node, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    pushcast_testkit::wait_for(what, Duration::from_secs(30), || {
        let node = &node;
        let ok = &ok;
        async move {
            let t = node.task(id).await;
            ok(&t).then_some(t)
        }
    })
    .await
}

/// HEVC+AAC, HEVC+Opus and AV1+AAC, each published by ffmpeg 9 and pushed to an ffmpeg 9
/// listener: decoded with the source's codecs and (almost) all of its video frames.
#[tokio::test(flavor = "multi_thread")]
async fn hevc_av1_and_opus_are_pushed_unchanged_and_decode() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let ingest = node.rtmp.clone().unwrap();
    let video = "testsrc2=size=320x240:rate=30";
    let tone = "sine=frequency=440:sample_rate=48000";
    let shown = |codecs: [&str; 2]| -> Vec<&'static str> {
        codecs
            .iter()
            .map(|c| match *c {
                "hevc" => "HEVC",
                "av1" => "AV1",
                "opus" => "Opus",
                _ => "AAC",
            })
            .collect()
    };
    let cases: [(&str, &[&str], [&str; 2]); 3] = [
        (
            "hevc_aac",
            &[
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-g",
                "30",
                "-x265-params",
                "log-level=error",
                "-c:a",
                "aac",
            ],
            ["hevc", "aac"],
        ),
        (
            "hevc_opus",
            &[
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-g",
                "30",
                "-x265-params",
                "log-level=error",
                "-c:a",
                "libopus",
            ],
            ["hevc", "opus"],
        ),
        (
            "av1_aac",
            &[
                "-c:v",
                "libsvtav1",
                "-preset",
                "12",
                "-g",
                "30",
                "-c:a",
                "aac",
            ],
            ["av1", "aac"],
        ),
    ];
    for (name, args, codecs) in cases {
        let clip = ffmpeg9::make_clip(dir.path(), name, 3, &[video, tone], args);
        let source = decode(&clip);
        assert_eq!(source.codecs, codecs, "{name}: the clip");
        let mut rx = Receiver::start(&dir.path().join(format!("{name}-out.flv")));
        let r = node
            .action(
                "startPush",
                json!({"id": name, "stream": {"name": name}, "protocol": "rtmp",
                       "url": rx.rtmp_url(), "streamKey": "rec"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let mut p = ffmpeg9::publish(
            &clip,
            &format!("rtmp://{ingest}/app/{name}"),
            &dir.path().join(format!("{name}-pub.log")),
        );
        let task = wait_task(&node, name, "the push started", |t| {
            t["state"] == "started" && t["sentBytes"].as_u64().unwrap_or(0) > 0
        })
        .await;
        println!("{name}: {task}");
        // The task says what it pushes.
        assert_eq!(task["codecs"], json!(shown(codecs)), "{name}: {task}");
        assert!(
            p.wait_exit(Duration::from_secs(30)).unwrap().success(),
            "{name}: publish"
        );
        let out = rx.finish(Duration::from_secs(20));
        let got = decode(&out);
        assert_eq!(got.codecs, codecs, "{name}: what arrived");
        assert!(
            got.errors.trim().is_empty(),
            "{name}: decode errors: {}",
            got.errors
        );
        let (sent, arrived) = (source.frames[&0], got.frames.get(&0).copied().unwrap_or(0));
        println!("MEASURED {name}: {arrived} of {sent} video frames decoded at the destination");
        assert!(
            arrived * 10 >= sent * 9,
            "{name}: {arrived} of {sent} video frames"
        );
        assert!(
            got.frames.get(&1).copied().unwrap_or(0) > 0,
            "{name}: audio frames"
        );
    }
}

/// A stream with two audio tracks (48 kHz on track 0, 44.1 kHz on Enhanced RTMP track 1):
/// one task, two destinations, each choosing its audio track by name; what arrives at
/// each is the track it chose (told apart by the sample rate).
#[tokio::test(flavor = "multi_thread")]
async fn each_destination_gets_the_audio_track_it_chose() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let ingest = node.rtmp.clone().unwrap();
    let clip = ffmpeg9::make_clip(
        dir.path(),
        "two_tracks",
        3,
        &[
            "testsrc2=size=320x240:rate=30",
            "sine=frequency=440:sample_rate=48000",
            "sine=frequency=880:sample_rate=44100",
        ],
        &[
            "-map",
            "0",
            "-map",
            "1",
            "-map",
            "2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-c:a",
            "aac",
        ],
    );
    assert_eq!(decode(&clip).codecs, ["h264", "aac", "aac"]);
    let mut live = Receiver::start(&dir.path().join("live.flv"));
    let mut vod = Receiver::start(&dir.path().join("vod.flv"));
    // A destination that knows legacy FLV only (nginx-rtmp records what it gets, and
    // Debian's ffprobe 5.1 reads no Enhanced RTMP): the second track must arrive as a
    // plain AAC track.
    let legacy = pushcast_testkit::nginx::Nginx::start();
    let r = node
        .action(
            "startPush",
            json!({"id": "mt", "stream": {"name": "mt"}, "destinations": [
                {"protocol": "rtmp", "url": live.rtmp_url(), "streamKey": "rec"},
                {"protocol": "rtmp", "url": vod.rtmp_url(), "streamKey": "rec",
                 "variantNames": ["bypass_video", "bypass_audio_1"]},
                {"protocol": "rtmp", "url": legacy.rtmp_url(), "streamKey": "legacy",
                 "variantNames": ["bypass_video", "bypass_audio_1"]}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut p = ffmpeg9::publish(
        &clip,
        &format!("rtmp://{ingest}/app/mt"),
        &dir.path().join("mt.log"),
    );
    assert!(p.wait_exit(Duration::from_secs(30)).unwrap().success());
    let task = node.task("mt").await;
    for d in task["destinations"].as_array().unwrap() {
        assert_eq!(d["codecs"], json!(["H.264", "AAC"]), "{task}");
    }
    for (what, rx, rate) in [("live", &mut live, 48_000), ("vod", &mut vod, 44_100)] {
        let got = decode(&rx.finish(Duration::from_secs(20)));
        assert_eq!(
            got.codecs,
            ["h264", "aac"],
            "{what}: one video, one audio track"
        );
        assert_eq!(
            got.sample_rates.get(&1),
            Some(&rate),
            "{what}: the chosen track"
        );
        assert!(got.errors.trim().is_empty(), "{what}: {}", got.errors);
        assert!(
            got.frames.get(&1).copied().unwrap_or(0) > 50,
            "{what}: audio frames {:?}",
            got.frames
        );
    }
    let recording = legacy.finished_recording("legacy", Duration::from_secs(20));
    let streams = pushcast_testkit::ffprobe::probe(&recording);
    let audio = pushcast_testkit::ffprobe::stream(&streams, "aac");
    assert_eq!(
        audio.sample_rate,
        Some(44_100),
        "the second track, as legacy AAC"
    );
    assert!(audio.frames > 50, "{audio:?}");
    assert_eq!(pushcast_testkit::ffprobe::decode_errors(&recording), "");
}

/// HEVC to an MPEG-TS destination: not a silent push but `error` with a `lastError`
/// naming the codec.
#[tokio::test(flavor = "multi_thread")]
async fn a_codec_mpegts_cannot_carry_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let ingest = node.rtmp.clone().unwrap();
    let clip = ffmpeg9::make_clip(
        dir.path(),
        "vp9",
        3,
        &[
            "testsrc2=size=320x240:rate=30",
            "sine=frequency=440:sample_rate=48000",
        ],
        &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "30",
            "-c:a",
            "libopus",
        ],
    );
    let port = free_udp_port();
    let r = node
        .action(
            "startPush",
            json!({"id": "ts", "stream": {"name": "vp9"}, "protocol": "mpegts",
                   "url": format!("udp://127.0.0.1:{port}")}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut p = ffmpeg9::publish(
        &clip,
        &format!("rtmp://{ingest}/app/vp9"),
        &dir.path().join("vp9.log"),
    );
    let task = wait_task(&node, "ts", "the push failed", |t| t["state"] == "error").await;
    let why = task["lastError"].as_str().unwrap_or_default().to_string();
    println!("lastError: {why}");
    assert!(why.contains("mpegts cannot carry VP9"), "{task}");
    assert_eq!(
        task["codecs"],
        json!(["VP9", "Opus"]),
        "what the source has"
    );
    p.terminate(Duration::from_secs(5));
}

/// HEVC over MPEG-TS (stream type 0x24, Annex-B with VPS/SPS/PPS before each IRAP
/// picture), with AAC and with Opus (private stream, `Opus` registration descriptor):
/// Debian's ffmpeg receives it over UDP and ffprobe decodes every video frame.
#[tokio::test(flavor = "multi_thread")]
async fn hevc_goes_out_as_mpegts_over_udp() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let ingest = node.rtmp.clone().unwrap();
    for (name, audio, shown, probed) in [
        ("hevc_ts", "aac", "AAC", "aac"),
        ("hevc_opus_ts", "libopus", "Opus", "opus"),
    ] {
        let clip = hevc_clip(dir.path(), name, audio);
        let source = decode(&clip);
        let port = free_udp_port();
        let out = dir.path().join(format!("{name}.ts"));
        let mut rx = pushcast_testkit::ffmpeg::Receiver::start(
            &format!("udp://127.0.0.1:{port}?timeout=5000000&fifo_size=1000000&overrun_nonfatal=1"),
            &[],
            &out,
        );
        let r = node
            .action(
                "startPush",
                json!({"id": name, "stream": {"name": name}, "protocol": "mpegts",
                       "url": format!("udp://127.0.0.1:{port}")}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let mut p = ffmpeg9::publish(
            &clip,
            &format!("rtmp://{ingest}/app/{name}"),
            &dir.path().join(format!("{name}.log")),
        );
        let task = wait_task(&node, name, "the push started", |t| t["state"] == "started").await;
        assert_eq!(task["codecs"], json!(["HEVC", shown]));
        assert!(p.wait_exit(Duration::from_secs(30)).unwrap().success());
        assert!(rx.finish(Duration::from_secs(10)), "the receiver ends");
        let streams = pushcast_testkit::ffprobe::probe(&out);
        let video = pushcast_testkit::ffprobe::stream(&streams, "hevc");
        let audio = pushcast_testkit::ffprobe::stream(&streams, probed);
        println!(
            "MEASURED HEVC + {shown} over TS: {} of {} video frames, {} audio frames (source {})",
            video.frames, source.frames[&0], audio.frames, source.frames[&1]
        );
        assert_eq!(video.frames, source.frames[&0], "{name}: every HEVC frame");
        assert!(
            audio.frames * 10 >= source.frames[&1] * 9,
            "{name}: {audio:?}"
        );
        assert_eq!(pushcast_testkit::ffprobe::decode_errors(&out), "", "{name}");
    }
}

/// Destinations that say what they take: one listing only `avc1` is not sent HEVC (the
/// push fails with a `lastError` naming it), one listing `hvc1` is; pushcast announces
/// the stream's E-RTMP codecs in its `connect` (`fourCcList`), and nothing for a legacy
/// stream. nginx-rtmp, which says nothing, gets the HEVC stream as it is.
#[tokio::test(flavor = "multi_thread")]
async fn destinations_that_list_their_codecs_are_not_sent_others() {
    use pushcast_testkit::rtmp_server::{Behaviour, TestRtmpServer};
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let ingest = node.rtmp.clone().unwrap();
    let clip = hevc_clip(dir.path(), "hevc_caps", "aac");
    let avc_only = TestRtmpServer::start(Behaviour::AcceptOnly(&["avc1"])).await;
    let hevc_too = TestRtmpServer::start(Behaviour::AcceptOnly(&["avc1", "hvc1"])).await;
    let nginx = pushcast_testkit::nginx::Nginx::start();
    let r = node
        .action(
            "startPush",
            json!({"id": "caps", "stream": {"name": "caps"}, "destinations": [
                {"protocol": "rtmp", "url": avc_only.url(), "streamKey": "a"},
                {"protocol": "rtmp", "url": hevc_too.url(), "streamKey": "b"},
                {"protocol": "rtmp", "url": nginx.rtmp_url(), "streamKey": "c"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut p = ffmpeg9::publish(
        &clip,
        &format!("rtmp://{ingest}/app/caps"),
        &dir.path().join("caps.log"),
    );
    let task = wait_task(&node, "caps", "each destination settled", |t| {
        let d = &t["destinations"];
        d[0]["state"] == "error" && d[1]["state"] == "started" && d[2]["state"] == "started"
    })
    .await;
    let why = task["destinations"][0]["lastError"]
        .as_str()
        .unwrap_or_default();
    println!("lastError: {why}");
    assert!(
        why.contains("does not take HEVC ('hvc1')") && why.contains("lists only avc1"),
        "{task}"
    );
    assert_eq!(
        hevc_too.received().four_cc_list,
        ["hvc1"],
        "announced in connect"
    );
    assert!(p.wait_exit(Duration::from_secs(30)).unwrap().success());
    let got = hevc_too.received();
    assert!(
        got.frames.iter().any(|f| f.is_keyframe()),
        "HEVC keyframes arrived"
    );
    assert!(
        avc_only.received().frames.is_empty(),
        "nothing sent where it is not taken"
    );
    // nginx-rtmp (no list) got the bytes.
    let task = node.task("caps").await;
    assert!(
        task["destinations"][2]["totalsentBytes"]
            .as_u64()
            .unwrap_or(0)
            > 10_000,
        "{task}"
    );

    // A legacy H.264 stream announces nothing and is sent to the avc1-only destination.
    let legacy = TestRtmpServer::start(Behaviour::AcceptOnly(&["avc1"])).await;
    let r = node
        .action(
            "startPush",
            json!({"id": "legacy", "stream": {"name": "legacy"}, "protocol": "rtmp",
                   "url": legacy.url(), "streamKey": "l"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut p = pushcast_testkit::ffmpeg::publish(
        &format!("rtmp://{ingest}/app/legacy"),
        dir.path(),
        "legacy",
        0,
    );
    wait_task(&node, "legacy", "the legacy push started", |t| {
        t["state"] == "started"
    })
    .await;
    assert!(p.wait_exit(Duration::from_secs(30)).unwrap().success());
    assert!(
        legacy.received().four_cc_list.is_empty(),
        "a legacy connect is unchanged"
    );
}
