//! The bodies of the fuzz targets: each feeds arbitrary bytes to one parser or state
//! machine that faces the network and must never panic, loop or hold more than its
//! bounds. `fuzz_targets/` runs them under libFuzzer (`scripts/fuzz.sh`, nightly);
//! `tests/replay.rs` runs every file of `corpus/` through them on stable, so what the
//! fuzzer found (and the seeds) stays a regression test of the normal suite.
#![forbid(unsafe_code)]

use bytes::Bytes;
use pushcast_media::{Frame, FrameKind};
use pushcast_mpegts::{TsMuxer, TsTracks};
use pushcast_rtmp::{
    ChunkDecoder, ClientConfig, ClientConnection, ClientEvent, DecoderConfig, ServerConfig,
    ServerConnection, ServerEvent, amf0,
};

/// Splits `data` into pieces whose sizes come from the data itself (its first byte), so
/// the fuzzer also explores how input is cut across reads.
fn pieces(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (step, rest) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s).max(1), rest),
        None => (1, data),
    };
    rest.chunks(step)
}

/// A session's input: the first byte's low 7 bits set the piece size (as [`pieces`]);
/// with its high bit set, the input starts after the handshake, which the target then
/// completes itself (the 3 KB a handshake takes are bytes the fuzzer need not mutate to
/// reach the chunk stream and the commands).
fn session_input(data: &[u8]) -> (bool, impl Iterator<Item = &[u8]>) {
    let (first, rest) = match data.split_first() {
        Some((s, rest)) => (*s, rest),
        None => (1, data),
    };
    (
        first & 0x80 != 0,
        rest.chunks(usize::from(first & 0x7f).max(1)),
    )
}

/// A peer's whole side of a simple handshake: version 3, then two 1536-byte packets.
fn handshake_bytes() -> Vec<u8> {
    let mut b = vec![3u8];
    b.resize(1 + 2 * 1536, 0);
    b
}

/// The RTMP chunk decoder under the limits of an unadmitted peer and of an admitted one.
pub fn chunk_decoder(data: &[u8]) {
    for config in [
        DecoderConfig::commands_only(),
        DecoderConfig::admitted(1 << 20),
    ] {
        let mut dec = ChunkDecoder::new(config);
        for piece in pieces(data) {
            dec.push(piece);
            loop {
                match dec.next_message() {
                    Ok(Some(m)) => {
                        assert!(m.payload.len() <= config.max_message_size as usize);
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            assert!(dec.buffered() <= piece.len() + config.max_message_size as usize + 18);
        }
    }
}

/// AMF0: whatever decodes encodes again, and that decodes to as many values.
pub fn amf0(data: &[u8]) {
    let Ok(values) = amf0::decode_all(data) else {
        return;
    };
    let mut out = Vec::new();
    if amf0::encode_all(&values, &mut out).is_ok() {
        let again = amf0::decode_all(&out).map(|v| v.len());
        assert_eq!(again.ok(), Some(values.len()), "re-encoded AMF0 decodes");
    }
}

/// The ingest's connection state machine fed arbitrary client bytes: every publish is
/// admitted (to reach the media path), with the ingest's limits before and after.
pub fn server_session(data: &[u8]) {
    let config = ServerConfig {
        decoder: DecoderConfig::commands_only(),
        ..ServerConfig::default()
    };
    let mut conn = ServerConnection::new(config);
    let (after_handshake, input) = session_input(data);
    if after_handshake && conn.handle_input(&handshake_bytes()).is_err() {
        panic!("a well-formed handshake is accepted");
    }
    for piece in input {
        let Ok(events) = conn.handle_input(piece) else {
            return;
        };
        for ev in events {
            if let ServerEvent::PublishRequested(req) = ev {
                if conn.accept_publish(req.stream_id).is_err() {
                    return;
                }
                conn.set_decoder_limits(DecoderConfig::admitted(1 << 20));
            }
        }
        drop(conn.take_outbound());
    }
}

/// The push side fed arbitrary server bytes: once published, it sends a frame per
/// piece, as a session would.
pub fn client_session(data: &[u8]) {
    let mut conn = ClientConnection::new(ClientConfig::new("live", "rtmp://h/live", "key"));
    drop(conn.take_outbound());
    let (after_handshake, input) = session_input(data);
    if after_handshake && conn.handle_input(&handshake_bytes()).is_err() {
        panic!("a well-formed handshake is accepted");
    }
    drop(conn.take_outbound());
    let frame = Frame {
        kind: FrameKind::Video,
        timestamp_ms: 0,
        payload: Bytes::from_static(&[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65]),
    };
    for piece in input {
        let Ok(events) = conn.handle_input(piece) else {
            return;
        };
        let published = events
            .iter()
            .any(|e| matches!(e, ClientEvent::Published { .. }));
        if (published || conn.is_published()) && conn.send_frame(&frame).is_err() {
            return;
        }
        drop(conn.take_outbound());
    }
}

/// The FLV → MPEG-TS muxer fed arbitrary frames: each is a kind byte (video, audio,
/// data), a 32-bit timestamp, a 16-bit length and that many payload bytes.
pub fn ts_muxer(data: &[u8]) {
    let mut mux = TsMuxer::new(TsTracks {
        video: true,
        audio: true,
    });
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 7 {
        let kind = match rest[0] % 3 {
            0 => FrameKind::Video,
            1 => FrameKind::Audio,
            _ => FrameKind::Data,
        };
        let timestamp_ms = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let len = usize::from(u16::from_be_bytes([rest[5], rest[6]])).min(rest.len() - 7);
        let payload = Bytes::copy_from_slice(&rest[7..7 + len]);
        rest = &rest[7 + len..];
        let frame = Frame {
            kind,
            timestamp_ms,
            payload,
        };
        out.clear();
        if mux.push(&frame, &mut out).is_ok() {
            assert_eq!(out.len() % 188, 0, "whole TS packets");
        }
    }
}

/// The tag header parser (legacy FLV and Enhanced RTMP) and the single-track
/// normalization, fed one tag: the first byte says video or audio, the rest is the tag.
/// Invariants: the codec data offset lies inside the tag; a normalized tag parses again,
/// is on track 0, not multitrack, and normalizing it again changes nothing.
pub fn media_tags(data: &[u8]) {
    use pushcast_media::{PacketType, normalize, tag};
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let kind = if first & 1 == 0 {
        FrameKind::Video
    } else {
        FrameKind::Audio
    };
    let payload = Bytes::copy_from_slice(body);
    if let Some(t) = tag::parse(kind, &payload) {
        assert!(
            t.packet == PacketType::ManyTracks || t.data_offset <= payload.len(),
            "data offset {} past a {}-byte tag",
            t.data_offset,
            payload.len()
        );
    }
    if let Some(single) = normalize(kind, &payload) {
        if let Some(t) = tag::parse(kind, &single) {
            assert_eq!(t.track, 0, "normalized to track 0");
            assert!(!t.multitrack, "normalized out of multitrack");
        }
        assert_eq!(normalize(kind, &single), Some(single.clone()), "idempotent");
    }
    // Several tracks in one packet split into one-track packets of the same kind.
    if tag::parse(kind, &payload).is_some_and(|t| t.packet == PacketType::ManyTracks) {
        for part in pushcast_media::split_tracks(kind, &payload) {
            // A part too short for its codec's header does not parse; one that does is a
            // one-track packet.
            if let Some(t) = tag::parse(kind, &part) {
                assert!(t.multitrack && t.packet != PacketType::ManyTracks, "{t:?}");
            }
        }
    }
    let frame = Frame {
        kind,
        timestamp_ms: 0,
        payload,
    };
    let _ = (
        frame.is_keyframe(),
        frame.is_sequence_header(),
        frame.composition_offset_ms(),
    );
}

/// The MPEG-TS demuxer of the SRT ingest fed arbitrary bytes (in datagram-sized
/// pieces), then finished. Every frame it makes parses as a tag of its kind.
pub fn ts_demuxer(data: &[u8]) {
    let mut demux = pushcast_mpegts::TsDemuxer::new();
    let mut out = Vec::new();
    for piece in data.chunks(1316) {
        demux.push(piece, &mut out);
    }
    demux.finish(&mut out);
    for f in &out {
        assert!(f.kind != FrameKind::Data, "only media frames");
        assert!(f.tag().is_some(), "a frame whose tag does not parse: {f:?}");
    }
}

/// The REST gateway's request bodies, as the gateway reads them (`pushcast_controller::
/// requests`) and then checks them (the startPush/updatePush rules, app callbacks). The
/// first byte picks the endpoint, the rest is the body. What is accepted must be a task
/// or an app the store can keep: its stored JSON decodes to the same task, and the OME
/// answer for it can be written.
pub fn rest_json(data: &[u8]) {
    use pushcast_controller::{pushes, requests};
    use pushcast_proto::model::TaskSpec;

    let Some((op, body)) = data.split_first() else {
        return;
    };
    let stored_again = |spec: &TaskSpec| {
        assert!(spec.destinations().len() <= 50, "at most 50 destinations");
        let json = serde_json::to_vec(spec).expect("a task encodes");
        let back: TaskSpec = serde_json::from_slice(&json).expect("a stored task decodes");
        assert_eq!(&back, spec, "a stored task decodes to itself");
    };
    match op % 4 {
        0 => {
            let Ok(obj) = requests::object(body) else {
                return;
            };
            if let Ok(spec) = pushes::validate("default", "app", requests::start_push(&obj)) {
                stored_again(&spec);
            }
        }
        1 => {
            let Ok(obj) = requests::object(body) else {
                return;
            };
            let base = serde_json::json!({"id": "t", "stream": {"name": "s"}, "protocol": "rtmp",
                "url": "rtmp://a.example/live", "streamKey": "k"});
            let base = base.as_object().expect("an object");
            let Ok(old) = pushes::validate("default", "app", requests::start_push(base)) else {
                panic!("the base task is valid");
            };
            if let Ok(spec) = pushes::apply_update(&old, &requests::update_push(&obj)) {
                stored_again(&spec);
            }
        }
        2 => {
            let Ok(value) = requests::body(body) else {
                return;
            };
            let items = match value {
                serde_json::Value::Array(items) => items,
                item => vec![item],
            };
            for item in &items {
                if let Ok(app) = requests::app("default", item) {
                    assert!(
                        app.to_ome_json().is_object(),
                        "an app is shown as an object"
                    );
                    let json = serde_json::to_vec(&app).expect("an app encodes");
                    let back: pushcast_proto::model::AppConfig =
                        serde_json::from_slice(&json).expect("a stored app decodes");
                    assert_eq!(back, app, "a stored app decodes to itself");
                }
            }
        }
        _ => {
            let Ok(obj) = requests::object(body) else {
                return;
            };
            if let Ok(patch) = requests::app_patch(&obj)
                && let Some(c) = patch.callbacks
            {
                let json = serde_json::to_vec(&c).expect("callbacks encode");
                let back: pushcast_proto::model::Callbacks =
                    serde_json::from_slice(&json).expect("stored callbacks decode");
                assert_eq!(back, c, "stored callbacks decode to themselves");
            }
        }
    }
}
