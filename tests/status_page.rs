//! The status page in a real browser: headless Chromium loads `GET /` from a running pipeline
//! whose SIEM is down, and what it shows is checked: the broken sink in red with its error,
//! the healthy one in green, nothing loaded from elsewhere. A phone-sized screenshot is kept
//! at `target/status-page.png` for people to look at.
//!
//! Needs Chromium: run by `.ci/run` (which installs Debian's `chromium`) as
//! `cargo test --test status_page -- --ignored`; `CHROMIUM` names another binary.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use auditstream::embedded_kafka::EmbeddedKafka;
use auditstream::status::SinkState;
use common::servers::*;
use common::*;

const TOPIC: &str = "audit";

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Runs headless Chromium on `url` with `args` (a fresh profile, no network but loopback).
fn browse(url: &str, args: &[String]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=412,915",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromium()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium; .ci/run runs it"]
async fn the_status_page_shows_a_broken_sink_broken_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    let switch = Switch::start(receiver.serve().await, false).await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    let ids = produce_events(&kafka, TOPIC, 5, 300);
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-page"
topics = ["{TOPIC}"]
[admin]
listen = "127.0.0.1:0"
[park]
path = "{park}"
expired_dir = "{expired}"
probe_max_interval = "1s"

[[sinks]]
name = "siem"
type = "http"
url = "http://{siem}/"
template = '{COORDS_TEMPLATE}'
[sinks.batch]
max_events = 50
max_age = "100ms"
[sinks.retry]
initial_interval = "100ms"
max_interval = "200ms"
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
        brokers = kafka.bootstrap_servers(),
        park = dir.path().join("park").display(),
        expired = dir.path().join("expired").display(),
        siem = switch.addr,
        archive = dir.path().join("archive.jsonl").display(),
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let siem = running.status.sink("siem").unwrap().clone();
    let archive = running.status.sink("archive").unwrap().clone();
    wait_until(
        "the siem to break and the archive to deliver",
        Duration::from_secs(60),
        || siem.state() == SinkState::Broken && archive.delivered() >= ids.len() as u64,
    )
    .await;
    let url = format!("{}/", running.admin_base().await);

    // The broken sink is probed while the browser loads the page, and a dropped connection
    // reads as one of two errors ("reset by peer", "closed before message completed"): every
    // error the sink reports meanwhile is noted, and the page must show one of them.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let note_errors = {
        let (siem, seen) = (siem.clone(), seen.clone());
        move || {
            if let Some(e) = siem.snapshot().last_error {
                seen.lock().unwrap().insert(e);
            }
        }
    };
    note_errors();
    let sampler = tokio::spawn({
        let note_errors = note_errors.clone();
        async move {
            loop {
                note_errors();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || browse(&url, &["--dump-dom".into()])
    })
    .await
    .unwrap();
    sampler.abort();
    note_errors();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let section = |name: &str| -> String {
        let start = dom
            .find(&format!("id=\"sink-{name}\""))
            .unwrap_or_else(|| panic!("no section for {name} in:\n{dom}"));
        let end = dom[start..].find("</section>").unwrap() + start;
        dom[start..end].to_string()
    };
    let broken = section("siem");
    assert!(broken.contains(">broken<"), "{broken}");
    assert!(broken.contains("#d93025"), "red: {broken}");
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "a broken sink has an error");
    assert!(
        broken.contains("class=\"error\"") && seen.iter().any(|e| broken.contains(e.as_str())),
        "one of the errors {seen:?} is shown: {broken}"
    );
    assert!(broken.contains("events,"), "what is parked: {broken}");
    let healthy = section("archive");
    assert!(
        healthy.contains(">healthy<") && healthy.contains("#1e8e3e"),
        "{healthy}"
    );
    assert!(
        !dom.contains("src=\"http") && !dom.contains("<script"),
        "self-contained, no scripts"
    );

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let out = tokio::task::spawn_blocking({
        let arg = format!("--screenshot={}", shot.display());
        move || browse(&url, &[arg])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "a real screenshot ({} bytes)",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
    running.stop().await.unwrap();
}
