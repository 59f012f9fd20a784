//! The REST API attacked from its own OpenAPI document (`GET /v1/openapi.json`) by
//! schemathesis, against the standalone and against a controller on etcd: no server
//! error, no answer that the document does not allow, and 401 without the token.

use std::path::PathBuf;
use std::process::Command;

use pushcast_testkit::api::Node;
use pushcast_testkit::etcd::EtcdProcess as Etcd;

const TOKEN: &str = "openapi";

/// schemathesis' `st`: `$ST_BIN`, the venv `scripts/deps.sh test` makes, or PATH.
fn st() -> PathBuf {
    if let Some(p) = std::env::var_os("ST_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    for p in [
        home.join(".cache/pushcast-schemathesis/bin/st"),
        home.join(".local/bin/st"),
    ] {
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("st")
}

/// Runs schemathesis against `node` (its document, all operations, the vhost and app
/// fixed to ones that exist so the calls reach past the 404s, then free); returns how
/// many requests it generated. Fails the test with schemathesis' report on any failure.
fn attack(node: &Node, dir: &std::path::Path) -> u64 {
    let config = dir.join("schemathesis.toml");
    std::fs::write(
        &config,
        "[parameters]\n\"path.vhost\" = \"default\"\n\"path.app\" = \"app\"\n",
    )
    .unwrap();
    let auth = format!("Authorization: {}", node.auth_header());
    let schema = format!("{}/v1/openapi.json", node.rest);
    let checks = "not_a_server_error,response_schema_conformance,status_code_conformance,\
                  content_type_conformance,response_headers_conformance,ignored_auth";
    let mut generated = 0;
    for fixed in [true, false] {
        let mut cmd = Command::new(st());
        if fixed {
            cmd.arg("--config-file").arg(&config);
        }
        cmd.current_dir(dir).args([
            "run",
            &schema,
            "-H",
            &auth,
            "--checks",
            checks,
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--no-color",
        ]);
        let out = cmd.output().unwrap_or_else(|e| {
            panic!(
                "cannot run schemathesis ({e}); `scripts/deps.sh test` installs it \
                 (or set ST_BIN)"
            )
        });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "schemathesis found failures:\n{text}");
        let n: u64 = text
            .lines()
            .find_map(|l| l.trim().split_once(" generated,")?.0.parse().ok())
            .unwrap_or_else(|| panic!("no request count in schemathesis' report:\n{text}"));
        println!(
            "MEASURED schemathesis ({}): {n} requests generated, 0 failures",
            if fixed { "vhost/app fixed" } else { "free" }
        );
        generated += n;
    }
    assert!(generated > 500, "{generated} requests");
    generated
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_on_the_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::standalone(&dir.path().join("data"), TOKEN).await;
    let n = tokio::task::block_in_place(|| attack(&node, dir.path()));
    println!("MEASURED schemathesis standalone: {n} requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_on_a_controller_on_etcd() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::controller(&etcd.endpoint(), TOKEN, "c1", &dir.path().join("c1")).await;
    let n = tokio::task::block_in_place(|| attack(&node, dir.path()));
    println!("MEASURED schemathesis controller on etcd: {n} requests");
}
