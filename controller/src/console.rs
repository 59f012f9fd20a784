//! The web console, served on the REST port at `/console`: static assets embedded in
//! the binary (`controller/console/`: HTML, CSS and plain JavaScript, no build step, no
//! framework), and `/console/events`, a server-sent event stream of what the console
//! shows (a snapshot a second: streams, tasks with their health, workers, apps).
//!
//! The assets carry no data and are served without the token; everything they show
//! comes from the API with the token the operator typed, kept in the tab's session
//! storage and sent as the `Authorization` header (`/console/events` included), never
//! as a cookie: there is nothing for a cross-site request to ride on.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::gateway::Gateway;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// How often the event stream sends a snapshot.
const EVERY: Duration = Duration::from_secs(1);

/// Whether `path` is one of the console's static assets (served without the token).
pub fn is_asset(path: &str) -> bool {
    matches!(
        path,
        "/console" | "/console/" | "/console/console.js" | "/console/console.css"
    )
}

/// Serves an asset with headers that keep the page to its own origin.
pub fn asset(path: &str) -> Response {
    let (body, kind) = match path {
        "/console/console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/console/console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => (INDEX, "text/html; charset=utf-8"),
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[derive(serde::Deserialize)]
pub struct EventsQuery {
    vhost: Option<String>,
}

/// `GET /console/events?vhost=V` (with the token): a snapshot a second.
pub async fn events(State(gw): State<Gateway>, Query(q): Query<EventsQuery>) -> Response {
    let vhost = q.vhost.unwrap_or_else(|| "default".to_string());
    if let Err(e) = gw.pushes.apps().check_vhost(&vhost) {
        return crate::gateway::error(e);
    }
    let stream = futures::stream::unfold((gw, vhost, true), |(gw, vhost, first)| async move {
        if !first {
            tokio::time::sleep(EVERY).await;
        }
        let data = snapshot(&gw, &vhost).await.to_string();
        Some((
            Ok::<_, Infallible>(Event::default().data(data)),
            (gw, vhost, false),
        ))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// What the console shows of one vhost. Errors of one app leave it out of this
/// snapshot (the next one tries again).
async fn snapshot(gw: &Gateway, vhost: &str) -> Value {
    let apps = gw.pushes.apps();
    let names = apps.list(vhost).await.unwrap_or_default();
    let (mut tasks, mut streams, mut app_list) = (Vec::new(), Vec::new(), Vec::new());
    for name in &names {
        if let Ok(app) = apps.require(vhost, name).await {
            app_list.push(app.to_ome_json());
        }
        if let Ok(list) = gw.pushes.list(vhost, name, None).await {
            tasks.extend(list.iter().map(|t| t.to_ome_json()));
        }
        if let Ok(list) = gw.pushes.streams_json(vhost, name).await {
            streams.extend(list.into_iter().map(|mut v| {
                v["app"] = json!(name);
                v
            }));
        }
    }
    let workers: Vec<Value> = gw
        .pushes
        .workers()
        .into_iter()
        .map(|(w, pushes)| {
            json!({"name": w.node_id, "address": w.rtmp_addr, "pushes": pushes,
                   "maxSessions": w.max_sessions, "draining": w.draining})
        })
        .collect();
    json!({"vhost": vhost, "apps": app_list, "tasks": tasks, "streams": streams, "workers": workers})
}
