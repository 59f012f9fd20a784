//! The REST gateway: OvenMediaEngine's push publishing API over HTTP/JSON
//! (`spec/rest-push-api.md`), a thin layer over [`Pushes`] and [`Apps`].
//!
//! Order of checks on every request: CORS preflight, auth, route/action, body, vhost,
//! app, then the action's own rules.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use pushcast_proto::ApiError;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use crate::auth::Auth;
use crate::publish_keys::PublishKeys;
use crate::pushes::Pushes;
use crate::requests;

/// Largest request body accepted; more is 413.
pub const MAX_BODY: usize = 64 * 1024;

/// Product name in `WWW-Authenticate`.
const REALM: &str = "pushcast";

#[derive(Clone)]
pub struct Gateway {
    pub pushes: Pushes,
    pub keys: PublishKeys,
    pub auth: Auth,
}

pub fn router(gw: Gateway) -> Router {
    Router::new()
        .route("/v1/vhosts", any(vhosts_collection))
        .route("/v1/vhosts/{vhost}", any(vhost_target))
        .route("/v1/vhosts/{vhost}/apps", any(apps_collection))
        .route("/v1/vhosts/{vhost}/apps/{target}", any(app_target))
        .route(
            "/v1/vhosts/{vhost}/apps/{app}/streams",
            any(streams_collection),
        )
        .route(
            "/v1/vhosts/{vhost}/apps/{app}/streams/{stream}",
            any(stream_target),
        )
        .route("/console/events", get(crate::console::events))
        .fallback(|| async { error(controller_not_found()) })
        .layer(middleware::from_fn_with_state(
            gw.clone(),
            preflight_and_auth,
        ))
        .with_state(gw)
}

/// The OpenAPI 3.1 document of this API (`controller/api/openapi.json`), served at
/// `GET /v1/openapi.json` without a token: it describes the API, it grants nothing.
pub const OPENAPI: &str = include_str!("../api/openapi.json");

/// Where [`OPENAPI`] is served.
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

async fn preflight_and_auth(State(gw): State<Gateway>, req: Request, next: Next) -> Response {
    if req.method() == Method::GET && req.uri().path() == OPENAPI_PATH {
        return (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            OPENAPI,
        )
            .into_response();
    }
    if req.method() == Method::GET && crate::console::is_asset(req.uri().path()) {
        return crate::console::asset(req.uri().path());
    }
    if req.method() == Method::OPTIONS {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type"),
        );
        return resp;
    }
    // One span per API call, continuing the caller's trace when it sent one.
    let span = tracing::info_span!("http", method = %req.method(), path = %req.uri().path());
    let carrier: std::collections::HashMap<String, String> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    pushcast_runtime::logging::set_parent(&span, &carrier);
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    // A page's script (the console) asks not to be challenged: with the challenge, a
    // browser answers a 401 with its own login dialog instead of handing it to the page.
    let from_script = req
        .headers()
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest"));
    match gw.auth.check(header) {
        Ok(()) => next.run(req).instrument(span).await,
        Err(e) if from_script => {
            let mut resp = error(e);
            resp.headers_mut().remove(header::WWW_AUTHENTICATE);
            resp
        }
        Err(e) => error(e),
    }
}

fn controller_not_found() -> ApiError {
    ApiError::not_found("Controller not found")
}

/// `{"statusCode":200,"message":"OK","response":...}`, keys sorted as OME emits them.
fn ok(response: Value) -> Response {
    envelope(
        StatusCode::OK,
        json!({"statusCode": 200, "message": "OK", "response": response}),
    )
}

/// What [`ok_raw`]'s argument starts with: the envelope up to the response.
const OK_RAW_PREFIX: &[u8] = br#"{"message":"OK","response":"#;

/// [`ok`] around a response already encoded as JSON after [`OK_RAW_PREFIX`] (the same
/// bytes `ok` would write).
fn ok_raw(mut text: Vec<u8>) -> Response {
    text.extend_from_slice(br#","statusCode":200}"#);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        )],
        text,
    )
        .into_response()
}

pub(crate) fn error(e: ApiError) -> Response {
    let code = e.http_status();
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"statusCode": code, "message": format!("[HTTP] {} ({code})", e.message)});
    let mut resp = envelope(status, body);
    if code == 401
        && let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{REALM}\""))
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn envelope(status: StatusCode, body: Value) -> Response {
    let text = body.to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        )],
        text,
    )
        .into_response()
}

fn respond(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => ok(v),
        Err(e) => error(e),
    }
}

/// Reads the body (at most [`MAX_BODY`]) as a JSON object; empty is `{}`.
async fn json_object(body: Body) -> Result<Map<String, Value>, ApiError> {
    requests::object(&body_bytes(body).await?)
}

/// Reads the body (at most [`MAX_BODY`]) as JSON of any shape; empty is `{}`.
async fn json_value(body: Body) -> Result<Value, ApiError> {
    requests::body(&body_bytes(body).await?)
}

async fn body_bytes(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            pushcast_proto::ErrorKind::PayloadTooLarge,
            format!("Request body is larger than {MAX_BODY} bytes"),
        )
    })
}

/// `GET /v1/vhosts`: the vhost names, as OME lists them.
async fn vhosts_collection(State(gw): State<Gateway>, method: Method) -> Response {
    let result = match method {
        Method::GET => gw
            .pushes
            .apps()
            .vhosts()
            .await
            .map(|all| json!(all.into_iter().map(|v| v.name).collect::<Vec<_>>())),
        _ => Err(controller_not_found()),
    };
    respond(result)
}

/// `GET /v1/vhosts/{vhost}` (its name and host names) and `PATCH` with `{"hosts": [...]}`.
async fn vhost_target(
    State(gw): State<Gateway>,
    Path(vhost): Path<String>,
    method: Method,
    body: Body,
) -> Response {
    let apps = gw.pushes.apps();
    let result = match method {
        Method::GET => apps.vhost(&vhost).await.map(|v| vhost_json(&v)),
        Method::PATCH => {
            async {
                let obj = json_object(body).await?;
                apps.check_vhost(&vhost)?;
                let hosts = requests::vhost_hosts(&obj)?;
                apps.set_hosts(&vhost, &hosts).await.map(|v| vhost_json(&v))
            }
            .await
        }
        _ => Err(controller_not_found()),
    };
    respond(result)
}

fn vhost_json(v: &pushcast_proto::vhosts::VhostConfig) -> Value {
    json!({"name": v.name, "hosts": v.hosts})
}

async fn apps_collection(
    State(gw): State<Gateway>,
    Path(vhost): Path<String>,
    method: Method,
    body: Body,
) -> Response {
    let apps = gw.pushes.apps();
    let result = match method {
        Method::GET => match apps.list(&vhost).await {
            Ok(names) => Ok(json!(names)),
            Err(e) => Err(e),
        },
        Method::POST => create_apps(&gw, &vhost, body).await,
        _ => Err(controller_not_found()),
    };
    respond(result)
}

async fn create_apps(gw: &Gateway, vhost: &str, body: Body) -> Result<Value, ApiError> {
    let value = json_value(body).await?;
    let apps = gw.pushes.apps();
    apps.check_vhost(vhost)?;
    match value {
        Value::Array(items) => {
            let mut created = Vec::with_capacity(items.len());
            for item in items {
                let app = requests::app(vhost, &item)?;
                created.push(apps.create(app).await?.to_ome_json());
            }
            Ok(Value::Array(created))
        }
        item @ Value::Object(_) => Ok(apps
            .create(requests::app(vhost, &item)?)
            .await?
            .to_ome_json()),
        _ => Err(ApiError::bad_request(
            "[JSON] Request body must be a JSON object or array",
        )),
    }
}

async fn app_target(
    State(gw): State<Gateway>,
    Path((vhost, target)): Path<(String, String)>,
    method: Method,
    body: Body,
) -> Response {
    let (app, action) = match target.split_once(':') {
        Some((app, action)) => (app.to_string(), Some(action.to_string())),
        None => (target, None),
    };
    if action.as_deref() == Some("pushes") && (method == Method::GET || method == Method::POST) {
        let filter = match method {
            Method::POST => match json_object(body).await {
                Ok(o) => o,
                Err(e) => return error(e),
            },
            _ => Map::new(),
        };
        return match list_pushes(&gw, &vhost, &app, filter).await {
            Ok(list) => ok_raw(list),
            Err(e) => error(e),
        };
    }
    let apps = gw.pushes.apps();
    let result = match (&method, action.as_deref()) {
        (&Method::GET, None) => apps.require(&vhost, &app).await.map(|a| a.to_ome_json()),
        (&Method::PATCH, None) => patch_app(&gw, &vhost, &app, body).await,
        (&Method::DELETE, None) => apps.delete(&vhost, &app).await.map(|()| Value::Null),
        (&Method::POST, Some(action @ ("streamKey" | "deleteStreamKey"))) => {
            publish_key_action(&gw, &vhost, &app, action, body).await
        }
        (&Method::POST, Some(action @ ("startPush" | "stopPush" | "updatePush"))) => {
            post_action(&gw, &vhost, &app, action, body).await
        }
        _ => Err(controller_not_found()),
    };
    respond(result)
}

/// `GET /v1/vhosts/{vhost}/apps/{app}/streams`: the app's live streams, each with its
/// worker, tracks, the input feeding it and whether it is interrupted (source
/// continuity).
async fn streams_collection(
    State(gw): State<Gateway>,
    Path((vhost, app)): Path<(String, String)>,
    method: Method,
) -> Response {
    if method != Method::GET {
        return error(controller_not_found());
    }
    respond(gw.pushes.streams_json(&vhost, &app).await.map(Value::Array))
}

/// `GET /v1/vhosts/{vhost}/apps/{app}/streams/{stream}`: one live stream.
async fn stream_target(
    State(gw): State<Gateway>,
    Path((vhost, app, stream)): Path<(String, String, String)>,
    method: Method,
) -> Response {
    if method != Method::GET {
        return error(controller_not_found());
    }
    let found = gw.pushes.streams_json(&vhost, &app).await.and_then(|list| {
        list.into_iter()
            .find(|s| s["name"] == stream.as_str())
            .ok_or_else(|| ApiError::not_found(format!("Could not find the stream: {stream}")))
    });
    respond(found)
}

async fn patch_app(gw: &Gateway, vhost: &str, app: &str, body: Body) -> Result<Value, ApiError> {
    let obj = json_object(body).await?;
    gw.pushes.apps().require(vhost, app).await?;
    let patch = requests::app_patch(&obj)?;
    Ok(gw
        .pushes
        .apps()
        .patch(vhost, app, patch)
        .await?
        .to_ome_json())
}

async fn post_action(
    gw: &Gateway,
    vhost: &str,
    app: &str,
    action: &str,
    body: Body,
) -> Result<Value, ApiError> {
    let obj = json_object(body).await?;
    gw.pushes.apps().require(vhost, app).await?;
    let task = match action {
        "startPush" => {
            gw.pushes
                .start(vhost, app, requests::start_push(&obj))
                .await?
        }
        "updatePush" => {
            gw.pushes
                .update(vhost, app, requests::update_push(&obj))
                .await?
        }
        _ => {
            let id = obj.get("id").and_then(Value::as_str);
            gw.pushes.stop(vhost, app, id).await?
        }
    };
    Ok(task.to_ome_json())
}

async fn publish_key_action(
    gw: &Gateway,
    vhost: &str,
    app: &str,
    action: &str,
    body: Body,
) -> Result<Value, ApiError> {
    let obj = json_object(body).await?;
    let stream = obj.get("stream").and_then(Value::as_str);
    let flag = |name: &str| obj.get(name).and_then(Value::as_bool).unwrap_or(false);
    if action == "streamKey" {
        let issued = gw.keys.get(vhost, app, stream, flag("regenerate")).await?;
        Ok(issued.to_ome_json())
    } else {
        gw.keys
            .delete(vhost, app, stream, flag("disconnect"))
            .await?;
        Ok(Value::Null)
    }
}

/// `:pushes` as the bytes of its JSON array, written task by task (`Task::to_ome`):
/// no `Value` tree for thousands of tasks. Written after [`OK_RAW_PREFIX`], so the
/// envelope around it ([`ok_raw`]) costs no copy.
async fn list_pushes(
    gw: &Gateway,
    vhost: &str,
    app: &str,
    filter: Map<String, Value>,
) -> Result<Vec<u8>, ApiError> {
    let prefix = OK_RAW_PREFIX;
    gw.pushes.apps().require(vhost, app).await?;
    let id = filter.get("id").and_then(Value::as_str);
    let tasks = gw.pushes.list(vhost, app, id).await?;
    let mut out = Vec::with_capacity(prefix.len() + 64 + tasks.len() * 512);
    out.extend_from_slice(prefix);
    out.push(b'[');
    for (i, t) in tasks.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, &t.to_ome())
            .map_err(|e| ApiError::internal(format!("cannot encode task {}: {e}", t.spec.id)))?;
    }
    out.push(b']');
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The gateway in process, on the embedded store in a temp dir: parsing and the order
    //! of checks, without sockets (the byte-for-byte contract is checked end to end in
    //! `tests/e2e/rest_api.rs`).
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use axum::http::Request;
    use pushcast_proto::model::AppConfig;
    use pushcast_store::embedded::EmbeddedStore;
    use tower::ServiceExt;

    use super::*;
    use crate::apps::Apps;
    use crate::worker_clients::WorkerClients;

    const AUTH: &str = "Basic dG9rZW4="; // base64("token")

    struct Api {
        router: Router,
        _dir: tempfile::TempDir,
    }

    async fn api() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn pushcast_store::Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let apps = Apps::new(store.clone(), ["default".to_string()]);
        let app = AppConfig::new("default", "app");
        apps.seed(&[app]).await.unwrap();
        let clients = WorkerClients::with_tls(None);
        let informer = crate::informer::Informer::new(store.clone());
        tokio::spawn(
            informer
                .clone()
                .run(pushcast_runtime::CancellationToken::new()),
        );
        let pushes = Pushes::new(store.clone(), informer, apps.clone(), clients.clone());
        let keys = PublishKeys::new(store, apps, clients, "rtmp://localhost:1935".into());
        let auth = Auth::new(&["token".to_string()]);
        Api {
            router: router(Gateway { pushes, keys, auth }),
            _dir: dir,
        }
    }

    impl Api {
        /// (status, body) of a request.
        async fn send(
            &self,
            method: &str,
            path: &str,
            body: &str,
            auth: Option<&str>,
        ) -> (u16, String) {
            let mut req = Request::builder().method(method).uri(path);
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let resp = self
                .router
                .clone()
                .oneshot(req.body(Body::from(body.to_string())).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, String::from_utf8(bytes.to_vec()).unwrap())
        }

        async fn post(&self, path: &str, body: &str) -> (u16, String) {
            self.send("POST", path, body, Some(AUTH)).await
        }

        /// The `message` of an answer.
        async fn message(&self, path: &str, body: &str) -> String {
            let (_, text) = self.post(path, body).await;
            let v: Value = serde_json::from_str(&text).unwrap();
            v["message"].as_str().unwrap_or_default().to_string()
        }
    }

    const START: &str = "/v1/vhosts/default/apps/app:startPush";

    async fn body_of(resp: Response) -> (u16, Vec<u8>, Option<String>) {
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec(), ct)
    }

    /// The document and the routes agree: every operation it describes is routed (its
    /// answer is never the "Controller not found" of an unknown route) and answers in the
    /// envelope the document gives (200 `OK` with a `response`, or an error envelope);
    /// every method it does not describe on its paths is not routed. The document is
    /// served without a token.
    #[tokio::test]
    async fn the_openapi_document_and_the_routes_agree() {
        let api = api().await;
        let (status, served) = api.send("GET", OPENAPI_PATH, "", None).await;
        assert_eq!(status, 200);
        assert_eq!(served, OPENAPI);
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let not_found = r#"{"message":"[HTTP] Controller not found (404)","statusCode":404}"#;
        let mut operations = 0;
        for (template, item) in paths {
            let path = template
                .replace("{vhost}", "default")
                .replace("{app}", "app");
            for method in ["GET", "POST", "PATCH", "DELETE", "PUT"] {
                let documented = item.get(method.to_lowercase()).is_some();
                let (status, text) = api.send(method, &path, "{}", Some(AUTH)).await;
                if !documented {
                    assert_eq!((status, text.as_str()), (404, not_found), "{method} {path}");
                    continue;
                }
                operations += 1;
                assert_ne!(
                    text, not_found,
                    "{method} {path} is documented but not routed"
                );
                let v: Value = serde_json::from_str(&text).unwrap();
                if status == 200 {
                    assert_eq!(
                        (&v["message"], &v["statusCode"]),
                        (&json!("OK"), &json!(200))
                    );
                    assert!(v.get("response").is_some(), "{method} {path}: {text}");
                } else {
                    assert_eq!(v["statusCode"], status, "{method} {path}: {text}");
                    let m = v["message"].as_str().unwrap();
                    assert!(
                        m.starts_with("[HTTP] ") && m.ends_with(&format!("({status})")),
                        "{m}"
                    );
                    assert!(v.get("response").is_none(), "{method} {path}: {text}");
                }
                // Without the token: 401, whatever the operation.
                let (status, _) = api.send(method, &path, "{}", None).await;
                assert_eq!(status, 401, "{method} {path} without a token");
            }
        }
        assert_eq!(operations, 17, "every operation of the document was called");
    }

    /// `:pushes` is written as bytes; its envelope must be `ok`'s, byte for byte.
    #[tokio::test]
    async fn a_raw_answer_has_the_bytes_of_the_json_one() {
        let value = json!([{"b": 1, "a": "x"}, {"c": null}]);
        let mut raw = OK_RAW_PREFIX.to_vec();
        raw.extend_from_slice(&serde_json::to_vec(&value).unwrap());
        assert_eq!(body_of(ok_raw(raw)).await, body_of(ok(value)).await);
    }

    /// `:pushes` over GET and POST, with and without an id, after a create: the list
    /// holds the task's OME object, in the envelope.
    #[tokio::test]
    async fn pushes_lists_the_task_it_was_given() {
        let api = api().await;
        let body = r#"{"id":"t1","stream":{"name":"s"},"protocol":"rtmp","url":"rtmp://h/live","streamKey":"k"}"#;
        let (status, created) = api.post(START, body).await;
        assert_eq!(status, 200, "{created}");
        let created: Value = serde_json::from_str(&created).unwrap();
        let path = "/v1/vhosts/default/apps/app:pushes";
        for (method, body) in [("GET", ""), ("POST", "{}"), ("POST", r#"{"id":"t1"}"#)] {
            let (status, text) = api.send(method, path, body, Some(AUTH)).await;
            assert_eq!(status, 200, "{text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                v["response"],
                json!([created["response"].clone()]),
                "{method} {body}"
            );
            assert!(
                text.starts_with(r#"{"message":"OK","response":[{"app":"app","#),
                "{text}"
            );
        }
        let (_, none) = api.post(path, r#"{"id":"nope"}"#).await;
        assert_eq!(none, r#"{"message":"OK","response":[],"statusCode":200}"#);
        let (status, bad) = api.post(path, "[1]").await;
        assert_eq!(status, 400, "{bad}");
    }

    #[tokio::test]
    async fn auth_runs_first_and_a_bad_body_is_a_json_error() {
        let api = api().await;
        let (status, text) = api.send("POST", START, "not json", None).await;
        assert_eq!(status, 401, "{text}");
        let (status, text) = api.post(START, "not json").await;
        assert_eq!(status, 400);
        assert!(text.contains("[HTTP] [JSON] "), "{text}");
        assert_eq!(
            api.message(START, "[1, 2]").await,
            "[HTTP] [JSON] Request body must be a JSON object (400)"
        );
        let (status, _) = api.post(START, &"x".repeat(MAX_BODY + 1)).await;
        assert_eq!(status, 413);
    }

    #[tokio::test]
    async fn vhost_and_app_are_checked_before_the_body_fields() {
        let api = api().await;
        assert_eq!(
            api.message("/v1/vhosts/nope/apps/app:startPush", "{}")
                .await,
            "[HTTP] Could not find the virtual host: [nope] (404)"
        );
        assert_eq!(
            api.message("/v1/vhosts/default/apps/nope:startPush", "{}")
                .await,
            "[HTTP] Could not find the application: [default/nope] (404)"
        );
        assert_eq!(
            api.message("/v1/vhosts/default/apps/app:nope", "{}").await,
            "[HTTP] Controller not found (404)"
        );
    }

    #[tokio::test]
    async fn non_string_fields_count_as_missing() {
        let api = api().await;
        let body = r#"{"id": 7, "stream": {"name": ["s"]}, "protocol": "rtmp", "url": null}"#;
        assert_eq!(
            api.message(START, body).await,
            "[HTTP] There is no required parameter [ id stream.name url] (400)"
        );
    }

    #[tokio::test]
    async fn tracks_is_the_old_name_of_track_ids_and_the_task_is_an_object() {
        let api = api().await;
        let body = r#"{"id": "t", "stream": {"name": "s", "tracks": [101, "x", 102]},
            "protocol": "rtmp", "url": "rtmp://h/live", "streamKey": "k"}"#;
        let (status, text) = api.post(START, body).await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["response"]["stream"]["trackIds"], json!([101, 102]));
        assert_eq!(v["response"]["state"], "ready");
        let (status, text) = api
            .send("GET", "/v1/vhosts/default/apps/app:pushes", "", Some(AUTH))
            .await;
        assert_eq!(status, 200);
        assert!(text.contains(r#""id":"t""#), "{text}");
    }
}
