//! Shared helpers for the integration tests: a Kafka cluster on loopback, generated events,
//! the daemon as a real child process, and readers for what the sinks wrote.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use auditstream::embedded_kafka::EmbeddedKafka;
use auditstream::generate::Generator;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// Waits for `cond` to hold, checking every 50 ms, failing the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Produces `n` generated events (keyed by workspace); returns (seq -> id) in production order.
pub fn produce_events(kafka: &EmbeddedKafka, topic: &str, seed: u64, n: usize) -> Vec<String> {
    let mut g = Generator::new(seed, 8);
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let (key, event) = g.next_event();
        ids.push(event["id"].as_str().unwrap().to_string());
        kafka
            .send(
                topic,
                None,
                Some(key.as_bytes()),
                Some(event.to_string().as_bytes()),
            )
            .unwrap();
    }
    kafka.flush().unwrap();
    ids
}

/// A record a sink wrote, read back from a file sink whose template includes the coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub id: String,
    pub partition: i32,
    pub offset: i64,
}

/// Reads a file sink written with the `coords` template (see [`COORDS_TEMPLATE`]), including
/// rotated files in order. Only complete lines count.
pub fn read_seen(path: &Path) -> Vec<Seen> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            let mut rotated: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix(name))
                        .and_then(|s| s.strip_prefix('.'))
                        .is_some_and(|s| s.parse::<u32>().is_ok())
                })
                .collect();
            rotated.sort();
            files.extend(rotated);
        }
    }
    files.push(path.to_path_buf());
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for line in complete.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", f.display()));
            out.push(Seen {
                id: v["id"].as_str().unwrap_or_default().to_string(),
                partition: v["p"].as_i64().unwrap() as i32,
                offset: v["o"].as_i64().unwrap(),
            });
        }
    }
    out
}

/// A template that keeps what the tests check: the event id and its Kafka coordinates.
pub const COORDS_TEMPLATE: &str = r#"{"id":{{json (default id "")}},"p":{{_kafka.partition}},"o":{{_kafka.offset}},"action":{{json (default action "")}}}"#;

/// Checks that within each partition the offsets a sink wrote never go backwards, except where
/// a restart re-delivers from an earlier committed offset (allowed with `allow_rewind`).
pub fn assert_ordered_per_partition(seen: &[Seen], allow_rewind: bool) {
    let mut last: HashMap<i32, i64> = HashMap::new();
    for s in seen {
        if let Some(prev) = last.get(&s.partition) {
            if !allow_rewind {
                assert!(
                    s.offset > *prev,
                    "partition {} went from offset {prev} to {}",
                    s.partition,
                    s.offset
                );
            }
        }
        last.insert(s.partition, s.offset);
    }
}

/// Asserts every id arrived at least once; returns how many arrived more than once.
pub fn assert_all_arrived(ids: &[String], seen: &[Seen]) -> usize {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for s in seen {
        *count.entry(s.id.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !count.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} events never arrived, e.g. {:?}",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(5)]
    );
    count.values().filter(|c| **c > 1).count()
}

/// The committed offsets of `group` on `topic`'s partitions `0..partitions`.
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// A daemon running as a child process, its stderr in a log file.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(config: &Path, log: &Path) -> Daemon {
        Self::start_with_stdout(config, log, Stdio::null())
    }

    /// Starts with stdout connected as given (`Stdio::piped()` to read a stdout sink).
    pub fn start_with_stdout(config: &Path, log: &Path, stdout: Stdio) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_auditstream"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Sends `sig`. SIGINT and SIGTERM wait until the daemon handles them (its log says
    /// [`auditstream::cli::SIGNALS_HANDLED`]): sent earlier, the default action would end it,
    /// and a test whose conditions held at once (everything delivered by an earlier run) would
    /// see a daemon killed instead of stopped.
    pub fn signal(&self, sig: i32) {
        if sig == libc::SIGTERM || sig == libc::SIGINT {
            wait_for(
                "the daemon to handle signals",
                Duration::from_secs(60),
                || self.log_text().contains(auditstream::cli::SIGNALS_HANDLED),
            );
        }
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit; returns its exit code (None when killed by a signal).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status) {
                    eprintln!("the daemon was ended by signal {sig}");
                }
                return status.code();
            }
            assert!(
                start.elapsed() < timeout,
                "daemon did not exit within {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config file for a daemon reading `topic` from `brokers`, with file sinks named in
/// `sinks` (name, extra TOML lines) writing under `dir`.
pub fn write_config(
    dir: &Path,
    brokers: &str,
    group: &str,
    topic: &str,
    extra_pipeline: &str,
    sinks: &[(&str, &str)],
) -> PathBuf {
    let mut text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{topic}"]
[kafka.properties]
"auto.commit.interval.ms" = 200
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500

[pipeline]
shutdown_timeout = "20s"
{extra_pipeline}

[park]
path = "{park}"

[admin]
listen = "127.0.0.1:0"
"#,
        park = dir.join("park").display()
    );
    for (name, extra) in sinks {
        text.push_str(&format!(
            r#"
[[sinks]]
name = "{name}"
type = "file"
path = "{path}"
template = '{COORDS_TEMPLATE}'
{extra}
[sinks.batch]
max_events = 200
max_age = "100ms"
"#,
            path = dir.join(format!("{name}.jsonl")).display()
        ));
    }
    let path = dir.join("auditstream.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub mod servers;

use auditstream::pipeline::Pipeline;
use auditstream::shutdown::{Shutdown, Stage};
use auditstream::status::Status;
use std::sync::Arc;

/// A pipeline running in-process.
pub struct Running {
    pub status: Arc<Status>,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Loads a configuration file and starts its pipeline in this process.
pub async fn start_pipeline(config: &Path) -> Running {
    let (config, templates) = auditstream::cli::load(config).unwrap_or_else(|e| panic!("{e}"));
    let pipeline = Pipeline::build(config, templates).await.unwrap();
    let status = pipeline.status();
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(pipeline.run(shutdown.clone()));
    Running {
        status,
        shutdown,
        handle,
    }
}

impl Drop for Running {
    /// A test that fails before `stop` must not hang: the pipeline is cancelled, which stops
    /// its Kafka source thread (a runtime waits for blocking threads when it shuts down).
    fn drop(&mut self) {
        self.shutdown.request(Stage::Immediate);
        self.handle.abort();
        // Wait for the consumer to close while the test's Kafka still runs: a consumer whose
        // cluster has gone takes a minute to give up.
        let status = self.status.clone();
        let wait = move || {
            let start = Instant::now();
            while !status.source.closed() && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
    }
}

impl Running {
    /// The admin API's base URL, once the pipeline has started it.
    pub async fn admin_base(&self) -> String {
        wait_until("the admin API to listen", Duration::from_secs(30), || {
            self.status.admin_addr.get().is_some()
        })
        .await;
        format!("http://{}", self.status.admin_addr.get().unwrap())
    }

    /// Stops gracefully and returns the pipeline's result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.request(Stage::Graceful);
        (&mut self.handle).await.unwrap()
    }
}

/// Waits (in async code) for `cond`, checking every 50 ms, failing after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The head of a configuration: Kafka, pipeline and park settings.
pub fn config_head(brokers: &str, group: &str, topic: &str, dir: &Path) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{topic}"]
[kafka.properties]
"auto.commit.interval.ms" = 200

[admin]
listen = "127.0.0.1:0"

[park]
path = "{park}"
"#,
        park = dir.join("park").display()
    )
}

/// Offsets of the first arrival of each (partition, offset), checked to increase per
/// partition: order kept even when a retried request delivered something twice.
pub fn assert_first_arrivals_ordered(seen: &[Seen]) {
    let mut first = std::collections::HashSet::new();
    let in_order: Vec<Seen> = seen
        .iter()
        .filter(|s| first.insert((s.partition, s.offset)))
        .cloned()
        .collect();
    assert_ordered_per_partition(&in_order, false);
}

/// Parses lines written with [`COORDS_TEMPLATE`].
pub fn parse_seen(lines: &[String]) -> Vec<Seen> {
    lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            Seen {
                id: v["id"].as_str().unwrap_or_default().to_string(),
                partition: v["p"].as_i64().unwrap() as i32,
                offset: v["o"].as_i64().unwrap(),
            }
        })
        .collect()
}

pub mod instances;

/// A quarantine entry of partition `t/0` at `offset` holding `value` (for tests of the park
/// store).
pub fn quarantined(offset: i64, value: String) -> auditstream::park::quarantine::QuarantineEntry {
    auditstream::park::quarantine::QuarantineEntry {
        quarantined_at: "2026-11-22T10:00:00.000Z".into(),
        sink: None,
        kind: "not_json".into(),
        reason: "expected a JSON object".into(),
        topic: "t".into(),
        partition: 0,
        offset,
        timestamp_ms: None,
        key: None,
        value: Some(value),
        value_base64: None,
    }
}
