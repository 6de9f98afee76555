//! The park with real servers and real processes: an outage parks and replays in order while
//! the other sink goes on, a 401 parks until the credentials are fixed, kill -9 while parking
//! and draining loses nothing, and the limits (block, drop_oldest, max_age) export, never drop.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use auditstream::embedded_kafka::EmbeddedKafka;
use auditstream::generate::Generator;
use auditstream::park::Store;
use auditstream::status::SinkState;
use common::servers::*;
use common::*;

const TOPIC: &str = "audit";
const LONG: Duration = Duration::from_secs(90);

fn http_sink(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[sinks]]
name = "{name}"
type = "http"
url = "{url}"
template = '{COORDS_TEMPLATE}'
timeout = "2s"
{extra}
[sinks.batch]
max_events = 100
max_age = "100ms"
[sinks.retry]
initial_interval = "100ms"
max_interval = "500ms"
max_elapsed = "1s"
"#
    )
}

fn file_sink(name: &str, path: &std::path::Path) -> String {
    format!(
        r#"
[[sinks]]
name = "{name}"
type = "file"
path = "{}"
template = '{COORDS_TEMPLATE}'
[sinks.batch]
max_events = 100
max_age = "100ms"
"#,
        path.display()
    )
}

fn park_section(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "\n[park]\npath = \"{}\"\nexpired_dir = \"{}\"\nprobe_max_interval = \"1s\"\n{extra}\n",
        dir.join("park").display(),
        dir.join("expired").display()
    )
}

/// The head of a config without its [park] section (each test writes its own).
fn head(brokers: &str, group: &str, extra_pipeline: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{group}\"\ntopics = [\"{TOPIC}\"]\n[kafka.properties]\n\"auto.commit.interval.ms\" = 200\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 500\n[admin]\nlisten = \"127.0.0.1:0\"\n[pipeline]\nshutdown_timeout = \"10s\"\n{extra_pipeline}\n"
    )
}

/// Produces `n` events in the background at about `per_sec`; returns their ids when done.
fn produce_paced(
    kafka: &EmbeddedKafka,
    seed: u64,
    n: usize,
    per_sec: usize,
    done: &AtomicUsize,
) -> Vec<String> {
    let mut g = Generator::new(seed, 8);
    let chunk = (per_sec / 20).max(1);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let (key, e) = g.next_event();
        ids.push(e["id"].as_str().unwrap().to_string());
        kafka
            .send(
                TOPIC,
                None,
                Some(key.as_bytes()),
                Some(e.to_string().as_bytes()),
            )
            .unwrap();
        if i % chunk == chunk - 1 {
            kafka.flush().unwrap();
            done.store(i + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50)); // pacing, not waiting
        }
    }
    kafka.flush().unwrap();
    done.store(n, Ordering::SeqCst);
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_parks_and_replays_in_order_while_the_other_sink_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    let switch = Switch::start(receiver.serve().await, true).await;
    let kafka = std::sync::Arc::new(EmbeddedKafka::start(1).unwrap());
    kafka.create_topic(TOPIC, 4).unwrap();
    let mut text = head(kafka.bootstrap_servers(), "g-outage", "");
    text += &park_section(dir.path(), "");
    text += &http_sink("siem", &format!("http://{}/", switch.addr), "");
    text += &file_sink("archive", &dir.path().join("archive.jsonl"));
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let siem = running.status.sink("siem").unwrap().clone();
    let archive = running.status.sink("archive").unwrap().clone();

    let produced = std::sync::Arc::new(AtomicUsize::new(0));
    let (k, p) = (kafka.clone(), produced.clone());
    let producer = std::thread::spawn(move || produce_paced(&k, 31, 4000, 1000, &p));
    wait_until("the first deliveries", LONG, || siem.delivered() >= 300).await;

    // The SIEM goes away for a stretch.
    switch.set(false);
    wait_until("the sink to break", LONG, || {
        siem.state() == SinkState::Broken
    })
    .await;
    let at_break = produced.load(Ordering::SeqCst) as u64;
    // Meanwhile the archive keeps up with the stream: everything produced reaches it.
    let target = at_break + 800;
    wait_until("the archive to keep delivering", LONG, || {
        archive.delivered() >= target
    })
    .await;
    assert!(
        siem.snapshot().parked_events > 0,
        "the SIEM's batches are parked"
    );
    assert_eq!(archive.state(), SinkState::Healthy);
    let parked_while_down = siem.snapshot().parked_events;

    switch.set(true);
    let ids = tokio::task::spawn_blocking(move || producer.join().unwrap())
        .await
        .unwrap();
    wait_until("every event at the SIEM", LONG, || {
        siem.delivered() >= ids.len() as u64
    })
    .await;
    wait_until("the park to drain", LONG, || {
        siem.snapshot().parked_events == 0
    })
    .await;
    wait_until("healthy again", LONG, || siem.state() == SinkState::Healthy).await;
    wait_until("the archive has everything", LONG, || {
        archive.delivered() >= ids.len() as u64
    })
    .await;
    running.stop().await.unwrap();

    let seen = parse_seen(&receiver.accepted_lines());
    assert_all_arrived(&ids, &seen);
    assert_first_arrivals_ordered(&seen);
    let archived = read_seen(&dir.path().join("archive.jsonl"));
    assert_eq!(assert_all_arrived(&ids, &archived), 0);
    assert_ordered_per_partition(&archived, false);
    eprintln!("{parked_while_down} events were parked during the outage and replayed");
    let store = Store::open(&dir.path().join("park")).unwrap();
    let counts = store.sink_park("siem").unwrap().verify().unwrap();
    assert_eq!(counts.entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_park_blocks_the_stream_and_it_resumes_when_the_sink_drains() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    let switch = Switch::start(receiver.serve().await, false).await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    let ids = produce_events(&kafka, TOPIC, 32, 1500);
    let mut text = head(
        kafka.bootstrap_servers(),
        "g-block",
        "max_in_flight_events = 200",
    );
    text += &park_section(dir.path(), "max_bytes = \"24KiB\"\nwhen_full = \"block\"");
    text += &http_sink("siem", &format!("http://{}/", switch.addr), "");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let status = running.status.clone();
    let siem = status.sink("siem").unwrap().clone();

    wait_until("the park to fill and the source to pause", LONG, || {
        siem.snapshot()
            .holding
            .unwrap_or_default()
            .contains("park is full")
            && status.source.paused()
    })
    .await;
    let snap = siem.snapshot();
    assert!(
        snap.parked_bytes <= 24 * 1024,
        "bounded: {}",
        snap.parked_bytes
    );
    let held = status.source.committable();
    assert!(
        held < ids.len() as u64,
        "the stream is held, not dropped ({held})"
    );
    // Held at the window: what waits beyond it stays in Kafka and librdkafka's read-ahead.
    let in_flight = status.source.in_flight();
    assert!(in_flight <= 200, "{in_flight} in flight, over the window");

    switch.set(true);
    wait_until("every event delivered", LONG, || {
        siem.delivered() >= ids.len() as u64
    })
    .await;
    wait_until("the source to resume", LONG, || !status.source.paused()).await;
    running.stop().await.unwrap();
    let seen = parse_seen(&receiver.accepted_lines());
    assert_all_arrived(&ids, &seen);
    assert_first_arrivals_ordered(&seen);
}

/// Reads every export file under `dir`: (reason, id, partition, offset) per record.
fn exported(dir: &std::path::Path) -> Vec<(String, String, i32, i64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    // Whole exports only: one being written is a hidden `.partial` file.
    let mut files: Vec<_> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ndjson"))
        .collect();
    files.sort();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let record: serde_json::Value =
                serde_json::from_str(v["record"].as_str().unwrap()).unwrap();
            assert_eq!(v["sink"], "siem");
            // Entries parked behind a failing one were never attempted themselves.
            let err = v["last_error"].as_str().unwrap_or("401");
            assert!(err.contains("401"), "{line}");
            assert_eq!(record["o"], v["offset"]);
            out.push((
                v["reason"].as_str().unwrap().to_string(),
                record["id"].as_str().unwrap().to_string(),
                v["partition"].as_i64().unwrap() as i32,
                v["offset"].as_i64().unwrap(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_batches_past_max_age_are_exported_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    receiver.then(Answer::Status(401));
    let addr = receiver.serve().await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    let ids = produce_events(&kafka, TOPIC, 33, 400);
    let mut text = head(kafka.bootstrap_servers(), "g-expire", "");
    text += &park_section(dir.path(), "max_age = \"2s\"");
    text += &http_sink("siem", &format!("http://{addr}/"), "");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let siem = running.status.sink("siem").unwrap().clone();
    wait_until("everything parked", LONG, || {
        siem.snapshot().parked_events == ids.len() as u64
    })
    .await;
    let exports = dir.path().join("expired");
    wait_until("everything expired", LONG, || {
        exported(&exports).len() == ids.len()
    })
    .await;
    wait_until("the park to be empty", LONG, || {
        siem.snapshot().parked_events == 0
    })
    .await;
    // Counted where people look.
    let metrics = reqwest::get(format!("{}/metrics", running.admin_base().await))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expired: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"auditstream_expired_events_total{sink="siem"} "#))
        .unwrap_or_else(|| panic!("no expired counter in:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(expired >= ids.len() as f64, "{expired}");
    running.stop().await.unwrap();
    let rows = exported(&exports);
    assert!(rows.iter().all(|r| r.0 == "expired"));
    let got: BTreeSet<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        got, want,
        "every expired event is in the export, with its metadata"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_exports_the_oldest_batches_to_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    receiver.then(Answer::Status(401));
    let addr = receiver.serve().await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 1).unwrap();
    let ids = produce_events(&kafka, TOPIC, 34, 600);
    let mut text = head(kafka.bootstrap_servers(), "g-drop", "");
    text += &park_section(
        dir.path(),
        "max_bytes = \"16KiB\"\nwhen_full = \"drop_oldest\"",
    );
    text += &http_sink("siem", &format!("http://{addr}/"), "");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let status = running.status.clone();
    wait_until("every message parked or exported", LONG, || {
        status.source.committable() >= ids.len() as u64
    })
    .await;
    let siem = status.sink("siem").unwrap().snapshot();
    assert!(siem.parked_bytes <= 16 * 1024, "{}", siem.parked_bytes);
    running.stop().await.unwrap();

    let rows = exported(&dir.path().join("expired"));
    assert!(!rows.is_empty() && rows.iter().all(|r| r.0 == "dropped_oldest"));
    // The oldest went: every exported offset is below every parked one.
    let store = Store::open(&dir.path().join("park")).unwrap();
    let park = store.sink_park("siem").unwrap();
    let parked: Vec<i64> = park
        .entries_iter()
        .flat_map(|p| p.unwrap().batch.offsets())
        .collect();
    let max_dropped = rows.iter().map(|r| r.3).max().unwrap();
    assert!(parked.iter().all(|o| *o > max_dropped));
    // Nothing vanished: each event is exported or still parked.
    assert_eq!(rows.len() + parked.len(), ids.len());
    park.verify().unwrap();
}

fn auditstream(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditstream"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_401_parks_and_replays_after_the_credentials_are_fixed_and_the_daemon_restarted() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::new();
    receiver.require_auth("Bearer right-token");
    let addr = rt.block_on(receiver.serve());
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    let ids = produce_events(&kafka, TOPIC, 35, 500);
    let config = |token: &str| {
        let mut text = head(kafka.bootstrap_servers(), "g-401", "");
        text += &park_section(dir.path(), "");
        text += &http_sink(
            "siem",
            &format!("http://{addr}/"),
            &format!("auth = {{ bearer = \"{token}\" }}"),
        );
        let path = dir.path().join("auditstream.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let path = config("wrong-token");
    let cfg = path.to_str().unwrap().to_string();
    let mut d = Daemon::start(&path, &dir.path().join("run1.log"));
    wait_for("the sink to park everything", LONG, || {
        d.log_text().contains("sink is broken")
            && committed(kafka.bootstrap_servers(), "g-401", TOPIC, 2)
                .values()
                .sum::<i64>()
                == ids.len() as i64
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(LONG), Some(0));
    assert!(receiver.accepted_lines().is_empty());

    // What a person sees while it is stopped.
    let (code, out, _) = auditstream(&["parked", "list", "--config", &cfg]);
    assert_eq!(code, 0);
    let row = out.lines().find(|l| l.starts_with("siem")).unwrap();
    assert!(row.contains(" 500 ") && row.contains("401"), "{out}");
    let (code, out, _) = auditstream(&[
        "parked", "show", "--config", &cfg, "--sink", "siem", "--limit", "2",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    let export = dir.path().join("export.ndjson");
    let (code, _, _) = auditstream(&[
        "parked",
        "export",
        "--config",
        &cfg,
        "--sink",
        "siem",
        "--out",
        export.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(&export).unwrap().lines().count(),
        500
    );
    let (code, _, err) = auditstream(&[
        "parked",
        "purge",
        "--config",
        &cfg,
        "--sink",
        "siem",
        "--older-than",
        "1h",
    ]);
    assert_eq!(code, 2, "purge needs --yes: {err}");

    // The credentials are fixed and the daemon restarted: the park replays, in order.
    config("right-token");
    let mut d = Daemon::start(&path, &dir.path().join("run2.log"));
    wait_for("the replay", LONG, || {
        receiver.accepted_lines().len() >= ids.len()
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(LONG), Some(0));
    let seen = parse_seen(&receiver.accepted_lines());
    assert_eq!(assert_all_arrived(&ids, &seen), 0);
    assert_ordered_per_partition(&seen, false);
    let (_, out, _) = auditstream(&["parked", "list", "--config", &cfg]);
    let row = out.lines().find(|l| l.starts_with("siem")).unwrap();
    assert!(
        row.split_whitespace().nth(1) == Some("0"),
        "empty after the replay: {out}"
    );
}

/// kill -9 at random moments while the daemon parks (the SIEM is down) and while it drains
/// (the SIEM is back), then a clean run: nothing lost, the store opens, counters match.
/// Rounds: AUDITSTREAM_KILL_ROUNDS (default 2; `.ci/run` runs 20).
#[test]
fn kill_dash_nine_while_parking_and_draining_loses_nothing() {
    let rounds: usize = std::env::var("AUDITSTREAM_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::new();
    let switch = rt.block_on(async { Switch::start(receiver.serve().await, false).await });
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let mut text = head(kafka.bootstrap_servers(), "g-crash", "");
    // Every drain compacts the store (when it has doubled since the last), so kills land
    // around compactions too.
    text += &park_section(dir.path(), "compact_above = \"1KiB\"");
    text += &http_sink("siem", &format!("http://{}/", switch.addr), "");
    text += &file_sink("archive", &dir.path().join("archive.jsonl"));
    let path = dir.path().join("auditstream.toml");
    std::fs::write(&path, text).unwrap();
    let produced = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let producer = s.spawn(|| produce_paced(&kafka, 36, 400 * rounds + 400, 400, &produced));
        for round in 0..rounds {
            // Alternate: the SIEM down (the daemon parks), the SIEM up (it drains).
            switch.set(round % 2 == 1);
            let mut d = Daemon::start(&path, &dir.path().join(format!("round{round}.log")));
            let log = d.log.clone();
            wait_for("the daemon to start", LONG, || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("partitions assigned")
            });
            std::thread::sleep(Duration::from_millis(fastrand::u64(200..1500)));
            assert!(
                d.child.try_wait().unwrap().is_none(),
                "the daemon died on its own:\n{}",
                d.log_text()
            );
            d.signal(libc::SIGKILL);
            d.wait(LONG);
        }
        let ids = producer.join().unwrap();
        switch.set(true);
        let mut d = Daemon::start(&path, &dir.path().join("final.log"));
        // Started (the park opened and scanned) before anything is judged: earlier rounds may
        // already have delivered every event, and the drain check below reads the start-up
        // lines. (Signals are the helper's concern: `Daemon::signal` waits until they are
        // handled.)
        let log = d.log.clone();
        wait_for("the final daemon to start", LONG, || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("partitions assigned")
        });
        wait_for(
            "every event at the SIEM and in the archive",
            Duration::from_secs(120),
            || {
                let at_siem: BTreeSet<String> = parse_seen(&receiver.accepted_lines())
                    .into_iter()
                    .map(|s| s.id)
                    .collect();
                let archived: BTreeSet<String> = read_seen(&dir.path().join("archive.jsonl"))
                    .into_iter()
                    .map(|s| s.id)
                    .collect();
                ids.iter()
                    .all(|id| at_siem.contains(id) && archived.contains(id))
            },
        );
        wait_for("the park to drain", LONG, || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("park drained")
                || !std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("parked batches from an earlier run")
        });
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait(LONG), Some(0), "{}", d.log_text());
        let seen = parse_seen(&receiver.accepted_lines());
        assert_first_arrivals_ordered(&seen);
        let store = Store::open(&dir.path().join("park")).unwrap();
        let counts = store.sink_park("siem").unwrap().verify().unwrap();
        assert_eq!(counts.entries, 0, "drained");
        // Each start after a kill compared the persisted counters with a scan of the store
        // (and would have said so, and repaired them, had they differed).
        let mut starts = 0;
        for round in (0..rounds)
            .map(|r| format!("round{r}.log"))
            .chain(["final.log".to_string()])
        {
            let text = std::fs::read_to_string(dir.path().join(&round)).unwrap_or_default();
            starts += 1;
            assert!(
                !text.contains("park counters did not match"),
                "{round}: the counters after a kill -9 did not match the store:\n{text}"
            );
        }
        eprintln!("{starts} starts after kill -9 found their park counters matching the store");
        let compactions: usize = (0..rounds)
            .map(|r| format!("round{r}.log"))
            .chain(["final.log".to_string()])
            .map(|log| {
                std::fs::read_to_string(dir.path().join(log))
                    .unwrap_or_default()
                    .matches("park compacted")
                    .count()
            })
            .sum();
        eprintln!("{compactions} compactions of the park store in these runs");
        eprintln!(
            "{rounds} kill -9 rounds: {} events, {} requests at the SIEM, nothing lost",
            ids.len(),
            receiver.requests().len()
        );
    });
}

/// The destination fails again while the park is being replayed: the sink goes back to broken
/// with nothing lost or reordered, and the next recovery finishes the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_during_the_drain_returns_to_broken_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    // Each accepted request takes 40 ms: the drain of ~20 batches takes about a second.
    receiver.then(Answer::Slow(Duration::from_millis(40)));
    let switch = Switch::start(receiver.serve().await, false).await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    let ids = produce_events(&kafka, TOPIC, 37, 2000);
    let mut text = head(kafka.bootstrap_servers(), "g-drain-fail", "");
    text += &park_section(dir.path(), "");
    text += &http_sink("siem", &format!("http://{}/", switch.addr), "");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let siem = running.status.sink("siem").unwrap().clone();
    wait_until("everything parked", LONG, || {
        siem.snapshot().parked_events == ids.len() as u64 && siem.state() == SinkState::Broken
    })
    .await;

    switch.set(true);
    wait_until("the drain to be under way", LONG, || {
        let s = siem.snapshot();
        s.replayed_events > 0 && s.parked_events > 0
    })
    .await;
    switch.set(false);
    wait_until("broken again, with the rest still parked", LONG, || {
        siem.state() == SinkState::Broken
    })
    .await;
    let left = siem.snapshot().parked_events;
    assert!(left > 0 && left < ids.len() as u64, "{left} left");

    switch.set(true);
    wait_until("the park to drain", LONG, || {
        siem.snapshot().parked_events == 0 && siem.state() == SinkState::Healthy
    })
    .await;
    running.stop().await.unwrap();
    let seen = parse_seen(&receiver.accepted_lines());
    // The batch in flight when the connection dropped may have arrived and is sent again
    // (at-least-once): at most that one batch of 100 twice.
    let twice = assert_all_arrived(&ids, &seen);
    assert!(twice <= 100, "{twice} events arrived more than once");
    assert_first_arrivals_ordered(&seen);
    eprintln!(
        "{left} of {} events were still parked when the drain failed; {twice} arrived twice",
        ids.len()
    );
}

/// The child process of `kill_dash_nine_during_compactions_loses_nothing` (it does nothing
/// unless that test started it): parks, quarantines, queues, releases and compacts the store in
/// a loop, printing each write once it is acknowledged, until it is killed.
#[test]
#[ignore = "the child process of kill_dash_nine_during_compactions_loses_nothing, which starts it with --ignored (that test runs in cargo test, so in .ci/run)"]
fn compaction_child() {
    use auditstream::batch::{Batch, Record};
    use auditstream::event::TopicPartition;
    use auditstream::park::export::{ExportReason, Exporter};
    use auditstream::park::Release;
    let Some(dir) = std::env::var_os("AUDITSTREAM_COMPACTION_CHILD") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let round: i64 = std::env::var("AUDITSTREAM_COMPACTION_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(&dir.join("park")).unwrap();
        let park = store.sink_park("siem").unwrap();
        let outbox = store.fifo::<i64>("outbox").unwrap();
        let exporter = Exporter::new(&dir.join("exports"));
        let batch = |offset: i64| {
            let mut b = Batch::new(
                TopicPartition {
                    topic: "t".into(),
                    partition: 0,
                },
                None,
            );
            for i in 0..20 {
                b.push(Record {
                    offset: offset + i,
                    body: format!("{{\"o\":{},\"pad\":\"{}\"}}", offset + i, "p".repeat(500)),
                });
            }
            b
        };
        // A few MiB outside the parks, so that a compaction has something to copy.
        if store.quarantine_entries().next().is_none() {
            let filler: Vec<_> = (0..3000)
                .map(|i| common::quarantined(-1 - i, "q".repeat(1000)))
                .collect();
            store.quarantine_durably(&filler).await.unwrap();
        }
        for i in 0.. {
            let offset = round * 1_000_000 + i * 100;
            for j in 0..10 {
                let seq = park.append(&batch(offset + j * 20), None).await.unwrap();
                println!("parked {seq}");
            }
            store
                .quarantine_durably(&[common::quarantined(offset, "q".repeat(10))])
                .await
                .unwrap();
            println!("quarantined {offset}");
            let seq = outbox.push(&offset).unwrap();
            store.flush().await.unwrap();
            println!("pushed {seq}");
            // All but the newest two leave the park (exported: the proof a release needs).
            let parked: Vec<_> = park.entries_iter().map(|p| p.unwrap()).collect();
            let leaving = &parked[..parked.len().saturating_sub(2)];
            let proofs = exporter
                .export("siem", leaving, ExportReason::Purged)
                .unwrap();
            for (p, proof) in leaving.iter().zip(proofs) {
                park.release(p, Release::Exported(proof)).unwrap();
                println!("released {}", p.seq);
            }
            println!("compacting");
            let took = std::time::Instant::now();
            let done = store.compact().unwrap();
            println!(
                "compacted gen-{} {}",
                done.generation,
                took.elapsed().as_micros()
            );
        }
    });
}

/// kill -9 of a real process while it compacts the store (and parks, quarantines, queues and
/// releases around its compactions), at a random moment of a compaction each time, then the
/// store opened again: it is on one generation, which holds every acknowledged write that was
/// not released, with matching counters, and sequence numbers go on growing.
/// Kills: AUDITSTREAM_KILL_ROUNDS (default 6).
#[test]
fn kill_dash_nine_during_compactions_loses_nothing() {
    use std::io::BufRead;
    let rounds: usize = std::env::var("AUDITSTREAM_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let (mut parked, mut released, mut quarantined, mut pushed) = (
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    );
    let mut inside = 0;
    // The generation live when the child's last compaction began; kills before and after the
    // switch to the next.
    let (mut live_before, mut switched) = (1, [0, 0]);
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "compaction_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("AUDITSTREAM_COMPACTION_CHILD", dir.path())
            .env("AUDITSTREAM_COMPACTION_ROUND", round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        // After one or two whole compactions, to know how long one takes here.
        let kill_at = fastrand::usize(2..4);
        let mut took = 0;
        let (mut compactions, mut last, mut killed) = (0, String::new(), false);
        // Every line the child printed before it died was acknowledged first.
        for line in out.lines() {
            let line = line.unwrap();
            let mut words = line.split_whitespace();
            match (
                words.next(),
                words.next().and_then(|n| n.parse::<i64>().ok()),
            ) {
                (Some("parked"), Some(seq)) => drop(parked.insert(seq as u64)),
                (Some("released"), Some(seq)) => drop(released.insert(seq as u64)),
                (Some("quarantined"), Some(offset)) => drop(quarantined.insert(offset)),
                (Some("pushed"), Some(seq)) => drop(pushed.insert(seq as u64)),
                (Some("compacting"), None) => compactions += 1,
                (Some("compacted"), None) => {
                    let (gen, micros) = line["compacted gen-".len()..].split_once(' ').unwrap();
                    live_before = gen.parse().unwrap();
                    took = micros.parse().unwrap();
                }
                _ => {}
            }
            if line.starts_with("parked ")
                || line.starts_with("released ")
                || line.starts_with("quarantined ")
                || line.starts_with("pushed ")
                || line.starts_with("compact")
            {
                last = line.clone();
            }
            if compactions == kill_at && !killed {
                // Somewhere in the compaction just begun: in even rounds anywhere (mostly its
                // copy, the longest step), in odd rounds near its end (the switch to the new
                // generation and the deletion of the old).
                let from = if round % 2 == 0 { 0 } else { took * 85 / 100 };
                std::thread::sleep(Duration::from_micros(fastrand::u64(from..=took)));
                // SAFETY: kill(2) on our own child's pid.
                assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(killed, "the child ended on its own: {status}");
        if last == "compacting" {
            inside += 1;
        }

        let park_dir = dir.path().join("park");
        let store = Store::open(&park_dir).unwrap();
        let generation = store.generation();
        if last == "compacting" {
            // The kill came before CURRENT's switch (the old generation is live) or after it.
            assert!(
                generation == live_before || generation == live_before + 1,
                "round {round}: gen-{generation} live after a kill during gen-{live_before}'s compaction"
            );
            switched[usize::from(generation > live_before)] += 1;
        }
        live_before = generation;
        let dirs: Vec<String> = std::fs::read_dir(&park_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("gen-"))
            .collect();
        assert_eq!(dirs, [format!("gen-{generation}")], "round {round}");
        let siem = store.sink_park("siem").unwrap();
        let counts = siem.verify().unwrap();
        let present: BTreeSet<u64> = siem
            .headers(usize::MAX)
            .unwrap()
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(counts.entries, present.len() as u64);
        for seq in parked.difference(&released) {
            assert!(
                present.contains(seq),
                "round {round}: parked entry {seq} lost"
            );
        }
        let in_quarantine: BTreeSet<i64> = store
            .quarantine_entries()
            .map(|e| e.unwrap().1.offset)
            .collect();
        assert!(
            quarantined.is_subset(&in_quarantine),
            "round {round}: quarantined entries lost"
        );
        assert_eq!(in_quarantine.iter().filter(|o| **o < 0).count(), 3000);
        let outbox = store.fifo::<i64>("outbox").unwrap();
        let queued: BTreeSet<u64> = outbox.all().unwrap().iter().map(|(s, _)| *s).collect();
        assert!(
            pushed.is_subset(&queued),
            "round {round}: outbox entries lost"
        );
        let highest = [&present, &queued, &parked, &pushed]
            .iter()
            .filter_map(|s| s.last().copied())
            .max()
            .unwrap_or(0);
        let next = outbox.push(&-1).unwrap();
        assert!(next > highest, "round {round}: {next} after {highest}");
        pushed.insert(next);
    }
    eprintln!(
        "{rounds} kill -9 rounds, {inside} inside a compaction ({} before the switch to the new generation, {} after): {} entries parked, {} quarantined, {} queued, nothing lost",
        switched[0],
        switched[1],
        parked.len(),
        quarantined.len(),
        pushed.len()
    );
    assert!(inside > 0, "no kill landed inside a compaction");
}
