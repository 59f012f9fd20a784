//! https callback URLs (the `https` feature): ring provider on our own client, a test CA
//! added through `extra_roots`, an unknown CA refused.
//! Run with `cargo test -p pushcast-webhooks --features https`.
#![cfg(feature = "https")]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use pushcast_testkit::receiver::{Plan, Receiver, always};
use pushcast_webhooks::{
    Denied, Dispatcher, DispatcherConfig, Format, Payload, PublishEvent, RetryPolicy, Target,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that refuses our certificate fails the handshake: keep accepting.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A test CA and an https receiver with a certificate for 127.0.0.1 it signed.
async fn https_receiver() -> (Receiver, CertificateDer<'static>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pushcast-webhooks test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let listener = TlsListener {
        tcp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        acceptor: TlsAcceptor::from(Arc::new(server)),
    };
    (
        Receiver::serve(listener, always(Plan::OK)),
        ca_cert.der().clone(),
    )
}

fn event() -> PublishEvent {
    PublishEvent {
        app: "live".into(),
        vhost: "default".into(),
        domain: "ingest.example.com".into(),
        stream: "s".into(),
        client: "1.2.3.4:5".parse().unwrap(),
        node: "w".into(),
        params: vec![],
        tc_url: "rtmp://ingest.example.com/live".into(),
        flashver: None,
        swfurl: None,
        vdoid: "1".into(),
        start_ms: 1,
    }
}

fn one_try() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::PUBLISH
    }
}

#[tokio::test]
async fn https_with_a_trusted_ca_delivers_and_an_unknown_ca_fails() {
    let (rx, ca) = https_receiver().await;
    let url = format!("https://{}/cb", rx.addr);

    let trusting = Dispatcher::new(DispatcherConfig {
        extra_roots: vec![ca],
        publish_retry: one_try(),
        ..DispatcherConfig::default()
    })
    .unwrap();
    let t = Target::new(&url).unwrap().with_secret("k");
    trusting.send(&t, Payload::publish_start(&event(), Format::New));
    let got = rx.wait_accepted(1, Duration::from_secs(10)).await;
    assert!(pushcast_webhooks::verify(
        &got[0].body,
        b"k",
        got[0].header("x-signature").unwrap()
    ));
    assert!(trusting.flush(Duration::from_secs(10)).await);
    assert_eq!(trusting.stats().delivered, 1);
    assert_eq!(
        trusting
            .authorize(&url, Duration::from_secs(2), &event())
            .await,
        Ok(())
    );

    // Mozilla's roots only: the test CA is not trusted.
    let strict = Dispatcher::new(DispatcherConfig {
        publish_retry: one_try(),
        ..DispatcherConfig::default()
    })
    .unwrap();
    strict.send(&t, Payload::publish_start(&event(), Format::New));
    assert!(strict.flush(Duration::from_secs(10)).await);
    assert_eq!((strict.stats().delivered, strict.stats().failed), (0, 1));
    match pushcast_webhooks::authorize(&url, Duration::from_secs(2), &event()).await {
        Err(Denied::Unreachable(why)) => assert!(why.contains("certificate"), "{why}"),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(
        rx.accepted().len(),
        2,
        "only the trusting client got through"
    );
}
