//! Configuration loading: any text is a configuration or a list of reasons, never a panic.
//!
//! - `parse_str` (TOML, `${ENV}` interpolation, checks) either succeeds or reports at least
//!   one error, and the report prints.
//! - A configuration that loads has its templates compiled and test-rendered the way start-up
//!   and `validate` do (`Templates::compile`); a failure names a key for each error.
//! - Once compiled, every sink renders the (redacted) sample event: what `validate` accepts
//!   renders at run time.
//!
//! Files are not read here: a `template_file` is replaced by an inline template, and the
//! sample event is the built-in one.
#![no_main]

use auditstream::config::load::Locator;
use auditstream::config::{parse_str, RenderSpec};
use auditstream::redact::Redactor;
use auditstream::template::{sample, Templates};
use libfuzzer_sys::fuzz_target;

fn env(name: &str) -> Option<String> {
    match name {
        "EMPTY" => Some(String::new()),
        // Interpolated text that would break the TOML or a template if pasted in raw.
        "HOSTILE" => Some("\"}}{{x\n'${HOSTILE}$${".into()),
        n if n.starts_with("AUDITSTREAM_") || n.starts_with("KAFKA_") || n.starts_with("AWS_") => {
            Some("value-0123456789abcdef".into())
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut config = match parse_str(text, "fuzz.toml", &env) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.errors.is_empty(), "a failure says why");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    for sink in &mut config.sinks {
        if let RenderSpec::TemplateFile(_) = sink.render {
            sink.render = RenderSpec::Template("{{json this}}".into());
        }
    }
    let sample = sample::builtin();
    let templates = match Templates::compile(&config.sinks, &sample, &Locator::new(text)) {
        Ok(t) => t,
        Err(errors) => {
            assert!(!errors.is_empty(), "a failure says why");
            for e in &errors {
                assert!(!e.message.is_empty());
                let _ = e.to_string();
            }
            return;
        }
    };
    for (i, sink) in config.sinks.iter().enumerate() {
        let mut fields = sample.clone();
        if let Some(r) = Redactor::new(&sink.privacy) {
            r.apply(&mut fields);
        }
        if let Err(e) = templates.render_value(i, fields) {
            panic!("sink {} compiled but fails on the sample: {e}", sink.name);
        }
    }
});
