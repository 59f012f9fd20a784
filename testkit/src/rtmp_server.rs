//! An in-process RTMP destination built on the crate's own sans-IO `ServerConnection`: it
//! records exactly what arrives (frames with their timestamps, the publish request, the
//! unpublish), and can misbehave on purpose (refuse the key, stop reading).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushcast_media::Frame;
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
                let mut conn = ServerConnection::new(ServerConfig::default());
                let mut buf = vec![0u8; 64 * 1024];
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
                        if sock.write_all(&seg).await.is_err() {
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
