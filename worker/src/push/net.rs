//! Socket plumbing shared by the protocols: connecting with a deadline, writing with a
//! progress timeout.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

use super::error::{PushError, io_cause};

/// Resolves `host:port` within `deadline`. An empty answer is an error.
pub(crate) async fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, PushError> {
    let target = || format!("{host}:{port}");
    let addrs = match timeout_at(deadline, tokio::net::lookup_host((host, port))).await {
        Err(_) => {
            return Err(PushError::Connect {
                target: target(),
                cause: "DNS lookup timed out".into(),
            });
        }
        Ok(Err(e)) => {
            return Err(PushError::Connect {
                target: target(),
                cause: format!("cannot resolve host: {e}"),
            });
        }
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
    };
    if addrs.is_empty() {
        return Err(PushError::Connect {
            target: target(),
            cause: "cannot resolve host: no address".into(),
        });
    }
    Ok(addrs)
}

/// Opens a TCP connection to `host:port`, trying each resolved address in turn until
/// `connect_timeout` (for the whole attempt) runs out. `TCP_NODELAY` is set: the
/// sessions coalesce writes themselves, and Nagle would only delay small audio frames.
pub(crate) async fn connect_tcp(
    host: &str,
    port: u16,
    connect_timeout: Duration,
) -> Result<TcpStream, PushError> {
    let deadline = Instant::now() + connect_timeout;
    let addrs = resolve(host, port, deadline).await?;
    let mut last_cause = String::new();
    // Name the address in the cause only when there was a choice of several.
    let several = addrs.len() > 1;
    for addr in addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Only an optimisation: a socket that refuses it still works.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) if several => last_cause = format!("{addr}: {}", io_cause(&e)),
            Ok(Err(e)) => last_cause = io_cause(&e),
            Err(_) => {
                last_cause = format!("timed out after {} ms", connect_timeout.as_millis());
                break;
            }
        }
    }
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Err(PushError::Connect {
        target,
        cause: last_cause,
    })
}

/// The end of the gathering window that starts now: a tick of a process-wide grid of
/// `interval` spacing, at least half an interval away (so windows average `interval`).
/// All sessions of the process share the grid, so their timers fire together and the
/// runtime wakes once per tick for all of them instead of once per session: thread
/// wake-ups cost more than the writes.
pub(crate) fn next_write_tick(interval: Duration) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let now = Instant::now();
    let step = interval.as_nanos().max(1);
    let earliest = (now + interval / 2)
        .saturating_duration_since(epoch)
        .as_nanos();
    let ticks = earliest.div_ceil(step);
    let at = u64::try_from(ticks.saturating_mul(step)).unwrap_or(u64::MAX);
    epoch + Duration::from_nanos(at)
}

/// Most slices handed to one `writev` (Linux allows 1024; more buys nothing).
const MAX_IOVECS: usize = 64;

/// Writes all `segments` in order with as few vectored writes as the socket allows,
/// then flushes. Each write must make progress within `progress_timeout`: a destination
/// that stops reading fails the session after that long, while a slow but moving one
/// does not.
pub(crate) async fn write_segments<W: AsyncWrite + Unpin>(
    w: &mut W,
    segments: &[Bytes],
    progress_timeout: Duration,
) -> Result<(), PushError> {
    let mut index = 0;
    let mut offset = 0;
    while index < segments.len() {
        let n = {
            let mut slices = Vec::with_capacity(MAX_IOVECS.min(segments.len() - index));
            for (i, seg) in segments[index..].iter().take(MAX_IOVECS).enumerate() {
                let from = if i == 0 { offset } else { 0 };
                if let Some(rest) = seg.get(from..).filter(|r| !r.is_empty()) {
                    slices.push(IoSlice::new(rest));
                }
            }
            if slices.is_empty() {
                // Only empty segments left.
                break;
            }
            match timeout(progress_timeout, w.write_vectored(&slices)).await {
                Err(_) => {
                    return Err(PushError::Timeout {
                        after: progress_timeout,
                    });
                }
                Ok(Err(e)) => return Err(PushError::io("writing to the destination failed", e)),
                Ok(Ok(0)) => return Err(PushError::closed_by_peer()),
                Ok(Ok(n)) => n,
            }
        };
        // Advance past what was written.
        let mut left = n;
        while left > 0 && index < segments.len() {
            let avail = segments[index].len() - offset;
            if left < avail {
                offset += left;
                left = 0;
            } else {
                left -= avail;
                index += 1;
                offset = 0;
            }
        }
        while index < segments.len() && segments[index].len() == offset {
            index += 1;
            offset = 0;
        }
    }
    flush(w, progress_timeout).await
}

/// Writes one buffer (TS over TCP) with the same progress rule.
pub(crate) async fn write_buf<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut buf: &[u8],
    progress_timeout: Duration,
) -> Result<(), PushError> {
    while !buf.is_empty() {
        match timeout(progress_timeout, w.write(buf)).await {
            Err(_) => {
                return Err(PushError::Timeout {
                    after: progress_timeout,
                });
            }
            Ok(Err(e)) => return Err(PushError::io("writing to the destination failed", e)),
            Ok(Ok(0)) => return Err(PushError::closed_by_peer()),
            Ok(Ok(n)) => buf = buf.get(n..).unwrap_or_default(),
        }
    }
    flush(w, progress_timeout).await
}

async fn flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    progress_timeout: Duration,
) -> Result<(), PushError> {
    match timeout(progress_timeout, w.flush()).await {
        Err(_) => Err(PushError::Timeout {
            after: progress_timeout,
        }),
        Ok(Err(e)) => Err(PushError::io("writing to the destination failed", e)),
        Ok(Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// On tokio's paused clock: no time passes between the calls, whatever the machine.
    #[tokio::test(start_paused = true)]
    async fn write_ticks_are_on_a_shared_grid() {
        let w = Duration::from_millis(40);
        let now = Instant::now();
        let a = next_write_tick(w);
        tokio::time::advance(Duration::from_millis(7)).await;
        let b = next_write_tick(w);
        assert!(a >= now + w / 2 && a <= now + w * 3 / 2, "{:?}", a - now);
        // Both on the grid: equal, or whole intervals apart.
        let d = b.duration_since(a).as_nanos() % w.as_nanos();
        assert_eq!(d, 0);
    }

    #[tokio::test]
    async fn vectored_writes_deliver_everything_in_order() {
        let (mut a, mut b) = tokio::io::duplex(100);
        let segments: Vec<Bytes> = (0u8..50)
            .map(|i| Bytes::from(vec![i; usize::from(i % 7) * 13]))
            .collect();
        let want: Vec<u8> = segments.iter().flat_map(|s| s.iter().copied()).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.map(|_| got)
        });
        write_segments(&mut a, &segments, Duration::from_secs(5))
            .await
            .expect("written");
        drop(a);
        let got = reader.await.expect("joined").expect("read");
        assert_eq!(got, want);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_times_out() {
        let (mut a, _b) = tokio::io::duplex(64);
        let segments = vec![Bytes::from(vec![0u8; 1000])];
        let started = Instant::now();
        let e = write_segments(&mut a, &segments, Duration::from_millis(200))
            .await
            .expect_err("times out");
        assert!(matches!(e, PushError::Timeout { .. }), "{e}");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(200),
            "after the progress timeout"
        );
    }
}
