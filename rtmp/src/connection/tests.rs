//! The connection state machines against each other and against scripted peers.

use bytes::Bytes;

use super::client::{ClientConfig, ClientConnection, ClientEvent};
use super::server::{RejectCode, ServerConfig, ServerConnection, ServerEvent};
use crate::amf0::{self, Amf0Value};
use crate::chunk::{ChunkDecoder, ChunkEncoder, DecoderConfig, OutBuf, RawMessage, csid};
use crate::error::RtmpError;
use crate::handshake::{Handshake, HandshakeStatus};
use crate::message::{Command, Message, RtmpMessage, UserControlEvent, type_id};
use pushcast_media::{Frame, FrameKind};

fn flat(segments: Vec<Bytes>) -> Vec<u8> {
    segments.concat()
}

#[derive(Clone)]
enum Decision {
    Accept,
    Reject(RejectCode, &'static str),
    Wait,
}

/// A client and a server wired back to back in memory.
struct Pair {
    client: ClientConnection,
    server: ServerConnection,
    decision: Decision,
    server_events: Vec<ServerEvent>,
    client_events: Vec<ClientEvent>,
    wire_bytes: usize,
}

impl Pair {
    fn new(stream_name: &str, decision: Decision) -> Self {
        Self {
            client: ClientConnection::new(ClientConfig::new(
                "live",
                "rtmp://127.0.0.1:1935/live",
                stream_name,
            )),
            server: ServerConnection::new(ServerConfig::default()),
            decision,
            server_events: Vec::new(),
            client_events: Vec::new(),
            wire_bytes: 0,
        }
    }

    /// Shuttles bytes until both sides are quiet.
    fn pump(&mut self) -> Result<(), RtmpError> {
        for _ in 0..100 {
            let c = flat(self.client.take_outbound());
            self.wire_bytes += c.len();
            for e in self.server.handle_input(&c)? {
                if let ServerEvent::PublishRequested(req) = &e {
                    match self.decision.clone() {
                        Decision::Accept => self.server.accept_publish(req.stream_id)?,
                        Decision::Reject(code, text) => {
                            self.server.reject_publish(req.stream_id, code, text)?
                        }
                        Decision::Wait => {}
                    }
                }
                self.server_events.push(e);
            }
            let s = flat(self.server.take_outbound());
            if c.is_empty() && s.is_empty() {
                return Ok(());
            }
            let events = self.client.handle_input(&s)?;
            self.client_events.extend(events);
        }
        panic!("the connections never went quiet");
    }

    fn media(&self) -> Vec<Frame> {
        self.server_events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Media(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }
}

fn frame(kind: FrameKind, ts: u32, payload: Vec<u8>) -> Frame {
    Frame {
        kind,
        timestamp_ms: ts,
        payload: Bytes::from(payload),
    }
}

fn metadata() -> Vec<u8> {
    let mut b = Vec::new();
    amf0::encode_all(
        &[
            Amf0Value::string("onMetaData"),
            Amf0Value::EcmaArray(vec![
                ("width".into(), Amf0Value::Number(1280.0)),
                ("height".into(), Amf0Value::Number(720.0)),
                ("videocodecid".into(), Amf0Value::Number(7.0)),
            ]),
        ],
        &mut b,
    )
    .expect("encodes");
    b
}

/// A realistic publish: metadata, sequence headers, a 50 KB keyframe, inter frames and
/// audio, with timestamps that cross the 24-bit extended timestamp boundary.
fn sample_frames() -> Vec<Frame> {
    let mut frames = vec![
        frame(FrameKind::Data, 0, metadata()),
        frame(
            FrameKind::Video,
            0,
            vec![0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f],
        ),
        frame(FrameKind::Audio, 0, vec![0xaf, 0, 0x12, 0x10]),
    ];
    let keyframe: Vec<u8> = [0x17u8, 1, 0, 0, 0]
        .into_iter()
        .chain((0..50_000).map(|i| (i % 251) as u8))
        .collect();
    frames.push(frame(FrameKind::Video, 0, keyframe));
    for i in 1..40u32 {
        let ts = if i < 20 { i * 33 } else { 0x00FF_FFF0 + i * 33 };
        frames.push(frame(FrameKind::Audio, ts, vec![0xaf, 1, i as u8, 2, 3]));
        let inter: Vec<u8> = [0x27u8, 1, 0, 0, 0x21]
            .into_iter()
            .chain((0..(300 + i * 97)).map(|j| (j ^ i) as u8))
            .collect();
        frames.push(frame(FrameKind::Video, ts, inter));
    }
    frames
}

#[test]
fn client_publishes_and_server_receives_identical_frames() {
    let mut pair = Pair::new("stream-key?token=abc&x=1", Decision::Accept);
    pair.pump().expect("handshake, connect, publish");

    let req = pair
        .server_events
        .iter()
        .find_map(|e| match e {
            ServerEvent::PublishRequested(r) => Some(r.clone()),
            _ => None,
        })
        .expect("publish requested");
    assert_eq!(req.app, "live");
    assert_eq!(req.stream_name, "stream-key");
    assert_eq!(req.query.as_deref(), Some("token=abc&x=1"));
    assert_eq!(req.tc_url.as_deref(), Some("rtmp://127.0.0.1:1935/live"));
    assert_eq!(req.publish_type, "live");
    assert_eq!(
        req.connect.flash_ver.as_deref(),
        Some("FMLE/3.0 (compatible; FMSc/1.0)")
    );
    assert_eq!(
        req.connect
            .properties
            .iter()
            .find(|(k, _)| k == "type")
            .map(|(_, v)| v),
        Some(&Amf0Value::string("nonprivate"))
    );
    assert!(matches!(pair.server_events[0], ServerEvent::Connected(_)));
    assert_eq!(pair.client_events[0], ClientEvent::Connected);
    assert_eq!(
        pair.client_events[1],
        ClientEvent::Published {
            stream_id: req.stream_id
        }
    );
    assert!(pair.client.is_published());
    assert!(pair.server.is_publishing());

    let frames = sample_frames();
    for f in &frames {
        pair.client.send_frame(f).expect("queued");
    }
    pair.pump().expect("media");
    assert_eq!(
        pair.media(),
        frames,
        "every frame arrives byte-identical, metadata unwrapped"
    );

    pair.client.unpublish().expect("unpublish");
    pair.pump().expect("unpublish");
    assert_eq!(
        pair.server_events.last(),
        Some(&ServerEvent::PublishEnded {
            stream_id: req.stream_id,
            stream_name: "stream-key".into()
        })
    );
    assert!(!pair.server.is_publishing());
}

#[test]
fn byte_by_byte_delivery_gives_the_same_result() {
    // The whole client transcript, replayed into a fresh server one byte at a time.
    let mut pair = Pair::new("k", Decision::Accept);
    let mut transcript = Vec::new();
    let mut server_replies = Vec::new();
    for _ in 0..20 {
        let c = flat(pair.client.take_outbound());
        transcript.extend_from_slice(&c);
        for e in pair.server.handle_input(&c).expect("server") {
            if let ServerEvent::PublishRequested(r) = e {
                pair.server.accept_publish(r.stream_id).expect("accept");
            }
        }
        let s = flat(pair.server.take_outbound());
        server_replies.push(s.len());
        for e in pair.client.handle_input(&s).expect("client") {
            if let ClientEvent::Published { .. } = e {
                for f in sample_frames() {
                    pair.client.send_frame(&f).expect("queued");
                }
            }
        }
    }
    let mut server = ServerConnection::new(ServerConfig::default());
    let mut media = Vec::new();
    for b in &transcript {
        for e in server
            .handle_input(std::slice::from_ref(b))
            .expect("byte by byte")
        {
            match e {
                ServerEvent::PublishRequested(r) => {
                    server.accept_publish(r.stream_id).expect("accept")
                }
                ServerEvent::Media(f) => media.push(f),
                _ => {}
            }
        }
    }
    assert_eq!(media, sample_frames());
}

#[test]
fn rejected_publish_is_a_classified_error_on_the_client() {
    let mut pair = Pair::new(
        "taken",
        Decision::Reject(RejectCode::BadName, "ExistStreamName"),
    );
    let err = pair.pump().expect_err("client must fail");
    assert_eq!(
        err,
        RtmpError::Rejected {
            code: "NetStream.Publish.BadName".into(),
            description: "ExistStreamName".into()
        }
    );
    assert!(matches!(err, RtmpError::Rejected { .. }), "{err:?}");
    assert!(!pair.server.is_publishing());
    assert!(
        pair.client
            .send_frame(&frame(FrameKind::Audio, 0, vec![0xaf]))
            .is_err()
    );
}

#[test]
fn media_before_acceptance_is_not_delivered() {
    let mut pair = Pair::new("k", Decision::Wait);
    pair.pump().expect("until publish");
    let stream_id = pair
        .server_events
        .iter()
        .find_map(|e| match e {
            ServerEvent::PublishRequested(r) => Some(r.stream_id),
            _ => None,
        })
        .expect("requested");
    assert!(!pair.client.is_published());
    // A misbehaving client sends media before Publish.Start: it is dropped.
    let mut enc = ChunkEncoder::new();
    let mut out = OutBuf::new();
    enc.encode(
        &RawMessage {
            csid: 60,
            timestamp: 0,
            type_id: type_id::AUDIO,
            stream_id,
            payload: Bytes::from_static(&[0xaf, 1]),
        },
        &mut out,
    )
    .expect("encodes");
    assert!(
        pair.server
            .handle_input(&out.take_contiguous())
            .expect("ok")
            .is_empty()
    );
    pair.server.accept_publish(stream_id).expect("accept");
    assert!(pair.server.accept_publish(stream_id).is_err(), "only once");
    pair.pump().expect("publish start");
    assert!(pair.client.is_published());
}

/// A hand-driven client: our own chunk codec speaking to a `ServerConnection`, to check
/// the exact replies an encoder sees.
struct Scripted {
    enc: ChunkEncoder,
    dec: ChunkDecoder,
}

impl Scripted {
    fn connect(server: &mut ServerConnection) -> (Self, Vec<Message>) {
        let (mut hs, c0c1) = Handshake::client();
        assert!(server.handle_input(&c0c1).expect("c0c1").is_empty());
        let s0s1s2 = flat(server.take_outbound());
        assert_eq!(s0s1s2.len(), 1 + 2 * 1536);
        let mut c2 = Vec::new();
        assert!(matches!(
            hs.feed(&s0s1s2, &mut c2),
            Ok(HandshakeStatus::Done { .. })
        ));
        let mut me = Self {
            enc: ChunkEncoder::new(),
            dec: ChunkDecoder::default(),
        };
        let connect = Command::new(
            "connect",
            1.0,
            Amf0Value::object([
                ("app", Amf0Value::string("live/")),
                ("flashVer", Amf0Value::string("FMLE/3.0")),
                ("tcUrl", Amf0Value::string("rtmp://h/live")),
                ("swfUrl", Amf0Value::string("rtmp://h/live")),
            ]),
            vec![],
        );
        let mut bytes = c2;
        bytes.extend(me.encode(csid::COMMAND, 0, RtmpMessage::Command(connect)));
        server.handle_input(&bytes).expect("connect");
        let replies = me.replies(server);
        (me, replies)
    }

    fn encode(&mut self, chunk_stream: u32, stream_id: u32, body: RtmpMessage) -> Vec<u8> {
        let mut out = OutBuf::new();
        let raw = Message::new(0, stream_id, body)
            .encode(chunk_stream)
            .expect("encodes");
        self.enc.encode(&raw, &mut out).expect("encodes");
        out.take_contiguous().to_vec()
    }

    fn send(
        &mut self,
        server: &mut ServerConnection,
        stream_id: u32,
        body: RtmpMessage,
    ) -> Result<Vec<ServerEvent>, RtmpError> {
        let bytes = self.encode(csid::COMMAND, stream_id, body);
        server.handle_input(&bytes)
    }

    fn call(
        &mut self,
        server: &mut ServerConnection,
        stream_id: u32,
        name: &str,
        txn: f64,
        args: Vec<Amf0Value>,
    ) -> Vec<ServerEvent> {
        self.send(
            server,
            stream_id,
            RtmpMessage::Command(Command::new(name, txn, Amf0Value::Null, args)),
        )
        .expect("server accepts the call")
    }

    fn replies(&mut self, server: &mut ServerConnection) -> Vec<Message> {
        self.dec.push(&flat(server.take_outbound()));
        let mut out = Vec::new();
        while let Some(raw) = self.dec.next_message().expect("server output decodes") {
            out.push(Message::decode(&raw).expect("server output is well-formed"));
        }
        out
    }
}

fn command(m: &Message) -> &Command {
    match &m.body {
        RtmpMessage::Command(c) => c,
        other => panic!("expected a command, got {other:?}"),
    }
}

fn info_code(m: &Message) -> Option<&str> {
    command(m).info().and_then(|i| i.get_str("code"))
}

#[test]
fn server_answers_the_obs_ffmpeg_command_sequence() {
    let mut server = ServerConnection::new(ServerConfig::default());
    let (mut peer, replies) = Scripted::connect(&mut server);
    let bodies: Vec<_> = replies.iter().map(|m| &m.body).collect();
    assert_eq!(bodies[0], &RtmpMessage::WindowAckSize(2_500_000));
    assert!(matches!(
        bodies[1],
        RtmpMessage::SetPeerBandwidth {
            size: 2_500_000,
            ..
        }
    ));
    assert_eq!(bodies[2], &RtmpMessage::SetChunkSize(4096));
    let result = command(&replies[3]);
    assert_eq!(
        (result.name.as_str(), result.transaction_id),
        ("_result", 1.0)
    );
    assert_eq!(
        info_code(&replies[3]),
        Some("NetConnection.Connect.Success")
    );
    assert_eq!(
        server.connect_info().map(|c| c.app.as_str()),
        Some("live"),
        "trailing slash trimmed"
    );

    let name = || vec![Amf0Value::string("key")];
    peer.call(&mut server, 0, "releaseStream", 2.0, name());
    peer.call(&mut server, 0, "FCPublish", 3.0, name());
    peer.call(&mut server, 0, "createStream", 4.0, vec![]);
    let replies = peer.replies(&mut server);
    let txns: Vec<_> = replies
        .iter()
        .map(|m| (command(m).name.as_str(), command(m).transaction_id))
        .collect();
    assert_eq!(
        txns,
        vec![("_result", 2.0), ("_result", 3.0), ("_result", 4.0)]
    );
    assert_eq!(command(&replies[2]).args, vec![Amf0Value::Number(1.0)]);

    let events = peer.call(
        &mut server,
        1,
        "publish",
        5.0,
        vec![Amf0Value::string("key"), Amf0Value::string("live")],
    );
    assert!(
        matches!(&events[..], [ServerEvent::PublishRequested(r)] if r.stream_name == "key" && r.query.is_none())
    );
    server.accept_publish(1).expect("accept");
    let replies = peer.replies(&mut server);
    assert_eq!(
        replies[0].body,
        RtmpMessage::UserControl(UserControlEvent::StreamBegin(1))
    );
    assert_eq!(replies[1].stream_id, 1);
    assert_eq!(command(&replies[1]).name, "onStatus");
    assert_eq!(info_code(&replies[1]), Some("NetStream.Publish.Start"));

    // A second publish on the same connection is refused with BadName.
    peer.call(
        &mut server,
        1,
        "publish",
        6.0,
        vec![Amf0Value::string("other")],
    );
    assert_eq!(
        info_code(&peer.replies(&mut server)[0]),
        Some("NetStream.Publish.BadName")
    );

    // @setDataFrame is unwrapped (zero-copy) and @clearDataFrame dropped.
    let mut data = Vec::new();
    amf0::encode(&Amf0Value::string("@setDataFrame"), &mut data).expect("ok");
    data.extend(metadata());
    let events = peer
        .send(&mut server, 1, RtmpMessage::Data(Bytes::from(data)))
        .expect("data");
    assert_eq!(
        events,
        vec![ServerEvent::Media(frame(FrameKind::Data, 0, metadata()))]
    );
    let mut clear = Vec::new();
    amf0::encode(&Amf0Value::string("@clearDataFrame"), &mut clear).expect("ok");
    assert!(
        peer.send(&mut server, 1, RtmpMessage::Data(Bytes::from(clear)))
            .expect("ok")
            .is_empty()
    );

    // An unknown call gets an _error instead of silence; play is refused.
    peer.call(&mut server, 0, "getBandwidth", 9.0, vec![]);
    let r = peer.replies(&mut server);
    assert_eq!(
        (command(&r[0]).name.as_str(), command(&r[0]).transaction_id),
        ("_error", 9.0)
    );
    peer.call(&mut server, 1, "play", 0.0, vec![Amf0Value::string("key")]);
    assert_eq!(
        info_code(&peer.replies(&mut server)[0]),
        Some("NetStream.Play.Failed")
    );

    let events = peer.call(&mut server, 1, "FCUnpublish", 10.0, name());
    assert_eq!(
        events,
        vec![ServerEvent::PublishEnded {
            stream_id: 1,
            stream_name: "key".into()
        }]
    );
    assert!(
        peer.call(
            &mut server,
            0,
            "deleteStream",
            11.0,
            vec![Amf0Value::Number(1.0)]
        )
        .is_empty(),
        "ended once"
    );
}

#[test]
fn server_splits_aggregate_messages_into_frames() {
    let mut server = ServerConnection::new(ServerConfig::default());
    let (mut peer, _) = Scripted::connect(&mut server);
    peer.call(&mut server, 0, "createStream", 2.0, vec![]);
    peer.call(&mut server, 1, "publish", 0.0, vec![Amf0Value::string("k")]);
    server.accept_publish(1).expect("accept");
    let subs = vec![
        Message::new(
            1000,
            1,
            RtmpMessage::Video(Bytes::from_static(&[0x17, 1, 0, 0, 0, 9])),
        ),
        Message::new(
            1020,
            1,
            RtmpMessage::Audio(Bytes::from_static(&[0xaf, 1, 7])),
        ),
    ];
    let bytes = {
        let raw = Message::new(1000, 1, RtmpMessage::Aggregate(subs))
            .encode(csid::VIDEO)
            .expect("encodes");
        let mut out = OutBuf::new();
        peer.enc.encode(&raw, &mut out).expect("encodes");
        out.take_contiguous()
    };
    let events = server.handle_input(&bytes).expect("aggregate");
    assert_eq!(
        events,
        vec![
            ServerEvent::Media(frame(FrameKind::Video, 1000, vec![0x17, 1, 0, 0, 0, 9])),
            ServerEvent::Media(frame(FrameKind::Audio, 1020, vec![0xaf, 1, 7])),
        ]
    );
}

#[test]
fn server_acknowledges_per_the_peer_window_and_answers_pings() {
    let mut server = ServerConnection::new(ServerConfig::default());
    let (mut peer, _) = Scripted::connect(&mut server);
    peer.send(&mut server, 0, RtmpMessage::WindowAckSize(5000))
        .expect("ok");
    peer.send(
        &mut server,
        0,
        RtmpMessage::UserControl(UserControlEvent::PingRequest(77)),
    )
    .expect("ok");
    let replies = peer.replies(&mut server);
    assert!(
        replies
            .iter()
            .any(|m| m.body == RtmpMessage::UserControl(UserControlEvent::PingResponse(77)))
    );
    // bytes_received crossed 5000 already (handshake: 3073 bytes + commands)? Send more.
    let before = server.bytes_received();
    let mut acked = Vec::new();
    for _ in 0..20 {
        peer.send(
            &mut server,
            0,
            RtmpMessage::Unknown {
                type_id: 19,
                payload: Bytes::from(vec![0u8; 400]),
            },
        )
        .expect("ok");
        for m in peer.replies(&mut server) {
            if let RtmpMessage::Acknowledgement { sequence } = m.body {
                acked.push(sequence);
            }
        }
    }
    assert!(before < 5000 || !acked.is_empty());
    assert!(!acked.is_empty(), "an acknowledgement was sent");
    assert!(acked.windows(2).all(|w| w[1] - w[0] >= 5000));
    assert!(
        acked
            .iter()
            .all(|s| u64::from(*s) <= server.bytes_received())
    );
}

#[test]
fn server_refuses_commands_before_connect_and_garbage() {
    let mut server = ServerConnection::new(ServerConfig::default());
    let (mut hs, c0c1) = Handshake::client();
    server.handle_input(&c0c1).expect("c0c1");
    let mut c2 = Vec::new();
    hs.feed(&flat(server.take_outbound()), &mut c2)
        .expect("handshake");
    server.handle_input(&c2).expect("c2");
    let mut peer = Scripted {
        enc: ChunkEncoder::new(),
        dec: ChunkDecoder::default(),
    };
    let err = peer
        .send(
            &mut server,
            1,
            RtmpMessage::Command(Command::new("publish", 0.0, Amf0Value::Null, vec![])),
        )
        .expect_err("publish before connect");
    assert!(matches!(err, RtmpError::Protocol(_)));

    // Not RTMP at all.
    let mut server = ServerConnection::new(ServerConfig::default());
    assert_eq!(
        server.handle_input(b"GET / HTTP/1.1\r\n"),
        Err(RtmpError::UnsupportedVersion(b'G'))
    );
}

#[test]
fn client_answers_pings_and_bandwidth_and_classifies_connect_refusal() {
    let mut client = ClientConnection::new(ClientConfig::new("app", "rtmp://h/app", "k"));
    let c0c1 = flat(client.take_outbound());
    let mut server_hs = Handshake::server();
    let mut s0s1s2 = Vec::new();
    server_hs.feed(&c0c1[..], &mut s0s1s2).expect("c0c1");
    assert!(client.handle_input(&s0s1s2).expect("s0s1s2").is_empty());
    let mut dec = ChunkDecoder::default();
    let out = flat(client.take_outbound());
    let HandshakeStatus::Done { remaining } = server_hs.feed(&out, &mut Vec::new()).expect("c2")
    else {
        panic!("handshake not done")
    };
    dec.push(&remaining);
    let mut sent = Vec::new();
    while let Some(raw) = dec.next_message().expect("decodes") {
        sent.push(Message::decode(&raw).expect("decodes"));
    }
    assert_eq!(
        sent[0].body,
        RtmpMessage::SetChunkSize(4096),
        "chunk size first"
    );
    let connect = command(&sent[1]);
    assert_eq!(connect.name, "connect");
    assert_eq!(connect.command_object.get_str("app"), Some("app"));
    assert_eq!(connect.command_object.get_str("type"), Some("nonprivate"));
    assert_eq!(
        connect.command_object.get_str("tcUrl"),
        Some("rtmp://h/app")
    );
    assert!(
        connect
            .command_object
            .get_str("flashVer")
            .is_some_and(|v| v.starts_with("FMLE/3.0"))
    );

    let mut enc = ChunkEncoder::new();
    let mut wire = OutBuf::new();
    let mut put = |body: RtmpMessage, chunk_stream: u32| {
        let raw = Message::new(0, 0, body)
            .encode(chunk_stream)
            .expect("encodes");
        enc.encode(&raw, &mut wire).expect("encodes");
    };
    put(
        RtmpMessage::UserControl(UserControlEvent::PingRequest(5)),
        csid::PROTOCOL_CONTROL,
    );
    put(
        RtmpMessage::SetPeerBandwidth {
            size: 1_000_000,
            limit: crate::message::PeerBandwidthLimit::Dynamic,
        },
        csid::PROTOCOL_CONTROL,
    );
    put(
        RtmpMessage::Command(Command::new(
            "_error",
            1.0,
            Amf0Value::Null,
            vec![crate::connection::server::status_object(
                "error",
                "NetConnection.Connect.Rejected",
                "[ AccessManager.Reject ] : unknown app",
            )],
        )),
        csid::COMMAND,
    );
    let err = client
        .handle_input(&wire.take_contiguous())
        .expect_err("rejected");
    assert!(matches!(err, RtmpError::Rejected { .. }), "{err:?}");
    assert!(
        matches!(&err, RtmpError::Rejected { code, .. } if code == "NetConnection.Connect.Rejected")
    );
    // Even on the way out, the ping and bandwidth were answered.
    dec.push(&flat(client.take_outbound()));
    let mut answers = Vec::new();
    while let Some(raw) = dec.next_message().expect("decodes") {
        answers.push(Message::decode(&raw).expect("decodes").body);
    }
    assert!(answers.contains(&RtmpMessage::UserControl(UserControlEvent::PingResponse(5))));
    assert!(answers.contains(&RtmpMessage::WindowAckSize(1_000_000)));
}

#[test]
fn client_rejects_send_before_publish_and_protocol_errors_are_not_rejections() {
    let mut client = ClientConnection::new(ClientConfig::new("app", "rtmp://h/app", "k"));
    let err = client
        .send_frame(&frame(FrameKind::Video, 0, vec![0x17]))
        .expect_err("not yet");
    assert!(matches!(err, RtmpError::InvalidState(_)), "{err:?}");
    // Version 3 and any S1/S2 complete the simple handshake; then a chunk that refers to
    // a chunk stream never seen is a protocol error, not a rejection.
    client.handle_input(&[3u8; 1]).expect("S0");
    client.handle_input(&[9u8; 3072]).expect("S1, S2");
    let err = client
        .handle_input(&[0x46, 0, 0, 0])
        .expect_err("fmt 1 without history");
    assert!(
        !matches!(err, RtmpError::Rejected { .. } | RtmpError::InvalidState(_)),
        "{err:?}"
    );
}

#[test]
fn server_survives_random_input_after_a_valid_start() {
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // A valid transcript prefix (handshake + connect + publish) followed by noise, or
    // with bytes flipped.
    let mut pair = Pair::new("k", Decision::Accept);
    let mut transcript = Vec::new();
    for _ in 0..10 {
        let c = flat(pair.client.take_outbound());
        transcript.extend_from_slice(&c);
        for e in pair.server.handle_input(&c).expect("server") {
            if let ServerEvent::PublishRequested(r) = e {
                pair.server.accept_publish(r.stream_id).expect("accept");
            }
        }
        let s = flat(pair.server.take_outbound());
        pair.client.handle_input(&s).expect("client");
    }
    for round in 0..1_500 {
        let mut input = transcript.clone();
        if round % 2 == 0 {
            input.extend((0..(next() % 400)).map(|_| next() as u8));
        } else {
            for _ in 0..(1 + next() % 3) {
                let i = 3073 + (next() as usize) % (input.len() - 3073);
                input[i] = next() as u8;
            }
        }
        let mut server = ServerConnection::new(ServerConfig::default());
        for piece in input.chunks(1 + (next() % 512) as usize) {
            match server.handle_input(piece) {
                Ok(events) => {
                    for e in events {
                        if let ServerEvent::PublishRequested(r) = e {
                            let _ = server.accept_publish(r.stream_id);
                        }
                    }
                }
                Err(_) => break,
            }
        }
    }
}

/// Before a publish is admitted, a message longer than a command could be is refused at
/// its header, before its bytes arrive (the pre-admission attack: a 16 MB message after
/// raising the chunk size, trickled in); the raised limits of an admitted publisher
/// take such a message.
#[test]
fn unadmitted_peers_cannot_declare_large_messages_admitted_ones_can() {
    let big_header = |len: u32| -> Vec<u8> {
        // Set Chunk Size 2^31 - 1 on csid 2, then a type-0 header on csid 6 declaring a
        // video message of `len` bytes, and its first 10 bytes.
        let mut b = vec![
            0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x7F, 0xFF, 0xFF, 0xFF,
        ];
        b.extend_from_slice(&[0x06, 0, 0, 0]);
        b.extend_from_slice(&len.to_be_bytes()[1..]);
        b.extend_from_slice(&[9, 1, 0, 0, 0]);
        b.extend_from_slice(&[0x17; 10]);
        b
    };
    let config = ServerConfig {
        decoder: DecoderConfig::commands_only(),
        ..ServerConfig::default()
    };
    let mut server = ServerConnection::new(config.clone());
    let _ = Scripted::connect(&mut server);
    match server.handle_input(&big_header(0x00FF_FFFF)) {
        Err(RtmpError::MessageTooLarge { length, max }) => {
            assert_eq!((length, max), (0x00FF_FFFF, 64 * 1024));
        }
        other => panic!("a 16 MB message before admission: {other:?}"),
    }

    let mut server = ServerConnection::new(config);
    let _ = Scripted::connect(&mut server);
    server.set_decoder_limits(DecoderConfig::admitted(8 * 1024 * 1024));
    let events = server
        .handle_input(&big_header(1024 * 1024))
        .expect("an admitted publisher may send a 1 MB frame");
    assert!(events.is_empty(), "the frame is not complete yet");
}
