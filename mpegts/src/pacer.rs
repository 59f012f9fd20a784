//! Real-time pacing of muxed TS for datagram transports (UDP, and SRT's live mode).
//!
//! A receiver of MPEG-TS over UDP reconstructs the encoder's clock from the PCRs and
//! expects each byte to arrive at about the time its PCR timeline says. A sender that
//! writes frames as fast as they come sends each keyframe as a burst of hundreds of
//! datagrams, which overflows receive buffers and drops packets on the way. [`TsPacer`]
//! tells the sender when each 1316-byte datagram is due instead.
//!
//! Model: every call to [`TsPacer::muxed`] records a *segment*: `len` bytes that the
//! muxer wrote at mux clock `clock` (its PCR timeline, [`super::TsMuxer::clock_90k`]).
//! A segment's bytes are spread evenly from its clock to the next segment's clock (at
//! most `max_spread` apart), so a frame goes out until the next frame (audio or video)
//! is due rather than at once, and the first byte of each segment (where the muxer puts
//! the PCR) goes out at exactly its clock. With interleaved audio that is a few
//! milliseconds for a keyframe: it halves the burst (measured in
//! `worker/tests/push/mpegts.rs`), it does not spread it over a whole frame interval. Clock values map to wall time from an anchor set by the first
//! datagram. The pacer holds no bytes: the caller keeps its own buffer and sends the
//! next `len` bytes from it whenever [`TsPacer::poll`] says [`Pace::Send`].
//!
//! ```
//! use std::time::Instant;
//! use pushcast_mpegts::{Pace, PacerConfig, TsPacer};
//!
//! let mut pacer = TsPacer::new(PacerConfig::default());
//! let t0 = Instant::now();
//! pacer.muxed(0, 1316 * 2); // frame 1 at clock 0
//! pacer.muxed(3000, 1316); // frame 2, 1/30 s later
//! assert_eq!(pacer.poll(t0), Pace::Send(1316)); // first datagram anchors the clock
//! // The second datagram is the middle of frame 1: due 1/60 s after the anchor.
//! assert!(matches!(pacer.poll(t0), Pace::Wait(d) if d.as_millis() == 16));
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::DATAGRAM_SIZE;

/// Tuning of [`TsPacer`]; the defaults suit live streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacerConfig {
    /// Longest time one segment's bytes are spread over. Bounds how late the tail of a
    /// frame can go out when the next frame's clock is far away (a low frame rate, a
    /// pause), so frames still reach the receiver well before their DTS.
    pub max_spread: Duration,
    /// A datagram more than this late (the source stalled, the sender could not keep
    /// up) re-anchors the clock instead of being followed by a catch-up burst.
    pub max_lag: Duration,
    /// A datagram due more than this far ahead means the clock jumped: re-anchor rather
    /// than stall the output.
    pub max_lead: Duration,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            max_spread: Duration::from_millis(100),
            max_lag: Duration::from_secs(1),
            max_lead: Duration::from_secs(2),
        }
    }
}

/// What the sender should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Send the next `n` bytes of the buffer now (`n` is [`DATAGRAM_SIZE`], or less only
    /// for the tail after [`TsPacer::finish`]).
    Send(usize),
    /// The next datagram is due in this long: sleep (or until more data comes), then poll.
    Wait(Duration),
    /// Nothing can be timed yet: no full datagram, or its segment's end clock is not
    /// known until the muxer produces the next frame.
    Idle,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    clock: u64,
    len: u64,
}

/// Decides when each datagram of a muxed TS stream is due. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct TsPacer {
    config: PacerConfig,
    segments: VecDeque<Segment>,
    /// Bytes of the front segment already released.
    front_sent: u64,
    /// Bytes recorded but not released.
    pending: u64,
    finished: bool,
    /// (clock, wall time) pair that maps the mux clock to wall time.
    anchor: Option<(u64, Instant)>,
    resyncs: u64,
}

/// 90 kHz ticks as a duration (saturating: a tick count that big is a clock jump anyway).
fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(100_000) / 9)
}

fn duration_to_ticks(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().saturating_mul(9) / 100_000).unwrap_or(u64::MAX)
}

impl TsPacer {
    pub fn new(config: PacerConfig) -> Self {
        TsPacer {
            config,
            segments: VecDeque::new(),
            front_sent: 0,
            pending: 0,
            finished: false,
            anchor: None,
            resyncs: 0,
        }
    }

    /// Records that the muxer appended `len` bytes at mux clock `clock_90k`. Segments
    /// with the same clock merge; a clock lower than the previous one is treated as equal
    /// (the muxer's clock never goes back, but the pacer must not trust that).
    pub fn muxed(&mut self, clock_90k: u64, len: usize) {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        if len == 0 {
            return;
        }
        self.pending = self.pending.saturating_add(len);
        match self.segments.back_mut() {
            Some(last) if clock_90k <= last.clock => last.len = last.len.saturating_add(len),
            _ => self.segments.push_back(Segment {
                clock: clock_90k,
                len,
            }),
        }
    }

    /// The stream ended: the bytes still pending become sendable, including a final
    /// short datagram, without waiting for a next segment.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Bytes recorded by [`muxed`](Self::muxed) and not yet released by `Send`.
    pub fn pending(&self) -> usize {
        usize::try_from(self.pending).unwrap_or(usize::MAX)
    }

    /// How often the clock was re-anchored (lag or jump): a health counter.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// The mux clock of the next datagram's first byte, if it can be known yet.
    fn next_clock(&self) -> Option<u64> {
        let front = self.segments.front()?;
        if self.front_sent == 0 {
            return Some(front.clock);
        }
        let spread = match self.segments.get(1) {
            Some(next) => next.clock.saturating_sub(front.clock),
            None if self.finished => 0,
            None => return None,
        }
        .min(duration_to_ticks(self.config.max_spread));
        // front_sent < front.len, so the offset is < spread.
        let offset = u128::from(self.front_sent) * u128::from(spread) / u128::from(front.len);
        Some(
            front
                .clock
                .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX)),
        )
    }

    /// Releases `n` bytes from the front of the timeline.
    fn release(&mut self, mut n: u64) {
        self.pending = self.pending.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.segments.front() else {
                break;
            };
            let left = front.len - self.front_sent;
            if n < left {
                self.front_sent += n;
                break;
            }
            n -= left;
            self.front_sent = 0;
            self.segments.pop_front();
        }
    }

    /// What to do about the next datagram at wall time `now`.
    pub fn poll(&mut self, now: Instant) -> Pace {
        let size = DATAGRAM_SIZE as u64;
        let n = self.pending.min(size);
        if n == 0 || (n < size && !self.finished) {
            return Pace::Idle;
        }
        let Some(clock) = self.next_clock() else {
            return Pace::Idle;
        };
        let send = |pacer: &mut Self| {
            pacer.release(n);
            Pace::Send(usize::try_from(n).unwrap_or(DATAGRAM_SIZE))
        };
        let Some((anchor_clock, anchor_wall)) = self.anchor else {
            self.anchor = Some((clock, now));
            return send(self);
        };
        let due = anchor_wall.checked_add(ticks_to_duration(clock.saturating_sub(anchor_clock)));
        match due {
            Some(due) if due <= now => {
                if now.duration_since(due) > self.config.max_lag {
                    self.resync(clock, now);
                }
                send(self)
            }
            Some(due) if due.duration_since(now) <= self.config.max_lead => {
                Pace::Wait(due.duration_since(now))
            }
            _ => {
                self.resync(clock, now);
                send(self)
            }
        }
    }

    fn resync(&mut self, clock: u64, now: Instant) {
        self.anchor = Some((clock, now));
        self.resyncs = self.resyncs.saturating_add(1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const D: usize = DATAGRAM_SIZE;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Runs the pacer like a sender would, in virtual time, and returns the send time
    /// offset (from t0) of each datagram with its size.
    fn drain(pacer: &mut TsPacer, t0: Instant, now: &mut Duration) -> Vec<(Duration, usize)> {
        let mut sent = Vec::new();
        loop {
            match pacer.poll(t0 + *now) {
                Pace::Send(n) => sent.push((*now, n)),
                Pace::Wait(d) => *now += d,
                Pace::Idle => return sent,
            }
        }
    }

    #[test]
    fn spreads_a_frame_over_its_interval_and_keeps_real_time() {
        let t0 = Instant::now();
        let mut now = Duration::ZERO;
        let mut p = TsPacer::new(PacerConfig::default());
        // 30 fps, each frame 10 datagrams; every frame clock is 3000 ticks apart.
        let mut times = Vec::new();
        for f in 0..30u64 {
            p.muxed(f * 3000, 10 * D);
            times.extend(drain(&mut p, t0, &mut now));
        }
        p.finish();
        times.extend(drain(&mut p, t0, &mut now));
        assert_eq!(times.len(), 300);
        assert!(times.iter().all(|&(_, n)| n == D));
        for (i, &(t, _)) in times.iter().enumerate() {
            // Datagram i is frame i/10, tenth (i%10): due at (i/10 + (i%10)/10) / 30 s.
            let want = Duration::from_nanos(i as u64 * 1_000_000_000 / 300);
            let diff = t.abs_diff(want);
            // The last frame has no next clock: after finish() it goes out at once.
            if i < 290 {
                assert!(
                    diff < Duration::from_micros(10),
                    "datagram {i}: {t:?} vs {want:?}"
                );
            }
        }
        assert_eq!(p.pending(), 0);
        assert_eq!(p.resyncs(), 0);
    }

    #[test]
    fn waits_for_the_next_segment_before_timing_a_mid_segment_datagram() {
        let t0 = Instant::now();
        let mut p = TsPacer::new(PacerConfig::default());
        p.muxed(0, 2 * D + 100);
        assert_eq!(
            p.poll(t0),
            Pace::Send(D),
            "segment start is timed by its own clock"
        );
        assert_eq!(p.poll(t0), Pace::Idle, "middle needs the next clock");
        p.muxed(9000, D);
        // Offset D of 2D+100 bytes spread over 100 ms (the spread cap).
        match p.poll(t0) {
            Pace::Wait(d) => {
                let want = ms(100) * D as u32 / (2 * D as u32 + 100);
                assert!(
                    d.abs_diff(want) < Duration::from_micros(20),
                    "{d:?} vs {want:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_datagram_only_after_finish() {
        let t0 = Instant::now();
        let mut p = TsPacer::new(PacerConfig::default());
        p.muxed(0, 188 * 3);
        assert_eq!(p.poll(t0), Pace::Idle);
        p.finish();
        assert_eq!(p.poll(t0), Pace::Send(188 * 3));
        assert_eq!(p.poll(t0), Pace::Idle);
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn spread_is_capped_on_long_gaps() {
        let t0 = Instant::now();
        let mut p = TsPacer::new(PacerConfig::default());
        p.muxed(0, 2 * D);
        p.muxed(90_000, D); // next frame a whole second later
        assert_eq!(p.poll(t0), Pace::Send(D));
        // Second half of the frame: 50 ms (half of the 100 ms cap), not 500 ms.
        assert_eq!(p.poll(t0), Pace::Wait(ms(50)));
        assert_eq!(p.poll(t0 + ms(50)), Pace::Send(D));
        assert_eq!(p.poll(t0 + ms(50)), Pace::Wait(ms(950)));
    }

    #[test]
    fn late_sender_catches_up_then_resyncs_when_too_late() {
        let t0 = Instant::now();
        let mut p = TsPacer::new(PacerConfig::default());
        p.muxed(0, D);
        p.muxed(9000, D); // 100 ms
        p.muxed(18_000, D); // 200 ms
        p.muxed(27_000, D);
        assert_eq!(p.poll(t0), Pace::Send(D));
        // 300 ms late for the second: catch up without resync.
        assert_eq!(p.poll(t0 + ms(400)), Pace::Send(D));
        assert_eq!(p.resyncs(), 0);
        // 2 s late for the third: re-anchor there, so the fourth is 100 ms later.
        let late = t0 + ms(2200);
        assert_eq!(p.poll(late), Pace::Send(D));
        assert_eq!(p.resyncs(), 1);
        p.finish();
        assert_eq!(p.poll(late), Pace::Wait(ms(100)));
    }

    #[test]
    fn clock_jump_forward_resyncs_instead_of_stalling() {
        let t0 = Instant::now();
        let mut p = TsPacer::new(PacerConfig::default());
        p.muxed(0, D);
        p.muxed(90_000 * 60, D); // one minute ahead
        p.finish();
        assert_eq!(p.poll(t0), Pace::Send(D));
        assert_eq!(p.poll(t0 + ms(10)), Pace::Send(D));
        assert_eq!(p.resyncs(), 1);
    }

    #[test]
    fn backward_clock_merges_and_never_panics() {
        let t0 = Instant::now();
        let mut p = TsPacer::new(PacerConfig::default());
        p.muxed(u64::MAX - 5, D);
        p.muxed(3, D);
        p.muxed(u64::MAX, 2 * D);
        p.finish();
        let mut now = Duration::ZERO;
        let sent = drain(&mut p, t0, &mut now);
        assert_eq!(sent.iter().map(|s| s.1).sum::<usize>(), 4 * D);
    }
}
