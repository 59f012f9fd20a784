//! The optional authorization callback (like SRS's `on_publish`): called before a publish
//! is accepted; fail closed.

use std::sync::OnceLock;
use std::time::Duration;

use tracing::info;

use crate::dispatch::{DispatcherConfig, build_client, error_chain, parse_target_url, redact_url};
use crate::publish::{PublishEvent, start_json};

/// Why a publish was not authorized. Any answer but 2xx, a timeout, or no answer at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The receiver answered with a non-2xx status (3xx included: redirects are not
    /// followed).
    #[error("authorization callback answered HTTP {0}")]
    Status(u16),
    #[error("authorization callback did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection refused, DNS failure, reset, TLS failure, ...
    #[error("authorization callback unreachable: {0}")]
    Unreachable(String),
    /// The configured URL is not usable (the URL itself is not repeated).
    #[error("authorization callback misconfigured: {0}")]
    Misconfigured(String),
}

/// POSTs the new-format PubStart body (`application/json`) to `url` and waits at most
/// `timeout` for the answer: 2xx accepts, anything else denies. Uses a process-wide
/// client; [`crate::Dispatcher::authorize`] uses the dispatcher's.
pub async fn authorize(url: &str, timeout: Duration, event: &PublishEvent) -> Result<(), Denied> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    let client = CLIENT
        .get_or_init(|| build_client(&DispatcherConfig::default()).map_err(|e| e.to_string()));
    match client {
        Ok(client) => authorize_with(client, url, timeout, event).await,
        Err(e) => Err(Denied::Misconfigured(e.clone())),
    }
}

pub(crate) async fn authorize_with(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    event: &PublishEvent,
) -> Result<(), Denied> {
    let url = parse_target_url(url).map_err(|e| Denied::Misconfigured(e.to_string()))?;
    let shown = redact_url(&url);
    let request = client
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, crate::dispatch::JSON)
        .body(start_json(event))
        .send();
    // reqwest's timeout covers connect + answer; the outer one is a guard.
    let result = match tokio::time::timeout(timeout + Duration::from_millis(50), request).await {
        Err(_) => Err(Denied::Timeout(timeout)),
        Ok(Err(e)) if e.is_timeout() => Err(Denied::Timeout(timeout)),
        Ok(Err(e)) => Err(Denied::Unreachable(error_chain(&e.without_url()))),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(Denied::Status(resp.status().as_u16())),
    };
    if let Err(denied) = &result {
        info!(
            callback = %shown,
            app = %event.app,
            stream = %event.stream,
            client = %event.client,
            "publish denied by the authorization callback: {denied}"
        );
    }
    result
}
