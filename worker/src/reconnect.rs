//! The one reconnect loop: a destination kept pushing for as long as its source is live.
//! The destinations of tasks (see `runner`) and the forwards to other workers (see
//! `forward`) both run in it.
//!
//! An attempt ([`push::run_attempt`]) connects and sends until the source ends, the loop
//! is cancelled, or the destination fails. After a failure the loop reports it, waits as
//! long as the retry policy says (following the stream meanwhile, so that its end is
//! noticed) and attempts again, from the GOP cache: the destination starts again on a
//! keyframe. The loop ends when the source ends or its cancellation token fires
//! (stopPush, a removed destination, fencing, shutdown); who cancels decides what that
//! means.

use std::sync::Arc;
use std::time::Instant;

use pushcast_proto::destination::Destination;
use pushcast_proto::model::StreamSelector;
use pushcast_retry::{Backoff, BackoffConfig};
use pushcast_runtime::CancellationToken;

use crate::hub::{Hub, QueueLimits, StreamId, Subscription};
use crate::lease::Fence;
use crate::live::TaskLive;
use crate::push::{self, PushConfig, SessionCounters, SessionEnd, SessionEvent};
use crate::tracks::{self, TrackSelection};

/// What every reconnect loop of a kind shares (one per worker for task destinations, one
/// for forwards).
pub struct Settings {
    pub hub: Hub,
    pub push: PushConfig,
    pub queue: QueueLimits,
    pub backoff: BackoffConfig,
    /// Checked before every connection: a fenced worker opens none (see `lease`), even
    /// when a loop's retry comes before its runner has seen the fence go up.
    pub fence: Fence,
    /// A push whose bytes do not move for this long while its source is live is stalled
    /// (`--stall-timeout-ms`; zero: never). The watchdog is `live::LiveTasks::sample`.
    pub stall_after: std::time::Duration,
}

/// Which tracks a loop sends.
pub enum Tracks {
    /// What the task's selection keeps of the source (`tracks::select`).
    Select(StreamSelector),
    /// Everything: a forward carries the whole stream.
    All,
}

/// Where a loop reports its attempts.
pub enum Report {
    /// The destination of a task: its live state (which writes the task's status).
    Task {
        live: Arc<TaskLive>,
        /// [`Destination::address`].
        address: String,
    },
    /// A forward: logs only.
    Forward,
}

impl Report {
    fn started(&self) {
        if let Report::Task { live, address } = self {
            live.started(address);
        }
    }

    fn codecs(&self, codecs: Vec<String>) {
        if let Report::Task { live, address } = self {
            live.codecs(address, codecs);
        }
    }

    fn stalled(&self) {
        if let Report::Task { live, address } = self {
            live.stalled(address);
        }
    }

    fn failed(&self, error: &str) {
        if let Report::Task { live, address } = self {
            live.failed(address, error);
        }
    }
}

/// One destination's reconnect loop. It comes in a box: an async fn keeps its arguments
/// twice (as captured and as moved-in locals), and this future lives, per destination,
/// for as long as the push does.
pub struct Loop {
    pub settings: Arc<Settings>,
    pub stream: StreamId,
    pub dest: Arc<Destination>,
    pub tracks: Tracks,
    pub report: Report,
    pub counters: Arc<SessionCounters>,
    pub cancel: CancellationToken,
}

impl Loop {
    /// Pushes until the source ends ([`SessionEnd::SourceEnded`]) or the loop is
    /// cancelled ([`SessionEnd::Cancelled`]). `first` is the subscription to start with
    /// (a new one is taken for each further attempt).
    pub async fn run(self: Box<Self>, first: Option<Subscription>) -> SessionEnd {
        let this = &*self;
        let settings = &*this.settings;
        let mut backoff = Backoff::new(settings.backoff);
        let mut next = first;
        loop {
            let Some(mut source) = next
                .take()
                .or_else(|| settings.hub.subscribe(&this.stream, settings.queue))
            else {
                return SessionEnd::SourceEnded;
            };
            // Tracks are known once a decodable start (headers + keyframe) is queued; a
            // reserved task wakes at publish time, before any frame.
            let info = tokio::select! {
                _ = this.cancel.cancelled() => return SessionEnd::Cancelled,
                i = source.ready() => match i {
                    Some(info) => info,
                    None => return SessionEnd::SourceEnded,
                },
            };
            let selection = match &this.tracks {
                Tracks::All => Ok(TrackSelection::ALL),
                Tracks::Select(selector) => {
                    let tracks = info.tracks();
                    // What the destination gets, said before it is tried: the chosen
                    // tracks' codecs, or (on an error) every track the source has.
                    let chosen = tracks::select(this.dest.protocol(), selector, &tracks);
                    let shown = match &chosen {
                        Ok(s) => &s.tracks,
                        Err(_) => &tracks,
                    };
                    this.report
                        .codecs(shown.iter().map(|t| t.codec.to_string()).collect());
                    chosen.map(|s| s.kinds)
                }
            };
            drop(info);
            let selection = match selection {
                Ok(s) => s,
                Err(e) => {
                    // Nothing to do until the stream changes: report and wait for its end.
                    this.report.failed(&e.to_string());
                    return wait_end(source, &this.cancel).await;
                }
            };
            let mut fence = settings.fence.clone();
            if fence.is_up() && !fence.lifted(&this.cancel).await {
                return SessionEnd::Cancelled;
            }
            let started = Instant::now();
            this.counters.follow_queue(source.drop_counter());
            // The attempt's own token: cancelling the loop cancels it, unless the stream
            // has already ended (see `finish_or_cancel`).
            let attempt = CancellationToken::new();
            let run = push::run_attempt(
                &this.dest,
                selection,
                &mut source,
                &this.counters,
                &settings.push,
                &attempt,
                |ev| {
                    if let SessionEvent::Connected { .. } = ev {
                        this.report.started();
                    }
                },
            );
            // The worker's watchdog may find the push stalled (bytes not moving while
            // the source is live): the attempt is dropped (its connection closed) and
            // tried again like any failure.
            let stalled = this.counters.stalled.notified();
            let result = tokio::select! {
                r = this.finish_or_cancel(run, &attempt) => r,
                () = stalled => Err(push::PushError::Stalled { after: settings.stall_after }),
            };
            let e = match result {
                Ok(end) => return end,
                Err(e) => e,
            };
            tracing::warn!(dest = %this.dest, error = %e, "push failed; retrying");
            metrics::counter!("pushcast_push_reconnects_total").increment(1);
            if let Some(reason) = e.stall_reason() {
                metrics::counter!("pushcast_push_stalls_total", "reason" => reason).increment(1);
                this.report.stalled();
            }
            this.report.failed(&e.to_string());
            backoff.record_run(started.elapsed());
            let delay = backoff.next_delay_for(e.retry_class());
            // Keep following the stream while waiting, so its end is noticed.
            tokio::select! {
                _ = this.cancel.cancelled() => return SessionEnd::Cancelled,
                end = wait_end(source, &this.cancel) => return end,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

impl Loop {
    /// Runs an attempt to its end. When the loop is cancelled meanwhile, the attempt is
    /// cancelled at once, unless the stream has ended: a task is unassigned when its
    /// stream ends, which can come before its sessions have sent the last frames they
    /// hold (an RTMP session up to one write interval; an MPEG-TS datagram session what
    /// its pacer still holds, which sends in real time: up to about a GOP when the
    /// session started on a cached one). Then the attempt gets [`finish_grace`] to send
    /// them and say goodbye by itself — unless the fence goes up meanwhile.
    ///
    /// Fencing stays absolute: the grace ends the moment the fence is up, so a fenced
    /// worker sends nothing more.
    async fn finish_or_cancel<F>(&self, run: F, attempt: &CancellationToken) -> F::Output
    where
        F: std::future::Future,
    {
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => return r,
            _ = self.cancel.cancelled() => {}
        }
        if !self.settings.hub.is_live(&self.stream) && !self.settings.fence.is_up() {
            let mut fence = self.settings.fence.clone();
            tokio::select! {
                r = &mut run => return r,
                _ = tokio::time::sleep(finish_grace(self.dest.protocol())) => {}
                _ = fence.raised() => {}
            }
        }
        attempt.cancel();
        run.await
    }
}

/// How long a cancelled attempt may take to send what it holds of a stream that ended:
/// an RTMP session holds at most a write interval; an MPEG-TS/SRT session's pacer sends
/// in real time and may hold more (see [`Loop::finish_or_cancel`]). An attempt that is
/// done sooner returns at once.
pub fn finish_grace(protocol: pushcast_proto::model::Protocol) -> std::time::Duration {
    use pushcast_proto::model::Protocol;
    match protocol {
        Protocol::Rtmp => std::time::Duration::from_millis(250),
        Protocol::Mpegts | Protocol::Srt => std::time::Duration::from_secs(3),
    }
}

/// Waits until the stream behind `sub` ends (or `cancel` fires), discarding frames.
async fn wait_end(mut sub: Subscription, cancel: &CancellationToken) -> SessionEnd {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return SessionEnd::Cancelled,
            f = sub.recv() => if f.is_none() { return SessionEnd::SourceEnded },
        }
    }
}
