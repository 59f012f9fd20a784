//! The authorization callback against a real HTTP receiver: fail closed.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pushcast_testkit::net::free_tcp_port as free_port;
use pushcast_testkit::receiver::{Plan, Receiver, always};
use pushcast_webhooks::{Denied, Dispatcher, DispatcherConfig, PublishEvent, authorize, publish};

fn event() -> PublishEvent {
    PublishEvent {
        app: "live".into(),
        vhost: "default".into(),
        domain: "ingest.example.com".into(),
        stream: "cam1".into(),
        client: "10.1.2.3:50000".parse().unwrap(),
        node: "w1".into(),
        params: vec![("token".into(), "abc".into())],
        tc_url: "rtmp://ingest.example.com/live".into(),
        flashver: None,
        swfurl: None,
        vdoid: "1".into(),
        start_ms: 1_700_000_000_000,
    }
}

const T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn http_200_accepts_and_gets_the_pubstart_body() {
    let rx = Receiver::start().await;
    assert_eq!(authorize(&rx.url("/auth?k=v"), T, &event()).await, Ok(()));
    let got = rx.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].uri, "/auth?k=v");
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(
        got[0].body.as_ref(),
        publish::start_json(&event()).as_slice()
    );
    assert_eq!(got[0].json()["NotifyType"], "PubStart");
    assert_eq!(got[0].json()["PubParam"]["token"], "abc");
    // 204 is a 2xx too.
    let rx = Receiver::start_with(always(Plan::status(204))).await;
    assert_eq!(authorize(&rx.url("/auth"), T, &event()).await, Ok(()));
}

#[tokio::test]
async fn any_other_answer_denies() {
    for code in [403, 401, 404, 500, 302] {
        let rx = Receiver::start_with(always(Plan::status(code))).await;
        assert_eq!(
            authorize(&rx.url("/auth"), T, &event()).await,
            Err(Denied::Status(code))
        );
        // Exactly one call: no retries, no redirect following.
        assert_eq!(rx.requests().len(), 1);
    }
}

#[tokio::test]
async fn a_timeout_denies_in_time() {
    let rx = Receiver::start_with(always(Plan::OK.delayed(Duration::from_secs(3)))).await;
    let start = Instant::now();
    let res = authorize(&rx.url("/auth"), Duration::from_millis(200), &event()).await;
    let took = start.elapsed();
    assert_eq!(res, Err(Denied::Timeout(Duration::from_millis(200))));
    // The 200 ms timeout, not the receiver's 3 s.
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn connection_refused_denies() {
    let url = format!("http://127.0.0.1:{}/auth?secret=zzz", free_port());
    match authorize(&url, T, &event()).await {
        Err(Denied::Unreachable(why)) => {
            assert!(!why.contains("zzz"), "no query string in the reason: {why}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_url_denies() {
    assert!(matches!(
        authorize("ftp://x/y", T, &event()).await,
        Err(Denied::Misconfigured(_))
    ));
    assert!(matches!(
        authorize("not a url", T, &event()).await,
        Err(Denied::Misconfigured(_))
    ));
}

#[tokio::test]
async fn the_dispatcher_client_authorizes_the_same_way() {
    let d = Dispatcher::new(DispatcherConfig::default()).unwrap();
    let ok = Receiver::start().await;
    let no = Receiver::start_with(always(Plan::status(403))).await;
    assert_eq!(d.authorize(&ok.url("/a"), T, &event()).await, Ok(()));
    assert_eq!(
        d.authorize(&no.url("/a"), T, &event()).await,
        Err(Denied::Status(403))
    );
    let slow = Receiver::start_with(always(Plan::OK.delayed(Duration::from_secs(3)))).await;
    assert_eq!(
        d.authorize(&slow.url("/a"), Duration::from_millis(100), &event())
            .await,
        Err(Denied::Timeout(Duration::from_millis(100)))
    );
    let refused = format!("http://127.0.0.1:{}/a", free_port());
    assert!(matches!(
        d.authorize(&refused, T, &event()).await,
        Err(Denied::Unreachable(_))
    ));
}
