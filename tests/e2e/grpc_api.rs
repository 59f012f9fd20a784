//! The gRPC API of the real controller: the same tasks as REST, auth, WatchPushes,
//! health and reflection.

use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use pushcast_proto::v1::{
    self, app_service_client::AppServiceClient, push_service_client::PushServiceClient,
};
use pushcast_testkit::api::Node;
use pushcast_testkit::etcd::EtcdProcess as Etcd;
use serde_json::json;
use tonic::Request;

const TOKEN: &str = "grpc-token";

fn authed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    let v = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(TOKEN)
    );
    r.metadata_mut().insert("authorization", v.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_and_rest_share_tasks_and_events() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::controller(&etcd.endpoint(), TOKEN, "c1", dir.path()).await;
    let channel = crate::grpc_channel(&node).await;
    let mut pushes = PushServiceClient::new(channel.clone());

    // Without credentials: refused.
    let err = pushes
        .list_pushes(v1::ListPushesRequest {
            vhost: "default".into(),
            app: "app".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        err.message(),
        "Authorization header is required to call API"
    );

    // Watch first, so the events of the calls below are seen.
    let mut events = pushes
        .watch_pushes(authed(v1::WatchPushesRequest {
            vhost: "default".into(),
            app: "app".into(),
        }))
        .await
        .unwrap()
        .into_inner();

    // Created over REST, visible over gRPC.
    let r = node
        .action(
            "startPush",
            json!({"id": "rest1", "stream": {"name": "s"}, "protocol": "rtmp",
                   "url": "rtmp://127.0.0.1/live", "streamKey": "k1"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let got = pushes
        .get_push(authed(v1::GetPushRequest {
            vhost: "default".into(),
            app: "app".into(),
            id: "rest1".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(got.url, "rtmp://127.0.0.1/live");
    assert_eq!(got.stream_key, "k1");
    assert_eq!(got.state, v1::TaskState::Ready as i32);
    let created_ms = got.created_time.unwrap().seconds * 1000;
    let rest_created = chrono::DateTime::parse_from_str(
        r.json["response"]["createdTime"].as_str().unwrap(),
        "%Y-%m-%dT%H:%M:%S%.3f%:z",
    )
    .unwrap()
    .timestamp_millis();
    assert_eq!(created_ms / 1000, rest_created / 1000);

    // Created over gRPC, visible over REST; same validation messages.
    let bad = pushes
        .start_push(authed(v1::StartPushRequest {
            vhost: "default".into(),
            app: "app".into(),
            id: "g1".into(),
            stream: Some(v1::StreamSelector {
                name: "s".into(),
                ..Default::default()
            }),
            protocol: "mpegts".into(),
            url: "rtmp://x/y".into(),
            stream_key: String::new(),
            destinations: vec![],
            reconnect_window_ms: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(bad.message(), "Unsupported protocol");
    let started = pushes
        .start_push(authed(v1::StartPushRequest {
            vhost: "default".into(),
            app: "app".into(),
            id: "g1".into(),
            stream: Some(v1::StreamSelector {
                name: "s".into(),
                track_ids: vec![101],
                ..Default::default()
            }),
            protocol: "mpegts".into(),
            url: "udp://127.0.0.1:5000".into(),
            stream_key: String::new(),
            destinations: vec![],
            reconnect_window_ms: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(started.id, "g1");
    let dup = pushes
        .start_push(authed(v1::StartPushRequest {
            vhost: "default".into(),
            app: "app".into(),
            id: "g1".into(),
            stream: Some(v1::StreamSelector {
                name: "s".into(),
                ..Default::default()
            }),
            protocol: "mpegts".into(),
            url: "udp://127.0.0.1:5001".into(),
            stream_key: String::new(),
            destinations: vec![],
            reconnect_window_ms: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    let list = node.action("pushes", json!({"id": "g1"})).await;
    assert_eq!(list.json["response"][0]["stream"]["trackIds"], json!([101]));

    // Stopped over gRPC.
    pushes
        .stop_push(authed(v1::StopPushRequest {
            vhost: "default".into(),
            app: "app".into(),
            id: "rest1".into(),
        }))
        .await
        .unwrap();

    // The watch saw: created rest1, created g1, removed rest1 — in that order.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("watch event within 10 s")
            .unwrap()
            .unwrap();
        seen.push((ev.kind, ev.task.unwrap().id));
    }
    use v1::push_event::Kind;
    assert_eq!(
        seen,
        vec![
            (Kind::Created as i32, "rest1".to_string()),
            (Kind::Created as i32, "g1".to_string()),
            (Kind::Removed as i32, "rest1".to_string()),
        ]
    );

    // Apps over gRPC.
    let mut apps = AppServiceClient::new(channel.clone());
    // With source continuity and an auto-push rule, checked as REST checks them.
    let rule = v1::PushRule {
        name: "yt".into(),
        stream: "cam*".into(),
        destinations: vec![v1::Destination {
            protocol: "rtmp".into(),
            url: "rtmp://a.example/live".into(),
            stream_key: "${SourceStream}".into(),
            variant_names: vec![],
        }],
        ..Default::default()
    };
    let created = apps
        .create_app(authed(v1::CreateAppRequest {
            app: Some(v1::App {
                vhost: "default".into(),
                name: "live".into(),
                open_publish: false,
                reconnect_window_ms: 10_000,
                rules: vec![rule.clone()],
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .app
        .unwrap();
    assert_eq!(
        (created.reconnect_window_ms, created.rules.len()),
        (10_000, 1)
    );
    let r = node.call("GET", "/v1/vhosts/default/apps/live", None).await;
    assert_eq!(
        r.json["response"]["rules"][0]["stream"], "cam*",
        "{}",
        r.text
    );
    let bad = apps
        .create_app(authed(v1::CreateAppRequest {
            app: Some(v1::App {
                vhost: "default".into(),
                name: "bad".into(),
                rules: vec![v1::PushRule {
                    name: "no spaces allowed".into(),
                    ..rule
                }],
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    let names = apps
        .list_apps(authed(v1::ListAppsRequest {
            vhost: "default".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .names;
    assert_eq!(names, vec!["app".to_string(), "live".to_string()]);
    let r = node.call("GET", "/v1/vhosts/default/apps", None).await;
    assert_eq!(r.json["response"], json!(["app", "live"]));

    // Health, without credentials.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "pushcast.v1.PushService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Reflection lists the services (what `grpcurl -plaintext ADDR list` does).
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let first = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "pushcast.v1.PushService",
        "pushcast.v1.AppService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want.to_string()), "{names:?}");
    }
}

/// `ListPushes` pages (AIP-158): every task exactly once, in the unpaginated order, the
/// last page without a token; a task created between pages does not shift the others; a
/// token of another app and a token without a page size are refused; `page_size` 0 is
/// the whole list, as before pagination.
#[tokio::test(flavor = "multi_thread")]
async fn list_pushes_pages_through_every_task_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    let channel = crate::grpc_channel(&node).await;
    let mut pushes = PushServiceClient::new(channel);
    for i in 0..23 {
        let body = json!({"id": format!("p{i:02}"), "stream": {"name": "s"}, "protocol": "rtmp",
                          "url": "rtmp://127.0.0.1:9/live", "streamKey": format!("k{i}")});
        let r = node.action("startPush", body).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let list = |page_size: i32, page_token: String| v1::ListPushesRequest {
        vhost: "default".into(),
        app: "app".into(),
        page_size,
        page_token,
        ..Default::default()
    };
    let ids = |r: &v1::ListPushesResponse| -> Vec<String> {
        r.tasks.iter().map(|t| t.id.clone()).collect()
    };
    let whole = pushes
        .list_pushes(authed(list(0, String::new())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.tasks.len(), 23);
    assert!(whole.next_page_token.is_empty());

    let mut paged = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = pushes
            .list_pushes(authed(list(10, token.clone())))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.tasks.len() <= 10);
        paged.extend(ids(&page));
        if pages == 1 {
            // Created between pages: it sorts last (newest), so it shows up on a later
            // page, and shifts nothing.
            let body = json!({"id": "late", "stream": {"name": "s"}, "protocol": "rtmp",
                              "url": "rtmp://127.0.0.1:9/live", "streamKey": "late"});
            assert_eq!(node.action("startPush", body).await.status, 200);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10, "pagination does not end");
    }
    let mut expected = ids(&whole);
    expected.push("late".into());
    assert_eq!(paged, expected, "every task once, in list order");
    assert_eq!(pages, 3);

    // A token is bound to its listing.
    let first = pushes
        .list_pushes(authed(list(5, String::new())))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let other = pushes
        .list_pushes(authed(v1::ListPushesRequest {
            vhost: "default".into(),
            app: "other".into(),
            page_size: 5,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_ne!(other.code(), tonic::Code::Ok);
    let garbage = pushes
        .list_pushes(authed(list(5, "not-a-token".into())))
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    assert!(
        garbage.message().contains("page_token"),
        "{}",
        garbage.message()
    );
    let no_size = pushes
        .list_pushes(authed(list(0, first.next_page_token)))
        .await
        .unwrap_err();
    assert_eq!(no_size.code(), tonic::Code::InvalidArgument);
}

/// Hostile gRPC requests: a repeated field of 10,000 destinations is refused by the API's
/// rule (INVALID_ARGUMENT, at most 50), a 2 MB request before it is decoded
/// (OUT_OF_RANGE, the 1 MiB bound); the server goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_grpc_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    let mut pushes = PushServiceClient::new(crate::grpc_channel(&node).await);
    let start = |destinations: Vec<v1::Destination>| v1::StartPushRequest {
        vhost: "default".into(),
        app: "app".into(),
        id: "big".into(),
        stream: Some(v1::StreamSelector {
            name: "s".into(),
            ..Default::default()
        }),
        destinations,
        ..Default::default()
    };
    let d = |i: usize, pad: usize| v1::Destination {
        protocol: "rtmp".into(),
        url: format!("rtmp://127.0.0.1:9/live{}", "x".repeat(pad)),
        stream_key: format!("k{i}"),
        ..Default::default()
    };
    let many = pushes
        .start_push(authed(start((0..10_000).map(|i| d(i, 0)).collect())))
        .await
        .unwrap_err();
    assert_eq!(many.code(), tonic::Code::InvalidArgument, "{many:?}");
    assert!(
        many.message()
            .contains("at most 50 destinations (10000 given)"),
        "{}",
        many.message()
    );
    let huge = pushes
        .start_push(authed(start((0..20).map(|i| d(i, 100_000)).collect())))
        .await
        .unwrap_err();
    assert_eq!(huge.code(), tonic::Code::OutOfRange, "{huge:?}");
    let fine = pushes
        .start_push(authed(start(vec![d(0, 0), d(1, 0)])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fine.task.unwrap().destinations.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn vhost_host_names_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    let mut apps = AppServiceClient::new(crate::grpc_channel(&node).await);
    let list = apps
        .list_vhosts(authed(v1::ListVhostsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.vhosts,
        [v1::Vhost {
            name: "default".into(),
            hosts: vec![]
        }]
    );
    let set = apps
        .set_vhost_hosts(authed(v1::SetVhostHostsRequest {
            name: "default".into(),
            hosts: vec!["Live.Example.com".into(), "*.studio.example.com".into()],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        set.vhost.unwrap().hosts,
        ["live.example.com", "*.studio.example.com"]
    );
    let bad = apps
        .set_vhost_hosts(authed(v1::SetVhostHostsRequest {
            name: "default".into(),
            hosts: vec!["rtmp://x".into()],
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    let none = apps
        .set_vhost_hosts(authed(v1::SetVhostHostsRequest {
            name: "nope".into(),
            hosts: vec![],
        }))
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::NotFound, "{none:?}");
    // REST sees what gRPC set.
    let r = node.call("GET", "/v1/vhosts/default", None).await;
    assert_eq!(
        r.json["response"]["hosts"],
        json!(["live.example.com", "*.studio.example.com"])
    );
}

/// grpcurl 1.8 speaks only the v1alpha reflection service (it said "server does not
/// support the reflection API" when only v1 was served): it lists the API and describes
/// a service. `scripts/deps.sh test` installs it; a missing binary fails the test.
#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_1_8_lists_and_describes_the_api_over_v1alpha_reflection() {
    let bin = std::env::var_os("GRPCURL18_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/pushcast-grpcurl-1.8/grpcurl")
        });
    assert!(
        bin.is_file(),
        "grpcurl 1.8 not found at {} (scripts/deps.sh test installs it)",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(dir.path(), TOKEN).await;
    let addr = node.grpc.trim_start_matches("http://").to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .arg("-plaintext")
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "grpcurl {args:?}: {text}");
        text
    };
    let version = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stderr).contains("v1.8")
            || String::from_utf8_lossy(&version.stdout).contains("v1.8"),
        "an old grpcurl"
    );
    let list = run(&[&addr, "list"]);
    for want in [
        "pushcast.v1.PushService",
        "pushcast.v1.AppService",
        "grpc.health.v1.Health",
    ] {
        assert!(list.contains(want), "{list}");
    }
    let described = run(&[&addr, "describe", "pushcast.v1.PushService"]);
    assert!(described.contains("rpc StartPush"), "{described}");
}
