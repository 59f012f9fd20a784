//! The one timestamp rebaser: a push's output time is zero at its start and never goes
//! back, whatever the source's clock does.
//!
//! A push joins a live stream in the middle: the hub hands it the sequence headers and
//! metadata (stamped whenever the encoder sent them, often long ago) and then the cached
//! GOP from its keyframe on. Destinations expect a publish to start near zero and never go
//! back (YouTube and Twitch warn or disconnect otherwise), RTMP's 32-bit milliseconds
//! may wrap in a long push, and MPEG-TS wants monotonic DTS per PID. So:
//! - sequence headers and metadata before the first media frame are at 0;
//! - the first media frame (audio or video, normally the cached keyframe) is 0, and every
//!   media frame after it is offset by the same amount, on a 64-bit line that never
//!   wraps (RTMP wraps it again on the wire: [`Rebaser::map_wire`]; MPEG-TS wraps to 33
//!   bits only when it writes a packet);
//! - input steps are measured modulo 2^32 (the source's wrap is invisible); a step outside
//!   a plausible window (encoder restart, broken clock) continues the line just after the
//!   latest time seen instead of jumping (counted: [`Rebaser::discontinuities`]);
//! - each kind (video, audio, data) never goes back: interleaving skew that would put a
//!   frame before its predecessor of the same kind, or before 0, is clamped;
//! - configuration frames later in the stream (a new sequence header, new metadata) are
//!   stamped with the current time and do not move the line.

use crate::frame::{Frame, FrameKind};

/// Larger forward steps between consecutive media frames are discontinuities.
pub const MAX_FORWARD_STEP_MS: i64 = 10_000;
/// Larger backward steps are discontinuities; smaller ones are audio/video skew.
pub const MAX_BACKWARD_STEP_MS: i64 = 5_000;

/// Maps source timestamps to a push's output time. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Rebaser {
    /// Raw timestamp of the last media frame; `None` before the first one.
    last_raw: Option<u32>,
    /// Output time of the last media frame.
    line: i64,
    /// Latest output time seen.
    max: i64,
    /// Last output per kind (video, audio, data).
    last_out: [i64; 3],
    discontinuities: u64,
}

fn slot(kind: FrameKind) -> usize {
    match kind {
        FrameKind::Video => 0,
        FrameKind::Audio => 1,
        FrameKind::Data => 2,
    }
}

impl Rebaser {
    /// The output time of `frame`, in milliseconds since the push's first media frame:
    /// never negative, never behind the previous frame of the same kind.
    pub fn map(&mut self, frame: &Frame) -> i64 {
        let config = frame.kind == FrameKind::Data || frame.is_sequence_header();
        let t = match (self.last_raw, config) {
            (None, true) => return 0,
            (None, false) => {
                self.last_raw = Some(frame.timestamp_ms);
                0
            }
            (Some(_), true) => self.max,
            (Some(last), false) => {
                // The wrapped difference read as signed is the shortest step.
                let step = i64::from(frame.timestamp_ms.wrapping_sub(last) as i32);
                let t = if (-MAX_BACKWARD_STEP_MS..=MAX_FORWARD_STEP_MS).contains(&step) {
                    self.line.saturating_add(step)
                } else {
                    self.discontinuities = self.discontinuities.saturating_add(1);
                    self.max.saturating_add(1)
                };
                self.last_raw = Some(frame.timestamp_ms);
                self.line = t;
                self.max = self.max.max(t);
                t
            }
        };
        let last = &mut self.last_out[slot(frame.kind)];
        let out = t.max(0).max(*last);
        *last = out;
        out
    }

    /// [`map`](Self::map) as RTMP's 32-bit milliseconds, which wrap after 49.7 days.
    pub fn map_wire(&mut self, frame: &Frame) -> u32 {
        (self.map(frame) & 0xffff_ffff) as u32
    }

    /// How many source timestamp jumps were bridged.
    pub fn discontinuities(&self) -> u64 {
        self.discontinuities
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn f(kind: FrameKind, ts: u32, payload: &'static [u8]) -> Frame {
        Frame {
            kind,
            timestamp_ms: ts,
            payload: Bytes::from_static(payload),
        }
    }
    const AVC_SEQ: &[u8] = &[0x17, 0, 0, 0, 0];
    const AVC_KEY: &[u8] = &[0x17, 1, 0, 0, 0];
    const AVC_INTER: &[u8] = &[0x27, 1, 0, 0, 0];
    const AAC_SEQ: &[u8] = &[0xaf, 0];
    const AAC: &[u8] = &[0xaf, 1, 1];

    #[test]
    fn joins_mid_stream_at_zero() {
        let mut r = Rebaser::default();
        let start = 3_600_000;
        assert_eq!(r.map(&f(FrameKind::Data, 5, b"\x02")), 0);
        assert_eq!(r.map(&f(FrameKind::Video, 0, AVC_SEQ)), 0);
        assert_eq!(r.map(&f(FrameKind::Audio, 0, AAC_SEQ)), 0);
        assert_eq!(r.map(&f(FrameKind::Video, start, AVC_KEY)), 0);
        assert_eq!(
            r.map(&f(FrameKind::Audio, start - 10, AAC)),
            0,
            "skew before 0 clamps"
        );
        assert_eq!(r.map(&f(FrameKind::Audio, start + 13, AAC)), 13);
        assert_eq!(r.map(&f(FrameKind::Video, start + 33, AVC_INTER)), 33);
        assert_eq!(r.map(&f(FrameKind::Audio, start + 36, AAC)), 36);
        // A new sequence header mid-stream: current time, line unchanged.
        assert_eq!(r.map(&f(FrameKind::Video, 0, AVC_SEQ)), 36);
        assert_eq!(r.map(&f(FrameKind::Video, start + 66, AVC_INTER)), 66);
        assert_eq!(r.discontinuities(), 0);
    }

    #[test]
    fn wrap_is_invisible_and_jumps_are_bridged() {
        let mut r = Rebaser::default();
        let start = u32::MAX - 40;
        assert_eq!(r.map(&f(FrameKind::Video, start, AVC_KEY)), 0);
        assert_eq!(
            r.map(&f(FrameKind::Video, start.wrapping_add(33), AVC_INTER)),
            33
        );
        assert_eq!(
            r.map(&f(FrameKind::Video, start.wrapping_add(66), AVC_INTER)),
            66
        );
        // Encoder restart with a clock far away: output continues just after 66.
        assert_eq!(r.map(&f(FrameKind::Video, 500_000, AVC_KEY)), 67);
        assert_eq!(r.map(&f(FrameKind::Video, 500_033, AVC_INTER)), 100);
        assert_eq!(r.discontinuities(), 1);
    }

    #[test]
    fn each_kind_is_monotonic_and_real_gaps_stay() {
        let mut r = Rebaser::default();
        assert_eq!(r.map(&f(FrameKind::Audio, 1000, AAC)), 0);
        assert_eq!(r.map(&f(FrameKind::Audio, 1100, AAC)), 100);
        assert_eq!(r.map(&f(FrameKind::Audio, 1050, AAC)), 100, "never back");
        assert_eq!(
            r.map(&f(FrameKind::Video, 1060, AVC_KEY)),
            60,
            "other kind unaffected"
        );
        assert_eq!(
            r.map(&f(FrameKind::Video, 10_060, AVC_INTER)),
            9_060,
            "a 9 s gap is real"
        );
        assert_eq!(r.discontinuities(), 0);
    }

    #[test]
    fn the_line_does_not_wrap_but_the_wire_does() {
        let mut r = Rebaser::default();
        let mut raw = 0u32;
        assert_eq!(r.map(&f(FrameKind::Video, raw, AVC_KEY)), 0);
        // 2^32 ms in steps of 10 s (each a plausible step).
        let steps = (1u64 << 32) / 10_000 + 1;
        let mut t = 0;
        for _ in 0..steps {
            raw = raw.wrapping_add(10_000);
            t = r.map(&f(FrameKind::Video, raw, AVC_INTER));
        }
        assert_eq!(t, steps as i64 * 10_000);
        assert!(t > i64::from(u32::MAX));
        raw = raw.wrapping_add(10_000);
        assert_eq!(
            r.map_wire(&f(FrameKind::Video, raw, AVC_INTER)),
            ((t + 10_000) & 0xffff_ffff) as u32
        );
    }
}
