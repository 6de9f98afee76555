//! `auditstream soak`: a long run against a real Kafka-protocol broker, judged at the end.
//!
//! It creates a fresh topic on `--brokers`, starts two HTTP receivers in this process
//! (`steady`, always up, and `flappy`, which answers 503 for `--flap-down` of every
//! `--flap-every`), runs the daemon (this same binary, `auditstream run`) as a child process
//! with one HTTP sink for each, and produces generated audit events at a steady `--rate` for
//! `--minutes`. Every 10 seconds it samples the daemon: RSS (`VmRSS` of `/proc/PID/status`),
//! open file descriptors (`/proc/PID/fd`), the park's size on disk (the blocks of every file
//! under the park directory, as `du` counts them) against its live entries (`/status`), and
//! the delivery lag (arrival at a receiver minus the Kafka timestamp); every `--report-every`
//! it prints a row. Then it ends the outage, waits for both sinks to drain, stops the daemon
//! with SIGTERM, and prints a verdict:
//! - **nothing lost**: every event the broker acknowledged arrived at both receivers;
//! - **memory flat**: the mean RSS of the last third of the run is within 20% of the middle
//!   third's (the first third is warm-up);
//! - **fds flat**: the most file descriptors open in the last third is at most the middle
//!   third's most plus 5;
//! - **park space returned**: after the final drain (and `--settle`) the park holds no
//!   entries, and its size on disk is no larger than after the first outage's drain (plus a
//!   quarter, plus 8 MiB):
//!   space a drain frees is used again, not leaked from outage to outage. How much went back to
//!   the filesystem after the peak (the daemon compacts the store once every park is empty,
//!   see `park/mod.rs`) is reported.
//!
//! It exits 0 when every part of the verdict holds, 1 otherwise. Everything it writes (the
//! config, the daemon's log, the park, `report.md`) goes under `--dir`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::generate::Generator;
use crate::park::disk_usage;

/// What the soak does.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub brokers: String,
    /// How long events are produced.
    pub duration: Duration,
    /// Events per second.
    pub rate: u32,
    pub report_every: Duration,
    /// The flapping sink is down for `flap_down` at the end of every `flap_every`.
    pub flap_every: Duration,
    pub flap_down: Duration,
    pub partitions: i32,
    /// Where the config, the log, the park and the report go (emptied first).
    pub dir: PathBuf,
    /// How long the final drain may take.
    pub drain_timeout: Duration,
    /// How long to wait after the drain before the park's size on disk is taken again.
    pub settle: Duration,
}

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const TEMPLATE: &str = r#"{"seq":{{default seq 0}},"ts":{{json _kafka.timestamp}},"id":{{json id}},"action":{{json action}},"outcome":{{json outcome}},"actor":{{json actor}},"entity":{{json entity}},"changes":{{json changes}},"metadata":{{json metadata}}}"#;

/// One in-process HTTP receiver: which events arrived, and how late.
struct Receiver {
    up: AtomicBool,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    unique: u64,
    total: u64,
    malformed: u64,
    /// Lags (ms) since the last report.
    lags: Vec<u32>,
    max_lag_ms: u64,
}

impl Seen {
    fn mark(&mut self, seq: u64) {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1024, 0);
        }
        if self.bits[w] & (1 << b) == 0 {
            self.bits[w] |= 1 << b;
            self.unique += 1;
        }
        self.total += 1;
    }
    fn has(&self, seq: u64) -> bool {
        self.bits
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }
}

impl Receiver {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            up: AtomicBool::new(true),
            seen: Mutex::new(Seen::default()),
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn serve(self: &Arc<Self>) -> anyhow::Result<String> {
        use axum::extract::State;
        use axum::http::StatusCode;
        async fn receive(State(r): State<Arc<Receiver>>, body: axum::body::Bytes) -> StatusCode {
            if !r.up.load(Ordering::SeqCst) {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            let now = chrono::Utc::now().timestamp_millis();
            let mut s = r.seen();
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                #[derive(serde::Deserialize)]
                struct Rec {
                    seq: u64,
                    ts: Option<String>,
                }
                let Ok(rec) = serde_json::from_slice::<Rec>(line) else {
                    s.malformed += 1;
                    continue;
                };
                s.mark(rec.seq);
                if let Some(ts) = rec
                    .ts
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                {
                    let lag = (now - ts.timestamp_millis()).max(0) as u64;
                    s.max_lag_ms = s.max_lag_ms.max(lag);
                    s.lags.push(lag.min(u32::MAX as u64) as u32);
                }
            }
            StatusCode::OK
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/", axum::routing::post(receive))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(format!("http://{addr}/"))
    }
}

/// Counts the broker's acknowledgements; remembers which events it refused.
struct Acks {
    ok: AtomicU64,
    failed: Mutex<Vec<u64>>,
}

/// The producer's context: the acknowledgements go to [`Acks`].
struct AckContext(Arc<Acks>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<u64>;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<u64>) {
        match result {
            Ok(_) => {
                self.0.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self
                .0
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(*seq),
        }
    }
}

/// Produces at `rate` per second until `stop`; returns the highest sequence number sent.
fn produce(
    producer: &BaseProducer<AckContext>,
    topic: &str,
    rate: u32,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> anyhow::Result<u64> {
    let mut g = Generator::new(20261122, 64);
    let started = Instant::now();
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while n < due {
            let (key, event) = g.next_event();
            let seq = event["seq"]
                .as_u64()
                .context("generated event without seq")?;
            let payload = event.to_string();
            let mut opaque = Box::new(seq);
            loop {
                let record = BaseRecord::with_opaque_to(topic, opaque)
                    .key(key.as_bytes())
                    .payload(payload.as_bytes());
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        opaque = r.delivery_opaque;
                        producer.poll(Duration::from_millis(20));
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
            n = seq;
            sent.store(n, Ordering::Relaxed);
        }
        producer.poll(Duration::from_millis(10));
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(n)
}

/// One look at the daemon.
#[derive(Debug, Clone, Default)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    park_disk: u64,
    park_live: u64,
    parked_events: u64,
    parked_entries: u64,
    flappy_state: String,
    /// Whether `/status` answered (the park figures are zero otherwise).
    status_ok: bool,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

async fn status(client: &reqwest::Client, admin: &str) -> Option<serde_json::Value> {
    let body = client
        .get(format!("{admin}/status"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .bytes()
        .await
        .ok()?;
    serde_json::from_slice(&body).ok()
}

fn sink_field<'a>(st: &'a serde_json::Value, sink: &str, field: &str) -> &'a serde_json::Value {
    st["sinks"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == sink))
        .map_or(&serde_json::Value::Null, |s| &s[field])
}

async fn sample(
    client: &reqwest::Client,
    admin: &str,
    pid: u32,
    park: &Path,
    started: Instant,
) -> Sample {
    let st = status(client, admin).await;
    let status_ok = st.is_some();
    let st = st.unwrap_or_default();
    let sum = |field: &str| -> u64 {
        ["steady", "flappy"]
            .iter()
            .map(|s| sink_field(&st, s, field).as_u64().unwrap_or(0))
            .sum()
    };
    Sample {
        at: started.elapsed(),
        rss_kib: rss_kib(pid),
        fds: open_fds(pid),
        park_disk: disk_usage(park),
        park_live: st["park"]["bytes"].as_u64().unwrap_or(0),
        parked_events: sum("parked_events"),
        parked_entries: sum("parked_entries"),
        flappy_state: sink_field(&st, "flappy", "state")
            .as_str()
            .unwrap_or("?")
            .to_string(),
        status_ok,
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Prints to stdout and appends to the report file.
struct Report {
    file: std::fs::File,
}

impl Report {
    fn line(&mut self, text: impl AsRef<str>) {
        println!("{}", text.as_ref());
        let _ = writeln!(self.file, "{}", text.as_ref());
        let _ = self.file.flush();
    }
}

fn lag_cell(r: &Receiver) -> String {
    let mut s = r.seen();
    let mut lags = std::mem::take(&mut s.lags);
    lags.sort_unstable();
    format!(
        "{} / {} / {}",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0)
    )
}

fn mean(xs: &[u64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.iter().sum::<u64>() as f64 / xs.len() as f64
}

struct DaemonGuard(Child);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the soak; returns whether the verdict holds.
pub async fn run(o: SoakOptions) -> anyhow::Result<bool> {
    if o.dir.exists() {
        std::fs::remove_dir_all(&o.dir).with_context(|| format!("emptying {}", o.dir.display()))?;
    }
    std::fs::create_dir_all(&o.dir)?;
    let mut report = Report {
        file: std::fs::File::create(o.dir.join("report.md"))?,
    };
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S");
    let topic = format!("soak-{stamp}");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &o.brokers)
        .create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                o.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }

    let steady = Receiver::new();
    let flappy = Receiver::new();
    let steady_url = steady.serve().await?;
    let flappy_url = flappy.serve().await?;
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let park = o.dir.join("park");
    let sink = |name: &str, url: &str| {
        format!(
            r#"
[[sinks]]
name = "{name}"
type = "http"
url = "{url}"
template = '{TEMPLATE}'
timeout = "5s"
[sinks.batch]
max_events = 500
max_age = "200ms"
[sinks.retry]
initial_interval = "200ms"
max_interval = "2s"
max_elapsed = "10s"
"#
        )
    };
    let config = format!(
        r#"# Written by `auditstream soak`.
[kafka]
brokers = "{brokers}"
group_id = "{topic}-group"
topics = ["{topic}"]
[kafka.properties]
# The real broker holds every fetch for the full fetch.wait.max.ms.
"fetch.wait.max.ms" = 20

[pipeline]
shutdown_timeout = "30s"

[park]
path = "{park}"
expired_dir = "{expired}"
probe_max_interval = "5s"

[admin]
listen = "127.0.0.1:{admin_port}"
{steady}{flappy}"#,
        brokers = o.brokers,
        park = park.display(),
        expired = o.dir.join("expired").display(),
        steady = sink("steady", &steady_url),
        flappy = sink("flappy", &flappy_url),
    );
    let config_path = o.dir.join("auditstream.toml");
    std::fs::write(&config_path, config)?;
    let log = o.dir.join("daemon.log");
    let child = Command::new(std::env::current_exe()?)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting the daemon")?;
    let mut daemon = DaemonGuard(child);
    let pid = daemon.0.id();
    let admin_url = format!("http://127.0.0.1:{admin_port}");
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    while status(&client, &admin_url).await.is_none() {
        if daemon.0.try_wait()?.is_some() || t0.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the daemon did not start; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    report.line(format!(
        "auditstream soak, {} UTC, {} ({cores} cores, {:.0} GiB), auditstream {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        host.trim(),
        mem_kib as f64 / 1024.0 / 1024.0,
        env!("CARGO_PKG_VERSION")
    ));
    report.line(format!(
        "{} min at {} events/s into topic {topic} ({} partitions) on {}; sinks `steady` (always up) and `flappy` (503 for {} of every {}); daemon pid {pid}, log {}",
        o.duration.as_secs_f64() / 60.0,
        o.rate,
        o.partitions,
        o.brokers,
        humantime::format_duration(o.flap_down),
        humantime::format_duration(o.flap_every),
        log.display()
    ));
    report.line("");
    report.line("| time | produced | at steady | at flappy | flappy | parked events | park live MiB | park on disk MiB | RSS MiB | fds | steady lag ms p50 / p99 / max | flappy lag max s |");
    report.line("|---|---|---|---|---|---|---|---|---|---|---|---|");

    let acks = Arc::new(Acks {
        ok: AtomicU64::new(0),
        failed: Mutex::new(Vec::new()),
    });
    let producer: BaseProducer<AckContext> = ClientConfig::new()
        .set("bootstrap.servers", &o.brokers)
        .set("linger.ms", "5")
        .create_with_context(AckContext(acks.clone()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let producing = {
        let (stop, sent, topic, rate) = (stop.clone(), sent.clone(), topic.clone(), o.rate);
        std::thread::spawn(move || produce(&producer, &topic, rate, &stop, &sent))
    };

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_report = started + o.report_every;
    let mut died = None;
    let mut flappy_max_lag_window: u64 = 0;
    let row = |s: &Sample, steady: &Receiver, flappy: &Receiver, flappy_max: u64| {
        // One lock at a time: a guard in a format! argument lives to the end of the statement.
        let (at_steady, at_flappy) = (steady.seen().unique, flappy.seen().unique);
        let lags = lag_cell(steady);
        format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} |",
            humantime::format_duration(Duration::from_secs(s.at.as_secs())),
            sent.load(Ordering::Relaxed),
            at_steady,
            at_flappy,
            s.flappy_state,
            s.parked_events,
            mib(s.park_live),
            mib(s.park_disk),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            lags,
            flappy_max as f64 / 1000.0,
        )
    };
    while started.elapsed() < o.duration {
        let until = (Instant::now() + SAMPLE_EVERY).min(started + o.duration);
        // The flap switches on its own schedule, between samples too.
        while Instant::now() < until {
            let t = started.elapsed();
            let in_period = Duration::from_nanos((t.as_nanos() % o.flap_every.as_nanos()) as u64);
            flappy
                .up
                .store(in_period < o.flap_every - o.flap_down, Ordering::SeqCst);
            tokio::time::sleep(
                Duration::from_millis(250).min(until.saturating_duration_since(Instant::now())),
            )
            .await;
        }
        if let Some(status) = daemon.0.try_wait()? {
            died = Some(status);
            break;
        }
        let s = sample(&client, &admin_url, pid, &park, started).await;
        {
            let mut f = flappy.seen();
            flappy_max_lag_window =
                flappy_max_lag_window.max(f.lags.iter().copied().max().unwrap_or(0) as u64);
            f.lags.clear();
        }
        samples.push(s.clone());
        if Instant::now() >= next_report {
            next_report += o.report_every;
            report.line(row(&s, &steady, &flappy, flappy_max_lag_window));
            flappy_max_lag_window = 0;
        }
    }
    stop.store(true, Ordering::SeqCst);
    flappy.up.store(true, Ordering::SeqCst);
    let last = tokio::task::spawn_blocking(move || producing.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let produced_for = started.elapsed();
    let failed: std::collections::HashSet<u64> = acks
        .failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .copied()
        .collect();
    let acked = acks.ok.load(Ordering::Relaxed);

    // The final drain: every acknowledged event at both receivers, both parks empty.
    let all_arrived = |r: &Receiver| {
        let s = r.seen();
        (1..=last).all(|seq| s.has(seq) || failed.contains(&seq))
    };
    let drain_started = Instant::now();
    let mut drained = false;
    while died.is_none() && drain_started.elapsed() < o.drain_timeout {
        if let Some(status) = daemon.0.try_wait()? {
            died = Some(status);
            break;
        }
        let s = sample(&client, &admin_url, pid, &park, started).await;
        if s.status_ok && s.parked_entries == 0 && all_arrived(&steady) && all_arrived(&flappy) {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let drain_time = drain_started.elapsed();
    let after_drain = sample(&client, &admin_url, pid, &park, started).await;
    report.line(row(&after_drain, &steady, &flappy, flappy_max_lag_window));
    // The store is compacted in the background once the parks are empty: look again a little
    // later.
    let mut settled = after_drain.clone();
    if died.is_none() {
        tokio::time::sleep(o.settle).await;
        settled = sample(&client, &admin_url, pid, &park, started).await;
    }

    // Stop the daemon as an operator would.
    let mut exit = None;
    if died.is_none() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if let Some(st) = daemon.0.try_wait()? {
                exit = Some(st);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let after_stop_disk = disk_usage(&park);

    // The verdict.
    let missing = |r: &Receiver| {
        let s = r.seen();
        (1..=last)
            .filter(|seq| !s.has(*seq) && !failed.contains(seq))
            .count()
    };
    let (lost_steady, lost_flappy) = (missing(&steady), missing(&flappy));
    let (dup_steady, dup_flappy) = {
        let (s, f) = (steady.seen(), flappy.seen());
        (s.total - s.unique, f.total - f.unique)
    };
    let malformed = steady.seen().malformed + flappy.seen().malformed;
    let third = samples.len() / 3;
    let middle = &samples[third..(2 * third).min(samples.len())];
    let last_third = &samples[(2 * third).min(samples.len())..];
    let rss = |s: &[Sample]| mean(&s.iter().map(|x| x.rss_kib).collect::<Vec<_>>()) / 1024.0;
    let fds_max = |s: &[Sample]| s.iter().map(|x| x.fds).max().unwrap_or(0);
    let (rss_mid, rss_last) = (rss(middle), rss(last_third));
    let (fds_mid, fds_last) = (fds_max(middle), fds_max(last_third));
    let peak_disk = samples.iter().map(|s| s.park_disk).max().unwrap_or(0);
    let peak_live = samples.iter().map(|s| s.park_live).max().unwrap_or(0);
    // The park's size on disk after the first outage had drained.
    let first_drained = samples
        .iter()
        .skip_while(|s| s.parked_entries == 0)
        .find(|s| s.parked_entries == 0)
        .map(|s| s.park_disk);

    let nothing_lost = drained && lost_steady == 0 && lost_flappy == 0 && malformed == 0;
    let rss_flat = third > 0 && rss_last <= rss_mid * 1.2 && rss_last >= rss_mid * 0.8;
    let fds_flat = third > 0 && fds_last <= fds_mid + 5;
    let space_returned = settled.status_ok
        && settled.parked_entries == 0
        && settled.park_live == 0
        && first_drained
            .is_some_and(|first| settled.park_disk <= first + first / 4 + 8 * 1024 * 1024);
    let stopped_cleanly = died.is_none() && exit.is_some_and(|e| e.success());

    report.line("");
    report.line(format!(
        "produced {last} events in {} ({acked} acknowledged by the broker, {} refused); the final drain took {}",
        humantime::format_duration(Duration::from_secs(produced_for.as_secs())),
        failed.len(),
        humantime::format_duration(Duration::from_secs(drain_time.as_secs())),
    ));
    let (at_steady, at_flappy) = (steady.seen().unique, flappy.seen().unique);
    let (lag_steady, lag_flappy) = (steady.seen().max_lag_ms, flappy.seen().max_lag_ms);
    report.line(format!(
        "arrived: steady {at_steady} unique ({dup_steady} duplicates), flappy {at_flappy} unique ({dup_flappy} duplicates); malformed records {malformed}"
    ));
    report.line(format!(
        "lag: steady max {:.1} s over the run, flappy max {:.1} s (its outages)",
        lag_steady as f64 / 1000.0,
        lag_flappy as f64 / 1000.0
    ));
    report.line(format!(
        "park: peak {:.1} MiB live, {:.1} MiB on disk; on disk after the first drain {}, after the final drain {:.1} MiB, {} later {:.1} MiB, after the daemon stopped {:.1} MiB",
        mib(peak_live),
        mib(peak_disk),
        first_drained.map_or("-".into(), |b| format!("{:.1} MiB", mib(b))),
        mib(after_drain.park_disk),
        humantime::format_duration(o.settle),
        mib(settled.park_disk),
        mib(after_stop_disk),
    ));
    report.line(format!(
        "RSS mean: middle third {rss_mid:.1} MiB, last third {rss_last:.1} MiB; fds max: middle third {fds_mid}, last third {fds_last} ({} samples, every {}s)",
        samples.len(),
        SAMPLE_EVERY.as_secs()
    ));
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    report.line("");
    report.line(format!(
        "verdict: nothing lost: {} ({lost_steady} missing at steady, {lost_flappy} at flappy{})",
        verdict(nothing_lost),
        if drained {
            ""
        } else {
            ", the drain did not finish"
        }
    ));
    report.line(format!(
        "verdict: memory flat (last third within 20% of the middle third): {}",
        verdict(rss_flat)
    ));
    report.line(format!(
        "verdict: file descriptors flat (last third's max at most the middle third's + 5): {}",
        verdict(fds_flat)
    ));
    report.line(format!(
        "verdict: park space returned after the drain (no entries; on disk at most the first drain's + 25% + 8 MiB): {} ({} entries, {} bytes live, {:.1} MiB on disk){}",
        verdict(space_returned),
        settled.parked_entries,
        settled.park_live,
        mib(settled.park_disk),
        if settled.park_disk < peak_disk {
            format!(
                "; the park gave {:.1} MiB back to the filesystem after the peak",
                mib(peak_disk - settled.park_disk)
            )
        } else {
            "; the park kept its files at their peak size (space reused, not given back)".into()
        }
    ));
    report.line(format!(
        "verdict: the daemon stayed up and stopped cleanly on SIGTERM: {}{}",
        verdict(stopped_cleanly),
        match (died, exit) {
            (Some(st), _) => format!(" (it died during the run: {st}; see {})", log.display()),
            (None, Some(st)) if !st.success() => format!(" (exit: {st})"),
            (None, None) => " (it did not stop within 60 s)".into(),
            _ => String::new(),
        }
    ));
    let ok = nothing_lost && rss_flat && fds_flat && space_returned && stopped_cleanly;
    report.line(format!("verdict: {}", verdict(ok)));
    drop(daemon);
    Ok(ok)
}
