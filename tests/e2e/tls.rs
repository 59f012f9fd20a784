//! TLS from configured cert/key files, against the real binaries and a test CA made here
//! with rcgen: HTTPS for the REST gateway (curl), mutual TLS on WorkerService (tonic
//! clients with and without a client certificate), RTMPS ingest (ffmpeg publishes).

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use pushcast_proto::v1::GetTaskStatusRequest;
use pushcast_proto::v1::worker_service_client::WorkerServiceClient;
use pushcast_testkit::api::Node;
use pushcast_testkit::cluster::Publisher;
use pushcast_testkit::etcd::EtcdProcess;
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::pki::make_pki;
use pushcast_testkit::process::Proc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const TOKEN: &str = "tls-token";

/// `curl` with `args`; (exit code, stdout, stderr). Panics clearly when curl is missing.
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("these tests need the curl binary (apt-get install curl): {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_gateway_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "tls");
    let data = dir.path().join("data");
    let args = vec![
        format!("--data-dir={}", data.display()),
        format!("--access-token={TOKEN}"),
        "--rest-addr=127.0.0.1:0".into(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--rtmp-addr=127.0.0.1:0".into(),
        format!("--rest-tls-cert={}", pki.server_cert_pem.display()),
        format!("--rest-tls-key={}", pki.server_key_pem.display()),
    ];
    let mut proc = Proc::start("pushcast", "standalone", args, HashMap::new()).await;
    let addr = proc.wait_for_field("REST gateway listening", "addr").await;
    let port = addr.rsplit(':').next().unwrap().to_string();
    let auth = format!(
        "Authorization: Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, TOKEN)
    );
    let https = format!("https://127.0.0.1:{port}/v1/vhosts/default/apps/app:pushes");
    let ca = pki.ca_pem.to_str().unwrap();

    let ok = |(code, out, err): (i32, String, String)| {
        assert_eq!(code, 0, "curl over https failed: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["statusCode"], 200, "{out}");
    };
    ok(curl(&[
        "--cacert", ca, "-X", "POST", "-H", &auth, "-d", "{}", &https,
    ]));
    // HTTP/2 by ALPN works too: curl says which version it spoke (with `--http2` it falls
    // back to HTTP/1.1 silently when ALPN does not offer h2).
    let (code, version, err) = curl(&[
        "--http2",
        "--cacert",
        ca,
        "-X",
        "POST",
        "-H",
        &auth,
        "-d",
        "{}",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &https,
    ]);
    assert_eq!(code, 0, "curl --http2 failed: {err}");
    assert_eq!(version, "2", "HTTP/2 negotiated by ALPN");

    // Without trusting the CA: the certificate is refused.
    let (code, _, _) = curl(&["-X", "POST", "-H", &auth, "-d", "{}", &https]);
    assert_ne!(code, 0, "curl trusted an unknown CA");

    // Plain HTTP to the TLS port fails (no HTTP answer) and the server stays up.
    let plain = format!("http://127.0.0.1:{port}/v1/vhosts/default/apps/app:pushes");
    let (code, out, _) = curl(&["-X", "POST", "-H", &auth, "-d", "{}", &plain]);
    assert_ne!(
        code, 0,
        "plain HTTP got an answer from the HTTPS port: {out}"
    );
    assert!(!out.contains("\"statusCode\":200"), "{out}");
    // Garbage, then a half-open connection that never sends a ClientHello.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(b"\x00\x01\x02garbage\r\n\r\n");
        let _idle = std::net::TcpStream::connect(&addr).unwrap();
        ok(curl(&[
            "--cacert", ca, "-X", "POST", "-H", &auth, "-d", "{}", &https,
        ]));
    }
    assert!(proc.is_running());
    ok(curl(&[
        "--cacert", ca, "-X", "POST", "-H", &auth, "-d", "{}", &https,
    ]));
}

async fn worker_client(
    addr: &str,
    tls: ClientTlsConfig,
) -> Result<WorkerServiceClient<Channel>, String> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(WorkerServiceClient::new(channel))
}

/// A call that must fail: the connection or the call itself.
async fn call_fails(addr: &str, tls: ClientTlsConfig) -> bool {
    match worker_client(addr, tls).await {
        Err(_) => true,
        Ok(mut c) => c
            .get_task_status(GetTaskStatusRequest::default())
            .await
            .is_err(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_service_mutual_tls() {
    let etcd = EtcdProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "tls");
    let data = dir.path().join("w0");
    std::fs::create_dir_all(&data).unwrap();
    let extra = [
        "--etcd-timeout-ms=1000".into(),
        format!("--grpc-tls-cert={}", pki.server_cert_pem.display()),
        format!("--grpc-tls-key={}", pki.server_key_pem.display()),
        format!("--grpc-tls-ca={}", pki.ca_pem.display()),
        "--grpc-tls-client-auth".into(),
    ];
    let mut worker = Proc::worker(&etcd.endpoint(), "w0", &data, &extra).await;
    let grpc = worker
        .wait_for_field("WorkerService listening", "addr")
        .await;
    let ca = Certificate::from_pem(std::fs::read(&pki.ca_pem).unwrap());
    let identity = Identity::from_pem(
        std::fs::read(&pki.client_cert_pem).unwrap(),
        std::fs::read(&pki.client_key_pem).unwrap(),
    );

    // No client certificate: refused.
    let anonymous = ClientTlsConfig::new().ca_certificate(ca.clone());
    assert!(
        call_fails(&grpc, anonymous).await,
        "a client without a certificate was served"
    );
    // Plain h2c: refused.
    let plain = async {
        let ch = Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .timeout(Duration::from_secs(5))
            .connect()
            .await;
        match ch {
            Err(_) => true,
            Ok(ch) => WorkerServiceClient::new(ch)
                .get_task_status(GetTaskStatusRequest::default())
                .await
                .is_err(),
        }
    };
    assert!(plain.await, "a plain-text client was served");
    // A client certificate from another CA: refused.
    let other_dir = tempfile::tempdir().unwrap();
    let other = make_pki(other_dir.path(), "other");
    let stranger = ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .identity(Identity::from_pem(
            std::fs::read(&other.client_cert_pem).unwrap(),
            std::fs::read(&other.client_key_pem).unwrap(),
        ));
    assert!(
        call_fails(&grpc, stranger).await,
        "a client certificate from another CA was accepted"
    );

    // A client certificate from the CA: served.
    let trusted = ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(identity)
        .domain_name("localhost");
    let mut client = worker_client(&grpc, trusted).await.unwrap();
    let reply = client
        .get_task_status(GetTaskStatusRequest::default())
        .await
        .unwrap();
    assert!(reply.into_inner().tasks.is_empty());
    assert!(worker.is_running());
}

#[tokio::test(flavor = "multi_thread")]
/// RTMPS ingest, and the standalone's controller reading live counters from its worker
/// over mutual TLS (checkpoints in the store are 30 s apart: counters that move within
/// seconds come from `GetTaskStatus` over the mTLS channel).
async fn rtmps_ingest_and_live_counters_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "tls");
    let data = dir.path().join("data");
    let args = vec![
        format!("--data-dir={}", data.display()),
        format!("--access-token={TOKEN}"),
        "--rest-addr=127.0.0.1:0".into(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--rtmp-addr=127.0.0.1:0".into(),
        "--rtmps-addr=127.0.0.1:0".into(),
        format!("--rtmps-cert={}", pki.server_cert_pem.display()),
        format!("--rtmps-key={}", pki.server_key_pem.display()),
        format!("--grpc-tls-cert={}", pki.server_cert_pem.display()),
        format!("--grpc-tls-key={}", pki.server_key_pem.display()),
        format!("--grpc-tls-ca={}", pki.ca_pem.display()),
        "--grpc-tls-client-auth".into(),
    ];
    let mut node = Node::start("pushcast", "standalone", args, TOKEN).await;
    let rtmps = node
        .proc
        .wait_for_field("RTMPS ingest listening", "addr")
        .await;
    node.open_publish("app").await;

    // A plain RTMP client on the RTMPS port: its handshake fails, the server goes on.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&rtmps).unwrap();
        let _ = s.write_all(&[3u8; 1537]);
    }

    let log = dir.path().join("ffmpeg.log");
    let mut publisher = Publisher::start(&format!("rtmps://{rtmps}/app/cam"), &log);
    node.proc
        .wait_logged(&["publish started", "cam"], Duration::from_secs(20))
        .await;
    let nginx = Nginx::start();
    let r = node
        .action(
            "startPush",
            serde_json::json!({"id": "out", "stream": {"name": "cam"}, "protocol": "rtmp",
                               "url": nginx.rtmp_url(), "streamKey": "k"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent = |t: &serde_json::Value| t["sentBytes"].as_u64().unwrap_or(0);
    let first =
        pushcast_testkit::wait_for("push started and sending", Duration::from_secs(15), || {
            let node = &node;
            async move {
                let t = node.task("out").await;
                (t["state"] == "started" && sent(&t) > 0).then_some(sent(&t))
            }
        })
        .await;
    pushcast_testkit::wait_for("live counters growing", Duration::from_secs(10), || {
        let node = &node;
        async move { (sent(&node.task("out").await) > first).then_some(()) }
    })
    .await;
    publisher.stop();
    assert!(node.proc.is_running(), "{}", publisher.log_text());
}
