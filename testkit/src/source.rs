//! A source over a `Vec<Frame>` that delivers frames in real time by their timestamps
//! (optionally faster), like a hub subscription fed by a live encoder. Its two methods
//! are those of the worker's `FrameSource`, which the worker's tests implement with them.

use std::time::Duration;

use pushcast_media::{Frame, FrameKind};
use tokio::time::Instant;

pub struct PacedSource {
    frames: Vec<Frame>,
    next: usize,
    /// 1.0 = real time, 10.0 = ten times faster, `f64::INFINITY` = no pacing.
    speed: f64,
    start: Option<(Instant, u32)>,
}

impl PacedSource {
    pub fn new(frames: Vec<Frame>, speed: f64) -> PacedSource {
        PacedSource {
            frames,
            next: 0,
            speed,
            start: None,
        }
    }

    /// Frames handed out so far.
    pub fn delivered(&self) -> usize {
        self.next
    }

    /// When frame `i` is due, anchoring the clock on the first call.
    fn due(&mut self, i: usize) -> Option<Instant> {
        let ts = self.frames.get(i)?.timestamp_ms;
        let (t0, ts0) = *self.start.get_or_insert_with(|| (Instant::now(), ts));
        if !self.speed.is_finite() {
            return Some(t0);
        }
        let offset = f64::from(ts.wrapping_sub(ts0)) / 1000.0 / self.speed;
        Some(t0 + Duration::from_secs_f64(offset.max(0.0)))
    }
}

impl PacedSource {
    /// The next frame, when it is due; `None` at the end. Cancel-safe: the frame is only
    /// consumed after the sleep completed.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        let due = self.due(self.next)?;
        tokio::time::sleep_until(due).await;
        let f = self.frames.get(self.next).cloned();
        self.next += 1;
        f
    }

    /// A frame that is due now: `Some(Some(frame))`, `Some(None)` at the end, `None` if
    /// the next one is not due yet.
    pub fn try_next_frame(&mut self) -> Option<Option<Frame>> {
        let Some(due) = self.due(self.next) else {
            return Some(None);
        };
        if due > Instant::now() {
            return None;
        }
        let f = self.frames.get(self.next).cloned();
        self.next += 1;
        Some(f)
    }
}

/// `frames` repeated `times` times on one continuous timeline (each repeat shifted by
/// the duration plus one frame interval); the sequence headers and metadata only once,
/// at the start. For tests that need more data than the test clip holds.
pub fn repeat_frames(frames: &[Frame], times: usize) -> Vec<Frame> {
    let is_config = |f: &Frame| f.kind == FrameKind::Data || f.is_sequence_header();
    let first = frames
        .iter()
        .find(|f| !is_config(f))
        .map_or(0, |f| f.timestamp_ms);
    let last = frames.iter().map(|f| f.timestamp_ms).max().unwrap_or(0);
    let period = last.wrapping_sub(first) + 34;
    let mut out: Vec<Frame> = frames.iter().filter(|f| is_config(f)).cloned().collect();
    for k in 0..times as u32 {
        for f in frames
            .iter()
            .filter(|f| !is_config(f) && f.payload.get(1) != Some(&2))
        {
            out.push(Frame {
                timestamp_ms: f.timestamp_ms.wrapping_add(k * period),
                ..f.clone()
            });
        }
    }
    out
}

/// The frames with every timestamp moved by `offset` ms (wrapping), as when a session
/// joins a stream that has been live for a while.
pub fn shifted(frames: &[Frame], offset: u32) -> Vec<Frame> {
    frames
        .iter()
        .map(|f| Frame {
            timestamp_ms: f.timestamp_ms.wrapping_add(offset),
            ..f.clone()
        })
        .collect()
}
