//! Every built-in format's escaping, on arbitrary events: each record is one line; the JSON
//! formats parse and carry the input values; CEF and LEEF records read back, with the
//! independent readers of `tests/common/siem_readers.rs`, to the input values.
//!
//! The same checks as `tests/formats.rs` makes on the golden events, on anything. The `text`
//! format must render too, but is not escaped (it is for people).
#![no_main]

use std::sync::OnceLock;

use auditstream::config::load::Locator;
use auditstream::config::parse_str;
use auditstream::template::{sample, Templates};
use auditstream_fuzz::siem_readers::{parse_cef, parse_leef, CEF_FIELDS, LEEF_FIELDS};
use auditstream_fuzz::{event_from, get, looks_up_a_name_in_a_list, text, without_kafka};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const FORMATS: &[&str] = &[
    "ndjson",
    "splunk_hec",
    "ecs",
    "cef",
    "leef",
    "ocsf",
    "datadog",
    "azure_monitor",
    "text",
];

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        let mut text = String::from("[kafka]\nbrokers = \"x\"\ntopics = [\"audit-events\"]\n");
        for f in FORMATS {
            text += &format!("[[sinks]]\nname = \"{f}\"\ntype = \"stdout\"\nformat = \"{f}\"\n");
        }
        let config = parse_str(&text, "fuzz", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        Templates::compile(&config.sinks, &sample::builtin(), &Locator::new(&text))
            .unwrap_or_else(|e| panic!("{e:?}"))
    })
}

fn json(format: &str, line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{format} is not JSON ({e}): {line}"))
}

fuzz_target!(|data: &[u8]| {
    let Some((input, event)) = event_from(data) else {
        return;
    };
    let t = templates();
    let fields = event.fields().expect("event_from checked");
    let mut out = Vec::with_capacity(FORMATS.len());
    for (i, f) in FORMATS.iter().enumerate() {
        match t.render(i, &event) {
            Ok(line) => out.push(line),
            // The one render failure the README documents (`default` cannot cover it).
            Err(e) if looks_up_a_name_in_a_list(&fields, &e.to_string()) => return,
            Err(e) => panic!("{f} fails: {e}"),
        }
    }
    let out = |f: &str| -> &str {
        let i = FORMATS.iter().position(|n| *n == f).expect("a format");
        &out[i]
    };
    // `text` writes field values as they are: a line break in one makes a record of two lines,
    // which `deliver` quarantines for a line sink (see ARCHITECTURE.md, invariant 2). The
    // others escape.
    for f in FORMATS.iter().filter(|f| **f != "text") {
        let line = out(f);
        assert!(
            !line.contains(['\n', '\r']),
            "{f}: one line per record: {line}"
        );
    }

    // The JSON formats.
    assert_eq!(without_kafka(&json("ndjson", out("ndjson"))), input);
    let hec = json("splunk_hec", out("splunk_hec"));
    assert_eq!(hec["event"], input);
    assert!(hec["time"].is_number(), "{hec}");
    assert_eq!(json("datadog", out("datadog"))["audit"], input);
    let ecs = json("ecs", out("ecs"));
    let azure = json("azure_monitor", out("azure_monitor"));
    let ocsf = json("ocsf", out("ocsf"));
    for (field, ecs_path, azure_key, ocsf_path) in [
        ("actor.id", Some("user.id"), "ActorId", "actor.user.uid"),
        (
            "actor.name",
            Some("user.name"),
            "ActorName",
            "actor.user.name",
        ),
        (
            "actor.type",
            Some("labels.actor_type"),
            "ActorType",
            "actor.user.type",
        ),
        ("action", Some("event.action"), "Action", "api.operation"),
        // ECS's outcome is one of its own words (ecs_outcome).
        ("outcome", None, "Outcome", "unmapped.outcome"),
        (
            "metadata.ip",
            Some("source.ip"),
            "SourceIp",
            "src_endpoint.ip",
        ),
        (
            "metadata.user_agent",
            Some("user_agent.original"),
            "UserAgent",
            "http_request.user_agent",
        ),
        (
            "metadata.request_id",
            Some("http.request.id"),
            "RequestId",
            "http_request.uid",
        ),
        ("id", Some("event.id"), "EventId", "metadata.uid"),
        (
            "workspace",
            Some("organization.id"),
            "Workspace",
            "unmapped.workspace",
        ),
        (
            "changes",
            Some("auditstream.changes"),
            "Changes",
            "unmapped.changes",
        ),
    ] {
        let want = get(&input, field);
        if let Some(ecs_path) = ecs_path {
            assert_eq!(get(&ecs, ecs_path), want, "ecs {ecs_path} for {field}");
        }
        assert_eq!(&azure[azure_key], want, "azure {azure_key} for {field}");
        assert_eq!(get(&ocsf, ocsf_path), want, "ocsf {ocsf_path} for {field}");
    }

    // CEF: header and extensions read back.
    let action = match get(&input, "action") {
        Value::Null => "unknown".to_string(),
        // A header field cannot hold a line break; CEF readers see a space.
        v => text(v).replace(['\n', '\r'], " "),
    };
    let (header, ext) = parse_cef(out("cef"));
    assert_eq!(header[3], action);
    assert_eq!(header[4], action);
    for &(key, field) in CEF_FIELDS {
        assert_eq!(ext[key], text(get(&input, field)), "cef {key}");
    }
    let changes: Value = serde_json::from_str(&ext["cs5"]).expect("cs5 is JSON");
    assert_eq!(&changes, get(&input, "changes"));
    assert_eq!(ext["cs6"], "audit-events/1@100");

    // LEEF.
    let (header, attrs) = parse_leef(out("leef"));
    assert_eq!(header[3], action);
    for &(key, field) in LEEF_FIELDS {
        assert_eq!(attrs[key], text(get(&input, field)), "leef {key}");
    }
    let changes: Value = serde_json::from_str(&attrs["changes"]).expect("changes is JSON");
    assert_eq!(&changes, get(&input, "changes"));
    assert_eq!(attrs["kafka"], "audit-events/1@100");
});
