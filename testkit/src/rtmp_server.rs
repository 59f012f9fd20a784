//! An in-process RTMP destination built on the crate's own sans-IO `ServerConnection`: it
//! records exactly what arrives (frames with their timestamps, the publish request, the
//! unpublish), and can misbehave on purpose (refuse the key, stop reading).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushcast_media::Frame;
use pushcast_rtmp::amf0::Amf0Value;
use pushcast_rtmp::{RejectCode, ServerConfig, ServerConnection, ServerEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// How the server treats a publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Accept the publish and record everything.
    Accept,
    /// Refuse the publish with `NetStream.Publish.BadName`.
    RejectBadName,
    /// Accept the publish, then never read from the socket again.
    StopReadingAfterPublish,
    /// Accept TCP and never read or answer anything (not even the handshake).
    Silent,
    /// Answer the handshake, then send 4 KiB of garbage and nothing else.
    GarbageAfterHandshake,
    /// Answer the handshake, then raise the chunk size to 2^31 - 1, declare a 16 MB
    /// message and trickle its bytes.
    HugeMessageAfterHandshake,
    /// Accept, after announcing a 4 GB acknowledgement window and peer bandwidth.
    HugeAckWindow,
    /// Accept, writing every answer one byte at a time.
    ByteByByte,
    /// Accept, listing these Enhanced RTMP codecs as `fourCcList` in the `connect`
    /// answer (a destination that says what it takes).
    AcceptOnly(&'static [&'static str]),
}

/// What the server saw on its (last) connection.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub app: Option<String>,
    pub tc_url: Option<String>,
    pub stream_name: Option<String>,
    pub query: Option<String>,
    pub frames: Vec<Frame>,
    /// `FCUnpublish` / `deleteStream` arrived.
    pub publish_ended: bool,
    /// The connection closed (EOF or error).
    pub closed: bool,
    /// The `fourCcList` the client announced in `connect`.
    pub four_cc_list: Vec<String>,
}

/// `n` pseudo-random bytes (xorshift from a nonzero `seed`): garbage that is the same on
/// every run.
pub fn garbage(seed: u32, n: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Writes `bytes` one at a time, each its own TCP segment (`TCP_NODELAY`), yielding
/// between them; a pause of 1 ms every 256 bytes lets them arrive apart.
async fn trickle(sock: &mut tokio::net::TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    for (i, b) in bytes.iter().enumerate() {
        sock.write_all(std::slice::from_ref(b)).await?;
        if i % 256 == 255 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

/// What a misbehaving server sends right after its handshake answer (in parts, a few
/// ms apart), instead of answering `connect`; `None` for the others.
fn misbehave(behaviour: Behaviour) -> Option<Vec<Vec<u8>>> {
    match behaviour {
        Behaviour::GarbageAfterHandshake => Some(vec![garbage(0x2545_F491, 4096)]),
        Behaviour::HugeMessageAfterHandshake => {
            // Set Chunk Size 2^31 - 1 (csid 2), then a type-0 header on csid 3 declaring
            // a 16 MB - 1 command message, then its body 1 KiB at a time.
            let mut first = vec![
                0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x7F, 0xFF, 0xFF, 0xFF,
            ];
            first.extend_from_slice(&[0x03, 0, 0, 0, 0xFF, 0xFF, 0xFF, 20, 0, 0, 0, 0]);
            let mut parts = vec![first];
            parts.extend(std::iter::repeat_n(vec![0x02; 1024], 64));
            Some(parts)
        }
        _ => None,
    }
}

pub struct TestRtmpServer {
    pub port: u16,
    state: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestRtmpServer {
    /// Listens on 127.0.0.1 and serves connections one after the other.
    pub async fn start(behaviour: Behaviour) -> TestRtmpServer {
        // A small receive buffer, so a server that stops reading blocks the sender soon.
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        let listener = socket.listen(16).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(Mutex::new(Received::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut parked = Vec::new();
            while let Ok((mut sock, _)) = listener.accept().await {
                *st.lock().unwrap() = Received::default();
                if behaviour == Behaviour::Silent {
                    parked.push(sock);
                    continue;
                }
                let mut conn = ServerConnection::new(ServerConfig {
                    four_cc_list: match behaviour {
                        Behaviour::AcceptOnly(list) => {
                            Some(list.iter().map(|s| s.to_string()).collect())
                        }
                        _ => None,
                    },
                    ..ServerConfig::default()
                });
                let mut buf = vec![0u8; 64 * 1024];
                let mut answered_handshake = false;
                'conn: loop {
                    let n = match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let Ok(events) = conn.handle_input(&buf[..n]) else {
                        break;
                    };
                    let mut stop_reading = false;
                    for ev in events {
                        let mut s = st.lock().unwrap();
                        match ev {
                            ServerEvent::Connected(info) => {
                                if let Some((_, Amf0Value::StrictArray(list))) =
                                    info.properties.iter().find(|(k, _)| k == "fourCcList")
                                {
                                    s.four_cc_list = list
                                        .iter()
                                        .filter_map(|v| v.as_str().map(str::to_owned))
                                        .collect();
                                }
                                s.app = Some(info.app);
                                s.tc_url = info.tc_url;
                            }
                            ServerEvent::PublishRequested(req) => {
                                s.stream_name = Some(req.stream_name.clone());
                                s.query = req.query.clone();
                                let _ = match behaviour {
                                    Behaviour::RejectBadName => conn.reject_publish(
                                        req.stream_id,
                                        RejectCode::BadName,
                                        "test server refuses this key",
                                    ),
                                    _ => conn.accept_publish(req.stream_id),
                                };
                                stop_reading = behaviour == Behaviour::StopReadingAfterPublish;
                            }
                            ServerEvent::Media(f) => s.frames.push(f),
                            ServerEvent::PublishEnded { .. } => s.publish_ended = true,
                        }
                    }
                    for seg in conn.take_outbound() {
                        let written = if behaviour == Behaviour::ByteByByte {
                            trickle(&mut sock, &seg).await
                        } else {
                            sock.write_all(&seg).await
                        };
                        if written.is_err() {
                            break 'conn;
                        }
                    }
                    if !answered_handshake && behaviour == Behaviour::HugeAckWindow {
                        // Window Acknowledgement Size and Set Peer Bandwidth of 4 GB - 1.
                        let mut b = vec![
                            0x02, 0, 0, 0, 0, 0, 4, 5, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
                        ];
                        b.extend_from_slice(&[
                            0x02, 0, 0, 0, 0, 0, 5, 6, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 2,
                        ]);
                        if sock.write_all(&b).await.is_err() {
                            break 'conn;
                        }
                    }
                    if !answered_handshake {
                        answered_handshake = true;
                        if let Some(hostile) = misbehave(behaviour) {
                            for part in hostile {
                                if sock.write_all(&part).await.is_err() {
                                    break 'conn;
                                }
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            // Then wait for the client to give up and close.
                            while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
                            break 'conn;
                        }
                    }
                    if stop_reading {
                        // Keep the socket open, read nothing: the sender's buffers fill.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
                st.lock().unwrap().closed = true;
            }
        });
        TestRtmpServer { port, state, task }
    }

    pub fn url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/live", self.port)
    }

    pub fn received(&self) -> Received {
        self.state.lock().unwrap().clone()
    }

    /// What has arrived so far, readable from another task while the server runs.
    pub fn received_handle(&self) -> impl Fn() -> Received + Send + Sync + 'static {
        let state = self.state.clone();
        move || state.lock().unwrap().clone()
    }

    /// Waits until the connection closed (or `limit`), then returns what arrived.
    pub async fn wait_closed(&self, limit: Duration) -> Received {
        let start = tokio::time::Instant::now();
        while !self.state.lock().unwrap().closed && start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.received()
    }
}

impl Drop for TestRtmpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
