//! What a pass must change: a pure function from what is stored ([`Current`]) and what
//! [`placement::place`](super::placement::place) wants ([`Plan`]) to the writes
//! ([`Change`]), so every rule is unit-tested without a store.
//!
//! Rules:
//! - an assignment whose worker, source and spec are as planned is left alone (it is part
//!   of its worker's whole set, which a new leader sends);
//! - a task planned on the worker it is on gets the new spec or source under the same
//!   key, its generation bumped;
//! - a task planned elsewhere moves: a put on the new worker's key and a delete of the old
//!   one, in one transaction;
//! - an assignment whose task is not in the plan (gone, no longer live, on a dead worker)
//!   is removed;
//! - the forwards the plan needs are created, the others removed.

use std::collections::{BTreeMap, BTreeSet};

use pushcast_proto::keys;
use pushcast_proto::model::{Assignment, Forward, TaskSpec, WorkerInfo};

use super::placement::{Key, Placement};

/// Where each placed task should run.
pub type Plan = BTreeMap<Key, Placement>;

/// An assignment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its store key (`assign/{worker}/...`).
    pub key: String,
    pub worker: String,
    pub assignment: Assignment,
}

/// What the store holds now.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// Assignments by task.
    pub assignments: BTreeMap<Key, Stored>,
    /// Store keys of the forwards.
    pub forwards: BTreeSet<String>,
}

/// One write of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Put `assignment` at `key` (on `worker`), and delete `replaces` (the task's
    /// assignment on another worker) in the same transaction.
    Assign {
        key: String,
        worker: String,
        assignment: Assignment,
        replaces: Option<(String, String)>,
    },
    /// Delete the assignment at `key` (on `worker`).
    Unassign { key: String, worker: String },
    /// Put a forward at `key`, sent by `from`.
    AddForward {
        key: String,
        from: String,
        forward: Forward,
    },
    /// Delete the forward at `key`.
    RemoveForward { key: String },
}

/// The outcome of [`diff`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff<'a> {
    pub changes: Vec<Change>,
    /// Assignments that stay as they are: still part of their workers' whole sets.
    pub unchanged: Vec<&'a Stored>,
}

/// The writes that turn `current` into `plan`. `tasks` are the task specs by task,
/// `workers` the registered workers (a forward needs its receiver's address), `forwards`
/// what [`placement::forwards`](super::placement::forwards) says the plan needs.
pub fn diff<'a>(
    tasks: &BTreeMap<Key, &TaskSpec>,
    workers: &BTreeMap<String, WorkerInfo>,
    current: &'a Current,
    plan: &Plan,
    forwards: &BTreeSet<(String, String, Key)>,
) -> Diff<'a> {
    let mut out = Diff::default();
    for (task, p) in plan {
        let Some(spec) = tasks.get(task) else {
            continue;
        };
        let (replaces, generation) = match current.assignments.get(task) {
            Some(s)
                if s.worker == p.worker
                    && s.assignment.source == p.source
                    && s.assignment.spec == **spec =>
            {
                out.unchanged.push(s);
                continue;
            }
            Some(s) => (
                Some((s.key.clone(), s.worker.clone())),
                s.assignment.generation + 1,
            ),
            None => (None, 1),
        };
        let key = keys::assignment(&p.worker, &task.0, &task.1, &task.2);
        out.changes.push(Change::Assign {
            replaces: replaces.filter(|(old, _)| *old != key),
            key,
            worker: p.worker.clone(),
            assignment: Assignment {
                spec: (*spec).clone(),
                source: p.source.clone(),
                generation,
            },
        });
    }
    for (task, s) in &current.assignments {
        if !plan.contains_key(task) {
            out.changes.push(Change::Unassign {
                key: s.key.clone(),
                worker: s.worker.clone(),
            });
        }
    }
    let mut stale = current.forwards.clone();
    for (from, to, (v, a, s)) in forwards {
        let key = keys::forward(from, to, v, a, s);
        if stale.remove(&key) {
            continue;
        }
        let Some(receiver) = workers.get(to) else {
            continue;
        };
        out.changes.push(Change::AddForward {
            key,
            from: from.clone(),
            forward: Forward {
                vhost: v.clone(),
                app: a.clone(),
                stream: s.clone(),
                to_worker: to.clone(),
                to_rtmp_addr: receiver.rtmp_addr.clone(),
            },
        });
    }
    out.changes
        .extend(stale.into_iter().map(|key| Change::RemoveForward { key }));
    out
}

#[cfg(test)]
mod tests {
    use pushcast_proto::destination::Destination;
    use pushcast_proto::model::{Protocol, SourceRef, StreamSelector};

    use super::*;

    fn spec(id: &str, key: &str) -> TaskSpec {
        let stream = StreamSelector {
            name: "cam".into(),
            ..Default::default()
        };
        let d = Destination::parse(Protocol::Rtmp, "rtmp://h/live", key, vec![]).expect("valid");
        TaskSpec::new(id.into(), "v".into(), "a".into(), stream, 0, vec![d]).expect("spec")
    }

    fn task(id: &str) -> Key {
        ("v".into(), "a".into(), id.into())
    }

    fn local(worker: &str) -> Placement {
        Placement {
            worker: worker.into(),
            source: SourceRef::Local,
        }
    }

    fn stored(worker: &str, spec: &TaskSpec, generation: u64) -> Stored {
        Stored {
            key: keys::assignment(worker, "v", "a", &spec.id),
            worker: worker.into(),
            assignment: Assignment {
                spec: spec.clone(),
                source: SourceRef::Local,
                generation,
            },
        }
    }

    fn workers(names: &[&str]) -> BTreeMap<String, WorkerInfo> {
        names
            .iter()
            .map(|n| {
                let info = WorkerInfo {
                    node_id: n.to_string(),
                    grpc_addr: format!("{n}:9100"),
                    rtmp_addr: format!("{n}:1935"),
                    rtmps_addr: None,
                    max_sessions: 0,
                    draining: false,
                };
                (n.to_string(), info)
            })
            .collect()
    }

    fn run<'a>(specs: &[&TaskSpec], current: &'a Current, plan: &Plan) -> Diff<'a> {
        let tasks = specs.iter().map(|s| (task(&s.id), *s)).collect();
        diff(
            &tasks,
            &workers(&["w1", "w2"]),
            current,
            plan,
            &BTreeSet::new(),
        )
    }

    #[test]
    fn an_assignment_as_planned_is_left_alone() {
        let t = spec("t", "k");
        let mut current = Current::default();
        current.assignments.insert(task("t"), stored("w1", &t, 4));
        let plan = Plan::from([(task("t"), local("w1"))]);
        let d = run(&[&t], &current, &plan);
        assert!(d.changes.is_empty(), "{d:?}");
        assert_eq!(d.unchanged, vec![&stored("w1", &t, 4)]);
    }

    #[test]
    fn a_new_task_is_assigned_at_generation_one() {
        let t = spec("t", "k");
        let plan = Plan::from([(task("t"), local("w1"))]);
        let none = Current::default();
        let d = run(&[&t], &none, &plan);
        let Change::Assign {
            key,
            worker,
            assignment,
            replaces,
        } = &d.changes[0]
        else {
            panic!("{d:?}")
        };
        assert_eq!((key.as_str(), worker.as_str()), ("assign/w1/v/a/t", "w1"));
        assert_eq!((assignment.generation, replaces), (1, &None));
        assert_eq!(assignment.spec, t);
        assert_eq!(d.changes.len(), 1);
    }

    #[test]
    fn a_changed_spec_is_rewritten_in_place_with_the_next_generation() {
        let (old, new) = (spec("t", "k"), spec("t", "k2"));
        let mut current = Current::default();
        current.assignments.insert(task("t"), stored("w1", &old, 4));
        let plan = Plan::from([(task("t"), local("w1"))]);
        let d = run(&[&new], &current, &plan);
        assert_eq!(
            d.changes,
            vec![Change::Assign {
                key: "assign/w1/v/a/t".into(),
                worker: "w1".into(),
                assignment: Assignment {
                    spec: new.clone(),
                    source: SourceRef::Local,
                    generation: 5,
                },
                replaces: None,
            }]
        );
        assert!(d.unchanged.is_empty());
    }

    #[test]
    fn a_moved_task_is_put_on_its_new_worker_and_deleted_from_the_old() {
        let t = spec("t", "k");
        let mut current = Current::default();
        current.assignments.insert(task("t"), stored("w1", &t, 2));
        let forwarded = Placement {
            worker: "w2".into(),
            source: SourceRef::Forwarded {
                from_worker: "w1".into(),
            },
        };
        let d = run(&[&t], &current, &Plan::from([(task("t"), forwarded)]));
        let [
            Change::Assign {
                key,
                replaces,
                assignment,
                ..
            },
        ] = d.changes.as_slice()
        else {
            panic!("{d:?}")
        };
        assert_eq!(key, "assign/w2/v/a/t");
        assert_eq!(
            replaces,
            &Some(("assign/w1/v/a/t".to_string(), "w1".to_string()))
        );
        assert_eq!(assignment.generation, 3);
    }

    #[test]
    fn assignments_of_unplanned_tasks_are_removed() {
        let t = spec("t", "k");
        let mut current = Current::default();
        current.assignments.insert(task("t"), stored("w1", &t, 1));
        let d = run(&[&t], &current, &Plan::new());
        assert_eq!(
            d.changes,
            vec![Change::Unassign {
                key: "assign/w1/v/a/t".into(),
                worker: "w1".into()
            }]
        );
    }

    #[test]
    fn a_planned_task_without_a_spec_is_not_assigned() {
        let plan = Plan::from([(task("gone"), local("w1"))]);
        let none = Current::default();
        assert_eq!(run(&[], &none, &plan), Diff::default());
    }

    #[test]
    fn forwards_are_added_and_removed() {
        let stream: Key = ("v".into(), "a".into(), "cam".into());
        let kept = keys::forward("w1", "w2", "v", "a", "cam");
        let stale = keys::forward("w1", "w3", "v", "a", "cam");
        let current = Current {
            forwards: BTreeSet::from([kept.clone(), stale.clone()]),
            ..Current::default()
        };
        let wanted = BTreeSet::from([
            ("w1".to_string(), "w2".to_string(), stream.clone()),
            ("w2".to_string(), "w1".to_string(), stream.clone()),
            // The receiver is not registered: no address to forward to.
            ("w1".to_string(), "dead".to_string(), stream.clone()),
        ]);
        let tasks = BTreeMap::new();
        let d = diff(
            &tasks,
            &workers(&["w1", "w2"]),
            &current,
            &Plan::new(),
            &wanted,
        );
        assert_eq!(
            d.changes,
            vec![
                Change::AddForward {
                    key: keys::forward("w2", "w1", "v", "a", "cam"),
                    from: "w2".into(),
                    forward: Forward {
                        vhost: "v".into(),
                        app: "a".into(),
                        stream: "cam".into(),
                        to_worker: "w1".into(),
                        to_rtmp_addr: "w1:1935".into(),
                    },
                },
                Change::RemoveForward { key: stale },
            ]
        );
    }
}
