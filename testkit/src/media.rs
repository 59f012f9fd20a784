//! Test media: FLV clips made with ffmpeg's lavfi sources ([`Clip`]), and the test clip
//! made once per test process ([`test_media`]), so tests relay real H.264 + AAC without
//! encoding anything themselves.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pushcast_media::{Frame, FrameKind};

use crate::flv::{count_media, read_flv_file};
use crate::proc::run;

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

/// An FLV clip made by ffmpeg from lavfi sources (testsrc2 + a sine): 30 fps H.264 and
/// AAC, so tests relay real media without encoding anything themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clip {
    /// `WIDTHxHEIGHT`.
    pub size: &'static str,
    pub seconds: u32,
    /// Frames between keyframes.
    pub gop: u32,
    /// H.264 High profile (B-frames, so composition offsets are exercised).
    pub high_profile: bool,
    /// x264 preset; `None` is ffmpeg's default.
    pub preset: Option<&'static str>,
    /// Video rate control: (bitrate, VBV buffer) in kb/s; `None` is constant quality.
    pub video_kbps: Option<(u32, u32)>,
    pub audio_hz: u32,
    /// AAC bitrate in kb/s; `None` is ffmpeg's default.
    pub audio_kbps: Option<u32>,
}

impl Clip {
    /// The test clip: 4 s of 320x240 H.264 High (GOP 60: keyframes at 0 and 2 s, with
    /// B-frames) and 44.1 kHz AAC.
    pub const TEST: Clip = Clip {
        size: "320x240",
        seconds: 4,
        gop: 60,
        high_profile: true,
        preset: Some("veryfast"),
        video_kbps: None,
        audio_hz: 44_100,
        audio_kbps: None,
    };

    /// A realistic live stream: `size` at about `video_kbps`, GOP 60 (2 s), 48 kHz AAC
    /// at 128 kb/s, encoded fast.
    pub fn live(size: &'static str, video_kbps: u32, seconds: u32) -> Clip {
        Clip {
            size,
            seconds,
            gop: 60,
            high_profile: false,
            preset: Some("ultrafast"),
            video_kbps: Some((video_kbps, video_kbps)),
            audio_hz: 48_000,
            audio_kbps: Some(128),
        }
    }

    /// Encodes the clip to `flv`.
    pub fn make(&self, flv: &Path) {
        let mut args: Vec<String> = [
            "-nostdin",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={}:rate=30", self.size),
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:sample_rate={}", self.audio_hz),
            "-t",
            &self.seconds.to_string(),
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-g",
            &self.gop.to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if self.high_profile {
            args.extend(["-profile:v".into(), "high".into()]);
        }
        if let Some(preset) = self.preset {
            args.extend(["-preset".into(), preset.into()]);
        }
        if let Some((rate, buffer)) = self.video_kbps {
            args.extend([
                "-b:v".into(),
                format!("{rate}k"),
                "-maxrate".into(),
                format!("{rate}k"),
                "-bufsize".into(),
                format!("{buffer}k"),
            ]);
        }
        args.extend(["-c:a".into(), "aac".into()]);
        if let Some(kbps) = self.audio_kbps {
            args.extend(["-b:a".into(), format!("{kbps}k")]);
        }
        args.extend(["-f".into(), "flv".into(), flv.display().to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run("ffmpeg", &refs);
        assert!(
            out.status.success(),
            "ffmpeg could not make the clip {self:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Encodes the clip into `dir` (named after its settings) and returns the path.
    pub fn make_in(&self, dir: &Path) -> PathBuf {
        let kbps = self.video_kbps.map_or(0, |(r, _)| r);
        let flv = dir.join(format!(
            "clip-{}-{kbps}k-{}s-g{}.flv",
            self.size, self.seconds, self.gop
        ));
        self.make(&flv);
        flv
    }
}

/// [`Clip::TEST`], made on first use and shared by the tests of the process.
pub fn test_media() -> &'static TestMedia {
    static MEDIA: OnceLock<TestMedia> = OnceLock::new();
    MEDIA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let flv = dir.path().join("test.flv");
        Clip::TEST.make(&flv);
        let frames = read_flv_file(&flv);
        TestMedia {
            _dir: dir,
            flv,
            frames,
        }
    })
}
