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
//! Plain http works out of the box. https:// URLs need the `https` feature, which turns on
//! reqwest's `rustls-no-provider` and gives this crate's clients a rustls config with the
//! ring provider and Mozilla's roots (nothing is installed process-wide; no aws-lc).
//! Caveat: once any crate of a build turns reqwest's rustls on, every other
//! `reqwest::Client` built in that build without a TLS config panics at `build()` ("No
//! rustls crypto provider is configured") unless the process installed one, e.g.
//! `rustls::crypto::ring::default_provider().install_default()` at start.

pub mod authorize;
pub mod dispatch;
pub mod publish;
pub mod status;

pub use authorize::{Denied, authorize};
pub use dispatch::{
    BuildError, Class, Dispatcher, DispatcherConfig, FORM, HTTPS_SUPPORTED, JSON, Payload,
    RetryPolicy, SendOutcome, Stats, Target, TargetError, redact_url,
};
pub use publish::{
    CloseMode, Format, PublishEnd, PublishEvent, host_from_tc_url, new_vdoid, parse_query,
    split_query,
};
pub use status::{
    EVENT_ID_HEADER, SIGNATURE_HEADER, TaskCounters, TaskEventKind, TaskStatusEvent, next_seq,
    sign, unix_ms, verify,
};
