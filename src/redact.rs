//! Redaction per sink: fields removed or pseudonymised before the sink's template sees the
//! event.
//!
//! - `redact = ["metadata.ip", "changes.*.old"]` removes those fields; `*` stands for any one
//!   key of an object (or item of an array).
//! - `pseudonymise = ["actor.id"]` replaces each value with a keyed HMAC-SHA256 token (32 hex
//!   characters), so the same person maps to the same token in every event and every sink with
//!   the same key, without being readable. The key comes from the configuration
//!   (`pseudonymise_key`, usually `${ENV}`); without the key no one can link a token to a value.
//!
//! Sinks without these settings render the event as it is, at no cost; the others render a
//! copy.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::config::Privacy;

/// A sink's redaction, compiled.
#[derive(Clone)]
pub struct Redactor {
    redact: Vec<Vec<String>>,
    pseudonymise: Vec<Vec<String>>,
    key: Vec<u8>,
}

impl Redactor {
    /// `None` when the sink hides nothing.
    pub fn new(p: &Privacy) -> Option<Self> {
        if p.is_empty() {
            return None;
        }
        let split = |paths: &[String]| -> Vec<Vec<String>> {
            paths
                .iter()
                .map(|p| p.split('.').map(str::to_string).collect())
                .collect()
        };
        Some(Self {
            redact: split(&p.redact),
            pseudonymise: split(&p.pseudonymise),
            key: p
                .key
                .as_ref()
                .map(|k| k.expose().as_bytes().to_vec())
                .unwrap_or_default(),
        })
    }

    /// Applies the rules to an event's fields.
    pub fn apply(&self, event: &mut Value) {
        for path in &self.redact {
            remove(event, path);
        }
        for path in &self.pseudonymise {
            replace(event, path, &|v| Value::String(self.token(v)));
        }
    }

    /// The token of a value: HMAC-SHA256 over its text (strings as they are, others as JSON).
    pub fn token(&self, v: &Value) -> String {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            // HMAC takes keys of any length; this cannot happen.
            return String::new();
        };
        mac.update(text.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

/// The children of `v` that `segment` names.
fn children<'a>(v: &'a mut Value, segment: &str) -> Vec<&'a mut Value> {
    match (v, segment) {
        (Value::Object(m), "*") => m.values_mut().collect(),
        (Value::Array(a), "*") => a.iter_mut().collect(),
        (Value::Object(m), key) => m.get_mut(key).into_iter().collect(),
        (Value::Array(a), idx) => idx
            .parse::<usize>()
            .ok()
            .and_then(|i| a.get_mut(i))
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if let Some((head, rest)) = parents.split_first() {
        for child in children(v, head) {
            remove(child, &[rest, std::slice::from_ref(last)].concat());
        }
        return;
    }
    match (v, last.as_str()) {
        (Value::Object(m), "*") => m.clear(),
        (Value::Object(m), key) => {
            m.remove(key);
        }
        (Value::Array(a), "*") => a.clear(),
        (Value::Array(a), idx) => {
            if let Some(i) = idx.parse::<usize>().ok().filter(|i| *i < a.len()) {
                a[i] = Value::Null;
            }
        }
        _ => {}
    }
}

fn replace(v: &mut Value, path: &[String], f: &dyn Fn(&Value) -> Value) {
    let Some((head, rest)) = path.split_first() else {
        if !v.is_null() {
            *v = f(v);
        }
        return;
    };
    for child in children(v, head) {
        replace(child, rest, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use serde_json::json;

    fn redactor(redact: &[&str], pseudonymise: &[&str]) -> Redactor {
        Redactor::new(&Privacy {
            redact: redact.iter().map(|s| s.to_string()).collect(),
            pseudonymise: pseudonymise.iter().map(|s| s.to_string()).collect(),
            key: Some(Secret::new("a key of sixteen+ chars")),
        })
        .unwrap()
    }

    #[test]
    fn fields_are_removed_with_wildcards() {
        let mut e = json!({
            "metadata": {"ip": "10.0.0.1", "user_agent": "x"},
            "changes": {"role": {"old": "viewer", "new": "admin"}, "name": {"old": "a", "new": "b"}},
            "tags": [{"secret": 1, "k": 2}, {"secret": 3}]
        });
        redactor(
            &[
                "metadata.ip",
                "changes.*.old",
                "tags.*.secret",
                "absent.field",
            ],
            &[],
        )
        .apply(&mut e);
        assert_eq!(
            e,
            json!({
                "metadata": {"user_agent": "x"},
                "changes": {"role": {"new": "admin"}, "name": {"new": "b"}},
                "tags": [{"k": 2}, {}]
            })
        );
    }

    #[test]
    fn pseudonyms_are_stable_keyed_and_unreadable() {
        let r = redactor(&[], &["actor.id"]);
        let mut a = json!({"actor": {"id": "alice@example.com"}});
        let mut b = json!({"actor": {"id": "alice@example.com", "name": "A"}});
        r.apply(&mut a);
        r.apply(&mut b);
        let token = a["actor"]["id"].as_str().unwrap().to_string();
        assert_eq!(token.len(), 32);
        assert!(!token.contains("alice"));
        assert_eq!(
            b["actor"]["id"], a["actor"]["id"],
            "same person, same token"
        );
        let other = Redactor::new(&Privacy {
            redact: vec![],
            pseudonymise: vec!["actor.id".into()],
            key: Some(Secret::new("another key, 16+ chars")),
        })
        .unwrap();
        assert_ne!(other.token(&json!("alice@example.com")), token, "keyed");
        let mut missing = json!({"actor": {}});
        r.apply(&mut missing);
        assert_eq!(missing, json!({"actor": {}}));
    }
}
