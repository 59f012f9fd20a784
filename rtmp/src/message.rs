//! Typed RTMP messages, decoded from / encoded to [`RawMessage`]s.
//!
//! Media bodies (audio, video, data) stay raw [`Bytes`]: they are parsed once at ingest
//! and passed through to every destination untouched. Commands are decoded into
//! [`Command`] because the connection state machines act on them. Aggregate messages (type
//! 22, sent by some servers and restreamers) are split into their sub-messages here, with
//! timestamps rebased on the aggregate's timestamp, so nothing above this layer has to
//! know they exist.

use bytes::{BufMut, Bytes, BytesMut};

use super::amf0::{self, Amf0Value};
use super::chunk::RawMessage;
use super::error::RtmpError;
use super::reader::Reader;

/// RTMP message type ids.
pub mod type_id {
    pub const SET_CHUNK_SIZE: u8 = 1;
    pub const ABORT: u8 = 2;
    pub const ACKNOWLEDGEMENT: u8 = 3;
    pub const USER_CONTROL: u8 = 4;
    pub const WINDOW_ACK_SIZE: u8 = 5;
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const DATA_AMF3: u8 = 15;
    pub const COMMAND_AMF3: u8 = 17;
    pub const DATA_AMF0: u8 = 18;
    pub const COMMAND_AMF0: u8 = 20;
    pub const AGGREGATE: u8 = 22;
}

/// User Control events (message type 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserControlEvent {
    StreamBegin(u32),
    StreamEof(u32),
    StreamDry(u32),
    SetBufferLength {
        stream_id: u32,
        buffer_ms: u32,
    },
    StreamIsRecorded(u32),
    /// Sent by either side; the other must answer with a `PingResponse` of the same value.
    PingRequest(u32),
    PingResponse(u32),
    /// An event we do not interpret (kept so that it can be logged).
    Other {
        event_type: u16,
        data: Bytes,
    },
}

/// The limit type of a Set Peer Bandwidth message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerBandwidthLimit {
    Hard,
    Soft,
    Dynamic,
}

/// An AMF0 command (`connect`, `createStream`, `publish`, `_result`, `onStatus`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub transaction_id: f64,
    /// The command object: an object for `connect`/`_result`, usually `Null` otherwise.
    pub command_object: Amf0Value,
    /// The arguments after the command object.
    pub args: Vec<Amf0Value>,
}

impl Command {
    pub fn new(
        name: impl Into<String>,
        transaction_id: f64,
        command_object: Amf0Value,
        args: Vec<Amf0Value>,
    ) -> Self {
        Self {
            name: name.into(),
            transaction_id,
            command_object,
            args,
        }
    }

    /// The `n`th argument as a string.
    pub fn arg_str(&self, n: usize) -> Option<&str> {
        self.args.get(n).and_then(Amf0Value::as_str)
    }

    /// The info object of `onStatus` / `_error` (first argument), if any.
    pub fn info(&self) -> Option<&Amf0Value> {
        self.args.iter().find(|a| a.properties().is_some())
    }
}

/// The body of an RTMP message.
#[derive(Debug, Clone, PartialEq)]
pub enum RtmpMessage {
    SetChunkSize(u32),
    Abort {
        csid: u32,
    },
    Acknowledgement {
        sequence: u32,
    },
    UserControl(UserControlEvent),
    WindowAckSize(u32),
    SetPeerBandwidth {
        size: u32,
        limit: PeerBandwidthLimit,
    },
    /// FLV audio tag body.
    Audio(Bytes),
    /// FLV video tag body.
    Video(Bytes),
    /// AMF0 data (FLV script tag body), e.g. `@setDataFrame onMetaData {...}`.
    Data(Bytes),
    Command(Command),
    /// The sub-messages of an aggregate, timestamps already rebased.
    Aggregate(Vec<Message>),
    /// A type we do not handle (shared objects, AMF3 data, ...): ignored by the connections.
    Unknown {
        type_id: u8,
        payload: Bytes,
    },
}

/// A decoded message with its header.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub timestamp: u32,
    pub stream_id: u32,
    pub body: RtmpMessage,
}

fn short(kind: &'static str) -> impl Fn() -> RtmpError {
    move || RtmpError::malformed(kind, "body too short")
}

impl Message {
    pub fn new(timestamp: u32, stream_id: u32, body: RtmpMessage) -> Self {
        Self {
            timestamp,
            stream_id,
            body,
        }
    }

    /// Decodes the body of `raw` according to its type id.
    pub fn decode(raw: &RawMessage) -> Result<Self, RtmpError> {
        let mut r = Reader::new(&raw.payload);
        let body = match raw.type_id {
            type_id::SET_CHUNK_SIZE => {
                RtmpMessage::SetChunkSize(r.u32_be().ok_or_else(short("Set Chunk Size"))?)
            }
            type_id::ABORT => RtmpMessage::Abort {
                csid: r.u32_be().ok_or_else(short("Abort"))?,
            },
            type_id::ACKNOWLEDGEMENT => RtmpMessage::Acknowledgement {
                sequence: r.u32_be().ok_or_else(short("Acknowledgement"))?,
            },
            type_id::USER_CONTROL => RtmpMessage::UserControl(decode_user_control(&raw.payload)?),
            type_id::WINDOW_ACK_SIZE => RtmpMessage::WindowAckSize(
                r.u32_be()
                    .ok_or_else(short("Window Acknowledgement Size"))?,
            ),
            type_id::SET_PEER_BANDWIDTH => {
                let size = r.u32_be().ok_or_else(short("Set Peer Bandwidth"))?;
                // Some peers omit the limit type; treat that as dynamic.
                let limit = match r.u8() {
                    Some(0) => PeerBandwidthLimit::Hard,
                    Some(1) => PeerBandwidthLimit::Soft,
                    _ => PeerBandwidthLimit::Dynamic,
                };
                RtmpMessage::SetPeerBandwidth { size, limit }
            }
            type_id::AUDIO => RtmpMessage::Audio(raw.payload.clone()),
            type_id::VIDEO => RtmpMessage::Video(raw.payload.clone()),
            type_id::DATA_AMF0 => RtmpMessage::Data(raw.payload.clone()),
            type_id::COMMAND_AMF0 => RtmpMessage::Command(decode_command(&raw.payload)?),
            // AMF3 commands from Flash clients start with a 0 byte, then plain AMF0.
            type_id::COMMAND_AMF3 => {
                let body = raw.payload.get(1..).ok_or_else(short("AMF3 command"))?;
                RtmpMessage::Command(decode_command(body)?)
            }
            type_id::AGGREGATE => RtmpMessage::Aggregate(decode_aggregate(raw)?),
            other => RtmpMessage::Unknown {
                type_id: other,
                payload: raw.payload.clone(),
            },
        };
        Ok(Self {
            timestamp: raw.timestamp,
            stream_id: raw.stream_id,
            body,
        })
    }

    /// The wire type id of this message.
    pub fn type_id(&self) -> u8 {
        match &self.body {
            RtmpMessage::SetChunkSize(_) => type_id::SET_CHUNK_SIZE,
            RtmpMessage::Abort { .. } => type_id::ABORT,
            RtmpMessage::Acknowledgement { .. } => type_id::ACKNOWLEDGEMENT,
            RtmpMessage::UserControl(_) => type_id::USER_CONTROL,
            RtmpMessage::WindowAckSize(_) => type_id::WINDOW_ACK_SIZE,
            RtmpMessage::SetPeerBandwidth { .. } => type_id::SET_PEER_BANDWIDTH,
            RtmpMessage::Audio(_) => type_id::AUDIO,
            RtmpMessage::Video(_) => type_id::VIDEO,
            RtmpMessage::Data(_) => type_id::DATA_AMF0,
            RtmpMessage::Command(_) => type_id::COMMAND_AMF0,
            RtmpMessage::Aggregate(_) => type_id::AGGREGATE,
            RtmpMessage::Unknown { type_id, .. } => *type_id,
        }
    }

    /// Encodes this message for chunk stream `csid`.
    pub fn encode(&self, csid: u32) -> Result<RawMessage, RtmpError> {
        let payload = match &self.body {
            RtmpMessage::SetChunkSize(v)
            | RtmpMessage::Acknowledgement { sequence: v }
            | RtmpMessage::WindowAckSize(v)
            | RtmpMessage::Abort { csid: v } => Bytes::copy_from_slice(&v.to_be_bytes()),
            RtmpMessage::SetPeerBandwidth { size, limit } => {
                let mut b = BytesMut::with_capacity(5);
                b.put_u32(*size);
                b.put_u8(match limit {
                    PeerBandwidthLimit::Hard => 0,
                    PeerBandwidthLimit::Soft => 1,
                    PeerBandwidthLimit::Dynamic => 2,
                });
                b.freeze()
            }
            RtmpMessage::UserControl(event) => encode_user_control(event),
            RtmpMessage::Audio(p) | RtmpMessage::Video(p) | RtmpMessage::Data(p) => p.clone(),
            RtmpMessage::Unknown { payload, .. } => payload.clone(),
            RtmpMessage::Command(c) => {
                let mut b = BytesMut::new();
                amf0::encode(&Amf0Value::String(c.name.clone()), &mut b)?;
                amf0::encode(&Amf0Value::Number(c.transaction_id), &mut b)?;
                amf0::encode(&c.command_object, &mut b)?;
                amf0::encode_all(&c.args, &mut b)?;
                b.freeze()
            }
            RtmpMessage::Aggregate(subs) => encode_aggregate(self.timestamp, subs)?,
        };
        Ok(RawMessage {
            csid,
            timestamp: self.timestamp,
            type_id: self.type_id(),
            stream_id: self.stream_id,
            payload,
        })
    }
}

fn decode_command(body: &[u8]) -> Result<Command, RtmpError> {
    let mut values = amf0::decode_all(body)?.into_iter();
    let name = match values.next() {
        Some(Amf0Value::String(s)) => s,
        _ => {
            return Err(RtmpError::malformed(
                "command",
                "does not start with a name",
            ));
        }
    };
    // Transaction id and command object are missing in some server-sent commands
    // (e.g. onBWDone, onFCPublish from some servers); default rather than refuse.
    let transaction_id = values.next().and_then(|v| v.as_number()).unwrap_or(0.0);
    let command_object = values.next().unwrap_or(Amf0Value::Null);
    Ok(Command {
        name,
        transaction_id,
        command_object,
        args: values.collect(),
    })
}

fn decode_user_control(payload: &[u8]) -> Result<UserControlEvent, RtmpError> {
    let mut r = Reader::new(payload);
    let event_type = r.u16_be().ok_or_else(short("User Control"))?;
    let mut value = || r.u32_be().ok_or_else(short("User Control"));
    Ok(match event_type {
        0 => UserControlEvent::StreamBegin(value()?),
        1 => UserControlEvent::StreamEof(value()?),
        2 => UserControlEvent::StreamDry(value()?),
        3 => {
            let stream_id = value()?;
            let buffer_ms = value()?;
            UserControlEvent::SetBufferLength {
                stream_id,
                buffer_ms,
            }
        }
        4 => UserControlEvent::StreamIsRecorded(value()?),
        6 => UserControlEvent::PingRequest(value()?),
        7 => UserControlEvent::PingResponse(value()?),
        other => UserControlEvent::Other {
            event_type: other,
            data: Bytes::copy_from_slice(payload.get(2..).unwrap_or_default()),
        },
    })
}

fn encode_user_control(event: &UserControlEvent) -> Bytes {
    let mut b = BytesMut::with_capacity(10);
    let (kind, a, second) = match event {
        UserControlEvent::StreamBegin(v) => (0, *v, None),
        UserControlEvent::StreamEof(v) => (1, *v, None),
        UserControlEvent::StreamDry(v) => (2, *v, None),
        UserControlEvent::SetBufferLength {
            stream_id,
            buffer_ms,
        } => (3, *stream_id, Some(*buffer_ms)),
        UserControlEvent::StreamIsRecorded(v) => (4, *v, None),
        UserControlEvent::PingRequest(v) => (6, *v, None),
        UserControlEvent::PingResponse(v) => (7, *v, None),
        UserControlEvent::Other { event_type, data } => {
            b.put_u16(*event_type);
            b.put_slice(data);
            return b.freeze();
        }
    };
    b.put_u16(kind);
    b.put_u32(a);
    if let Some(v) = second {
        b.put_u32(v);
    }
    b.freeze()
}

/// Splits an aggregate: a sequence of FLV tags (type, 24-bit size, 24+8-bit timestamp,
/// 24-bit stream id, body, 32-bit back pointer). Sub-message timestamps are rebased so
/// that the first one gets the aggregate's timestamp; the aggregate's stream id applies.
fn decode_aggregate(raw: &RawMessage) -> Result<Vec<Message>, RtmpError> {
    let mut r = Reader::new(&raw.payload);
    let mut first_ts = None;
    let mut out = Vec::new();
    let bad = |reason: &str| RtmpError::malformed("aggregate", reason);
    while r.remaining() > 0 {
        let sub_type = r.u8().ok_or_else(|| bad("truncated sub-message header"))?;
        let size = r
            .u24_be()
            .ok_or_else(|| bad("truncated sub-message header"))?;
        let ts_low = r
            .u24_be()
            .ok_or_else(|| bad("truncated sub-message header"))?;
        let ts_high = r.u8().ok_or_else(|| bad("truncated sub-message header"))?;
        r.u24_be()
            .ok_or_else(|| bad("truncated sub-message header"))?; // stream id: overridden
        let start = r.position();
        let size = usize::try_from(size).map_err(|_| bad("sub-message too large"))?;
        r.bytes(size)
            .ok_or_else(|| bad("sub-message body past the end"))?;
        // The back pointer is sometimes missing after the last tag; tolerate that.
        let back = r.remaining().min(4);
        r.bytes(back);
        if sub_type == type_id::AGGREGATE {
            return Err(bad("nested aggregate"));
        }
        let ts = ts_low | (u32::from(ts_high) << 24);
        let base = *first_ts.get_or_insert(ts);
        let sub = RawMessage {
            csid: raw.csid,
            timestamp: raw.timestamp.wrapping_add(ts.wrapping_sub(base)),
            type_id: sub_type,
            stream_id: raw.stream_id,
            payload: raw.payload.slice(start..start + size),
        };
        out.push(Message::decode(&sub)?);
    }
    Ok(out)
}

fn encode_aggregate(base_ts: u32, subs: &[Message]) -> Result<Bytes, RtmpError> {
    let mut b = BytesMut::new();
    for sub in subs {
        if matches!(sub.body, RtmpMessage::Aggregate(_)) {
            return Err(RtmpError::malformed("aggregate", "nested aggregate"));
        }
        let raw = sub.encode(0)?;
        let size = u32::try_from(raw.payload.len())
            .ok()
            .filter(|s| *s <= 0x00FF_FFFF)
            .ok_or_else(|| RtmpError::malformed("aggregate", "sub-message too large"))?;
        let ts = sub.timestamp.wrapping_sub(base_ts);
        b.put_u8(raw.type_id);
        b.put_slice(&size.to_be_bytes()[1..]);
        b.put_slice(&ts.to_be_bytes()[1..]);
        b.put_u8((ts >> 24) as u8);
        b.put_slice(&[0, 0, 0]);
        b.put_slice(&raw.payload);
        b.put_u32(size + 11);
    }
    Ok(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: &Message) -> Message {
        let raw = m.encode(3).expect("encodes");
        Message::decode(&raw).expect("decodes")
    }

    #[test]
    fn control_messages_roundtrip() {
        let bodies = vec![
            RtmpMessage::SetChunkSize(4096),
            RtmpMessage::Abort { csid: 6 },
            RtmpMessage::Acknowledgement { sequence: 123_456 },
            RtmpMessage::WindowAckSize(2_500_000),
            RtmpMessage::SetPeerBandwidth {
                size: 2_500_000,
                limit: PeerBandwidthLimit::Dynamic,
            },
            RtmpMessage::SetPeerBandwidth {
                size: 1,
                limit: PeerBandwidthLimit::Hard,
            },
            RtmpMessage::UserControl(UserControlEvent::StreamBegin(1)),
            RtmpMessage::UserControl(UserControlEvent::StreamEof(1)),
            RtmpMessage::UserControl(UserControlEvent::StreamDry(1)),
            RtmpMessage::UserControl(UserControlEvent::SetBufferLength {
                stream_id: 1,
                buffer_ms: 3000,
            }),
            RtmpMessage::UserControl(UserControlEvent::StreamIsRecorded(1)),
            RtmpMessage::UserControl(UserControlEvent::PingRequest(99)),
            RtmpMessage::UserControl(UserControlEvent::PingResponse(99)),
            RtmpMessage::UserControl(UserControlEvent::Other {
                event_type: 31,
                data: Bytes::from_static(&[1, 2]),
            }),
            RtmpMessage::Audio(Bytes::from_static(&[0xaf, 1, 2])),
            RtmpMessage::Video(Bytes::from_static(&[0x17, 1, 0, 0, 0])),
            RtmpMessage::Data(Bytes::from_static(&[0x05])),
            RtmpMessage::Command(Command::new(
                "connect",
                1.0,
                Amf0Value::object([("app", Amf0Value::string("live"))]),
                vec![],
            )),
            RtmpMessage::Unknown {
                type_id: 19,
                payload: Bytes::from_static(b"so"),
            },
        ];
        for body in bodies {
            let m = Message::new(10, 1, body);
            assert_eq!(roundtrip(&m), m);
        }
    }

    #[test]
    fn short_bodies_are_errors_not_panics() {
        for t in [1u8, 2, 3, 4, 5, 6, 17, 20, 22] {
            for len in 0..3 {
                let raw = RawMessage {
                    csid: 2,
                    timestamp: 0,
                    type_id: t,
                    stream_id: 0,
                    payload: Bytes::from(vec![0x06u8; len]),
                };
                let _ = Message::decode(&raw);
            }
        }
        let raw = RawMessage {
            csid: 2,
            timestamp: 0,
            type_id: 5,
            stream_id: 0,
            payload: Bytes::from_static(&[0, 0]),
        };
        assert!(matches!(
            Message::decode(&raw),
            Err(RtmpError::MalformedMessage { .. })
        ));
    }

    #[test]
    fn amf3_command_is_read_as_amf0_after_its_marker_byte() {
        let amf0 = Message::new(
            0,
            0,
            RtmpMessage::Command(Command::new(
                "publish",
                5.0,
                Amf0Value::Null,
                vec![Amf0Value::string("k")],
            )),
        )
        .encode(3)
        .expect("encodes");
        let mut body = vec![0u8];
        body.extend_from_slice(&amf0.payload);
        let raw = RawMessage {
            type_id: type_id::COMMAND_AMF3,
            payload: Bytes::from(body),
            ..amf0
        };
        let m = Message::decode(&raw).expect("decodes");
        assert!(
            matches!(m.body, RtmpMessage::Command(c) if c.name == "publish" && c.arg_str(0) == Some("k"))
        );
    }

    #[test]
    fn aggregate_is_split_with_rebased_timestamps() {
        // Sub-messages stamped 5000 and 5040 inside an aggregate stamped 100.
        let mut p = Vec::new();
        for (t, ts, body) in [
            (9u8, 5000u32, &[0x17u8, 1, 0, 0, 0][..]),
            (8, 5040, &[0xaf, 1, 9][..]),
        ] {
            p.push(t);
            p.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            p.extend_from_slice(&ts.to_be_bytes()[1..]);
            p.push((ts >> 24) as u8);
            p.extend_from_slice(&[0, 0, 7]);
            p.extend_from_slice(body);
            p.extend_from_slice(&(body.len() as u32 + 11).to_be_bytes());
        }
        let raw = RawMessage {
            csid: 6,
            timestamp: 100,
            type_id: type_id::AGGREGATE,
            stream_id: 1,
            payload: Bytes::from(p),
        };
        let m = Message::decode(&raw).expect("decodes");
        let RtmpMessage::Aggregate(subs) = m.body else {
            panic!("not an aggregate")
        };
        assert_eq!(
            subs,
            vec![
                Message::new(
                    100,
                    1,
                    RtmpMessage::Video(Bytes::from_static(&[0x17, 1, 0, 0, 0]))
                ),
                Message::new(
                    140,
                    1,
                    RtmpMessage::Audio(Bytes::from_static(&[0xaf, 1, 9]))
                ),
            ]
        );
        // And our encoder produces the same layout.
        let again = Message::new(100, 1, RtmpMessage::Aggregate(subs.clone()));
        assert_eq!(roundtrip(&again), again);
    }

    #[test]
    fn malformed_aggregates_are_errors() {
        let cases: [&[u8]; 3] = [
            &[9, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 1, 2], // body past the end
            &[9, 0, 0],                                // truncated header
            &[22, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11], // nested
        ];
        for c in cases {
            let raw = RawMessage {
                csid: 6,
                timestamp: 0,
                type_id: type_id::AGGREGATE,
                stream_id: 1,
                payload: Bytes::copy_from_slice(c),
            };
            assert!(Message::decode(&raw).is_err(), "{c:?}");
        }
    }
}
