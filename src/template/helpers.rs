//! The handlebars helpers every template can use.
//!
//! | helper | example | result |
//! |---|---|---|
//! | `json` | `{{json actor}}` | the value as JSON: strings quoted and escaped, objects serialised |
//! | `default` | `{{default actor.name "unknown"}}` | the value, or the fallback when missing or null |
//! | `date` | `{{date timestamp "%Y/%m/%d"}}` | an RFC 3339 string or epoch seconds/millis, formatted in UTC |
//! | `upper`, `lower` | `{{upper action}}` | the text in upper or lower case |
//! | `truncate` | `{{truncate metadata.user_agent 40 "…"}}` | at most N characters, with an optional suffix |
//! | `mask` | `{{mask metadata.ip 3}}` | every character but the last N (default 4) replaced by `*` |
//! | `hash` | `{{hash actor.id}}` | SHA-256 of the text, hex (unkeyed: use the sink's `pseudonymise` for personal data) |
//!
//! Templates run in strict mode: a missing field is an error unless it goes through `default`
//! (or `#if`). Every helper returns a value, so they nest: `{{json (default actor.name null)}}`.

use chrono::{DateTime, Utc};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, PathAndJson, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde_json::Value;

/// Every helper a template may call: handlebars' own and ours. [`super::Templates::compile`]
/// checks each template against this list, so a misspelt helper in a branch the sample event
/// does not take is still reported before the daemon starts.
pub const NAMES: &[&str] = &[
    // handlebars' built-ins
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len", // ours (registered below)
    "json", "date", "upper", "lower", "truncate", "default", "mask", "hash",
];

/// Registers every helper on `hb`.
pub fn register(hb: &mut Handlebars<'_>) {
    hb.register_helper("json", Box::new(ValueHelper("json", json)));
    hb.register_helper("date", Box::new(ValueHelper("date", date)));
    hb.register_helper("upper", Box::new(ValueHelper("upper", upper)));
    hb.register_helper("lower", Box::new(ValueHelper("lower", lower)));
    hb.register_helper("truncate", Box::new(ValueHelper("truncate", truncate)));
    hb.register_helper("default", Box::new(DefaultHelper));
    hb.register_helper("mask", Box::new(ValueHelper("mask", mask)));
    hb.register_helper("hash", Box::new(ValueHelper("hash", hash)));
}

/// A helper computed from its present (non-missing) parameters.
type Compute = fn(&Value, &[PathAndJson<'_>]) -> Result<Value, String>;

struct ValueHelper(&'static str, Compute);

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let (name, compute) = (self.0, self.1);
        let first = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex(name, 0))?;
        if first.is_value_missing() {
            // Strict mode: a missing field is an error here too, named by its path.
            return Err(RenderErrorReason::MissingVariable(first.relative_path().cloned()).into());
        }
        compute(first.value(), &h.params()[1..])
            .map(ScopedJson::Derived)
            .map_err(|msg| RenderErrorReason::Other(format!("{name}: {msg}")).into())
    }
}

/// `default value fallback`: the value unless it is missing or null.
struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let value = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("default", 0))?;
        let fallback = h
            .param(1)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("default", 1))?;
        let chosen = if value.is_value_missing() || value.value().is_null() {
            fallback.value()
        } else {
            value.value()
        };
        Ok(ScopedJson::Derived(chosen.clone()))
    }
}

fn json(v: &Value, _: &[PathAndJson<'_>]) -> Result<Value, String> {
    serde_json::to_string(v)
        .map(Value::String)
        .map_err(|e| e.to_string())
}

/// Text of a value as a template shows it: strings as they are, null as nothing, others as JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn upper(v: &Value, _: &[PathAndJson<'_>]) -> Result<Value, String> {
    Ok(Value::String(text(v).to_uppercase()))
}

fn lower(v: &Value, _: &[PathAndJson<'_>]) -> Result<Value, String> {
    Ok(Value::String(text(v).to_lowercase()))
}

fn truncate(v: &Value, rest: &[PathAndJson<'_>]) -> Result<Value, String> {
    let max = rest
        .first()
        .and_then(|p| p.value().as_u64())
        .ok_or("give the maximum number of characters, e.g. {{truncate field 80}}")?;
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let suffix = rest.get(1).map(|p| text(p.value())).unwrap_or_default();
    let s = text(v);
    if s.chars().count() <= max {
        return Ok(Value::String(s));
    }
    let mut out: String = s.chars().take(max).collect();
    out.push_str(&suffix);
    Ok(Value::String(out))
}

fn mask(v: &Value, rest: &[PathAndJson<'_>]) -> Result<Value, String> {
    let keep = match rest.first() {
        Some(p) => p
            .value()
            .as_u64()
            .ok_or("give how many characters to keep, e.g. {{mask field 4}}")?,
        None => 4,
    };
    let s = text(v);
    let n = s.chars().count();
    let keep = usize::try_from(keep).unwrap_or(usize::MAX).min(n);
    let masked: String = s
        .chars()
        .enumerate()
        .map(|(i, c)| if i < n - keep { '*' } else { c })
        .collect();
    Ok(Value::String(masked))
}

fn hash(v: &Value, _: &[PathAndJson<'_>]) -> Result<Value, String> {
    use sha2::Digest;
    Ok(Value::String(hex::encode(sha2::Sha256::digest(
        text(v).as_bytes(),
    ))))
}

const DEFAULT_DATE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

fn date(v: &Value, rest: &[PathAndJson<'_>]) -> Result<Value, String> {
    let fmt = match rest.first() {
        Some(p) => p
            .value()
            .as_str()
            .ok_or("the format must be a string such as \"%Y-%m-%d\"")?
            .to_string(),
        None => DEFAULT_DATE_FORMAT.to_string(),
    };
    let t = parse_time(v)?;
    format_time(&t, &fmt).map(Value::String)
}

/// Reads an RFC 3339 string, or a number of seconds (or milliseconds, when it is too large to
/// be seconds) since the epoch.
pub fn parse_time(v: &Value) -> Result<DateTime<Utc>, String> {
    match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("`{s}` is not an RFC 3339 time ({e})")),
        Value::Number(n) => {
            let x = n.as_f64().ok_or("not a number")?;
            let ms = if x.abs() >= 1e11 { x } else { x * 1000.0 };
            if !ms.is_finite() || ms.abs() > 8.64e15 {
                return Err(format!("{n} is out of range for a time"));
            }
            DateTime::from_timestamp_millis(ms as i64).ok_or_else(|| format!("{n} is out of range"))
        }
        other => Err(format!("{other} is not a time")),
    }
}

/// Formats with strftime-style specifiers, rejecting an invalid format instead of panicking.
pub fn format_time(t: &DateTime<Utc>, fmt: &str) -> Result<String, String> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(fmt).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(format!("`{fmt}` is not a valid date format"));
    }
    Ok(t.format_with_items(items.into_iter()).to_string())
}

#[cfg(test)]
mod tests {
    use handlebars::Handlebars;
    use serde_json::json;

    fn hb() -> Handlebars<'static> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        super::register(&mut hb);
        hb
    }

    fn render(t: &str, data: serde_json::Value) -> Result<String, String> {
        hb().render_template(t, &data).map_err(|e| e.to_string())
    }

    #[test]
    fn json_always_emits_valid_json() {
        let data = json!({"s": "a\"b\\c\n</script>", "o": {"k": [1, null]}, "n": 1.5});
        let out = render(
            r#"{"s":{{json s}},"o":{{json o}},"n":{{json n}}}"#,
            data.clone(),
        )
        .unwrap();
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn strict_mode_reports_missing_fields_unless_defaulted() {
        let data = json!({"actor": {"id": "u-1"}});
        assert!(render("{{actor.name}}", data.clone()).is_err());
        assert!(render("{{json actor.name}}", data.clone())
            .unwrap_err()
            .contains("actor.name"));
        assert_eq!(
            render("{{default actor.name \"anon\"}}", data.clone()).unwrap(),
            "anon"
        );
        assert_eq!(
            render("{{json (default actor.name null)}}", data.clone()).unwrap(),
            "null"
        );
        assert_eq!(
            render("{{default actor.id \"anon\"}}", data).unwrap(),
            "u-1"
        );
    }

    #[test]
    fn date_formats_rfc3339_and_epochs_in_utc() {
        let data = json!({"t": "2024-03-01T23:30:00+02:00", "s": 1_700_000_000, "ms": 1_700_000_000_123_i64});
        assert_eq!(
            render("{{date t \"%Y/%m/%d/%H\"}}", data.clone()).unwrap(),
            "2024/03/01/21"
        );
        assert_eq!(
            render("{{date s \"%F %T\"}}", data.clone()).unwrap(),
            "2023-11-14 22:13:20"
        );
        assert_eq!(
            render("{{date ms}}", data.clone()).unwrap(),
            "2023-11-14T22:13:20.123Z"
        );
        assert!(render("{{date t \"%Q\"}}", data.clone()).is_err());
        assert!(render("{{date t \"%\"}}", data).is_err());
    }

    #[test]
    fn text_helpers() {
        let data = json!({"a": "Recipe.Updated", "u": "héllo wörld"});
        assert_eq!(
            render("{{upper a}} {{lower a}}", data.clone()).unwrap(),
            "RECIPE.UPDATED recipe.updated"
        );
        assert_eq!(
            render("{{truncate u 5 \"…\"}}", data.clone()).unwrap(),
            "héllo…"
        );
        assert_eq!(render("{{truncate u 50}}", data).unwrap(), "héllo wörld");
    }

    #[test]
    fn mask_and_hash() {
        let data = json!({"card": "4111111111111111", "ip": "10.0.0.1", "short": "ab"});
        assert_eq!(
            render("{{mask card}}", data.clone()).unwrap(),
            "************1111"
        );
        assert_eq!(render("{{mask ip 1}}", data.clone()).unwrap(), "*******1");
        assert_eq!(render("{{mask short}}", data.clone()).unwrap(), "ab");
        assert_eq!(
            render("{{hash short}}", data).unwrap(),
            "fb8e20fc2e4c3f248c60c39bd652f3c1347298bb977b8b4d5903b85055620603"
        );
    }
}
