//! RTMP and RTMPS pushes: the sans-IO [`ClientConnection`] driven over TCP or TLS.
//!
//! Phases: connect (TCP, then TLS for `rtmps`), negotiate (handshake, `connect`,
//! `createStream`, `publish` until `NetStream.Publish.Start`, bounded by the connect
//! timeout), then send. The sending loop waits for whichever comes first: cancellation,
//! bytes from the server (acks, pings, status: answered in the next write) or a frame.
//! After a frame it takes every frame that is already waiting (bounded), lets the
//! connection chunk them all, and writes the result with one vectored write: at 30 fps video plus
//! audio that is a few syscalls per frame interval per destination, however the frames
//! are chunked.

use std::net::SocketAddr;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::error::{PushError, io_cause};
use super::net::{connect_tcp, next_write_tick, write_segments};
use super::{Ctx, PushConfig, SessionEnd, SessionEvent};
use pushcast_media::Frame;
use pushcast_media::Rebaser;
use pushcast_proto::destination::RtmpTarget;
use pushcast_proto::secret::redact;
use pushcast_rtmp::{ClientConfig, ClientConnection, ClientEvent};

/// Read buffer per session. Once publishing, servers send little (acks, pings, status);
/// the handshake's 3 KiB S0+S1+S2 just takes a few reads. Every destination keeps one for
/// its whole life, so it is kept small.
const READ_BUF: usize = 512;

pub(crate) async fn run(target: &RtmpTarget, ctx: &mut Ctx<'_>) -> Result<SessionEnd, PushError> {
    let host_port = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let started = Instant::now();
    // Each phase is boxed on its own: a session lives for hours in `drive`, and should not
    // keep the connect phase's state (a TLS handshake's is the largest) beside it.
    let Some((stream, peer, deadline)) =
        Box::pin(connect(target, &host_port, ctx.cfg, ctx.cancel)).await?
    else {
        return Ok(SessionEnd::Cancelled);
    };
    let timeline = Timeline {
        started,
        connected: Instant::now(),
    };
    match stream {
        Connected::Plain(tcp) => {
            Box::pin(drive(
                tcp, peer, target, &host_port, deadline, timeline, ctx,
            ))
            .await
        }
        Connected::Tls(tls) => {
            Box::pin(drive(
                *tls, peer, target, &host_port, deadline, timeline, ctx,
            ))
            .await
        }
    }
}

/// A connection ready for the RTMP handshake.
enum Connected {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// TCP, then TLS for `rtmps`. Returns the stream, the peer address and the deadline for
/// the RTMP handshake; `None` when cancelled meanwhile.
async fn connect(
    target: &RtmpTarget,
    host_port: &str,
    cfg: &PushConfig,
    cancel: &CancellationToken,
) -> Result<Option<(Connected, Option<SocketAddr>, Instant)>, PushError> {
    let tcp = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(None),
        r = connect_tcp(&target.host, target.port, cfg.connect_timeout) => r?,
    };
    let peer = tcp.peer_addr().ok();
    // The TLS and RTMP handshakes up to Publish.Start get their own connect timeout.
    let deadline = Instant::now() + cfg.connect_timeout;
    if !target.tls {
        return Ok(Some((Connected::Plain(tcp), peer, deadline)));
    }
    let name = ServerName::try_from(target.host.clone()).map_err(|_| {
        PushError::InvalidDestination(format!("'{}' is not a valid TLS server name", target.host))
    })?;
    let connector = TlsConnector::from(cfg.tls.clone());
    let tls = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(None),
        r = timeout_at(deadline, connector.connect(name, tcp)) => match r {
            Err(_) => {
                return Err(PushError::Connect {
                    target: host_port.to_owned(),
                    cause: format!(
                        "TLS handshake timed out after {} ms",
                        cfg.connect_timeout.as_millis()
                    ),
                });
            }
            Ok(Err(e)) => return Err(super::tls::handshake_error(host_port, &e)),
            Ok(Ok(tls)) => tls,
        },
    };
    Ok(Some((Connected::Tls(Box::new(tls)), peer, deadline)))
}

/// When an attempt began and when its connection (TCP, and TLS for `rtmps`) was up: the
/// start of its timeline, logged with `RTMP publish started` and `first frame sent`.
#[derive(Clone, Copy)]
struct Timeline {
    started: Instant,
    connected: Instant,
}

impl Timeline {
    fn ms_since(at: Instant) -> f64 {
        (Instant::now() - at).as_secs_f64() * 1000.0
    }
}

/// Frames and payload bytes queued since the last write.
#[derive(Default)]
struct Batch {
    frames: u64,
    bytes: u64,
    /// Video pictures among the frames (the push's frame rate).
    pictures: u64,
}

/// A push connection whose TCP socket can be asked for quick ACKs (plain or TLS).
///
/// While negotiating, the server answers `connect` with several small messages; a
/// server with Nagle on (nginx-rtmp) holds the later ones until the first is
/// acknowledged, and Linux delays that ACK by up to 40 ms: the whole difference between
/// a 45 ms and a 5 ms publish on loopback. Quick-ACK mode is not sticky (the kernel
/// leaves it on its own), so it is asked for again before each read.
trait QuickAck {
    fn quick_ack(&self);
}

fn quick_ack_tcp(tcp: &TcpStream) {
    // Only an optimisation: a socket that refuses it still works.
    let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
}

impl QuickAck for TcpStream {
    fn quick_ack(&self) {
        quick_ack_tcp(self);
    }
}

impl QuickAck for TlsStream<TcpStream> {
    fn quick_ack(&self) {
        quick_ack_tcp(self.get_ref().0);
    }
}

/// In-memory streams (tests) have no ACKs to hurry.
#[cfg(test)]
impl QuickAck for tokio::io::DuplexStream {
    fn quick_ack(&self) {}
}

/// `lastError` for a destination that does not take the stream's codecs: names them
/// (`HEVC ('hvc1')`) and what the destination listed.
fn codecs_refused(missing: &[String], takes: &[String]) -> String {
    let named: Vec<String> = missing
        .iter()
        .map(|cc| {
            let mut b = [b'?'; 4];
            for (i, c) in cc.bytes().take(4).enumerate() {
                b[i] = c;
            }
            let name = pushcast_media::VideoCodec::FourCc(b)
                .name()
                .or_else(|| pushcast_media::AudioCodec::FourCc(b).name())
                .unwrap_or("unknown codec");
            format!("{name} ('{}')", pushcast_media::codec::printable(b))
        })
        .collect();
    let listed: Vec<String> = takes
        .iter()
        .map(|t| t.chars().filter(|c| c.is_ascii_graphic()).take(8).collect())
        .collect();
    format!(
        "the destination does not take {}: its connect answer lists only {}",
        named.join(" and "),
        listed.join(", ")
    )
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin + QuickAck>(
    mut stream: S,
    peer: Option<SocketAddr>,
    target: &RtmpTarget,
    host_port: &str,
    deadline: Instant,
    timeline: Timeline,
    ctx: &mut Ctx<'_>,
) -> Result<SessionEnd, PushError> {
    let mut config = ClientConfig::new(&target.app, &target.tc_url, &target.stream_name);
    config.chunk_size = ctx.cfg.rtmp_chunk_size;
    config.four_cc_list = ctx.tracks.four_cc_names();
    let mut conn = ClientConnection::new(config);
    let mut rbuf = vec![0u8; READ_BUF];
    let cancel = ctx.cancel.clone();
    let send_timeout = ctx.cfg.send_timeout;

    // Negotiate until the publish starts.
    let mut connect_answered = false;
    loop {
        if !flush(&mut stream, &mut conn, send_timeout, &cancel).await? {
            return Ok(SessionEnd::Cancelled);
        }
        stream.quick_ack();
        let n = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                close(&mut stream, &mut conn, send_timeout).await;
                return Ok(SessionEnd::Cancelled);
            }
            r = timeout_at(deadline, stream.read(&mut rbuf)) => match r {
                Err(_) => {
                    let stage = if connect_answered { "publish" } else { "RTMP handshake/connect" };
                    return Err(PushError::Connect {
                        target: host_port.to_owned(),
                        cause: format!(
                            "no answer to the {stage} within {} ms",
                            ctx.cfg.connect_timeout.as_millis()
                        ),
                    });
                }
                Ok(Err(e)) => {
                    return Err(PushError::Connect {
                        target: host_port.to_owned(),
                        cause: format!("reading the RTMP handshake failed: {}", io_cause(&e)),
                    });
                }
                Ok(Ok(0)) if connect_answered => {
                    // What Twitch and YouTube do with a wrong or busy key.
                    return Err(PushError::Rejected {
                        code: "NetStream.Publish.Rejected".into(),
                        description: "the server closed the connection in answer to publish \
                                      (invalid or already used stream key?)"
                            .into(),
                    });
                }
                Ok(Ok(0)) => {
                    return Err(PushError::Connect {
                        target: host_port.to_owned(),
                        cause: "the server closed the connection during the RTMP handshake"
                            .into(),
                    });
                }
                Ok(Ok(n)) => n,
            },
        };
        let mut published = false;
        let events = conn
            .handle_input(&rbuf[..n])
            .map_err(|e| scrub_error(e.into(), &target.stream_name))?;
        for event in events {
            match event {
                ClientEvent::DestinationCodecs(takes) => {
                    // A destination that says what it takes and lacks a codec of the
                    // stream would fail to decode it: said, not sent.
                    let missing: Vec<String> = ctx
                        .tracks
                        .four_cc_names()
                        .into_iter()
                        .filter(|cc| !takes.iter().any(|t| t == cc || t == "*"))
                        .collect();
                    if !missing.is_empty() {
                        close(&mut stream, &mut conn, send_timeout).await;
                        return Err(PushError::Unsupported(codecs_refused(&missing, &takes)));
                    }
                }
                ClientEvent::Connected => connect_answered = true,
                ClientEvent::Published { .. } => published = true,
                ClientEvent::Status {
                    code, description, ..
                } => {
                    let description = scrub(&description, &target.stream_name);
                    tracing::debug!(%code, %description, "RTMP status");
                    (ctx.events)(SessionEvent::Status { code, description });
                }
            }
        }
        if published {
            break;
        }
    }
    tracing::info!(
        peer = ?peer,
        connect_ms = (timeline.connected - timeline.started).as_secs_f64() * 1000.0,
        negotiate_ms = Timeline::ms_since(timeline.connected),
        "RTMP publish started"
    );
    let mut first_frame = true;
    (ctx.events)(SessionEvent::Connected { peer });

    let mut rebaser = Rebaser::default();
    let mut source_ended = false;
    // After a write, frames are left to gather until this instant (see
    // `PushConfig::write_interval`): the session then sleeps on one timer instead of
    // being woken by every frame the source queues.
    let mut hold_until: Option<Instant> = None;
    loop {
        let mut batch = Batch::default();
        let hold = hold_until.filter(|t| *t > Instant::now());
        let woke = match hold {
            Some(until) => tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    close(&mut stream, &mut conn, send_timeout).await;
                    return Ok(SessionEnd::Cancelled);
                }
                r = stream.read(&mut rbuf) => Wake::Input(r),
                _ = tokio::time::sleep_until(until) => Wake::Timer,
            },
            None => tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    close(&mut stream, &mut conn, send_timeout).await;
                    return Ok(SessionEnd::Cancelled);
                }
                r = stream.read(&mut rbuf) => Wake::Input(r),
                f = ctx.source.next_frame() => Wake::Frame(f),
            },
        };
        match woke {
            Wake::Input(Ok(0)) => return Err(PushError::closed_by_peer()),
            Wake::Input(Err(e)) => {
                return Err(PushError::io("reading from the destination failed", e));
            }
            Wake::Input(Ok(n)) => {
                let events = conn
                    .handle_input(&rbuf[..n])
                    .map_err(|e| scrub_error(e.into(), &target.stream_name))?;
                for event in events {
                    if let ClientEvent::Status {
                        code, description, ..
                    } = event
                    {
                        let description = scrub(&description, &target.stream_name);
                        tracing::info!(%code, %description, "RTMP status from the destination");
                        (ctx.events)(SessionEvent::Status { code, description });
                    }
                }
            }
            Wake::Timer => {
                source_ended = drain(&mut conn, &mut rebaser, ctx, &mut batch)?;
                if batch.frames == 0 {
                    // Nothing came during the window: wait for the next frame itself.
                    hold_until = None;
                }
            }
            Wake::Frame(None) => source_ended = true,
            Wake::Frame(Some(frame)) => {
                queue(&mut conn, &mut rebaser, ctx, &frame, &mut batch)?;
                source_ended = drain(&mut conn, &mut rebaser, ctx, &mut batch)?;
            }
        }
        if source_ended {
            conn.unpublish()?;
        }
        if !flush(&mut stream, &mut conn, send_timeout, &cancel).await? {
            return Ok(SessionEnd::Cancelled);
        }
        if batch.frames > 0 && !ctx.cfg.write_interval.is_zero() {
            hold_until = Some(next_write_tick(ctx.cfg.write_interval));
        }
        ctx.counters.add_sent(batch.bytes, batch.frames);
        ctx.counters.add_pictures(batch.pictures);
        if first_frame && batch.frames > 0 {
            first_frame = false;
            tracing::debug!(
                since_attempt_ms = Timeline::ms_since(timeline.started),
                frames = batch.frames,
                "first frame sent"
            );
        }
        if source_ended {
            let _ = timeout(send_timeout, stream.shutdown()).await;
            return Ok(SessionEnd::SourceEnded);
        }
    }
}

/// Writes what the connection has queued; false when cancelled meanwhile (mid-write
/// there is no clean way to say goodbye: the caller just drops the socket).
async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    conn: &mut ClientConnection,
    send_timeout: std::time::Duration,
    cancel: &CancellationToken,
) -> Result<bool, PushError> {
    let out = conn.take_outbound();
    if out.is_empty() {
        return Ok(true);
    }
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Ok(false),
        r = write_segments(stream, &out, send_timeout) => r.map(|()| true),
    }
}

/// Queues every frame that is ready now, up to the batch bounds. Returns whether the
/// source ended.
fn drain(
    conn: &mut ClientConnection,
    rebaser: &mut Rebaser,
    ctx: &mut Ctx<'_>,
    batch: &mut Batch,
) -> Result<bool, PushError> {
    while batch.frames < ctx.cfg.max_batch_frames as u64
        && conn.outbound_len() < ctx.cfg.max_batch_bytes
    {
        match ctx.source.try_next_frame() {
            Some(Some(frame)) => queue(conn, rebaser, ctx, &frame, batch)?,
            Some(None) => return Ok(true),
            None => break,
        }
    }
    Ok(false)
}

enum Wake {
    Input(std::io::Result<usize>),
    Frame(Option<Frame>),
    Timer,
}

/// Filters, re-stamps and chunks one frame into the session's outbound buffer.
fn queue(
    conn: &mut ClientConnection,
    rebaser: &mut Rebaser,
    ctx: &Ctx<'_>,
    frame: &Frame,
    batch: &mut Batch,
) -> Result<(), PushError> {
    let Some(frame) = ctx.tracks.outgoing(frame) else {
        return Ok(());
    };
    let jumps = rebaser.discontinuities();
    let stamped = Frame {
        timestamp_ms: rebaser.map_wire(&frame),
        ..frame
    };
    if rebaser.discontinuities() != jumps {
        tracing::info!(
            count = rebaser.discontinuities(),
            "source timestamp jump bridged"
        );
    }
    conn.send_frame(&stamped)?;
    batch.frames += 1;
    batch.bytes += stamped.payload.len() as u64;
    batch.pictures += u64::from(super::is_picture(&stamped));
    Ok(())
}

/// Ends the publish politely (`FCUnpublish` + `deleteStream`) and closes the stream,
/// spending at most a short moment on it: cancellation must be prompt, and a destination
/// that does not read gets no goodbye.
async fn close<S: AsyncWrite + Unpin>(
    stream: &mut S,
    conn: &mut ClientConnection,
    send_timeout: std::time::Duration,
) {
    if conn.unpublish().is_err() {
        return;
    }
    let grace = send_timeout.min(std::time::Duration::from_millis(500));
    let out = conn.take_outbound();
    if write_segments(stream, &out, grace).await.is_ok() {
        let _ = timeout(grace, stream.shutdown()).await;
    }
}

/// Servers echo the stream name in status descriptions ("KEY is now published."): the
/// key must not reach logs or `lastError` in full.
fn scrub(text: &str, stream_name: &str) -> String {
    let bare = stream_name.split('?').next().unwrap_or_default();
    if bare.is_empty() {
        return text.to_owned();
    }
    text.replace(stream_name, &redact(stream_name))
        .replace(bare, &redact(bare))
}

fn scrub_error(e: PushError, stream_name: &str) -> PushError {
    match e {
        PushError::Rejected { code, description } => PushError::Rejected {
            code,
            description: scrub(&description, stream_name),
        },
        PushError::Protocol(m) => PushError::Protocol(scrub(&m, stream_name)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::{NoFrames, SessionCounters, TrackSelection};

    /// Per destination, an RTMP push keeps `run` and the sending loop (`drive`) alive for
    /// hours: both stay small (the connect phase, TLS handshake included, is boxed apart
    /// and freed once connected).
    #[tokio::test]
    async fn an_rtmp_session_keeps_little_state() {
        let cfg = PushConfig::default();
        let cancel = CancellationToken::new();
        let counters = SessionCounters::default();
        let mut source = NoFrames;
        let mut events = |_: SessionEvent| {};
        let mut ctx = Ctx {
            tracks: TrackSelection::ALL,
            source: &mut source,
            counters: &counters,
            cfg: &cfg,
            cancel: &cancel,
            events: &mut events,
        };
        let target = RtmpTarget {
            tls: false,
            host: "127.0.0.1".into(),
            port: 1935,
            app: "live".into(),
            tc_url: "rtmp://127.0.0.1/live".into(),
            stream_name: "key".into(),
        };
        let run_size = std::mem::size_of_val(&run(&target, &mut ctx));
        assert!(run_size <= 256, "run takes {run_size} bytes");
        let (stream, _peer) = tokio::io::duplex(64);
        let timeline = Timeline {
            started: Instant::now(),
            connected: Instant::now(),
        };
        let drive_size = std::mem::size_of_val(&drive(
            stream,
            None,
            &target,
            "x",
            Instant::now(),
            timeline,
            &mut ctx,
        ));
        assert!(drive_size <= 2048, "drive takes {drive_size} bytes");
    }

    #[test]
    fn stream_keys_are_scrubbed_from_server_texts() {
        let key = "live_123456789_abcdef?token=xyz";
        assert_eq!(
            scrub("live_123456789_abcdef is now published.", key),
            "live… is now published."
        );
        let e = scrub_error(
            PushError::Rejected {
                code: "NetStream.Publish.BadName".into(),
                description: format!("{key} already publishing"),
            },
            key,
        );
        assert_eq!(
            e.to_string(),
            "destination rejected the stream key: NetStream.Publish.BadName: live… already publishing"
        );
    }
}
