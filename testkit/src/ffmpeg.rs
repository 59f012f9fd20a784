//! ffmpeg as a receiving destination (it reads a URL and copies the stream to a file, or
//! listens for an RTMP publish and records it as it arrives) and as an encoder publishing
//! the test clip.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pushcast_media::{Frame, FrameKind};

use crate::proc::Guard;

/// A running `ffmpeg -i URL -c copy -f FORMAT out`.
pub struct Receiver {
    pub out: PathBuf,
    pub log: PathBuf,
    guard: Guard,
}

impl Receiver {
    /// Starts ffmpeg reading `url` (with `input_args` before `-i`) and writing `out` as
    /// MPEG-TS.
    pub fn start(url: &str, input_args: &[&str], out: &Path) -> Receiver {
        let log = out.with_extension("log");
        let mut args: Vec<&str> = vec!["-nostdin", "-y", "-v", "error"];
        args.extend_from_slice(input_args);
        args.extend_from_slice(&["-i", url, "-c", "copy", "-f", "mpegts"]);
        args.push(out.to_str().unwrap());
        let guard = Guard::spawn("ffmpeg", &args, &log);
        Receiver {
            out: out.to_owned(),
            log,
            guard,
        }
    }

    pub fn guard(&mut self) -> &mut Guard {
        &mut self.guard
    }

    /// Waits up to `limit` for ffmpeg to end by itself (end of input), then stops it
    /// (SIGTERM twice, then SIGKILL). Returns whether it ended by itself.
    pub fn finish(&mut self, limit: Duration) -> bool {
        if self.guard.wait_exit(limit).is_some() {
            return true;
        }
        self.guard.terminate(Duration::from_secs(3));
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// ffmpeg publishing the test FLV (H.264 High + AAC) to `url` in real time (`-re`),
/// repeated `loops` more times; its output goes to `dir/{tag}.log`.
pub fn publish(url: &str, dir: &Path, tag: &str, loops: u32) -> Guard {
    let media = crate::media::test_media();
    let log = dir.join(format!("{tag}.log"));
    publish_file(&media.flv, url, i64::from(loops), &log)
}

/// ffmpeg publishing `flv` to `url` in real time (`-re -c copy`), repeated `loops` more
/// times (`-1`: until stopped), its output to `log`.
pub fn publish_file(flv: &Path, url: &str, loops: i64, log: &Path) -> Guard {
    let loops = loops.to_string();
    Guard::spawn(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-re",
            "-stream_loop",
            &loops,
            "-i",
            flv.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "flv",
            url,
        ],
        log,
    )
}

/// ffmpeg as an RTMP destination that keeps what arrives as it arrives: `-listen 1`,
/// `-c copy -copyts -copyinkf` into an FLV file. Unlike nginx-rtmp's recorder, which
/// skips video until the first keyframe and rebases timestamps to the first frame, it
/// drops nothing and moves no timestamp, so what a push sent first and when can be
/// asserted on the file ([`first_media`]). One publish per listener.
pub struct RtmpRecorder {
    pub port: u16,
    pub out: PathBuf,
    guard: Guard,
}

impl RtmpRecorder {
    /// Listens on a free port of 127.0.0.1 and records into `out`.
    pub fn start(out: &Path) -> RtmpRecorder {
        let port = crate::net::free_tcp_port();
        let url = format!("rtmp://127.0.0.1:{port}/live/rec");
        let log = out.with_extension("log");
        let args = [
            "-nostdin",
            "-y",
            "-v",
            "error",
            "-listen",
            "1",
            "-i",
            &url,
            "-c",
            "copy",
            "-copyts",
            "-copyinkf",
            "-f",
            "flv",
        ];
        let mut all: Vec<&str> = args.to_vec();
        all.push(out.to_str().unwrap());
        let mut guard = Guard::spawn("ffmpeg", &all, &log);
        crate::net::wait_listening(port, &mut guard, Duration::from_secs(10));
        RtmpRecorder {
            port,
            out: out.to_owned(),
            guard,
        }
    }

    /// `rtmp://127.0.0.1:PORT/live` (a task's url; any stream key is taken).
    pub fn rtmp_url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/live", self.port)
    }

    /// Waits up to `limit` for the publish to end (ffmpeg then finishes the file), and
    /// returns the frames recorded, in arrival order.
    pub fn finish(&mut self, limit: Duration) -> Vec<Frame> {
        if self.guard.wait_exit(limit).is_none() {
            self.guard.terminate(Duration::from_secs(3));
        }
        crate::flv::read_flv_file(&self.out)
    }
}

/// The first media frames of a recording, after metadata and sequence headers: what a
/// viewer's decoder gets first. `None` when the recording holds no media.
pub fn first_media(frames: &[Frame]) -> Option<&Frame> {
    frames
        .iter()
        .find(|f| f.kind != FrameKind::Data && !f.is_sequence_header())
}

/// Fails the test unless the recording begins as a push must: the first media frame is a
/// video keyframe at output time 0, and no audio frame comes before it.
pub fn assert_starts_on_a_keyframe_at_zero(frames: &[Frame], what: &str) {
    let first = first_media(frames).unwrap_or_else(|| panic!("{what}: no media recorded"));
    assert!(
        first.kind == FrameKind::Video && first.is_keyframe(),
        "{what}: the first media frame is a {:?} frame (keyframe: {}), not a video keyframe",
        first.kind,
        first.is_keyframe()
    );
    assert_eq!(
        first.timestamp_ms, 0,
        "{what}: the push does not start at 0"
    );
}

/// The longest gap, in ms of output time, between consecutive media frames of `kind`.
pub fn longest_gap_ms(frames: &[Frame], kind: FrameKind) -> u32 {
    let times: Vec<u32> = crate::flv::media_frames(frames, kind)
        .iter()
        .map(|f| f.timestamp_ms)
        .collect();
    times
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0)
}
