//! Helpers for the built-in SIEM formats ([`super::formats`]), usable in any template too.
//! They accept missing fields (a format degrades gracefully when an event lacks a field).
//!
//! | helper | result |
//! |---|---|
//! | `cef_header v` | `v` escaped for a CEF header field: `\` → `\\`, `\|` → `\\|`, line breaks → space |
//! | `cef v` | `v` escaped for a CEF extension value: `\` → `\\`, `=` → `\=`, LF → `\n`, CR → `\r` |
//! | `leef_header v` | `v` escaped for a LEEF header field (as `cef_header`) |
//! | `leef v` | `v` escaped for a LEEF 2.0 attribute value with the `^` delimiter: `\` → `\\`, `^` → `\^`, LF → `\n`, CR → `\r`, tab → `\t` |
//! | `epoch_ms a b ...` | the first of its arguments that is a time (RFC 3339 or epoch), in ms since the epoch |
//! | `epoch_s a b ...` | the same in seconds, with milliseconds as decimals |
//! | `iso_time a b ...` | the same as RFC 3339 UTC with milliseconds |
//! | `event_json` | the event as it came (without `_kafka`), as JSON text |
//! | `ecs_category action`, `ecs_type action`, `ecs_outcome outcome` | ECS categorisation |
//! | `ocsf action outcome` | the OCSF class and activity of an action (see the README's mapping) |
//!
//! Times: a format's `time` falls back from the event's `timestamp` to the Kafka message's.

use handlebars::{
    Context, Handlebars, Helper, HelperDef, PathAndJson, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde_json::{json, Map, Value};

use super::helpers::{parse_time, text};

/// Registers the format helpers on `hb`.
pub fn register(hb: &mut Handlebars<'_>) {
    for (name, f) in [
        ("cef_header", cef_header as Lenient),
        ("cef", cef),
        ("leef_header", cef_header),
        ("leef", leef),
        ("epoch_ms", epoch_ms),
        ("epoch_s", epoch_s),
        ("iso_time", iso_time),
        ("ecs_category", ecs_category),
        ("ecs_type", ecs_type),
        ("ecs_outcome", ecs_outcome),
        ("ocsf", ocsf),
    ] {
        hb.register_helper(name, Box::new(LenientHelper(name, f)));
    }
    hb.register_helper("event_json", Box::new(EventJson));
}

/// Every helper this module registers (for `validate`'s check of helper names).
pub const NAMES: &[&str] = &[
    "cef_header",
    "cef",
    "leef_header",
    "leef",
    "epoch_ms",
    "epoch_s",
    "iso_time",
    "ecs_category",
    "ecs_type",
    "ecs_outcome",
    "ocsf",
    "event_json",
];

/// A helper over its arguments' values, a missing field being `null`.
type Lenient = fn(&[Value]) -> Result<Value, String>;

struct LenientHelper(&'static str, Lenient);

impl HelperDef for LenientHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let args: Vec<Value> = h.params().iter().map(value).collect();
        (self.1)(&args)
            .map(ScopedJson::Derived)
            .map_err(|msg| RenderErrorReason::Other(format!("{}: {msg}", self.0)).into())
    }
}

fn value(p: &PathAndJson<'_>) -> Value {
    if p.is_value_missing() {
        Value::Null
    } else {
        p.value().clone()
    }
}

fn first(args: &[Value]) -> String {
    args.first().map(text).unwrap_or_default()
}

/// Escapes a CEF (or LEEF) header field.
pub fn escape_cef_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a CEF extension value.
pub fn escape_cef_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a LEEF 2.0 attribute value for the `^` delimiter.
pub fn escape_leef_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '^' => out.push_str("\\^"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

fn cef_header(args: &[Value]) -> Result<Value, String> {
    Ok(Value::String(escape_cef_header(&first(args))))
}

fn cef(args: &[Value]) -> Result<Value, String> {
    Ok(Value::String(escape_cef_value(&first(args))))
}

fn leef(args: &[Value]) -> Result<Value, String> {
    Ok(Value::String(escape_leef_value(&first(args))))
}

/// The first argument that reads as a time.
fn first_time(args: &[Value]) -> Result<chrono::DateTime<chrono::Utc>, String> {
    args.iter()
        .filter(|v| !v.is_null())
        .find_map(|v| parse_time(v).ok())
        .ok_or_else(|| "none of its arguments is a time (RFC 3339 or epoch)".to_string())
}

fn epoch_ms(args: &[Value]) -> Result<Value, String> {
    Ok(json!(first_time(args)?.timestamp_millis()))
}

fn epoch_s(args: &[Value]) -> Result<Value, String> {
    let ms = first_time(args)?.timestamp_millis();
    // Exact to the millisecond: 1700000000.123, never 1700000000.12299999.
    let text = format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn iso_time(args: &[Value]) -> Result<Value, String> {
    Ok(Value::String(
        first_time(args)?.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    ))
}

/// `{{event_json}}`: the event as it came, without `_kafka`.
struct EventJson;

impl HelperDef for EventJson {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        _: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let out = match ctx.data() {
            Value::Object(map) => {
                let original: Map<String, Value> = map
                    .iter()
                    .filter(|(k, _)| k.as_str() != "_kafka")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Value::Object(original).to_string()
            }
            other => other.to_string(),
        };
        Ok(ScopedJson::Derived(Value::String(out)))
    }
}

/// The action's verb: `recipe.updated` -> `updated`.
fn verb(action: &str) -> &str {
    action.rsplit('.').next().unwrap_or(action)
}

/// The action's object: `recipe.updated` -> `recipe`.
fn object(action: &str) -> &str {
    action.split('.').next().unwrap_or(action)
}

/// ECS `event.category` and the `event.type` values that category allows.
fn ecs(action: &str) -> (&'static str, Vec<&'static str>) {
    match (object(action), verb(action)) {
        (_, "login" | "login_failed") => ("authentication", vec!["start"]),
        (_, "logout") => ("authentication", vec!["end"]),
        ("user" | "role" | "group" | "api_key" | "secret", v) => (
            "iam",
            match v {
                "created" | "invited" => vec!["creation"],
                "deleted" | "revoked" => vec!["deletion"],
                "role_changed" | "role_granted" | "role_revoked" => vec!["user", "change"],
                "accessed" | "viewed" | "read" => vec!["info"],
                _ => vec!["change"],
            },
        ),
        (_, v) => (
            "configuration",
            match v {
                "created" => vec!["creation"],
                "deleted" => vec!["deletion"],
                "accessed" | "viewed" | "read" | "exported" => vec!["access"],
                _ => vec!["change"],
            },
        ),
    }
}

fn ecs_category(args: &[Value]) -> Result<Value, String> {
    Ok(json!([ecs(&first(args)).0]))
}

fn ecs_type(args: &[Value]) -> Result<Value, String> {
    Ok(json!(ecs(&first(args)).1))
}

fn ecs_outcome(args: &[Value]) -> Result<Value, String> {
    Ok(json!(match first(args).as_str() {
        "success" => "success",
        "failure" => "failure",
        _ => "unknown",
    }))
}

/// OCSF class and activity for an action and outcome. The mapping:
/// - `*.login`, `*.logout`, `*.login_failed`: Authentication (3002), Logon 1 / Logoff 2;
/// - `user.*` changes: Account Change (3001): created 1, enabled 2, password_changed 3,
///   password_reset 4, disabled/suspended 5, deleted 6, role_changed/role_granted 7 (Attach
///   Policy), role_revoked 8, locked 9, mfa_enabled 10, mfa_disabled 11, otherwise 99;
/// - everything else: API Activity (6003): created/invited 1 (Create), accessed/viewed/read/
///   exported 2 (Read), deleted/revoked 4 (Delete), other verbs 3 (Update).
fn ocsf(args: &[Value]) -> Result<Value, String> {
    let action = first(args);
    let outcome = args.get(1).map(text).unwrap_or_default();
    let (obj, verb) = (object(&action), verb(&action));
    let (class_uid, class_name, category_uid, category_name, activity_id, activity_name) =
        match (obj, verb) {
            (_, "login" | "login_failed") => (
                3002,
                "Authentication",
                3,
                "Identity & Access Management",
                1,
                "Logon",
            ),
            (_, "logout") => (
                3002,
                "Authentication",
                3,
                "Identity & Access Management",
                2,
                "Logoff",
            ),
            ("user", v) => {
                let (id, name) = match v {
                    "created" | "invited" => (1, "Create"),
                    "enabled" => (2, "Enable"),
                    "password_changed" => (3, "Password Change"),
                    "password_reset" => (4, "Password Reset"),
                    "disabled" | "suspended" => (5, "Disable"),
                    "deleted" => (6, "Delete"),
                    "role_changed" | "role_granted" => (7, "Attach Policy"),
                    "role_revoked" => (8, "Detach Policy"),
                    "locked" => (9, "Lock"),
                    "mfa_enabled" => (10, "MFA Factor Enable"),
                    "mfa_disabled" => (11, "MFA Factor Disable"),
                    _ => (99, "Other"),
                };
                (
                    3001,
                    "Account Change",
                    3,
                    "Identity & Access Management",
                    id,
                    name,
                )
            }
            (_, v) => {
                let (id, name) = match v {
                    "created" | "invited" => (1, "Create"),
                    "accessed" | "viewed" | "read" | "exported" => (2, "Read"),
                    "deleted" | "revoked" => (4, "Delete"),
                    _ => (3, "Update"),
                };
                (6003, "API Activity", 6, "Application Activity", id, name)
            }
        };
    let (status_id, status) = match outcome.as_str() {
        "success" => (1, "Success"),
        "failure" => (2, "Failure"),
        _ => (0, "Unknown"),
    };
    Ok(json!({
        "class_uid": class_uid, "class_name": class_name,
        "category_uid": category_uid, "category_name": category_name,
        "activity_id": activity_id, "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "status_id": status_id, "status": status,
    }))
}
