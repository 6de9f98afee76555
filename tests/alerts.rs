//! Alerts over a real SMTP conversation (and the .eml outbox): broken, reminder and recovered
//! messages with the right contents for an HTTP outage, an S3 permission error and a TLS
//! failure; an SMTP server that is down delays the alert, never the deliveries.

mod common;

use std::time::Duration;

use auditstream::embedded_kafka::EmbeddedKafka;
use auditstream::status::SinkState;
use common::servers::*;
use common::*;

const TOPIC: &str = "audit";
const LONG: Duration = Duration::from_secs(60);

fn head(brokers: &str, group: &str, dir: &std::path::Path, alerts: &str) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{TOPIC}"]
[kafka.properties]
"auto.commit.interval.ms" = 200
[admin]
listen = "127.0.0.1:0"
[park]
path = "{park}"
expired_dir = "{expired}"
probe_max_interval = "500ms"
[alerts]
from = "auditstream@test.example"
to = ["oncall@test.example", "audit-team@test.example"]
reminder_interval = "2s"
recovery_hold = "1s"
outbox_dir = "{outbox}"
{alerts}
"#,
        park = dir.join("park").display(),
        expired = dir.join("expired").display(),
        outbox = dir.join("outbox").display(),
    )
}

fn sink(name: &str, kind: &str, body: &str) -> String {
    format!(
        r#"
[[sinks]]
name = "{name}"
type = "{kind}"
template = '{COORDS_TEMPLATE}'
{body}
[sinks.batch]
max_events = 100
max_age = "100ms"
[sinks.retry]
initial_interval = "100ms"
max_interval = "300ms"
max_elapsed = "500ms"
"#
    )
}

fn file_sink(dir: &std::path::Path) -> String {
    sink(
        "archive",
        "file",
        &format!("path = \"{}\"", dir.join("archive.jsonl").display()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_outage_sends_broken_reminder_and_recovered_over_smtp() {
    let dir = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    let mail = start_smtp(smtp_port);
    let receiver = Receiver::new();
    let switch = Switch::start(receiver.serve().await, false).await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    let ids = produce_events(&kafka, TOPIC, 61, 300);
    let mut text = head(
        kafka.bootstrap_servers(),
        "g-mail",
        dir.path(),
        &format!("smtp_url = \"smtp://127.0.0.1:{smtp_port}\""),
    );
    text += &sink(
        "siem",
        "http",
        &format!("url = \"http://{}/ingest\"", switch.addr),
    );
    text += &file_sink(dir.path());
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let siem = running.status.sink("siem").unwrap().clone();
    let archive = running.status.sink("archive").unwrap().clone();

    wait_until("the broken alert", LONG, || {
        !mail.with_subject("siem: broken").is_empty()
    })
    .await;
    let broken = mail.with_subject("siem: broken").remove(0);
    assert!(
        subject(&broken).starts_with("[auditstream] siem: broken - cannot connect"),
        "{}",
        subject(&broken)
    );
    assert!(
        broken.contains("To: oncall@test.example, audit-team@test.example"),
        "{broken}"
    );
    let destination = format!("POST http://{}/ingest", switch.addr);
    for want in [
        destination.as_str(),
        "Last error:",
        "Check that the destination is up",
        "dig HOST",
        "Parked:",
        "multipart/alternative",
        "text/html",
    ] {
        assert!(broken.contains(want), "missing {want:?} in:\n{broken}");
    }
    // The other sink was not held up.
    wait_until("the archive to have everything", LONG, || {
        archive.delivered() >= ids.len() as u64
    })
    .await;

    wait_until("a reminder", LONG, || {
        !mail.with_subject("siem: still broken after").is_empty()
    })
    .await;

    switch.set(true);
    wait_until("the recovered alert", LONG, || {
        !mail.with_subject("siem: recovered after").is_empty()
    })
    .await;
    let recovered = mail.with_subject("siem: recovered after").remove(0);
    assert!(
        subject(&recovered).contains(&format!("{} events replayed", ids.len())),
        "{}",
        subject(&recovered)
    );
    assert!(recovered.contains("was down for"), "{recovered}");
    assert_eq!(siem.state(), SinkState::Healthy);
    assert_eq!(
        mail.with_subject("siem: broken").len(),
        1,
        "one incident, one broken mail"
    );
    running.stop().await.unwrap();
    let seen = parse_seen(&receiver.accepted_lines());
    assert_eq!(assert_all_arrived(&ids, &seen), 0);
}

/// Reads the .eml files of an outbox: their subjects and decoded text.
fn outbox(dir: &std::path::Path) -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| {
            let raw = std::fs::read(e.path()).unwrap();
            let text = String::from_utf8_lossy(
                &quoted_printable::decode(&raw, quoted_printable::ParseMode::Robust).unwrap(),
            )
            .into_owned();
            (subject(&text), text)
        })
        .collect()
}

/// An S3 permission error and a TLS failure, over a real SMTP conversation: each sink's
/// "broken" mail names the class of problem and what to check, reminders follow, and once the
/// configuration is fixed and the daemon restarted (the incidents live in the park store)
/// each gets its "recovered" mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_permissions_and_tls_failures_explain_themselves_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    let mail = start_smtp(smtp_port);
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("archive")).unwrap();
    let endpoint = start_s3(&root).await;
    let pki = Pki::new();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let tls = Receiver::new();
    let tls_addr = tls.serve_tls(pki.server_config(false)).await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 1).unwrap();
    let ids = produce_events(&kafka, TOPIC, 62, 50);
    let config = |secret: &str, soc_extra: &str| {
        let mut text = head(
            kafka.bootstrap_servers(),
            "g-classes",
            dir.path(),
            &format!("smtp_url = \"smtp://127.0.0.1:{smtp_port}\""),
        );
        text += &sink(
            "lake",
            "s3",
            &format!("bucket = \"archive\"\nendpoint = \"{endpoint}\"\nforce_path_style = true\nregion = \"us-east-1\"\naccess_key_id = \"{S3_KEY}\"\nsecret_access_key = \"{secret}\""),
        );
        text += &sink(
            "soc",
            "http",
            &format!(
                "url = \"https://127.0.0.1:{}/\"\n{soc_extra}",
                tls_addr.port()
            ),
        );
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        path
    };

    let path = config("not-the-secret", "");
    let running = start_pipeline(&path).await;
    wait_until("broken mails and a reminder for both", LONG, || {
        [
            "lake: broken",
            "soc: broken",
            "lake: still broken",
            "soc: still broken",
        ]
        .iter()
        .all(|s| !mail.with_subject(s).is_empty())
    })
    .await;
    running.stop().await.unwrap();

    let lake = mail.with_subject("lake: broken").remove(0);
    assert!(
        subject(&lake).contains("credentials or permissions"),
        "{}",
        subject(&lake)
    );
    assert!(lake.contains("s3:PutObject"), "{lake}");
    assert!(
        lake.contains(&format!("s3://archive/ at {endpoint}")),
        "{lake}"
    );
    assert!(!lake.contains("not-the-secret"), "no secret in a mail");
    let soc = mail.with_subject("soc: broken").remove(0);
    assert!(subject(&soc).contains("TLS failure"), "{}", subject(&soc));
    assert!(soc.contains("ca_file"), "{soc}");
    assert!(soc.to_lowercase().contains("certificate"), "{soc}");

    // Fixed: the right secret, and the private CA trusted. Restarted, both recover.
    let path = config(S3_SECRET, &format!("ca_file = \"{}\"", ca.display()));
    let running = start_pipeline(&path).await;
    wait_until("recovered mails for both", LONG, || {
        !mail.with_subject("lake: recovered").is_empty()
            && !mail.with_subject("soc: recovered").is_empty()
    })
    .await;
    running.stop().await.unwrap();
    for s in ["lake", "soc"] {
        let m = mail.with_subject(&format!("{s}: recovered")).remove(0);
        assert!(
            subject(&m).contains(&format!("{} events replayed", ids.len())),
            "{}",
            subject(&m)
        );
        assert_eq!(
            mail.with_subject(&format!("{s}: broken")).len(),
            1,
            "one incident"
        );
    }
    let seen = parse_seen(&tls.accepted_lines());
    assert_eq!(assert_all_arrived(&ids, &seen), 0);
}

/// Without `smtp_url`, each message is an `.eml` file in `outbox_dir`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_the_messages_are_eml_files_in_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    receiver.then(Answer::Status(401));
    let addr = receiver.serve().await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 1).unwrap();
    produce_events(&kafka, TOPIC, 65, 20);
    let mut text = head(kafka.bootstrap_servers(), "g-outbox", dir.path(), "");
    text += &sink("siem", "http", &format!("url = \"http://{addr}/\""));
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let out = dir.path().join("outbox");
    wait_until("a broken alert in the outbox", LONG, || {
        !outbox(&out).is_empty()
    })
    .await;
    running.stop().await.unwrap();
    let mails = outbox(&out);
    let (subject, text) = &mails[0];
    assert!(
        subject.starts_with("[auditstream] siem: broken"),
        "{subject}"
    );
    assert!(text.contains("HTTP 401"), "{text}");
    assert!(text.contains("To: oncall@test.example"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_server_that_is_down_delays_the_alert_but_not_the_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let smtp_port = free_port(); // nothing listens here yet
    let receiver = Receiver::new();
    receiver.then(Answer::Status(403));
    let addr = receiver.serve().await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    let ids = produce_events(&kafka, TOPIC, 63, 400);
    let mut text = head(
        kafka.bootstrap_servers(),
        "g-nomail",
        dir.path(),
        &format!("smtp_url = \"smtp://127.0.0.1:{smtp_port}\""),
    );
    text += &sink("siem", "http", &format!("url = \"http://{addr}/\""));
    text += &file_sink(dir.path());
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let siem = running.status.sink("siem").unwrap().clone();
    let archive = running.status.sink("archive").unwrap().clone();
    wait_until("the sink to break", LONG, || {
        siem.state() == SinkState::Broken
    })
    .await;
    wait_until("every event archived and parked", LONG, || {
        archive.delivered() >= ids.len() as u64 && siem.snapshot().parked_events >= ids.len() as u64
    })
    .await;

    // The mail server comes up: the queued alert goes out.
    let mail = start_smtp(smtp_port);
    wait_until("the delayed alert", Duration::from_secs(90), || {
        !mail.with_subject("siem: broken").is_empty()
    })
    .await;
    let m = mail.with_subject("siem: broken").remove(0);
    assert!(
        subject(&m).contains("credentials or permissions"),
        "{}",
        subject(&m)
    );
    assert!(m.contains("scripted 403"), "{m}");
    running.stop().await.unwrap();
}

/// A webhook gets each message as JSON at once, even while the mail server is down; the
/// e-mail waits in the park store's outbox, survives a restart of the daemon, and goes out
/// once the mail server is up: one incident, one "broken" mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_survive_a_restart_and_the_webhook_does_not_wait_for_email() {
    let dir = tempfile::tempdir().unwrap();
    let smtp_port = free_port(); // nothing listens here yet
    let hook = Receiver::new();
    let hook_addr = hook.serve().await;
    let receiver = Receiver::new();
    receiver.then(Answer::Status(401));
    let addr = receiver.serve().await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 1).unwrap();
    produce_events(&kafka, TOPIC, 64, 50);
    let mut text = head(
        kafka.bootstrap_servers(),
        "g-restart",
        dir.path(),
        &format!(
            "smtp_url = \"smtp://127.0.0.1:{smtp_port}\"\nwebhook_url = \"http://{hook_addr}/hooks/secret-path\""
        ),
    );
    text += &sink("siem", "http", &format!("url = \"http://{addr}/\""));
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();

    let running = start_pipeline(&path).await;
    wait_until("the webhook message", LONG, || {
        hook.requests().iter().any(|r| r.status == 200)
    })
    .await;
    let body: serde_json::Value =
        serde_json::from_slice(&hook.requests()[0].body).expect("the webhook gets JSON");
    let text = body["text"].as_str().expect("a `text` field");
    assert!(text.starts_with("[auditstream] siem: broken"), "{text}");
    assert!(text.contains("HTTP 401"), "{text}");
    running.stop().await.unwrap();

    // Restarted with the mail server up: the e-mail queued before the restart goes out.
    let mail = start_smtp(smtp_port);
    let running = start_pipeline(&path).await;
    wait_until("the queued e-mail", Duration::from_secs(90), || {
        !mail.with_subject("siem: broken").is_empty()
    })
    .await;
    running.stop().await.unwrap();
    assert_eq!(
        mail.with_subject("siem: broken").len(),
        1,
        "one incident, one mail"
    );
    assert_eq!(
        hook.requests()
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains("siem: broken"))
            .count(),
        1,
        "the webhook already had it: not sent twice"
    );
}
