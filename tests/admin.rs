//! The admin API over real HTTP: each endpoint, the token rules, metrics that move as events
//! flow and as a sink breaks, no secret in any answer; and the command line reaching a running
//! daemon (a child process) through it, with JSON logs that name the sink.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use auditstream::embedded_kafka::EmbeddedKafka;
use auditstream::status::SinkState;
use common::servers::*;
use common::*;

const TOPIC: &str = "audit";
const LONG: Duration = Duration::from_secs(60);
const TOKEN: &str = "s3cret-admin-token";

fn config(
    brokers: &str,
    group: &str,
    dir: &std::path::Path,
    listen: &str,
    siem_url: &str,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{TOPIC}"]
[kafka.properties]
"auto.commit.interval.ms" = 200
"statistics.interval.ms" = 500
[admin]
listen = "{listen}"
token = "{TOKEN}"
[park]
path = "{park}"
expired_dir = "{expired}"
probe_max_interval = "500ms"

[[sinks]]
name = "siem"
type = "http"
url = "{siem_url}?token=querysecret"
auth = {{ bearer = "topsecret-credential" }}
template = '{COORDS_TEMPLATE}'
[sinks.batch]
max_events = 50
max_age = "100ms"
[sinks.retry]
initial_interval = "100ms"
max_interval = "300ms"
max_elapsed = "300ms"

[[sinks]]
name = "archive"
type = "file"
path = "{archive}"
template = '{COORDS_TEMPLATE}'
[sinks.batch]
max_events = 50
max_age = "100ms"
"#,
        park = dir.join("park").display(),
        expired = dir.join("expired").display(),
        archive = dir.join("archive.jsonl").display(),
    )
}

/// The value of an unlabelled or labelled series in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_token_rules_metrics_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    let switch = Switch::start(receiver.serve().await, false).await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    let first = produce_events(&kafka, TOPIC, 71, 200);
    kafka.send(TOPIC, Some(0), None, Some(b"not json")).unwrap();
    kafka.flush().unwrap();
    let text = config(
        kafka.bootstrap_servers(),
        "g-admin",
        dir.path(),
        "127.0.0.1:0",
        &format!("http://{}/", switch.addr),
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let status = running.status.clone();
    let base = running.admin_base().await;
    let http = reqwest::Client::new();
    let get = |p: &str| {
        let (http, url) = (http.clone(), format!("{base}{p}"));
        async move { http.get(url).send().await.unwrap() }
    };

    assert_eq!(get("/health").await.text().await.unwrap(), "ok\n");
    let siem = status.sink("siem").unwrap().clone();
    let archive = status.sink("archive").unwrap().clone();
    wait_until("the siem to break and the archive to deliver", LONG, || {
        siem.state() == SinkState::Broken && archive.delivered() >= first.len() as u64
    })
    .await;
    assert_eq!(get("/ready").await.status(), 200);

    // /status: every sink with its state, error and park depth.
    let st: serde_json::Value = get("/status").await.json_value().await;
    let sinks = st["sinks"].as_array().unwrap();
    let s = sinks.iter().find(|s| s["name"] == "siem").unwrap();
    assert_eq!(s["state"], "broken");
    assert_eq!(s["type"], "http");
    assert!(s["parked_events"].as_u64().unwrap() > 0);
    assert!(
        s["last_error"].as_str().unwrap().contains("cannot connect")
            || s["last_error"].as_str().unwrap().contains("request failed"),
        "{s}"
    );
    for key in [
        "since",
        "parked_bytes",
        "oldest_parked_at",
        "delivered_events",
        "quarantined_events",
    ] {
        assert!(s.get(key).is_some(), "{key} in {s}");
    }
    assert_eq!(
        sinks.iter().find(|s| s["name"] == "archive").unwrap()["state"],
        "healthy"
    );
    assert_eq!(st["source"]["rejected_messages"], 1);

    // /metrics move as events flow and as a sink breaks.
    let m = get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(&m, r#"auditstream_sink_state{sink="siem",state="broken"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"auditstream_sink_state{sink="archive",state="healthy"}"#
        ),
        Some(1.0)
    );
    let before = metric(&m, r#"auditstream_delivered_events_total{sink="archive"}"#).unwrap();
    assert!(metric(&m, r#"auditstream_park_events{sink="siem"}"#).unwrap() > 0.0);
    assert!(metric(&m, r#"auditstream_parked_events_total{sink="siem"}"#).unwrap() > 0.0);
    assert!(metric(&m, "auditstream_consumed_events_total").unwrap() >= 201.0);
    assert!(
        m.contains("auditstream_delivery_duration_seconds_bucket"),
        "latency histogram"
    );
    let more = produce_events(&kafka, TOPIC, 72, 100);
    wait_until("more deliveries", LONG, || {
        archive.delivered() >= (first.len() + more.len()) as u64
    })
    .await;
    let m = get("/metrics").await.text().await.unwrap();
    let after = metric(&m, r#"auditstream_delivered_events_total{sink="archive"}"#).unwrap();
    assert!(after >= before + more.len() as f64, "{before} -> {after}");
    let mut gauges = false;
    for _ in 0..100 {
        let m = get("/metrics").await.text().await.unwrap();
        if m.contains("auditstream_committed_offset{")
            && m.contains("auditstream_consumer_lag_events{")
        {
            gauges = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gauges, "committed offsets and consumer lag per partition");

    // The page for people.
    let page = get("/").await.text().await.unwrap();
    assert!(
        page.contains("id=\"sink-siem\"") && page.contains(">broken<"),
        "{page}"
    );

    // Token rules: actions and exports need it, and change nothing without it.
    let parked_before = siem.snapshot().parked_events;
    for auth in [None, Some("Bearer wrong-token"), Some("Basic czNjcmV0")] {
        let mut req = http.post(format!("{base}/sinks/siem/purge?older_than=0s"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "{auth:?}");
        let mut req = http.post(format!("{base}/sinks/siem/replay"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().await.unwrap().status(), 401);
        assert_eq!(
            http.get(format!("{base}/sinks/siem/parked/export"))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            http.get(format!("{base}/quarantine/export"))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    }
    assert_eq!(
        siem.snapshot().parked_events,
        parked_before,
        "nothing changed"
    );
    let listing: serde_json::Value = get("/sinks/siem/parked?limit=3").await.json_value().await;
    assert_eq!(listing["parked"].as_array().unwrap().len(), 3);
    let q: serde_json::Value = get("/quarantine").await.json_value().await;
    assert_eq!(q["total"], 1);
    let export = http
        .get(format!("{base}/sinks/siem/parked/export"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    let lines = export.text().await.unwrap().lines().count() as u64;
    assert_eq!(lines, siem.snapshot().parked_events);
    let replay = http
        .post(format!("{base}/sinks/siem/replay"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);

    // No secret in any answer.
    for p in [
        "/status",
        "/",
        "/metrics",
        "/sinks/siem/parked",
        "/quarantine",
    ] {
        let body = get(p).await.text().await.unwrap();
        for secret in ["topsecret-credential", "querysecret", TOKEN] {
            assert!(!body.contains(secret), "{p} shows {secret}");
        }
    }

    // A purge with the token exports first, then removes.
    let purge = http
        .post(format!("{base}/sinks/siem/purge?older_than=0s"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    let purged: serde_json::Value = purge.json_value().await;
    assert!(purged["purged_events"].as_u64().unwrap() >= parked_before);
    let exported: usize = std::fs::read_dir(dir.path().join("expired"))
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(exported as u64, purged["purged_events"].as_u64().unwrap());
    running.stop().await.unwrap();
}

trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

fn auditstream(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditstream"))
        .args(args)
        .env("AUDITSTREAM_ADMIN_TOKEN", TOKEN)
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
fn the_command_line_reaches_a_running_daemon_and_json_logs_name_the_sink() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::new();
    let switch = rt.block_on(async { Switch::start(receiver.serve().await, false).await });
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    let ids = produce_events(&kafka, TOPIC, 73, 300);
    kafka.send(TOPIC, Some(1), None, Some(b"[1,2,3]")).unwrap();
    kafka.flush().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let text = config(
        kafka.bootstrap_servers(),
        "g-cli",
        dir.path(),
        &listen,
        &format!("http://{}/", switch.addr),
    );
    let path = dir.path().join("auditstream.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = path.to_str().unwrap();

    let log = dir.path().join("run.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_auditstream"))
        .args(["--log-format", "json", "run", "--config", cfg])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The daemon first, then the commands (which would open the store themselves if no daemon
    // answered yet).
    wait_for("the daemon's admin API", LONG, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("admin API listening")
    });
    let started = std::time::Instant::now();
    loop {
        let last = auditstream(&["parked", "list", "--config", cfg]);
        let (code, out, _) = &last;
        if *code == 0
            && out
                .lines()
                .any(|l| l.starts_with("siem") && l.contains(" 300 "))
        {
            break;
        }
        assert!(
            started.elapsed() < LONG,
            "timed out waiting for everything parked; the last `parked list` said:\n{}\n{}\nthe daemon's log:\n{}",
            last.1,
            last.2,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = auditstream(&["parked", "list", "--config", cfg]);
    assert_eq!(code, 0);
    assert!(err.contains("asking it at"), "{err}");
    assert!(out.lines().any(|l| l.starts_with("siem")), "{out}");
    let (code, out, _) = auditstream(&[
        "parked", "show", "--config", cfg, "--sink", "siem", "--limit", "2",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    let (code, out, _) = auditstream(&["quarantine", "list", "--config", cfg]);
    assert_eq!(code, 0);
    assert!(out.contains("not_an_object"), "{out}");
    let (code, out, _) = auditstream(&["quarantine", "export", "--config", cfg]);
    assert_eq!(code, 0);
    assert!(out.contains("[1,2,3]"), "{out}");

    // The destination is back: replay through the daemon, with progress, until the park is empty.
    switch.set(true);
    let (code, _, err) = auditstream(&["parked", "replay", "--config", cfg, "--sink", "siem"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is empty"), "{err}");
    assert!(parse_seen(&receiver.accepted_lines()).len() >= ids.len());

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // JSON logs: one object per line, and lines about a sink name it.
    let logs = std::fs::read_to_string(&log).unwrap();
    let mut about_siem = 0;
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let msg = v["message"].as_str().unwrap_or_default();
        if msg.contains("delivery failed")
            || msg.contains("sink is broken")
            || msg.contains("park drained")
        {
            let named = v["sink"] == "siem" || v["span"]["sink"] == "siem";
            assert!(named, "{line}");
            about_siem += 1;
        }
    }
    assert!(about_siem >= 2, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_token_refuses_every_action() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 1).unwrap();
    // `token = "${UNSET:-}"` is how an empty token usually arrives.
    let text = config(
        kafka.bootstrap_servers(),
        "g-empty-token",
        dir.path(),
        "127.0.0.1:0",
        "http://127.0.0.1:9/",
    )
    .replace(
        &format!("token = \"{TOKEN}\""),
        "token = \"${AUDITSTREAM_TEST_UNSET_TOKEN:-}\"",
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let base = running.admin_base().await;
    let http = reqwest::Client::new();
    for auth in [None, Some("Bearer "), Some("Bearer")] {
        let mut req = http.post(format!("{base}/sinks/siem/replay"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "{auth:?}");
    }
    running.stop().await.unwrap();
}
