//! Push tasks: the one domain service behind both the REST gateway and gRPC.
//!
//! Validation follows `spec/rest-push-api.md` in its exact order; the store's
//! transactions make "create only if the id and the destination are free" atomic across
//! any number of controller replicas.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use pushcast_proto::ApiError;
use pushcast_proto::destination::Destination;
use pushcast_proto::model::{Protocol, StreamSelector, Task, TaskSpec, TaskState, TaskStatus};
use pushcast_proto::time;
use pushcast_store::{Compare, KeyValue, Op, Store, Txn, WatchEvent};
use serde::{Deserialize, Serialize};

use crate::apps::Apps;
use crate::informer::Informer;
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
    /// Multi-destination task: several destinations in place of
    /// `protocol`/`url`/`stream_key` (used when not empty).
    pub destinations: Vec<DestinationRequest>,
    /// The task's own reconnect window (ms, at most 600000).
    pub reconnect_window_ms: Option<u64>,
    /// The auto-push rule that makes the task (set by the rules' loop only).
    pub rule: Option<String>,
}

/// One destination of a startPush or updatePush request, as it arrived.
#[derive(Debug, Clone, Default)]
pub struct DestinationRequest {
    pub protocol: Option<String>,
    pub url: Option<String>,
    pub stream_key: Option<String>,
    pub variant_names: Vec<String>,
}

/// A destination to remove from a task: by url + destination stream key, or by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationRef {
    Address { url: String, stream_key: String },
    Index(usize),
}

/// An updatePush request as it arrived.
#[derive(Debug, Clone, Default)]
pub struct UpdatePush {
    pub id: Option<String>,
    pub add: Vec<DestinationRequest>,
    pub remove: Vec<DestinationRef>,
    /// `Some` = replace the task's selection.
    pub variant_names: Option<Vec<String>>,
    pub track_ids: Option<Vec<i64>>,
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
    /// Reads (`:pushes`, `GetPush`) come from the informer's picture; writes go to the
    /// store, guarded by its transactions.
    informer: Arc<Informer>,
    apps: Apps,
    live: LiveStatus,
}

impl Pushes {
    pub fn new(
        store: Arc<dyn Store>,
        informer: Arc<Informer>,
        apps: Apps,
        clients: WorkerClients,
    ) -> Pushes {
        let live = LiveStatus::new(informer.clone(), clients);
        Pushes {
            store,
            informer,
            apps,
            live,
        }
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    /// `:startPush`. The caller has already checked vhost and app (the contract checks
    /// them before the body's fields); they are checked again inside the transaction.
    pub async fn start(&self, vhost: &str, app: &str, req: StartPush) -> Result<Task, ApiError> {
        let mut spec = validate(vhost, app, req)?;
        // The task remembers the trace of the call that made it (see `TaskSpec`).
        spec.trace_parent =
            pushcast_runtime::logging::inject(&tracing::Span::current()).remove("traceparent");
        let task_key = keys::task(vhost, app, &spec.id);
        let dest_keys = claim_keys(&spec);
        let claim = encode(&Claim {
            vhost: vhost.into(),
            app: app.into(),
            id: spec.id.clone(),
        })?;
        let spec_bytes = encode(&spec)?;
        // A destination claim may be stale (its task was deleted with its app while it
        // was being created); such a claim is taken over with a compare on its revision.
        let mut dest_compares: Vec<Compare> = dest_keys
            .iter()
            .map(|k| Compare::Absent(k.clone()))
            .collect();
        for _ in 0..3 {
            let mut txn = Txn::new()
                .when(Compare::Present(keys::app(vhost, app)))
                .when(Compare::Absent(task_key.clone()));
            for c in &dest_compares {
                txn = txn.when(c.clone());
            }
            txn = txn.and_then(Op::put(task_key.clone(), spec_bytes.clone()));
            for k in &dest_keys {
                txn = txn.and_then(Op::put(k.clone(), claim.clone()));
            }
            txn = txn.and_then(Op::delete(keys::status(vhost, app, &spec.id)));
            if self.store.txn(txn).await.map_err(api_error)?.succeeded {
                tracing::info!(vhost, app, id = %spec.id, protocol = spec.first().protocol().as_str(), destinations = dest_keys.len(), "push task created");
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
            dest_compares = self.claim_compares(&dest_keys, None).await?;
        }
        Err(ApiError::unavailable(
            "The task could not be created under concurrent changes, try again",
        ))
    }

    /// The compares that let a transaction claim `dest_keys`: absent, or held by a task
    /// that no longer exists (stale). A destination held by a live task other than
    /// `own` is a 409 naming that task.
    async fn claim_compares(
        &self,
        dest_keys: &[String],
        own: Option<&Claim>,
    ) -> Result<Vec<Compare>, ApiError> {
        let mut out = Vec::with_capacity(dest_keys.len());
        for dest_key in dest_keys {
            match self.store.get(dest_key).await.map_err(api_error)? {
                None => out.push(Compare::Absent(dest_key.clone())),
                Some(kv) => {
                    let holder: Claim = decode(&kv.key, &kv.value)?;
                    let holder_key = keys::task(&holder.vhost, &holder.app, &holder.id);
                    if own != Some(&holder)
                        && self
                            .store
                            .get(&holder_key)
                            .await
                            .map_err(api_error)?
                            .is_some()
                    {
                        return Err(in_use(&holder.id));
                    }
                    out.push(Compare::ModRevision(dest_key.clone(), kv.mod_revision));
                }
            }
        }
        Ok(out)
    }

    /// `:updatePush`: adds and removes destinations and changes the track selection of
    /// a task, in one transaction on the task's key. The worker applies it live: the
    /// destinations left untouched keep their sessions.
    pub async fn update(&self, vhost: &str, app: &str, req: UpdatePush) -> Result<Task, ApiError> {
        let id = match req.id.as_deref() {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => {
                return Err(ApiError::bad_request(
                    "There is no required parameter [ id]",
                ));
            }
        };
        let task_key = keys::task(vhost, app, &id);
        let own = Claim {
            vhost: vhost.into(),
            app: app.into(),
            id: id.clone(),
        };
        let claim = encode(&own)?;
        for _ in 0..5 {
            let Some(kv) = self.store.get(&task_key).await.map_err(api_error)? else {
                return Err(not_found(vhost, app, &id));
            };
            let old: TaskSpec = decode(&kv.key, &kv.value)?;
            let new = apply_update(&old, &req)?;
            let old_keys = claim_keys(&old);
            let new_keys = claim_keys(&new);
            let added: Vec<String> = new_keys
                .iter()
                .filter(|k| !old_keys.contains(k))
                .cloned()
                .collect();
            let removed: Vec<String> = old_keys
                .iter()
                .filter(|k| !new_keys.contains(k))
                .cloned()
                .collect();
            let compares = self.claim_compares(&added, Some(&own)).await?;
            let mut txn = Txn::new().when(Compare::ModRevision(task_key.clone(), kv.mod_revision));
            for c in compares {
                txn = txn.when(c);
            }
            txn = txn.and_then(Op::put(task_key.clone(), encode(&new)?));
            for k in &added {
                txn = txn.and_then(Op::put(k.clone(), claim.clone()));
            }
            for k in &removed {
                txn = txn.and_then(Op::delete(k.clone()));
            }
            if self.store.txn(txn).await.map_err(api_error)?.succeeded {
                tracing::info!(
                    vhost,
                    app,
                    id,
                    added = added.len(),
                    removed = removed.len(),
                    "push task updated"
                );
                let mut task = self.get(vhost, app, &id).await?;
                task.spec = new;
                return Ok(task);
            }
        }
        Err(ApiError::unavailable(
            "The task changed concurrently while updating, try again",
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
                .and_then(Op::delete(keys::status(vhost, app, id)));
            let txn = claim_keys(&task.spec)
                .into_iter()
                .fold(txn, |txn, k| txn.and_then(Op::delete(k)));
            if self.store.txn(txn).await.map_err(api_error)?.succeeded {
                let now = time::now_ms();
                let stopped = |st: &mut TaskStatus| {
                    if st.state == TaskState::Started || st.state == TaskState::Error {
                        st.sequence += 1;
                        st.finish_ms = Some(now);
                    }
                    st.state = TaskState::Stopped;
                };
                for d in &mut task.status.destinations {
                    stopped(&mut d.status);
                }
                stopped(&mut task.status);
                tracing::info!(vhost, app, id, "push task stopped and removed");
                return Ok(task);
            }
        }
        Err(ApiError::unavailable(
            "The task changed concurrently while stopping, try again",
        ))
    }

    /// `:pushes`: every task of the app (or the one with this exact id), oldest first.
    /// From the informer's picture once it holds every write acknowledged before the call
    /// (a consistent read: a task created a moment ago on any controller is listed).
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
        let mut tasks: Vec<Task> = {
            let picture = self.informer.consistent().await.map_err(api_error)?;
            in_list_order(&picture, vhost, app)
                .into_iter()
                .map(|(spec, status)| task_of(spec, status))
                .collect()
        };
        self.live.refresh(&mut tasks).await;
        Ok(tasks)
    }

    /// The live streams of an app (interrupted ones included: they are still the
    /// app's, within their reconnect window), by name.
    pub async fn streams(
        &self,
        vhost: &str,
        app: &str,
    ) -> Result<Vec<pushcast_proto::model::LiveStream>, ApiError> {
        self.apps().require(vhost, app).await?;
        let picture = self.informer.consistent().await.map_err(api_error)?;
        let mut list: Vec<_> = picture
            .streams
            .values()
            .filter(|s| s.vhost == vhost && s.app == app)
            .cloned()
            .collect();
        list.sort_by(|a, b| a.stream.cmp(&b.stream));
        Ok(list)
    }

    /// [`Pushes::streams`] as the API shows them, each with its health as its worker
    /// measures it now (`health`: codecs, resolution, frame rate, bitrate, encoder).
    pub async fn streams_json(
        &self,
        vhost: &str,
        app: &str,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        let list = self.streams(vhost, app).await?;
        let mut workers: Vec<String> = list.iter().map(|s| s.worker.clone()).collect();
        workers.sort();
        workers.dedup();
        let health = self.live.stream_health(&workers).await;
        Ok(list
            .iter()
            .map(|s| {
                let mut v = s.to_json();
                let key = (s.vhost.clone(), s.app.clone(), s.stream.clone());
                if let Some(h) = health.get(&key) {
                    v["health"] = serde_json::json!({
                        "codecs": h.codecs,
                        "width": h.width,
                        "height": h.height,
                        "fps": h.fps,
                        "bitrate": h.bitrate_bps,
                        "encoder": h.encoder,
                        "framesIn": h.frames_in,
                        "bytesIn": h.bytes_in,
                    });
                }
                v
            })
            .collect())
    }

    /// The registered workers with the number of tasks each holds (the console's view
    /// of load), from the informer's picture.
    pub fn workers(&self) -> Vec<(pushcast_proto::model::WorkerInfo, usize)> {
        let picture = self.informer.read();
        // One pass over the statuses, not one per worker.
        let mut held: HashMap<&str, usize> = HashMap::new();
        for s in picture.statuses.values() {
            if let Some(w) = s.worker.as_deref()
                && s.state != pushcast_proto::model::TaskState::Stopped
            {
                *held.entry(w).or_default() += 1;
            }
        }
        picture
            .workers
            .values()
            .map(|w| {
                (
                    w.clone(),
                    held.get(w.node_id.as_str()).copied().unwrap_or(0),
                )
            })
            .collect()
    }

    /// One page of [`Pushes::list`]: at most `size` tasks after the one `token` names (the
    /// first page for an empty token), and the token of the next page (empty on the last).
    /// A token names the last task of its page, so tasks created or removed between pages
    /// neither shift nor repeat the others.
    pub async fn page(
        &self,
        vhost: &str,
        app: &str,
        size: usize,
        token: &str,
    ) -> Result<(Vec<Task>, String), ApiError> {
        let after = match token {
            "" => None,
            t => Some(PageToken::decode(t, vhost, app)?),
        };
        let (mut tasks, more) = {
            let picture = self.informer.consistent().await.map_err(api_error)?;
            let mut rest: Vec<_> = in_list_order(&picture, vhost, app)
                .into_iter()
                .filter(|(t, _)| {
                    after.as_ref().is_none_or(|a| {
                        (t.created_ms, t.id.as_str()) > (a.created_ms, a.id.as_str())
                    })
                })
                .collect();
            let more = rest.len() > size;
            rest.truncate(size);
            let page: Vec<Task> = rest
                .into_iter()
                .map(|(spec, status)| task_of(spec, status))
                .collect();
            (page, more)
        };
        self.live.refresh(&mut tasks).await;
        let next = match tasks.last() {
            Some(t) if more => PageToken {
                vhost: vhost.to_string(),
                app: app.to_string(),
                created_ms: t.spec.created_ms,
                id: t.spec.id.clone(),
            }
            .encode(),
            _ => String::new(),
        };
        Ok((tasks, next))
    }

    pub async fn get(&self, vhost: &str, app: &str, id: &str) -> Result<Task, ApiError> {
        let task = {
            let picture = self.informer.consistent().await.map_err(api_error)?;
            picture
                .task(vhost, app, id)
                .map(|(spec, status)| task_of(spec, status))
        };
        let Some(task) = task else {
            return Err(not_found(vhost, app, id));
        };
        let mut task = [task];
        self.live.refresh(&mut task).await;
        let [task] = task;
        Ok(task)
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

/// The most tasks one page of `ListPushes` holds.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Where a page of `ListPushes` ends: the last task it holds, in list order, and the
/// vhost and app it lists (a token is refused for another app). Opaque to clients:
/// base64url of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PageToken {
    vhost: String,
    app: String,
    created_ms: i64,
    id: String,
}

impl PageToken {
    fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(token: &str, vhost: &str, app: &str) -> Result<PageToken, ApiError> {
        use base64::Engine;
        let invalid = || ApiError::bad_request("page_token is not a token of this listing");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| invalid())?;
        let t: PageToken = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if t.vhost != vhost || t.app != app {
            return Err(invalid());
        }
        Ok(t)
    }
}

/// The tasks of an app in `:pushes` order (oldest first, then by id), as references:
/// sorting copies moved every task's few hundred bytes a dozen times (a fifth of a
/// 10,000-task listing).
fn in_list_order<'a>(
    picture: &'a crate::informer::Picture,
    vhost: &str,
    app: &str,
) -> Vec<(&'a Arc<TaskSpec>, Option<&'a Arc<TaskStatus>>)> {
    let mut refs: Vec<_> = picture.tasks_of(vhost, app).collect();
    refs.sort_unstable_by(|(a, _), (b, _)| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    refs
}

/// A task as the API shows it, from the informer's picture.
fn task_of(spec: &Arc<TaskSpec>, status: Option<&Arc<TaskStatus>>) -> Task {
    Task {
        spec: TaskSpec::clone(spec),
        status: status.map(|s| TaskStatus::clone(s)).unwrap_or_default(),
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

/// The store keys of the claims on a task's destinations (one task per destination).
pub(crate) fn claim_keys(spec: &TaskSpec) -> Vec<String> {
    spec.destinations()
        .iter()
        .map(|d| keys::destination(&d.address()))
        .collect()
}

fn duplicate_id() -> ApiError {
    ApiError::bad_request("Duplicate ID").with_grpc_code(tonic::Code::AlreadyExists)
}

fn in_use(holder: &str) -> ApiError {
    ApiError::conflict(format!("Destination already in use by push '{holder}'"))
}

fn not_found(vhost: &str, app: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("Could not find id '{id}': [{vhost}/{app}]"))
}

fn present(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// The startPush checks of the contract, in its order (1–5 and our destination rule; 6
/// and 7 need the store). A multi-destination task's destinations are checked one after
/// the other with the same rules.
pub fn validate(vhost: &str, app: &str, req: StartPush) -> Result<TaskSpec, ApiError> {
    let dests = if req.destinations.is_empty() {
        vec![DestinationRequest {
            protocol: req.protocol,
            url: req.url,
            stream_key: req.stream_key,
            variant_names: Vec::new(),
        }]
    } else {
        req.destinations
    };
    // Before any per-destination work: a request with thousands costs nothing more.
    check_count(dests.len())?;
    let mut protocols = Vec::with_capacity(dests.len());
    for d in &dests {
        protocols.push(check_protocol(vhost, app, d)?);
    }
    let id = present(req.id);
    let stream_name = present(req.stream_name);
    let urls: Vec<Option<String>> = dests.iter().map(|d| normalize_url(&d.url)).collect();
    let mut missing = String::new();
    if id.is_none() {
        missing.push_str(" id");
    }
    if stream_name.is_none() {
        missing.push_str(" stream.name");
    }
    if urls.iter().any(Option::is_none) {
        missing.push_str(" url");
    }
    let (Some(id), Some(stream_name)) = (id, stream_name) else {
        return Err(missing_params(&missing));
    };
    if !missing.is_empty() {
        return Err(missing_params(&missing));
    }
    let mut list = Vec::with_capacity(dests.len());
    for ((d, protocol), url) in dests.into_iter().zip(protocols).zip(urls) {
        list.push(check_destination(protocol, url.unwrap_or_default(), d)?);
    }
    check_distinct(&list, &id)?;
    let stream = StreamSelector {
        name: stream_name,
        track_ids: req.track_ids,
        variant_names: req.variant_names,
    };
    if req
        .reconnect_window_ms
        .is_some_and(|ms| ms > MAX_RECONNECT_WINDOW_MS)
    {
        return Err(ApiError::bad_request(format!(
            "[reconnectWindowMs] must be a number of milliseconds from 0 to {MAX_RECONNECT_WINDOW_MS}"
        )));
    }
    let (vhost, app) = (vhost.to_string(), app.to_string());
    let mut spec = TaskSpec::new(id, vhost, app, stream, time::now_ms(), list)
        .ok_or_else(|| ApiError::bad_request("A push needs at least one destination"))?;
    spec.reconnect_window_ms = req.reconnect_window_ms;
    spec.rule = req.rule;
    Ok(spec)
}

/// The longest reconnect window an app or a task may ask for (10 minutes).
pub const MAX_RECONNECT_WINDOW_MS: u64 = 600_000;

fn missing_params(missing: &str) -> ApiError {
    ApiError::bad_request(format!("There is no required parameter [{missing}]"))
}

/// Check 1: the protocol word.
fn check_protocol(vhost: &str, app: &str, d: &DestinationRequest) -> Result<Protocol, ApiError> {
    let protocol_text = d
        .protocol
        .as_deref()
        .map(|p| p.trim().to_lowercase())
        .unwrap_or_default();
    Protocol::parse(&protocol_text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Could not find protocol '{protocol_text}': [{vhost}/{app}]"
        ))
    })
}

/// Trimmed, trailing "/" stripped; `None` when missing or empty.
fn normalize_url(url: &Option<String>) -> Option<String> {
    present(
        url.as_deref()
            .map(|u| u.trim().trim_end_matches('/').to_string()),
    )
}

/// Checks 3–5 of one destination, and ours: anything a worker could not push to is
/// refused here, by the one destination parser.
fn check_destination(
    protocol: Protocol,
    url: String,
    d: DestinationRequest,
) -> Result<Arc<Destination>, ApiError> {
    let key = d.stream_key.unwrap_or_default();
    Destination::parse(protocol, &url, &key, d.variant_names)
        .map_err(|e| ApiError::bad_request(e.api_message()))
}

/// The most destinations one task may have. Each is a claim key written in the task's
/// transactions: an update that replaces all of them deletes and writes 2 × 50 keys,
/// under etcd's 128 operations per transaction.
pub const MAX_DESTINATIONS: usize = 50;

fn check_count(n: usize) -> Result<(), ApiError> {
    if n > MAX_DESTINATIONS {
        return Err(ApiError::bad_request(format!(
            "A push has at most {MAX_DESTINATIONS} destinations ({n} given)"
        )));
    }
    Ok(())
}

/// A task cannot push one destination twice: 409 naming the task itself.
fn check_distinct(list: &[Arc<Destination>], id: &str) -> Result<(), ApiError> {
    for (i, d) in list.iter().enumerate() {
        if list[..i].iter().any(|e| e.address() == d.address()) {
            return Err(in_use(id));
        }
    }
    Ok(())
}

/// The task `old` with the changes of `req` (validated with the startPush rules).
pub fn apply_update(old: &TaskSpec, req: &UpdatePush) -> Result<TaskSpec, ApiError> {
    let (vhost, app) = (&old.vhost, &old.app);
    let mut list = old.destinations().to_vec();
    let mut drop = vec![false; list.len()];
    for r in &req.remove {
        let at = match r {
            DestinationRef::Index(i) => (*i < list.len()).then_some(*i),
            DestinationRef::Address { url, stream_key } => {
                let url = url.trim().trim_end_matches('/');
                list.iter().position(|d| {
                    d.url() == url
                        && (d.stream_key() == stream_key || d.protocol() != Protocol::Rtmp)
                })
            }
        };
        let Some(at) = at else {
            let what = match r {
                DestinationRef::Index(i) => i.to_string(),
                DestinationRef::Address { url, .. } => url.clone(),
            };
            return Err(ApiError::not_found(format!(
                "Could not find destination '{what}': [{vhost}/{app}]"
            )));
        };
        drop[at] = true;
    }
    let mut keep = drop.iter();
    list.retain(|_| !keep.next().copied().unwrap_or(false));
    check_count(list.len() + req.add.len())?;
    let mut protocols = Vec::with_capacity(req.add.len());
    for d in &req.add {
        protocols.push(check_protocol(vhost, app, d)?);
    }
    let urls: Vec<Option<String>> = req.add.iter().map(|d| normalize_url(&d.url)).collect();
    if urls.iter().any(Option::is_none) {
        return Err(missing_params(" url"));
    }
    for ((d, protocol), url) in req.add.iter().cloned().zip(protocols).zip(urls) {
        list.push(check_destination(protocol, url.unwrap_or_default(), d)?);
    }
    if list.is_empty() {
        return Err(ApiError::bad_request(
            "A push needs at least one destination",
        ));
    }
    check_distinct(&list, &old.id)?;
    let mut new = old.clone();
    if let Some(v) = &req.variant_names {
        new.stream.variant_names = v.clone();
    }
    if let Some(t) = &req.track_ids {
        new.stream.track_ids = t.clone();
    }
    new.set_destinations(list);
    Ok(new)
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
    fn a_page_token_names_its_listing_and_nothing_else() {
        use base64::Engine;
        let t = PageToken {
            vhost: "default".into(),
            app: "app".into(),
            created_ms: 5,
            id: "x/y".into(),
        };
        let token = t.encode();
        assert_eq!(PageToken::decode(&token, "default", "app").unwrap(), t);
        assert!(PageToken::decode(&token, "default", "other").is_err());
        assert!(PageToken::decode(&token, "other", "app").is_err());
        assert!(PageToken::decode("%%%", "default", "app").is_err());
        let empty = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("{}");
        let e = PageToken::decode(&empty, "default", "app").unwrap_err();
        assert_eq!(e.message, "page_token is not a token of this listing");
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
        assert_eq!(s.first().protocol(), Protocol::Rtmp);
        assert_eq!(s.first().url(), "rtmps://h/live");
        assert_eq!(s.first().address(), "rtmps://h/live/k");
        let s = validate("default", "app", req("mpegts", "udp://127.0.0.1:5000/")).unwrap();
        assert_eq!(s.first().stream_key(), "");
        let s = validate("default", "app", req("srt", "srt://h:1?mode=caller")).unwrap();
        assert_eq!(s.first().protocol(), Protocol::Srt);
    }

    #[test]
    fn destinations_no_worker_could_push_to_are_refused() {
        let mut no_key = req("rtmp", "rtmp://h/app");
        no_key.stream_key = None;
        assert_eq!(
            msg(no_key),
            "Invalid destination: no stream name: give a streamKey or end the url with it \
             (rtmp://host/app/KEY)"
        );
        let mut single_url = req("rtmp", "rtmp://h/app/stream");
        single_url.stream_key = None;
        assert!(validate("default", "app", single_url).is_ok());
        assert_eq!(
            msg(req("mpegts", "udp://127.0.0.1")),
            "Invalid destination: the url has no port"
        );
        assert_eq!(
            msg(req("rtmp", "rtmp://u:p@h/live")),
            "Invalid destination: credentials in the url (user:password@host) are not supported"
        );
    }
    fn dest(protocol: &str, url: &str, key: &str) -> DestinationRequest {
        DestinationRequest {
            protocol: Some(protocol.into()),
            url: (!url.is_empty()).then(|| url.into()),
            stream_key: Some(key.into()),
            ..Default::default()
        }
    }

    fn multi(dests: Vec<DestinationRequest>) -> StartPush {
        StartPush {
            id: Some("t".into()),
            stream_name: Some("s".into()),
            destinations: dests,
            ..Default::default()
        }
    }

    #[test]
    fn destinations_are_checked_with_the_start_push_rules() {
        let ok = dest("rtmp", "rtmp://h/live", "a");
        assert_eq!(
            msg(multi(vec![ok.clone(), dest("hls", "rtmp://h/live", "b")])),
            "Could not find protocol 'hls': [default/app]"
        );
        let mut r = multi(vec![ok.clone(), dest("rtmp", "", "b")]);
        r.id = None;
        assert_eq!(msg(r), "There is no required parameter [ id url]");
        assert_eq!(
            msg(multi(vec![ok.clone(), dest("rtmp", "not a url", "b")])),
            "Could not parse url"
        );
        assert_eq!(
            msg(multi(vec![ok.clone(), dest("mpegts", "rtmp://h/a", "")])),
            "Unsupported protocol"
        );
        assert_eq!(
            msg(multi(vec![
                ok.clone(),
                dest("srt", "srt://h:1?mode=listener", "")
            ])),
            "Unsupported connection mode"
        );
        let e = validate("default", "app", multi(vec![ok.clone(), ok.clone()])).unwrap_err();
        assert_eq!(
            (e.http_status(), e.message.as_str()),
            (409, "Destination already in use by push 't'")
        );
    }

    #[test]
    fn multi_destination_spec_mirrors_its_first_destination() {
        let s = validate(
            "default",
            "app",
            multi(vec![
                dest(" RTMP ", "rtmp://h/live/", "a"),
                dest("mpegts", "udp://127.0.0.1:5000", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (
                s.first().protocol(),
                s.first().url(),
                s.first().stream_key()
            ),
            (Protocol::Rtmp, "rtmp://h/live", "a")
        );
        assert!(s.is_multi_destination());
        let list = s.destinations();
        assert_eq!(list[1].address(), "udp://127.0.0.1:5000");
        assert_eq!(list[1].stream_key(), "");
        // A single destination given as a list is stored as a plain task.
        let s = validate(
            "default",
            "app",
            multi(vec![dest("rtmp", "rtmp://h/live", "a")]),
        )
        .unwrap();
        assert!(!s.is_multi_destination());
        let text = serde_json::to_string(&s).unwrap();
        assert!(!text.contains("destinations"), "{text}");
        assert_eq!(s.first().address(), "rtmp://h/live/a");
    }

    /// 50 destinations are taken, 51 refused with a clear 400, on start and on update.
    #[test]
    fn a_task_has_at_most_fifty_destinations() {
        let dests = |n: usize| -> Vec<DestinationRequest> {
            (0..n)
                .map(|i| dest("rtmp", "rtmp://h/live", &format!("k{i}")))
                .collect()
        };
        let fifty = validate("default", "app", multi(dests(50))).unwrap();
        assert_eq!(fifty.destinations().len(), 50);
        let e = validate("default", "app", multi(dests(51))).unwrap_err();
        assert_eq!(e.http_status(), 400);
        assert_eq!(e.message, "A push has at most 50 destinations (51 given)");
        let up = UpdatePush {
            id: Some("t".into()),
            add: vec![dest("rtmp", "rtmp://h/live", "one-more")],
            ..Default::default()
        };
        let e = apply_update(&fifty, &up).unwrap_err();
        assert_eq!(e.message, "A push has at most 50 destinations (51 given)");
    }

    #[test]
    fn update_adds_and_removes_destinations() {
        let old = validate("default", "app", req("rtmp", "rtmp://h/live")).unwrap();
        let up = UpdatePush {
            id: Some("t".into()),
            add: vec![
                dest("rtmp", "rtmp://h/live", "k2"),
                dest("rtmp", "rtmp://h/live", "k3"),
            ],
            ..Default::default()
        };
        let three = apply_update(&old, &up).unwrap();
        assert_eq!(three.destinations().len(), 3);
        assert_eq!(three.created_ms, old.created_ms);
        let up = UpdatePush {
            id: Some("t".into()),
            add: vec![dest("rtmp", "rtmp://h/live", "k4")],
            remove: vec![
                DestinationRef::Index(0),
                DestinationRef::Address {
                    url: "rtmp://h/live/".into(),
                    stream_key: "k3".into(),
                },
            ],
            variant_names: Some(vec!["bypass_video".into()]),
            ..Default::default()
        };
        let two = apply_update(&three, &up).unwrap();
        let keys: Vec<&str> = two.destinations().iter().map(|d| d.stream_key()).collect();
        assert_eq!(keys, ["k2", "k4"]);
        assert_eq!(two.first().stream_key(), "k2");
        assert_eq!(two.stream.variant_names, ["bypass_video"]);
    }

    #[test]
    fn update_errors() {
        let old = validate("default", "app", req("rtmp", "rtmp://h/live")).unwrap();
        let err = |up: UpdatePush| {
            let e = apply_update(&old, &up).unwrap_err();
            (e.http_status(), e.message)
        };
        let add = |d| UpdatePush {
            id: Some("t".into()),
            add: vec![d],
            ..Default::default()
        };
        assert_eq!(
            err(add(dest("hls", "rtmp://h/x", "k"))),
            (400, "Could not find protocol 'hls': [default/app]".into())
        );
        assert_eq!(
            err(add(dest("rtmp", "", "k"))),
            (400, "There is no required parameter [ url]".into())
        );
        assert_eq!(
            err(add(dest("rtmp", "bad url", "k"))),
            (400, "Could not parse url".into())
        );
        assert_eq!(
            err(add(dest("srt", "rtmp://h/x", ""))),
            (400, "Unsupported protocol".into())
        );
        assert_eq!(
            err(add(dest("rtmp", "rtmp://h/live", "k"))),
            (409, "Destination already in use by push 't'".into())
        );
        // Index 1 of a one-destination task is one past the end.
        for i in [1, 3] {
            assert_eq!(
                err(UpdatePush {
                    remove: vec![DestinationRef::Index(i)],
                    ..Default::default()
                }),
                (
                    404,
                    format!("Could not find destination '{i}': [default/app]")
                )
            );
        }
        assert_eq!(
            err(UpdatePush {
                remove: vec![DestinationRef::Index(0)],
                ..Default::default()
            }),
            (400, "A push needs at least one destination".into())
        );
        assert_eq!(
            not_found("default", "app", "x").message,
            "Could not find id 'x': [default/app]"
        );
    }
}
