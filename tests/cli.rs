//! The command line as a user meets it: `validate` names every problem by key path and line,
//! `render` prints exactly what a sink would send, exit codes follow the contract.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn auditstream(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_auditstream"));
    cmd.args(args)
        .env_remove("AUDITSTREAM_TEST_UNSET")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const GOOD: &str = r#"
[kafka]
brokers = "${BROKERS:-127.0.0.1:9092}"
topics = ["audit-events"]

[[sinks]]
name = "siem"
type = "file"
path = "out/siem.jsonl"
template = '{"who":{{json actor.id}},"did":{{json action}},"when":"{{date timestamp "%Y-%m-%d"}}","at":"{{_kafka.topic}}@{{_kafka.offset}}"}'

[[sinks]]
name = "archive"
type = "stdout"
"#;

#[test]
fn validate_says_ok_for_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", GOOD);
    let out = auditstream(&["validate", "--config", &path], &[], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn the_example_config_validates() {
    let out = auditstream(
        &[
            "validate",
            "--config",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/auditstream.example.toml"
            ),
        ],
        &[],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn validate_names_every_problem_with_its_key_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = r#"
[kafka]
brokers = "${AUDITSTREAM_TEST_UNSET}"
topics = ["audit-events"]
colour = "blue"

[[sinks]]
name = "siem"
type = "file"
path = "out/siem.jsonl"
template = '{"who":{{json actor.id}},"x":{{shout action}}}'
[sinks.retry]
max_interval = "a while"

[[sinks]]
name = "lost"
type = "file"
path = "out/lost.jsonl"
template = '{"who":{{json actor.nickname}}}'
"#;
    let path = write(dir.path(), "bad.toml", bad);
    let out = auditstream(&["validate", "--config", &path], &[], None);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "kafka.brokers (line 3): environment variable AUDITSTREAM_TEST_UNSET is not set",
        "kafka.colour (line 5): unknown field `colour`",
        "sinks[0].retry.max_interval (line 13): invalid duration `a while`",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    // Once those are fixed, templates are compiled and test-rendered: an unknown helper and a
    // field the sample event lacks are both reported before the daemon would start.
    let fixed = bad
        .replace("${AUDITSTREAM_TEST_UNSET}", "127.0.0.1:9092")
        .replace("colour = \"blue\"\n", "")
        .replace("\"a while\"", "\"30s\"");
    let path = write(dir.path(), "templates.toml", &fixed);
    let out = auditstream(&["validate", "--config", &path], &[], None);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sinks[0].template (line 10)") && text.contains("unknown helper `shout`"),
        "{text}"
    );
    assert!(
        text.contains("sinks[1].template (line 18)")
            && text.contains("missing field `actor.nickname`"),
        "{text}"
    );
}

#[test]
fn render_prints_exactly_what_the_sink_would_send() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", GOOD);
    let event = r#"{"id":"e-1","timestamp":"2026-03-04T05:06:07Z","actor":{"id":"u-\"7\""},"action":"user.login"}"#;
    let out = auditstream(
        &[
            "render", "--config", &path, "--sink", "siem", "--event", "-",
        ],
        &[],
        Some(event),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"who\":\"u-\\\"7\\\"\",\"did\":\"user.login\",\"when\":\"2026-03-04\",\"at\":\"audit-events@0\"}\n"
    );

    // ndjson passes the event through as it came.
    let file = write(dir.path(), "event.json", event);
    let out = auditstream(
        &[
            "render", "--config", &path, "--sink", "archive", "--event", &file,
        ],
        &[],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{event}\n"));

    // An event this sink cannot render, and a sink that does not exist: exit 2.
    let out = auditstream(
        &[
            "render", "--config", &path, "--sink", "siem", "--event", "-",
        ],
        &[],
        Some(r#"{"action":"x"}"#),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("actor.id"));
    let out = auditstream(&["render", "--config", &path, "--sink", "nope"], &[], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn usage_errors_exit_2() {
    let out = auditstream(&["run", "--no-such-flag"], &[], None);
    assert_eq!(out.status.code(), Some(2));
    let out = auditstream(
        &["validate", "--config", "/nonexistent/auditstream.toml"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn validate_finds_an_unknown_helper_in_a_branch_the_sample_does_not_take() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace(
        r#""did":{{json action}}"#,
        r#""did":{{json action}}{{#if (eq action "never.happens")}},"x":{{json (shout action)}}{{/if}}"#,
    );
    let path = write(dir.path(), "branch.toml", &text);
    let out = auditstream(&["validate", "--config", &path], &[], None);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sinks[0].template") && text.contains("unknown helper `shout`"),
        "{text}"
    );
}

#[test]
fn a_template_file_ending_in_a_newline_renders_one_line_per_record() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("siem.hbs"), "{\"who\":{{json actor.id}}}\n").unwrap();
    let text = GOOD.replace(
        r#"template = '{"who":{{json actor.id}},"did":{{json action}},"when":"{{date timestamp "%Y-%m-%d"}}","at":"{{_kafka.topic}}@{{_kafka.offset}}"}'"#,
        &format!(
            "template_file = \"{}\"",
            dir.path().join("siem.hbs").display()
        ),
    );
    let path = write(dir.path(), "file.toml", &text);
    let out = auditstream(
        &[
            "render", "--config", &path, "--sink", "siem", "--event", "-",
        ],
        &[],
        Some(r#"{"actor":{"id":"u-1"}}"#),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"who\":\"u-1\"}\n");
}

#[test]
fn render_encodes_like_the_sink_and_names_the_s3_object_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[kafka]
brokers = "127.0.0.1:9092"
topics = ["audit-events"]

[[sinks]]
name = "siem"
type = "http"
url = "http://127.0.0.1:1/"
encoding = "json_array"
template = '{"who":{{json actor.id}}}'

[[sinks]]
name = "archive"
type = "s3"
bucket = "b"
region = "us-east-1"
prefix = "audit/"
key = '{{date timestamp "%Y/%m/%d"}}/'
template = '{"who":{{json actor.id}}}'
"#;
    let path = write(dir.path(), "c.toml", text);
    let event = r#"{"timestamp":"2026-03-04T05:06:07Z","actor":{"id":"u-1"}}"#;
    let out = auditstream(
        &[
            "render", "--config", &path, "--sink", "siem", "--event", "-",
        ],
        &[],
        Some(event),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), r#"[{"who":"u-1"}]"#);
    let out = auditstream(
        &[
            "render", "--config", &path, "--sink", "archive", "--event", "-",
        ],
        &[],
        Some(event),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"who\":\"u-1\"}\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("object key: audit/2026/03/04/audit-events-0-00000000000000000000.ndjson"),
        "{stderr}"
    );
}

#[test]
fn render_format_prints_a_format_or_its_template_without_a_config() {
    let out = auditstream(
        &["render", "--format", "cef", "--event", "-"],
        &[],
        Some(r#"{"action":"user.login","actor":{"id":"u|1"}}"#),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("CEF:0|auditstream|auditstream|"), "{text}");
    assert!(text.contains("suid=u|1"), "{text}");
    let out = auditstream(
        &["render", "--format", "ecs", "--print-template"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let template = String::from_utf8_lossy(&out.stdout);
    assert!(
        template.contains("{{json (iso_time timestamp _kafka.timestamp)}}"),
        "{template}"
    );
    assert!(
        !template.contains("@@"),
        "options are filled in: {template}"
    );
    let out = auditstream(&["render", "--format", "nope"], &[], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("splunk_hec"));
}

#[test]
fn validate_checks_formats_redaction_and_integrity_settings() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
[kafka]
brokers = "127.0.0.1:9092"
topics = ["audit-events"]

[integrity]
signing_key = "c2hvcnQ="
digest_interval = "0s"

[[sinks]]
name = "dd"
type = "http"
url = "http://127.0.0.1:1/"
format = "datadog"

[[sinks]]
name = "private"
type = "stdout"
pseudonymise = ["actor.id"]
pseudonymise_key = "short"
template = '{{json actor.id}}'
format_options = { index = "x" }

[[sinks]]
name = "hec"
type = "stdout"
format = "splunk_hec"
format_options = { colour = "blue" }
"#;
    let path = write(dir.path(), "c.toml", text);
    let out = auditstream(&["validate", "--config", &path], &[], None);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "integrity.signing_key",
        "integrity.digest_interval",
        "sinks[0].encoding",
        "json_array",
        "sinks[1].pseudonymise_key",
        "sinks[1].format_options",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // Once those are fixed, the templates are compiled: an unknown format option is named.
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "signing_key = \"c2hvcnQ=\"",
            "signing_key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"",
        )
        .replace("digest_interval = \"0s\"", "digest_interval = \"1h\"")
        .replace(
            "format = \"datadog\"",
            "format = \"datadog\"\nencoding = \"json_array\"",
        )
        .replace(
            "pseudonymise_key = \"short\"",
            "pseudonymise_key = \"long enough, sixteen+\"",
        )
        .replace("format_options = { index = \"x\" }\n", "");
    let path = write(dir.path(), "fixed.toml", &fixed);
    let out = auditstream(&["validate", "--config", &path], &[], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("sinks[2].format_options") && text.contains("unknown option `colour`"),
        "{text}"
    );
}
