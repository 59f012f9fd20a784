//! RTMP ingest against hostile and tricky input: the real standalone binary must close
//! only the offending connection, stay up, and keep serving valid publishes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use pushcast_rtmp::Amf0Value;
use pushcast_rtmp::amf0;
use pushcast_testkit::api::Node;
use pushcast_testkit::proc::Guard;

const TOKEN: &str = "ingest";

fn connect(node: &Node) -> TcpStream {
    let s = TcpStream::connect(node.rtmp.as_deref().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// C0+C1, read S0+S1+S2, send C2: a completed simple handshake.
fn handshake(s: &mut TcpStream) {
    let mut c1 = vec![3u8];
    c1.extend(std::iter::repeat_n(0u8, 8));
    c1.extend((0..1528).map(|i| (i * 7 % 251) as u8));
    s.write_all(&c1).unwrap();
    let mut s012 = vec![0u8; 1 + 1536 * 2];
    s.read_exact(&mut s012).unwrap();
    assert_eq!(s012[0], 3);
    s.write_all(&s012[1..1537]).unwrap();
}

/// Reads whatever the server sends within `wait`; returns it (may be empty) and whether
/// the connection was closed.
fn drain(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (all, true),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (all, false);
            }
            Err(_) => return (all, true),
        }
    }
}

fn command(name: &str, tx: f64, args: Vec<Amf0Value>) -> Vec<u8> {
    let mut values = vec![Amf0Value::String(name.into()), Amf0Value::Number(tx)];
    values.extend(args);
    let mut out = Vec::new();
    amf0::encode_all(&values, &mut out).unwrap();
    out
}

/// Chunks of one message: a type-0 header on `csid`, then type-3 continuations.
fn chunks(csid: u8, type_id: u8, body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, part) in body.chunks(128).enumerate() {
        let mut c = Vec::new();
        if i == 0 {
            c.push(csid);
            c.extend_from_slice(&[0, 0, 0]);
            let len = body.len() as u32;
            c.extend_from_slice(&len.to_be_bytes()[1..]);
            c.push(type_id);
            c.extend_from_slice(&0u32.to_le_bytes());
        } else {
            c.push(0xc0 | csid);
        }
        c.extend_from_slice(part);
        out.push(c);
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn publisher(node: &Node, stream: &str, dir: &std::path::Path, tag: &str) -> Guard {
    pushcast_testkit::ffmpeg::publish(&node.ingest_url("app", stream), dir, tag, 0)
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_ingest_input_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::standalone(dir.path(), TOKEN).await;
    node.open_publish("app").await;

    // 1. Random bytes instead of a handshake.
    let mut s = connect(&node);
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = s.write_all(&junk);
    let (_, closed) = drain(&mut s, Duration::from_secs(3));
    assert!(closed, "garbage closes the connection");

    // 2. A truncated handshake, then the peer goes away.
    let mut s = connect(&node);
    s.write_all(&[3u8; 700]).unwrap();
    drop(s);

    // 3. Set Chunk Size of 100 MB, then a message claiming the largest length RTMP can
    //    express, fed with a few MB of junk: bounded, no crash.
    let mut s = connect(&node);
    handshake(&mut s);
    let mut scs = vec![2u8, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
    scs.extend_from_slice(&100_000_000u32.to_be_bytes());
    s.write_all(&scs).unwrap();
    let mut big = vec![4u8, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0];
    big.extend(std::iter::repeat_n(0x17u8, 4 << 20));
    let _ = s.write_all(&big);
    drop(s);

    // 4. Interleaved chunk streams (legal RTMP): connect on csid 3 and a long
    //    releaseStream on csid 5, chunk by chunk. The server must answer the connect.
    let mut s = connect(&node);
    handshake(&mut s);
    let connect_body = command(
        "connect",
        1.0,
        vec![Amf0Value::object([
            ("app", Amf0Value::String("app".into())),
            ("type", Amf0Value::String("nonprivate".into())),
            (
                "flashVer",
                Amf0Value::String("FMLE/3.0 (compatible; interleave-test)".into()),
            ),
            ("tcUrl", Amf0Value::String("rtmp://127.0.0.1/app".into())),
        ])],
    );
    let release_body = command(
        "releaseStream",
        2.0,
        vec![Amf0Value::Null, Amf0Value::String("x".repeat(300))],
    );
    let a = chunks(3, 20, &connect_body);
    let b = chunks(5, 20, &release_body);
    assert!(a.len() >= 2 && b.len() >= 2);
    let mut wire = Vec::new();
    for i in 0..a.len().max(b.len()) {
        if let Some(c) = a.get(i) {
            wire.extend_from_slice(c);
        }
        if let Some(c) = b.get(i) {
            wire.extend_from_slice(c);
        }
    }
    s.write_all(&wire).unwrap();
    let (reply, _) = drain(&mut s, Duration::from_secs(2));
    assert!(contains(&reply, b"_result"), "connect answered");
    assert!(contains(&reply, b"NetConnection.Connect.Success"));
    drop(s);

    // The process is alive, and a valid publish right after works.
    assert!(node.proc.is_running(), "the server survived");
    let mut p = publisher(&node, "after", dir.path(), "valid");
    node.proc
        .wait_logged(&["publish started"], Duration::from_secs(15))
        .await;

    // A second publisher on the live stream is refused; the first is untouched.
    let mut second = publisher(&node, "after", dir.path(), "second");
    let status = second
        .wait_exit(Duration::from_secs(10))
        .expect("second publisher is refused and exits");
    assert!(!status.success());
    assert!(p.try_status().is_none(), "the first publisher keeps going");
    assert!(
        node.proc
            .output()
            .iter()
            .any(|l| l.contains("ExistStreamName"))
    );
    let status = p
        .wait_exit(Duration::from_secs(15))
        .expect("first publisher finishes its file");
    assert!(status.success(), "the first publish ran to its end");
}

/// C0+C1, read S0+S1+S2, send C2, over tokio (for many connections at once).
async fn handshake_async(s: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c0c1 = vec![3u8];
    c0c1.extend(std::iter::repeat_n(0u8, 1536));
    s.write_all(&c0c1).await?;
    let mut s012 = vec![0u8; 1 + 1536 * 2];
    s.read_exact(&mut s012).await?;
    s.write_all(&s012[1..1537]).await
}

/// A connection to `target` from the loopback address `from`.
async fn connect_from(
    from: [u8; 4],
    target: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((from, 0)))?;
    socket.connect(target).await
}

/// What the attack did: connections opened, and those the worker closed.
#[derive(Debug, Default)]
struct Attack {
    opened: usize,
    closed: usize,
}

/// Waits up to `limit` for the worker to close `s` (EOF or reset); whether it did.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// 2,000 hostile connections: 1,500 half-handshakes from one address (over the
/// per-address cap), 200 that declare a 16 MB message before any publish, 150 that send
/// garbage after the handshake, 150 that trickle a command a byte at a time and never
/// publish (those from many addresses, two per address).
async fn attack(target: std::net::SocketAddr) -> Attack {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::new();
    let mut result = Attack::default();
    for _ in 0..1500 {
        if let Ok(mut s) = connect_from([127, 0, 0, 2], target).await {
            result.opened += 1;
            let _ = s.write_all(&[3u8; 101]).await;
            held.push(s);
        }
    }
    let oversized = (0..200).map(|i| async move {
        let mut s = connect_from([127, 0, 2, (i / 2 + 1) as u8], target)
            .await
            .ok()?;
        handshake_async(&mut s).await.ok()?;
        // Set Chunk Size 2^31 - 1, then a video message header declaring 16 MB - 1.
        let mut b = vec![
            0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x7F, 0xFF, 0xFF, 0xFF,
        ];
        b.extend_from_slice(&[0x06, 0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0]);
        s.write_all(&b).await.ok()?;
        // Trickle its body, as the attack did, until closed.
        for _ in 0..20 {
            if s.write_all(&[0x17; 1024]).await.is_err() {
                break;
            }
        }
        Some(closed_within(&mut s, Duration::from_secs(5)).await)
    });
    let garbage = (0..150u32).map(|i| async move {
        let mut s = connect_from([127, 0, 3, (i / 2 + 1) as u8], target)
            .await
            .ok()?;
        handshake_async(&mut s).await.ok()?;
        let bytes =
            pushcast_testkit::rtmp_server::garbage(0x9E37_79B9u32.wrapping_mul(i + 1), 4096);
        let _ = s.write_all(&bytes).await;
        Some(closed_within(&mut s, Duration::from_secs(12)).await)
    });
    let trickle = (0..150u32).map(|i| async move {
        let mut s = connect_from([127, 0, 4, (i / 2 + 1) as u8], target)
            .await
            .ok()?;
        handshake_async(&mut s).await.ok()?;
        // A command message header declaring 200 bytes, then its body a byte every
        // 250 ms: never complete, so never a publish; the admission deadline (10 s)
        // closes it.
        s.write_all(&[0x03, 0, 0, 0, 0, 0, 200, 0x14, 0, 0, 0, 0])
            .await
            .ok()?;
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut probe = [0u8; 64];
        while tokio::time::Instant::now() < until {
            if s.write_all(&[0x02]).await.is_err() {
                return Some(true);
            }
            use tokio::io::AsyncReadExt;
            match tokio::time::timeout(Duration::from_millis(250), s.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(true),
                _ => {}
            }
        }
        Some(false)
    });
    let (a, b, c) = futures::future::join3(
        futures::future::join_all(oversized),
        futures::future::join_all(garbage),
        futures::future::join_all(trickle),
    )
    .await;
    for closed in a.into_iter().chain(b).chain(c).flatten() {
        result.opened += 1;
        result.closed += usize::from(closed);
    }
    drop(held);
    result
}

/// The sum of `pushcast_ingest_refused_total` for `reason` in a Prometheus text.
fn refused(metrics: &str, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("pushcast_ingest_refused_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// 2,000 hostile ingest connections (half-handshakes over the per-address cap, 16 MB
/// messages declared before any publish, garbage, slow trickles) while a real publish is pushed: the
/// push keeps every frame, the worker's memory grows by less than 64 MB, every oversized
/// or garbage connection is closed, and the refusals show in `/metrics` by reason.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_ingest_connections_do_not_hurt_a_live_push() {
    use pushcast_media::FrameKind;
    use pushcast_testkit::flv::count_media;
    use pushcast_testkit::media::test_media;

    let dir = tempfile::tempdir().unwrap();
    let metrics_port = pushcast_testkit::net::free_tcp_port();
    let extra = [
        "--max-ingest-connections-per-ip=40".to_string(),
        format!("--metrics-addr=127.0.0.1:{metrics_port}"),
    ];
    let node = Node::standalone_with(dir.path(), TOKEN, &extra).await;
    node.open_publish("app").await;
    let media = test_media();
    let mut recorder = pushcast_testkit::ffmpeg::RtmpRecorder::start(&dir.path().join("live.flv"));
    let body = serde_json::json!({"id": "live", "stream": {"name": "cam"}, "protocol": "rtmp",
                                  "url": recorder.rtmp_url(), "streamKey": "live"});
    assert_eq!(node.action("startPush", body).await.status, 200);
    let pid = node.proc.pid();
    let rss_before = pushcast_testkit::stats::rss_kb(pid);
    let url = node.ingest_url("app", "cam");
    let mut publisher = pushcast_testkit::ffmpeg::publish(&url, dir.path(), "publish-cam", 1);
    node.proc
        .wait_logged(&["publish started"], Duration::from_secs(10))
        .await;

    let target: std::net::SocketAddr = node.rtmp.as_deref().unwrap().parse().unwrap();
    let attacking = tokio::spawn(attack(target));
    let mut rss_max = rss_before;
    while !attacking.is_finished() {
        rss_max = rss_max.max(pushcast_testkit::stats::rss_kb(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attack = attacking.await.unwrap();
    assert!(publisher.wait_exit(Duration::from_secs(30)).is_some());
    let frames = recorder.finish(Duration::from_secs(15));

    assert_eq!(attack.opened, 2000, "{attack:?}");
    assert_eq!(
        attack.closed, 500,
        "every oversized, garbage and trickling connection was closed: {attack:?}"
    );
    assert_eq!(
        (
            count_media(&frames, FrameKind::Video),
            count_media(&frames, FrameKind::Audio)
        ),
        (2 * media.video_frames(), 2 * media.audio_frames()),
        "the live push kept every frame of the two loops"
    );
    let grew_mb = (rss_max as f64 - rss_before as f64) / 1024.0;
    println!(
        "MEASURED hostile ingest: RSS {rss_before} kB before, {rss_max} kB at most (+{grew_mb:.1} MB)"
    );
    assert!(
        grew_mb < 64.0,
        "RSS grew by {grew_mb:.1} MB during the attack"
    );

    let metrics =
        pushcast_testkit::http::get_text(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    let over_cap = refused(&metrics, "per-address limit");
    assert!(
        over_cap >= 1400.0,
        "half-handshakes over the per-address cap: {over_cap}"
    );
    // The oversized ones, and the garbage whose first header happened to declare more
    // than 64 KiB.
    let too_large = refused(&metrics, "message too large");
    assert!(too_large >= 200.0, "{metrics}");
    let too_slow = refused(&metrics, "no publish in time");
    assert!(too_slow >= 150.0, "the trickling ones: {metrics}");
    let bounded: f64 = [
        "message too large",
        "protocol error",
        "too many chunk streams",
        "too much buffered",
        "no publish in time",
    ]
    .iter()
    .map(|r| refused(&metrics, r))
    .sum();
    assert!(
        bounded >= 500.0,
        "every oversized and garbage connection refused by reason: {metrics}"
    );
}
