//! MPEG-TS pushes: `udp://` and `srt://` (paced 1316-byte datagrams) and `tcp://` (a
//! plain byte stream).
//!
//! Frames are muxed by [`TsMuxer`] (which rebases their timestamps with the one
//! [`pushcast_media::Rebaser`]) into a buffer, and sent:
//! - datagrams leave when [`TsPacer`] says they are due, so a keyframe is spread over a
//!   frame interval instead of bursting into the receiver's socket buffer;
//! - TCP writes each batch of ready frames at once: the source's real-time rate is the
//!   pacing, TCP's flow control does the rest.
//!
//! A codec the muxer cannot carry ends the session with [`PushError::Unsupported`]; a
//! single malformed frame is skipped and counted in `dropped_frames`.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use srt_tokio::SrtSocket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};

use super::error::PushError;
use super::net::{connect_tcp, next_write_tick, resolve, write_buf};
use super::{Ctx, SessionEnd, SessionEvent, TrackSelection};
use pushcast_media::Frame;
use pushcast_mpegts::{Pace, PacerConfig, TsMuxer, TsPacer, TsTracks};
use pushcast_proto::destination::SrtOptions;

/// Frames → TS bytes for one session.
struct TsStage {
    mux: TsMuxer,
    tracks: TrackSelection,
}

impl TsStage {
    fn new(tracks: TrackSelection) -> TsStage {
        TsStage {
            mux: TsMuxer::new(TsTracks {
                video: tracks.video.any(),
                audio: tracks.audio.any(),
            }),
            tracks,
        }
    }

    /// Muxes one frame, appending to `out`; returns the bytes appended.
    fn push(
        &mut self,
        frame: &Frame,
        out: &mut Vec<u8>,
        ctx: &Ctx<'_>,
    ) -> Result<usize, PushError> {
        // Metadata has no place in the TS; unselected tracks are not even rebased.
        if frame.kind == pushcast_media::FrameKind::Data {
            return Ok(0);
        }
        let Some(frame) = self.tracks.outgoing(frame) else {
            return Ok(0);
        };
        let before = out.len();
        let jumps = self.mux.stats().timestamp_discontinuities;
        let result = self.mux.push(&frame, out);
        let bridged = self.mux.stats().timestamp_discontinuities;
        if bridged != jumps {
            tracing::info!(count = bridged, "source timestamp jump bridged");
        }
        match result {
            Ok(()) => {}
            Err(e) if e.is_unsupported() => return Err(PushError::Unsupported(e.to_string())),
            Err(e) => {
                tracing::debug!(error = %e, "skipping a frame the TS muxer refused");
                ctx.counters.add_dropped(1);
                return Ok(0);
            }
        }
        let added = out.len() - before;
        if added > 0 {
            ctx.counters.add_sent(0, 1);
            ctx.counters
                .add_pictures(u64::from(super::is_picture(&frame)));
        }
        Ok(added)
    }
}

/// What [`mux_batch`] did.
struct Drained {
    /// Frames taken from the source.
    frames: usize,
    /// The source ended.
    ended: bool,
}

/// Muxes `first` (the frame that woke the session, if any) and everything already
/// waiting behind it (bounded) into `out`; tells the pacer about each muxed piece when
/// there is one.
fn mux_batch(
    first: Option<Frame>,
    stage: &mut TsStage,
    out: &mut Vec<u8>,
    mut pacer: Option<&mut TsPacer>,
    ctx: &mut Ctx<'_>,
) -> Result<Drained, PushError> {
    let start = out.len();
    let mut next = first;
    let mut frames = 0usize;
    loop {
        if let Some(frame) = next.take() {
            let added = stage.push(&frame, out, ctx)?;
            if let (Some(p), Some(clock)) = (pacer.as_deref_mut(), stage.mux.clock_90k()) {
                p.muxed(clock, added);
            }
            frames += 1;
        }
        if frames >= ctx.cfg.max_batch_frames || out.len() - start >= ctx.cfg.max_batch_bytes {
            return Ok(Drained {
                frames,
                ended: false,
            });
        }
        match ctx.source.try_next_frame() {
            Some(Some(frame)) => next = Some(frame),
            Some(None) => {
                return Ok(Drained {
                    frames,
                    ended: true,
                });
            }
            None => {
                return Ok(Drained {
                    frames,
                    ended: false,
                });
            }
        }
    }
}

pub(crate) async fn run_tcp(
    host: &str,
    port: u16,
    ctx: &mut Ctx<'_>,
) -> Result<SessionEnd, PushError> {
    let cancel = ctx.cancel.clone();
    let mut stream = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
        r = connect_tcp(host, port, ctx.cfg.connect_timeout) => r?,
    };
    let peer = stream.peer_addr().ok();
    tracing::info!(?peer, "TS over TCP connected");
    (ctx.events)(SessionEvent::Connected { peer });

    let mut stage = TsStage::new(ctx.tracks);
    let mut out = Vec::with_capacity(64 * 1024);
    let mut rbuf = [0u8; 512];
    // As for RTMP: after a write, let frames gather for `write_interval`.
    let mut hold_until: Option<Instant> = None;
    loop {
        let hold = hold_until.filter(|t| *t > Instant::now());
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let _ = timeout(Duration::from_millis(200), stream.shutdown()).await;
                return Ok(SessionEnd::Cancelled);
            }
            // The receiver sends nothing; a read only tells us it went away.
            r = stream.read(&mut rbuf) => match r {
                Ok(0) => return Err(PushError::closed_by_peer()),
                Ok(_) => continue,
                Err(e) => return Err(PushError::io("the destination connection failed", e)),
            },
            _ = sleep_until_some(hold), if hold.is_some() => None,
            f = ctx.source.next_frame(), if hold.is_none() => match f {
                None => Some(None),
                Some(frame) => Some(Some(frame)),
            },
        };
        let drained = match first {
            Some(None) => Drained {
                frames: 0,
                ended: true,
            },
            Some(Some(frame)) => mux_batch(Some(frame), &mut stage, &mut out, None, ctx)?,
            None => mux_batch(None, &mut stage, &mut out, None, ctx)?,
        };
        if !out.is_empty() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
                r = write_buf(&mut stream, &out, ctx.cfg.send_timeout) => r?,
            }
            ctx.counters.add_sent(out.len() as u64, 0);
            out.clear();
        }
        hold_until = if drained.frames > 0 && !ctx.cfg.write_interval.is_zero() {
            Some(next_write_tick(ctx.cfg.write_interval))
        } else {
            None
        };
        if drained.ended {
            let _ = timeout(ctx.cfg.send_timeout, stream.shutdown()).await;
            return Ok(SessionEnd::SourceEnded);
        }
    }
}

/// Sleeps until the instant, or forever for `None` (a disabled `select!` branch).
async fn sleep_until_some(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Where paced datagrams go.
enum DatagramOut {
    Udp {
        socket: UdpSocket,
        /// Whether an ICMP "port unreachable" was already logged.
        refused_logged: bool,
    },
    Srt(Box<SrtSocket>),
}

impl DatagramOut {
    async fn send(&mut self, datagram: &[u8], send_timeout: Duration) -> Result<(), PushError> {
        match self {
            DatagramOut::Udp {
                socket,
                refused_logged,
            } => match socket.send(datagram).await {
                Ok(_) => Ok(()),
                // A connected UDP socket reports an earlier ICMP port-unreachable on a
                // later send. UDP has no connection: the receiver may start later (as
                // with ffmpeg), so keep sending.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    if !*refused_logged {
                        tracing::info!(
                            "UDP destination port unreachable (no receiver yet?); sending on"
                        );
                        *refused_logged = true;
                    }
                    Ok(())
                }
                Err(e) => Err(PushError::io("sending a UDP datagram failed", e)),
            },
            DatagramOut::Srt(socket) => {
                let item = (std::time::Instant::now(), Bytes::copy_from_slice(datagram));
                match timeout(send_timeout, socket.send(item)).await {
                    Err(_) => Err(PushError::Timeout {
                        after: send_timeout,
                    }),
                    Ok(Err(e)) => Err(PushError::io("the SRT connection failed", e)),
                    Ok(Ok(())) => Ok(()),
                }
            }
        }
    }

    /// Resolves when the transport is known to be dead (SRT: the connection closed or
    /// timed out); never for UDP.
    async fn closed(&mut self) -> PushError {
        match self {
            DatagramOut::Udp { .. } => std::future::pending().await,
            DatagramOut::Srt(socket) => loop {
                match socket.next().await {
                    // A caller that only sends gets no data; ignore any.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return PushError::io("the SRT connection failed", e),
                    None => {
                        return PushError::io(
                            "the SRT connection was closed by the destination or timed out",
                            std::io::Error::from(std::io::ErrorKind::ConnectionAborted),
                        );
                    }
                }
            },
        }
    }

    /// Closes the transport (SRT: shutdown handshake, bounded).
    async fn close(self, grace: Duration) {
        if let DatagramOut::Srt(mut socket) = self {
            let _ = timeout(grace, socket.close_and_finish()).await;
        }
    }

    /// Closes after the end of the stream. SRT: the receiver holds each packet for its
    /// latency (TSBPD) before handing it on, and libsrt drops what it still holds when
    /// the shutdown arrives; so wait that long first (bounded, and cancellable).
    async fn finish(self, grace: Duration, cancel: &tokio_util::sync::CancellationToken) {
        if let DatagramOut::Srt(socket) = &self {
            let settings = socket.settings();
            let hold = settings
                .send_tsbpd_latency
                .max(settings.recv_tsbpd_latency)
                .saturating_add(settings.rtt.saturating_mul(2))
                .saturating_add(Duration::from_millis(50))
                .min(Duration::from_secs(2));
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(hold) => {}
            }
        }
        self.close(grace).await;
    }
}

pub(crate) async fn run_udp(
    host: &str,
    port: u16,
    ctx: &mut Ctx<'_>,
) -> Result<SessionEnd, PushError> {
    let deadline = Instant::now() + ctx.cfg.connect_timeout;
    let addrs = resolve(host, port, deadline).await?;
    let mut last_err = None;
    for addr in addrs {
        let bind: std::net::SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = match UdpSocket::bind(bind).await {
            Ok(s) => s,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        if let Err(e) = socket.connect(addr).await {
            last_err = Some(e);
            continue;
        }
        tracing::info!(peer = %addr, "TS over UDP ready");
        (ctx.events)(SessionEvent::Connected { peer: Some(addr) });
        let out = DatagramOut::Udp {
            socket,
            refused_logged: false,
        };
        return run_datagrams(out, ctx).await;
    }
    Err(PushError::Connect {
        target: format!("{host}:{port}"),
        cause: last_err.map_or_else(
            || "no usable address".to_owned(),
            |e| super::error::io_cause(&e),
        ),
    })
}

pub(crate) async fn run_srt(
    host: &str,
    port: u16,
    options: &SrtOptions,
    ctx: &mut Ctx<'_>,
) -> Result<SessionEnd, PushError> {
    let cancel = ctx.cancel.clone();
    let (mut socket, peer) = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(SessionEnd::Cancelled),
        r = super::srt::connect(host, port, options, ctx.cfg) => r?,
    };
    tracing::info!(%peer, "SRT connected");
    (ctx.events)(SessionEvent::Connected { peer: Some(peer) });
    // SRT's own statistics (once a second): losses, retransmissions and drops, for the
    // push's health.
    let mut stats = Box::pin(socket.statistics().clone());
    let counters: &super::SessionCounters = ctx.counters;
    let run = run_datagrams(DatagramOut::Srt(Box::new(socket)), ctx);
    tokio::pin!(run);
    loop {
        tokio::select! {
            r = &mut run => return r,
            Some(st) = stats.next() => counters.set_srt(
                st.tx_loss_data,
                st.tx_retransmit_data,
                st.tx_dropped_data,
            ),
        }
    }
}

/// Compact the send buffer once this much of its front has been sent.
const COMPACT_AT: usize = 256 * 1024;

async fn run_datagrams(mut sink: DatagramOut, ctx: &mut Ctx<'_>) -> Result<SessionEnd, PushError> {
    let cancel = ctx.cancel.clone();
    let send_timeout = ctx.cfg.send_timeout;
    let grace = send_timeout.min(Duration::from_millis(500));
    let mut stage = TsStage::new(ctx.tracks);
    let mut pacer = TsPacer::new(PacerConfig::default());
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut sent = 0usize;
    let mut ended = false;
    loop {
        // Send every datagram that is due.
        let wait = loop {
            match pacer.poll(std::time::Instant::now()) {
                Pace::Send(n) => {
                    let Some(datagram) = out.get(sent..sent + n) else {
                        // The pacer only releases bytes recorded from `out`.
                        return Err(PushError::Protocol(
                            "TS pacer out of step with its buffer".into(),
                        ));
                    };
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => {
                            sink.close(grace).await;
                            return Ok(SessionEnd::Cancelled);
                        }
                        r = sink.send(datagram, send_timeout) => r?,
                    }
                    sent += n;
                    ctx.counters.add_sent(n as u64, 0);
                }
                Pace::Wait(d) => break Some(d),
                Pace::Idle => break None,
            }
        };
        if sent == out.len() {
            out.clear();
            sent = 0;
        } else if sent >= COMPACT_AT {
            out.drain(..sent);
            sent = 0;
        }
        // After `finish` the pacer always has a next step while bytes are pending; the
        // second condition only guards against waiting on nothing.
        if ended && (pacer.pending() == 0 || wait.is_none()) {
            sink.finish(send_timeout, &cancel).await;
            return Ok(SessionEnd::SourceEnded);
        }
        // While datagrams are waiting for their time, the source is not awaited: frames
        // that arrive meanwhile are picked up when the pacer wakes us (one wake-up per
        // datagram slot, not one more per frame).
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                sink.close(grace).await;
                return Ok(SessionEnd::Cancelled);
            }
            e = sink.closed() => return Err(e),
            _ = tokio::time::sleep(wait.unwrap_or_default()), if wait.is_some() => None,
            f = ctx.source.next_frame(), if wait.is_none() && !ended => Some(f),
        };
        let drained = match first {
            Some(None) => Drained {
                frames: 0,
                ended: true,
            },
            Some(Some(frame)) => {
                mux_batch(Some(frame), &mut stage, &mut out, Some(&mut pacer), ctx)?
            }
            None if ended => Drained {
                frames: 0,
                ended: true,
            },
            None => mux_batch(None, &mut stage, &mut out, Some(&mut pacer), ctx)?,
        };
        if drained.ended && !ended {
            ended = true;
            pacer.finish();
        }
    }
}
