//! SRT ingest end to end: Debian's ffmpeg (libsrt) publishes MPEG-TS over SRT with a
//! stream key in the access-control stream id; the publish goes through the same checks
//! as RTMP (a wrong key or passphrase is refused) and is pushed to nginx-rtmp, where
//! ffprobe counts every frame of the clip.

use std::time::Duration;

use pushcast_testkit::api::Node;
use pushcast_testkit::ffprobe;
use pushcast_testkit::media::test_media;
use pushcast_testkit::net::free_udp_port;
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::proc::Guard;
use serde_json::json;

const TOKEN: &str = "srt";
const PASSPHRASE: &str = "correct horse battery";

/// ffmpeg publishing the test clip once over SRT with `stream_id`.
fn srt_publish(
    port: u16,
    stream_id: &str,
    passphrase: Option<&str>,
    log: &std::path::Path,
) -> Guard {
    srt_publish_file(&test_media().flv, port, stream_id, passphrase, log)
}

/// ffmpeg publishing `input` once, in real time, as MPEG-TS over SRT with `stream_id`.
fn srt_publish_file(
    input: &std::path::Path,
    port: u16,
    stream_id: &str,
    passphrase: Option<&str>,
    log: &std::path::Path,
) -> Guard {
    let mut args = vec![
        "-nostdin",
        "-v",
        "error",
        "-re",
        "-i",
        input.to_str().unwrap(),
        "-c",
        "copy",
        "-f",
        "mpegts",
        "-srt_streamid",
        stream_id,
        "-pkt_size",
        "1316",
        // Live mode closes at once by default, dropping what is not sent yet (the last
        // audio PES: ffmpeg's own SRT listener then gets 166 of 174 audio frames too).
        "-linger",
        "3",
    ];
    if let Some(p) = passphrase {
        args.extend(["-passphrase", p]);
    }
    let url = format!("srt://127.0.0.1:{port}");
    args.push(&url);
    Guard::spawn("ffmpeg", &args, log)
}

/// A 3 s MPEG-TS clip made by Debian's ffmpeg with `codecs` (its codec options).
fn make_ts(dir: &std::path::Path, name: &str, codecs: &[&str]) -> std::path::PathBuf {
    let clip = dir.join(format!("{name}.ts"));
    let made = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            "3",
        ])
        .args(codecs)
        .args(["-f", "mpegts"])
        .arg(&clip)
        .status()
        .unwrap();
    assert!(made.success(), "Debian's ffmpeg makes {name}");
    clip
}

async fn standalone(dir: &std::path::Path, srt_port: u16, passphrase: Option<&str>) -> Node {
    let mut extra = vec![format!("--srt-addr=127.0.0.1:{srt_port}")];
    if let Some(p) = passphrase {
        extra.push(format!("--srt-passphrase={p}"));
    }
    let node = Node::standalone_with(dir, TOKEN, &extra).await;
    node.proc
        .wait_logged(&["SRT ingest listening"], Duration::from_secs(10))
        .await;
    node
}

async fn stream_key(node: &Node, stream: &str) -> String {
    let r = node
        .post(
            "/v1/vhosts/default/apps/app:streamKey",
            &json!({"stream": stream}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json["response"]["streamKey"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn srt_publishers_with_a_key_are_pushed_and_others_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let node = standalone(dir.path(), port, None).await;
    let key = stream_key(&node, "cam").await;

    // A wrong key: refused at the SRT handshake, nothing goes live.
    let mut wrong = srt_publish(
        port,
        "#!::r=app/not-the-key,m=publish",
        None,
        &dir.path().join("wrong.log"),
    );
    let st = wrong
        .wait_exit(Duration::from_secs(20))
        .expect("refused publisher exits");
    assert!(!st.success(), "a wrong key is refused");
    node.proc
        .wait_logged(
            &["SRT publish refused", "AuthencationFailed"],
            Duration::from_secs(5),
        )
        .await;

    let nginx = Nginx::start();
    let r = node
        .action(
            "startPush",
            json!({"id": "out", "stream": {"name": "cam"}, "protocol": "rtmp",
                   "url": nginx.rtmp_url(), "streamKey": "fromsrt"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut p = srt_publish(
        port,
        &format!("#!::r=app/{key},m=publish"),
        None,
        &dir.path().join("srt.log"),
    );
    pushcast_testkit::wait_for("the push started", Duration::from_secs(20), || async {
        let t = node.task("out").await;
        (t["state"] == "started").then_some(())
    })
    .await;
    let task = node.task("out").await;
    assert_eq!(task["codecs"], json!(["H.264", "AAC"]), "{task}");
    let st = p
        .wait_exit(Duration::from_secs(30))
        .expect("the publish ends");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(dir.path().join("srt.log")).unwrap_or_default()
    );
    node.proc
        .wait_logged(&["SRT publish ended"], Duration::from_secs(20))
        .await;
    for line in node
        .proc
        .output()
        .iter()
        .filter(|l| l.contains("SRT publish ended"))
    {
        println!("{line}");
    }
    let recording = nginx.finished_recording("fromsrt", Duration::from_secs(20));
    let streams = ffprobe::probe(&recording);
    let media = test_media();
    let (v, a) = (
        ffprobe::stream(&streams, "h264"),
        ffprobe::stream(&streams, "aac"),
    );
    println!(
        "MEASURED SRT ingest to nginx-rtmp: {} of {} video frames, {} of {} audio frames",
        v.frames,
        media.video_frames(),
        a.frames,
        media.audio_frames()
    );
    assert_eq!(v.frames, media.video_frames(), "every video frame");
    assert_eq!(a.frames, media.audio_frames(), "every audio frame");
    assert_eq!(ffprobe::decode_errors(&recording), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_srt_passphrase_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let node = standalone(dir.path(), port, Some(PASSPHRASE)).await;
    node.open_publish("app").await;
    let mut without = srt_publish(port, "app/cam", None, &dir.path().join("without.log"));
    let st = without.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!st.success(), "no passphrase: refused");
    let mut wrong = srt_publish(
        port,
        "app/cam",
        Some("not the passphrase"),
        &dir.path().join("wrong.log"),
    );
    let st = wrong.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!st.success(), "a wrong passphrase: refused");
    let mut right = srt_publish(
        port,
        "app/cam",
        Some(PASSPHRASE),
        &dir.path().join("right.log"),
    );
    node.proc
        .wait_logged(&["SRT publish started", "cam"], Duration::from_secs(20))
        .await;
    let st = right.wait_exit(Duration::from_secs(30)).expect("ends");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(dir.path().join("right.log")).unwrap_or_default()
    );

    // An app with its own passphrase: the ingest's is not enough there.
    let r = node
        .post(
            "/v1/vhosts/default/apps",
            r#"{"name": "studio", "openPublish": true, "srtPassphrase": "studio passphrase"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["response"]["srtPassphrase"], "***", "write-only");
    let short = node
        .call(
            "PATCH",
            "/v1/vhosts/default/apps/studio",
            Some(r#"{"srtPassphrase": "short"}"#),
        )
        .await;
    assert_eq!(short.status, 400, "{}", short.text);
    let mut global = srt_publish(
        port,
        "studio/cam",
        Some(PASSPHRASE),
        &dir.path().join("global.log"),
    );
    let st = global.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!st.success(), "the ingest's passphrase is not the app's");
    let mut own = srt_publish(
        port,
        "studio/cam",
        Some("studio passphrase"),
        &dir.path().join("own.log"),
    );
    node.proc
        .wait_logged(
            &["SRT publish started", "studio/cam"],
            Duration::from_secs(20),
        )
        .await;
    let st = own.wait_exit(Duration::from_secs(30)).expect("ends");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(dir.path().join("own.log")).unwrap_or_default()
    );
}

/// HEVC over SRT (a hardware encoder's usual output): demuxed into Enhanced RTMP `hvc1`
/// frames, pushed as MPEG-TS over UDP (Debian's ffprobe decodes every frame) and over
/// Enhanced RTMP to an ffmpeg 9 listener.
#[tokio::test(flavor = "multi_thread")]
async fn hevc_over_srt_is_pushed_to_udp_ts_and_enhanced_rtmp() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let node = standalone(dir.path(), port, None).await;
    node.open_publish("app").await;
    let clip = make_ts(
        dir.path(),
        "hevc",
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
    );
    let udp = free_udp_port();
    let out = dir.path().join("out.ts");
    let mut rx = pushcast_testkit::ffmpeg::Receiver::start(
        &format!("udp://127.0.0.1:{udp}?timeout=5000000&fifo_size=1000000&overrun_nonfatal=1"),
        &[],
        &out,
    );
    let mut erpmt = pushcast_testkit::ffmpeg9::Receiver::start(&dir.path().join("out.flv"));
    let r = node
        .action(
            "startPush",
            json!({"id": "hevc", "stream": {"name": "cam"}, "destinations": [
                {"protocol": "mpegts", "url": format!("udp://127.0.0.1:{udp}")},
                {"protocol": "rtmp", "url": erpmt.rtmp_url(), "streamKey": "rec"}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let log = dir.path().join("hevc-pub.log");
    let mut p = srt_publish_file(&clip, port, "#!::r=app/cam,m=publish", None, &log);
    let st = p
        .wait_exit(Duration::from_secs(30))
        .expect("the publish ends");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let task = node.task("hevc").await;
    assert_eq!(task["codecs"], json!(["HEVC", "AAC"]), "{task}");
    assert!(rx.finish(Duration::from_secs(10)));
    let streams = ffprobe::probe(&out);
    let v = ffprobe::stream(&streams, "hevc");
    println!(
        "MEASURED HEVC over SRT to TS/UDP: {} of 90 video frames",
        v.frames
    );
    assert_eq!(v.frames, 90, "every HEVC frame");
    assert_eq!(ffprobe::decode_errors(&out), "");
    let got = pushcast_testkit::ffmpeg9::decode(&erpmt.finish(Duration::from_secs(20)));
    println!(
        "MEASURED HEVC over SRT to E-RTMP: {:?} frames {:?}",
        got.codecs, got.frames
    );
    assert_eq!(got.codecs, ["hevc", "aac"]);
    assert_eq!(got.frames.get(&0), Some(&90), "every HEVC frame");
    assert!(got.errors.trim().is_empty(), "{}", got.errors);
}

/// Opus over SRT (in TS: private data registered as 'Opus'): demuxed into Enhanced RTMP
/// Opus frames and pushed to an ffmpeg 9 listener, which decodes them.
#[tokio::test(flavor = "multi_thread")]
async fn opus_over_srt_reaches_an_enhanced_rtmp_destination() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let node = standalone(dir.path(), port, None).await;
    node.open_publish("app").await;
    let clip = make_ts(
        dir.path(),
        "opus",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-c:a",
            "libopus",
        ],
    );
    let mut rx = pushcast_testkit::ffmpeg9::Receiver::start(&dir.path().join("out.flv"));
    let r = node
        .action(
            "startPush",
            json!({"id": "opus", "stream": {"name": "cam"}, "protocol": "rtmp",
                   "url": rx.rtmp_url(), "streamKey": "rec"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let log = dir.path().join("opus-pub.log");
    let mut p = srt_publish_file(&clip, port, "app/cam", None, &log);
    assert!(
        p.wait_exit(Duration::from_secs(30))
            .expect("ends")
            .success()
    );
    let task = node.task("opus").await;
    assert_eq!(task["codecs"], json!(["H.264", "Opus"]), "{task}");
    let source = pushcast_testkit::ffmpeg9::decode(&clip);
    let got = pushcast_testkit::ffmpeg9::decode(&rx.finish(Duration::from_secs(20)));
    println!(
        "MEASURED Opus over SRT to E-RTMP: {:?} {:?} (source {:?})",
        got.codecs, got.frames, source.frames
    );
    assert_eq!(got.codecs, ["h264", "opus"]);
    assert_eq!(
        got.frames.get(&0),
        source.frames.get(&0),
        "every video frame"
    );
    assert_eq!(
        got.frames.get(&1),
        source.frames.get(&1),
        "every Opus packet"
    );
    assert!(got.errors.trim().is_empty(), "{}", got.errors);
}
