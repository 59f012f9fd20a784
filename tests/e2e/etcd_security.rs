//! etcd over TLS with client certificates, and etcd with auth enabled: the real
//! `pushcast-controller` and `pushcast-worker` against a real etcd started with
//! `--cert-file --key-file --client-cert-auth --trusted-ca-file`, and a real etcd with
//! `auth enable` (users and a role made by etcdctl). Controllers and workers work (a push
//! reaches nginx-rtmp); a wrong CA, a missing client certificate or a wrong password
//! fails at start with one clear line.

use std::time::Duration;

use pushcast_testkit::api::Node;
use pushcast_testkit::etcd::EtcdProcess as Etcd;
use pushcast_testkit::nginx::Nginx;
use pushcast_testkit::pki::{TestPki, make_pki};
use pushcast_testkit::process::Proc;
use serde_json::json;

const TOKEN: &str = "etcd-security";

fn tls_args(pki: &TestPki, client_certificate: bool) -> Vec<String> {
    let mut args = vec![format!("--etcd-ca-file={}", pki.ca_pem.display())];
    if client_certificate {
        args.push(format!(
            "--etcd-cert-file={}",
            pki.client_cert_pem.display()
        ));
        args.push(format!("--etcd-key-file={}", pki.client_key_pem.display()));
    }
    args
}

/// A controller and a worker on `etcd` with `extra` arguments; a push from a published
/// stream reaches nginx-rtmp (so both read, write, watch and hold leases).
async fn controller_and_worker_push(etcd: &str, extra: &[String], dir: &std::path::Path) {
    let mut args = vec![
        format!("--etcd-endpoints={etcd}"),
        format!("--access-token={TOKEN}"),
        "--node-id=c0".into(),
        "--rest-addr=127.0.0.1:0".into(),
        "--grpc-addr=127.0.0.1:0".into(),
        format!("--data-dir={}", dir.join("c0").display()),
    ];
    args.extend_from_slice(extra);
    let controller = Node::start("pushcast-controller", "c0", args, TOKEN).await;
    controller.open_publish("app").await;
    let mut worker = Proc::worker(etcd, "w0", &dir.join("w0"), extra).await;
    let rtmp = worker.wait_for_field("RTMP ingest listening", "addr").await;
    let nginx = Nginx::start();
    let r = controller
        .action(
            "startPush",
            json!({"id": "t", "stream": {"name": "cam"}, "protocol": "rtmp",
                   "url": nginx.rtmp_url(), "streamKey": "rec"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut publisher =
        pushcast_testkit::ffmpeg::publish(&format!("rtmp://{rtmp}/app/cam"), dir, "p", 0);
    pushcast_testkit::wait_for("the push started", Duration::from_secs(30), || async {
        let task = controller.task("t").await;
        (task["state"] == "started" && task["sentBytes"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    assert!(
        publisher
            .wait_exit(Duration::from_secs(30))
            .unwrap()
            .success()
    );
    let recording = nginx.finished_recording("rec", Duration::from_secs(20));
    assert!(std::fs::metadata(&recording).unwrap().len() > 10_000);
}

/// A binary that must not start: its exit code is not 0 and one line says why.
async fn refused_at_start(bin: &str, args: Vec<String>) -> String {
    let mut proc = Proc::start(bin, "refused", args, Default::default()).await;
    let code = proc.wait_exit(Duration::from_secs(20)).await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "{bin} exits with an error: {code:?}"
    );
    let out = proc.output();
    println!("{bin} refused:\n{}", out.join("\n"));
    let errors: Vec<&String> = out
        .iter()
        .filter(|l| l.starts_with("Error: ") || l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one line says why");
    errors[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_over_tls_with_client_certificates_and_their_cn_as_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "etcd");
    let etcd = Etcd::start_tls(&pki);
    assert!(etcd.endpoint().starts_with("https://"));
    controller_and_worker_push(&etcd.endpoint(), &tls_args(&pki, true), dir.path()).await;

    // A CA that did not sign etcd's certificate.
    let other = make_pki(dir.path(), "other");
    let base = |extra: Vec<String>| {
        let mut args = vec![
            format!("--etcd-endpoints={}", etcd.endpoint()),
            "--etcd-timeout-ms=3000".into(),
            format!("--data-dir={}", dir.path().join("x").display()),
            "--rest-addr=127.0.0.1:0".into(),
            "--grpc-addr=127.0.0.1:0".into(),
        ];
        args.extend(extra);
        args
    };
    let mut wrong_ca = tls_args(&other, false);
    wrong_ca.push(format!(
        "--etcd-cert-file={}",
        pki.client_cert_pem.display()
    ));
    wrong_ca.push(format!("--etcd-key-file={}", pki.client_key_pem.display()));
    let why = refused_at_start("pushcast-controller", base(wrong_ca)).await;
    assert!(
        why.contains("cannot use etcd at https://127.0.0.1") && why.contains("certificate"),
        "{why}"
    );
    // No client certificate: etcd refuses the handshake.
    let why = refused_at_start("pushcast-controller", base(tls_args(&pki, false))).await;
    assert!(
        why.contains("cannot use etcd at https://127.0.0.1") && why.contains("client certificate"),
        "{why}"
    );
    // TLS files with an http:// endpoint.
    let mut http = base(tls_args(&pki, true));
    http[0] = "--etcd-endpoints=http://127.0.0.1:2379".into();
    let why = refused_at_start("pushcast-controller", http).await;
    assert!(why.contains("need https:// endpoints"), "{why}");

    // Auth on: with no user name sent, etcd takes the client certificate's CN as the user.
    etcd.enable_auth(
        "rootpw",
        pushcast_testkit::pki::CLIENT_CN,
        None,
        "/pushcast/",
    );
    let dir2 = tempfile::tempdir().unwrap();
    let mut cn_args = tls_args(&pki, true);
    cn_args.push("--etcd-prefix=/pushcast/cn/".into());
    controller_and_worker_push(&etcd.endpoint(), &cn_args, dir2.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_with_auth_enabled_and_a_password_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    etcd.enable_auth("rootpw", "pushcast", Some("s3cret-pw"), "/pushcast/");
    let password_file = dir.path().join("etcd-password");
    // As a Kubernetes secret often is: with a trailing newline.
    std::fs::write(&password_file, "s3cret-pw\n").unwrap();
    let auth = vec![
        "--etcd-username=pushcast".to_string(),
        format!("--etcd-password-file={}", password_file.display()),
    ];
    controller_and_worker_push(&etcd.endpoint(), &auth, dir.path()).await;

    let base = |extra: &[&str]| {
        let mut args = vec![
            format!("--etcd-endpoints={}", etcd.endpoint()),
            format!("--data-dir={}", dir.path().join("x").display()),
            "--grpc-addr=127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let why = refused_at_start(
        "pushcast-worker",
        base(&["--etcd-username=pushcast", "--etcd-password=wrong-pw"]),
    )
    .await;
    assert!(
        why.contains("cannot use etcd") && why.contains("authentication failed"),
        "{why}"
    );
    assert!(
        !why.contains("wrong-pw"),
        "the password is never printed: {why}"
    );
    // No user at all: etcd says the user name is empty.
    let why = refused_at_start("pushcast-worker", base(&[])).await;
    assert!(
        why.contains("cannot use etcd") && why.contains("user name is empty"),
        "{why}"
    );
    // A user name without a password is refused before etcd is asked.
    let why = refused_at_start("pushcast-worker", base(&["--etcd-username=pushcast"])).await;
    assert!(why.contains("--etcd-username needs a password"), "{why}");
}
