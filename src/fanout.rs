//! Fan-out: each event goes to every sink whose `filter` matches it.
//!
//! A filter is a set of `field = glob` rules (`action = "secret.*"`); all rules must match, a
//! rule with a list of globs matches if any does, and a missing field matches nothing. The
//! [`Router`] first computes the set of sinks (so the offset tracker knows who owes the event),
//! then hands the event to each sink's queue. Queues never block the source: their total size
//! is bounded by `pipeline.max_in_flight_events`: the source takes no more messages beyond it.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use wildmatch::WildMatch;

use crate::config::SinkConfig;
use crate::event::Event;
use crate::offsets::{Pending, Slot};

/// The `filter` of one sink, compiled.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    rules: Vec<(String, Vec<WildMatch>)>,
}

impl Filter {
    pub fn new(config: &SinkConfig) -> Self {
        Self {
            rules: config
                .filter
                .iter()
                .map(|(field, globs)| {
                    let patterns = globs.patterns().iter().map(|p| WildMatch::new(p)).collect();
                    (field.clone(), patterns)
                })
                .collect(),
        }
    }

    /// Whether `fields` (an event's, see [`Event::fields`]) pass every rule.
    pub fn matches(&self, fields: &Value) -> bool {
        self.rules.iter().all(|(field, globs)| {
            let text = match crate::event::lookup(fields, field) {
                Some(Value::String(s)) => s.clone(),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
                _ => return false,
            };
            globs.iter().any(|g| g.matches(&text))
        })
    }

    /// A filter without rules takes every event without looking at it.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// One sink's entry: its slot, filter and queue.
pub struct Route {
    pub slot: Slot,
    pub filter: Filter,
    pub queue: UnboundedSender<Arc<Event>>,
    /// The sink's status, whose queue length the route counts up (the worker counts down).
    pub status: Arc<crate::status::SinkStatus>,
}

/// All routes, in configuration order.
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }

    /// The sinks this event goes to. The event is parsed here only when some sink has a
    /// filter, and the tree is dropped at once (events wait in the queues as text).
    pub fn matching(&self, event: &Event) -> Pending {
        let fields = if self.routes.iter().all(|r| r.filter.is_empty()) {
            None
        } else {
            // An event whose tree does not parse goes to every sink, which quarantines it
            // when it fails to render: filtered out, it would be lost without a trace.
            event.fields().ok()
        };
        self.routes
            .iter()
            .filter(|r| match &fields {
                Some(f) => r.filter.matches(f),
                None => true,
            })
            .fold(Pending::NONE, |p, r| p.with(r.slot))
    }

    /// Queues the event for each sink in `to`. A sink whose worker has stopped keeps the event
    /// pending (its offset is never committed); the pipeline notices the stopped worker.
    pub fn send(&self, event: Arc<Event>, to: Pending) {
        for r in self.routes.iter().filter(|r| to.contains(r.slot)) {
            // Counted before it is sent: the worker may render it and count it off at once,
            // and a count that went below zero (saturating) would stay one too high.
            r.status.add_queued(1);
            if r.queue.send(event.clone()).is_err() {
                r.status.sub_queued(1);
                tracing::error!(slot = ?r.slot, "a sink worker has stopped; its events stay uncommitted");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::parse_str;
    use crate::decode::decode;
    use crate::event::RawMessage;

    fn event(json: &str) -> Value {
        decode(RawMessage::for_test(json.as_bytes()), 1 << 20)
            .unwrap()
            .fields()
            .unwrap()
    }

    fn filter(rules: &str) -> Filter {
        let text = format!(
            "[kafka]\nbrokers=\"b\"\ntopics=[\"t\"]\n[[sinks]]\nname=\"s\"\ntype=\"stdout\"\nfilter = {rules}\n"
        );
        let c = parse_str(&text, "t", &|_| None).unwrap();
        Filter::new(&c.sinks[0])
    }

    #[test]
    fn all_rules_must_match_and_any_glob_in_a_list() {
        let f = filter(r#"{ action = "secret.*", "actor.type" = ["user", "ai_*"] }"#);
        assert!(f.matches(&event(
            r#"{"action":"secret.rotated","actor":{"type":"user"}}"#
        )));
        assert!(f.matches(&event(
            r#"{"action":"secret.read","actor":{"type":"ai_agent"}}"#
        )));
        assert!(!f.matches(&event(
            r#"{"action":"recipe.updated","actor":{"type":"user"}}"#
        )));
        assert!(!f.matches(&event(
            r#"{"action":"secret.read","actor":{"type":"system"}}"#
        )));
        assert!(
            !f.matches(&event(r#"{"action":"secret.read"}"#)),
            "missing field"
        );
    }

    #[test]
    fn numbers_and_booleans_match_as_text_and_no_filter_matches_all() {
        let f = filter(r#"{ "_kafka.partition" = "0", sensitive = "true" }"#);
        assert!(f.matches(&event(r#"{"sensitive":true}"#)));
        assert!(!f.matches(&event(r#"{"sensitive":false}"#)));
        assert!(filter("{}").matches(&event("{}")));
    }
}
