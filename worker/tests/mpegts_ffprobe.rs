//! The TS muxer against real tools: a real H.264 High + AAC FLV made by ffmpeg is read
//! tag by tag into `Frame`s (as an RTMP ingest would deliver them), muxed, and the
//! result is probed and decoded by ffprobe/ffmpeg. Needs `ffmpeg` and `ffprobe` on PATH;
//! without them the tests fail (they never pass silently).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pushcast_media::{Frame, FrameKind};
use pushcast_mpegts::{Pace, PacerConfig, TsMuxer, TsPacer, TsTracks};
use serde_json::Value;
use support::flv::{media_frames, read_flv};

/// Runs a tool, failing the test with a clear message when it is missing.
fn run(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{tool}` ({e}): this test needs ffmpeg and ffprobe installed \
             (Debian: apt-get install ffmpeg)"
        )
    })
}

struct Source {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    frames: Vec<Frame>,
}

/// The FLV is made once per test binary: 4 s of 320x240 30 fps H.264 High (GOP 30, with
/// B-frames, so composition offsets are exercised) and 44.1 kHz AAC.
fn source() -> &'static Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let flv = dir.path().join("in.flv");
        let out = run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=320x240:rate=30",
                "-f",
                "lavfi",
                "-i",
                "sine=frequency=440:sample_rate=44100",
                "-t",
                "4",
                "-pix_fmt",
                "yuv420p",
                "-c:v",
                "libx264",
                "-profile:v",
                "high",
                "-g",
                "30",
                "-c:a",
                "aac",
                "-f",
                "flv",
                flv.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "ffmpeg could not make the test FLV: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let frames = read_flv(&std::fs::read(&flv).unwrap());
        Source {
            dir: dir.path().to_owned(),
            _dir: dir,
            frames,
        }
    })
}

fn mux(frames: &[Frame], tracks: TsTracks) -> (Vec<u8>, TsMuxer) {
    let mut mux = TsMuxer::new(tracks);
    let mut out = Vec::new();
    for f in frames {
        mux.push(f, &mut out).unwrap();
    }
    assert_eq!(out.len() % 188, 0);
    (out, mux)
}

fn write_ts(name: &str, ts: &[u8]) -> PathBuf {
    let path = source().dir.join(name);
    std::fs::write(&path, ts).unwrap();
    path
}

/// ffprobe's view of the streams, with decoded frame and packet counts.
fn probe_streams(path: &Path) -> Vec<Value> {
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_streams",
            "-count_frames",
            "-count_packets",
            "-of",
            "json",
            path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "ffprobe failed");
    assert!(
        out.stderr.is_empty(),
        "ffprobe reported errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["streams"].as_array().unwrap().clone()
}

/// ffprobe's packets: (stream index, pts, dts, keyframe flag), in file order.
fn probe_packets(path: &Path) -> Vec<(u64, i64, i64, bool)> {
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "packet=stream_index,pts,dts,flags",
            "-of",
            "json",
            path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "ffprobe failed");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["stream_index"].as_u64().unwrap(),
                p["pts"].as_i64().unwrap(),
                p["dts"].as_i64().unwrap(),
                p["flags"].as_str().unwrap().starts_with('K'),
            )
        })
        .collect()
}

/// A full decode with ffmpeg prints no error at all.
fn assert_decodes_cleanly(path: &Path) {
    let out = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-i",
            path.to_str().unwrap(),
            "-f",
            "null",
            "-",
        ],
    );
    assert!(out.status.success(), "ffmpeg decode failed");
    assert!(
        out.stderr.is_empty(),
        "ffmpeg decode reported errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count(stream: &Value, key: &str) -> usize {
    stream[key].as_str().unwrap().parse().unwrap()
}

fn stream_of<'a>(streams: &'a [Value], codec: &str) -> &'a Value {
    streams
        .iter()
        .find(|s| s["codec_name"] == codec)
        .unwrap_or_else(|| panic!("no {codec} stream in {streams:#?}"))
}

#[test]
fn h264_high_and_aac_decode_with_every_frame() {
    let src = source();
    let flv_video = media_frames(&src.frames, FrameKind::Video);
    let flv_audio = media_frames(&src.frames, FrameKind::Audio);
    assert!(flv_video.len() >= 115, "{} video frames", flv_video.len());
    assert!(flv_audio.len() >= 170, "{} audio frames", flv_audio.len());
    assert!(
        flv_video.iter().any(|f| f.composition_offset_ms() != 0),
        "source has B-frames"
    );

    let (ts, mux) = mux(
        &src.frames,
        TsTracks {
            video: true,
            audio: true,
        },
    );
    let stats = mux.stats();
    assert_eq!(stats.video_frames as usize, flv_video.len());
    assert_eq!(stats.audio_frames as usize, flv_audio.len());
    let path = write_ts("av.ts", &ts);

    let streams = probe_streams(&path);
    assert_eq!(streams.len(), 2, "{streams:#?}");
    let video = stream_of(&streams, "h264");
    let audio = stream_of(&streams, "aac");
    assert_eq!(video["profile"], "High");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(audio["sample_rate"], "44100");
    eprintln!(
        "FLV: {} video + {} audio frames; TS decoded: {} video, {} audio",
        flv_video.len(),
        flv_audio.len(),
        count(video, "nb_read_frames"),
        count(audio, "nb_read_frames")
    );
    assert_eq!(count(video, "nb_read_packets"), flv_video.len());
    assert_eq!(count(video, "nb_read_frames"), flv_video.len());
    assert_eq!(count(audio, "nb_read_packets"), flv_audio.len());
    assert_eq!(count(audio, "nb_read_frames"), flv_audio.len());
    assert_decodes_cleanly(&path);

    // Timestamps as ffmpeg reads them: exactly the FLV's, shifted to start at the delay.
    let origin = src
        .frames
        .iter()
        .find(|f| f.kind != FrameKind::Data && !f.is_sequence_header())
        .unwrap()
        .timestamp_ms;
    let packets = probe_packets(&path);
    let vidx = video["index"].as_u64().unwrap();
    let got_video: Vec<(i64, i64, bool)> = packets
        .iter()
        .filter(|p| p.0 == vidx)
        .map(|p| (p.1, p.2, p.3))
        .collect();
    let want_video: Vec<(i64, i64, bool)> = flv_video
        .iter()
        .map(|f| {
            let dts = (i64::from(f.timestamp_ms) - i64::from(origin) + 500) * 90;
            (
                dts + i64::from(f.composition_offset_ms()) * 90,
                dts,
                f.is_keyframe(),
            )
        })
        .collect();
    assert_eq!(got_video, want_video);
    let got_audio: Vec<i64> = packets
        .iter()
        .filter(|p| p.0 != vidx)
        .map(|p| p.1)
        .collect();
    let want_audio: Vec<i64> = flv_audio
        .iter()
        .map(|f| (i64::from(f.timestamp_ms) - i64::from(origin) + 500) * 90)
        .collect();
    assert_eq!(got_audio, want_audio);

    // Paced as datagrams, 4 s of stream takes about 4 s of (virtual) time.
    let mut mux = TsMuxer::new(TsTracks {
        video: true,
        audio: true,
    });
    let mut pacer = TsPacer::new(PacerConfig::default());
    let t0 = Instant::now();
    let (mut now, mut sent, mut buf) = (Duration::ZERO, 0, Vec::new());
    for f in &src.frames {
        let before = buf.len();
        mux.push(f, &mut buf).unwrap();
        if let Some(clock) = mux.clock_90k() {
            pacer.muxed(clock, buf.len() - before);
        }
        loop {
            match pacer.poll(t0 + now) {
                Pace::Send(n) => sent += n,
                Pace::Wait(d) => now += d,
                Pace::Idle => break,
            }
        }
    }
    assert_eq!(buf, ts, "muxing is deterministic");
    assert!(sent >= ts.len() - 2 * 1316);
    assert!(
        now > Duration::from_millis(3_800) && now < Duration::from_millis(4_100),
        "paced over {now:?}"
    );
}

#[test]
fn wrapped_input_timestamps_give_the_same_stream() {
    let src = source();
    // Shift the whole input to start 1.5 s before the 32-bit wrap.
    let shifted: Vec<Frame> = src
        .frames
        .iter()
        .map(|f| Frame {
            timestamp_ms: f.timestamp_ms.wrapping_add(u32::MAX - 1_500),
            ..f.clone()
        })
        .collect();
    let tracks = TsTracks {
        video: true,
        audio: true,
    };
    let (plain, _) = mux(&src.frames, tracks);
    let (wrapped, mux) = mux(&shifted, tracks);
    assert_eq!(mux.stats().timestamp_discontinuities, 0);
    assert!(
        wrapped == plain,
        "output does not depend on where input timestamps start"
    );
    let path = write_ts("wrapped.ts", &wrapped);
    assert_decodes_cleanly(&path);
}

#[test]
fn video_only_and_audio_only() {
    let src = source();
    for (tracks, codec, kind) in [
        (
            TsTracks {
                video: true,
                audio: false,
            },
            "h264",
            FrameKind::Video,
        ),
        (
            TsTracks {
                video: false,
                audio: true,
            },
            "aac",
            FrameKind::Audio,
        ),
    ] {
        let (ts, _) = mux(&src.frames, tracks);
        let path = write_ts(&format!("{codec}-only.ts"), &ts);
        let streams = probe_streams(&path);
        assert_eq!(
            streams.len(),
            1,
            "PMT lists only the selected track: {streams:#?}"
        );
        let s = stream_of(&streams, codec);
        let want = media_frames(&src.frames, kind).len();
        assert_eq!(count(s, "nb_read_packets"), want, "{codec}");
        assert_eq!(count(s, "nb_read_frames"), want, "{codec}");
        assert_decodes_cleanly(&path);
    }
}
