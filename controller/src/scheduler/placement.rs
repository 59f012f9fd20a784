//! Where each task runs: a pure function of the cluster's state, so every rule is unit-
//! tested without etcd, sockets or clocks.
//!
//! Rules:
//! - a task whose stream is not live anywhere is not placed (it is reserved, `ready`);
//! - a task runs on the worker where its stream is live (no extra hop);
//! - when that worker is full (`max_sessions`), the task goes to the least-loaded worker
//!   with room, which gets the stream forwarded by the ingest worker over RTMP;
//! - nobody has room: the ingest worker takes it anyway (overloaded beats not pushing);
//! - a placement that is still valid is kept (no churn: moving a push means a reconnect
//!   at the destination);
//! - a stream continued on another worker within its reconnect window (its record's
//!   `resumed_from`) leaves its pushes where their destination connections are: they
//!   stay on the worker it resumed from, fed over a forward from the new one.

use std::collections::BTreeMap;

use pushcast_proto::model::{SourceRef, TaskSpec, WorkerInfo};

/// (vhost, app, id) of a task, or (vhost, app, stream) of a stream.
pub type Key = (String, String, String);

/// Where a task runs and how it gets its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub worker: String,
    pub source: SourceRef,
}

/// What the scheduler knows.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub tasks: Vec<TaskSpec>,
    /// Registered (alive) workers by node id.
    pub workers: BTreeMap<String, WorkerInfo>,
    /// Live streams: (vhost, app, stream) → the worker that ingests it.
    pub streams: BTreeMap<Key, String>,
    /// Current placements by task.
    pub current: BTreeMap<Key, Placement>,
    /// Streams continued on another worker within their reconnect window: stream → the
    /// worker they were continued from.
    pub resumed_from: BTreeMap<Key, String>,
}

fn task_key(t: &TaskSpec) -> Key {
    (t.vhost.clone(), t.app.clone(), t.id.clone())
}

fn stream_id(t: &TaskSpec) -> Key {
    (t.vhost.clone(), t.app.clone(), t.stream.name.clone())
}

/// Computes the desired placement of every placeable task.
pub fn place(view: &View) -> BTreeMap<Key, Placement> {
    let mut load: BTreeMap<&str, usize> = view.workers.keys().map(|w| (w.as_str(), 0)).collect();
    // Room on `w` for a task whose stream is ingested on `ingest`: a draining worker takes
    // no new work from other workers' streams, but keeps pushing its own (the stream is
    // there until its publisher ends; moving the push away would only add a reconnect).
    let has_room = |load: &BTreeMap<&str, usize>, w: &str, ingest: &str| -> bool {
        match view.workers.get(w) {
            Some(info) => {
                (!info.draining || w == ingest)
                    && (info.max_sessions == 0
                        || load.get(w).copied().unwrap_or(0) < info.max_sessions as usize)
            }
            None => false,
        }
    };
    let mut tasks: Vec<&TaskSpec> = view.tasks.iter().collect();
    tasks.sort_by_key(|t| task_key(t));
    let mut plan = BTreeMap::new();
    let mut pending = Vec::new();

    // Keep what is still valid.
    for t in &tasks {
        let Some(ingest) = view.streams.get(&stream_id(t)) else {
            continue;
        };
        if !view.workers.contains_key(ingest) {
            continue;
        }
        let Some(cur) = view.current.get(&task_key(t)) else {
            pending.push(*t);
            continue;
        };
        let resumed_from_here = view.resumed_from.get(&stream_id(t)) == Some(&cur.worker)
            && cur.worker != *ingest
            && view.workers.contains_key(&cur.worker);
        if resumed_from_here && has_room(&load, &cur.worker, ingest) {
            *load.entry(cur.worker.as_str()).or_default() += 1;
            let kept = Placement {
                worker: cur.worker.clone(),
                source: SourceRef::Forwarded {
                    from_worker: ingest.clone(),
                },
            };
            plan.insert(task_key(t), kept);
            continue;
        }
        let valid = view.workers.contains_key(&cur.worker)
            && match &cur.source {
                SourceRef::Local => cur.worker == *ingest,
                SourceRef::Forwarded { from_worker } => {
                    from_worker == ingest && cur.worker != *ingest
                }
            };
        if valid && has_room(&load, &cur.worker, ingest) {
            *load.entry(cur.worker.as_str()).or_default() += 1;
            plan.insert(task_key(t), cur.clone());
        } else {
            pending.push(*t);
        }
    }

    // Place the rest.
    for t in pending {
        let Some(ingest) = view.streams.get(&stream_id(t)) else {
            continue;
        };
        let placement = if has_room(&load, ingest, ingest) {
            Placement {
                worker: ingest.clone(),
                source: SourceRef::Local,
            }
        } else {
            let other = view
                .workers
                .keys()
                .filter(|w| *w != ingest && has_room(&load, w, ingest))
                .min_by_key(|w| (load.get(w.as_str()).copied().unwrap_or(0), (*w).clone()));
            match other {
                Some(w) => Placement {
                    worker: w.clone(),
                    source: SourceRef::Forwarded {
                        from_worker: ingest.clone(),
                    },
                },
                None => Placement {
                    worker: ingest.clone(),
                    source: SourceRef::Local,
                },
            }
        };
        if let Some((name, _)) = view.workers.get_key_value(&placement.worker) {
            *load.entry(name.as_str()).or_default() += 1;
        }
        plan.insert(task_key(t), placement);
    }
    plan
}

/// The forwards a plan needs: (from worker, to worker, stream).
pub fn forwards(
    view: &View,
    plan: &BTreeMap<Key, Placement>,
) -> std::collections::BTreeSet<(String, String, Key)> {
    let mut out = std::collections::BTreeSet::new();
    for t in &view.tasks {
        if let Some(Placement {
            worker,
            source: SourceRef::Forwarded { from_worker },
        }) = plan.get(&task_key(t))
        {
            out.insert((from_worker.clone(), worker.clone(), stream_id(t)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use pushcast_proto::destination::Destination;
    use pushcast_proto::model::{Protocol, StreamSelector};

    use super::*;

    fn task(id: &str, stream: &str) -> TaskSpec {
        let stream = StreamSelector {
            name: stream.into(),
            ..Default::default()
        };
        let d = Destination::parse(Protocol::Rtmp, "rtmp://h/live", id, vec![]).expect("valid");
        let (v, a) = ("default".into(), "app".into());
        TaskSpec::new(id.into(), v, a, stream, 0, vec![d]).expect("one destination")
    }

    fn worker(name: &str, max: u32) -> (String, WorkerInfo) {
        (
            name.into(),
            WorkerInfo {
                node_id: name.into(),
                grpc_addr: format!("{name}:9100"),
                rtmp_addr: format!("{name}:1935"),
                rtmps_addr: None,
                max_sessions: max,
                draining: false,
            },
        )
    }

    fn k(s: &str) -> Key {
        ("default".into(), "app".into(), s.into())
    }

    fn local(w: &str) -> Placement {
        Placement {
            worker: w.into(),
            source: SourceRef::Local,
        }
    }

    #[test]
    fn tasks_follow_their_stream_and_wait_without_one() {
        let view = View {
            tasks: vec![task("a", "s1"), task("b", "s2"), task("c", "nowhere")],
            workers: [worker("w1", 0), worker("w2", 0)].into(),
            streams: [(k("s1"), "w1".to_string()), (k("s2"), "w2".to_string())].into(),
            current: BTreeMap::new(),
            resumed_from: BTreeMap::new(),
        };
        let plan = place(&view);
        assert_eq!(plan.get(&k("a")), Some(&local("w1")));
        assert_eq!(plan.get(&k("b")), Some(&local("w2")));
        assert_eq!(plan.get(&k("c")), None);
        assert!(forwards(&view, &plan).is_empty());
    }

    #[test]
    fn a_full_ingest_worker_overflows_to_the_least_loaded_via_a_forward() {
        let view = View {
            tasks: (0..5).map(|i| task(&format!("t{i}"), "s1")).collect(),
            workers: [worker("w1", 2), worker("w2", 2), worker("w3", 0)].into(),
            streams: [(k("s1"), "w1".to_string())].into(),
            current: BTreeMap::new(),
            resumed_from: BTreeMap::new(),
        };
        let plan = place(&view);
        let on = |w: &str| plan.values().filter(|p| p.worker == w).count();
        assert_eq!((on("w1"), on("w2"), on("w3")), (2, 2, 1));
        let forwarded: Vec<_> = plan.values().filter(|p| p.worker != "w1").collect();
        assert!(forwarded.iter().all(|p| p.source
            == SourceRef::Forwarded {
                from_worker: "w1".into()
            }));
        let r = forwards(&view, &plan);
        assert_eq!(r.len(), 2, "one forward per (from, to, stream): {r:?}");
    }

    #[test]
    fn a_forward_from_a_worker_the_stream_left_is_not_kept() {
        // b is forwarded from w1 to w3; the stream is now ingested on w2 (w1 still up).
        let mut view = View {
            tasks: vec![task("b", "s1")],
            workers: [worker("w1", 0), worker("w2", 0), worker("w3", 0)].into(),
            streams: [(k("s1"), "w2".to_string())].into(),
            current: BTreeMap::new(),
            resumed_from: BTreeMap::new(),
        };
        let stale = Placement {
            worker: "w3".into(),
            source: SourceRef::Forwarded {
                from_worker: "w1".into(),
            },
        };
        view.current.insert(k("b"), stale.clone());
        let plan = place(&view);
        assert_ne!(
            plan.get(&k("b")),
            Some(&stale),
            "w1 no longer has the stream"
        );
        assert_eq!(plan.get(&k("b")), Some(&local("w2")));
    }

    #[test]
    fn a_local_push_follows_its_stream_to_another_live_worker() {
        // a runs on w1 where its stream was; the stream is now on w2 (w1 still up).
        let mut view = View {
            tasks: vec![task("a", "s1")],
            workers: [worker("w1", 0), worker("w2", 0)].into(),
            streams: [(k("s1"), "w2".to_string())].into(),
            current: BTreeMap::new(),
            resumed_from: BTreeMap::new(),
        };
        view.current.insert(k("a"), local("w1"));
        assert_eq!(place(&view).get(&k("a")), Some(&local("w2")));
    }

    #[test]
    fn kept_placements_count_against_a_workers_room() {
        // a is kept on w1, which has room for one: a new task of the stream overflows.
        let mut view = View {
            tasks: vec![task("a", "s1"), task("b", "s1")],
            workers: [worker("w1", 1), worker("w2", 0)].into(),
            streams: [(k("s1"), "w1".to_string())].into(),
            current: BTreeMap::new(),
            resumed_from: BTreeMap::new(),
        };
        view.current.insert(k("a"), local("w1"));
        let plan = place(&view);
        assert_eq!(plan.get(&k("a")), Some(&local("w1")));
        assert_eq!(
            plan.get(&k("b")),
            Some(&Placement {
                worker: "w2".into(),
                source: SourceRef::Forwarded {
                    from_worker: "w1".into()
                },
            }),
            "w1 is full with the kept task"
        );
    }

    #[test]
    fn a_stream_continued_on_another_worker_keeps_its_pushes_where_they_are() {
        let mut v = View {
            tasks: vec![task("t1", "cam")],
            workers: [worker("w1", 0), worker("w2", 0)].into_iter().collect(),
            ..View::default()
        };
        v.streams.insert(k("cam"), "w2".into());
        v.current.insert(k("t1"), local("w1"));
        // Without the record saying so, the push follows its stream.
        assert_eq!(place(&v)[&k("t1")], local("w2"));
        v.resumed_from.insert(k("cam"), "w1".into());
        let forwarded = Placement {
            worker: "w1".into(),
            source: SourceRef::Forwarded {
                from_worker: "w2".into(),
            },
        };
        assert_eq!(place(&v)[&k("t1")], forwarded);
        assert_eq!(
            forwards(&v, &place(&v)),
            [("w2".to_string(), "w1".to_string(), k("cam"))]
                .into_iter()
                .collect()
        );
        // The worker it was on is gone: the push goes to the stream.
        v.workers.remove("w1");
        assert_eq!(place(&v)[&k("t1")], local("w2"));
    }

    #[test]
    fn nobody_has_room_the_ingest_worker_takes_it() {
        let view = View {
            tasks: vec![task("a", "s1"), task("b", "s1")],
            workers: [worker("w1", 1)].into(),
            streams: [(k("s1"), "w1".to_string())].into(),
            current: BTreeMap::new(),
            resumed_from: BTreeMap::new(),
        };
        let plan = place(&view);
        assert_eq!(plan.len(), 2);
        assert!(plan.values().all(|p| *p == local("w1")));
    }

    #[test]
    fn valid_placements_stick_and_dead_workers_lose_theirs() {
        let mut view = View {
            tasks: vec![task("a", "s1"), task("b", "s1")],
            workers: [worker("w1", 1), worker("w2", 0), worker("w3", 0)].into(),
            streams: [(k("s1"), "w1".to_string())].into(),
            current: BTreeMap::new(),
            resumed_from: BTreeMap::new(),
        };
        // b sits on w3 via a forward; the least-loaded rule alone would pick w2.
        view.current.insert(k("a"), local("w1"));
        let b_on_w3 = Placement {
            worker: "w3".into(),
            source: SourceRef::Forwarded {
                from_worker: "w1".into(),
            },
        };
        view.current.insert(k("b"), b_on_w3.clone());
        let plan = place(&view);
        assert_eq!(plan.get(&k("b")), Some(&b_on_w3), "no churn");
        // The stream moves to w2 (w1 died, the encoder reconnected): both follow it.
        view.workers.remove("w1");
        view.streams.insert(k("s1"), "w2".into());
        let plan = place(&view);
        assert_eq!(plan.get(&k("a")), Some(&local("w2")));
        assert_eq!(plan.get(&k("b")), Some(&local("w2")));
    }

    #[test]
    fn a_draining_worker_takes_no_overflow_but_keeps_its_own_streams() {
        let (w1, mut w2) = (worker("w1", 1), worker("w2", 0));
        w2.1.draining = true;
        let view = View {
            tasks: vec![task("a", "s1"), task("b", "s1"), task("c", "s2")],
            workers: [w1, w2, worker("w3", 0)].into(),
            streams: [(k("s1"), "w1".to_string()), (k("s2"), "w2".to_string())].into(),
            current: BTreeMap::new(),
            resumed_from: BTreeMap::new(),
        };
        let plan = place(&view);
        assert_eq!(plan.get(&k("a")), Some(&local("w1")));
        assert_eq!(
            plan.get(&k("b")).map(|p| p.worker.as_str()),
            Some("w3"),
            "not the draining w2"
        );
        // Its own stream still pushes from it (overloaded beats not pushing).
        assert_eq!(plan.get(&k("c")), Some(&local("w2")));
    }

    #[test]
    fn a_stream_on_an_unregistered_worker_places_nothing() {
        let view = View {
            tasks: vec![task("a", "s1")],
            workers: [worker("w2", 0)].into(),
            streams: [(k("s1"), "gone".to_string())].into(),
            current: BTreeMap::new(),
            resumed_from: BTreeMap::new(),
        };
        assert!(place(&view).is_empty());
    }
}
