//! Writes the seed corpus (`corpus/<target>/seed-*`): real byte streams of a publish, as
//! the crate's own client and server exchange them. Run it again when a protocol change
//! makes the seeds stale: `cargo test -p pushcast-fuzz --test seeds -- --ignored`.

use std::path::Path;

use bytes::Bytes;
use pushcast_media::{Frame, FrameKind};
use pushcast_rtmp::{
    Amf0Value, ClientConfig, ClientConnection, ServerConfig, ServerConnection, ServerEvent, amf0,
};

/// A side's handshake bytes: C0/S0, then C1+C2 or S1+S2.
const HANDSHAKE: usize = 1 + 2 * 1536;

fn flat(segments: Vec<Bytes>) -> Vec<u8> {
    segments.concat()
}

/// Writes `corpus/<target>/seed-<name>`.
fn write_raw(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed");
}

/// A seed whose first byte is the target's `step` (piece size, or endpoint).
fn write(target: &str, name: &str, step: u8, data: &[u8]) {
    let mut bytes = vec![step];
    bytes.extend_from_slice(data);
    write_raw(target, name, &bytes);
}

fn frames() -> Vec<Frame> {
    let f = |kind, ts, payload: &[u8]| Frame {
        kind,
        timestamp_ms: ts,
        payload: Bytes::copy_from_slice(payload),
    };
    vec![
        f(
            FrameKind::Video,
            0,
            &[
                0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 4,
                0x68, 0xee, 0x3c, 0x80,
            ],
        ),
        f(FrameKind::Audio, 0, &[0xaf, 0, 0x12, 0x10]),
        f(
            FrameKind::Video,
            0,
            &[0x17, 1, 0, 0, 0, 0, 0, 0, 3, 0x65, 0x88, 0x84],
        ),
        f(FrameKind::Audio, 23, &[0xaf, 1, 0x21, 0x10, 0x05]),
        f(
            FrameKind::Video,
            33,
            &[0x27, 1, 0, 0, 0x21, 0, 0, 0, 3, 0x41, 0x9a, 0x02],
        ),
    ]
}

#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seeds() {
    let mut client = ClientConnection::new(ClientConfig::new("live", "rtmp://h/live", "key"));
    let mut server = ServerConnection::new(ServerConfig::default());
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        let c = flat(client.take_outbound());
        to_server.extend_from_slice(&c);
        for ev in server.handle_input(&c).expect("server") {
            if let ServerEvent::PublishRequested(req) = ev {
                server.accept_publish(req.stream_id).expect("accept");
            }
        }
        let s = flat(server.take_outbound());
        to_client.extend_from_slice(&s);
        client.handle_input(&s).expect("client");
        if client.is_published() {
            break;
        }
    }
    assert!(client.is_published());
    for f in frames() {
        client.send_frame(&f).expect("frame");
    }
    to_server.extend_from_slice(&flat(client.take_outbound()));
    // Step 127 (whole messages at a time) and 1 (byte by byte); with the high bit set,
    // the target does the handshake and the seed starts after it.
    write("server_session", "publish", 127, &to_server);
    write("server_session", "publish-bytewise", 1, &to_server);
    write(
        "server_session",
        "after-handshake",
        0x80 | 127,
        &to_server[HANDSHAKE..],
    );
    write(
        "server_session",
        "after-handshake-bytewise",
        0x80 | 1,
        &to_server[HANDSHAKE..],
    );
    write("client_session", "publish", 127, &to_client);
    write(
        "client_session",
        "after-handshake",
        0x80 | 127,
        &to_client[HANDSHAKE..],
    );
    write(
        "chunk_decoder",
        "after-handshake",
        200,
        &to_server[HANDSHAKE..],
    );
    let connect = [
        Amf0Value::string("connect"),
        Amf0Value::Number(1.0),
        Amf0Value::object([
            ("app", Amf0Value::string("live")),
            ("tcUrl", Amf0Value::string("rtmp://h/live")),
        ]),
        Amf0Value::Null,
    ];
    let mut out = Vec::new();
    amf0::encode_all(&connect, &mut out).expect("amf0");
    // amf0's target does not split: its first byte is data too.
    write_raw("amf0", "connect", &out);
    let mut ts = Vec::new();
    for f in frames() {
        ts.push(match f.kind {
            FrameKind::Video => 0,
            FrameKind::Audio => 1,
            FrameKind::Data => 2,
        });
        ts.extend_from_slice(&f.timestamp_ms.to_be_bytes());
        ts.extend_from_slice(&(f.payload.len() as u16).to_be_bytes());
        ts.extend_from_slice(&f.payload);
    }
    write_raw("ts_muxer", "frames", &ts);
}

#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_rest_json_seeds() {
    let seeds: [(&str, u8, &str); 6] = [
        (
            "start-push",
            0,
            r#"{"id":"yt","stream":{"name":"cam","trackIds":[0,1]},"protocol":"rtmp","url":"rtmp://a.rtmp.youtube.com/live2","streamKey":"k"}"#,
        ),
        (
            "start-push-multi",
            0,
            r#"{"id":"m","stream":{"name":"cam","variantNames":["hd"]},"destinations":[{"protocol":"rtmps","url":"rtmps://live.example:443/app","streamKey":"k"},{"protocol":"mpegts","url":"udp://127.0.0.1:5000"},{"protocol":"srt","url":"srt://127.0.0.1:9000?streamid=x","variantNames":["sd"]}]}"#,
        ),
        (
            "update-push",
            1,
            r#"{"id":"t","addDestinations":[{"protocol":"mpegts","url":"tcp://127.0.0.1:5001"}],"removeDestinations":[{"url":"rtmp://a.example/live","streamKey":"k"},0],"trackIds":[1],"variantNames":[]}"#,
        ),
        (
            "create-apps",
            2,
            r#"[{"name":"live","openPublish":true,"callbacks":{"publish":[{"url":"http://127.0.0.1/p","format":"old"}],"authorize":{"url":"http://127.0.0.1/a","timeoutMs":500},"status":[{"url":"http://127.0.0.1/s","secret":"x"}]}},{"name":"b"}]"#,
        ),
        (
            "patch-app",
            3,
            r#"{"openPublish":false,"callbacks":{"publish":[{"url":"http://127.0.0.1/p"}],"status":[]}}"#,
        ),
        ("empty", 0, " "),
    ];
    for (name, op, body) in seeds {
        write("rest_json", name, op, body.as_bytes());
    }
}
