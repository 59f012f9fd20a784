//! Push tasks: the one domain service behind both the REST gateway and gRPC.
//!
//! Validation follows `spec/rest-push-api.md` in its exact order; the store's
//! transactions make "create only if the id and the destination are free" atomic across
//! any number of controller replicas.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use pushcast_proto::ApiError;
use pushcast_proto::model::{Protocol, StreamSelector, Task, TaskSpec, TaskState, TaskStatus};
use pushcast_proto::time;
use pushcast_store::{Compare, KeyValue, Op, Store, Txn, WatchEvent};
use serde::{Deserialize, Serialize};

use crate::apps::Apps;
use crate::live_status::LiveStatus;
use crate::store_error::{api_error, decode, encode};
use crate::worker_clients::WorkerClients;
use pushcast_proto::keys;

/// A startPush request as it arrived. `None` (or empty) is "missing": REST and gRPC
/// both reduce their input to this, so the rules below exist once.
#[derive(Debug, Clone, Default)]
pub struct StartPush {
    pub id: Option<String>,
    pub stream_name: Option<String>,
    pub track_ids: Vec<i64>,
    pub variant_names: Vec<String>,
    pub protocol: Option<String>,
    pub url: Option<String>,
    pub stream_key: Option<String>,
}

/// Value of a destination claim: the task that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    vhost: String,
    app: String,
    id: String,
}

/// A change to the tasks, as `WatchPushes` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent {
    Created(Task),
    Updated(Task),
    Removed(Task),
}

#[derive(Clone)]
pub struct Pushes {
    store: Arc<dyn Store>,
    apps: Apps,
    live: LiveStatus,
}

impl Pushes {
    pub fn new(store: Arc<dyn Store>, apps: Apps, clients: WorkerClients) -> Pushes {
        let live = LiveStatus::new(store.clone(), clients);
        Pushes { store, apps, live }
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    /// `:startPush`. The caller has already checked vhost and app (the contract checks
    /// them before the body's fields); they are checked again inside the transaction.
    pub async fn start(&self, vhost: &str, app: &str, req: StartPush) -> Result<Task, ApiError> {
        let spec = validate(vhost, app, req)?;
        let task_key = keys::task(vhost, app, &spec.id);
        let dest_key = keys::destination(&spec.destination());
        let claim = encode(&Claim {
            vhost: vhost.into(),
            app: app.into(),
            id: spec.id.clone(),
        })?;
        let spec_bytes = encode(&spec)?;
        // The destination claim may be stale (its task was deleted with its app while it
        // was being created); such a claim is taken over with a compare on its revision.
        let mut dest_compare = Compare::Absent(dest_key.clone());
        for _ in 0..3 {
            let txn = Txn::new()
                .when(Compare::Present(keys::app(vhost, app)))
                .when(Compare::Absent(task_key.clone()))
                .when(dest_compare.clone())
                .and_then(Op::put(task_key.clone(), spec_bytes.clone()))
                .and_then(Op::put(dest_key.clone(), claim.clone()))
                .and_then(Op::delete(keys::status(vhost, app, &spec.id)));
            if self.store.txn(txn).await.map_err(api_error)?.succeeded {
                tracing::info!(vhost, app, id = %spec.id, protocol = spec.protocol.as_str(), "push task created");
                return Ok(Task {
                    spec,
                    status: TaskStatus::default(),
                });
            }
            // Find out which condition failed, in the contract's order.
            self.apps.require(vhost, app).await?;
            if self
                .store
                .get(&task_key)
                .await
                .map_err(api_error)?
                .is_some()
            {
                return Err(duplicate_id());
            }
            match self.store.get(&dest_key).await.map_err(api_error)? {
                None => dest_compare = Compare::Absent(dest_key.clone()),
                Some(kv) => {
                    let holder: Claim = decode(&kv.key, &kv.value)?;
                    let holder_key = keys::task(&holder.vhost, &holder.app, &holder.id);
                    if self
                        .store
                        .get(&holder_key)
                        .await
                        .map_err(api_error)?
                        .is_some()
                    {
                        return Err(ApiError::conflict(format!(
                            "Destination already in use by push '{}'",
                            holder.id
                        )));
                    }
                    dest_compare = Compare::ModRevision(dest_key.clone(), kv.mod_revision);
                }
            }
        }
        Err(ApiError::unavailable(
            "The task could not be created under concurrent changes, try again",
        ))
    }

    /// `:stopPush`: removes the task; its id and destination are free once this returns.
    pub async fn stop(&self, vhost: &str, app: &str, id: Option<&str>) -> Result<Task, ApiError> {
        let id = match id {
            Some(id) if !id.is_empty() => id,
            _ => {
                return Err(ApiError::bad_request(
                    "There is no required parameter [ id]",
                ));
            }
        };
        let task_key = keys::task(vhost, app, id);
        for _ in 0..5 {
            let Some(kv) = self.store.get(&task_key).await.map_err(api_error)? else {
                return Err(not_found(vhost, app, id));
            };
            let mut task = self.load(&kv).await?;
            self.live.refresh(std::slice::from_mut(&mut task)).await;
            let txn = Txn::new()
                .when(Compare::ModRevision(task_key.clone(), kv.mod_revision))
                .and_then(Op::delete(task_key.clone()))
                .and_then(Op::delete(keys::status(vhost, app, id)))
                .and_then(Op::delete(keys::destination(&task.spec.destination())));
            if self.store.txn(txn).await.map_err(api_error)?.succeeded {
                let now = time::now_ms();
                let st = &mut task.status;
                if st.state == TaskState::Started || st.state == TaskState::Error {
                    st.sequence += 1;
                    st.finish_ms = Some(now);
                }
                st.state = TaskState::Stopped;
                tracing::info!(vhost, app, id, "push task stopped and removed");
                return Ok(task);
            }
        }
        Err(ApiError::unavailable(
            "The task changed concurrently while stopping, try again",
        ))
    }

    /// `:pushes`: every task of the app (or the one with this exact id), oldest first.
    pub async fn list(
        &self,
        vhost: &str,
        app: &str,
        id: Option<&str>,
    ) -> Result<Vec<Task>, ApiError> {
        if let Some(id) = id.filter(|s| !s.is_empty()) {
            return match self.get(vhost, app, id).await {
                Ok(t) => Ok(vec![t]),
                Err(e) if e.kind == pushcast_proto::ErrorKind::NotFound => Ok(vec![]),
                Err(e) => Err(e),
            };
        }
        let specs = self
            .store
            .list(&keys::tasks_of(vhost, app))
            .await
            .map_err(api_error)?;
        let statuses = self
            .store
            .list(&keys::statuses_of(vhost, app))
            .await
            .map_err(api_error)?;
        let mut by_id: HashMap<String, TaskStatus> = HashMap::new();
        for kv in &statuses.kvs {
            if let Some((_, _, id)) = keys::parse_task_key(&kv.key) {
                by_id.insert(id, decode(&kv.key, &kv.value)?);
            }
        }
        let mut tasks = Vec::with_capacity(specs.kvs.len());
        for kv in &specs.kvs {
            let spec: TaskSpec = decode(&kv.key, &kv.value)?;
            let status = by_id.remove(&spec.id).unwrap_or_default();
            tasks.push(Task { spec, status });
        }
        self.live.refresh(&mut tasks).await;
        tasks.sort_by(|a, b| (a.spec.created_ms, &a.spec.id).cmp(&(b.spec.created_ms, &b.spec.id)));
        Ok(tasks)
    }

    pub async fn get(&self, vhost: &str, app: &str, id: &str) -> Result<Task, ApiError> {
        let key = keys::task(vhost, app, id);
        match self.store.get(&key).await.map_err(api_error)? {
            Some(kv) => {
                let mut task = [self.load(&kv).await?];
                self.live.refresh(&mut task).await;
                let [task] = task;
                Ok(task)
            }
            None => Err(not_found(vhost, app, id)),
        }
    }

    async fn load(&self, kv: &KeyValue) -> Result<Task, ApiError> {
        let spec: TaskSpec = decode(&kv.key, &kv.value)?;
        let skey = keys::status(&spec.vhost, &spec.app, &spec.id);
        let status = match self.store.get(&skey).await.map_err(api_error)? {
            Some(s) => decode(&skey, &s.value)?,
            None => TaskStatus::default(),
        };
        Ok(Task { spec, status })
    }

    /// Task events under a vhost (empty = all) and app (empty = all): first the current
    /// tasks as `Created`, then every change, in store order.
    pub async fn watch(
        &self,
        vhost: &str,
        app: &str,
    ) -> Result<impl futures::Stream<Item = Result<PushEvent, ApiError>> + Send + 'static, ApiError>
    {
        let specs = self.store.list("tasks/").await.map_err(api_error)?;
        let statuses = self.store.list("status/").await.map_err(api_error)?;
        let from = specs.revision.max(statuses.revision) + 1;
        let events = self.store.watch("", from).await.map_err(api_error)?;
        let filter = Filter {
            vhost: vhost.to_string(),
            app: app.to_string(),
        };
        let mut known: HashMap<String, Task> = HashMap::new();
        let mut status_of: HashMap<String, TaskStatus> = HashMap::new();
        for kv in &statuses.kvs {
            if let Some((v, a, i)) = keys::parse_task_key(&kv.key) {
                status_of.insert(keys::task(&v, &a, &i), decode(&kv.key, &kv.value)?);
            }
        }
        let mut initial = Vec::new();
        for kv in &specs.kvs {
            let spec: TaskSpec = decode(&kv.key, &kv.value)?;
            let status = status_of.remove(&kv.key).unwrap_or_default();
            let task = Task { spec, status };
            if filter.matches(&task.spec.vhost, &task.spec.app) {
                initial.push(Ok(PushEvent::Created(task.clone())));
            }
            known.insert(kv.key.clone(), task);
        }
        let live = events.filter_map(move |ev| {
            let out = match ev {
                Err(e) => Some(Err(api_error(e))),
                Ok(ev) => apply(&mut known, &filter, ev),
            };
            futures::future::ready(out)
        });
        Ok(futures::stream::iter(initial).chain(live))
    }
}

struct Filter {
    vhost: String,
    app: String,
}

impl Filter {
    fn matches(&self, vhost: &str, app: &str) -> bool {
        (self.vhost.is_empty() || self.vhost == vhost) && (self.app.is_empty() || self.app == app)
    }
}

/// Folds one store change into the known tasks and says what it means to a watcher.
fn apply(
    known: &mut HashMap<String, Task>,
    filter: &Filter,
    ev: WatchEvent,
) -> Option<Result<PushEvent, ApiError>> {
    let (vhost, app, id) = keys::parse_task_key(ev.key())?;
    if !filter.matches(&vhost, &app) {
        return None;
    }
    let task_key = keys::task(&vhost, &app, &id);
    let is_spec = ev.key().starts_with("tasks/");
    match ev {
        WatchEvent::Put(kv) if is_spec => {
            let spec: TaskSpec = match decode(&kv.key, &kv.value) {
                Ok(s) => s,
                Err(e) => return Some(Err(e)),
            };
            let created = !known.contains_key(&task_key);
            let status = known
                .get(&task_key)
                .map(|t| t.status.clone())
                .unwrap_or_default();
            let task = Task { spec, status };
            known.insert(task_key, task.clone());
            Some(Ok(if created {
                PushEvent::Created(task)
            } else {
                PushEvent::Updated(task)
            }))
        }
        WatchEvent::Put(kv) => {
            let status: TaskStatus = match decode(&kv.key, &kv.value) {
                Ok(s) => s,
                Err(e) => return Some(Err(e)),
            };
            let task = known.get_mut(&task_key)?;
            task.status = status;
            Some(Ok(PushEvent::Updated(task.clone())))
        }
        WatchEvent::Delete { .. } if is_spec => {
            let mut task = known.remove(&task_key)?;
            task.status.state = TaskState::Stopped;
            Some(Ok(PushEvent::Removed(task)))
        }
        WatchEvent::Delete { .. } => None,
    }
}

fn duplicate_id() -> ApiError {
    ApiError::bad_request("Duplicate ID").with_grpc_code(tonic::Code::AlreadyExists)
}

fn not_found(vhost: &str, app: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("Could not find id '{id}': [{vhost}/{app}]"))
}

fn present(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// The startPush checks of the contract, in its order (1–5; 6 and 7 need the store).
pub fn validate(vhost: &str, app: &str, req: StartPush) -> Result<TaskSpec, ApiError> {
    let protocol_text = req
        .protocol
        .as_deref()
        .map(|p| p.trim().to_lowercase())
        .unwrap_or_default();
    let Some(protocol) = Protocol::parse(&protocol_text) else {
        return Err(ApiError::bad_request(format!(
            "Could not find protocol '{protocol_text}': [{vhost}/{app}]"
        )));
    };
    let id = present(req.id);
    let stream_name = present(req.stream_name);
    let url = present(req.url.map(|u| u.trim().trim_end_matches('/').to_string()));
    let mut missing = String::new();
    if id.is_none() {
        missing.push_str(" id");
    }
    if stream_name.is_none() {
        missing.push_str(" stream.name");
    }
    if url.is_none() {
        missing.push_str(" url");
    }
    let (Some(id), Some(stream_name), Some(url)) = (id, stream_name, url) else {
        return Err(ApiError::bad_request(format!(
            "There is no required parameter [{missing}]"
        )));
    };
    let parsed = url::Url::parse(&url).map_err(|_| ApiError::bad_request("Could not parse url"))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("Could not parse url"));
    }
    if !protocol.schemes().contains(&parsed.scheme()) {
        return Err(ApiError::bad_request("Unsupported protocol"));
    }
    if protocol == Protocol::Srt {
        let mode = parsed
            .query_pairs()
            .find(|(k, _)| k == "mode")
            .map(|(_, v)| v.to_lowercase());
        if mode.is_some_and(|m| m != "caller") {
            return Err(ApiError::bad_request("Unsupported connection mode"));
        }
    }
    let stream_key = match protocol {
        Protocol::Rtmp => req.stream_key.unwrap_or_default(),
        Protocol::Mpegts | Protocol::Srt => String::new(),
    };
    Ok(TaskSpec {
        id,
        vhost: vhost.to_string(),
        app: app.to_string(),
        stream: StreamSelector {
            name: stream_name,
            track_ids: req.track_ids,
            variant_names: req.variant_names,
        },
        protocol,
        url,
        stream_key,
        created_ms: time::now_ms(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(protocol: &str, url: &str) -> StartPush {
        StartPush {
            id: Some("t".into()),
            stream_name: Some("s".into()),
            protocol: Some(protocol.into()),
            url: Some(url.into()),
            stream_key: Some("k".into()),
            ..Default::default()
        }
    }

    fn msg(r: StartPush) -> String {
        validate("default", "app", r).unwrap_err().message
    }

    #[test]
    fn checks_run_in_contract_order() {
        let mut r = req("HLS", "");
        r.id = None;
        assert_eq!(msg(r), "Could not find protocol 'hls': [default/app]");
        let r = StartPush {
            protocol: Some(" RTMP ".into()),
            stream_key: Some("k".into()),
            ..Default::default()
        };
        assert_eq!(
            msg(r),
            "There is no required parameter [ id stream.name url]"
        );
        assert_eq!(msg(req("rtmp", "not a url")), "Could not parse url");
        assert_eq!(msg(req("rtmp", "udp://1.2.3.4:5")), "Unsupported protocol");
        assert_eq!(msg(req("mpegts", "rtmp://h/a")), "Unsupported protocol");
        assert_eq!(
            msg(req("srt", "srt://h:1?mode=listener")),
            "Unsupported connection mode"
        );
    }

    #[test]
    fn normalizes_url_protocol_and_key() {
        let s = validate("default", "app", req(" RtMp ", "  rtmps://h/live//  ")).unwrap();
        assert_eq!(s.protocol, Protocol::Rtmp);
        assert_eq!(s.url, "rtmps://h/live");
        assert_eq!(s.destination(), "rtmps://h/live/k");
        let s = validate("default", "app", req("mpegts", "udp://127.0.0.1:5000/")).unwrap();
        assert_eq!(s.stream_key, "");
        let s = validate("default", "app", req("srt", "srt://h:1?mode=caller")).unwrap();
        assert_eq!(s.protocol, Protocol::Srt);
    }
}
