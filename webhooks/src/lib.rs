//! pushcast's outgoing HTTP callbacks (spec `ingest-keys-callbacks.md`):
//!
//! - publish callbacks when a publish starts and ends, in the new (JSON) and old
//!   (form-encoded) formats of seed 002 ([`publish`], [`Payload::publish_start`],
//!   [`Payload::publish_end`]);
//! - task status callbacks (created / started / error / stopped / removed), signed with
//!   `X-Signature: sha256=<hex HMAC-SHA256(body, secret)>` ([`status`], [`Payload::status`]);
//! - reliable, non-blocking delivery: [`Dispatcher::send`] queues and returns; retries with
//!   jittered exponential backoff; per-key ordering; a bounded queue that drops the oldest;
//! - the optional authorization callback, failing closed ([`authorize()`]).
//!
//! ```no_run
//! # async fn demo(ev: pushcast_webhooks::PublishEvent) -> Result<(), Box<dyn std::error::Error>> {
//! use pushcast_webhooks::{Dispatcher, DispatcherConfig, Format, Payload, Target};
//! let dispatcher = Dispatcher::new(DispatcherConfig::default())?;
//! let target = Target::new("http://hooks.example.com/publish")?;
//! dispatcher.send(&target, Payload::publish_start(&ev, Format::New));
//! # Ok(()) }
//! ```
//!
//! ## https
//! http and https receivers both work. https uses rustls with the ring provider (no aws-lc
//! C build), set on this crate's clients only, Mozilla's roots and
//! [`DispatcherConfig::extra_roots`]. Caveat: this turns reqwest's rustls on for the whole
//! build, and then every *other* `reqwest::Client` built without a TLS config panics at
//! `build()` ("No rustls crypto provider is configured") unless the process installed one
//! first: `rustls::crypto::ring::default_provider().install_default()` (the pushcast
//! binaries do it in `main`; the testkit's clients do it too).

pub mod authorize;
pub mod dispatch;
pub mod publish;
pub mod status;

pub use authorize::{Denied, authorize};
pub use dispatch::{
    BuildError, Class, Dispatcher, DispatcherConfig, FORM, JSON, Payload, RetryPolicy, SendOutcome,
    Stats, Target, TargetError, redact_url,
};
pub use publish::{
    CloseMode, Format, PublishEnd, PublishEvent, host_from_tc_url, new_vdoid, parse_query,
    split_query,
};
pub use status::{
    EVENT_ID_HEADER, SIGNATURE_HEADER, TaskCounters, TaskEventKind, TaskStatusEvent, next_seq,
    sign, unix_ms, verify,
};
