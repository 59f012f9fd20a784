//! SRT ingest: encoders (hardware boxes, vMix, OBS, ffmpeg) publish MPEG-TS over SRT to
//! `--srt-addr`. The stream id says where, in the SRT access-control form
//! `#!::r=APP/STREAM_OR_KEY,m=publish` (with an optional `h=HOST`, which picks the vhost
//! as a tcUrl's host does) or plainly `APP/STREAM_OR_KEY`. The publish goes through the
//! same admission as an RTMP one ([`Ingest::admit`]: app, publish key, authorization
//! callback, a stream live elsewhere, publish callbacks, connection limits); the TS is
//! demuxed into the same frames ([`pushcast_mpegts::TsDemuxer`]), so every destination
//! type works from an SRT source. A refusal is an SRT rejection with a reason code
//! (`2403` forbidden for a bad key, `2404` for an unknown app, `2409` for a stream in
//! use, `2400` for a bad stream id) and is counted like RTMP's.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use pushcast_mpegts::TsDemuxer;
use pushcast_rtmp::{ConnectInfo, PublishRequest};
use srt_protocol::options::{KeySize, Passphrase};
use srt_protocol::settings::KeySettings;
use srt_tokio::access::{RejectReason, ServerRejectReason};
use srt_tokio::options::StreamId;
use srt_tokio::{ConnectionRequest, SrtListener};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{AppConfig, FORWARD_APP, IDLE_TIMEOUT, Ingest, Refusal, keys, redact};

/// Where an SRT publisher wants to publish, from its stream id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtTarget {
    pub app: String,
    /// The stream name, or the publish key.
    pub name: String,
    /// What followed `?` in the name.
    pub query: Option<String>,
    /// `h=` of the access-control form.
    pub host: Option<String>,
}

/// Reads an SRT stream id: `#!::r=APP/NAME,m=publish[,h=HOST]` (keys in any order; `m`
/// must be `publish` when given) or `APP/NAME[?query]`.
pub fn parse_stream_id(id: &str) -> Result<SrtTarget, String> {
    let (resource, host) = match id.strip_prefix("#!::") {
        Some(pairs) => {
            let (mut r, mut h) = (None, None);
            for pair in pairs.split(',') {
                // The text is not quoted: it may be a publish key.
                let (k, v) = pair
                    .split_once('=')
                    .ok_or("stream id: an entry is not key=value")?;
                match k.trim() {
                    "r" => r = Some(v.trim()),
                    "h" => h = Some(v.trim().to_string()),
                    "m" if v.trim() == "publish" => {}
                    "m" => {
                        return Err(format!(
                            "stream id: mode {:?}: this ingest takes publishers only (m=publish)",
                            v.trim()
                        ));
                    }
                    // u (user), s (session), t (type) and custom keys: not used.
                    _ => {}
                }
            }
            (
                r.ok_or("stream id: no r= (the resource APP/STREAM_OR_KEY)")?,
                h,
            )
        }
        None => (id.trim(), None),
    };
    let (app, rest) = resource
        .trim_start_matches('/')
        .split_once('/')
        .ok_or("stream id: the resource must be APP/STREAM_OR_KEY")?;
    let (name, query) = match rest.split_once('?') {
        Some((n, q)) => (n, Some(q.to_string())),
        None => (rest, None),
    };
    if app.is_empty() || name.is_empty() {
        return Err("stream id: empty app or stream".into());
    }
    Ok(SrtTarget {
        app: app.to_string(),
        name: name.to_string(),
        query,
        host,
    })
}

/// The SRT rejection for a refusal.
fn reject_reason(r: &Refusal) -> RejectReason {
    RejectReason::Server(match r {
        Refusal::NoApp(_) | Refusal::BadForwardName => ServerRejectReason::Notfound,
        Refusal::UnknownKey(_) | Refusal::Unauthorized(_) | Refusal::ForwardToken => {
            ServerRejectReason::Forbidden
        }
        Refusal::StreamInUse(_)
        | Refusal::StreamHeld { .. }
        | Refusal::BackupTaken(_)
        | Refusal::NoPrimary { .. } => ServerRejectReason::Conflict,
        Refusal::Unavailable(_) => ServerRejectReason::Down,
        Refusal::Internal(_) => ServerRejectReason::InternalServerError,
    })
}

/// SRT listener settings.
#[derive(Debug, Clone)]
pub struct SrtIngestConfig {
    /// Required of every publisher when set (AES; 10 to 79 characters).
    pub passphrase: Option<String>,
    /// The receive latency (TSBPD): what SRT has to recover lost packets.
    pub latency: Duration,
}

impl Ingest {
    /// Binds the SRT listener; returns its address and a future that serves it.
    ///
    /// The passphrase is not set on the listener: each publisher is handed the key
    /// settings at its acceptance, with the key size its handshake named, because
    /// srt-protocol 0.4.4 panics (`unimplemented!`) in its listener task on a key size
    /// mismatch. A caller without a passphrase meeting ours is refused by the protocol
    /// (`Unsecure`). It also panics when a caller encrypts and the listener has no
    /// passphrase; a caller that names its key size is refused before that, one that
    /// uses the default size cannot be told apart. Should the task die (that, or a
    /// malformed handshake it does not expect), the listener is started again on the
    /// same address (`pushcast_ingest_srt_listener_restarts_total`), so the SRT ingest
    /// outlives it; publishers connected at that moment are cut off and reconnect.
    pub async fn bind_srt(
        self,
        addr: SocketAddr,
        config: SrtIngestConfig,
        accept_until: CancellationToken,
        shutdown: CancellationToken,
    ) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
        if let Some(pass) = &config.passphrase
            && !(10..=79).contains(&pass.len())
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "--srt-passphrase must be 10 to 79 characters",
            ));
        }
        let socket = UdpSocket::bind(addr).await?;
        let local = socket.local_addr()?;
        let latency = config.latency;
        let listen = move |socket: UdpSocket| {
            SrtListener::builder()
                .socket(socket)
                .latency(latency)
                .bind(local)
        };
        let first = listen(socket).await?;
        let passphrase = config.passphrase.clone();
        let serve = async move {
            let mut bound = Some(first);
            loop {
                let (mut listener, mut incoming) = match bound.take() {
                    Some(b) => b,
                    None => {
                        let again = match UdpSocket::bind(local).await {
                            Ok(socket) => listen(socket).await,
                            Err(e) => Err(e),
                        };
                        match again {
                            Ok(b) => b,
                            Err(e) => {
                                tracing::error!(error = %e, %local, "cannot start the SRT listener again; retrying in 1 s");
                                tokio::select! {
                                    _ = shutdown.cancelled() => return,
                                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                                }
                            }
                        }
                    }
                };
                loop {
                    let request = tokio::select! {
                        _ = accept_until.cancelled() => {
                            listener.close().await;
                            return;
                        }
                        _ = shutdown.cancelled() => {
                            listener.close().await;
                            return;
                        }
                        r = incoming.incoming().next() => match r {
                            Some(r) => r,
                            None => break,
                        },
                    };
                    let peer = request.remote();
                    let this = self.clone();
                    let stop = shutdown.child_token();
                    let pass = passphrase.clone();
                    tokio::spawn(
                        async move { this.srt_connection(request, pass, stop).await }
                            .instrument(tracing::info_span!("ingest", %peer, srt = true)),
                    );
                }
                metrics::counter!("pushcast_ingest_srt_listener_restarts_total").increment(1);
                tracing::error!(%local, "the SRT listener stopped unexpectedly; starting it again");
            }
        };
        Ok((local, serve))
    }

    /// The SRT passphrase of the app a publisher names (`None` when it has none, or
    /// when the app cannot be read: the admission says why then).
    async fn srt_passphrase_of(&self, target: &SrtTarget) -> Option<String> {
        let vhost = self.vhost_of(target.host.as_deref()).await.ok()?;
        let kv = self
            .store
            .get(&keys::app(&vhost, &target.app))
            .await
            .ok()??;
        serde_json::from_slice::<AppConfig>(&kv.value)
            .ok()?
            .srt_passphrase
    }

    async fn srt_connection(
        &self,
        request: ConnectionRequest,
        passphrase: Option<String>,
        shutdown: CancellationToken,
    ) {
        let peer = request.remote();
        let Some(slot) = self.slot(peer) else {
            let _ = request
                .reject(RejectReason::Server(ServerRejectReason::Overload))
                .await;
            return;
        };
        let id = request
            .stream_id()
            .map(StreamId::to_string)
            .unwrap_or_default();
        let target = match parse_stream_id(&id) {
            Ok(t) => t,
            Err(e) => {
                metrics::counter!("pushcast_ingest_refused_total", "reason" => "bad SRT stream id")
                    .increment(1);
                tracing::info!(%peer, error = %e, "SRT publish refused");
                let _ = request
                    .reject(RejectReason::Server(ServerRejectReason::BadRequest))
                    .await;
                return;
            }
        };
        // The worker-to-worker hop is RTMP only.
        if target.app == FORWARD_APP {
            let _ = request
                .reject(RejectReason::Server(ServerRejectReason::Notfound))
                .await;
            return;
        }
        // The key size the caller's handshake names (`Unspecified` also when it set none:
        // then AES-128). Ours must be the same (see `bind_srt`).
        let offered = request.key_size();
        // The app's own passphrase, else the ingest's.
        let passphrase = self.srt_passphrase_of(&target).await.or(passphrase);
        let key_settings = match &passphrase {
            Some(pass) => match Passphrase::try_from(pass.clone()) {
                Ok(passphrase) => Some(KeySettings {
                    key_size: offered,
                    passphrase,
                }),
                Err(_) => {
                    let _ = request
                        .reject(RejectReason::Server(
                            ServerRejectReason::InternalServerError,
                        ))
                        .await;
                    return;
                }
            },
            // An explicit key size from a caller of a plain ingest: refused here. (One
            // with the default size cannot be told apart before the listener sees its
            // keying material; see `bind_srt`.)
            None if offered != KeySize::Unspecified => {
                metrics::counter!("pushcast_ingest_refused_total", "reason" => "SRT encryption mismatch")
                    .increment(1);
                tracing::info!(%peer, "SRT publish refused: encryption offered, this ingest has no passphrase");
                let _ = request
                    .reject(RejectReason::Server(ServerRejectReason::Unauthorized))
                    .await;
                return;
            }
            None => None,
        };
        let tc_url = target
            .host
            .as_ref()
            .map(|h| format!("srt://{h}/{}", target.app));
        let req = PublishRequest {
            stream_id: 0,
            app: target.app.clone(),
            stream_name: target.name.clone(),
            query: target.query.clone(),
            publish_type: "live".into(),
            tc_url: tc_url.clone(),
            connect: ConnectInfo {
                app: target.app.clone(),
                tc_url,
                flash_ver: Some("SRT".into()),
                ..ConnectInfo::default()
            },
        };
        let published = match self.admit(&req, peer, None).await {
            Ok(p) => p,
            Err(r) => {
                metrics::counter!("pushcast_ingest_refused_total", "reason" => r.label())
                    .increment(1);
                tracing::info!(%peer, app = %req.app, stream = %redact(&req.stream_name), reason = %r, "SRT publish refused");
                let _ = request.reject(reject_reason(&r)).await;
                return;
            }
        };
        let mut socket = match request.accept(key_settings).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(error = %e, "SRT accept failed");
                self.unpublish(published, false, "the SRT connection did not complete")
                    .await;
                return;
            }
        };
        tracing::info!(stream = %published.source.key(), "SRT publish started");
        self.publishers.insert(&published.source, shutdown.clone());
        let mut demux = TsDemuxer::new();
        let mut frames = Vec::new();
        let (normal, why) = loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break (false, "disconnected".to_string()),
                r = tokio::time::timeout(IDLE_TIMEOUT, socket.next()) => r,
            };
            match next {
                Err(_) => break (false, format!("no data for {IDLE_TIMEOUT:?}")),
                Ok(None) => break (true, "the SRT connection closed".to_string()),
                Ok(Some(Err(e))) => break (false, format!("the SRT connection failed: {e}")),
                Ok(Some(Ok((_, data)))) => {
                    demux.push(&data, &mut frames);
                    for frame in frames.drain(..) {
                        published.source.publish(frame);
                    }
                }
            }
        };
        demux.finish(&mut frames);
        for frame in frames.drain(..) {
            published.source.publish(frame);
        }
        let stats = demux.stats();
        tracing::info!(
            video_frames = stats.video_frames,
            audio_frames = stats.audio_frames,
            skipped = stats.bad_packets + stats.dropped + stats.unsupported,
            %why,
            "SRT publish ended"
        );
        self.unpublish(published, normal, &why).await;
        drop(slot);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_in_both_forms() {
        let t = parse_stream_id("#!::r=live/KEY123,m=publish").unwrap();
        assert_eq!(
            (t.app.as_str(), t.name.as_str(), t.host),
            ("live", "KEY123", None)
        );
        let t = parse_stream_id("#!::m=publish,h=studio.example.com,r=app/cam?x=1").unwrap();
        assert_eq!(t.host.as_deref(), Some("studio.example.com"));
        assert_eq!((t.name.as_str(), t.query.as_deref()), ("cam", Some("x=1")));
        let t = parse_stream_id("app/cam").unwrap();
        assert_eq!((t.app.as_str(), t.name.as_str()), ("app", "cam"));
        for bad in [
            "",
            "app",
            "app/",
            "/cam",
            "#!::m=publish",
            "#!::r=app/cam,m=request",
            "#!::junk",
        ] {
            assert!(parse_stream_id(bad).is_err(), "{bad:?}");
        }
    }
}
