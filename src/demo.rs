//! `auditstream demo`: the whole pipeline on an embedded default, with no external service.
//!
//! It starts an in-process Kafka cluster, loads it with generated audit events (and a few
//! malformed messages, and one event a template cannot render), writes the demo configuration
//! to `<out>/auditstream.toml`, and runs the same pipeline `auditstream run` runs, through
//! three file sinks with different templates, until every message is committed. Then it prints
//! what went where.

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

    let config_path = opts.out.join("auditstream.toml");
    let text = demo_config(kafka.brokers(), &topic, &group, &opts.out);
    std::fs::write(&config_path, &text)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let (config, templates) = cli::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;

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

    let pipeline = Pipeline::build(config, templates).await?;
    let status = pipeline.status();
    let outputs: Vec<(String, String)> = status
        .sinks
        .iter()
        .map(|s| {
            let out = s
                .destination
                .strip_prefix("file ")
                .unwrap_or(&s.destination);
            (s.name.clone(), out.to_string())
        })
        .collect();
    let run = tokio::spawn(pipeline.run(shutdown.clone()));

    let total = produced.total() as u64;
    let finished = watch_progress(&status, total, &shutdown).await;
    shutdown.request(Stage::Graceful);
    run.await.context("the pipeline task failed")??;
    if !finished {
        anyhow::bail!(
            "the demo stopped before every message was committed ({} of {total})",
            status.source.committable()
        );
    }
    print_summary(
        &status,
        &produced,
        &outputs,
        &config_path,
        started.elapsed(),
    );
    Ok(())
}

/// Removes what a previous demo left in `out` (only the demo's own files).
fn prepare_out(out: &Path) -> anyhow::Result<()> {
    for sub in ["archive", "siem", "security", "park", "auditstream.toml"] {
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

/// Shows progress until every message is committed (true), or the demo is interrupted or
/// makes no progress for a minute (false).
async fn watch_progress(status: &Arc<Status>, total: u64, shutdown: &Shutdown) -> bool {
    let tty = std::io::stderr().is_terminal();
    let mut last = (0, Instant::now());
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
            .map(|s| format!("{} {}", s.name, s.delivered()))
            .collect();
        let line = format!(
            "demo: committed {done}/{total} messages | delivered: {} | quarantined {}",
            sinks.join(", "),
            status.source.rejected() + status.sinks.iter().map(|s| s.quarantined()).sum::<u64>()
        );
        if tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        if done >= total {
            if tty {
                eprintln!();
            }
            return true;
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            eprintln!("\ndemo: no progress for a minute");
            return false;
        }
    }
}

fn print_summary(
    status: &Status,
    produced: &Produced,
    outputs: &[(String, String)],
    config_path: &Path,
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
        "  {:<10} {:<6} {:>10} {:>12}  output",
        "sink", "type", "delivered", "quarantined"
    );
    for (s, (_, out)) in status.sinks.iter().zip(outputs) {
        println!(
            "  {:<10} {:<6} {:>10} {:>12}  {out}",
            s.name,
            s.kind,
            s.delivered(),
            s.quarantined()
        );
    }
    let render_failures: u64 = status.sinks.iter().map(|s| s.quarantined()).sum();
    println!();
    println!(
        "  quarantined: {} messages that are not audit events (not JSON, not an object, not UTF-8,",
        status.source.rejected()
    );
    println!(
        "               too large, too deep, empty) and {render_failures} event a sink's template could not render."
    );
    println!("  Nothing was dropped: each is in the quarantine with its raw bytes and the reason.");
    println!();
    println!("Look at the results:");
    if let Some((_, siem)) = outputs.iter().find(|(n, _)| n == "siem") {
        println!("  head -3 {siem}");
    }
    println!("  auditstream quarantine list --config {config}");
    println!("  auditstream render --config {config} --sink siem      (the siem template on a sample event)");
    println!();
    println!("Point it at your own Kafka:");
    println!(
        "  cp {config} my.toml   # set kafka.brokers and kafka.topics, keep or change the sinks"
    );
    println!("  auditstream validate --config my.toml && auditstream run --config my.toml");
    println!("  (every option: config/auditstream.example.toml; TLS and SASL: README.md)");
}
