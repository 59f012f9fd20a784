//! https callback URLs: ring provider on our own client, a test CA
//! added through `extra_roots`, an unknown CA refused.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pushcast_testkit::pki::make_pki;
use pushcast_testkit::receiver::{Plan, Receiver, always};
use pushcast_webhooks::{
    Denied, Dispatcher, DispatcherConfig, Format, Payload, PublishEvent, RetryPolicy, Target,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

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
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "webhooks");
    let rx = Receiver::start_https(&pki, always(Plan::OK)).await;
    let ca = CertificateDer::from_pem_file(&pki.ca_pem).unwrap();
    let url = rx.url("/cb");

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
    // The strict clients refused the certificate.
    rx.wait_refused_handshakes(2, Duration::from_secs(5)).await;
}
