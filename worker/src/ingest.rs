//! RTMP ingest: encoders publish `rtmp://HOST:PORT/{app}/{stream}` here.
//!
//! One tokio task per connection drives a sans-IO [`ServerConnection`]; an accepted publish
//! becomes a [`Source`] in the [`Hub`] and a `streams/...` key in the store under the
//! worker's lease, which makes the stream live in the whole cluster (and unique in it: a
//! second publisher anywhere is refused with `ExistStreamName`). Malformed input closes
//! that one connection; nothing else is affected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushcast_proto::destination::Destination;
use pushcast_proto::keys;
use pushcast_proto::model::{
    AppConfig, FORWARD_APP, LiveStream, OutboxEntry, OutboxKind, Protocol, WorkerInfo,
};
use pushcast_proto::publish_keys::lookup_hash;
use pushcast_proto::secret::redact;
use pushcast_proto::time;
use pushcast_proto::vhosts::{self, VhostConfig};
use pushcast_runtime::CancellationToken;
use pushcast_store::{Compare, Op, Store, StoreError, Txn, WatchEvent};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What an ingest connection runs over: a TCP stream, or one wrapped in TLS (RTMPS).
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// How long an RTMPS client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
use tracing::Instrument;

use pushcast_proto::model::PublishCallback;
use pushcast_webhooks::{
    CloseMode, Dispatcher, Format, Payload, PublishEnd, PublishEvent, Target, host_from_tc_url,
    new_vdoid, parse_query,
};

use crate::hub::{AttachError, Continuity, Hub, HubError, Role, Source, SpliceStatus, StreamId};
use crate::ingest_limits::{IngestLimits, Slot};
use crate::lease::Lease;
use crate::stale;
use pushcast_media::{Frame, FrameKind, PacketType};
use pushcast_rtmp::{
    PublishRequest, RejectCode, RtmpError, ServerConfig, ServerConnection, ServerEvent,
};
use tokio::sync::watch;

/// An encoder that sends nothing for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection must have a publish admitted this soon after it was accepted (handshake,
/// `connect`, `createStream`, `publish` and the authorization callback take well under a
/// second): half-open handshakes and silent clients do not hold their place for long.
const ADMISSION_DEADLINE: Duration = Duration::from_secs(10);

/// Read buffer of a connection before its publish is admitted (commands are small), and
/// after (media).
const READ_BUF_BEFORE_ADMISSION: usize = 4 * 1024;
const READ_BUF_ADMITTED: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("rtmp: {0}")]
    Rtmp(#[from] RtmpError),
    #[error("no data for {0:?}")]
    Idle(Duration),
    #[error("no publish admitted within {0:?} of connecting")]
    NotPublishing(Duration),
}

impl IngestError {
    /// The `reason` of `pushcast_ingest_refused_total` when this ends a connection that
    /// was never admitted (the bounds an unadmitted peer ran into), if it is one.
    fn refusal_label(&self) -> Option<&'static str> {
        match self {
            IngestError::Rtmp(RtmpError::MessageTooLarge { .. }) => Some("message too large"),
            IngestError::Rtmp(RtmpError::TooManyChunkStreams(_)) => Some("too many chunk streams"),
            IngestError::Rtmp(RtmpError::TooMuchBuffered(_)) => Some("too much buffered"),
            IngestError::NotPublishing(_) => Some("no publish in time"),
            IngestError::Rtmp(_) => Some("protocol error"),
            IngestError::Io(_) | IngestError::Idle(_) => None,
        }
    }
}

pub mod srt;

/// What every ingest connection shares.
#[derive(Clone)]
pub struct Ingest {
    pub hub: Hub,
    pub store: Arc<dyn Store>,
    pub lease: Lease,
    pub node_id: String,
    /// Required on forward publishes into `_relay` (see [`crate::forward`]).
    pub forward_token: String,
    /// Live streams registered in the store by this worker: key → value, written again
    /// under a new lease if the old one was lost.
    pub published: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// Live publishes, to disconnect one on request.
    pub publishers: Publishers,
    /// Publishes refused for a bad publish key (for metrics and tests).
    pub refused: Arc<std::sync::atomic::AtomicU64>,
    /// Delivers the apps' publish callbacks.
    pub webhooks: Dispatcher,
    /// Connection caps and message bounds.
    pub limits: IngestLimits,
    /// How a backup whose primary is live on another worker is relayed there (the
    /// forwards' settings); `None`: such a backup is refused.
    pub backup_relay: Option<Arc<crate::reconnect::Settings>>,
}

/// The live publishes of this worker, by stream: each connection's token, cancelled to
/// disconnect it (a revoked key with `disconnect: true`).
#[derive(Clone, Default)]
pub struct Publishers(Arc<Mutex<HashMap<(StreamId, Role), CancellationToken>>>);

impl Publishers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(StreamId, Role), CancellationToken>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A publish of `source` is live on the connection `token` closes.
    pub(crate) fn insert(&self, source: &Source, token: CancellationToken) {
        self.lock()
            .insert((source.key().clone(), source.role()), token);
    }

    fn remove(&self, source: &Source) {
        self.lock().remove(&(source.key().clone(), source.role()));
    }

    /// How many publishes are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes the publishes of `key` (its primary and backup); false when none is live
    /// here.
    pub fn disconnect(&self, key: &StreamId) -> bool {
        let publishers = self.lock();
        let mut found = false;
        for role in [Role::Primary, Role::Backup] {
            if let Some(t) = publishers.get(&(key.clone(), role)) {
                t.cancel();
                found = true;
            }
        }
        found
    }
}

/// Why a publish is refused. The text goes to the encoder (the `onStatus` description)
/// and to the log; the metric label is [`Refusal::label`]. Error names are the seed's
/// (`NonExistApplication`, `ExistStreamName`, `AuthencationFailed` as it spells it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The app does not exist.
    #[error("NonExistApplication: {0}")]
    NoApp(String),
    /// The publish key is unknown or revoked; it holds the key redacted.
    #[error("AuthencationFailed: unknown stream key {0}")]
    UnknownKey(String),
    /// The app's authorization callback said no (or did not answer).
    #[error("AuthencationFailed: the authorization callback said no ({0})")]
    Unauthorized(String),
    /// A forward without the cluster's forward token.
    #[error("AuthencationFailed: forward token")]
    ForwardToken,
    /// A forward whose stream name does not name a stream.
    #[error("bad forward stream name")]
    BadForwardName,
    /// The stream is live already (here or on another worker).
    #[error("ExistStreamName: {0}")]
    StreamInUse(String),
    /// The stream is registered on a worker that did not answer, and its lease did not
    /// expire while the publisher was held.
    #[error(
        "ExistStreamName: {stream} is registered on worker {worker}, which did not answer, and its lease did not expire within {waited:?}"
    )]
    StreamHeld {
        stream: String,
        worker: String,
        waited: Duration,
    },
    /// A backup publish (`?backup=1`) of a stream whose primary is not live here.
    #[error("NoPrimary: a backup of {stream} is admitted only while its primary is live{}", match elsewhere {
        Some(w) => format!(" on this worker; it is live on worker {w}: publish the backup there"),
        None => String::new(),
    })]
    NoPrimary {
        stream: String,
        elsewhere: Option<String>,
    },
    /// A second backup publish of a stream.
    #[error("ExistStreamName: {0} has a backup publisher already")]
    BackupTaken(String),
    /// The store could not be asked.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Something stored is not what it should be.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Refusal {
    /// The `onStatus` code the encoder sees.
    pub fn code(&self) -> RejectCode {
        match self {
            Refusal::StreamInUse(_)
            | Refusal::StreamHeld { .. }
            | Refusal::BackupTaken(_)
            | Refusal::NoPrimary { .. } => RejectCode::BadName,
            _ => RejectCode::Denied,
        }
    }

    /// The `reason` label of `pushcast_ingest_refused_total` (the values dashboards have
    /// always seen).
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoApp(_) => "NonExistApplication",
            Refusal::UnknownKey(_) | Refusal::Unauthorized(_) | Refusal::ForwardToken => {
                "AuthencationFailed"
            }
            Refusal::BadForwardName => "bad relay stream name",
            Refusal::StreamInUse(_) | Refusal::StreamHeld { .. } | Refusal::BackupTaken(_) => {
                "ExistStreamName"
            }
            Refusal::NoPrimary { .. } => "NoPrimary",
            Refusal::Unavailable(_) => "service unavailable",
            Refusal::Internal(_) => "internal error",
        }
    }
}

impl Ingest {
    /// Accepts connections until `accept_until` (a drain begins: no new publishes), and
    /// serves them until `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        accept_until: CancellationToken,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(self.clone().reregister(shutdown.clone()));
        while let Some((sock, peer)) = accept(&listener, &accept_until, &shutdown, "ingest").await {
            let Some(slot) = self.slot(peer) else {
                continue;
            };
            let this = self.clone();
            let stop = shutdown.child_token();
            let conn = async move {
                this.connection(sock, peer, None, stop).await;
                drop(slot);
            };
            tokio::spawn(conn.instrument(tracing::info_span!("ingest", %peer)));
        }
    }

    /// Accepts RTMPS connections (`acceptor` wraps each before the RTMP connection; a failed
    /// handshake closes that one connection) until `accept_until`, serves them until
    /// `shutdown`.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        accept_until: CancellationToken,
        shutdown: CancellationToken,
    ) {
        while let Some((sock, peer)) = accept(&listener, &accept_until, &shutdown, "RTMPS").await {
            let Some(slot) = self.slot(peer) else {
                continue;
            };
            let (this, acceptor) = (self.clone(), acceptor.clone());
            let stop = shutdown.child_token();
            let conn = async move {
                let tls = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(sock)) => match r {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::info!(error = %e, "RTMPS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!("RTMPS handshake timed out");
                            return;
                        }
                    },
                };
                // The host name the encoder asked for (picks the vhost; IPs send none).
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                this.connection(tls, peer, sni, stop).await;
                drop(slot);
            };
            tokio::spawn(conn.instrument(tracing::info_span!("ingest", %peer, tls = true)));
        }
    }

    /// A place for a connection from `peer` under the limits; `None` (counted, logged at
    /// debug: a flood must not flood the log) when there is none, and the socket is
    /// dropped unanswered.
    fn slot(&self, peer: SocketAddr) -> Option<Slot> {
        match self.limits.take(peer.ip()) {
            Ok(slot) => Some(slot),
            Err(full) => {
                metrics::counter!("pushcast_ingest_refused_total", "reason" => full.label())
                    .increment(1);
                tracing::debug!(%peer, reason = %full, "ingest connection refused");
                None
            }
        }
    }

    /// Serves one connection to its end; why it ended is logged (and counted when the
    /// peer was never admitted and ran into a bound).
    async fn connection<S: Conn>(
        &self,
        mut sock: S,
        peer: SocketAddr,
        sni: Option<String>,
        shutdown: CancellationToken,
    ) {
        let mut buf = vec![0u8; READ_BUF_BEFORE_ADMISSION];
        // The connection does the handshake itself: it sees every byte from the first.
        // Until a publish is admitted, it takes only what commands need.
        let config = ServerConfig {
            decoder: pushcast_rtmp::DecoderConfig::commands_only(),
            ..ServerConfig::default()
        };
        let mut conn = ServerConnection::new(config);
        let mut live: Option<Published> = None;
        let mut admitted = false;
        let result = self
            .drive(
                &mut sock,
                &mut conn,
                &mut buf,
                peer,
                sni.as_deref(),
                &mut live,
                &mut admitted,
                &shutdown,
            )
            .await;
        if let Some(p) = live.take() {
            let why = match &result {
                Ok(()) => "connection closed".to_string(),
                Err(e) => e.to_string(),
            };
            self.unpublish(p, false, &why).await;
        }
        if let Err(e) = result {
            match e.refusal_label().filter(|_| !admitted) {
                Some(reason) => {
                    metrics::counter!("pushcast_ingest_refused_total", "reason" => reason)
                        .increment(1);
                    tracing::info!(%peer, error = %e, "ingest connection refused");
                }
                None => tracing::info!(error = %e, "ingest connection closed"),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn drive<S: Conn>(
        &self,
        sock: &mut S,
        conn: &mut ServerConnection,
        buf: &mut Vec<u8>,
        peer: SocketAddr,
        sni: Option<&str>,
        live: &mut Option<Published>,
        admitted: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<(), IngestError> {
        let deadline = tokio::time::Instant::now() + ADMISSION_DEADLINE;
        let mut input = Vec::new();
        loop {
            for event in conn.handle_input(&input)? {
                match event {
                    ServerEvent::PublishRequested(req) => match self.admit(&req, peer, sni).await {
                        Ok(p) => {
                            conn.accept_publish(req.stream_id)?;
                            // Admitted: frames may now be as large as configured.
                            if !*admitted {
                                *admitted = true;
                                conn.set_decoder_limits(self.limits.admitted());
                                buf.resize(READ_BUF_ADMITTED, 0);
                            }
                            self.publishers.insert(&p.source, shutdown.clone());
                            *live = Some(p);
                        }
                        Err(r) => {
                            metrics::counter!("pushcast_ingest_refused_total", "reason" => r.label())
                                .increment(1);
                            tracing::info!(%peer, app = %req.app, stream = %redact(&req.stream_name), reason = %r, "publish refused");
                            conn.reject_publish(req.stream_id, r.code(), &r.to_string())?;
                            flush(sock, conn).await?;
                            return Ok(());
                        }
                    },
                    ServerEvent::Media(frame) => {
                        if let Some(p) = live.as_ref() {
                            publish_split(&p.source, frame);
                        }
                    }
                    ServerEvent::PublishEnded { .. } => {
                        if let Some(p) = live.take() {
                            self.unpublish(p, true, "unpublished").await;
                        }
                    }
                    ServerEvent::Connected(_) => {}
                }
            }
            flush(sock, conn).await?;
            // Until admitted, the read waits at most until the admission deadline.
            let wait = if *admitted {
                IDLE_TIMEOUT
            } else {
                deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .min(IDLE_TIMEOUT)
            };
            let n = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = tokio::time::timeout(wait, sock.read(buf)) => match r {
                    Ok(r) => r?,
                    Err(_) if !*admitted => return Err(IngestError::NotPublishing(ADMISSION_DEADLINE)),
                    Err(_) => return Err(IngestError::Idle(IDLE_TIMEOUT)),
                },
            };
            if n == 0 {
                return Ok(());
            }
            input.clear();
            input.extend_from_slice(&buf[..n]);
        }
    }

    /// Writes the live streams again under a new lease (the old one expired while the
    /// store was out of reach; the encoders are still connected here).
    async fn reregister(self, shutdown: CancellationToken) {
        let mut changes = self.lease.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
            let lease = *changes.borrow_and_update();
            let entries: Vec<(String, Vec<u8>)> = self
                .lock_published()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (key, value) in entries {
                let record = serde_json::from_slice::<LiveStream>(&value).ok();
                let txn = Txn::new()
                    .when(Compare::Absent(key.clone()))
                    .and_then(Op::put_with_lease(key.clone(), value, lease));
                match self.store.txn(txn).await {
                    Ok(r) if r.succeeded => {}
                    // Another worker admitted the stream while this one was cut off or
                    // frozen (its lease expired or was revoked): the stream is live there
                    // now, so the publisher here is a stale one; end it.
                    Ok(_) => {
                        if let Some(l) = record {
                            tracing::warn!(app = %l.app, stream = %l.stream,
                                "the stream is live on another worker now; ending its publisher here");
                            self.publishers
                                .disconnect(&StreamId::new(l.vhost, l.app, l.stream));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot register a live stream under the new lease");
                    }
                }
            }
        }
    }

    fn lock_published(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The vhost that answers to `host` (`default` when none does). Read from the store
    /// at each publish: a few small keys, and a host name given to a vhost takes effect
    /// at the next publish on every worker.
    async fn vhost_of(&self, host: Option<&str>) -> Result<String, Refusal> {
        let listing = self
            .store
            .list(keys::VHOSTS)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let vhosts: Vec<VhostConfig> = listing
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        Ok(vhosts::resolve(&vhosts, host).to_string())
    }

    /// A forward from another worker: token checked, straight into the hub (the stream
    /// is registered in the cluster by its ingest worker, not here).
    fn admit_forward(&self, req: &PublishRequest) -> Result<Published, Refusal> {
        let token_ok = req
            .query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .any(|kv| kv.strip_prefix("token=") == Some(self.forward_token.as_str()));
        if !token_ok {
            return Err(Refusal::ForwardToken);
        }
        let key = crate::forward::parse_forward_stream_name(&req.stream_name)
            .ok_or(Refusal::BadForwardName)?;
        // A backup relayed from the worker its encoder reached (see `admit_backup`).
        let role = if is_backup(req.query.as_deref()) {
            Role::Backup
        } else {
            Role::Primary
        };
        let source = self
            .hub
            .publish_input(key, role, None)
            .map_err(|_| Refusal::StreamInUse(req.stream_name.clone()))?;
        tracing::info!(stream = %source.key(), role = role.as_str(), "forward publish started");
        Ok(Published {
            source,
            store_key: None,
            notify: None,
        })
    }

    /// Decides a publish: the app must exist in the vhost of the host the encoder used
    /// (`sni`, else the tcUrl's), and the stream must not be live anywhere.
    async fn admit(
        &self,
        req: &PublishRequest,
        peer: SocketAddr,
        sni: Option<&str>,
    ) -> Result<Published, Refusal> {
        if req.app == FORWARD_APP {
            return self.admit_forward(req);
        }
        let tc_host = req.tc_url.as_deref().and_then(host_from_tc_url);
        let vhost = self.vhost_of(sni.or(tc_host.as_deref())).await?;
        let app_key = keys::app(&vhost, &req.app);
        let app: AppConfig = match self.store.get(&app_key).await {
            Ok(Some(kv)) => serde_json::from_slice(&kv.value)
                .map_err(|_| Refusal::Internal(format!("bad app {}", req.app)))?,
            Ok(None) => return Err(Refusal::NoApp(req.app.clone())),
            Err(e) => return Err(Refusal::Unavailable(e.to_string())),
        };
        // The name the encoder sent is its publish key, unless the app publishes openly.
        let stream = if app.open_publish {
            req.stream_name.clone()
        } else {
            self.stream_of_publish_key(&vhost, &req.app, &req.stream_name)
                .await?
        };
        let event = PublishEvent {
            app: req.app.clone(),
            vhost: vhost.clone(),
            domain: tc_host.clone().unwrap_or_default(),
            stream: stream.clone(),
            client: peer,
            node: self.node_id.clone(),
            params: req.query.as_deref().map(parse_query).unwrap_or_default(),
            tc_url: req.tc_url.clone().unwrap_or_default(),
            flashver: req.connect.flash_ver.clone(),
            swfurl: req.connect.swf_url.clone(),
            vdoid: new_vdoid(),
            start_ms: time::now_ms().max(0) as u64,
        };
        if let Some(auth) = &app.callbacks.authorize {
            let timeout = Duration::from_millis(auth.timeout_ms.max(1));
            if let Err(denied) = self.webhooks.authorize(&auth.url, timeout, &event).await {
                return Err(Refusal::Unauthorized(denied.to_string()));
            }
        }
        let key = StreamId::new(vhost.clone(), req.app.clone(), stream.clone());
        let store_key = keys::stream(&vhost, &req.app, &stream);
        if is_backup(req.query.as_deref()) {
            return self.admit_backup(key, &store_key).await;
        }
        let record = LiveStream {
            vhost: vhost.clone(),
            app: req.app.clone(),
            stream: stream.clone(),
            worker: self.node_id.clone(),
            tracks: vec![],
            since_ms: time::now_ms(),
            interrupted_ms: None,
            resumed_from: None,
            input: Some(Role::Primary.as_str().to_string()),
            inputs: 1,
            client: Some(peer.to_string()),
            software: req.connect.flash_ver.clone().filter(|v| !v.is_empty()),
        };
        let mut value =
            serde_json::to_vec(&record).map_err(|e| Refusal::Internal(e.to_string()))?;
        let exist = || Refusal::StreamInUse(stream.clone());
        // PubStart goes to the outbox with the registration: recorded if and only if the
        // stream is live (not leased: it outlives this worker).
        let starts = publish_entries(&event, &app.callbacks.publish, None);
        // Once more after the stream's holder was found gone (or its lease expired).
        let mut settled = false;
        loop {
            let txn = starts.iter().fold(
                Txn::new()
                    .when(Compare::Absent(store_key.clone()))
                    .and_then(Op::put_with_lease(
                        store_key.clone(),
                        value.clone(),
                        self.lease.id(),
                    )),
                |t, (k, v)| t.and_then(Op::put(k.clone(), v.clone())),
            );
            match self.store.txn(txn).await {
                Ok(r) if r.succeeded => break,
                Ok(_) if !settled => {
                    // The primary coming back to its stream while its backup feeds it
                    // (registered here): it joins as the primary again.
                    if let Some(v) = self.primary_back(&key, &store_key, &starts).await? {
                        value = v;
                        break;
                    }
                    // An interrupted stream (its publisher gone, its window open) is
                    // continued by this publish, here or from another worker.
                    if let Some(v) = self
                        .continue_interrupted(&store_key, &record, &starts)
                        .await?
                    {
                        value = v;
                        break;
                    }
                    self.settle_holder(&store_key, &stream).await?;
                    settled = true;
                }
                Ok(_) => return Err(exist()),
                Err(e) => return Err(Refusal::Unavailable(e.to_string())),
            }
        }
        match self
            .hub
            .publish_input(key, Role::Primary, Some(continuity_of(&app)))
        {
            Ok(source) => {
                tracing::info!(%peer, app = %req.app, %stream, "publish started");
                metrics::counter!("pushcast_ingest_publishes_total").increment(1);
                metrics::gauge!("pushcast_ingest_streams").increment(1.0);
                self.lock_published()
                    .insert(store_key.clone(), value.clone());
                let splice = source.splice_status();
                let fresh = {
                    let st = splice.borrow();
                    st.resumes == 0 && st.switches == 0 && st.inputs == 1
                };
                if fresh {
                    // One per stream in the hub (a resumed one has its follower).
                    tokio::spawn(self.clone().follow_inputs(
                        source.key().clone(),
                        store_key.clone(),
                        splice,
                    ));
                }
                Ok(Published {
                    source,
                    store_key: Some(store_key),
                    notify: Some((event, app.callbacks.publish.clone())),
                })
            }
            Err(_) => {
                let undo = starts.iter().fold(
                    Txn::new().and_then(Op::delete(store_key.clone())),
                    |t, (k, _)| t.and_then(Op::delete(k.clone())),
                );
                let _ = self.store.txn(undo).await;
                Err(exist())
            }
        }
    }

    /// A backup publisher (`?backup=1`, keys and callbacks checked as for any publish):
    /// it joins the stream's primary in this worker's hub, warm until it takes over
    /// (`hub::splice`). The stream stays registered by its primary.
    async fn admit_backup(&self, key: StreamId, store_key: &str) -> Result<Published, Refusal> {
        match self.hub.publish_input(key.clone(), Role::Backup, None) {
            Ok(source) => {
                tracing::info!(stream = %key, "backup publish started (standby)");
                metrics::counter!("pushcast_ingest_publishes_total").increment(1);
                Ok(Published {
                    source,
                    store_key: Some(store_key.to_string()),
                    notify: None,
                })
            }
            Err(HubError::Input(_, AttachError::NoPrimary)) => {
                let holder = match self.store.get(store_key).await {
                    Ok(Some(kv)) => serde_json::from_slice::<LiveStream>(&kv.value)
                        .ok()
                        .filter(|h| h.worker != self.node_id && h.interrupted_ms.is_none())
                        .map(|h| h.worker),
                    _ => None,
                };
                // The primary is live on another worker: relay the backup there.
                if let Some(worker) = &holder
                    && let Some(p) = self.relay_backup(&key, worker).await
                {
                    return Ok(p);
                }
                Err(Refusal::NoPrimary {
                    stream: key.stream,
                    elsewhere: holder,
                })
            }
            Err(HubError::Input(_, AttachError::BackupTaken)) => {
                Err(Refusal::BackupTaken(key.stream))
            }
            Err(_) => Err(Refusal::StreamInUse(key.stream)),
        }
    }

    /// A backup whose primary is live on `worker`: its frames go into this worker's hub
    /// under a name of their own ([`relayed_backup`]) and from there, like a forward, to
    /// `worker`'s `_relay` app as the stream's backup input (`backup=1`), where the
    /// splice takes it over when the primary ends or stalls. The relay ends with the
    /// publish. `None` when this worker relays nothing or `worker` has no registration.
    async fn relay_backup(&self, key: &StreamId, worker: &str) -> Option<Published> {
        let settings = self.backup_relay.clone()?;
        let registration = self
            .store
            .get(&keys::worker(worker))
            .await
            .ok()
            .flatten()
            .and_then(|kv| serde_json::from_slice::<WorkerInfo>(&kv.value).ok())?;
        let local = relayed_backup(key);
        let source = self
            .hub
            .publish_input(local.clone(), Role::Primary, None)
            .ok()?;
        let name = crate::forward::forward_stream_name(&key.vhost, &key.app, &key.stream);
        let url = format!("rtmp://{}/{FORWARD_APP}", registration.rtmp_addr);
        let stream_key = format!("{name}?token={}&backup=1", self.forward_token);
        let dest = Destination::parse(Protocol::Rtmp, &url, &stream_key, Vec::new()).ok()?;
        let sub = self.hub.subscribe(&local, settings.queue)?;
        let lp = Box::new(crate::reconnect::Loop {
            settings,
            stream: local,
            dest,
            tracks: crate::reconnect::Tracks::All,
            report: crate::reconnect::Report::Forward,
            counters: crate::push::SessionCounters::new(),
            cancel: CancellationToken::new(),
        });
        let span = tracing::info_span!("backup relay", stream = %key, to = %worker);
        tokio::spawn(lp.run(Some(sub)).instrument(span));
        tracing::info!(stream = %key, to = %worker, "backup publish relayed to the primary's worker");
        metrics::counter!("pushcast_ingest_publishes_total").increment(1);
        Some(Published {
            source,
            store_key: None,
            notify: None,
        })
    }

    /// When this worker's hub feeds the stream from its backup alone (the primary
    /// ended), a new primary publish may join it: the record is this worker's already
    /// (its current value is returned; PubStart is recorded).
    async fn primary_back(
        &self,
        key: &StreamId,
        store_key: &str,
        starts: &[(String, Vec<u8>)],
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let backup_alone = self
            .hub
            .info(key)
            .is_some_and(|i| i.splice.active == Some(Role::Backup) && i.splice.inputs == 1);
        let Some(value) = self.lock_published().get(store_key).cloned() else {
            return Ok(None);
        };
        if !backup_alone {
            return Ok(None);
        }
        let txn = starts.iter().fold(
            Txn::new().when(Compare::Value(store_key.to_string(), value.clone())),
            |t, (k, v)| t.and_then(Op::put(k.clone(), v.clone())),
        );
        match self.store.txn(txn).await {
            Ok(r) if r.succeeded => Ok(Some(value)),
            Ok(_) => Ok(None),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }

    /// When the stream's record says it is interrupted (its publisher gone within the
    /// reconnect window), takes it over for this publish: under this worker's lease,
    /// with the worker it continues from when that is another one. The new value, or
    /// `None` when the stream is not interrupted.
    async fn continue_interrupted(
        &self,
        store_key: &str,
        fresh: &LiveStream,
        starts: &[(String, Vec<u8>)],
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let unavailable = |e: StoreError| Refusal::Unavailable(e.to_string());
        let Some(kv) = self.store.get(store_key).await.map_err(unavailable)? else {
            return Ok(None);
        };
        let Ok(held) = serde_json::from_slice::<LiveStream>(&kv.value) else {
            return Ok(None);
        };
        if held.interrupted_ms.is_none() {
            return Ok(None);
        }
        let resumed_from = if held.worker == self.node_id {
            held.resumed_from.clone()
        } else {
            Some(held.worker.clone())
        };
        let record = LiveStream {
            resumed_from: resumed_from.clone(),
            since_ms: held.since_ms,
            ..fresh.clone()
        };
        let value = serde_json::to_vec(&record).map_err(|e| Refusal::Internal(e.to_string()))?;
        let txn = starts.iter().fold(
            Txn::new()
                .when(Compare::Value(store_key.to_string(), kv.value))
                .and_then(Op::put_with_lease(
                    store_key.to_string(),
                    value.clone(),
                    self.lease.id(),
                )),
            |t, (k, v)| t.and_then(Op::put(k.clone(), v.clone())),
        );
        match self.store.txn(txn).await.map_err(unavailable)? {
            r if r.succeeded => {
                tracing::info!(stream = %fresh.stream, from = %held.worker, "the publish continues an interrupted stream");
                Ok(Some(value))
            }
            _ => Ok(None),
        }
    }

    /// The stream is registered already: decides whether its holder is gone (revoke its
    /// lease), live (refuse), or cannot be told (hold until its lease expires), as
    /// [`stale`] describes. `Ok` when the record is gone and the publish may try again.
    async fn settle_holder(&self, store_key: &str, stream: &str) -> Result<(), Refusal> {
        let unavailable = |e: StoreError| Refusal::Unavailable(e.to_string());
        let exist = || Refusal::StreamInUse(stream.to_string());
        let Some(kv) = self.store.get(store_key).await.map_err(unavailable)? else {
            return Ok(());
        };
        let holder = match serde_json::from_slice::<LiveStream>(&kv.value) {
            // A record no worker's lease holds, or one it does not own: nothing to decide.
            Ok(_) if kv.lease == 0 => return Err(exist()),
            Err(_) => return Err(exist()),
            // Live here.
            Ok(h) if h.worker == self.node_id && kv.lease == self.lease.id() => {
                return Err(exist());
            }
            // This worker's name under another lease: a run of this worker before a
            // restart (a lease this process lost would have taken its keys with it). That
            // process is gone; its lease goes at once.
            Ok(h) if h.worker == self.node_id => {
                metrics::counter!("pushcast_ingest_stale_streams_total", "decision" => "revoked")
                    .increment(1);
                tracing::warn!(%stream, lease = kv.lease,
                    "the stream is registered by a previous run of this worker; revoking its lease");
                return match self.store.revoke_lease(kv.lease).await {
                    Ok(()) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
                    Err(e) => Err(unavailable(e)),
                };
            }
            Ok(h) => h.worker,
        };
        let registration = self
            .store
            .get(&keys::worker(&holder))
            .await
            .map_err(unavailable)?
            .and_then(|r| serde_json::from_slice::<WorkerInfo>(&r.value).ok());
        let Some(before) = self.store.lease_ttl(kv.lease).await.map_err(unavailable)? else {
            return Ok(());
        };
        let probe = match &registration {
            Some(r) => Some(stale::probe(&r.grpc_addr, stale::PROBE_TIMEOUT).await),
            None => None,
        };
        let Some(after) = self.store.lease_ttl(kv.lease).await.map_err(unavailable)? else {
            return Ok(());
        };
        let verdict = stale::decide(registration.is_some(), probe, after > before);
        let decision = match verdict {
            stale::Verdict::Revoke => "revoked",
            stale::Verdict::Refuse => "refused",
            stale::Verdict::Hold => "held",
        };
        metrics::counter!("pushcast_ingest_stale_streams_total", "decision" => decision)
            .increment(1);
        match verdict {
            stale::Verdict::Refuse => Err(exist()),
            stale::Verdict::Revoke => {
                tracing::warn!(%stream, worker = %holder, ?probe,
                    registered = registration.is_some(),
                    "the stream's worker is gone; revoking its lease");
                match self.store.revoke_lease(kv.lease).await {
                    Ok(()) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
                    Err(e) => Err(unavailable(e)),
                }
            }
            stale::Verdict::Hold => {
                let waited = after + stale::HOLD_MARGIN;
                tracing::info!(%stream, worker = %holder, ?probe,
                    "the stream's worker does not answer; holding the publish until its lease expires (at most {waited:?})");
                if self.gone_within(store_key, kv.mod_revision, waited).await {
                    Ok(())
                } else {
                    Err(Refusal::StreamHeld {
                        stream: stream.to_string(),
                        worker: holder,
                        waited,
                    })
                }
            }
        }
    }

    /// Whether `key` (at `revision`) is deleted within `limit`, as a watch sees it.
    async fn gone_within(&self, key: &str, revision: i64, limit: Duration) -> bool {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + limit;
        let Ok(mut events) = self.store.watch(key, revision + 1).await else {
            return false;
        };
        loop {
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(Ok(WatchEvent::Delete { key: k, .. }))) if k == key => return true,
                Ok(Some(Ok(_))) => continue,
                // The watch broke or the deadline passed: one last look.
                _ => return matches!(self.store.get(key).await, Ok(None)),
            }
        }
    }

    /// The stream a presented publish key opens; a refusal (`AuthencationFailed`, as the
    /// seed spells it) when the key is unknown or revoked.
    async fn stream_of_publish_key(
        &self,
        vhost: &str,
        app: &str,
        presented: &str,
    ) -> Result<String, Refusal> {
        let lookup = keys::publish_key_lookup(vhost, app, &lookup_hash(presented));
        match self.store.get(&lookup).await {
            Ok(Some(kv)) => String::from_utf8(kv.value)
                .map_err(|_| Refusal::Internal("bad publish key entry".into())),
            Ok(None) => {
                self.refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(Refusal::UnknownKey(redact(presented)))
            }
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }

    fn notify(&self, cb: &PublishCallback, payload: Payload) {
        match Target::new(&cb.url) {
            Ok(target) => {
                self.webhooks.send(&target, payload);
            }
            Err(e) => tracing::warn!(error = %e, "bad publish callback URL"),
        }
    }

    /// Ends a publish: subscribers see the end, the stream leaves the store, the app's
    /// callbacks hear PubEnd (`normal`: the encoder unpublished; else the connection broke).
    async fn unpublish(&self, p: Published, normal: bool, why: &str) {
        // PubEnd goes to the outbox with the stream's removal (or alone, when the stream
        // is not this worker's any more); from memory only when the store cannot be
        // written.
        let end = p.notify.as_ref().map(|(event, callbacks)| {
            let end = PublishEnd {
                time_ms: time::now_ms().max(0) as u64,
                message: why.to_string(),
                mode: if normal {
                    CloseMode::Normal
                } else {
                    CloseMode::Abnormal
                },
            };
            let entries = publish_entries(event, callbacks, Some(&end));
            (end, entries)
        });
        tracing::info!(stream = %p.source.key(), role = p.source.role().as_str(), "publish ended");
        self.publishers.remove(&p.source);
        let key = p.source.key().clone();
        let primary = p.source.role() == Role::Primary;
        let splice = p.source.splice_status();
        p.source.end();
        let Some(store_key) = p.store_key else { return };
        if primary {
            metrics::gauge!("pushcast_ingest_streams").decrement(1.0);
        }
        // What the stream is now (`hub::splice`): fed by another input (the record
        // stays), interrupted (the record says so, for the window), or over (removed).
        let now = self.hub.info(&key).map(|i| i.splice);
        let current = self.lock_published().get(&store_key).cloned();
        let mut txn = Txn::new();
        let mut interrupted = None;
        match (&now, current) {
            (Some(st), _) if st.active.is_some() => {}
            (Some(_), Some(value)) => {
                let marked = serde_json::from_slice::<LiveStream>(&value)
                    .ok()
                    .map(|r| LiveStream {
                        interrupted_ms: Some(time::now_ms()),
                        ..r
                    })
                    .and_then(|r| serde_json::to_vec(&r).ok());
                if let Some(marked) = marked {
                    txn = txn.when(Compare::Value(store_key.clone(), value)).and_then(
                        Op::put_with_lease(store_key.clone(), marked.clone(), self.lease.id()),
                    );
                    self.lock_published()
                        .insert(store_key.clone(), marked.clone());
                    interrupted = Some(marked);
                }
            }
            (_, Some(value)) => {
                self.lock_published().remove(&store_key);
                txn = txn
                    .when(Compare::Value(store_key.clone(), value))
                    .and_then(Op::delete(store_key.clone()));
            }
            (_, None) => {}
        }
        for (k, v) in end.iter().flat_map(|(_, entries)| entries) {
            txn = txn
                .and_then(Op::put(k.clone(), v.clone()))
                .or_else(Op::put(k.clone(), v.clone()));
        }
        if let Err(e) = self.store.txn(txn).await {
            tracing::warn!(error = %e, "cannot update the ended stream in the store (its lease will remove it); PubEnd sent from memory");
            if let (Some((event, callbacks)), Some((end, _))) = (&p.notify, &end) {
                for cb in callbacks {
                    self.notify(cb, Payload::publish_end(event, end, format_of(cb)));
                }
            }
        }
        if let Some(marked) = interrupted {
            tokio::spawn(
                self.clone()
                    .unregister_when_ended(key, store_key, marked, splice),
            );
        }
    }

    /// Keeps the stream's record saying what it is: which input feeds it (`input`,
    /// `inputs`, as backups come and go and the hub switches) and its tracks with their
    /// codecs (once the first frames have told them, and when they change) — one write
    /// per change, never per second — until the stream leaves the hub.
    async fn follow_inputs(
        self,
        key: StreamId,
        store_key: String,
        mut splice: watch::Receiver<SpliceStatus>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = splice.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
            let st = splice.borrow_and_update().clone();
            let Some(active) = st.active else { continue };
            let Some(info) = self.hub.info(&key) else {
                return;
            };
            let tracks: Vec<String> = info
                .tracks()
                .iter()
                .map(|t| format!("{}:{}", t.name, t.codec))
                .collect();
            // Twice: a write of the admission or unpublish may come in between.
            for _ in 0..2 {
                let Some(current) = self.lock_published().get(&store_key).cloned() else {
                    break;
                };
                let Ok(record) = serde_json::from_slice::<LiveStream>(&current) else {
                    break;
                };
                let input = Some(active.as_str().to_string());
                let inputs = st.inputs as u32;
                // Interrupted: the publish that continues it rewrites the record.
                let same = record.input == input
                    && record.inputs == inputs
                    && (tracks.is_empty() || record.tracks == tracks);
                if record.interrupted_ms.is_some() || same {
                    break;
                }
                let updated = LiveStream {
                    input,
                    inputs,
                    tracks: if tracks.is_empty() {
                        record.tracks.clone()
                    } else {
                        tracks.clone()
                    },
                    ..record
                };
                let Ok(value) = serde_json::to_vec(&updated) else {
                    break;
                };
                let txn = Txn::new()
                    .when(Compare::Value(store_key.clone(), current))
                    .and_then(Op::put_with_lease(
                        store_key.clone(),
                        value.clone(),
                        self.lease.id(),
                    ));
                match self.store.txn(txn).await {
                    Ok(r) if r.succeeded => {
                        self.lock_published().insert(store_key.clone(), value);
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot record the stream's input and tracks");
                        break;
                    }
                }
            }
        }
    }

    /// Removes an interrupted stream's record once the hub has ended it (its window
    /// passed), unless a publish continued it (which rewrote the record: the removal
    /// compares the value).
    async fn unregister_when_ended(
        self,
        key: StreamId,
        store_key: String,
        marked: Vec<u8>,
        mut splice: watch::Receiver<SpliceStatus>,
    ) {
        tokio::select! {
            _ = self.hub.gone(&key) => {}
            // Closed: the stream is gone with its state.
            fed = splice.wait_for(|s| s.active.is_some()) => if fed.is_ok() {
                // Continued. Not by a publish here (which rewrote the record): by a
                // forward from the worker that took the stream over, whose record it
                // is now.
                let mut published = self.lock_published();
                if published.get(&store_key) == Some(&marked) {
                    published.remove(&store_key);
                }
                return;
            },
        }
        let still = self.lock_published().get(&store_key) == Some(&marked);
        if still {
            self.lock_published().remove(&store_key);
        }
        let txn = Txn::new()
            .when(Compare::Value(store_key.clone(), marked))
            .and_then(Op::delete(store_key));
        if let Err(e) = self.store.txn(txn).await {
            tracing::warn!(error = %e, stream = %key, "cannot remove the ended stream from the store (its lease will)");
        }
    }
}

/// The name a backup relayed to its primary's worker has in this worker's hub: one no
/// encoder uses (it holds a NUL). Were it taken, the backup would be refused.
fn relayed_backup(key: &StreamId) -> StreamId {
    StreamId::new(
        key.vhost.clone(),
        key.app.clone(),
        format!("{}\u{0}backup", key.stream),
    )
}

/// Whether a publish's query asks for the backup input (`backup=1` or `backup=true`).
fn is_backup(query: Option<&str>) -> bool {
    query
        .map(parse_query)
        .unwrap_or_default()
        .iter()
        .any(|(k, v)| k == "backup" && (v == "1" || v == "true"))
}

/// The hub's continuity settings of an app.
fn continuity_of(app: &AppConfig) -> Continuity {
    let default = Continuity::default();
    Continuity {
        reconnect_window: Duration::from_millis(app.reconnect_window_ms),
        stall: app
            .input_stall_ms
            .map(Duration::from_millis)
            .unwrap_or(default.stall),
        switch_back: app.switch_back_to_primary.unwrap_or(default.switch_back),
    }
}

/// The outbox entries (key, value) of a publish session's start (`end` absent) or end,
/// one per publish callback of its app, named `{vdoid}-start` / `{vdoid}-end`, ordered
/// per stream (a receiver never hears a session start before the previous one ended;
/// across workers, as far as their clocks agree).
fn publish_entries(
    ev: &PublishEvent,
    callbacks: &[PublishCallback],
    end: Option<&PublishEnd>,
) -> Vec<(String, Vec<u8>)> {
    callbacks
        .iter()
        .enumerate()
        .filter_map(|(n, cb)| {
            let payload = match end {
                None => Payload::publish_start(ev, format_of(cb)),
                Some(end) => Payload::publish_end(ev, end, format_of(cb)),
            };
            let entry = OutboxEntry {
                kind: OutboxKind::Publish,
                vhost: ev.vhost.clone(),
                app: ev.app.clone(),
                url: cb.url.clone(),
                // A stream's publish events in order, across its sessions.
                order: format!("pub\u{0}{}\u{0}{}\u{0}{}", ev.vhost, ev.app, ev.stream),
                event_id: format!(
                    "{}-{}",
                    ev.vdoid,
                    if end.is_some() { "end" } else { "start" }
                ),
                what: payload.what().to_string(),
                content_type: payload.content_type().to_string(),
                body: String::from_utf8_lossy(payload.body()).into_owned(),
            };
            let at = end.map_or(ev.start_ms, |e| e.time_ms);
            let key = keys::outbox_publish(at, &ev.vdoid, u8::from(end.is_some()), n);
            Some((key, serde_json::to_vec(&entry).ok()?))
        })
        .collect()
}

/// An accepted publish.
struct Published {
    source: Source,
    /// `None` for forwards, which are not registered in the store. (Its current value
    /// is in [`Ingest::published`].)
    store_key: Option<String>,
    /// The publish for PubStart / PubEnd, and where to send them.
    notify: Option<(PublishEvent, Vec<PublishCallback>)>,
}

/// Publishes a frame into the hub, an Enhanced RTMP packet of several tracks as one frame
/// per track (each track is cached, chosen and sent on its own).
fn publish_split(source: &Source, frame: Frame) {
    if frame.kind == FrameKind::Data
        || frame
            .tag()
            .is_none_or(|t| t.packet != PacketType::ManyTracks)
    {
        source.publish(frame);
        return;
    }
    for payload in pushcast_media::split_tracks(frame.kind, &frame.payload) {
        source.publish(Frame {
            payload,
            ..frame.clone()
        });
    }
}

async fn flush<S: Conn>(sock: &mut S, conn: &mut ServerConnection) -> Result<(), IngestError> {
    for segment in conn.take_outbound() {
        sock.write_all(&segment).await?;
    }
    Ok(())
}

fn format_of(cb: &PublishCallback) -> Format {
    if cb.format == "old" {
        Format::Old
    } else {
        Format::New
    }
}

/// The next connection on `listener`, with `TCP_NODELAY` set (media goes out as it
/// comes); `None` once `accept_until` or `shutdown` fires. A failed accept (out of file
/// descriptors, say) is logged and retried after a short pause rather than ending the
/// listener.
async fn accept(
    listener: &TcpListener,
    accept_until: &CancellationToken,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = accept_until.cancelled() => return None,
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    return Some((sock, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    //! `Ingest::admit` in process, on the embedded store in a temp dir.
    #![allow(clippy::unwrap_used)]

    use pushcast_rtmp::ConnectInfo;

    use super::*;

    struct Setup {
        ingest: Ingest,
        _dir: tempfile::TempDir,
    }

    async fn setup(open_publish: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            pushcast_store::embedded::EmbeddedStore::open(&dir.path().join("store")).unwrap(),
        );
        let app = AppConfig {
            open_publish,
            ..AppConfig::new("default", "app")
        };
        store
            .put(
                &keys::app("default", "app"),
                serde_json::to_vec(&app).unwrap(),
                0,
            )
            .await
            .unwrap();
        let lease = Lease::keep(
            store.clone(),
            Duration::from_secs(30),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let ingest = Ingest {
            hub: Hub::default(),
            store,
            lease,
            node_id: "w1".into(),
            forward_token: "cluster-secret".into(),
            published: Default::default(),
            publishers: Publishers::default(),
            refused: Default::default(),
            limits: Default::default(),
            webhooks: Dispatcher::new(Default::default()).unwrap(),
            backup_relay: None,
        };
        Setup { ingest, _dir: dir }
    }

    fn request(app: &str, name: &str, query: Option<&str>) -> PublishRequest {
        PublishRequest {
            stream_id: 1,
            app: app.into(),
            stream_name: name.into(),
            query: query.map(str::to_string),
            publish_type: "live".into(),
            tc_url: Some(format!("rtmp://127.0.0.1/{app}")),
            connect: ConnectInfo {
                app: app.into(),
                tc_url: None,
                flash_ver: None,
                swf_url: None,
                page_url: None,
                properties: Vec::new(),
            },
        }
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 50_000))
    }

    async fn refusal(s: &Setup, req: PublishRequest) -> Refusal {
        match s.ingest.admit(&req, peer(), None).await {
            Ok(_) => panic!("{req:?} was admitted"),
            Err(r) => r,
        }
    }

    #[tokio::test]
    async fn an_unknown_app_is_refused() {
        let s = setup(true).await;
        let r = refusal(&s, request("nope", "cam", None)).await;
        assert_eq!(r, Refusal::NoApp("nope".into()));
        assert_eq!(
            (r.label(), r.code()),
            ("NonExistApplication", RejectCode::Denied)
        );
    }

    #[tokio::test]
    async fn an_unknown_publish_key_is_refused_and_never_shown_in_full() {
        let s = setup(false).await;
        let r = refusal(&s, request("app", "a-long-secret-publish-key", None)).await;
        assert_eq!(r, Refusal::UnknownKey("a-lo…".into()));
        assert_eq!(r.label(), "AuthencationFailed");
        assert!(!r.to_string().contains("secret"), "{r}");
        assert_eq!(
            s.ingest.refused.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_valid_publish_key_opens_its_stream() {
        let s = setup(false).await;
        let lookup = keys::publish_key_lookup("default", "app", &lookup_hash("the-key"));
        s.ingest
            .store
            .put(&lookup, b"cam".to_vec(), 0)
            .await
            .unwrap();
        let p = s
            .ingest
            .admit(&request("app", "the-key", None), peer(), None)
            .await
            .unwrap();
        assert_eq!(*p.source.key(), StreamId::new("default", "app", "cam"));
        assert!(
            s.ingest
                .hub
                .is_live(&StreamId::new("default", "app", "cam"))
        );
    }

    #[tokio::test]
    async fn backups_need_the_key_a_live_primary_here_and_no_other_backup() {
        let s = setup(false).await;
        let lookup = keys::publish_key_lookup("default", "app", &lookup_hash("the-key"));
        s.ingest
            .store
            .put(&lookup, b"cam".to_vec(), 0)
            .await
            .unwrap();
        let backup = || request("app", "the-key", Some("backup=1"));
        let r = refusal(&s, request("app", "wrong-key", Some("backup=1"))).await;
        assert!(matches!(r, Refusal::UnknownKey(_)), "{r}");
        let r = refusal(&s, backup()).await;
        assert_eq!(
            r.to_string(),
            "NoPrimary: a backup of cam is admitted only while its primary is live"
        );
        assert_eq!(r.code(), RejectCode::BadName);
        let primary = s
            .ingest
            .admit(&request("app", "the-key", None), peer(), None)
            .await
            .unwrap();
        let b = s.ingest.admit(&backup(), peer(), None).await.unwrap();
        assert_eq!(b.source.role(), Role::Backup);
        let r = refusal(&s, backup()).await;
        assert_eq!(
            r.to_string(),
            "ExistStreamName: cam has a backup publisher already"
        );
        // The stream's record names the primary as its input, and two inputs once the
        // follower has seen the backup.
        let key = keys::stream("default", "app", "cam");
        let record = wait_record(&s, &key, |r| r.inputs == 2).await;
        assert_eq!(record.input.as_deref(), Some("primary"));
        // The primary ends: the backup feeds the stream, which stays registered.
        s.ingest.unpublish(primary, true, "test").await;
        let record = wait_record(&s, &key, |r| r.input.as_deref() == Some("backup")).await;
        assert_eq!(record.inputs, 1);
        s.ingest.unpublish(b, true, "test").await;
        assert!(
            s.ingest.store.get(&key).await.unwrap().is_none(),
            "no window: gone"
        );
    }

    /// The stream record at `key` once `pred` holds (the input follower writes it).
    async fn wait_record(s: &Setup, key: &str, pred: impl Fn(&LiveStream) -> bool) -> LiveStream {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(kv) = s.ingest.store.get(key).await.unwrap() {
                let r: LiveStream = serde_json::from_slice(&kv.value).unwrap();
                if pred(&r) {
                    return r;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "record never matched"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn an_admitted_stream_is_live_in_the_store_and_a_second_publisher_is_refused() {
        let s = setup(true).await;
        let p = s
            .ingest
            .admit(&request("app", "cam", None), peer(), None)
            .await
            .unwrap();
        let kv = s
            .ingest
            .store
            .get(&keys::stream("default", "app", "cam"))
            .await
            .unwrap()
            .expect("registered");
        let live: LiveStream = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!((live.stream.as_str(), live.worker.as_str()), ("cam", "w1"));
        assert_eq!(kv.lease, s.ingest.lease.id(), "under the worker's lease");
        let r = refusal(&s, request("app", "cam", None)).await;
        assert_eq!(r, Refusal::StreamInUse("cam".into()));
        assert_eq!(
            (r.label(), r.code()),
            ("ExistStreamName", RejectCode::BadName)
        );
        // Another worker holds it (only the store knows): refused the same way.
        s.ingest.unpublish(p, true, "test").await;
        let other = LiveStream {
            worker: "w2".into(),
            ..live
        };
        let key = keys::stream("default", "app", "cam");
        s.ingest
            .store
            .put(&key, serde_json::to_vec(&other).unwrap(), 0)
            .await
            .unwrap();
        assert_eq!(
            refusal(&s, request("app", "cam", None)).await,
            Refusal::StreamInUse("cam".into())
        );
    }

    #[tokio::test]
    async fn a_stream_of_a_previous_run_or_an_unregistered_worker_is_taken_over_at_once() {
        let s = setup(true).await;
        let key = keys::stream("default", "app", "cam");
        for holder in ["w1", "w2"] {
            // Under a live lease that is not this worker's current one: "w1" is this
            // worker before a restart, "w2" a worker with no registration.
            let old = s
                .ingest
                .store
                .grant_lease(Duration::from_secs(60))
                .await
                .unwrap();
            let record = LiveStream {
                vhost: "default".into(),
                app: "app".into(),
                stream: "cam".into(),
                worker: holder.into(),
                tracks: vec![],
                since_ms: 0,
                interrupted_ms: None,
                resumed_from: None,
                input: None,
                inputs: 0,
                client: None,
                software: None,
            };
            s.ingest
                .store
                .put(&key, serde_json::to_vec(&record).unwrap(), old)
                .await
                .unwrap();
            let p = s
                .ingest
                .admit(&request("app", "cam", None), peer(), None)
                .await
                .unwrap_or_else(|r| panic!("{holder}: refused {r}"));
            assert_eq!(
                s.ingest.store.lease_ttl(old).await.unwrap(),
                None,
                "{holder}: the stale lease is revoked"
            );
            let kv = s.ingest.store.get(&key).await.unwrap().unwrap();
            assert_eq!(kv.lease, s.ingest.lease.id());
            s.ingest.unpublish(p, true, "test").await;
        }
    }

    #[tokio::test]
    async fn forwards_need_the_cluster_token_and_a_stream_name() {
        let s = setup(false).await;
        let name = crate::forward::forward_stream_name("default", "app", "cam");
        let r = refusal(&s, request(FORWARD_APP, &name, Some("token=wrong"))).await;
        assert_eq!(r, Refusal::ForwardToken);
        let r = refusal(
            &s,
            request(FORWARD_APP, "junk", Some("token=cluster-secret")),
        )
        .await;
        assert_eq!(r, Refusal::BadForwardName);
        let p = s
            .ingest
            .admit(
                &request(FORWARD_APP, &name, Some("x=1&token=cluster-secret")),
                peer(),
                None,
            )
            .await
            .unwrap();
        assert!(
            p.store_key.is_none(),
            "a forward is registered by its ingest worker"
        );
        assert!(
            s.ingest
                .hub
                .is_live(&StreamId::new("default", "app", "cam"))
        );
        let stored = s
            .ingest
            .store
            .get(&keys::stream("default", "app", "cam"))
            .await
            .unwrap();
        assert!(stored.is_none());
    }
}

#[cfg(test)]
mod split_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An E-RTMP audio packet carrying two Opus tracks reaches the hub as two tracks.
    #[tokio::test]
    async fn packets_of_several_tracks_reach_the_hub_one_per_track() {
        let hub = Hub::default();
        let key = StreamId::new("default", "app", "mt");
        let source = hub.publish(key.clone()).unwrap();
        let payload: Vec<u8> = [
            &[0x95, 0x11][..],
            b"Opus",
            &[1, 0, 0, 2, 0xaa, 0xbb, 2, 0, 0, 1, 0xcc],
        ]
        .concat();
        publish_split(
            &source,
            Frame {
                kind: FrameKind::Audio,
                timestamp_ms: 0,
                payload: bytes::Bytes::from(payload),
            },
        );
        let names: Vec<String> = hub
            .info(&key)
            .unwrap()
            .tracks()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["bypass_audio_1", "bypass_audio_2"]);
    }
}
