//! The one retry policy of pushcast, kept apart from the things that are retried: a
//! push's reconnects, a forward's reconnects and webhook deliveries all take their delays
//! from a [`Backoff`].
//!
//! In the style of linkerd2-proxy's `ExponentialBackoff`: a retry loop asks a [`Backoff`]
//! how long to sleep before its next attempt and tells it how the last attempt went
//! ([`RetryClass`], how long it ran); the backoff knows nothing about RTMP, sockets or
//! tasks, and the loop knows nothing about delays. That keeps the policy a pure, seedable struct that is unit-tested
//! on its own (no clock, no sleeping: durations in, durations out).
//!
//! The rules come from the spec ("Runtime rules"): retries never stop while the task
//! exists; the delay starts about 1 s, doubles, is jittered and is capped near 30 s; it
//! resets once a session has run cleanly for a while (10 s by default), so a destination
//! that drops us once an hour reconnects fast, while one that fails at once every time
//! backs off. OME retries every second with no backoff, which hammers a CDN that refuses
//! a key; here a refusal ([`RetryClass::Rejected`]) goes straight to the cap.
//!
//! # Jitter: "equal jitter"
//! With base `b = min(cap, initial * 2^n)`, the delay is uniform in `[b/2, b]`. Full jitter
//! (`[0, b]`) spreads load best but can draw delays near zero, i.e. immediate retries
//! against a failing destination; equal jitter keeps at least half the exponential delay
//! (never hammering) while still decorrelating the thousands of tasks that lose the same
//! destination at the same instant. [`Jitter::None`] is for tests.
//!
//! ```
//! use std::time::Duration;
//! use pushcast_retry::{Backoff, BackoffConfig};
//!
//! let mut backoff = Backoff::new(BackoffConfig::default());
//! // A session failed after 2 s: wait, then reconnect.
//! backoff.record_run(Duration::from_secs(2));
//! let delay = backoff.next_delay();
//! assert!(delay >= Duration::from_millis(500) && delay <= Duration::from_secs(1));
//! ```
#![forbid(unsafe_code)]

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How a failed attempt should be retried: the one classification of failures that every
/// retry loop uses. Every failure is retried (the spec says retries never stop while a
/// task exists); the class only chooses how soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryClass {
    /// A transient failure (connect refused, timeout, reset, protocol error): retry with
    /// the growing backoff.
    Transient,
    /// The other side refused us on purpose (bad stream key, name in use, app unknown, a
    /// codec it cannot take). Hammering it changes nothing and may get us banned, so the
    /// next delay is the cap at once.
    Rejected,
}

/// How the random part of a delay is drawn (see the module docs for why equal jitter is
/// the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[b/2, b]`.
    #[default]
    Equal,
    /// Exactly `b` (deterministic; for tests).
    None,
}

/// Parameters of a [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Base delay before the first retry.
    pub initial: Duration,
    /// Upper bound of the base delay (the delay itself never exceeds it).
    pub max: Duration,
    /// A session that ran at least this long counts as a clean run and resets the
    /// backoff.
    pub reset_after: Duration,
    pub jitter: Jitter,
}

impl BackoffConfig {
    /// `initial` doubling up to `max`, equal jitter, reset after 10 s of clean running.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        BackoffConfig {
            initial,
            max,
            reset_after: Duration::from_secs(10),
            jitter: Jitter::Equal,
        }
    }
}

/// The push reconnect policy of the spec: about 1 s doubling, capped at 30 s.
impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// Jittered exponential backoff state for one retry loop.
///
/// Usage per attempt: when an attempt ends with an error, call
/// [`record_run`](Backoff::record_run) with how long it ran cleanly (this may reset the
/// backoff), then sleep [`next_delay_for`](Backoff::next_delay_for) its class.
/// [`attempts`](Backoff::attempts) is the number of delays handed out since the last
/// reset (the task's `retries`).
#[derive(Debug, Clone)]
pub struct Backoff<R = SmallRng> {
    config: BackoffConfig,
    /// Exponent of the next base delay (saturating; the cap bounds the result anyway).
    exponent: u32,
    attempts: u64,
    rng: R,
}

impl Backoff<SmallRng> {
    /// A backoff seeded from the OS, so tasks that fail together do not retry together.
    /// Jitter needs no cryptographic generator: a small one keeps the 32-byte state
    /// (StdRng's is ~330 bytes) in every destination's session.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff::with_rng(config, SmallRng::from_os_rng())
    }
}

impl<R: Rng> Backoff<R> {
    /// A backoff with the given random source (a seeded one in tests).
    pub fn with_rng(config: BackoffConfig, rng: R) -> Self {
        Backoff {
            config,
            exponent: 0,
            attempts: 0,
            rng,
        }
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// The delay before the next attempt after a transient failure, and advances the
    /// backoff. Same as `next_delay_for(RetryClass::Transient)`.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_for(RetryClass::Transient)
    }

    /// The delay before the next attempt after a failure of the given class, and advances
    /// the backoff. A [`RetryClass::Rejected`] failure jumps to the cap and stays there
    /// until a reset.
    pub fn next_delay_for(&mut self, class: RetryClass) -> Duration {
        if class == RetryClass::Rejected {
            // Every later failure also waits the cap until a clean run resets us.
            self.exponent = u32::MAX;
        }
        let base = self.base_delay();
        self.exponent = self.exponent.saturating_add(1);
        self.attempts = self.attempts.saturating_add(1);
        self.jittered(base)
    }

    /// Tells the backoff that the last attempt ran for `ran_for` before it failed (call
    /// it before [`next_delay`](Backoff::next_delay)). A run of at least `reset_after`
    /// was clean: the next delay starts small again. Returns whether it reset.
    pub fn record_run(&mut self, ran_for: Duration) -> bool {
        if ran_for >= self.config.reset_after {
            self.reset();
            true
        } else {
            false
        }
    }

    /// Back to the initial delay (e.g. the source ended and came back).
    pub fn reset(&mut self) {
        self.exponent = 0;
        self.attempts = 0;
    }

    /// `min(max, initial * 2^exponent)`, without overflow.
    fn base_delay(&self) -> Duration {
        let max = self.config.max;
        let initial = self.config.initial.min(max);
        // 2^32 times anything non-zero is past any sane cap; checked_mul guards the rest.
        match 2u32.checked_pow(self.exponent) {
            Some(factor) => initial.checked_mul(factor).map_or(max, |d| d.min(max)),
            None => max,
        }
    }

    fn jittered(&mut self, base: Duration) -> Duration {
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        let drawn = match self.config.jitter {
            Jitter::None => nanos,
            Jitter::Equal => {
                let half = nanos / 2;
                self.rng.random_range(half..=nanos)
            }
        };
        Duration::from_nanos(drawn)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::rngs::StdRng;

    use super::*;

    fn seeded(jitter: Jitter) -> Backoff<StdRng> {
        Backoff::with_rng(
            BackoffConfig {
                jitter,
                ..BackoffConfig::default()
            },
            StdRng::seed_from_u64(7),
        )
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn grows_by_doubling_without_jitter() {
        let mut b = seeded(Jitter::None);
        let got: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(
            got,
            [secs(1), secs(2), secs(4), secs(8), secs(16), secs(30)]
        );
        assert_eq!(b.attempts(), 6);
    }

    #[test]
    fn caps_and_never_overflows() {
        let mut b = seeded(Jitter::None);
        for _ in 0..200 {
            assert!(b.next_delay() <= secs(30));
        }
        assert_eq!(b.next_delay(), secs(30));
        // A huge initial delay is clamped to the cap too.
        let mut huge = Backoff::with_rng(
            BackoffConfig {
                initial: Duration::MAX,
                jitter: Jitter::None,
                ..BackoffConfig::default()
            },
            StdRng::seed_from_u64(1),
        );
        assert_eq!(huge.next_delay(), secs(30));
        assert_eq!(huge.next_delay(), secs(30));
    }

    #[test]
    fn equal_jitter_stays_within_half_and_full_base() {
        let mut b = seeded(Jitter::Equal);
        let mut distinct = std::collections::HashSet::new();
        for base in [1u64, 2, 4, 8, 16, 30, 30, 30] {
            let d = b.next_delay();
            let base = secs(base);
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} not in [{:?}, {base:?}]",
                base / 2
            );
            distinct.insert(d);
        }
        // It is actually random: the capped draws are not all equal.
        assert!(distinct.len() > 5);
    }

    #[test]
    fn same_seed_same_delays() {
        let mut a = seeded(Jitter::Equal);
        let mut b = seeded(Jitter::Equal);
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }

    #[test]
    fn clean_run_resets_short_run_does_not() {
        let mut b = seeded(Jitter::None);
        for _ in 0..4 {
            b.next_delay();
        }
        assert!(!b.record_run(secs(9)));
        assert_eq!(b.next_delay(), secs(16));
        assert!(b.record_run(secs(10)));
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(), secs(1));
        assert_eq!(b.next_delay(), secs(2));
    }

    #[test]
    fn reset_after_is_configurable() {
        let mut b = Backoff::with_rng(
            BackoffConfig {
                reset_after: secs(60),
                jitter: Jitter::None,
                ..BackoffConfig::default()
            },
            StdRng::seed_from_u64(3),
        );
        b.next_delay();
        b.next_delay();
        assert!(!b.record_run(secs(30)));
        assert_eq!(b.next_delay(), secs(4));
        assert!(b.record_run(secs(60)));
        assert_eq!(b.next_delay(), secs(1));
    }

    #[test]
    fn rejection_goes_to_the_cap_and_stays_until_reset() {
        let mut b = seeded(Jitter::None);
        assert_eq!(b.next_delay_for(RetryClass::Rejected), secs(30));
        // Still retried (never given up), and transient errors after it stay slow.
        assert_eq!(b.next_delay(), secs(30));
        assert_eq!(b.attempts(), 2);
        b.reset();
        assert_eq!(b.next_delay(), secs(1));
        // With jitter, a rejection still waits at least half the cap.
        let mut j = seeded(Jitter::Equal);
        let d = j.next_delay_for(RetryClass::Rejected);
        assert!(d >= secs(15) && d <= secs(30));
    }
}
