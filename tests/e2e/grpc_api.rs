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
    let channel = tonic::transport::Endpoint::from_shared(node.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut pushes = PushServiceClient::new(channel.clone());

    // Without credentials: refused.
    let err = pushes
        .list_pushes(v1::ListPushesRequest {
            vhost: "default".into(),
            app: "app".into(),
            id: String::new(),
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
    apps.create_app(authed(v1::CreateAppRequest {
        app: Some(v1::App {
            vhost: "default".into(),
            name: "live".into(),
            open_publish: false,
        }),
    }))
    .await
    .unwrap();
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
