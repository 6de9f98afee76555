//! S3 key sanitising: a rendered key never escapes the prefix.
//!
//! The fuzz input is both a raw key part (sanitised directly) and an event whose fields feed
//! two S3 sinks' key templates (one made of event fields, and the default date key). For
//! each, the object key starts with the configured prefix, and what follows it is made of
//! non-empty segments, none `.` or `..`, none `.auditstream` (the sink's own objects), without
//! control characters or backslashes, within the documented lengths.
#![no_main]

use std::sync::OnceLock;

use auditstream::batch::{Batch, Record};
use auditstream::config::load::Locator;
use auditstream::config::{parse_str, Config, SinkKind};
use auditstream::event::TopicPartition;
use auditstream::sink::s3::{object_key, sanitize_key_part};
use auditstream::template::{sample, Templates};
use auditstream_fuzz::event_from;
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "audit/ws/";

fn setup() -> &'static (Config, Templates) {
    static T: OnceLock<(Config, Templates)> = OnceLock::new();
    T.get_or_init(|| {
        let text = format!(
            r#"[kafka]
brokers = "x"
topics = ["audit-events"]
[[sinks]]
name = "fields"
type = "s3"
bucket = "b"
prefix = "{PREFIX}"
key = '{{{{default workspace ""}}}}/{{{{default actor.id ""}}}}/{{{{default action ""}}}}'
[[sinks]]
name = "dated"
type = "s3"
bucket = "b"
prefix = "{PREFIX}"
"#
        );
        let config = parse_str(&text, "fuzz", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let t = Templates::compile(&config.sinks, &sample::builtin(), &Locator::new(&text))
            .unwrap_or_else(|e| panic!("{e:?}"));
        (config, t)
    })
}

/// The invariants of a sanitised key part.
fn check_part(raw: &str, part: &str) {
    assert!(part.len() <= 512, "{} bytes from {raw:?}", part.len());
    if part.is_empty() {
        return;
    }
    assert!(part.ends_with('/'), "{part:?} from {raw:?}");
    check_segments(raw, part.strip_suffix('/').unwrap_or(part));
}

fn check_segments(raw: &str, path: &str) {
    for seg in path.split('/') {
        assert!(!seg.is_empty(), "an empty segment in {path:?} from {raw:?}");
        assert!(
            seg != "." && seg != "..",
            "{seg:?} in {path:?} from {raw:?}"
        );
        assert!(seg != ".auditstream", "{path:?} from {raw:?}");
        assert!(seg.len() <= 255, "a segment of {} bytes", seg.len());
        assert!(
            !seg.chars().any(|c| c.is_control() || c == '\\'),
            "{seg:?} from {raw:?}"
        );
        assert_eq!(seg, seg.trim(), "from {raw:?}");
    }
}

fn check_object_key(config: &Config, sink: usize, label: &str) {
    let SinkKind::S3(c) = &config.sinks[sink].kind else {
        panic!("an S3 sink")
    };
    let mut batch = Batch::new(
        TopicPartition {
            topic: "audit-events".into(),
            partition: 1,
        },
        Some(label.to_string()),
    );
    batch.push(Record {
        offset: 100,
        body: "{}".into(),
    });
    let key = object_key(c, &batch);
    let rest = key
        .strip_prefix(PREFIX)
        .unwrap_or_else(|| panic!("{key:?} is outside the prefix"));
    check_segments(label, rest);
    assert!(
        rest.ends_with("audit-events-1-00000000000000000100.ndjson.gz"),
        "{key:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    check_part(&raw, &sanitize_key_part(&raw));
    let (config, templates) = setup();
    check_object_key(config, 0, &raw);

    let Some((_, event)) = event_from(data) else {
        return;
    };
    let label = templates
        .render_key(0, &event)
        .expect("an S3 sink has a key")
        .unwrap_or_else(|e| panic!("the fields key fails: {e}"));
    check_part(&label, &sanitize_key_part(&label));
    check_object_key(config, 0, &label);
    // The date key fails on an event whose timestamp is no time (that event is quarantined
    // for the sink); when it renders, it stays inside the prefix.
    if let Some(Ok(label)) = templates.render_key(1, &event) {
        check_object_key(config, 1, &label);
    }
});
