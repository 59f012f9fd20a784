//! The auto-push rules' control loop, run by the leader: level-triggered, from the
//! informer's picture (live streams, tasks) and the apps' rules, through the API's own
//! paths (`Pushes::start`, `update`, `stop`), so a rule-made task obeys every rule a
//! hand-made one does — destination uniqueness included: a destination a hand-made task
//! holds is refused to a rule, and the other way round. The decisions are
//! `pushcast_proto::rules::plan` (pure, unit-tested).
//!
//! Idempotent by construction: a rule's task id is derived from the rule and the stream,
//! and creation is create-if-absent, so a pass repeated by a restarted or a new leader
//! creates nothing twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pushcast_proto::model::{AppConfig, TaskSpec};
use pushcast_proto::rules::{self, Existing, Wanted};
use pushcast_runtime::CancellationToken;
use pushcast_store::{Store, decoded};
use tokio::sync::watch;

use crate::informer::Informer;
use crate::pushes::{DestinationRef, DestinationRequest, Pushes, StartPush, UpdatePush};

/// How often a pass runs without a change in the picture (a rule edited through
/// another controller reaches the leader through the store, not through its picture).
const RESYNC: Duration = Duration::from_secs(1);

/// A rule's task that could not be written (a destination held by a hand-made task, a
/// destination the rule expands into an invalid one) is tried again after this long.
const RETRY_FAILED: Duration = Duration::from_secs(30);

/// Runs passes while this controller leads, until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    informer: Arc<Informer>,
    pushes: Pushes,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut changes = informer.placement_changes();
    let mut failed: HashMap<String, (Instant, String)> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
            // The election is over (the process is stopping): nothing more to lead.
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RESYNC) => {}
        }
        if !*leader.borrow() {
            continue;
        }
        if let Err(e) = pass(&*store, &informer, &pushes, &mut failed).await {
            tracing::warn!(error = %e, "auto-push rules pass failed; trying again");
        }
    }
}

/// One pass over every app with rules or rule-made tasks.
async fn pass(
    store: &dyn Store,
    informer: &Informer,
    pushes: &Pushes,
    failed: &mut HashMap<String, (Instant, String)>,
) -> Result<(), pushcast_store::StoreError> {
    let listing = store.list("apps/").await?;
    let apps: Vec<AppConfig> = listing
        .kvs
        .iter()
        .filter_map(|kv| decoded(&kv.key, &kv.value, "app"))
        .collect();
    // (vhost, app) → its live stream names and its rule-made tasks, from the picture.
    let mut by_app: BTreeMap<(String, String), (Vec<String>, Vec<Existing>)> = BTreeMap::new();
    {
        let picture = informer.read();
        for s in picture.streams.values() {
            by_app
                .entry((s.vhost.clone(), s.app.clone()))
                .or_default()
                .0
                .push(s.stream.clone());
        }
        for spec in picture.tasks.values() {
            if let Some(e) = existing(spec) {
                by_app
                    .entry((spec.vhost.clone(), spec.app.clone()))
                    .or_default()
                    .1
                    .push(e);
            }
        }
    }
    let now = Instant::now();
    failed.retain(|_, (at, _)| now.duration_since(*at) < RETRY_FAILED);
    for app in &apps {
        let key = (app.vhost.clone(), app.name.clone());
        let (live, made) = by_app.remove(&key).unwrap_or_default();
        if app.rules.is_empty() && made.is_empty() {
            continue;
        }
        let plan = rules::plan(&app.vhost, &app.name, &app.rules, &live, &made);
        for want in plan.create {
            if failed.contains_key(&want.id) {
                continue;
            }
            let id = want.id.clone();
            match pushes
                .start(&app.vhost, &app.name, start_request(want))
                .await
            {
                Ok(_) => {
                    metrics::counter!("pushcast_rule_tasks_total", "change" => "created")
                        .increment(1);
                    tracing::info!(vhost = %app.vhost, app = %app.name, %id, "rule task created");
                }
                Err(e) => note_failure(failed, &app.name, id, e.to_string()),
            }
        }
        for (old, want) in plan.change {
            if failed.contains_key(&want.id) {
                continue;
            }
            let id = want.id.clone();
            match pushes
                .update(&app.vhost, &app.name, update_request(&old, want))
                .await
            {
                Ok(_) => {
                    metrics::counter!("pushcast_rule_tasks_total", "change" => "updated")
                        .increment(1);
                    tracing::info!(vhost = %app.vhost, app = %app.name, %id, "rule task updated");
                }
                Err(e) => note_failure(failed, &app.name, id, e.to_string()),
            }
        }
        for gone in plan.remove {
            match pushes.stop(&app.vhost, &app.name, Some(&gone.id)).await {
                Ok(_) => {
                    metrics::counter!("pushcast_rule_tasks_total", "change" => "removed")
                        .increment(1);
                    tracing::info!(vhost = %app.vhost, app = %app.name, id = %gone.id, "rule task removed");
                }
                Err(e) => note_failure(failed, &app.name, gone.id, e.to_string()),
            }
        }
    }
    // Rule-made tasks of apps that are gone go with their app.
    Ok(())
}

/// Logs a rule task that could not be written, once per retry period.
fn note_failure(
    failed: &mut HashMap<String, (Instant, String)>,
    app: &str,
    id: String,
    error: String,
) {
    metrics::counter!("pushcast_rule_task_failures_total").increment(1);
    tracing::warn!(%app, %id, %error, "a rule's task could not be written; trying again later");
    failed.insert(id, (Instant::now(), error));
}

/// A task as the plan sees it, when a rule made it.
fn existing(spec: &TaskSpec) -> Option<Existing> {
    let rule = spec.rule.clone()?;
    Some(Existing {
        id: spec.id.clone(),
        rule,
        stream: spec.stream.name.clone(),
        destinations: spec
            .destinations()
            .iter()
            .map(|d| d.spec().clone())
            .collect(),
        track_ids: spec.stream.track_ids.clone(),
        variant_names: spec.stream.variant_names.clone(),
    })
}

fn request(d: &pushcast_proto::destination::DestinationSpec) -> DestinationRequest {
    DestinationRequest {
        protocol: Some(d.protocol.as_str().to_string()),
        url: Some(d.url.clone()),
        stream_key: Some(d.stream_key.clone()),
        variant_names: d.variant_names.clone(),
    }
}

fn start_request(want: Wanted) -> StartPush {
    StartPush {
        id: Some(want.id),
        stream_name: Some(want.stream),
        track_ids: want.track_ids,
        variant_names: want.variant_names,
        protocol: None,
        url: None,
        stream_key: None,
        destinations: want.destinations.iter().map(request).collect(),
        reconnect_window_ms: None,
        rule: Some(want.rule),
    }
}

/// The update that takes `old` to `want`: destinations added and removed by address
/// (the ones kept keep their sessions), the track selection replaced.
fn update_request(old: &Existing, want: Wanted) -> UpdatePush {
    let same = |a: &pushcast_proto::destination::DestinationSpec,
                b: &pushcast_proto::destination::DestinationSpec| {
        a.protocol == b.protocol && a.url == b.url && a.stream_key == b.stream_key
    };
    UpdatePush {
        id: Some(want.id.clone()),
        add: want
            .destinations
            .iter()
            .filter(|w| !old.destinations.iter().any(|o| same(o, w)))
            .map(request)
            .collect(),
        remove: old
            .destinations
            .iter()
            .filter(|o| !want.destinations.iter().any(|w| same(o, w)))
            .map(|o| DestinationRef::Address {
                url: o.url.clone(),
                stream_key: o.stream_key.clone(),
            })
            .collect(),
        variant_names: Some(want.variant_names),
        track_ids: Some(want.track_ids),
    }
}
