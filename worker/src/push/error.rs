//! How a push attempt fails, classified for the caller's reconnect policy and for the
//! task's `lastError`.
//!
//! The `Display` text of every variant is written for an operator reading `lastError`:
//! it names the cause ("connection refused", "certificate verify failed: ...", "destination
//! rejected the stream key: NetStream.Publish.BadName ...") and never contains a stream
//! key (destinations appear only in their redacted form).

use std::time::Duration;

use pushcast_retry::RetryClass;
use pushcast_rtmp::RtmpError;

/// Why a push attempt ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The task's url / stream key cannot be pushed to (bad scheme, no host, no stream
    /// name, an SRT option out of range). Retrying will not help until the task changes.
    #[error("invalid destination: {0}")]
    InvalidDestination(String),

    /// The destination refused the stream: RTMP `connect`/`publish` answered with an
    /// error, or the server closed the connection in answer to `publish` (what Twitch and
    /// YouTube do with a wrong key), or an SRT listener rejected the caller. Hammering will
    /// not fix it: back off hard and report it.
    #[error("{}", rejected_message(code, description))]
    Rejected { code: String, description: String },

    /// The destination could not be reached: DNS, TCP connect, TLS handshake (with the
    /// certificate error), the RTMP handshake or the SRT handshake failed or timed out.
    #[error("cannot connect to {target}: {cause}")]
    Connect { target: String, cause: String },

    /// The connection failed while sending (reset, closed by the peer).
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The destination stopped reading: no byte could be written for the send timeout.
    /// A stall, reported as one (`stalled: ...`).
    #[error("stalled: the destination accepted no data for {} ms (send timeout)", after.as_millis())]
    Timeout { after: Duration },

    /// No bytes went out for the stall timeout while the source was live and fed: the
    /// push was stuck somewhere short of a blocked write (the worker's watchdog).
    #[error("stalled: no bytes sent for {} ms while the source is live", after.as_millis())]
    Stalled { after: Duration },

    /// The stream (a codec, or the track selection) cannot be carried by the protocol.
    /// Permanent for this source: the task goes to `error` with this message.
    #[error("{0}")]
    Unsupported(String),

    /// The destination broke the protocol (malformed RTMP, an SRT failure).
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The class of a [`PushError`], for reconnect policy and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PushErrorKind {
    InvalidDestination,
    Rejected,
    Connect,
    Io,
    Timeout,
    Unsupported,
    Protocol,
}

impl PushErrorKind {
    /// A short stable name (metrics label, log field).
    pub fn as_str(self) -> &'static str {
        match self {
            PushErrorKind::InvalidDestination => "invalid_destination",
            PushErrorKind::Rejected => "rejected",
            PushErrorKind::Connect => "connect",
            PushErrorKind::Io => "io",
            PushErrorKind::Timeout => "timeout",
            PushErrorKind::Unsupported => "unsupported",
            PushErrorKind::Protocol => "protocol",
        }
    }
}

impl PushError {
    /// Whether this is a stall (counted in `pushcast_push_stalls_total`), by how it was
    /// found: `send_timeout` or `no_progress`.
    pub fn stall_reason(&self) -> Option<&'static str> {
        match self {
            PushError::Timeout { .. } => Some("send_timeout"),
            PushError::Stalled { .. } => Some("no_progress"),
            _ => None,
        }
    }

    pub fn kind(&self) -> PushErrorKind {
        match self {
            PushError::InvalidDestination(_) => PushErrorKind::InvalidDestination,
            PushError::Rejected { .. } => PushErrorKind::Rejected,
            PushError::Connect { .. } => PushErrorKind::Connect,
            PushError::Io { .. } => PushErrorKind::Io,
            PushError::Timeout { .. } | PushError::Stalled { .. } => PushErrorKind::Timeout,
            PushError::Unsupported(_) => PushErrorKind::Unsupported,
            PushError::Protocol(_) => PushErrorKind::Protocol,
        }
    }

    /// How to retry: [`RetryClass::Transient`] when retrying the same task unchanged can
    /// succeed by itself (network trouble, a destination that comes back);
    /// [`RetryClass::Rejected`] when it needs a change from someone (a rejected key, an
    /// invalid url, an unsupported codec). Retries never stop either way (the spec says
    /// so); a rejection only backs off harder.
    pub fn retry_class(&self) -> RetryClass {
        match self.kind() {
            PushErrorKind::Connect
            | PushErrorKind::Io
            | PushErrorKind::Timeout
            | PushErrorKind::Protocol => RetryClass::Transient,
            PushErrorKind::InvalidDestination
            | PushErrorKind::Rejected
            | PushErrorKind::Unsupported => RetryClass::Rejected,
        }
    }

    pub(crate) fn io(context: &'static str, source: std::io::Error) -> PushError {
        PushError::Io { context, source }
    }

    pub(crate) fn closed_by_peer() -> PushError {
        PushError::io(
            "the destination closed the connection",
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        )
    }
}

impl From<RtmpError> for PushError {
    fn from(e: RtmpError) -> Self {
        match e {
            RtmpError::Rejected { code, description } => PushError::Rejected { code, description },
            other => PushError::Protocol(format!("RTMP: {other}")),
        }
    }
}

fn rejected_message(code: &str, description: &str) -> String {
    let what = if code.starts_with("NetConnection.") {
        "destination rejected the connection (unknown app or not authorised)"
    } else if code.starts_with("SRT.") {
        "destination rejected the SRT connection"
    } else {
        "destination rejected the stream key"
    };
    if description.is_empty() {
        format!("{what}: {code}")
    } else {
        format!("{what}: {code}: {description}")
    }
}

/// An I/O error's cause in the words an operator expects ("connection refused", "timed
/// out"), without the `(os error N)` noise for the common cases.
pub(crate) fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset by peer".into(),
        K::TimedOut => "timed out".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        K::AddrNotAvailable => "address not available".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_messages_say_what_was_refused() {
        let e = PushError::from(RtmpError::Rejected {
            code: "NetStream.Publish.BadName".into(),
            description: "Already publishing".into(),
        });
        assert_eq!(e.kind(), PushErrorKind::Rejected);
        assert_eq!(
            e.to_string(),
            "destination rejected the stream key: NetStream.Publish.BadName: Already publishing"
        );
        let e = PushError::Rejected {
            code: "NetConnection.Connect.Rejected".into(),
            description: String::new(),
        };
        assert!(e.to_string().contains("rejected the connection"), "{e}");
        assert_eq!(e.retry_class(), RetryClass::Rejected);
    }

    #[test]
    fn io_causes_are_plain_words() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(io_cause(&e), "connection refused");
        let t = PushError::Timeout {
            after: Duration::from_secs(2),
        };
        assert_eq!(t.retry_class(), RetryClass::Transient);
        assert_eq!(
            t.to_string(),
            "stalled: the destination accepted no data for 2000 ms (send timeout)"
        );
    }
}
