//! The TS muxer against real tools: a real H.264 High + AAC FLV made by ffmpeg is read
//! tag by tag into `Frame`s (as an RTMP ingest would deliver them), muxed, and the
//! result is probed and decoded by ffprobe/ffmpeg. Needs `ffmpeg` and `ffprobe` on PATH;
//! without them the tests fail (they never pass silently).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pushcast_media::{Frame, FrameKind};
use pushcast_mpegts::{Pace, PacerConfig, TsMuxer, TsPacer, TsTracks};
use pushcast_testkit::ffprobe::{decode_errors, packets, probe, stream};
use pushcast_testkit::flv::{media_frames, read_flv_file};
use pushcast_testkit::media::Clip;

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
        Clip {
            gop: 30,
            preset: None,
            ..Clip::TEST
        }
        .make(&flv);
        Source {
            dir: dir.path().to_owned(),
            frames: read_flv_file(&flv),
            _dir: dir,
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

/// A full decode with ffmpeg prints no error at all.
fn assert_decodes_cleanly(path: &Path) {
    let errors = decode_errors(path);
    assert!(errors.is_empty(), "ffmpeg decode reported errors: {errors}");
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

    let streams = probe(&path);
    assert_eq!(streams.len(), 2, "{streams:#?}");
    let video = stream(&streams, "h264");
    let audio = stream(&streams, "aac");
    assert_eq!(video.profile.as_deref(), Some("High"));
    assert_eq!((video.width, video.height), (Some(320), Some(240)));
    assert_eq!(audio.sample_rate, Some(44_100));
    eprintln!(
        "FLV: {} video + {} audio frames; TS decoded: {} video, {} audio",
        flv_video.len(),
        flv_audio.len(),
        video.frames,
        audio.frames
    );
    assert_eq!(video.packets, flv_video.len());
    assert_eq!(video.frames, flv_video.len());
    assert_eq!(audio.packets, flv_audio.len());
    assert_eq!(audio.frames, flv_audio.len());
    assert_decodes_cleanly(&path);

    // Timestamps as ffmpeg reads them: exactly the FLV's, shifted to start at the delay.
    let origin = src
        .frames
        .iter()
        .find(|f| f.kind != FrameKind::Data && !f.is_sequence_header())
        .unwrap()
        .timestamp_ms;
    let packets = packets(&path);
    let vidx = video.index;
    let got_video: Vec<(Option<i64>, Option<i64>, bool)> = packets
        .iter()
        .filter(|p| p.stream == vidx)
        .map(|p| (p.pts, p.dts, p.key))
        .collect();
    let want_video: Vec<(Option<i64>, Option<i64>, bool)> = flv_video
        .iter()
        .map(|f| {
            let dts = (i64::from(f.timestamp_ms) - i64::from(origin) + 500) * 90;
            (
                Some(dts + i64::from(f.composition_offset_ms()) * 90),
                Some(dts),
                f.is_keyframe(),
            )
        })
        .collect();
    assert_eq!(got_video, want_video);
    let got_audio: Vec<Option<i64>> = packets
        .iter()
        .filter(|p| p.stream != vidx)
        .map(|p| p.pts)
        .collect();
    let want_audio: Vec<Option<i64>> = flv_audio
        .iter()
        .map(|f| Some((i64::from(f.timestamp_ms) - i64::from(origin) + 500) * 90))
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
        let streams = probe(&path);
        assert_eq!(
            streams.len(),
            1,
            "PMT lists only the selected track: {streams:#?}"
        );
        let s = stream(&streams, codec);
        let want = media_frames(&src.frames, kind).len();
        assert_eq!(s.packets, want, "{codec}");
        assert_eq!(s.frames, want, "{codec}");
        assert_decodes_cleanly(&path);
    }
}
