//! The test media: a pre-encoded FLV made once per test process with ffmpeg's lavfi
//! sources, so tests relay real H.264 High + AAC without encoding anything themselves.

use std::path::PathBuf;
use std::sync::OnceLock;

use pushcast_media::{Frame, FrameKind};

use super::flv::{count_media, read_flv_file};
use super::proc::run;

/// The test FLV and its frames.
pub struct TestMedia {
    _dir: tempfile::TempDir,
    /// The FLV file (lives as long as the test process).
    pub flv: PathBuf,
    /// Its tags as frames, in file order: metadata, sequence headers, then media.
    pub frames: Vec<Frame>,
}

impl TestMedia {
    /// Video frames (AVC NAL unit tags) in the file.
    pub fn video_frames(&self) -> usize {
        count_media(&self.frames, FrameKind::Video)
    }
    /// AAC frames in the file.
    pub fn audio_frames(&self) -> usize {
        count_media(&self.frames, FrameKind::Audio)
    }
}

/// 4 s of 320x240 30 fps H.264 High (GOP 60: keyframes at 0 and 2 s, with B-frames) and
/// 44.1 kHz AAC from testsrc2 + sine. Made on first use, shared by the tests of the
/// process.
pub fn test_media() -> &'static TestMedia {
    static MEDIA: OnceLock<TestMedia> = OnceLock::new();
    MEDIA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let flv = dir.path().join("test.flv");
        let out = run(
            "ffmpeg",
            &[
                "-nostdin",
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
                "-preset",
                "veryfast",
                "-g",
                "60",
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
        let frames = read_flv_file(&flv);
        TestMedia {
            _dir: dir,
            flv,
            frames,
        }
    })
}

/// Makes an FLV clip of `seconds` of `size` (e.g. `1280x720`) 30 fps H.264 at about
/// `video_kbps`, GOP 60, plus AAC, for benchmarks that want a realistic bitrate.
pub fn make_clip(dir: &std::path::Path, size: &str, video_kbps: u32, seconds: u32) -> Vec<Frame> {
    read_flv_file(&make_clip_file(dir, size, video_kbps, seconds))
}

/// Like [`make_clip`], returning the FLV file's path.
pub fn make_clip_file(
    dir: &std::path::Path,
    size: &str,
    video_kbps: u32,
    seconds: u32,
) -> std::path::PathBuf {
    let flv = dir.join(format!("clip-{size}-{video_kbps}k-{seconds}s.flv"));
    let rate = format!("{video_kbps}k");
    let out = run(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={size}:rate=30"),
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            &seconds.to_string(),
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            &rate,
            "-maxrate",
            &rate,
            "-bufsize",
            &rate,
            "-g",
            "60",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-f",
            "flv",
            flv.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "ffmpeg could not make the clip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    flv
}
