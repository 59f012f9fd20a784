//! A real HTTP receiver for the tests (axum on 127.0.0.1): records every request (method,
//! path, headers, body, when it arrived and when it was answered) and answers as its
//! policy says (status code and delay per request).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::serve::Listener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use crate::pki::TestPki;

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Arrival index (0-based).
    pub index: usize,
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub arrived: Instant,
    /// When the answer was sent (None while it is being delayed).
    pub answered: Option<Instant>,
    /// The status the receiver answered (or will answer).
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What to answer to one request.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub status: u16,
    pub delay: Duration,
}

impl Plan {
    pub const OK: Plan = Plan {
        status: 200,
        delay: Duration::ZERO,
    };

    pub fn status(status: u16) -> Plan {
        Plan {
            status,
            delay: Duration::ZERO,
        }
    }

    pub fn delayed(self, delay: Duration) -> Plan {
        Plan { delay, ..self }
    }
}

/// Decides the answer from the request and everything recorded before it.
pub type Policy = Arc<dyn Fn(&Recorded, &[Recorded]) -> Plan + Send + Sync>;

pub fn always(plan: Plan) -> Policy {
    Arc::new(move |_, _| plan)
}

/// 500 for the first `n` requests, then 200.
pub fn fail_first(n: usize) -> Policy {
    Arc::new(move |req, _| {
        if req.index < n {
            Plan::status(500)
        } else {
            Plan::OK
        }
    })
}

struct Shared {
    policy: Policy,
    log: Mutex<Vec<Recorded>>,
    changed: Notify,
}

pub struct Receiver {
    pub addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
    tls_failures: Option<Arc<AtomicUsize>>,
    shared: Arc<Shared>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// TLS in front of a TCP listener, for axum.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    failed: Arc<AtomicUsize>,
}

impl Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that refuses our certificate fails the handshake: count, go on.
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, addr),
                Err(_) => {
                    self.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn tls_acceptor(pki: &TestPki) -> TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&pki.server_cert_pem)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.server_key_pem).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let (index, plan) = {
        let mut log = shared.log.lock().unwrap();
        let mut rec = Recorded {
            index: log.len(),
            method,
            uri: uri.to_string(),
            headers,
            body,
            arrived: Instant::now(),
            answered: None,
            status: 0,
        };
        let plan = (shared.policy)(&rec, &log);
        rec.status = plan.status;
        log.push(rec);
        (log.len() - 1, plan)
    };
    shared.changed.notify_waiters();
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    shared.log.lock().unwrap()[index].answered = Some(Instant::now());
    shared.changed.notify_waiters();
    StatusCode::from_u16(plan.status).unwrap()
}

impl Receiver {
    /// Answers 200 to everything.
    pub async fn start() -> Receiver {
        Receiver::start_with(always(Plan::OK)).await
    }

    pub async fn start_with(policy: Policy) -> Receiver {
        Receiver::bind("127.0.0.1:0".parse().unwrap(), policy).await
    }

    /// On a given address (to start listening on a port that was refused before).
    pub async fn bind(addr: SocketAddr, policy: Policy) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Receiver::serve(listener, policy)
    }

    /// An https receiver on 127.0.0.1 with `pki`'s server certificate (a client must
    /// trust `pki.ca_pem`). A client that refuses the certificate is counted in
    /// [`Receiver::refused_handshakes`].
    pub async fn start_https(pki: &TestPki, policy: Policy) -> Receiver {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = TlsListener {
            tcp,
            acceptor: tls_acceptor(pki),
            failed: Arc::default(),
        };
        let failed = Arc::clone(&listener.failed);
        let mut receiver = Receiver::serve(listener, policy);
        receiver.scheme = "https";
        receiver.tls_failures = Some(failed);
        receiver
    }

    /// Handshakes that failed at an https receiver (the client refused its certificate).
    pub fn refused_handshakes(&self) -> usize {
        self.tls_failures
            .as_ref()
            .map_or(0, |n| n.load(Ordering::SeqCst))
    }

    /// Waits until at least `n` handshakes were refused (the client may know before the
    /// receiver's side has counted).
    pub async fn wait_refused_handshakes(&self, n: usize, timeout: Duration) {
        crate::wait_for("refused handshakes", timeout, || async {
            (self.refused_handshakes() >= n).then_some(())
        })
        .await;
    }

    /// On any listener.
    pub fn serve<L>(listener: L, policy: Policy) -> Receiver
    where
        L: Listener<Addr = SocketAddr>,
    {
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            policy,
            log: Mutex::new(Vec::new()),
            changed: Notify::new(),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            addr,
            scheme: "http",
            tls_failures: None,
            shared,
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// Everything recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The requests answered with 2xx, in arrival order.
    pub fn accepted(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(Recorded::ok).collect()
    }

    /// Waits until `cond` holds for the log (panics after `timeout`).
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let log = self.shared.log.lock().unwrap();
                if cond(&log) {
                    return log.clone();
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let log = self.requests();
                panic!("timed out waiting for {what}; received: {log:#?}");
            }
        }
    }

    /// Waits for `n` requests answered with 2xx (and answered, not just arrived).
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_until(timeout, &format!("{n} accepted requests"), |log| {
            log.iter()
                .filter(|r| r.ok() && r.answered.is_some())
                .count()
                >= n
        })
        .await;
        self.accepted()
    }
}

/// Times a closure that must not wait.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

/// Polls `cond` every 5 ms until it holds (panics after `timeout`).
pub async fn eventually(timeout: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs a future with a deadline (panics when it is exceeded).
pub async fn within<T>(timeout: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
