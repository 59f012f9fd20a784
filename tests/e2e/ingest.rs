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
