//! Templates with the `json` helper on arbitrary events: the output always parses as JSON, and
//! the values in it are the event's values.
//!
//! The template quotes the whole event, each top-level field through `#each` (keys too), the
//! fields the formats map (through `default`, missing or not), and the string helpers' results
//! (`upper`, `lower`, `truncate`, `mask`, `hash`, `date` with a fallback), all with `json`.
#![no_main]

use std::sync::OnceLock;

use auditstream::config::load::Locator;
use auditstream::config::parse_str;
use auditstream::template::{sample, Templates};
use auditstream_fuzz::{event_from, get, looks_up_a_name_in_a_list, FIELDS};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn template() -> String {
    let mut t = String::from(
        r#"{"all":{{json this}},"each":{ {{~#each this}}{{#unless @first}},{{/unless}}{{json @key}}:{{json this}}{{/each~}} },"fields":["#,
    );
    for (i, f) in FIELDS.iter().enumerate() {
        if i > 0 {
            t.push(',');
        }
        t += &format!("{{{{json (default {f} null)}}}}");
    }
    t += r#"],"upper":{{json (upper (default action ""))}},"lower":{{json (lower (default actor.name ""))}},"truncate":{{json (truncate (default metadata.user_agent "") 5 "…")}},"mask":{{json (mask (default metadata.ip "") 3)}},"hash":{{json (hash (default actor.id ""))}},"each_changes":[{{#each (default changes null)}}{{json this}},{{else}}{{/each}}null]}"#;
    t
}

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        // A TOML literal string ('...') holds the template as it is.
        let text = format!(
            "[kafka]\nbrokers = \"x\"\ntopics = [\"audit-events\"]\n[[sinks]]\nname = \"json\"\ntype = \"stdout\"\ntemplate = '''{}'''\n",
            template()
        );
        let config = parse_str(&text, "fuzz", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        Templates::compile(&config.sinks, &sample::builtin(), &Locator::new(&text))
            .unwrap_or_else(|e| panic!("{e:?}"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((_, event)) = event_from(data) else {
        return;
    };
    let fields = &event.fields().expect("event_from checked");
    let out = match templates().render(0, &event) {
        Ok(out) => out,
        // The one render failure the README documents (`default` cannot cover it).
        Err(e) if looks_up_a_name_in_a_list(fields, &e.to_string()) => return,
        Err(e) => panic!("render failed: {e}"),
    };
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(&v["all"], fields);
    assert_eq!(&v["each"], fields);
    for (i, f) in FIELDS.iter().enumerate() {
        assert_eq!(&v["fields"][i], get(fields, f), "{f}");
    }
    for k in ["upper", "lower", "truncate", "mask", "hash"] {
        assert!(v[k].is_string(), "{k}: {out}");
    }
    // `#each` over an object or array gives its values in order; over anything else, its
    // `else` (without one, strict mode makes that a render error).
    let changes: Vec<Value> = match get(fields, "changes") {
        Value::Object(m) => m.values().cloned().collect(),
        Value::Array(a) => a.clone(),
        _ => vec![],
    };
    let mut got = v["each_changes"].as_array().expect("an array").clone();
    assert_eq!(got.pop(), Some(Value::Null));
    assert_eq!(got, changes);
});
