//! The built-in formats: golden files for a set of varied events (tests/fixtures/events.jsonl:
//! full, minimal, missing fields, and one full of hostile strings), and every format's output
//! read back by an independent parser: JSON for the JSON formats, and CEF and LEEF parsers
//! written here from the specs' escaping rules, which must give back the input values.
//!
//! `UPDATE_GOLDEN=1 cargo test --test formats` rewrites the golden files after a deliberate
//! change; review the diff.

use std::collections::BTreeMap;
use std::path::PathBuf;

use auditstream::config::load::Locator;
use auditstream::config::parse_str;
use auditstream::decode::decode;
use auditstream::event::{Coords, Event, RawMessage};
use auditstream::template::{sample, Templates};
use serde_json::Value;

#[path = "common/siem_readers.rs"]
mod siem_readers;
use siem_readers::{parse_cef, parse_leef, CEF_FIELDS, LEEF_FIELDS};

const FORMATS: &[&str] = &[
    "ndjson",
    "splunk_hec",
    "ecs",
    "cef",
    "leef",
    "ocsf",
    "datadog",
    "azure_monitor",
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn events() -> Vec<(Value, Event)> {
    let text = std::fs::read_to_string(dir().join("fixtures/events.jsonl")).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let msg = RawMessage {
                coords: Coords {
                    topic: "audit-events".into(),
                    partition: 1,
                    offset: 100 + i as i64,
                },
                timestamp_ms: Some(1_772_600_000_000),
                key: None,
                headers: vec![],
                payload: Some(line.as_bytes().to_vec().into()),
            };
            let event = decode(msg, 1 << 20).unwrap_or_else(|r| panic!("{}", r.why));
            (serde_json::from_str(line).unwrap(), event)
        })
        .collect()
}

/// One sink per format, `extra` added to each.
fn templates(extra: &str) -> Templates {
    let mut text = String::from("[kafka]\nbrokers = \"x\"\ntopics = [\"audit-events\"]\n");
    for f in FORMATS {
        text +=
            &format!("[[sinks]]\nname = \"{f}\"\ntype = \"stdout\"\nformat = \"{f}\"\n{extra}\n");
    }
    let config = parse_str(&text, "t", &|_| None).unwrap_or_else(|e| panic!("{e}"));
    Templates::compile(&config.sinks, &sample::builtin(), &Locator::new(&text))
        .unwrap_or_else(|e| panic!("{e:?}"))
}

fn outputs() -> BTreeMap<&'static str, Vec<String>> {
    let t = templates("");
    let events = events();
    FORMATS
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let lines = events
                .iter()
                .map(|(_, e)| {
                    t.render(i, e)
                        .unwrap_or_else(|err| panic!("{f} fails on {}: {err}", e.raw_str()))
                })
                .collect();
            (*f, lines)
        })
        .collect()
}

#[test]
fn every_format_matches_its_golden_file() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    for (format, lines) in outputs() {
        for l in &lines {
            assert!(
                !l.contains(['\n', '\r']),
                "{format}: one line per record: {l}"
            );
        }
        let path = dir().join(format!("golden/{format}.txt"));
        let got = lines.join("\n") + "\n";
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "no golden file {}; run with UPDATE_GOLDEN=1",
                path.display()
            )
        });
        assert_eq!(got, want, "{format} differs from {}", path.display());
    }
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

#[test]
fn json_formats_parse_and_carry_the_input_values() {
    let out = outputs();
    for ((input, _), i) in events().iter().zip(0..) {
        let parse = |f: &str| -> Value {
            serde_json::from_str(&out[f][i]).unwrap_or_else(|e| panic!("{f}: {e}: {}", out[f][i]))
        };
        // ndjson and splunk_hec's event: the event exactly as it came.
        assert_eq!(parse("ndjson"), *input);
        let hec = parse("splunk_hec");
        assert_eq!(hec["event"], *input);
        assert!(hec["time"].is_f64() || hec["time"].is_u64(), "{hec}");
        assert_eq!(hec["sourcetype"], "auditstream:audit");
        let dd = parse("datadog");
        assert_eq!(dd["audit"], *input);

        let ecs = parse("ecs");
        let azure = parse("azure_monitor");
        let ocsf = parse("ocsf");
        for (field, ecs_path, azure_key, ocsf_path) in [
            ("actor.id", "user.id", "ActorId", "actor.user.uid"),
            ("actor.name", "user.name", "ActorName", "actor.user.name"),
            ("action", "event.action", "Action", "api.operation"),
            ("metadata.ip", "source.ip", "SourceIp", "src_endpoint.ip"),
            (
                "metadata.user_agent",
                "user_agent.original",
                "UserAgent",
                "http_request.user_agent",
            ),
            (
                "metadata.request_id",
                "http.request.id",
                "RequestId",
                "http_request.uid",
            ),
            ("id", "event.id", "EventId", "metadata.uid"),
        ] {
            let want = match get(input, field) {
                Value::Null => &Value::Null,
                v => v,
            };
            assert_eq!(get(&ecs, ecs_path), want, "ecs {ecs_path} for {field}");
            assert_eq!(&azure[azure_key], want, "azure {azure_key} for {field}");
            assert_eq!(get(&ocsf, ocsf_path), want, "ocsf {ocsf_path} for {field}");
        }
        assert_eq!(ecs["ecs"]["version"], "8.11.0");
        assert!(ecs["@timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            ocsf["type_uid"].as_u64().unwrap(),
            ocsf["class_uid"].as_u64().unwrap() * 100 + ocsf["activity_id"].as_u64().unwrap()
        );
        assert!(ocsf["time"].is_i64() || ocsf["time"].is_u64());
        assert_eq!(ocsf["metadata"]["version"], "1.1.0");
    }
}

#[test]
fn ocsf_classes_follow_the_documented_mapping() {
    let out = outputs();
    let class = |i: usize| -> (u64, u64) {
        let v: Value = serde_json::from_str(&out["ocsf"][i]).unwrap();
        (
            v["class_uid"].as_u64().unwrap(),
            v["activity_id"].as_u64().unwrap(),
        )
    };
    assert_eq!(class(0), (3002, 1), "user.login: Authentication, Logon");
    assert_eq!(class(1), (6003, 3), "recipe.updated: API Activity, Update");
    assert_eq!(
        class(3),
        (3001, 7),
        "user.role_changed: Account Change, Attach Policy"
    );
    assert_eq!(class(4), (6003, 4), "api_key.revoked: API Activity, Delete");
    assert_eq!(class(7), (6003, 4), "recipe.deleted: API Activity, Delete");
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[test]
fn cef_and_leef_read_back_to_the_input_values() {
    let out = outputs();
    for ((input, _), i) in events().iter().zip(0..) {
        let (header, ext) = parse_cef(&out["cef"][i]);
        assert_eq!(
            header[0..3],
            ["auditstream", "auditstream", env!("CARGO_PKG_VERSION")]
        );
        let action = match &input["action"] {
            Value::Null => "unknown".to_string(),
            // A header field cannot hold a line break; CEF readers see a space.
            v => text(v).replace(['\n', '\r'], " "),
        };
        assert_eq!(header[3], action);
        assert_eq!(header[4], action);
        for &(key, field) in CEF_FIELDS {
            assert_eq!(ext[key], text(get(input, field)), "cef {key} of event {i}");
        }
        let changes: Value = serde_json::from_str(&ext["cs5"]).unwrap();
        assert_eq!(changes, input["changes"]);
        assert_eq!(ext["cs6"], format!("audit-events/1@{}", 100 + i));

        let (header, attrs) = parse_leef(&out["leef"][i]);
        assert_eq!(header[3], action);
        for &(key, field) in LEEF_FIELDS {
            assert_eq!(
                attrs[key],
                text(get(input, field)),
                "leef {key} of event {i}"
            );
        }
        let changes: Value = serde_json::from_str(&attrs["changes"]).unwrap();
        assert_eq!(changes, input["changes"]);
    }
}

#[test]
fn format_options_reach_the_output() {
    let text = "[kafka]\nbrokers = \"x\"\ntopics = [\"t\"]\n[[sinks]]\nname = \"hec\"\ntype = \"stdout\"\nformat = \"splunk_hec\"\nformat_options = { index = \"audit\", host = \"h|1\" }\n[[sinks]]\nname = \"cef\"\ntype = \"stdout\"\nformat = \"cef\"\nformat_options = { vendor = \"Acme|Corp\" }\n";
    let config = parse_str(text, "t", &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let t = Templates::compile(&config.sinks, &sample::builtin(), &Locator::new(text)).unwrap();
    let (_, e) = &events()[0];
    let hec: Value = serde_json::from_str(&t.render(0, e).unwrap()).unwrap();
    assert_eq!(hec["index"], "audit");
    assert_eq!(hec["host"], "h|1");
    let (header, _) = parse_cef(&t.render(1, e).unwrap());
    assert_eq!(header[0], "Acme|Corp");
}
