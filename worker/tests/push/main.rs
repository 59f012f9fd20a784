//! Push sessions against real peers, one test binary: RTMP/RTMPS ([`rtmp`]: nginx-rtmp,
//! stunnel with a test CA, a scripted RTMP server), MPEG-TS over UDP/TCP/SRT
//! ([`mpegts`]: ffmpeg receivers), and the CPU cost per destination ([`bench`], ignored
//! by default). Needs ffmpeg (with libsrt), ffprobe, nginx with libnginx-mod-rtmp and
//! stunnel; without them the tests fail with a message saying so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bench;
mod mpegts;
mod rtmp;

use pushcast_media::Frame;
use pushcast_testkit::source::PacedSource;
use pushcast_worker::push::FrameSource;

/// The test sandbox's paced source as a push session reads frames.
pub struct Paced(PacedSource);

impl Paced {
    pub fn new(frames: Vec<Frame>, speed: f64) -> Paced {
        Paced(PacedSource::new(frames, speed))
    }
}

#[async_trait::async_trait]
impl FrameSource for Paced {
    async fn next_frame(&mut self) -> Option<Frame> {
        self.0.next_frame().await
    }

    fn try_next_frame(&mut self) -> Option<Option<Frame>> {
        self.0.try_next_frame()
    }
}
