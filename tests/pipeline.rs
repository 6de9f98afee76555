//! The pipeline in-process against an in-process Kafka cluster on loopback: every valid event
//! arrives in each matching sink in order, malformed messages and render failures land in the
//! quarantine, filters route, and the committed offsets reach the end.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use auditstream::cli;
use auditstream::embedded_kafka::EmbeddedKafka;
use auditstream::generate::{malformed, Generator};
use auditstream::park::Store;
use auditstream::pipeline::Pipeline;
use auditstream::shutdown::{Shutdown, Stage};
use common::*;

const TOPIC: &str = "audit";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_bad_ones_are_quarantined_and_filters_route() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();

    // 1200 generated events with the malformed kinds spread between them, then one event
    // without an actor (the strict sink cannot render it).
    let mut g = Generator::new(11, 8);
    let bad = malformed(16 * 1024);
    let mut ids = Vec::new();
    let mut secret_ids = HashSet::new();
    for i in 0..1200 {
        let (key, e) = g.next_event();
        let id = e["id"].as_str().unwrap().to_string();
        if e["action"].as_str().unwrap().starts_with("secret.") {
            secret_ids.insert(id.clone());
        }
        ids.push(id);
        kafka
            .send(
                TOPIC,
                None,
                Some(key.as_bytes()),
                Some(e.to_string().as_bytes()),
            )
            .unwrap();
        if i % 150 == 75 {
            let (_, payload) = &bad[(i / 150) % bad.len()];
            kafka
                .send(TOPIC, Some((i % 4) as i32), None, payload.as_deref())
                .unwrap();
        }
    }
    let headless = r#"{"id":"no-actor","action":"system.heartbeat"}"#;
    kafka
        .send(TOPIC, Some(2), None, Some(headless.as_bytes()))
        .unwrap();
    ids.push("no-actor".into());
    kafka.flush().unwrap();
    let malformed_sent = (0..1200).filter(|i| i % 150 == 75).count();
    let total = (ids.len() + malformed_sent) as u64;

    let strict = r#"{"id":{{json id}},"p":{{_kafka.partition}},"o":{{_kafka.offset}},"who":{{json actor.id}}}"#;
    let config_path = write_config(
        dir.path(),
        kafka.bootstrap_servers(),
        "pipeline-test",
        TOPIC,
        "max_event_bytes = \"16KiB\"",
        &[
            ("all", ""),
            ("secrets", "filter = { action = \"secret.*\" }"),
        ],
    );
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str(&format!(
        "\n[[sinks]]\nname = \"strict\"\ntype = \"file\"\npath = \"{}\"\ntemplate = '{strict}'\n",
        dir.path().join("strict.jsonl").display()
    ));
    std::fs::write(&config_path, text).unwrap();

    let (config, templates) = cli::load(&config_path).unwrap();
    let pipeline = Pipeline::build(config, templates).await.unwrap();
    let status = pipeline.status();
    let shutdown = Shutdown::new();
    let run = tokio::spawn(pipeline.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status.source.committable() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {total} messages committed",
            status.source.committable()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.request(Stage::Graceful);
    run.await.unwrap().unwrap();

    // Every valid event, once, in order per partition.
    let all = read_seen(&dir.path().join("all.jsonl"));
    assert_eq!(assert_all_arrived(&ids, &all), 0, "no duplicates");
    assert_eq!(all.len(), ids.len());
    assert_ordered_per_partition(&all, false);

    // The filter routed exactly the secret.* events.
    let secrets = read_seen(&dir.path().join("secrets.jsonl"));
    let got: HashSet<String> = secrets.iter().map(|s| s.id.clone()).collect();
    assert_eq!(got, secret_ids);
    assert_ordered_per_partition(&secrets, false);

    // The strict sink has everything but the event without an actor.
    let strict_seen = read_seen(&dir.path().join("strict.jsonl"));
    assert_eq!(strict_seen.len(), ids.len() - 1);
    assert!(!strict_seen.iter().any(|s| s.id == "no-actor"));
    assert_eq!(status.sink("strict").unwrap().quarantined(), 1);
    assert_eq!(status.sink("all").unwrap().quarantined(), 0);

    // The quarantine holds each malformed message, with its reason and coordinates, and the
    // render failure for the strict sink only.
    let store = Store::open(&dir.path().join("park")).unwrap();
    let entries: Vec<_> = store.quarantine_entries().map(|e| e.unwrap().1).collect();
    let decode_kinds: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.sink.is_none())
        .map(|e| e.kind.as_str())
        .collect();
    let want: BTreeSet<&str> = bad.iter().map(|(k, _)| *k).collect();
    assert_eq!(decode_kinds, want);
    assert_eq!(
        entries.iter().filter(|e| e.sink.is_none()).count(),
        malformed_sent
    );
    let render: Vec<_> = entries.iter().filter(|e| e.sink.is_some()).collect();
    assert_eq!(render.len(), 1);
    assert_eq!(render[0].sink.as_deref(), Some("strict"));
    assert_eq!(render[0].kind, "render_failed");
    assert!(
        render[0].reason.contains("actor.id"),
        "{}",
        render[0].reason
    );
    assert_eq!(render[0].value.as_deref(), Some(headless));
    let not_utf8 = entries.iter().find(|e| e.kind == "not_utf8").unwrap();
    assert!(not_utf8.value.is_none() && not_utf8.value_base64.is_some());
    drop(store);

    // Committed offsets reached the end of every partition.
    let committed = committed(kafka.bootstrap_servers(), "pipeline-test", TOPIC, 4);
    let end: i64 = committed.values().sum();
    assert_eq!(end as u64, total, "committed {committed:?}");
}

/// The quick start's first command: the demo runs the whole pipeline on its embedded default
/// and everything it produced ends up in a sink or the quarantine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo-out");
    auditstream::demo::run(
        auditstream::demo::DemoOptions {
            events: 400,
            out: out.clone(),
            brokers: None,
            outage: std::time::Duration::from_secs(2),
        },
        Shutdown::new(),
    )
    .await
    .unwrap();
    let count = |p: &str| {
        std::fs::read_to_string(out.join(p))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(
        count("archive/audit.ndjson"),
        401,
        "400 events and the one without an actor"
    );
    assert_eq!(count("siem/events.json"), 400);
    for line in std::fs::read_to_string(out.join("siem/events.json"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["user"].is_string() && v["kafka"].is_string(), "{line}");
    }
    let security = std::fs::read_to_string(out.join("security/alerts.log")).unwrap();
    assert!(security.lines().count() > 0);
    assert!(security
        .lines()
        .all(|l| ["secret.", "user.role_changed", "api_key."]
            .iter()
            .any(|a| l.contains(a))));
    let store = Store::open(&out.join("park")).unwrap();
    assert_eq!(store.quarantine_entries().count(), 8);
}

/// Several topics; one of them holds only events no sink wants. Its offsets are committed
/// while the daemon runs (not only at the stop), and the quarantine can be read from the
/// command line once the daemon has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_topics_and_offsets_of_filtered_out_events_are_committed_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    kafka.create_topic("noise", 2).unwrap();
    let ids = produce_events(&kafka, TOPIC, 41, 300);
    kafka
        .send(TOPIC, Some(0), None, Some(b"{not json"))
        .unwrap();
    kafka.flush().unwrap();
    let path = write_config(
        dir.path(),
        kafka.bootstrap_servers(),
        "g-topics",
        TOPIC,
        "",
        &[("all", "filter = { \"actor.type\" = \"*\" }")],
    );
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("topics = [\"{TOPIC}\"]"),
        &format!("topics = [\"{TOPIC}\", \"noise\"]"),
    );
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let status = running.status.clone();
    wait_until(
        "the audit events delivered",
        Duration::from_secs(60),
        || status.sink("all").unwrap().delivered() >= ids.len() as u64,
    )
    .await;
    // Only now the events no sink wants: no delivery report follows them, yet their offsets
    // must be committed while the daemon runs.
    for i in 0..200 {
        let e = format!(r#"{{"id":"n-{i}","action":"health.ping"}}"#);
        kafka
            .send("noise", Some(i % 2), None, Some(e.as_bytes()))
            .unwrap();
    }
    kafka.flush().unwrap();
    let brokers = kafka.bootstrap_servers().to_string();
    wait_until(
        "the filtered-out topic to be committed",
        Duration::from_secs(30),
        || {
            committed(&brokers, "g-topics", "noise", 2)
                .values()
                .sum::<i64>()
                == 200
        },
    )
    .await;
    running.stop().await.unwrap();
    let all = read_seen(&dir.path().join("all.jsonl"));
    assert_eq!(assert_all_arrived(&ids, &all), 0);
    assert!(all.iter().all(|s| !s.id.starts_with("n-")));
    let committed_audit: i64 = committed(&brokers, "g-topics", TOPIC, 2).values().sum();
    assert_eq!(committed_audit as usize, ids.len() + 1);

    // The daemon has stopped: the command line opens the store itself.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditstream"))
        .args(["quarantine", "list", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("not_json") && text.contains(TOPIC), "{text}");
}

/// A file sink writes one record per line: a record whose template let a line break through
/// would read as two records, so it is quarantined for that sink (the others get it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_a_line_break_is_quarantined_for_a_line_sink() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 1).unwrap();
    let ids = produce_events(&kafka, TOPIC, 42, 20);
    let two_lines = r#"{"id":"two-lines","action":"user.login\nuser.logout"}"#;
    kafka
        .send(TOPIC, Some(0), None, Some(two_lines.as_bytes()))
        .unwrap();
    kafka.flush().unwrap();
    let path = write_config(
        dir.path(),
        kafka.bootstrap_servers(),
        "g-lines",
        TOPIC,
        "",
        &[("all", "")],
    );
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[[sinks]]\nname = \"plain\"\ntype = \"file\"\npath = \"{}\"\ntemplate = '{{{{id}}}} {{{{action}}}}'\n",
        dir.path().join("plain.log").display()
    ));
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let status = running.status.clone();
    wait_until("everything finished", Duration::from_secs(60), || {
        status.source.committable() > ids.len() as u64
    })
    .await;
    running.stop().await.unwrap();
    let plain = std::fs::read_to_string(dir.path().join("plain.log")).unwrap();
    assert_eq!(plain.lines().count(), ids.len(), "{plain}");
    assert!(!plain.contains("two-lines"));
    let all = read_seen(&dir.path().join("all.jsonl"));
    assert!(
        all.iter().any(|s| s.id == "two-lines"),
        "the JSON sink has it"
    );
    let store = Store::open(&dir.path().join("park")).unwrap();
    let q: Vec<_> = store.quarantine_entries().map(|e| e.unwrap().1).collect();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].sink.as_deref(), Some("plain"));
    assert!(q[0].reason.contains("line break"), "{}", q[0].reason);
}

/// A sink that must not see personal data gets the events without the redacted fields and
/// with pseudonyms (the same person, the same token); another sink of the same stream sees
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redaction_and_pseudonyms_apply_to_one_sink_only() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 1).unwrap();
    let ids = produce_events(&kafka, TOPIC, 43, 200);
    let path = write_config(
        dir.path(),
        kafka.bootstrap_servers(),
        "g-redact",
        TOPIC,
        "",
        &[],
    );
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (name, extra) in [
        ("full", ""),
        (
            "private",
            "redact = [\"metadata.ip\", \"changes.*.old\"]\npseudonymise = [\"actor.id\"]\npseudonymise_key = \"${AUDITSTREAM_TEST_PSEUDONYM_KEY:-a test key, 16+ chars}\"",
        ),
    ] {
        text.push_str(&format!(
            "\n[[sinks]]\nname = \"{name}\"\ntype = \"file\"\npath = \"{}\"\nformat = \"ndjson\"\n{extra}\n",
            dir.path().join(format!("{name}.jsonl")).display()
        ));
    }
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let status = running.status.clone();
    wait_until(
        "both sinks have everything",
        Duration::from_secs(60),
        || {
            ["full", "private"]
                .iter()
                .all(|s| status.sink(s).unwrap().delivered() >= ids.len() as u64)
        },
    )
    .await;
    running.stop().await.unwrap();
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.path().join(format!("{name}.jsonl")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (full, private) = (read("full"), read("private"));
    assert_eq!(full.len(), ids.len());
    assert_eq!(private.len(), ids.len());
    let mut tokens = std::collections::HashMap::new();
    let mut with_changes = 0;
    for (f, p) in full.iter().zip(&private) {
        assert_eq!(f["id"], p["id"], "same order");
        assert!(p["metadata"].get("ip").is_none(), "{p}");
        assert_eq!(f["metadata"]["request_id"], p["metadata"]["request_id"]);
        if let Some(changes) = p["changes"].as_object() {
            with_changes += 1;
            assert!(changes
                .values()
                .all(|c| c.get("old").is_none() && c.get("new").is_some()));
        }
        let (person, token) = (
            f["actor"]["id"].as_str().unwrap(),
            p["actor"]["id"].as_str().unwrap(),
        );
        assert_ne!(person, token);
        assert_eq!(token.len(), 32);
        let seen = tokens
            .entry(person.to_string())
            .or_insert(token.to_string());
        assert_eq!(seen, token, "one person, one token");
    }
    assert!(with_changes > 0 && tokens.len() > 1);
    let distinct: std::collections::HashSet<&String> = tokens.values().collect();
    assert_eq!(
        distinct.len(),
        tokens.len(),
        "different people, different tokens"
    );
}

/// Batches that cannot fill while the window is full go out at once. Eight partitions whose
/// batches would each take 1,000 events, with a window of 100 and an age limit of an hour:
/// the open batches hold the whole window before any fills, so without closing them when
/// the source waits for room, nothing more would be read for an hour. Every event is read,
/// and after the stop every event has arrived, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_closes_batches_that_could_not_fill() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 8).unwrap();
    let ids = produce_events(&kafka, TOPIC, 5, 2_000);

    let mut text = config_head(kafka.bootstrap_servers(), "window-test", TOPIC, dir.path());
    text.push_str(&format!(
        r#"
[pipeline]
max_in_flight_events = 100

[[sinks]]
name = "archive"
type = "file"
path = "{}"
template = '{COORDS_TEMPLATE}'
[sinks.batch]
max_events = 1000
max_age = "1h"
"#,
        dir.path().join("archive.jsonl").display()
    ));
    let config = dir.path().join("auditstream.toml");
    std::fs::write(&config, text).unwrap();

    let running = start_pipeline(&config).await;
    let status = running.status.clone();
    wait_until(
        "every event read, an hour before any batch could close by age",
        Duration::from_secs(60),
        || status.source.consumed() >= ids.len() as u64,
    )
    .await;
    // The last events wait in batches that do not fill (the stream is quiet, and the window
    // has room): they go when they reach their age, or, as here, at a graceful stop.
    running.stop().await.unwrap();

    let seen = read_seen(&dir.path().join("archive.jsonl"));
    assert_eq!(assert_all_arrived(&ids, &seen), 0, "no duplicates");
    assert_ordered_per_partition(&seen, false);
}
