//! A publish that meets its stream live on another worker: decided, not refused.
//!
//! A live stream hangs off the lease of the worker that ingests it. When that worker dies
//! (`kill -9`, a crashed process), the record stays until the lease expires, and an
//! encoder that reconnects at once to another worker would be refused `ExistStreamName`
//! for a whole TTL — ffmpeg, which does not retry, gives up. So the admitting worker asks
//! who holds the stream:
//!
//! - **gone** — the holder is not registered any more, or its advertised gRPC address
//!   refuses connections (nothing listens: the process is gone) and it did not renew its
//!   lease meanwhile: its lease is revoked at once (deleting its registration and every
//!   stream on it, so its tasks move too) and the publish is admitted;
//! - **live** — the holder answers on its gRPC port: the stream really is live there,
//!   `ExistStreamName` as before;
//! - **unknown** — no answer (a partition, a frozen process): the publisher is held (its
//!   `publish` not answered) until the holder's lease expires, then admitted; refused with
//!   a clear reason if it has not expired by the deadline.
//!
//! The fencing promise is unchanged: a lease is revoked only when its holder cannot be
//! pushing (no process listens where it registered), and a holder that cannot be told
//! fences itself at 2/3 of its TTL, before its lease can expire.
//!
//! The decision is [`decide`] (pure); [`probe`] is the one network look at the holder.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the holder's gRPC port gets to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long past the holder's remaining lease TTL a held publisher waits (etcd expires
/// leases in a sweep that may lag a little).
pub const HOLD_MARGIN: Duration = Duration::from_secs(2);

/// What the holder's advertised gRPC address did when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The connection was refused: no process listens there.
    Refused,
    /// A process answered (an HTTP/2 server sent its first frame).
    Answered,
    /// No answer in time, or an error that says nothing either way (unreachable host,
    /// a frozen process whose kernel still accepts connections).
    Silent,
}

/// What to do with the new publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The holder is gone: revoke its lease and admit.
    Revoke,
    /// The stream is live on the holder: refuse.
    Refuse,
    /// Cannot be told: wait for the holder's lease to expire.
    Hold,
}

/// The decision. `registered`: the holder's worker registration exists; `probe`: what its
/// address did (`None` when it was not asked: not registered); `renewed`: its lease's
/// remaining TTL grew between the looks before and after the probe.
pub fn decide(registered: bool, probe: Option<Probe>, renewed: bool) -> Verdict {
    if renewed {
        // Something keeps the lease alive: whatever the port said, it may be pushing.
        return match probe {
            Some(Probe::Answered) => Verdict::Refuse,
            _ => Verdict::Hold,
        };
    }
    match (registered, probe) {
        (false, _) => Verdict::Revoke,
        (true, Some(Probe::Refused)) => Verdict::Revoke,
        (true, Some(Probe::Answered)) => Verdict::Refuse,
        (true, Some(Probe::Silent) | None) => Verdict::Hold,
    }
}

/// The HTTP/2 client preface and an empty SETTINGS frame: any gRPC server answers it
/// with its own SETTINGS at once; a process that cannot run does not.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Asks `addr` (a `host:port` of a gRPC server) whether a process answers there.
pub async fn probe(addr: &str, limit: Duration) -> Probe {
    let deadline = tokio::time::Instant::now() + limit;
    let mut sock = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Probe::Refused,
        Ok(Err(_)) | Err(_) => return Probe::Silent,
    };
    if tokio::time::timeout_at(deadline, sock.write_all(H2_HELLO))
        .await
        .is_err()
    {
        return Probe::Silent;
    }
    let mut first = [0u8; 9];
    match tokio::time::timeout_at(deadline, sock.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => Probe::Answered,
        _ => Probe::Silent,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_verdicts() {
        use Probe::*;
        use Verdict::*;
        assert_eq!(decide(false, None, false), Revoke, "not registered");
        assert_eq!(
            decide(true, Some(Refused), false),
            Revoke,
            "nothing listens"
        );
        assert_eq!(decide(true, Some(Answered), false), Refuse, "it answers");
        assert_eq!(decide(true, Some(Silent), false), Hold, "no answer");
        assert_eq!(decide(true, None, false), Hold);
        // A renewed lease is never revoked.
        assert_eq!(decide(true, Some(Refused), true), Hold);
        assert_eq!(decide(false, None, true), Hold);
        assert_eq!(decide(true, Some(Answered), true), Refuse);
    }

    #[tokio::test]
    async fn probe_tells_refused_answered_and_silent_apart() {
        // Nothing listens: a port just freed.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        assert_eq!(probe(&addr, PROBE_TIMEOUT).await, Probe::Refused);

        // A listener nobody accepts from (the kernel completes the connection, as for a
        // frozen process): silent.
        let frozen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = frozen.local_addr().unwrap().to_string();
        let t = std::time::Instant::now();
        assert_eq!(
            probe(&addr, Duration::from_millis(200)).await,
            Probe::Silent
        );
        assert!(t.elapsed() < Duration::from_secs(2));

        // A real gRPC server (tonic) answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        assert_eq!(probe(&addr, PROBE_TIMEOUT).await, Probe::Answered);
        server.abort();
        drop(frozen);
    }
}
