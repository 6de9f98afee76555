//! `auditstream demo`: the whole pipeline on an embedded default, with no external service.
//!
//! It starts an in-process Kafka cluster, loads it with generated audit events (and a few
//! malformed messages, and one event a template cannot render), writes the demo configuration
//! to `<out>/auditstream.toml`, and runs the same pipeline `auditstream run` runs, through
//! three file sinks with different templates and an HTTP sink whose endpoint (the demo's own)
//! is down for a while, so its batches park, alerts are written to the outbox, and the park is
//! replayed. It runs until every message is committed, then prints what went where.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::cli;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

use crate::embedded_kafka::{self, EmbeddedKafka};
use crate::generate::{malformed, Generator};
use crate::pipeline::Pipeline;
use crate::shutdown::{Shutdown, Stage};
use crate::status::Status;

/// The demo's configuration, with `${DEMO_BROKERS}`, `${DEMO_TOPIC}`, `${DEMO_GROUP}` and
/// `${DEMO_OUT}` to fill in.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub events: usize,
    pub out: PathBuf,
    /// A real cluster to use instead of the in-process one.
    pub brokers: Option<String>,
    /// How long the demo's `hec` endpoint is down at the start.
    pub outage: Duration,
}

/// Where the demo's events go: the in-process cluster, or a real one.
enum Cluster {
    Embedded(EmbeddedKafka),
    External {
        producer: BaseProducer,
        brokers: String,
    },
}

impl Cluster {
    async fn start(brokers: Option<&str>) -> anyhow::Result<(Cluster, String, String)> {
        let Some(brokers) = brokers else {
            let kafka = EmbeddedKafka::start(3).context("starting the in-process Kafka cluster")?;
            kafka.create_topic("audit-events", 4)?;
            return Ok((
                Cluster::Embedded(kafka),
                "audit-events".into(),
                "auditstream-demo".into(),
            ));
        };
        // A fresh topic and group per run, so the counts are this run's.
        let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S");
        let topic = format!("auditstream-demo-{stamp}");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()?;
        for r in admin
            .create_topics(
                &[NewTopic::new(&topic, 4, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?
        {
            r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
        }
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .create()?;
        let external = Cluster::External {
            producer,
            brokers: brokers.to_string(),
        };
        Ok((external, topic.clone(), format!("{topic}-group")))
    }

    fn brokers(&self) -> &str {
        match self {
            Cluster::Embedded(k) => k.bootstrap_servers(),
            Cluster::External { brokers, .. } => brokers,
        }
    }

    fn send(&self, topic: &str, key: &[u8], payload: Option<&[u8]>) -> anyhow::Result<()> {
        match self {
            Cluster::Embedded(k) => k.send(topic, None, Some(key), payload)?,
            Cluster::External { producer, .. } => {
                embedded_kafka::send(producer, topic, None, Some(key), payload)?
            }
        }
        Ok(())
    }

    fn flush(&self) -> anyhow::Result<()> {
        match self {
            Cluster::Embedded(k) => k.flush()?,
            Cluster::External { producer, .. } => producer.flush(Duration::from_secs(60))?,
        }
        Ok(())
    }
}

/// Runs the demo; prints progress to stderr and the summary to stdout.
pub async fn run(opts: DemoOptions, shutdown: Shutdown) -> anyhow::Result<()> {
    let started = Instant::now();
    prepare_out(&opts.out)?;
    let (kafka, topic, group) = Cluster::start(opts.brokers.as_deref()).await?;
    let hec = hec::start(opts.outage, &opts.out.join("hec")).await?;

    let config_path = opts.out.join("auditstream.toml");
    let text = demo_config(kafka.brokers(), &topic, &group, &opts.out)
        .replace("${DEMO_HEC_URL}", &hec.url);
    std::fs::write(&config_path, &text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let (config, templates) = cli::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let outbox = config
        .alerts
        .as_ref()
        .map(|a| a.outbox_dir.clone())
        .unwrap_or_default();

    let produced = produce(
        &kafka,
        &topic,
        opts.events,
        config.pipeline.max_event_bytes.as_usize(),
    )?;
    eprintln!(
        "demo: {} audit events and {} malformed messages are in Kafka topic `{topic}` (4 partitions) at {}",
        produced.events,
        produced.malformed,
        kafka.brokers()
    );
    eprintln!(
        "demo: the `hec` endpoint is down for {}s from the first event it is sent: watch its batches park and replay",
        opts.outage.as_secs()
    );

    let pipeline = Pipeline::build(config, templates).await?;
    let status = pipeline.status();
    let run = tokio::spawn(pipeline.run(shutdown.clone()));
    let total = produced.total() as u64;
    let finished = watch_progress(&status, total, &outbox, &shutdown).await;
    let page = status.admin_addr.get().map(|a| format!("http://{a}/"));
    shutdown.request(Stage::Graceful);
    run.await.context("the pipeline task failed")??;
    if !finished {
        anyhow::bail!(
            "the demo stopped before it was done ({} of {total} messages committed)",
            status.source.committable()
        );
    }
    print_summary(
        &status,
        &produced,
        &config_path,
        &outbox,
        page,
        started.elapsed(),
    );
    Ok(())
}

/// The demo's own Splunk-HEC-like endpoint: answers 503 for `outage` from the first event it
/// is sent (so the outage is seen whatever the start-up takes), then
/// accepts `Authorization: Splunk demo-token` and appends what it receives to a file.
mod hec {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;

    pub struct Hec {
        pub url: String,
    }

    #[derive(Clone)]
    struct Endpoint {
        outage: Duration,
        /// Set by the first request.
        up_at: Arc<std::sync::OnceLock<Instant>>,
        file: PathBuf,
        lock: Arc<tokio::sync::Mutex<()>>,
    }

    pub async fn start(outage: Duration, dir: &Path) -> anyhow::Result<Hec> {
        std::fs::create_dir_all(dir)?;
        let state = Endpoint {
            outage,
            up_at: Arc::default(),
            file: dir.join("received.json"),
            lock: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/services/collector/event", axum::routing::post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Hec {
            url: format!("http://{addr}/services/collector/event"),
        })
    }

    async fn receive(
        State(e): State<Endpoint>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (StatusCode, &'static str) {
        if Instant::now() < *e.up_at.get_or_init(|| Instant::now() + e.outage) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"text":"Server is busy","code":9}"#,
            );
        }
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Splunk demo-token") {
            return (
                StatusCode::UNAUTHORIZED,
                r#"{"text":"Invalid token","code":4}"#,
            );
        }
        let _guard = e.lock.lock().await;
        let written = async {
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&e.file)
                .await?;
            f.write_all(&body).await?;
            f.write_all(b"\n").await
        }
        .await;
        match written {
            Ok(()) => (StatusCode::OK, r#"{"text":"Success","code":0}"#),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"text":"disk","code":8}"#,
            ),
        }
    }
}

/// Removes what a previous demo left in `out` (only the demo's own files).
fn prepare_out(out: &Path) -> anyhow::Result<()> {
    for sub in [
        "archive",
        "siem",
        "security",
        "hec",
        "park",
        "outbox",
        "expired",
        "auditstream.toml",
    ] {
        let p = out.join(sub);
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?;
        } else if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    Ok(())
}

/// The demo configuration with the cluster, topic, group and output directory filled in.
pub fn demo_config(brokers: &str, topic: &str, group: &str, out: &Path) -> String {
    DEMO_CONFIG
        .replace("${DEMO_BROKERS}", brokers)
        .replace("${DEMO_TOPIC}", topic)
        .replace("${DEMO_GROUP}", group)
        .replace("${DEMO_OUT}", &out.display().to_string())
}

/// The subjects of the alert emails in the outbox, oldest first.
pub fn outbox_subjects(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut mails: Vec<(std::time::SystemTime, String)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .filter_map(|e| {
            let when = e.metadata().and_then(|m| m.modified()).ok()?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            // The header may be folded over several lines.
            let mut lines = text.lines().skip_while(|l| !l.starts_with("Subject: "));
            let mut subject = lines.next()?.trim_start_matches("Subject: ").to_string();
            for l in lines.take_while(|l| l.starts_with(' ') || l.starts_with('\t')) {
                subject.push(' ');
                subject.push_str(l.trim());
            }
            Some((when, subject))
        })
        .collect();
    mails.sort();
    mails.into_iter().map(|(_, s)| s).collect()
}

struct Produced {
    events: usize,
    malformed: usize,
    unrenderable: usize,
}

impl Produced {
    fn total(&self) -> usize {
        self.events + self.malformed + self.unrenderable
    }
}

fn produce(
    kafka: &Cluster,
    topic: &str,
    events: usize,
    max_event_bytes: usize,
) -> anyhow::Result<Produced> {
    let mut generator = Generator::new(2026, 6);
    let bad = malformed(max_event_bytes);
    // Spread the malformed messages through the stream, so good events surround them.
    let every = (events / (bad.len() + 1)).max(1);
    let mut bad_iter = bad.iter();
    for i in 0..events {
        let (key, event) = generator.next_event();
        kafka.send(topic, key.as_bytes(), Some(event.to_string().as_bytes()))?;
        if i % every == every - 1 {
            if let Some((_, payload)) = bad_iter.next() {
                // Keyed like the event before it, so it lands among good events.
                kafka.send(topic, key.as_bytes(), payload.as_deref())?;
            }
        }
    }
    for (_, payload) in bad_iter {
        kafka.send(topic, b"ws-1", payload.as_deref())?;
    }
    // A valid event without an actor: the archive keeps it, the siem template cannot render it.
    let headless = serde_json::json!({
        "id": "00000000-0000-4000-8000-000000000000", "seq": 0,
        "timestamp": "2026-01-01T00:00:00.000Z", "workspace": "ws-1",
        "action": "system.heartbeat", "outcome": "success",
        "entity": {"type": "workspace", "id": "ws-1"}
    });
    kafka.send(topic, b"ws-1", Some(headless.to_string().as_bytes()))?;
    kafka.flush()?;
    Ok(Produced {
        events,
        malformed: bad.len(),
        unrenderable: 1,
    })
}

/// Shows progress until every message is committed, the `hec` outage is over and replayed,
/// and its "recovered" alert is in the outbox (true); or the demo is interrupted or makes no
/// progress for a minute (false).
async fn watch_progress(
    status: &Arc<Status>,
    total: u64,
    outbox: &Path,
    shutdown: &Shutdown,
) -> bool {
    let tty = std::io::stderr().is_terminal();
    let mut last = (String::new(), Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(if tty { 200 } else { 1000 }));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.reached(Stage::Graceful) => return false,
        }
        let done = status.source.committable();
        let sinks: Vec<String> = status
            .sinks
            .iter()
            .map(|s| {
                let snap = s.snapshot();
                match snap.parked_events {
                    0 => format!("{} {}", s.name, snap.delivered_events),
                    p => format!(
                        "{} {} ({}, {p} parked)",
                        s.name,
                        snap.delivered_events,
                        snap.state.as_str()
                    ),
                }
            })
            .collect();
        let line = format!(
            "demo: committed {done}/{total} | delivered: {}",
            sinks.join(", ")
        );
        if tty {
            eprint!("\r{line}\x1b[K");
        } else if line != last.0 {
            eprintln!("{line}");
        }
        // Once a sink was reported broken, the demo also waits for its recovery message.
        let subjects = outbox_subjects(outbox);
        let recovered = !subjects.iter().any(|s| s.contains("broken"))
            || subjects.iter().any(|s| s.contains("recovered"));
        let settled = status.sinks.iter().all(|s| {
            let snap = s.snapshot();
            snap.parked_events == 0 && snap.state == crate::status::SinkState::Healthy
        });
        if done >= total && settled && recovered {
            if tty {
                eprintln!();
            }
            return true;
        }
        if line != last.0 {
            last = (line, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            eprintln!("\ndemo: no progress for a minute");
            return false;
        }
    }
}

fn print_summary(
    status: &Status,
    produced: &Produced,
    config_path: &Path,
    outbox: &Path,
    page: Option<String>,
    took: Duration,
) {
    let config = config_path.display();
    println!();
    println!(
        "auditstream demo: {} messages through {} sinks in {:.1}s, every one committed.",
        produced.total(),
        status.sinks.len(),
        took.as_secs_f64()
    );
    println!();
    println!(
        "  {:<9} {:<5} {:>9} {:>8} {:>11}  destination",
        "sink", "type", "delivered", "replayed", "quarantined"
    );
    for s in &status.sinks {
        let snap = s.snapshot();
        let dest = snap
            .destination
            .strip_prefix("file ")
            .unwrap_or(&snap.destination);
        println!(
            "  {:<9} {:<5} {:>9} {:>8} {:>11}  {dest}",
            snap.name,
            snap.kind,
            snap.delivered_events,
            snap.replayed_events,
            snap.quarantined_events
        );
    }
    let render_failures: u64 = status.sinks.iter().map(|s| s.quarantined()).sum();
    let replayed: u64 = status
        .sinks
        .iter()
        .map(|s| s.snapshot().replayed_events)
        .sum();
    println!();
    println!(
        "  The `hec` endpoint was down at the start: {replayed} events were parked durably (their"
    );
    println!(
        "  offsets committed), replayed in order when it came back, while the other sinks went on."
    );
    println!(
        "  Quarantined: {} messages that are not audit events (not JSON, not an object, not UTF-8,",
        status.source.rejected()
    );
    println!(
        "  too large, too deep, empty) and {render_failures} event a template could not render. Nothing was dropped."
    );
    let subjects = outbox_subjects(outbox);
    println!();
    println!(
        "Alert emails (no SMTP server in the demo, so they are files in {}):",
        outbox.display()
    );
    for s in &subjects {
        println!("  {s}");
    }
    println!();
    println!("Look at the results:");
    println!(
        "  head -3 {}",
        config_path
            .with_file_name("siem")
            .join("events.json")
            .display()
    );
    println!("  auditstream quarantine list --config {config}");
    println!("  auditstream render --config {config} --sink hec      (the hec template on a sample event)");
    if let Some(p) = page {
        println!("  (the status page was at {p} while the demo ran)");
    }
    println!();
    println!("Point it at your own Kafka:");
    println!(
        "  cp {config} my.toml   # set kafka.brokers and kafka.topics, keep or change the sinks"
    );
    println!("  auditstream validate --config my.toml && auditstream run --config my.toml");
    println!("  (every option: config/auditstream.example.toml; TLS and SASL: README.md)");
}
