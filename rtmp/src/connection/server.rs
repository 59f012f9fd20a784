//! The ingest side: an encoder (OBS, ffmpeg, another restreamer) connects and publishes to us.
//!
//! The server answers the command sequence encoders use — `connect`, `releaseStream`,
//! `FCPublish`, `createStream`, `publish`, and at the end `FCUnpublish`/`deleteStream` —
//! with the replies they expect (window size, peer bandwidth, chunk size, `_result`,
//! `onStatus`). It decides nothing about *who* may publish: a `publish` becomes a
//! [`ServerEvent::PublishRequested`], and the caller answers with
//! [`ServerConnection::accept_publish`] or [`ServerConnection::reject_publish`] once it has
//! checked the stream key (possibly asynchronously; media is not accepted meanwhile).

use bytes::Bytes;

use super::{SET_DATA_FRAME, Transport, frame_of};
use crate::amf0::Amf0Value;
use crate::chunk::{DecoderConfig, csid};
use crate::error::RtmpError;
use crate::message::{Command, Message, RtmpMessage, UserControlEvent};
use pushcast_media::{Frame, FrameKind};

/// Tunables of an ingest connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Chunk size we send with (announced right after connect).
    pub chunk_size: u32,
    /// Window Acknowledgement Size we announce; also our ack window until the encoder
    /// announces its own.
    pub window_ack_size: u32,
    /// Set Peer Bandwidth we announce.
    pub peer_bandwidth: u32,
    /// Limits on what the encoder may make us buffer.
    pub decoder: DecoderConfig,
    /// Enhanced RTMP codecs to list as `fourCcList` in the `connect` answer (`None`: say
    /// nothing, as a legacy server does).
    pub four_cc_list: Option<Vec<String>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            chunk_size: 4096,
            window_ack_size: 2_500_000,
            peer_bandwidth: 2_500_000,
            decoder: DecoderConfig::default(),
            four_cc_list: None,
        }
    }
}

/// What the encoder said in `connect`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectInfo {
    /// Application name as sent (a trailing `/` removed); may carry a `?query` with some
    /// encoders, see [`PublishRequest::app`] for the bare name.
    pub app: String,
    pub tc_url: Option<String>,
    pub flash_ver: Option<String>,
    pub swf_url: Option<String>,
    pub page_url: Option<String>,
    /// The whole command object, for anything else an operator may want to look at.
    pub properties: Vec<(String, Amf0Value)>,
}

/// A `publish` waiting for the caller's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRequest {
    /// Message stream id to pass to [`ServerConnection::accept_publish`] / `reject_publish`.
    pub stream_id: u32,
    /// Application name without any `?query`.
    pub app: String,
    /// Stream name (the stream key, usually) without its `?query`.
    pub stream_name: String,
    /// What followed `?` in the stream name (e.g. `k=v&x=y`), not percent-decoded.
    pub query: Option<String>,
    /// `live`, `record` or `append` (we push all of them on live).
    pub publish_type: String,
    pub tc_url: Option<String>,
    pub connect: ConnectInfo,
}

/// Why a publish is refused: the `onStatus` code the encoder will see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    /// `NetStream.Publish.BadName`: the name is in use or invalid. OBS and ffmpeg show it.
    BadName,
    /// `NetStream.Publish.Denied`: not allowed (unknown or revoked stream key).
    Denied,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::BadName => "NetStream.Publish.BadName",
            RejectCode::Denied => "NetStream.Publish.Denied",
        }
    }
}

/// What happened on an ingest connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// `connect` was accepted (always: authorisation happens at publish).
    Connected(ConnectInfo),
    /// The encoder wants to publish; answer with `accept_publish` / `reject_publish`.
    PublishRequested(PublishRequest),
    /// A frame of the accepted publish. Data frames are unwrapped from `@setDataFrame`,
    /// so metadata arrives as `onMetaData, {...}` like an FLV script tag.
    Media(Frame),
    /// The publish ended (`FCUnpublish`, `deleteStream` or `closeStream`). A socket that
    /// just closes produces no event: the caller knows that already.
    PublishEnded { stream_id: u32, stream_name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PublishState {
    Pending,
    Active,
}

#[derive(Debug)]
struct Publishing {
    stream_id: u32,
    name: String,
    state: PublishState,
}

/// Streams one connection may create; encoders create one.
const MAX_STREAMS: u32 = 16;

/// The ingest protocol state machine of one connection. See the module docs of
/// [`crate`] for how to drive it.
#[derive(Debug)]
pub struct ServerConnection {
    config: ServerConfig,
    conn: Transport,
    connect: Option<ConnectInfo>,
    streams_created: u32,
    /// One publish per connection: that is what encoders do, and it keeps the
    /// ingest-to-stream mapping unambiguous.
    publishing: Option<Publishing>,
}

impl ServerConnection {
    /// A server for a freshly accepted connection. The server speaks only after the
    /// client's first bytes, so nothing is queued yet.
    pub fn new(config: ServerConfig) -> Self {
        let conn = Transport::server(config.decoder, config.window_ack_size);
        Self {
            config,
            conn,
            connect: None,
            streams_created: 0,
            publishing: None,
        }
    }

    /// Feeds bytes read from the socket. Afterwards, write out [`Self::take_outbound`].
    /// An error is fatal: flush what is queued (it may explain the error) and close.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<Vec<ServerEvent>, RtmpError> {
        let (_, messages) = self.conn.receive(input)?;
        let mut events = Vec::new();
        for m in messages {
            self.handle_message(m, &mut events)?;
        }
        Ok(events)
    }

    /// Bytes to send, in order (a list of segments for one vectored write).
    pub fn take_outbound(&mut self) -> Vec<Bytes> {
        self.conn.take_outbound()
    }

    /// Bytes queued and not yet taken.
    pub fn outbound_len(&self) -> usize {
        self.conn.outbound_len()
    }

    /// Replaces the limits on what the encoder may make us buffer: an ingest starts a
    /// connection with [`DecoderConfig::commands_only`] and raises them with
    /// [`DecoderConfig::admitted`] once it accepts the publish.
    pub fn set_decoder_limits(&mut self, limits: DecoderConfig) {
        self.config.decoder = limits;
        self.conn.set_decoder_config(limits);
    }

    /// Total bytes received on this connection (handshake included).
    pub fn bytes_received(&self) -> u64 {
        self.conn.bytes_received()
    }

    pub fn connect_info(&self) -> Option<&ConnectInfo> {
        self.connect.as_ref()
    }

    /// Whether a publish has been accepted and not ended.
    pub fn is_publishing(&self) -> bool {
        self.publishing
            .as_ref()
            .is_some_and(|p| p.state == PublishState::Active)
    }

    /// Accepts the pending publish on `stream_id`: sends Stream Begin and
    /// `onStatus NetStream.Publish.Start`; media frames flow from now on. Fails with
    /// [`RtmpError::InvalidState`] if that publish is no longer pending (the encoder
    /// ended it while the caller was deciding): ignore that error then.
    pub fn accept_publish(&mut self, stream_id: u32) -> Result<(), RtmpError> {
        let name = match &mut self.publishing {
            Some(p) if p.stream_id == stream_id && p.state == PublishState::Pending => {
                p.state = PublishState::Active;
                p.name.clone()
            }
            _ => {
                return Err(RtmpError::InvalidState(format!(
                    "no pending publish on stream {stream_id}"
                )));
            }
        };
        self.conn
            .send_control(RtmpMessage::UserControl(UserControlEvent::StreamBegin(
                stream_id,
            )))?;
        self.send_on_status(
            stream_id,
            "status",
            "NetStream.Publish.Start",
            &format!("{name} is now published."),
        )
    }

    /// Refuses the pending publish on `stream_id` with an error `onStatus` carrying
    /// `code` and `description` (shown to the user by OBS/ffmpeg). The caller should then
    /// flush the outbound bytes and close the connection.
    pub fn reject_publish(
        &mut self,
        stream_id: u32,
        code: RejectCode,
        description: &str,
    ) -> Result<(), RtmpError> {
        match &self.publishing {
            Some(p) if p.stream_id == stream_id && p.state == PublishState::Pending => {
                self.publishing = None
            }
            _ => {
                return Err(RtmpError::InvalidState(format!(
                    "no pending publish on stream {stream_id}"
                )));
            }
        }
        self.send_on_status(stream_id, "error", code.as_str(), description)
    }

    fn handle_message(
        &mut self,
        m: Message,
        events: &mut Vec<ServerEvent>,
    ) -> Result<(), RtmpError> {
        match &m.body {
            RtmpMessage::Command(cmd) => self.handle_command(m.stream_id, cmd, events),
            RtmpMessage::Audio(_) | RtmpMessage::Video(_) | RtmpMessage::Data(_) => {
                let active = self
                    .publishing
                    .as_ref()
                    .is_some_and(|p| p.state == PublishState::Active && p.stream_id == m.stream_id);
                if active && let Some(frame) = frame_of(&m).and_then(unwrap_data_frame) {
                    events.push(ServerEvent::Media(frame));
                }
                Ok(())
            }
            // Flow control was handled by the connection; the rest needs no answer.
            _ => Ok(()),
        }
    }

    fn handle_command(
        &mut self,
        stream_id: u32,
        cmd: &Command,
        events: &mut Vec<ServerEvent>,
    ) -> Result<(), RtmpError> {
        if cmd.name == "connect" {
            return self.on_connect(cmd, events);
        }
        let Some(connect) = self.connect.clone() else {
            return Err(RtmpError::Protocol(format!(
                "`{}` before `connect`",
                cmd.name
            )));
        };
        match cmd.name.as_str() {
            "releaseStream" | "FCPublish" => {
                self.reply_result(cmd, Amf0Value::Null, Amf0Value::Undefined)
            }
            "createStream" => {
                if self.streams_created >= MAX_STREAMS {
                    return Err(RtmpError::Protocol(format!(
                        "more than {MAX_STREAMS} createStream calls"
                    )));
                }
                self.streams_created += 1;
                let id = self.streams_created;
                self.reply_result(cmd, Amf0Value::Null, Amf0Value::Number(f64::from(id)))
            }
            "publish" => self.on_publish(stream_id, cmd, connect, events),
            "FCUnpublish" => {
                self.reply_result(cmd, Amf0Value::Null, Amf0Value::Undefined)?;
                let name = cmd.arg_str(0).map(str::to_owned);
                self.end_publish(events, |p| {
                    name.as_deref().is_none_or(|n| same_stream(n, &p.name))
                });
                Ok(())
            }
            "deleteStream" => {
                let id = cmd.args.first().and_then(Amf0Value::as_number);
                self.end_publish(events, |p| id.is_none_or(|id| id == f64::from(p.stream_id)));
                Ok(())
            }
            "closeStream" => {
                self.end_publish(events, |p| p.stream_id == stream_id);
                Ok(())
            }
            "play" | "play2" => self.send_on_status(
                stream_id,
                "error",
                "NetStream.Play.Failed",
                "this server only accepts publishing",
            ),
            // Results of our own calls (none) and notifications: nothing to answer.
            "_result" | "_error" | "onStatus" | "onBWDone" | "_checkbw" | "getStreamLength" => {
                Ok(())
            }
            other if cmd.transaction_id != 0.0 => {
                // An unknown call that expects an answer: say so, so that the client does
                // not wait forever.
                let info = status_object(
                    "error",
                    "NetConnection.Call.Failed",
                    &format!("Method not found ({other})."),
                );
                let reply = Command::new("_error", cmd.transaction_id, Amf0Value::Null, vec![info]);
                self.conn.send(
                    csid::COMMAND,
                    &Message::new(0, 0, RtmpMessage::Command(reply)),
                )
            }
            _ => Ok(()),
        }
    }

    fn on_connect(
        &mut self,
        cmd: &Command,
        events: &mut Vec<ServerEvent>,
    ) -> Result<(), RtmpError> {
        if self.connect.is_some() {
            return Err(RtmpError::Protocol(
                "second `connect` on one connection".into(),
            ));
        }
        let obj = &cmd.command_object;
        let text = |k: &str| obj.get_str(k).map(str::to_owned);
        let info = ConnectInfo {
            app: text("app")
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned(),
            tc_url: text("tcUrl"),
            flash_ver: text("flashVer"),
            swf_url: text("swfUrl"),
            page_url: text("pageUrl"),
            properties: obj.properties().map(<[_]>::to_vec).unwrap_or_default(),
        };
        self.conn
            .send_window_ack_size(self.config.window_ack_size)?;
        self.conn.send_peer_bandwidth(self.config.peer_bandwidth)?;
        self.conn.set_chunk_size(self.config.chunk_size)?;
        let mut props = Amf0Value::object([
            ("fmsVer", Amf0Value::string("FMS/3,0,1,123")),
            ("capabilities", Amf0Value::Number(31.0)),
        ]);
        if let (Some(list), Amf0Value::Object(p)) = (&self.config.four_cc_list, &mut props) {
            p.push((
                "fourCcList".into(),
                Amf0Value::StrictArray(
                    list.iter()
                        .map(|cc| Amf0Value::string(cc.clone()))
                        .collect(),
                ),
            ));
        }
        let mut status = status_object(
            "status",
            "NetConnection.Connect.Success",
            "Connection succeeded.",
        );
        if let Amf0Value::Object(p) = &mut status {
            // We only speak AMF0, whatever the client offered.
            p.push(("objectEncoding".into(), Amf0Value::Number(0.0)));
        }
        self.reply_result(cmd, props, status)?;
        self.connect = Some(info.clone());
        events.push(ServerEvent::Connected(info));
        Ok(())
    }

    fn on_publish(
        &mut self,
        stream_id: u32,
        cmd: &Command,
        connect: ConnectInfo,
        events: &mut Vec<ServerEvent>,
    ) -> Result<(), RtmpError> {
        if stream_id == 0 {
            return Err(RtmpError::Protocol("`publish` on stream 0".into()));
        }
        let raw_name = cmd.arg_str(0).unwrap_or_default();
        if self.publishing.is_some() {
            return self.send_on_status(
                stream_id,
                "error",
                RejectCode::BadName.as_str(),
                "this connection is already publishing",
            );
        }
        let (name, query) = match raw_name.split_once('?') {
            Some((n, q)) => (n, Some(q.to_owned())),
            None => (raw_name, None),
        };
        if name.is_empty() {
            return self.send_on_status(
                stream_id,
                "error",
                RejectCode::BadName.as_str(),
                "empty stream name",
            );
        }
        let app = connect.app.split('?').next().unwrap_or_default().to_owned();
        self.publishing = Some(Publishing {
            stream_id,
            name: name.to_owned(),
            state: PublishState::Pending,
        });
        events.push(ServerEvent::PublishRequested(PublishRequest {
            stream_id,
            app,
            stream_name: name.to_owned(),
            query,
            publish_type: cmd.arg_str(1).unwrap_or("live").to_owned(),
            tc_url: connect.tc_url.clone(),
            connect,
        }));
        Ok(())
    }

    fn end_publish(
        &mut self,
        events: &mut Vec<ServerEvent>,
        matches: impl Fn(&Publishing) -> bool,
    ) {
        if self.publishing.as_ref().is_some_and(matches)
            && let Some(p) = self.publishing.take()
        {
            events.push(ServerEvent::PublishEnded {
                stream_id: p.stream_id,
                stream_name: p.name,
            });
        }
    }

    /// `_result` for `cmd`, unless it was sent without a transaction (id 0).
    fn reply_result(
        &mut self,
        cmd: &Command,
        object: Amf0Value,
        info: Amf0Value,
    ) -> Result<(), RtmpError> {
        if cmd.transaction_id == 0.0 {
            return Ok(());
        }
        let reply = Command::new("_result", cmd.transaction_id, object, vec![info]);
        self.conn.send(
            csid::COMMAND,
            &Message::new(0, 0, RtmpMessage::Command(reply)),
        )
    }

    fn send_on_status(
        &mut self,
        stream_id: u32,
        level: &str,
        code: &str,
        description: &str,
    ) -> Result<(), RtmpError> {
        let status = Command::new(
            "onStatus",
            0.0,
            Amf0Value::Null,
            vec![status_object(level, code, description)],
        );
        self.conn.send(
            csid::STREAM,
            &Message::new(0, stream_id, RtmpMessage::Command(status)),
        )
    }
}

/// `{level, code, description}`, the info object of `onStatus` and `_result`/`_error`.
pub(crate) fn status_object(level: &str, code: &str, description: &str) -> Amf0Value {
    Amf0Value::object([
        ("level", Amf0Value::string(level)),
        ("code", Amf0Value::string(code)),
        ("description", Amf0Value::string(description)),
    ])
}

/// FCUnpublish names may or may not carry the `?query` of the publish.
fn same_stream(a: &str, b: &str) -> bool {
    a.split('?').next() == b.split('?').next()
}

/// `@setDataFrame, onMetaData, {...}` → `onMetaData, {...}` (a zero-copy slice);
/// `@clearDataFrame` is dropped (it is an instruction to the server, not data to pass on).
fn unwrap_data_frame(frame: Frame) -> Option<Frame> {
    if frame.kind != FrameKind::Data {
        return Some(frame);
    }
    if frame.payload.starts_with(b"\x02\x00\x0f@clearDataFrame") {
        return None;
    }
    if frame.payload.starts_with(SET_DATA_FRAME) {
        let payload = frame.payload.slice(SET_DATA_FRAME.len()..);
        return Some(Frame { payload, ..frame });
    }
    Some(frame)
}
