//! Splicing: a stream outlives its publisher, and its publishers take turns.
//!
//! A stream in the hub is what its pushes see; an **input** is one publisher connection
//! feeding it — the **primary**, or a **backup** (`?backup=1`, the same key) kept warm
//! beside it. At most one input is **active** (fed to the subscribers); the other is the
//! **standby**: its headers are cached, nothing of it is pushed.
//!
//! - The active input ends and a standby is there: the standby takes over at once (the
//!   subscribers wait for its next keyframe).
//! - The active input sends nothing for [`Continuity::stall`] while a standby is live:
//!   the standby takes over at its next keyframe.
//! - The primary comes back while the backup is active: it takes over at its keyframe
//!   when [`Continuity::switch_back`] (else it stays the standby).
//! - The last input ends: with a [`Continuity::reconnect_window`], the stream stays in
//!   the hub, **interrupted**, its subscribers waiting; a publisher of the same stream
//!   within the window becomes its input again. When the window passes, the stream ends
//!   as it always did. Without a window it ends at once (the behaviour before).
//!
//! Every input that takes over is **spliced** onto the stream's timeline: its timestamps
//! are moved ([`Timeline::offset_for`]) to continue after the last frame that went out,
//! by the wall-clock time in between, so a destination sees one monotonic stream with a
//! gap. Subscribers skip to the new input's first keyframe and get only the sequence
//! headers that differ from the ones they had (the hub's resume rule). An input whose
//! codec differs from what the stream carried cannot be spliced: the stream's
//! subscriptions end, and its pushes start again on the new codec (a republish at the
//! destination, logged).
//!
//! This module is the pure part: which input feeds the stream and the timestamp offset.
//! The hub (`mod.rs`) applies it under the stream's lock.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::gop::GopCache;

/// Which publisher of a stream an input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    /// Published with `?backup=1`: admitted only beside a live primary.
    Backup,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }
}

/// How a stream continues across its inputs: its app's settings, taken at each primary
/// publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuity {
    /// How long the stream outlives its last input, waiting for it to come back. Zero:
    /// it ends with its publisher.
    pub reconnect_window: Duration,
    /// An active input silent for this long, with a standby live, is switched away from.
    pub stall: Duration,
    /// A returning primary takes over from the backup at its keyframe (else it waits
    /// as the standby until the backup ends or stalls).
    pub switch_back: bool,
}

impl Default for Continuity {
    fn default() -> Self {
        Continuity {
            reconnect_window: Duration::ZERO,
            stall: Duration::from_secs(2),
            switch_back: true,
        }
    }
}

/// What a stream's subscribers can see of its inputs (a watch: tasks report changes as
/// events).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpliceStatus {
    /// The input that feeds the stream; `None` while it is interrupted.
    pub active: Option<Role>,
    /// Inputs connected (the active one and a standby).
    pub inputs: usize,
    /// Since when the stream has had no input (interrupted), if it has none.
    pub interrupted_at: Option<SystemTime>,
    /// Times the stream lost its last input, came back within the window, and changed
    /// inputs.
    pub interruptions: u64,
    pub resumes: u64,
    pub switches: u64,
    /// When the last resume or switch happened.
    pub changed_at: Option<SystemTime>,
    /// The app's reconnect window (tasks may ask for their own).
    pub app_window: Duration,
}

/// Why a publisher cannot become an input of a live stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("the stream has a primary publisher already")]
    PrimaryTaken,
    #[error("a backup publisher is admitted only while the stream's primary is live")]
    NoPrimary,
    #[error("the stream has a backup publisher already")]
    BackupTaken,
}

/// One publisher of the stream.
#[derive(Debug)]
pub(crate) struct Input {
    pub id: u64,
    pub role: Role,
    /// When its last frame arrived (stall detection).
    pub last_frame: Instant,
    /// Its headers and GOP while it is the standby.
    pub warm: GopCache,
    /// Added to its timestamps once it feeds the stream; `None` until its first frame
    /// as the active input (that frame splices it in).
    pub offset: Option<u32>,
}

/// Where the stream's output stands: the largest presentation time sent (decode time
/// plus composition offset) and when.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timeline {
    last: Option<(u32, Instant)>,
}

impl Timeline {
    /// Whether any frame went out yet.
    pub fn started(&self) -> bool {
        self.last.is_some()
    }

    /// Records a frame that went out, by its presentation time.
    pub fn sent(&mut self, ts: u32, now: Instant) {
        let later = match self.last {
            None => true,
            // Wrapping comparison: later when less than half the range ahead.
            Some((last, _)) => ts.wrapping_sub(last) < 1 << 31,
        };
        if later {
            self.last = Some((ts, now));
        } else if let Some((_, at)) = &mut self.last {
            *at = now;
        }
    }

    /// The offset that puts an input's frame at `first` right after the stream's last
    /// frame, by the wall time since it (at least 1 ms): 0 for the stream's first input,
    /// whose timestamps pass unchanged.
    pub fn offset_for(&self, first: u32, now: Instant) -> u32 {
        match self.last {
            None => 0,
            Some((last, at)) => {
                let gap = now.saturating_duration_since(at).as_millis();
                let gap = u32::try_from(gap)
                    .unwrap_or(u32::MAX >> 2)
                    .clamp(1, u32::MAX >> 2);
                last.wrapping_add(gap).wrapping_sub(first)
            }
        }
    }
}

/// What to do with a frame of input `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The active input: to the subscribers (spliced first when it just took over).
    Feed,
    /// A standby: into its own cache only.
    Warm,
    /// A standby that takes over with this frame (a sync point).
    TakeOver,
}

/// The inputs of one stream.
#[derive(Debug)]
pub(crate) struct Inputs {
    pub continuity: Continuity,
    pub list: Vec<Input>,
    pub active: Option<u64>,
    next_id: u64,
    pub timeline: Timeline,
    /// The active input has not reached its first sync point since it was spliced in.
    pub splicing: bool,
    /// Bumped at each interruption, so a window timer only ends the interruption it
    /// was started for.
    pub interruption: u64,
}

impl Inputs {
    pub fn new(continuity: Continuity) -> Inputs {
        Inputs {
            continuity,
            list: Vec::new(),
            active: None,
            next_id: 0,
            timeline: Timeline::default(),
            splicing: false,
            interruption: 0,
        }
    }

    fn has(&self, role: Role) -> bool {
        self.list.iter().any(|i| i.role == role)
    }

    /// Admits a publisher as an input: a primary when the stream has none (it becomes
    /// active when nothing is, else the standby), a backup beside a live primary.
    pub fn attach(&mut self, role: Role, warm: GopCache, now: Instant) -> Result<u64, AttachError> {
        match role {
            Role::Primary if self.has(Role::Primary) => return Err(AttachError::PrimaryTaken),
            Role::Backup if !self.has(Role::Primary) => return Err(AttachError::NoPrimary),
            Role::Backup if self.has(Role::Backup) => return Err(AttachError::BackupTaken),
            _ => {}
        }
        let id = self.next_id;
        self.next_id += 1;
        self.list.push(Input {
            id,
            role,
            last_frame: now,
            warm,
            offset: None,
        });
        if self.active.is_none() {
            self.active = Some(id);
        }
        Ok(id)
    }

    pub fn input_mut(&mut self, id: u64) -> Option<&mut Input> {
        self.list.iter_mut().find(|i| i.id == id)
    }

    pub fn active_role(&self) -> Option<Role> {
        let id = self.active?;
        self.list.iter().find(|i| i.id == id).map(|i| i.role)
    }

    /// Routes a frame of input `id`; `sync_point`: the frame starts a decodable run of
    /// that input (its video keyframe, or audio in an audio-only input).
    pub fn route(&self, id: u64, sync_point: bool, now: Instant) -> Route {
        if self.active == Some(id) {
            return Route::Feed;
        }
        let Some(me) = self.list.iter().find(|i| i.id == id) else {
            return Route::Warm;
        };
        if !sync_point {
            return Route::Warm;
        }
        let active = self
            .active
            .and_then(|a| self.list.iter().find(|i| i.id == a));
        match active {
            None => Route::TakeOver,
            Some(a) if now.saturating_duration_since(a.last_frame) >= self.continuity.stall => {
                Route::TakeOver
            }
            Some(a)
                if me.role == Role::Primary
                    && a.role == Role::Backup
                    && self.continuity.switch_back =>
            {
                Route::TakeOver
            }
            Some(_) => Route::Warm,
        }
    }

    /// Input `id` is gone. Returns what the stream does now: without another input it
    /// waits `window` (its app's, or longer when a task asked) or ends.
    pub fn detach(&mut self, id: u64, window: Duration) -> Detached {
        let Some(pos) = self.list.iter().position(|i| i.id == id) else {
            return Detached::Standby;
        };
        self.list.remove(pos);
        if self.active != Some(id) {
            return Detached::Standby;
        }
        match self.list.first_mut() {
            Some(next) => {
                next.offset = None;
                self.active = Some(next.id);
                Detached::Switched(next.role)
            }
            None => {
                self.active = None;
                if window.is_zero() {
                    Detached::Ended
                } else {
                    self.interruption += 1;
                    Detached::Interrupted(self.interruption)
                }
            }
        }
    }
}

/// What the loss of an input does to its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detached {
    /// It was the standby: nothing changes for the subscribers.
    Standby,
    /// The standby (of this role) is active now.
    Switched(Role),
    /// No input is left: the stream waits for the window (interruption number).
    Interrupted(u64),
    /// No input is left and there is no window: the stream ends.
    Ended,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::GopLimits;

    fn inputs(window_ms: u64) -> Inputs {
        Inputs::new(Continuity {
            reconnect_window: Duration::from_millis(window_ms),
            ..Continuity::default()
        })
    }

    fn warm() -> GopCache {
        GopCache::new(GopLimits::default())
    }

    #[test]
    fn the_first_input_keeps_its_timestamps_and_the_next_continues_after_the_gap() {
        let t0 = Instant::now();
        let mut line = Timeline::default();
        assert_eq!(line.offset_for(5000, t0), 0, "the first input is not moved");
        line.sent(9000, t0);
        line.sent(8990, t0); // audio a little behind: the largest stays
        let later = t0 + Duration::from_millis(2500);
        let offset = line.offset_for(0, later);
        assert_eq!(
            0u32.wrapping_add(offset),
            11_500,
            "after the last frame by the gap"
        );
        // An input that starts at a large timestamp is moved back onto the line.
        assert_eq!(
            70_000u32.wrapping_add(line.offset_for(70_000, later)),
            11_500
        );
        // No time passed: still strictly after.
        assert_eq!(0u32.wrapping_add(line.offset_for(0, t0)), 9001);
    }

    #[test]
    fn timestamps_wrap_without_going_back() {
        let t0 = Instant::now();
        let mut line = Timeline::default();
        line.sent(u32::MAX - 10, t0);
        line.sent(5, t0); // wrapped: later
        let offset = line.offset_for(0, t0 + Duration::from_millis(100));
        assert_eq!(offset, 105);
    }

    #[test]
    fn who_may_attach() {
        let now = Instant::now();
        let mut i = inputs(0);
        assert_eq!(
            i.attach(Role::Backup, warm(), now),
            Err(AttachError::NoPrimary)
        );
        let p = i.attach(Role::Primary, warm(), now).unwrap_or(99);
        assert_eq!(i.active, Some(p));
        assert_eq!(
            i.attach(Role::Primary, warm(), now),
            Err(AttachError::PrimaryTaken)
        );
        let b = i.attach(Role::Backup, warm(), now).unwrap_or(99);
        assert_eq!(
            i.attach(Role::Backup, warm(), now),
            Err(AttachError::BackupTaken)
        );
        assert_eq!(i.active, Some(p), "the backup waits");
        assert_ne!(p, b);
    }

    #[test]
    fn a_standby_takes_over_at_its_keyframe_when_the_active_input_stalls() {
        let now = Instant::now();
        let mut i = inputs(0);
        let p = i.attach(Role::Primary, warm(), now).unwrap_or(99);
        let b = i.attach(Role::Backup, warm(), now).unwrap_or(99);
        assert_eq!(i.route(p, false, now), Route::Feed);
        assert_eq!(i.route(b, true, now), Route::Warm, "the primary is live");
        let stalled = now + Duration::from_secs(2);
        assert_eq!(i.route(b, false, stalled), Route::Warm, "not at a keyframe");
        assert_eq!(i.route(b, true, stalled), Route::TakeOver);
    }

    #[test]
    fn a_returning_primary_takes_over_at_its_keyframe_or_waits_when_told_to() {
        let now = Instant::now();
        for switch_back in [true, false] {
            let mut i = inputs(0);
            i.continuity.switch_back = switch_back;
            let p = i.attach(Role::Primary, warm(), now).unwrap_or(99);
            let _b = i.attach(Role::Backup, warm(), now).unwrap_or(99);
            assert_eq!(
                i.detach(p, i.continuity.reconnect_window),
                Detached::Switched(Role::Backup)
            );
            assert_eq!(i.active_role(), Some(Role::Backup));
            let p2 = i.attach(Role::Primary, warm(), now).unwrap_or(99);
            assert_eq!(i.route(p2, false, now), Route::Warm);
            let expected = if switch_back {
                Route::TakeOver
            } else {
                Route::Warm
            };
            assert_eq!(
                i.route(p2, true, now),
                expected,
                "switch_back {switch_back}"
            );
        }
    }

    #[test]
    fn the_last_input_ends_the_stream_or_interrupts_it_for_the_window() {
        let now = Instant::now();
        let mut i = inputs(0);
        let p = i.attach(Role::Primary, warm(), now).unwrap_or(99);
        assert_eq!(i.detach(p, i.continuity.reconnect_window), Detached::Ended);
        let mut i = inputs(10_000);
        let p = i.attach(Role::Primary, warm(), now).unwrap_or(99);
        let b = i.attach(Role::Backup, warm(), now).unwrap_or(99);
        assert_eq!(
            i.detach(b, i.continuity.reconnect_window),
            Detached::Standby
        );
        assert_eq!(
            i.detach(p, i.continuity.reconnect_window),
            Detached::Interrupted(1)
        );
        assert_eq!(i.active, None);
        let again = i.attach(Role::Primary, warm(), now).unwrap_or(99);
        assert_eq!(
            i.active,
            Some(again),
            "back within the window: active at once"
        );
        assert_eq!(
            i.detach(again, i.continuity.reconnect_window),
            Detached::Interrupted(2)
        );
    }
}
