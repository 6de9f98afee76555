//! Templates: how each sink turns an event into the bytes it sends.
//!
//! Every sink's template is compiled once at start-up into one shared handlebars registry:
//! strict mode on (a missing field is an error, not an empty string), HTML escaping off (the
//! `json` helper is how values are quoted), and the helpers of [`helpers`]. A sink uses either a
//! built-in format ([`formats`]) or its own template, inline or from a file.
//!
//! Handlebars reports unknown helpers and missing fields only when it renders, so
//! [`Templates::compile`] also test-renders every template on a sample event: `validate` and
//! start-up catch those mistakes before any event is read. At run time a render error
//! quarantines that event for that sink only.

pub mod formats;
pub mod helpers;
pub mod sample;
pub mod siem;

use std::path::Path;

use handlebars::Handlebars;
use serde_json::Value;

use crate::config::load::Locator;
use crate::config::{ConfigError, RenderSpec, SinkConfig};
use crate::event::Event;

/// How one sink renders.
#[derive(Debug, Clone)]
enum Renderer {
    /// `ndjson`: the event exactly as it came, on one line.
    Passthrough,
    /// A template registered in the shared registry under this name.
    Template(String),
}

/// The compiled templates of every sink, indexed like `config.sinks`.
#[derive(Debug)]
pub struct Templates {
    hb: Handlebars<'static>,
    renderers: Vec<Renderer>,
    /// The registered key template of each S3 sink.
    keys: Vec<Option<String>>,
}

/// A render failure for one event and one sink.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

fn registry() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    helpers::register(&mut hb);
    siem::register(&mut hb);
    hb
}

impl Templates {
    /// Compiles every sink's template and test-renders it on `sample`. Errors name the sink's
    /// key (`sinks[1].template`) and its line, found through `locator`.
    pub fn compile(
        sinks: &[SinkConfig],
        sample: &Value,
        locator: &Locator,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut hb = registry();
        let mut renderers = Vec::with_capacity(sinks.len());
        let mut keys = Vec::with_capacity(sinks.len());
        let mut errors = Vec::new();
        for (i, sink) in sinks.iter().enumerate() {
            keys.push(sink.key_template().map(|source| {
                let name = format!("key:{}", sink.name);
                if let Err(e) = hb.register_template_string(&name, source) {
                    errors.push(locator.sink_error(
                        i,
                        "key",
                        format!("template does not compile: {e}"),
                    ));
                } else if let Some(unknown) = hb.get_template(&name).and_then(unknown_helper) {
                    errors.push(locator.sink_error(i, "key", unknown));
                } else if let Err(e) = hb.render(&name, sample) {
                    errors.push(locator.sink_error(
                        i,
                        "key",
                        format!("template fails on the sample event: {}", describe(&e)),
                    ));
                }
                name
            }));
            let (key, source) = match &sink.render {
                RenderSpec::Format(name) => match formats::lookup(name) {
                    Some(formats::Format::Passthrough) => {
                        renderers.push(Renderer::Passthrough);
                        continue;
                    }
                    Some(formats::Format::Template(f)) => match f.expand(&sink.format_options) {
                        Ok(src) => ("format", src),
                        Err(e) => {
                            errors.push(locator.sink_error(i, "format_options", e));
                            renderers.push(Renderer::Passthrough);
                            continue;
                        }
                    },
                    None => {
                        errors.push(locator.sink_error(
                            i,
                            "format",
                            format!(
                                "unknown format `{name}`; built-in formats are: {}",
                                formats::names().join(", ")
                            ),
                        ));
                        renderers.push(Renderer::Passthrough);
                        continue;
                    }
                },
                RenderSpec::Template(t) => ("template", t.clone()),
                RenderSpec::TemplateFile(p) => match read_template(p) {
                    Ok(t) => ("template_file", t),
                    Err(e) => {
                        errors.push(locator.sink_error(i, "template_file", e));
                        renderers.push(Renderer::Passthrough);
                        continue;
                    }
                },
            };
            // The sink's template sees the sample as the sink will see events: redacted.
            let redacted;
            let sample = match crate::redact::Redactor::new(&sink.privacy) {
                Some(r) => {
                    let mut v = sample.clone();
                    r.apply(&mut v);
                    redacted = v;
                    &redacted
                }
                None => sample,
            };
            let name = format!("sink:{}", sink.name);
            if let Err(e) = hb.register_template_string(&name, &source) {
                errors.push(locator.sink_error(i, key, format!("template does not compile: {e}")));
            } else if let Some(unknown) = hb.get_template(&name).and_then(unknown_helper) {
                errors.push(locator.sink_error(i, key, unknown));
            } else if let Err(e) = hb.render(&name, sample) {
                errors.push(locator.sink_error(
                    i,
                    key,
                    format!("template fails on the sample event: {}", describe(&e)),
                ));
            }
            renderers.push(Renderer::Template(name));
        }
        if errors.is_empty() {
            Ok(Self {
                hb,
                renderers,
                keys,
            })
        } else {
            Err(errors)
        }
    }

    /// Renders the object key part of an S3 sink for a batch that `event` opens; `None` for
    /// sinks without keys.
    pub fn render_key(&self, sink: usize, event: &Event) -> Option<Result<String, RenderError>> {
        let name = self.keys.get(sink)?.as_ref()?;
        Some(parse(event).and_then(|fields| self.render_named(name, fields, 64)))
    }

    /// Renders `event` for the sink at `sink`, hiding what `redactor` says first.
    pub fn render_redacted(
        &self,
        sink: usize,
        redactor: Option<&crate::redact::Redactor>,
        event: &Event,
    ) -> Result<String, RenderError> {
        match redactor {
            None => self.render(sink, event),
            Some(r) => {
                let mut fields = parse(event)?;
                r.apply(&mut fields);
                self.render_value(sink, fields)
            }
        }
    }

    /// Renders an event's fields after redaction (see [`crate::redact`]).
    pub fn render_value(&self, sink: usize, fields: Value) -> Result<String, RenderError> {
        match &self.renderers[sink] {
            Renderer::Passthrough => Ok(without_kafka(&fields).to_string()),
            Renderer::Template(name) => self.render_named(name, fields, 1024),
        }
    }

    /// Renders `event` for the sink at `sink` (its index in the configuration).
    pub fn render(&self, sink: usize, event: &Event) -> Result<String, RenderError> {
        match &self.renderers[sink] {
            Renderer::Passthrough => passthrough(event),
            Renderer::Template(name) => {
                self.render_named(name, parse(event)?, event.raw.len() + 256)
            }
        }
    }

    /// Renders the template `name` on `fields` into a string sized for `hint` bytes.
    ///
    /// Not `render_with_context`: its output starts at 8 KiB, and a record keeps that
    /// capacity while it waits in a batch (400 MB for a window of 50,000 small events). Not
    /// `render_with_context_to_write` either: its bytes would be checked as UTF-8 again
    /// (4 % of rendering), though every piece handlebars writes is a `&str`. So the template
    /// renders into a `String` of ours, as the registry would render it (no dev mode, no
    /// recursive lookup: this crate turns on neither).
    fn render_named(&self, name: &str, fields: Value, hint: usize) -> Result<String, RenderError> {
        use handlebars::Renderable;
        let template = self
            .hb
            .get_template(name)
            .ok_or_else(|| RenderError(format!("no template named `{name}`")))?;
        let mut out = Text(String::with_capacity(hint));
        let ctx = handlebars::Context::from(fields);
        let mut rc = handlebars::RenderContext::new(template.name.as_ref());
        template
            .render(&self.hb, &ctx, &mut rc, &mut out)
            .map_err(|e| RenderError(describe(&e)))?;
        let Text(mut out) = out;
        if out.capacity() > 2 * out.len() + 64 {
            out.shrink_to_fit();
        }
        Ok(out)
    }
}

/// Handlebars' output into a `String` sized by the caller (its own `StringOutput` starts at
/// 8 KiB).
struct Text(String);

impl handlebars::Output for Text {
    fn write(&mut self, seg: &str) -> std::io::Result<()> {
        self.0.push_str(seg);
        Ok(())
    }

    fn write_fmt(&mut self, args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
        std::fmt::Write::write_fmt(&mut self.0, args).map_err(std::io::Error::other)
    }
}

/// A handlebars error in one line, with the template position when it has one.
fn describe(e: &handlebars::RenderError) -> String {
    let reason = match e.reason() {
        handlebars::RenderErrorReason::MissingVariable(Some(path)) => {
            format!("missing field `{path}` (use {{{{default {path} ...}}}} if it is optional)")
        }
        handlebars::RenderErrorReason::HelperNotFound(name) => {
            format!("unknown helper `{name}`")
        }
        // handlebars cannot look a name up in a list, even inside `default`: the event holds
        // a list where the template expects an object.
        handlebars::RenderErrorReason::InvalidJsonIndex(name) => format!(
            "the template looks up `{name}` in a list (this event has a list where the template expects an object; a list's items are reached by number or with #each)"
        ),
        other => other.to_string(),
    };
    match (e.line_no, e.column_no) {
        (Some(l), Some(c)) => format!("{reason} (template line {l}, column {c})"),
        _ => reason,
    }
}

/// The first call of a helper that does not exist, anywhere in `t` (every branch, nested
/// blocks, subexpressions), as a message with its template position.
fn unknown_helper(t: &handlebars::template::Template) -> Option<String> {
    use handlebars::template::{HelperTemplate, Parameter, TemplateElement};
    fn param(p: &Parameter) -> Option<String> {
        match p {
            Parameter::Subexpression(sub) => element(&sub.element),
            _ => None,
        }
    }
    fn helper(h: &HelperTemplate) -> Option<String> {
        // `{{name}}` alone is a field lookup; with parameters, a hash or as a block it calls
        // a helper.
        let calls = !h.params.is_empty() || !h.hash.is_empty() || h.block;
        if let Parameter::Name(name) = &h.name {
            let known = helpers::NAMES.iter().chain(siem::NAMES);
            if calls && !known.clone().any(|n| n == name) {
                let all: Vec<&str> = known.copied().collect();
                return Some(format!(
                    "unknown helper `{name}`; helpers are: {}",
                    all.join(", ")
                ));
            }
        }
        h.params
            .iter()
            .chain(h.hash.values())
            .find_map(param)
            .or_else(|| h.template.as_ref().and_then(template))
            .or_else(|| h.inverse.as_ref().and_then(template))
    }
    fn element(e: &TemplateElement) -> Option<String> {
        match e {
            TemplateElement::Expression(h)
            | TemplateElement::HtmlExpression(h)
            | TemplateElement::HelperBlock(h) => helper(h),
            _ => None,
        }
    }
    fn template(t: &handlebars::template::Template) -> Option<String> {
        t.elements.iter().enumerate().find_map(|(i, e)| {
            element(e).map(|msg| match t.mapping.get(i) {
                // The innermost position is the one to show.
                Some(m) if !msg.contains("(template line") => {
                    format!("{msg} (template line {}, column {})", m.0, m.1)
                }
                _ => msg,
            })
        })
    }
    template(t)
}

/// A template file's text, without the line break editors put at the end of a file (a record
/// is one line; the sink adds the separator).
fn read_template(p: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// The event as it came, on one line. Pretty-printed input is re-serialised compactly
/// (without the `_kafka` field that decoding added).
fn passthrough(event: &Event) -> Result<String, RenderError> {
    let raw = event.raw_str().trim();
    if !raw.contains(['\n', '\r']) {
        return Ok(raw.to_string());
    }
    Ok(without_kafka(&parse(event)?).to_string())
}

/// The event's fields for a template (parsed here, dropped with the rendered record).
fn parse(event: &Event) -> Result<Value, RenderError> {
    event
        .fields()
        .map_err(|e| RenderError(format!("the message is not JSON this parser can hold: {e}")))
}

/// The fields without the `_kafka` that decoding added.
fn without_kafka(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "_kafka")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::{parse_str, Locator};
    use crate::event::RawMessage;

    /// One stdout sink with `template`, compiled.
    fn templates(template: &str) -> Templates {
        let text = format!(
            "[kafka]\nbrokers=\"b\"\ntopics=[\"t\"]\n[[sinks]]\nname=\"s\"\ntype=\"stdout\"\ntemplate='{template}'\n"
        );
        let config = parse_str(&text, "t", &|_| None).unwrap();
        Templates::compile(&config.sinks, &sample::builtin(), &Locator::new(&text)).unwrap()
    }

    /// `payload` decoded as the message at t/0@0.
    fn event(payload: &'static str) -> Event {
        crate::decode::decode(RawMessage::for_test(payload.as_bytes()), 1024).unwrap()
    }

    /// A rendered record waits in a batch until delivered, so its size is what memory pays:
    /// it must be about its text, not a render buffer (handlebars' own starts at 8 KiB).
    #[test]
    fn a_rendered_record_holds_about_its_own_size() {
        let t = templates(r#"{"user":{{json actor.id}},"action":{{json action}}}"#);
        let body = t
            .render(0, &event(r#"{"actor":{"id":"u-1"},"action":"login"}"#))
            .unwrap();
        assert_eq!(body, r#"{"user":"u-1","action":"login"}"#);
        assert!(
            body.capacity() <= 2 * body.len() + 64,
            "a {}-byte record holds {} bytes",
            body.len(),
            body.capacity()
        );
    }

    /// `default` covers a missing field, not a name looked up in a list: handlebars refuses
    /// that before any helper runs, so the event fails to render (and is quarantined for the
    /// sink) with a reason that says so.
    #[test]
    fn a_name_looked_up_in_a_list_fails_to_render_even_with_default() {
        let t = templates(r#"{{default actor.id "none"}}"#);
        assert_eq!(t.render(0, &event(r#"{"actor":"u-1"}"#)).unwrap(), "none");
        let err = t
            .render(0, &event(r#"{"actor":["u-1"]}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("looks up `id` in a list"), "{err}");
    }

    /// serde_json's syntax check passes a number beyond f64 that its tree refuses: such an
    /// event decodes, and each sink's render fails with the reason (the worker quarantines it).
    #[test]
    fn an_event_whose_tree_does_not_parse_fails_to_render_with_the_reason() {
        let t = templates("{{json action}}");
        let err = t
            .render(0, &event(r#"{"action":1e400}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("number out of range"), "{err}");
    }
}
