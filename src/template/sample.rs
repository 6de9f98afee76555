//! The sample event templates are test-rendered on by `validate` and at start-up: an audit event
//! with every documented field (see the README's event reference), plus `_kafka`. Users whose
//! events carry other fields point `pipeline.sample_event` at one of their own.

use std::path::Path;

use serde_json::{json, Value};

/// The built-in sample audit event, as templates see it (with `_kafka`).
pub fn builtin() -> Value {
    json!({
        "id": "3f6c2a1e-8b7d-4c55-9a0e-2d41b7c9e001",
        "timestamp": "2026-01-15T09:30:12.345Z",
        "workspace": "ws-1",
        "actor": {"type": "user", "id": "u-1", "name": "Ada Lovelace"},
        "action": "recipe.updated",
        "outcome": "success",
        "entity": {"type": "recipe", "id": "r-9", "name": "Onboard new hire"},
        "changes": {"status": {"old": "stopped", "new": "running"}},
        "metadata": {"ip": "10.0.0.1", "user_agent": "Mozilla/5.0", "request_id": "req-7f3a"},
        "_kafka": kafka_fields(),
    })
}

fn kafka_fields() -> Value {
    json!({
        "topic": "audit-events", "partition": 0, "offset": 0,
        "timestamp": "2026-01-15T09:30:12.400Z", "key": "ws-1", "headers": {}
    })
}

/// Reads a sample event from a JSON file, adding `_kafka` when it has none.
pub fn from_file(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(mut map)) => {
            map.entry("_kafka").or_insert_with(kafka_fields);
            Ok(Value::Object(map))
        }
        Ok(_) => Err(format!("{} does not hold a JSON object", path.display())),
        Err(e) => Err(format!("{} is not JSON: {e}", path.display())),
    }
}
