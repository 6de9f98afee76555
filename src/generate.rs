//! Realistic generated audit events, for the demo, the tests and the benchmark.
//!
//! Actors of every documented type (people, automations, AI agents, systems, API keys) doing
//! varied things to varied entities, with old and new values and request metadata. The
//! generator is seeded, so a run can be repeated exactly. Every event carries `seq`, its
//! number in the stream, so a test can check that each one arrived, in order.

use serde_json::{json, Value};

const USERS: &[(&str, &str)] = &[
    ("u-1001", "Ada Lovelace"),
    ("u-1002", "Grace Hopper"),
    ("u-1003", "Alan Turing"),
    ("u-1004", "Katherine Johnson"),
    ("u-1005", "Edsger Dijkstra"),
    ("u-1006", "Barbara Liskov"),
    ("u-1007", "Dennis Ritchie"),
    ("u-1008", "Frances Allen"),
];
const AUTOMATIONS: &[(&str, &str)] = &[
    ("rcp-204", "Sync Salesforce leads to NetSuite"),
    ("rcp-311", "Onboard new hire"),
    ("rcp-487", "Nightly invoice export"),
];
const AGENTS: &[(&str, &str)] = &[
    ("agt-7", "Support triage agent"),
    ("agt-9", "Finance reconciliation agent"),
];
const SYSTEMS: &[(&str, &str)] = &[("sys-scheduler", "scheduler"), ("sys-sso", "SSO bridge")];
const API_KEYS: &[(&str, &str)] = &[("key-3f2a", "ci-deploy"), ("key-88c1", "terraform")];

/// (action, entity type, changed field, values)
const ACTIONS: &[(&str, &str, &str, &[&str])] = &[
    ("recipe.created", "recipe", "status", &["draft"]),
    (
        "recipe.updated",
        "recipe",
        "status",
        &["stopped", "running", "draft"],
    ),
    (
        "recipe.started",
        "recipe",
        "status",
        &["stopped", "running"],
    ),
    (
        "recipe.stopped",
        "recipe",
        "status",
        &["running", "stopped"],
    ),
    ("recipe.deleted", "recipe", "deleted", &["false", "true"]),
    (
        "connection.created",
        "connection",
        "auth_type",
        &["oauth2", "api_key"],
    ),
    (
        "connection.updated",
        "connection",
        "scopes",
        &["read", "read write", "admin"],
    ),
    (
        "user.login",
        "user",
        "last_login_ip",
        &["10.0.0.1", "10.0.3.7"],
    ),
    ("user.logout", "user", "session", &["active", "ended"]),
    (
        "user.invited",
        "user",
        "role",
        &["none", "viewer", "analyst"],
    ),
    (
        "user.role_changed",
        "user",
        "role",
        &["viewer", "operator", "admin"],
    ),
    ("secret.created", "secret", "version", &["0", "1"]),
    ("secret.rotated", "secret", "version", &["3", "4", "5"]),
    (
        "secret.accessed",
        "secret",
        "last_accessed_by",
        &["-", "rcp-204"],
    ),
    (
        "workspace.settings_updated",
        "workspace",
        "retention_days",
        &["90", "365", "2555"],
    ),
    ("api_key.created", "api_key", "scopes", &["read", "deploy"]),
    (
        "api_key.revoked",
        "api_key",
        "status",
        &["active", "revoked"],
    ),
    (
        "agent.tool_called",
        "tool",
        "approval",
        &["pending", "approved", "denied"],
    ),
];
const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0 Safari/537.36",
    "auditstream-demo-cli/1.4",
    "terraform-provider/2.9.1",
    "python-requests/2.32",
];

/// A seeded stream of audit events.
pub struct Generator {
    rng: fastrand::Rng,
    seq: u64,
    start_ms: i64,
    workspaces: u32,
}

impl Generator {
    /// A generator seeded with `seed`, spreading events over `workspaces` workspaces.
    pub fn new(seed: u64, workspaces: u32) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            seq: 0,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            workspaces: workspaces.max(1),
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.usize(..items.len())]
    }

    fn uuid(&mut self) -> String {
        let a = self.rng.u64(..);
        let b = self.rng.u64(..);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a & 0xfff) as u16,
            ((b >> 48) as u16 & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    /// The next event, and the key it should be produced with (its workspace, so that one
    /// workspace's events stay in one partition, in order).
    pub fn next_event(&mut self) -> (String, Value) {
        self.seq += 1;
        let seq = self.seq;
        let workspace = format!("ws-{}", 1 + self.rng.u32(..self.workspaces));
        let (actor_type, (actor_id, actor_name)) = match self.rng.u8(..20) {
            0..=10 => ("user", *self.pick(USERS)),
            11..=14 => ("automation", *self.pick(AUTOMATIONS)),
            15..=16 => ("ai_agent", *self.pick(AGENTS)),
            17..=18 => ("system", *self.pick(SYSTEMS)),
            _ => ("api", *self.pick(API_KEYS)),
        };
        let (action, entity_type, field, values) = *self.pick(ACTIONS);
        let old = *self.pick(values);
        let new = *self.pick(values);
        let outcome = if self.rng.u8(..100) < 94 {
            "success"
        } else {
            "failure"
        };
        let at = self.start_ms + seq as i64 * 37 + self.rng.i64(0..30);
        let timestamp = chrono::DateTime::from_timestamp_millis(at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let entity_id = format!("{}-{}", &entity_type[..1], 100 + self.rng.u32(..900));
        let ip = format!(
            "10.{}.{}.{}",
            self.rng.u8(..8),
            self.rng.u8(..255),
            1 + self.rng.u8(..254)
        );
        let user_agent = *self.pick(USER_AGENTS);
        let request_id = format!("req-{:016x}", self.rng.u64(..));
        let event = json!({
            "id": self.uuid(),
            "seq": seq,
            "timestamp": timestamp,
            "workspace": workspace,
            "actor": {"type": actor_type, "id": actor_id, "name": actor_name},
            "action": action,
            "outcome": outcome,
            "entity": {"type": entity_type, "id": entity_id},
            "changes": {field: {"old": old, "new": new}},
            "metadata": {"ip": ip, "user_agent": user_agent, "request_id": request_id},
        });
        (workspace, event)
    }
}

/// Messages that are not valid audit events, one of each kind the decoder rejects, with a
/// label. `max_event_bytes` decides how large "too large" is.
pub fn malformed(max_event_bytes: usize) -> Vec<(&'static str, Option<Vec<u8>>)> {
    let too_large = format!("{{\"pad\":\"{}\"}}", "x".repeat(max_event_bytes + 1));
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    vec![
        (
            "not_json",
            Some(b"user=ada action=login (not JSON)".to_vec()),
        ),
        ("not_an_object", Some(b"[\"an\", \"array\"]".to_vec())),
        ("not_an_object", Some(b"42".to_vec())),
        ("not_utf8", Some(b"{\"actor\":\"\xff\xfe\"}".to_vec())),
        ("too_large", Some(too_large.into_bytes())),
        ("too_deep", Some(deep.into_bytes())),
        ("empty", None),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_varied_complete_and_repeatable() {
        let mut a = Generator::new(7, 4);
        let mut b = Generator::new(7, 4);
        let events: Vec<Value> = (0..200).map(|_| a.next_event().1).collect();
        assert_eq!(events[17], b.nth(17));
        let types: std::collections::BTreeSet<&str> = events
            .iter()
            .map(|e| e["actor"]["type"].as_str().unwrap())
            .collect();
        assert_eq!(types.len(), 5, "{types:?}");
        for e in &events {
            for f in ["id", "timestamp", "workspace", "action", "outcome"] {
                assert!(e[f].is_string(), "{f} in {e}");
            }
            assert!(chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).is_ok());
        }
        assert_eq!(events[9]["seq"], 10);
    }

    impl Generator {
        fn nth(&mut self, n: usize) -> Value {
            (0..n).for_each(|_| {
                self.next_event();
            });
            self.next_event().1
        }
    }
}
