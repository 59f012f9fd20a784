//! What every pushcast process does at start: logging, the config file, shutdown signals.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config_file;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod tls;

pub use tokio_util::sync::CancellationToken;
