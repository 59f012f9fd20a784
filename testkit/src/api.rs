//! A pushcast node (controller or standalone) under test and an HTTP client for its API.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use serde_json::Value;

use crate::process::Proc;

pub struct Node {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`
    pub rest: String,
    /// `http://127.0.0.1:PORT`
    pub grpc: String,
    pub token: String,
    /// `127.0.0.1:PORT` of the RTMP ingest, for nodes that run a worker.
    pub rtmp: Option<String>,
    http: reqwest::Client,
}

/// An HTTP answer: status, parsed JSON body (Null when not JSON), raw text, headers.
pub struct Reply {
    pub status: u16,
    pub json: Value,
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Node {
    /// `pushcast-controller` against etcd, on port 0 for both APIs.
    pub async fn controller(etcd: &str, token: &str, node_id: &str, data_dir: &Path) -> Node {
        let args = vec![
            format!("--etcd-endpoints={etcd}"),
            format!("--access-token={token}"),
            format!("--node-id={node_id}"),
            "--rest-addr=127.0.0.1:0".into(),
            "--grpc-addr=127.0.0.1:0".into(),
            "--etcd-timeout-ms=1000".into(),
            format!("--data-dir={}", data_dir.display()),
        ];
        Self::start("pushcast-controller", node_id, args, token).await
    }

    /// `pushcast` standalone on the embedded store in `data_dir`.
    pub async fn standalone(data_dir: &Path, token: &str) -> Node {
        Self::standalone_with(data_dir, token, &[]).await
    }

    /// [`Node::standalone`] with `extra` arguments after the usual ones.
    pub async fn standalone_with(data_dir: &Path, token: &str, extra: &[String]) -> Node {
        let mut args = vec![
            format!("--data-dir={}", data_dir.display()),
            format!("--access-token={token}"),
            "--rest-addr=127.0.0.1:0".into(),
            "--grpc-addr=127.0.0.1:0".into(),
            "--rtmp-addr=127.0.0.1:0".into(),
        ];
        args.extend_from_slice(extra);
        Self::start("pushcast", "standalone", args, token).await
    }

    pub async fn start(bin: &str, name: &str, args: Vec<String>, token: &str) -> Node {
        Self::start_with_env(bin, name, args, HashMap::new(), token).await
    }

    pub async fn start_with_env(
        bin: &str,
        name: &str,
        args: Vec<String>,
        envs: HashMap<String, String>,
        token: &str,
    ) -> Node {
        let mut proc = Proc::start(bin, name, args, envs).await;
        let (rest, grpc) = addresses(&mut proc).await;
        let rtmp = if bin == "pushcast" {
            Some(proc.wait_for_field("RTMP ingest listening", "addr").await)
        } else {
            None
        };
        Node {
            proc,
            rest,
            grpc,
            rtmp,
            token: token.to_string(),
            http: crate::http::client(std::time::Duration::from_secs(20)),
        }
    }

    /// Lets encoders publish to `app` with the stream name as key (the per-app
    /// `openPublish` option), for tests about pushing rather than about stream keys.
    pub async fn open_publish(&self, app: &str) {
        let r = self
            .call(
                "PATCH",
                &format!("/v1/vhosts/default/apps/{app}"),
                Some(r#"{"openPublish":true}"#),
            )
            .await;
        assert_eq!(r.status, 200, "openPublish on {app}: {}", r.text);
    }

    /// Kills the process (SIGKILL) and starts it again; addresses are re-read.
    pub async fn restart(&mut self) {
        self.proc.restart().await;
        let (rest, grpc) = addresses(&mut self.proc).await;
        self.rest = rest;
        self.grpc = grpc;
        if self.rtmp.is_some() {
            self.rtmp = Some(
                self.proc
                    .wait_for_field("RTMP ingest listening", "addr")
                    .await,
            );
        }
    }

    /// `rtmp://127.0.0.1:PORT/{app}/{stream}` of this node's ingest.
    pub fn ingest_url(&self, app: &str, stream: &str) -> String {
        let addr = self.rtmp.as_deref().expect("this node runs no worker");
        format!("rtmp://{addr}/{app}/{stream}")
    }

    /// The task object of `id` in the `default/app` app (panics when absent).
    pub async fn task(&self, id: &str) -> Value {
        let r = self.action("pushes", serde_json::json!({"id": id})).await;
        r.json["response"][0].clone()
    }

    pub fn auth_header(&self) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(&self.token)
        )
    }

    /// A request with the right token.
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.raw(method, path, body, Some(&self.auth_header()))
            .await
    }

    /// A request with any (or no) Authorization header.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        auth: Option<&str>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{}", self.rest, path));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            json,
            text,
            headers,
        }
    }

    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.call("POST", path, Some(body)).await
    }

    /// `POST /v1/vhosts/default/apps/app:ACTION`
    pub async fn action(&self, action: &str, body: Value) -> Reply {
        self.post(
            &format!("/v1/vhosts/default/apps/app:{action}"),
            &body.to_string(),
        )
        .await
    }
}

async fn addresses(proc: &mut Proc) -> (String, String) {
    let rest = proc.wait_for_field("REST gateway listening", "addr").await;
    let grpc = proc.wait_for_field("gRPC API listening", "addr").await;
    (format!("http://{rest}"), format!("http://{grpc}"))
}
