//! Auto-push rules (OME's StreamMap, without XML): per app, a stream-name pattern and
//! destinations with OME's macros. When a matching stream is live, the rule's task
//! exists; its id is derived from the rule and the stream, so every controller derives
//! the same one (idempotent across restarts and leader changes).
//!
//! This module is the pure part: matching, macro expansion, task ids, and the plan
//! ([`plan`]) that turns an app's rules, its live streams and the rule-made tasks that
//! exist into what to create, change and remove. The controller's loop
//! (`controller/src/rules.rs`) applies it through the API's own paths.

use serde::{Deserialize, Serialize};

use crate::destination::DestinationSpec;

/// One rule of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRule {
    /// Unique in its app: `[A-Za-z0-9_-]`, at most 64 characters.
    pub name: String,
    /// The stream names it applies to: `*` matches any run of characters (`cam*`).
    pub stream: String,
    /// Where matching streams are pushed. `url` and `stream_key` may hold
    /// `${VHostName}`, `${AppName}`, `${SourceStream}`.
    pub destinations: Vec<DestinationSpec>,
    /// The tracks to push (as a task's `stream.trackIds` / `stream.variantNames`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub track_ids: Vec<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variant_names: Vec<String>,
}

/// Most rules an app may have, and destinations a rule may have.
pub const MAX_RULES: usize = 64;
pub const MAX_RULE_DESTINATIONS: usize = 50;

/// Whether `name` matches `pattern` (`*`: any run of characters, possibly empty).
pub fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(p) => p,
        None => return name.is_empty(),
    };
    let Some(mut tail) = name.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return tail.is_empty();
    };
    for part in middle {
        match tail.find(part) {
            Some(i) => tail = &tail[i + part.len()..],
            None => return false,
        }
    }
    tail.len() >= last.len() && tail.ends_with(last)
}

/// `text` with OME's macros replaced.
pub fn expand(text: &str, vhost: &str, app: &str, stream: &str) -> String {
    text.replace("${VHostName}", vhost)
        .replace("${AppName}", app)
        .replace("${SourceStream}", stream)
}

/// The id of the task `rule` makes for `stream`.
pub fn task_id(rule: &str, stream: &str) -> String {
    format!("rule.{rule}.{stream}")
}

/// The destinations `rule` pushes `stream` to, macros expanded.
pub fn destinations_for(
    rule: &PushRule,
    vhost: &str,
    app: &str,
    stream: &str,
) -> Vec<DestinationSpec> {
    rule.destinations
        .iter()
        .map(|d| DestinationSpec {
            protocol: d.protocol,
            url: expand(&d.url, vhost, app, stream),
            stream_key: expand(&d.stream_key, vhost, app, stream),
            variant_names: d.variant_names.clone(),
        })
        .collect()
}

/// What a rule's task should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub id: String,
    pub rule: String,
    pub stream: String,
    pub destinations: Vec<DestinationSpec>,
    pub track_ids: Vec<i64>,
    pub variant_names: Vec<String>,
}

/// A rule-made task as it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub id: String,
    pub rule: String,
    pub stream: String,
    pub destinations: Vec<DestinationSpec>,
    pub track_ids: Vec<i64>,
    pub variant_names: Vec<String>,
}

/// What to do so that the rule-made tasks of an app are what its rules say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<Wanted>,
    /// Existing tasks whose destinations or tracks differ from their rule's now.
    pub change: Vec<(Existing, Wanted)>,
    /// Tasks whose rule is gone or no longer matches their stream.
    pub remove: Vec<Existing>,
}

/// The plan for one app: a task per (rule, live stream it matches); the tasks of
/// streams that are not live stay (reserved, like any task whose stream is gone) as
/// long as their rule still matches, so a stream that comes back finds them.
pub fn plan(
    vhost: &str,
    app: &str,
    rules: &[PushRule],
    live_streams: &[String],
    existing: &[Existing],
) -> Plan {
    let mut out = Plan::default();
    let wanted_for = |rule: &PushRule, stream: &str| Wanted {
        id: task_id(&rule.name, stream),
        rule: rule.name.clone(),
        stream: stream.to_string(),
        destinations: destinations_for(rule, vhost, app, stream),
        track_ids: rule.track_ids.clone(),
        variant_names: rule.variant_names.clone(),
    };
    for rule in rules {
        for stream in live_streams.iter().filter(|s| matches(&rule.stream, s)) {
            let want = wanted_for(rule, stream);
            match existing.iter().find(|e| e.id == want.id) {
                None => out.create.push(want),
                Some(e) if differs(e, &want) => out.change.push((e.clone(), want)),
                Some(_) => {}
            }
        }
    }
    for e in existing {
        match rules.iter().find(|r| r.name == e.rule) {
            Some(rule) if matches(&rule.stream, &e.stream) => {
                // Not live: kept. Live: handled above. Its rule changed while its stream
                // was away: brought up to date now.
                if !live_streams.contains(&e.stream) {
                    let want = wanted_for(rule, &e.stream);
                    if differs(e, &want) {
                        out.change.push((e.clone(), want));
                    }
                }
            }
            _ => out.remove.push(e.clone()),
        }
    }
    out
}

fn differs(e: &Existing, w: &Wanted) -> bool {
    e.destinations != w.destinations
        || e.track_ids != w.track_ids
        || e.variant_names != w.variant_names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn rule(name: &str, stream: &str, keys: &[&str]) -> PushRule {
        PushRule {
            name: name.into(),
            stream: stream.into(),
            destinations: keys
                .iter()
                .map(|k| DestinationSpec {
                    protocol: Protocol::Rtmp,
                    url: "rtmp://h/${AppName}".into(),
                    stream_key: (*k).into(),
                    variant_names: vec![],
                })
                .collect(),
            track_ids: vec![],
            variant_names: vec![],
        }
    }

    fn existing(w: &Wanted) -> Existing {
        Existing {
            id: w.id.clone(),
            rule: w.rule.clone(),
            stream: w.stream.clone(),
            destinations: w.destinations.clone(),
            track_ids: w.track_ids.clone(),
            variant_names: w.variant_names.clone(),
        }
    }

    #[test]
    fn patterns() {
        for (p, n, m) in [
            ("cam*", "cam1", true),
            ("cam*", "cam", true),
            ("cam*", "xcam", false),
            ("*", "anything", true),
            ("a*b*c", "a-b-c", true),
            ("a*b*c", "a-c-b", false),
            ("*.main", "show.main", true),
            ("exact", "exact", true),
            ("exact", "exact2", false),
            ("a*a", "a", false),
        ] {
            assert_eq!(matches(p, n), m, "{p} {n}");
        }
    }

    #[test]
    fn macros_and_ids() {
        assert_eq!(
            expand(
                "rtmp://x/${VHostName}/${AppName}/${SourceStream}",
                "v",
                "a",
                "s"
            ),
            "rtmp://x/v/a/s"
        );
        assert_eq!(task_id("yt", "cam1"), "rule.yt.cam1");
    }

    #[test]
    fn live_matching_streams_get_tasks_and_edits_change_them_in_place() {
        let rules = [rule(
            "yt",
            "cam*",
            &["${SourceStream}-a", "${SourceStream}-b"],
        )];
        let live = ["cam1".to_string(), "cam2".to_string(), "other".to_string()];
        let p = plan("v", "live", &rules, &live, &[]);
        assert_eq!(p.create.len(), 2);
        assert_eq!(p.create[0].id, "rule.yt.cam1");
        assert_eq!(p.create[0].destinations[1].stream_key, "cam1-b");
        assert_eq!(p.create[0].destinations[0].url, "rtmp://h/live");
        let made: Vec<Existing> = p.create.iter().map(existing).collect();
        assert_eq!(
            plan("v", "live", &rules, &live, &made),
            Plan::default(),
            "idempotent"
        );
        // A third destination: both tasks change in place.
        let edited = [rule(
            "yt",
            "cam*",
            &["${SourceStream}-a", "${SourceStream}-b", "c"],
        )];
        let p = plan("v", "live", &edited, &live, &made);
        assert_eq!((p.create.len(), p.change.len(), p.remove.len()), (0, 2, 0));
        // A stream that is not live keeps its task; a rule removed or narrowed removes.
        let p = plan("v", "live", &rules, &["cam1".to_string()], &made);
        assert_eq!(p, Plan::default());
        let narrowed = [rule(
            "yt",
            "cam1",
            &["${SourceStream}-a", "${SourceStream}-b"],
        )];
        let p = plan("v", "live", &narrowed, &live, &made);
        assert_eq!(
            p.remove.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["rule.yt.cam2"]
        );
        let p = plan("v", "live", &[], &live, &made);
        assert_eq!(p.remove.len(), 2);
    }
}
