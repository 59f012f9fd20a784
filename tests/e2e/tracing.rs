//! OpenTelemetry: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a startPush is one trace across
//! processes — spans from the controller (the API call, the scheduling) and from the
//! worker (the task, its push session) — received by a real OTLP/gRPC receiver that the
//! test runs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use pushcast_testkit::api::Node;
use pushcast_testkit::etcd::EtcdProcess as Etcd;
use pushcast_testkit::media::test_media;
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::proc::Guard;
use pushcast_testkit::process::Proc;
use serde_json::json;

/// (trace id hex, service name, span name) of every span received.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, String, String)>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push((hex(&span.trace_id), service.clone(), span.name.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_push_is_one_trace_across_controller_and_worker() {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let env = |service: &str| {
        HashMap::from([
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), otlp.clone()),
            ("OTEL_SERVICE_NAME".to_string(), service.to_string()),
            // Export promptly.
            ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()),
        ])
    };
    let controller = Node::start_with_env(
        "pushcast-controller",
        "c0",
        vec![
            format!("--etcd-endpoints={}", etcd.endpoint()),
            "--access-token=t".into(),
            "--node-id=c0".into(),
            "--rest-addr=127.0.0.1:0".into(),
            "--grpc-addr=127.0.0.1:0".into(),
            format!("--data-dir={}", dir.path().join("c0").display()),
        ],
        env("pushcast-controller"),
        "t",
    )
    .await;
    controller.open_publish("app").await;
    let mut worker = Proc::worker_with_env(
        &etcd.endpoint(),
        "w0",
        &dir.path().join("w0"),
        &[],
        env("pushcast-worker"),
    )
    .await;
    let rtmp = worker.wait_for_field("RTMP ingest listening", "addr").await;
    let nginx = Nginx::start();
    let mut publisher = Guard::spawn(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-re",
            "-i",
            test_media().flv.to_str().unwrap(),
            "-c",
            "copy",
            "-f",
            "flv",
            &format!("rtmp://{rtmp}/app/cam"),
        ],
        &dir.path().join("publish.log"),
    );
    worker
        .wait_logged(&["publish started"], Duration::from_secs(15))
        .await;
    let r = controller
        .action(
            "startPush",
            json!({"id": "traced", "stream": {"name": "cam"}, "protocol": "rtmp",
                                    "url": nginx.rtmp_url(), "streamKey": "traced"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // One trace holds the API call and the scheduling (controller) and the worker
    // taking the task. Spans reach the collector in export batches, one process at a
    // time: wait for all three, then say which one is missing if they never come.
    const WANTED: [(&str, &str); 3] = [
        ("pushcast-controller", "http"),
        ("pushcast-controller", "schedule"),
        ("pushcast-worker", "assigned"),
    ];
    let traces = || {
        let spans = received.0.lock().unwrap().clone();
        let mut by_trace: HashMap<String, HashSet<(String, String)>> = HashMap::new();
        for (t, service, name) in spans {
            by_trace.entry(t).or_default().insert((service, name));
        }
        by_trace
    };
    let complete = |s: &HashSet<(String, String)>| {
        WANTED
            .iter()
            .all(|(svc, name)| s.iter().any(|(sv, n)| sv.contains(svc) && n == name))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (trace, names) = loop {
        if let Some(found) = traces().into_iter().find(|(_, s)| complete(s)) {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no trace holds all of {WANTED:?} after 30 s; traces seen: {:?}",
            traces()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("trace {trace}: {names:?}");
    let _ = publisher.terminate(Duration::from_secs(3));
    server.abort();
}
