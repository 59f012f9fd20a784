//! SRT caller connections through the `srt-tokio` crate (pure Rust, no libsrt).
//!
//! srt-tokio speaks SRT v1.4 handshakes (HSv5) and live mode, which is what libsrt's
//! listener (ffmpeg `srt://...?mode=listener`, SRT gateways, cloud ingest) expects; the
//! tests check it against ffmpeg's libsrt. We only configure it here; the MPEG-TS
//! datagrams and their pacing are the same as for UDP (`ts.rs`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use srt_tokio::SrtSocket;
use tokio::time::{Instant, timeout_at};

use super::PushConfig;
use super::error::{PushError, io_cause};
use super::net::resolve;
use pushcast_proto::destination::SrtOptions;

/// Connects to an SRT listener as a caller. The handshake is bounded by the connect
/// timeout; a listener's explicit rejection (wrong stream id or passphrase) is
/// [`PushError::Rejected`].
pub(crate) async fn connect(
    host: &str,
    port: u16,
    options: &SrtOptions,
    cfg: &PushConfig,
) -> Result<(SrtSocket, SocketAddr), PushError> {
    let deadline = Instant::now() + cfg.connect_timeout;
    let addrs = resolve(host, port, deadline).await?;
    // srt-tokio calls one address; prefer IPv4 like most SRT tools do.
    let Some(remote) = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
    else {
        return Err(PushError::Connect {
            target: format!("{host}:{port}"),
            cause: "cannot resolve host: no address".into(),
        });
    };
    let local_ip: IpAddr = if remote.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let connect_timeout = cfg.connect_timeout;
    // After close, deliver what is buffered for at most the send timeout, not the
    // library's default of 180 s.
    let linger = cfg.send_timeout;
    let mut builder = SrtSocket::builder().local_ip(local_ip).set(|o| {
        o.connect.timeout = connect_timeout;
        o.connect.linger = Some(linger);
    });
    if let Some(latency) = options.latency {
        builder = builder.latency(latency);
    }
    if let Some(passphrase) = &options.passphrase {
        // Both were validated when the url was parsed (srt-tokio panics otherwise):
        // 10..=79 characters, key size 16/24/32.
        builder = builder.encryption(options.key_size.unwrap_or(16), passphrase.clone());
    }
    let target = remote.to_string();
    // A small grace on top: srt-tokio checks its own timeout only on its 100 ms tick.
    let outer = deadline + std::time::Duration::from_millis(500);
    match timeout_at(outer, builder.call(remote, options.stream_id.as_deref())).await {
        Err(_) => Err(timed_out(target, cfg)),
        Ok(Ok(socket)) => Ok((socket, remote)),
        Ok(Err(e)) => Err(classify(target, &e, cfg)),
    }
}

fn timed_out(target: String, cfg: &PushConfig) -> PushError {
    PushError::Connect {
        target,
        cause: format!(
            "no answer to the SRT handshake within {} ms (no listener there?)",
            cfg.connect_timeout.as_millis()
        ),
    }
}

fn classify(target: String, e: &io::Error, cfg: &PushConfig) -> PushError {
    match e.kind() {
        // srt-tokio reports a listener's rejection packet as ConnectionRefused with the
        // rejection reason as the message.
        io::ErrorKind::ConnectionRefused => PushError::Rejected {
            code: "SRT.Rejected".into(),
            description: e.to_string(),
        },
        io::ErrorKind::TimedOut => timed_out(target, cfg),
        io::ErrorKind::InvalidInput => PushError::InvalidDestination(format!("SRT options: {e}")),
        _ => PushError::Connect {
            target,
            cause: format!("SRT handshake failed: {}", io_cause(e)),
        },
    }
}
