//! Delivery: a bounded queue, per-key ordering, retries with jittered exponential backoff.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pushcast_retry::{Backoff, BackoffConfig};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, warn};
use url::Url;

use crate::authorize::{Denied, authorize_with};
use crate::publish::{self, Format, PublishEnd, PublishEvent};
use crate::status::{self, EVENT_ID_HEADER, SIGNATURE_HEADER, TaskStatusEvent};

/// Which retry policy a payload gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Publish callbacks: a few tries ([`DispatcherConfig::publish_retry`]).
    Publish,
    /// Task status callbacks: at least once, retried much longer
    /// ([`DispatcherConfig::status_retry`]).
    Status,
}

/// How long a callback is retried. A delivery is given up after `max_attempts` attempts,
/// or when the next attempt would start more than `max_age` after the payload was queued
/// (there is always at least one attempt). The waits between attempts come from the one
/// retry policy ([`pushcast_retry::Backoff`]): `backoff.initial` doubling up to
/// `backoff.max`, each drawn in `[d/2, d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_age: Duration,
    pub backoff: BackoffConfig,
}

impl RetryPolicy {
    /// Publish callbacks: 5 attempts, waits of about 2, 4, 8, 16 s (jittered: 15–30 s in
    /// all), within 60 s.
    pub const PUBLISH: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        max_age: Duration::from_secs(60),
        backoff: BackoffConfig::new(Duration::from_secs(2), Duration::from_secs(16)),
    };

    /// Status callbacks (at least once): 1 s doubling to 60 s, for up to 1 hour (or 100
    /// attempts).
    pub const STATUS: RetryPolicy = RetryPolicy {
        max_attempts: 100,
        max_age: Duration::from_secs(3600),
        backoff: BackoffConfig::new(Duration::from_secs(1), Duration::from_secs(60)),
    };
}

/// Dispatcher settings. `Default` is what production uses.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Time limit of one POST, connect included (5 s).
    pub timeout: Duration,
    /// How many callbacks may be held (queued + being delivered, retry waits included)
    /// before the oldest queued one is dropped (10 000).
    pub queue_capacity: usize,
    /// How many POSTs may be on the wire at once, over all targets (64).
    pub max_in_flight: usize,
    pub publish_retry: RetryPolicy,
    pub status_retry: RetryPolicy,
    pub user_agent: String,
    /// Extra trust anchors for https callback URLs (besides Mozilla's roots): a private
    /// CA's receivers (`--webhook-ca-file`).
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            timeout: Duration::from_secs(5),
            queue_capacity: 10_000,
            max_in_flight: 64,
            publish_retry: RetryPolicy::PUBLISH,
            status_retry: RetryPolicy::STATUS,
            user_agent: concat!("pushcast-webhooks/", env!("CARGO_PKG_VERSION")).to_string(),
            extra_roots: Vec::new(),
        }
    }
}

/// A URL for logs: scheme, host, port and path; no user info, query or fragment (they
/// may hold tokens).
pub fn redact_url(url: &Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        s.push_str(&format!(":{port}"));
    }
    s.push_str(url.path());
    s
}

/// A callback URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// (The URL itself is not repeated: it may hold a token.)
    #[error("invalid callback URL: {0}")]
    InvalidUrl(String),
    #[error("callback URL scheme must be http or https, not {0:?}")]
    UnsupportedScheme(String),
}

struct TargetInner {
    url: Url,
    display: String,
    secret: Option<Vec<u8>>,
}

/// One callback receiver: a URL and, for signed callbacks, a secret. Cheap to clone.
/// `Debug` shows the redacted URL and never the secret.
#[derive(Clone)]
pub struct Target(Arc<TargetInner>);

impl Target {
    /// Checks the URL (http, or https when built with the `https` feature).
    pub fn new(url: &str) -> Result<Target, TargetError> {
        let url = parse_target_url(url)?;
        Ok(Target(Arc::new(TargetInner {
            display: redact_url(&url),
            url,
            secret: None,
        })))
    }

    /// Signs every payload sent to this target: `X-Signature: sha256=<hex>`.
    pub fn with_secret(self, secret: impl Into<Vec<u8>>) -> Target {
        Target(Arc::new(TargetInner {
            url: self.0.url.clone(),
            display: self.0.display.clone(),
            secret: Some(secret.into()),
        }))
    }

    pub fn url(&self) -> &Url {
        &self.0.url
    }

    /// The URL without user info and query, for logs.
    pub fn display(&self) -> &str {
        &self.0.display
    }

    pub fn is_signed(&self) -> bool {
        self.0.secret.is_some()
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.0.display)
            .field("secret", &self.0.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

pub(crate) fn parse_target_url(url: &str) -> Result<Url, TargetError> {
    let url = Url::parse(url.trim()).map_err(|e| TargetError::InvalidUrl(e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(TargetError::UnsupportedScheme(other.to_string())),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(TargetError::InvalidUrl("no host".into()));
    }
    Ok(url)
}

/// `application/json`.
pub const JSON: &str = "application/json";
/// `application/x-www-form-urlencoded`.
pub const FORM: &str = "application/x-www-form-urlencoded";

/// A body ready to POST. Payloads with the same order key going to the same target are
/// delivered one at a time, in the order they were sent.
#[derive(Clone)]
pub struct Payload {
    class: Class,
    content_type: &'static str,
    body: Bytes,
    order_key: Option<Arc<str>>,
    what: &'static str,
    /// Sent as `X-Event-Id`.
    event_id: Option<Arc<str>>,
    /// Told whether the payload was delivered (true) or given up (false).
    on_done: Option<Arc<dyn Fn(bool) + Send + Sync>>,
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("class", &self.class)
            .field("what", &self.what)
            .field("event_id", &self.event_id)
            .field("order_key", &self.order_key)
            .finish_non_exhaustive()
    }
}

impl Payload {
    /// Any body. Unordered until [`Payload::ordered_by`].
    pub fn new(class: Class, content_type: &'static str, body: impl Into<Bytes>) -> Payload {
        Payload {
            class,
            content_type,
            body: body.into(),
            order_key: None,
            what: "callback",
            event_id: None,
            on_done: None,
        }
    }

    /// Sets the order key.
    pub fn ordered_by(mut self, key: impl Into<Arc<str>>) -> Payload {
        self.order_key = Some(key.into());
        self
    }

    /// Names the event (`X-Event-Id`).
    pub fn with_event_id(mut self, id: impl Into<Arc<str>>) -> Payload {
        self.event_id = Some(id.into());
        self
    }

    /// Calls `done(delivered)` once the dispatcher is through with the payload: true when
    /// a receiver accepted it, false when the retry policy gave up (or it was dropped).
    pub fn on_done(mut self, done: impl Fn(bool) + Send + Sync + 'static) -> Payload {
        self.on_done = Some(Arc::new(done));
        self
    }

    /// A payload already encoded (`body`, e.g. kept in the store's outbox) of `class`,
    /// named `event_id` and ordered by `order_key`; `content_type` is JSON unless it is the
    /// form type.
    pub fn encoded(
        class: Class,
        content_type: &str,
        body: impl Into<Bytes>,
        event_id: impl Into<Arc<str>>,
        order_key: impl Into<Arc<str>>,
    ) -> Payload {
        let content_type = if content_type.starts_with(FORM) {
            FORM
        } else {
            JSON
        };
        Payload {
            what: match class {
                Class::Status => "status event",
                Class::Publish => "publish event",
            },
            ..Payload::new(class, content_type, body)
        }
        .with_event_id(event_id)
        .ordered_by(order_key)
    }

    /// PubStart (new) / `user_publish` (old). Ordered by the publish session (`vdoid`), so
    /// a session's start always reaches a receiver before its end.
    pub fn publish_start(ev: &PublishEvent, format: Format) -> Payload {
        let (content_type, body, what) = match format {
            Format::New => (JSON, publish::start_json(ev), "PubStart"),
            Format::Old => (FORM, publish::start_form(ev), "user_publish"),
        };
        Payload {
            what,
            ..Payload::new(Class::Publish, content_type, body)
        }
        .ordered_by(format!("pub\u{0}{}", ev.vdoid))
    }

    /// PubEnd (new) / `user_publish_done` (old).
    pub fn publish_end(ev: &PublishEvent, end: &PublishEnd, format: Format) -> Payload {
        let (content_type, body, what) = match format {
            Format::New => (JSON, publish::end_json(ev, end), "PubEnd"),
            Format::Old => (FORM, publish::end_form(ev, end), "user_publish_done"),
        };
        Payload {
            what,
            ..Payload::new(Class::Publish, content_type, body)
        }
        .ordered_by(format!("pub\u{0}{}", ev.vdoid))
    }

    /// A task status event (JSON), ordered by task (vhost, app, id). Signed when the
    /// target has a secret.
    pub fn status(ev: &TaskStatusEvent) -> Payload {
        let p = Payload {
            what: ev.event.as_str(),
            ..Payload::new(Class::Status, JSON, ev.to_json())
        }
        .ordered_by(ev.order_key());
        match &ev.event_id {
            Some(id) => p.with_event_id(id.as_str()),
            None => p,
        }
    }

    pub fn class(&self) -> Class {
        self.class
    }

    /// What it is, for logs (`PubStart`, `started`, …).
    pub fn what(&self) -> &'static str {
        self.what
    }

    pub fn content_type(&self) -> &'static str {
        self.content_type
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn order_key(&self) -> Option<&str> {
        self.order_key.as_deref()
    }
}

/// What [`Dispatcher::send`] did with a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued.
    Queued,
    /// Queued; the queue was full, so the oldest queued payload was dropped.
    QueuedDroppedOldest,
    /// The queue was full of payloads already being delivered: this one was dropped.
    Dropped,
}

/// Counters since the dispatcher was made, and the current queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Accepted by a receiver (2xx).
    pub delivered: u64,
    /// Given up after the retry policy ran out.
    pub failed: u64,
    /// Retries (attempts after the first).
    pub retried: u64,
    /// Dropped because the queue was full.
    pub dropped: u64,
    /// Waiting their turn (behind an earlier payload of their key, or for a lane to start).
    pub queued: u64,
    /// Being delivered (on the wire or waiting to retry).
    pub in_flight: u64,
}

impl Stats {
    /// Publishes these counts as Prometheus metrics (`pushcast_callback_*`).
    pub fn record_metrics(&self) {
        for (result, n) in [
            ("delivered", self.delivered),
            ("failed", self.failed),
            ("dropped", self.dropped),
        ] {
            metrics::counter!("pushcast_callback_deliveries_total", "result" => result).absolute(n);
        }
        metrics::counter!("pushcast_callback_retries_total").absolute(self.retried);
        metrics::gauge!("pushcast_callback_queued").set((self.queued + self.in_flight) as f64);
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum LaneKey {
    Ordered(Arc<str>, Arc<str>),
    Single(u64),
}

struct Job {
    id: u64,
    target: Target,
    payload: Payload,
    queued_at: Instant,
}

#[derive(Default)]
struct Lane {
    pending: VecDeque<Job>,
}

#[derive(Default)]
struct State {
    /// A lane exists while its task runs; the task removes it when it finds it empty.
    lanes: HashMap<LaneKey, Lane>,
    /// Queued (not yet started) jobs by id, oldest first: for drop-oldest.
    order: BTreeMap<u64, LaneKey>,
    /// Queued + being delivered.
    held: usize,
    next_id: u64,
    last_drop_warning: Option<Instant>,
    last_failure_warning: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
}

struct Inner {
    config: DispatcherConfig,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    state: Mutex<State>,
    counters: Counters,
    permits: Semaphore,
    idle: Notify,
}

/// The dispatcher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the webhooks dispatcher must be created inside a tokio runtime")]
    NoRuntime,
    #[error("HTTP client: {0}")]
    Client(String),
}

/// Sends callbacks in the background. Clone it freely (all clones share one queue).
///
/// `send` never waits: it puts the payload in a bounded in-memory queue and returns.
/// Payloads with the same (target, order key) are delivered strictly one after another:
/// a later one starts only when the earlier one was accepted or given up. Different keys
/// and different targets proceed in parallel (at most `max_in_flight` POSTs at once).
/// Nothing is persisted: callbacks still queued when the process exits are lost.
#[derive(Clone)]
pub struct Dispatcher(Arc<Inner>);

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Dispatcher {
    /// Must be called inside a tokio runtime; deliveries run on it. `send` may then be
    /// called from any thread.
    pub fn new(config: DispatcherConfig) -> Result<Dispatcher, BuildError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let client = build_client(&config)?;
        let permits = Semaphore::new(config.max_in_flight.max(1));
        Ok(Dispatcher(Arc::new(Inner {
            config,
            client,
            runtime,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            permits,
            idle: Notify::new(),
        })))
    }

    pub fn config(&self) -> &DispatcherConfig {
        &self.0.config
    }

    /// Queues `payload` for `target` and returns at once.
    ///
    /// When the queue is full (`queue_capacity` payloads held), the oldest payload that
    /// is still waiting is dropped to make room (counted in `dropped`, logged as a
    /// warning at most every 5 s); if every held payload is already being delivered, this
    /// one is dropped instead.
    pub fn send(&self, target: &Target, payload: Payload) -> SendOutcome {
        let inner = &self.0;
        let mut st = inner.lock();
        let mut outcome = SendOutcome::Queued;
        if st.held >= inner.config.queue_capacity.max(1) {
            match st.order.pop_first() {
                Some((old_id, old_key)) => {
                    let old = st.lanes.get_mut(&old_key).and_then(|lane| {
                        let pos = lane.pending.iter().position(|j| j.id == old_id)?;
                        lane.pending.remove(pos)
                    });
                    st.held -= 1;
                    inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(old) = old {
                        inner.warn_dropped(&mut st, &old.target, old.payload.what, "oldest");
                        if let Some(done) = &old.payload.on_done {
                            done(false);
                        }
                    }
                    outcome = SendOutcome::QueuedDroppedOldest;
                }
                None => {
                    inner.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    inner.warn_dropped(&mut st, target, payload.what, "new");
                    drop(st);
                    if let Some(done) = &payload.on_done {
                        done(false);
                    }
                    return SendOutcome::Dropped;
                }
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        let key = match &payload.order_key {
            Some(k) => LaneKey::Ordered(Arc::from(target.url().as_str()), k.clone()),
            None => LaneKey::Single(id),
        };
        let job = Job {
            id,
            target: target.clone(),
            payload,
            queued_at: Instant::now(),
        };
        st.held += 1;
        st.order.insert(id, key.clone());
        match st.lanes.get_mut(&key) {
            Some(lane) => lane.pending.push_back(job),
            None => {
                let mut lane = Lane::default();
                lane.pending.push_back(job);
                st.lanes.insert(key.clone(), lane);
                drop(st);
                let inner = Arc::clone(inner);
                self.0.runtime.spawn(run_lane(inner, key));
            }
        }
        outcome
    }

    /// Sends one payload to several targets.
    pub fn send_all<'a>(
        &self,
        targets: impl IntoIterator<Item = &'a Target>,
        payload: &Payload,
    ) -> Vec<SendOutcome> {
        targets
            .into_iter()
            .map(|t| self.send(t, payload.clone()))
            .collect()
    }

    pub fn stats(&self) -> Stats {
        let c = &self.0.counters;
        let (queued, held) = {
            let st = self.0.lock();
            (st.order.len() as u64, st.held as u64)
        };
        Stats {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            queued,
            in_flight: held.saturating_sub(queued),
        }
    }

    /// Waits until nothing is held (all delivered or given up), up to `timeout`. For
    /// tests and graceful shutdown. True when idle.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.0.lock().held == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.0.lock().held == 0;
            }
        }
    }

    /// The authorization callback with this dispatcher's HTTP client: see
    /// [`crate::authorize`].
    pub async fn authorize(
        &self,
        url: &str,
        timeout: Duration,
        event: &PublishEvent,
    ) -> Result<(), Denied> {
        authorize_with(&self.0.client, url, timeout, event).await
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-changed in a way
        // that matters more than stopping callbacks would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn warn_dropped(&self, st: &mut State, target: &Target, what: &str, which: &str) {
        if !warning_due(&mut st.last_drop_warning) {
            return;
        }
        warn!(
            target_url = target.display(),
            what,
            dropped_total = self.counters.dropped.load(Ordering::Relaxed),
            capacity = self.config.queue_capacity,
            "callback queue full: dropped the {which} callback"
        );
    }

    fn policy(&self, class: Class) -> &RetryPolicy {
        match class {
            Class::Publish => &self.config.publish_retry,
            Class::Status => &self.config.status_retry,
        }
    }

    /// Delivers with retries; whether a receiver accepted it.
    async fn deliver(&self, job: &Job) -> bool {
        let policy = *self.policy(job.payload.class);
        let mut backoff = Backoff::new(policy.backoff);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let result = {
                let _permit = self.permits.acquire().await.ok();
                self.post(job).await
            };
            let err = match result {
                Ok(()) => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    debug!(
                        target_url = job.target.display(),
                        what = job.payload.what,
                        attempt,
                        "callback delivered"
                    );
                    return true;
                }
                Err(err) => err,
            };
            let reason = err.reason();
            metrics::counter!("pushcast_callback_attempt_failures_total", "reason" => reason)
                .increment(1);
            let delay = backoff.next_delay();
            if attempt >= policy.max_attempts || job.queued_at.elapsed() + delay > policy.max_age {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                warn!(
                    target_url = job.target.display(),
                    what = job.payload.what,
                    attempts = attempt,
                    reason,
                    error = %err,
                    "callback failed, giving up"
                );
                return false;
            }
            self.counters.retried.fetch_add(1, Ordering::Relaxed);
            // A status event may be retried for a long time: the reason is said at warn
            // level (at most every 5 s per dispatcher), not only when it is given up.
            if warning_due(&mut self.lock().last_failure_warning) {
                warn!(
                    target_url = job.target.display(),
                    what = job.payload.what,
                    attempt,
                    reason,
                    error = %err,
                    retry_in_ms = delay.as_millis() as u64,
                    "callback failed, will retry"
                );
            } else {
                debug!(
                    target_url = job.target.display(),
                    what = job.payload.what,
                    attempt,
                    reason,
                    error = %err,
                    retry_in_ms = delay.as_millis() as u64,
                    "callback failed, will retry"
                );
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn post(&self, job: &Job) -> Result<(), AttemptError> {
        let body = job.payload.body.clone();
        let mut req = self
            .client
            .post(job.target.url().clone())
            .timeout(self.config.timeout)
            .header(reqwest::header::CONTENT_TYPE, job.payload.content_type);
        if let Some(secret) = &job.target.0.secret {
            req = req.header(SIGNATURE_HEADER, status::sign(&body, secret));
        }
        if let Some(id) = &job.payload.event_id {
            req = req.header(EVENT_ID_HEADER, id.as_ref());
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| AttemptError::Transport(e.without_url()))?;
        let code = resp.status();
        if code.is_success() {
            Ok(())
        } else {
            Err(AttemptError::Status(code.as_u16()))
        }
    }
}

async fn run_lane(inner: Arc<Inner>, key: LaneKey) {
    loop {
        let job = {
            let mut st = inner.lock();
            let next = st.lanes.get_mut(&key).and_then(|l| l.pending.pop_front());
            match next {
                Some(job) => {
                    st.order.remove(&job.id);
                    job
                }
                None => {
                    st.lanes.remove(&key);
                    return;
                }
            }
        };
        let delivered = inner.deliver(&job).await;
        if let Some(done) = &job.payload.on_done {
            done(delivered);
        }
        let idle = {
            let mut st = inner.lock();
            st.held -= 1;
            st.held == 0
        };
        if idle {
            inner.idle.notify_waiters();
        }
    }
}

/// Whether a warning last given at `*last` may be given again now (5 s apart); if so,
/// `*last` becomes now.
fn warning_due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(5)) {
        return false;
    }
    *last = Some(now);
    true
}

#[derive(Debug)]
enum AttemptError {
    Status(u16),
    Transport(reqwest::Error),
}

impl AttemptError {
    /// Why the attempt failed, as a metric label: `http_4xx`, `http_5xx`, `http_3xx`
    /// (redirects are not followed), `timeout`, `certificate_unknown_issuer`,
    /// `certificate_expired`, `certificate_not_valid_yet`, `certificate_name_mismatch`,
    /// `certificate_revoked`, `certificate_invalid`, `tls` (another handshake failure),
    /// `connect` (refused, unreachable, DNS) or `other`.
    fn reason(&self) -> &'static str {
        match self {
            AttemptError::Status(code) => match code {
                300..=399 => "http_3xx",
                400..=499 => "http_4xx",
                _ => "http_5xx",
            },
            AttemptError::Transport(e) if e.is_timeout() => "timeout",
            AttemptError::Transport(e) => match tls_error(e) {
                Some(tls) => tls_reason(tls),
                None if e.is_connect() => "connect",
                None => "other",
            },
        }
    }
}

/// The rustls error somewhere in `e`'s chain. `io::Error` hides the error it wraps from
/// `source()` (it returns the inner error's source), so it is unwrapped by hand.
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn tls_reason(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "certificate_unknown_issuer",
            C::Expired | C::ExpiredContext { .. } => "certificate_expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "certificate_not_valid_yet",
            C::NotValidForName | C::NotValidForNameContext { .. } => "certificate_name_mismatch",
            C::Revoked => "certificate_revoked",
            _ => "certificate_invalid",
        },
        _ => "tls",
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Status(code) => write!(f, "HTTP {code}"),
            AttemptError::Transport(e) if e.is_timeout() => write!(f, "timed out"),
            AttemptError::Transport(e) => write!(f, "{}", error_chain(e)),
        }
    }
}

/// An error and its sources on one line (reqwest's top-level message alone says little).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// The HTTP client: no redirects (a 3xx is a failure), per-request timeouts set by the
/// callers, and for https the ring provider set on this client only (nothing installed
/// process-wide).
pub(crate) fn build_client(config: &DispatcherConfig) -> Result<reqwest::Client, BuildError> {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(config.user_agent.clone());
    builder
        .tls_backend_preconfigured(tls_config(&config.extra_roots)?)
        .build()
        .map_err(|e| BuildError::Client(error_chain(&e)))
}

fn tls_config(
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<rustls::ClientConfig, BuildError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| BuildError::Client(format!("extra root certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            max_age: Duration::from_secs(100),
            backoff: BackoffConfig::new(Duration::from_millis(1000), Duration::from_millis(8000)),
        };
        for _ in 0..50 {
            let mut b = Backoff::new(p.backoff);
            for (retry, base) in [(1, 1000), (2, 2000), (3, 4000), (4, 8000), (5, 8000)] {
                let d = b.next_delay().as_millis() as u64;
                assert!(d >= base / 2 && d <= base, "retry {retry}: {d} ms");
            }
        }
        let third = || {
            let mut b = Backoff::new(p.backoff);
            (0..3).map(|_| b.next_delay()).last()
        };
        let spread: std::collections::HashSet<_> = (0..50).map(|_| third()).collect();
        assert!(spread.len() > 10, "jittered");
        // The publish defaults: 4 waits of 15–30 s in all.
        let waits: (u64, u64) = (1..=4).fold((0, 0), |(lo, hi), r| {
            let base = (2000u64 << (r - 1)).min(16_000);
            (lo + base / 2, hi + base)
        });
        assert_eq!(waits, (15_000, 30_000));
        assert_eq!(RetryPolicy::PUBLISH.max_attempts, 5);
        assert_eq!(RetryPolicy::PUBLISH.backoff.initial, Duration::from_secs(2));
        assert_eq!(RetryPolicy::PUBLISH.backoff.max, Duration::from_secs(16));
    }

    #[test]
    fn urls_are_redacted() {
        let url = Url::parse("http://user:pw@hooks.example.com:8080/cb/x?token=s3cret#f").unwrap();
        assert_eq!(redact_url(&url), "http://hooks.example.com:8080/cb/x");
        let t = Target::new("http://user:pw@hooks.example.com/cb?token=s3cret")
            .unwrap()
            .with_secret("topsecret");
        assert_eq!(t.display(), "http://hooks.example.com/cb");
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("topsecret") && !dbg.contains("pw"));
        assert!(dbg.contains("***"));
        assert!(t.is_signed());
    }

    #[test]
    fn target_validation() {
        assert!(Target::new("http://127.0.0.1:1/x").is_ok());
        assert!(matches!(
            Target::new("ftp://x/y"),
            Err(TargetError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            Target::new("not a url?token=abc"),
            Err(TargetError::InvalidUrl(e)) if !e.contains("abc")
        ));
        assert!(Target::new("https://hooks.example.com/x").is_ok());
    }

    #[test]
    fn no_runtime_is_an_error() {
        assert!(matches!(
            Dispatcher::new(DispatcherConfig::default()),
            Err(BuildError::NoRuntime)
        ));
    }
}
