//! The publish side: we connect to a destination (YouTube, Twitch, nginx-rtmp, another
//! worker) and publish one stream to it.
//!
//! The command sequence is the one OBS and ffmpeg use, because CDNs are tuned to it:
//! `connect` (app, tcUrl, flashVer `FMLE/3.0`, type `nonprivate`), then `releaseStream`,
//! `FCPublish` and `createStream` together, then `publish(name, "live")` on the created
//! stream. [`ClientEvent::Published`] arrives with `NetStream.Publish.Start`; from then on
//! [`ClientConnection::send_frame`] queues media. A refusal (`_error` to connect or
//! createStream, an error-level `onStatus` such as `NetStream.Publish.BadName`) is an
//! [`RtmpError::Rejected`], which a push session must treat differently from a network
//! error: the stream key is wrong or in use, hammering will not fix it.

use bytes::{Bytes, BytesMut};

use super::{ON_META_DATA, SET_DATA_FRAME, Transport};
use crate::amf0::Amf0Value;
use crate::chunk::{DecoderConfig, RawMessage, csid};
use crate::error::RtmpError;
use crate::message::{Command, Message, RtmpMessage, type_id};
use pushcast_media::{Frame, FrameKind};

/// What OBS announces; some ingest servers look at it.
pub const DEFAULT_FLASH_VER: &str = "FMLE/3.0 (compatible; FMSc/1.0)";

/// Where to publish and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Application, e.g. `live2` for `rtmp://a.rtmp.youtube.com/live2/KEY`.
    pub app: String,
    /// The URL up to and including the app, e.g. `rtmp://a.rtmp.youtube.com/live2`.
    pub tc_url: String,
    /// Stream name (the stream key), with its `?query` if any.
    pub stream_name: String,
    pub flash_ver: String,
    pub swf_url: Option<String>,
    /// Chunk size we send with (announced right after the handshake). Large chunks mean
    /// fewer headers; 4096 is what OBS uses and every server accepts.
    pub chunk_size: u32,
    /// Acknowledgement window until the server announces its own.
    pub window_ack_size: u32,
    /// Limits on what the server may make us buffer.
    pub decoder: DecoderConfig,
    /// Enhanced RTMP FourCCs the stream uses (`hvc1`, `Opus`, ...), announced as
    /// `fourCcList` in `connect` the way E-RTMP clients do. Empty for a legacy stream:
    /// its `connect` stays what it always was.
    pub four_cc_list: Vec<String>,
}

impl ClientConfig {
    pub fn new(
        app: impl Into<String>,
        tc_url: impl Into<String>,
        stream_name: impl Into<String>,
    ) -> Self {
        Self {
            app: app.into(),
            tc_url: tc_url.into(),
            stream_name: stream_name.into(),
            flash_ver: DEFAULT_FLASH_VER.to_owned(),
            swf_url: None,
            chunk_size: 4096,
            window_ack_size: 2_500_000,
            // A server sends commands and control messages only: a destination that
            // declares a 16 MB message is refused at its header, not buffered.
            decoder: DecoderConfig::commands_only(),
            four_cc_list: Vec::new(),
        }
    }
}

/// What happened on a publish connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The destination said which Enhanced RTMP codecs it takes (`fourCcList`, or the
    /// keys of `videoFourCcInfoMap`/`audioFourCcInfoMap`, in its `connect` answer; `*`
    /// means any). Comes before [`ClientEvent::Connected`]; a destination that says
    /// nothing sends none.
    DestinationCodecs(Vec<String>),
    /// `connect` succeeded; the stream is being created.
    Connected,
    /// `NetStream.Publish.Start`: frames may be sent now.
    Published { stream_id: u32 },
    /// Any other non-error `onStatus` (e.g. `NetStream.Unpublish.Success`), for logging.
    Status {
        level: String,
        code: String,
        description: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshaking,
    Connecting,
    CreatingStream,
    Publishing { stream_id: u32 },
    Published { stream_id: u32 },
    Closed,
}

mod txn {
    pub const CONNECT: f64 = 1.0;
    pub const RELEASE_STREAM: f64 = 2.0;
    pub const FC_PUBLISH: f64 = 3.0;
    pub const CREATE_STREAM: f64 = 4.0;
    pub const PUBLISH: f64 = 5.0;
    pub const FC_UNPUBLISH: f64 = 6.0;
    pub const DELETE_STREAM: f64 = 7.0;
}

/// The publish protocol state machine of one connection. See the module docs of
/// [`crate`] for how to drive it.
#[derive(Debug)]
pub struct ClientConnection {
    config: ClientConfig,
    conn: Transport,
    state: State,
}

impl ClientConnection {
    /// A client for a freshly opened connection, with C0 + C1 queued: write
    /// [`Self::take_outbound`] first.
    pub fn new(config: ClientConfig) -> Self {
        let conn = Transport::client(config.decoder, config.window_ack_size);
        Self {
            config,
            conn,
            state: State::Handshaking,
        }
    }

    /// Feeds bytes read from the socket. Afterwards, write out [`Self::take_outbound`].
    /// An error is fatal; [`RtmpError::Rejected`] is a refusal.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<Vec<ClientEvent>, RtmpError> {
        let (handshake_done, messages) = self.conn.receive(input)?;
        if handshake_done && self.state == State::Handshaking {
            self.send_connect()?;
        }
        let mut events = Vec::new();
        for m in messages {
            if let RtmpMessage::Command(cmd) = &m.body {
                self.handle_command(cmd, &mut events)?;
            }
        }
        Ok(events)
    }

    /// Bytes to send, in order (a list of segments for one vectored write; large frame
    /// payloads are shared with the frame, not copied).
    pub fn take_outbound(&mut self) -> Vec<Bytes> {
        self.conn.take_outbound()
    }

    /// Bytes queued and not yet taken: the push session's backlog measure.
    pub fn outbound_len(&self) -> usize {
        self.conn.outbound_len()
    }

    pub fn bytes_received(&self) -> u64 {
        self.conn.bytes_received()
    }

    pub fn is_published(&self) -> bool {
        matches!(self.state, State::Published { .. })
    }

    /// The message stream id we publish on, once created.
    pub fn stream_id(&self) -> Option<u32> {
        match self.state {
            State::Publishing { stream_id } | State::Published { stream_id } => Some(stream_id),
            _ => None,
        }
    }

    /// Queues one media frame. Only after [`ClientEvent::Published`]. Metadata
    /// (`onMetaData, {...}`) is wrapped in `@setDataFrame`, which servers require to
    /// keep it for their viewers.
    pub fn send_frame(&mut self, frame: &Frame) -> Result<(), RtmpError> {
        let State::Published { stream_id } = self.state else {
            return Err(RtmpError::InvalidState(
                "send_frame before the stream is published".into(),
            ));
        };
        let (chunk_stream, type_id, payload) = match frame.kind {
            FrameKind::Audio => (csid::AUDIO, type_id::AUDIO, frame.payload.clone()),
            FrameKind::Video => (csid::VIDEO, type_id::VIDEO, frame.payload.clone()),
            FrameKind::Data if frame.payload.starts_with(ON_META_DATA) => {
                let mut wrapped =
                    BytesMut::with_capacity(SET_DATA_FRAME.len() + frame.payload.len());
                wrapped.extend_from_slice(SET_DATA_FRAME);
                wrapped.extend_from_slice(&frame.payload);
                (csid::STREAM, type_id::DATA_AMF0, wrapped.freeze())
            }
            FrameKind::Data => (csid::STREAM, type_id::DATA_AMF0, frame.payload.clone()),
        };
        self.conn.send_raw(&RawMessage {
            csid: chunk_stream,
            timestamp: frame.timestamp_ms,
            type_id,
            stream_id,
            payload,
        })
    }

    /// Ends the publish politely (`FCUnpublish` + `deleteStream`), as OBS does on stop;
    /// then flush and close. A no-op if nothing was published.
    pub fn unpublish(&mut self) -> Result<(), RtmpError> {
        if let State::Publishing { stream_id } | State::Published { stream_id } = self.state {
            let name = Amf0Value::string(self.config.stream_name.clone());
            // On stream 0, like ffmpeg and OBS.
            self.command(
                csid::COMMAND,
                0,
                "FCUnpublish",
                txn::FC_UNPUBLISH,
                vec![name],
            )?;
            let id = Amf0Value::Number(f64::from(stream_id));
            self.command(
                csid::COMMAND,
                0,
                "deleteStream",
                txn::DELETE_STREAM,
                vec![id],
            )?;
        }
        self.state = State::Closed;
        Ok(())
    }

    fn send_connect(&mut self) -> Result<(), RtmpError> {
        self.conn.set_chunk_size(self.config.chunk_size)?;
        let mut props = vec![
            ("app".to_owned(), Amf0Value::string(self.config.app.clone())),
            ("type".to_owned(), Amf0Value::string("nonprivate")),
            (
                "flashVer".to_owned(),
                Amf0Value::string(self.config.flash_ver.clone()),
            ),
        ];
        if let Some(swf) = &self.config.swf_url {
            props.push(("swfUrl".to_owned(), Amf0Value::string(swf.clone())));
        }
        props.push((
            "tcUrl".to_owned(),
            Amf0Value::string(self.config.tc_url.clone()),
        ));
        if !self.config.four_cc_list.is_empty() {
            props.push((
                "fourCcList".to_owned(),
                Amf0Value::StrictArray(
                    self.config
                        .four_cc_list
                        .iter()
                        .map(|cc| Amf0Value::string(cc.clone()))
                        .collect(),
                ),
            ));
        }
        let connect = Command::new("connect", txn::CONNECT, Amf0Value::Object(props), vec![]);
        self.conn.send(
            csid::COMMAND,
            &Message::new(0, 0, RtmpMessage::Command(connect)),
        )?;
        self.state = State::Connecting;
        Ok(())
    }

    fn command(
        &mut self,
        chunk_stream: u32,
        stream_id: u32,
        name: &str,
        txn: f64,
        args: Vec<Amf0Value>,
    ) -> Result<(), RtmpError> {
        let cmd = Command::new(name, txn, Amf0Value::Null, args);
        self.conn.send(
            chunk_stream,
            &Message::new(0, stream_id, RtmpMessage::Command(cmd)),
        )
    }

    fn handle_command(
        &mut self,
        cmd: &Command,
        events: &mut Vec<ClientEvent>,
    ) -> Result<(), RtmpError> {
        match cmd.name.as_str() {
            "_result" => self.on_result(cmd, events),
            "_error" => self.on_error(cmd),
            "onStatus" => self.on_status(cmd, events),
            // onBWDone, onFCPublish, _checkbw, ...: informational.
            _ => Ok(()),
        }
    }

    fn on_result(&mut self, cmd: &Command, events: &mut Vec<ClientEvent>) -> Result<(), RtmpError> {
        if cmd.transaction_id == txn::CONNECT && self.state == State::Connecting {
            let (level, code, description) = status_fields(cmd);
            if level == "error" {
                return Err(rejected(
                    code,
                    description,
                    "NetConnection.Connect.Rejected",
                ));
            }
            if let Some(codecs) = destination_codecs(cmd) {
                events.push(ClientEvent::DestinationCodecs(codecs));
            }
            events.push(ClientEvent::Connected);
            let name = Amf0Value::string(self.config.stream_name.clone());
            self.command(
                csid::COMMAND,
                0,
                "releaseStream",
                txn::RELEASE_STREAM,
                vec![name.clone()],
            )?;
            self.command(csid::COMMAND, 0, "FCPublish", txn::FC_PUBLISH, vec![name])?;
            self.command(csid::COMMAND, 0, "createStream", txn::CREATE_STREAM, vec![])?;
            self.state = State::CreatingStream;
        } else if cmd.transaction_id == txn::CREATE_STREAM && self.state == State::CreatingStream {
            let stream_id = cmd
                .args
                .iter()
                .find_map(Amf0Value::as_number)
                .filter(|n| n.fract() == 0.0 && *n >= 1.0 && *n <= f64::from(u32::MAX))
                .map(|n| n as u32)
                .ok_or_else(|| {
                    RtmpError::Protocol("createStream result without a valid stream id".into())
                })?;
            let args = vec![
                Amf0Value::string(self.config.stream_name.clone()),
                Amf0Value::string("live"),
            ];
            self.command(csid::STREAM, stream_id, "publish", txn::PUBLISH, args)?;
            self.state = State::Publishing { stream_id };
        }
        Ok(())
    }

    fn on_error(&mut self, cmd: &Command) -> Result<(), RtmpError> {
        let (_, code, description) = status_fields(cmd);
        let t = cmd.transaction_id;
        if t == txn::CONNECT {
            Err(rejected(
                code,
                description,
                "NetConnection.Connect.Rejected",
            ))
        } else if t == txn::CREATE_STREAM || t == txn::PUBLISH {
            Err(rejected(code, description, "NetStream.Publish.Rejected"))
        } else {
            // releaseStream / FCPublish are optional extensions: servers that do not
            // know them answer `_error`, which is harmless.
            Ok(())
        }
    }

    fn on_status(&mut self, cmd: &Command, events: &mut Vec<ClientEvent>) -> Result<(), RtmpError> {
        let (level, code, description) = status_fields(cmd);
        if level == "error" {
            return Err(rejected(code, description, "NetStream.Publish.Rejected"));
        }
        match self.state {
            State::Publishing { stream_id } if code == "NetStream.Publish.Start" => {
                self.state = State::Published { stream_id };
                events.push(ClientEvent::Published { stream_id });
            }
            _ => events.push(ClientEvent::Status {
                level: level.to_owned(),
                code: code.to_owned(),
                description: description.to_owned(),
            }),
        }
        Ok(())
    }
}

/// `(level, code, description)` of the info object of a status command, "" if absent.
/// The Enhanced RTMP codecs a `connect` answer lists, from its properties or its info
/// object: `fourCcList` (E-RTMP v1) and the keys of `videoFourCcInfoMap` /
/// `audioFourCcInfoMap` (v2). `None` when it lists none (a legacy server, or one that
/// does not say).
fn destination_codecs(cmd: &Command) -> Option<Vec<String>> {
    let mut found: Option<Vec<String>> = None;
    for object in std::iter::once(&cmd.command_object).chain(cmd.info()) {
        if let Some(Amf0Value::StrictArray(items)) = object.get("fourCcList") {
            found
                .get_or_insert_with(Vec::new)
                .extend(items.iter().filter_map(|v| v.as_str().map(str::to_owned)));
        }
        for map in ["videoFourCcInfoMap", "audioFourCcInfoMap"] {
            if let Some(props) = object.get(map).and_then(Amf0Value::properties) {
                found
                    .get_or_insert_with(Vec::new)
                    .extend(props.iter().map(|(k, _)| k.clone()));
            }
        }
    }
    found.map(|mut list| {
        list.sort();
        list.dedup();
        // A hostile server cannot make the list (and the error quoting it) big.
        list.truncate(64);
        list
    })
}

fn status_fields(cmd: &Command) -> (&str, &str, &str) {
    let info = cmd.info();
    let field = |k: &str| info.and_then(|i| i.get_str(k)).unwrap_or_default();
    (field("level"), field("code"), field("description"))
}

fn rejected(code: &str, description: &str, default_code: &str) -> RtmpError {
    RtmpError::Rejected {
        code: if code.is_empty() { default_code } else { code }.to_owned(),
        description: description.to_owned(),
    }
}

#[cfg(test)]
mod codec_list_tests {
    use super::*;

    fn answer(object: Amf0Value, info: Amf0Value) -> Command {
        Command::new("_result", txn::CONNECT, object, vec![info])
    }

    #[test]
    fn a_destination_lists_its_codecs_in_either_object_and_either_form() {
        let list = |items: &[&str]| {
            Amf0Value::StrictArray(items.iter().map(|s| Amf0Value::string(*s)).collect())
        };
        let v1 = answer(
            Amf0Value::object([("fourCcList", list(&["hvc1", "avc1"]))]),
            Amf0Value::Null,
        );
        assert_eq!(
            destination_codecs(&v1),
            Some(vec!["avc1".into(), "hvc1".into()])
        );
        let v2 = answer(
            Amf0Value::Null,
            Amf0Value::object([
                (
                    "videoFourCcInfoMap",
                    Amf0Value::object([("av01", Amf0Value::Number(1.0))]),
                ),
                (
                    "audioFourCcInfoMap",
                    Amf0Value::object([("*", Amf0Value::Number(1.0))]),
                ),
            ]),
        );
        assert_eq!(
            destination_codecs(&v2),
            Some(vec!["*".into(), "av01".into()])
        );
        let legacy = answer(
            Amf0Value::object([("fmsVer", Amf0Value::string("FMS/3,0,1,123"))]),
            Amf0Value::object([("code", Amf0Value::string("NetConnection.Connect.Success"))]),
        );
        assert_eq!(destination_codecs(&legacy), None);
        // Bounded, whatever the server sends.
        let many: Vec<String> = (0..1000).map(|i| format!("c{i:03}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let big = answer(
            Amf0Value::object([("fourCcList", list(&refs))]),
            Amf0Value::Null,
        );
        assert_eq!(destination_codecs(&big).map(|l| l.len()), Some(64));
    }
}
