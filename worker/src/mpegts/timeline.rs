//! The session timeline: RTMP's 32-bit millisecond timestamps (which wrap after 49.7
//! days and may start anywhere) become milliseconds since the session's first frame, on
//! a 64-bit line that never wraps. The 33-bit wrap of MPEG-TS happens only when a value
//! is written to a packet ([`wrap33`]), so all comparisons (PCR due, PSI due, pacing)
//! are done on plain monotonic integers.

/// MPEG-TS PTS/DTS/PCR-base modulus: 33 bits of 90 kHz ticks (~26.5 hours).
pub(crate) const WRAP_33: u64 = 1 << 33;

/// A forward step larger than this between consecutive frames is taken as a timestamp
/// discontinuity (encoder restart, broken clock) rather than a real gap.
pub(crate) const MAX_FORWARD_STEP_MS: i64 = 10_000;
/// A backward step larger than this is a discontinuity; smaller ones are normal audio /
/// video interleaving skew.
pub(crate) const MAX_BACKWARD_STEP_MS: i64 = 5_000;

/// Reduces a 90 kHz tick count to the 33 bits a PTS/DTS/PCR base holds.
pub(crate) fn wrap33(ticks: u64) -> u64 {
    ticks & (WRAP_33 - 1)
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    last_raw: Option<u32>,
    last_ms: i64,
    max_ms: i64,
    discontinuities: u64,
}

impl Timeline {
    /// Maps a raw 32-bit ms timestamp to ms since the first mapped frame (which is 0).
    /// Steps are measured modulo 2^32, so the input wrapping is invisible; a step outside
    /// the plausible window continues the line just after the latest time seen, so the
    /// output stays monotonic for a well-behaved track even if the input jumps.
    pub(crate) fn map(&mut self, raw: u32) -> i64 {
        let Some(last_raw) = self.last_raw else {
            self.last_raw = Some(raw);
            return 0;
        };
        // Reinterpreting the wrapped difference as signed gives the shortest step.
        let step = i64::from(raw.wrapping_sub(last_raw) as i32);
        let ms = if (-MAX_BACKWARD_STEP_MS..=MAX_FORWARD_STEP_MS).contains(&step) {
            self.last_ms.saturating_add(step)
        } else {
            self.discontinuities = self.discontinuities.saturating_add(1);
            self.max_ms.saturating_add(1)
        };
        self.last_raw = Some(raw);
        self.last_ms = ms;
        self.max_ms = self.max_ms.max(ms);
        ms
    }

    /// How many input jumps were bridged.
    pub(crate) fn discontinuities(&self) -> u64 {
        self.discontinuities
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_zero_and_follows_steps() {
        let mut t = Timeline::default();
        assert_eq!(t.map(123_456), 0);
        assert_eq!(t.map(123_489), 33);
        assert_eq!(t.map(123_470), 14, "small backward skew is kept");
        assert_eq!(t.map(123_522), 66);
        assert_eq!(t.discontinuities(), 0);
    }

    #[test]
    fn input_wrap_is_invisible() {
        let mut t = Timeline::default();
        let start = u32::MAX - 50;
        let mut last = t.map(start);
        for i in 1..10u32 {
            let ms = t.map(start.wrapping_add(i * 20));
            assert_eq!(ms, i64::from(i) * 20);
            assert!(ms > last);
            last = ms;
        }
    }

    #[test]
    fn jumps_are_bridged_monotonically() {
        let mut t = Timeline::default();
        t.map(100_000);
        t.map(100_040);
        assert_eq!(t.map(5), 41, "jump back to ~0 continues after the max");
        assert_eq!(t.map(45), 81);
        assert_eq!(
            t.map(3_000_000),
            82,
            "jump forward by an hour is bridged too"
        );
        assert_eq!(t.discontinuities(), 2);
        assert_eq!(t.map(3_009_000), 9_082, "a 9 s gap is real");
        assert_eq!(
            t.map(3_005_000),
            5_082,
            "a 4 s step back is interleaving skew"
        );
    }

    #[test]
    fn wrap33_masks() {
        assert_eq!(wrap33(WRAP_33 + 5), 5);
        assert_eq!(wrap33(WRAP_33 - 1), WRAP_33 - 1);
    }
}
