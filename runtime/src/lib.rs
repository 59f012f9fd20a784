//! What every pushcast process does at start: logging, the config file, shutdown signals.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config_file;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod tls;

pub use tokio_util::sync::CancellationToken;

/// A binary's exit: an error is printed as one line with its causes
/// (`Error: cannot use etcd at …: … invalid peer certificate: UnknownIssuer`), for a
/// container log or a terminal, instead of the multi-line debug form.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
