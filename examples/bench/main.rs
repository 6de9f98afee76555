//! The benchmark. First the pipeline with Kafka taken out: generated events are decoded,
//! rendered with a realistic template, batched, compressed and delivered by the real delivery
//! worker to a real destination on 127.0.0.1, one sink at a time, then all of them at once.
//! Then, with `--kafka` (the in-process cluster; keep it under ~20,000 events) or `--brokers
//! HOST:PORT` (a real broker such as `../shared/tools/real-kafka`), end to end: the same events
//! produced to a topic, read by a bare rdkafka consumer (the ceiling), then by the whole
//! pipeline to a file sink; and the delay from Kafka timestamp to arrival at an HTTP endpoint
//! at a moderate rate.
//!
//! ```sh
//! cargo run --release --example bench -- [--events N] [--event-bytes B]
//!     [--sinks file,s3,http|none] [--park] [--kafka | --brokers HOST:PORT]
//!     [--latency-rate R] [--latency-seconds S] [--in-flight N] [--broker-pid PID]
//!     [--partitions N] [--produce-batch N] [--produce-compression CODEC] [--timeline]
//!     [--rounds N] [--consumer-property KEY=VALUE]... [--chart target/bench.svg]
//! ```
//!
//! `--rounds N` runs the pipeline from Kafka N times (each round a new consumer group reading
//! the same topic from its start), rounds after the first each just after a run of the file
//! sink without Kafka at the same window, and prints each pair's ratios and their medians: on
//! a machine shared with other work the rate moves between runs a minute apart by more than
//! the difference measured, so one pair compares little.
//!
//! `--consumer-property KEY=VALUE` (repeatable; the last value of a key wins) sets a
//! librdkafka property of the daemon's consumer in the runs from Kafka and the delay run, as
//! `[kafka.properties]` does (`fetch.wait.max.ms` is 5 unless set here), to compare its
//! settings; the bare consumer keeps its own. They are checked before the first phase.
//!
//! `--broker-pid PID` (the broker's process on this machine, for example
//! `$(cat ~/.cache/tansu/pid)`) adds the CPU the broker used while the bare consumer read
//! from it and while the pipeline did, in every round: on one machine the broker takes its
//! share of the same cores. Both read the same bytes, each joining a group of its own; the
//! pipeline's run lasts longer, and the broker's cost that goes with time (answering fetches,
//! commits) is larger in it.
//!
//! `--timeline` prints, every 250 ms of the run from Kafka, what the pipeline has read, what
//! waits in the sink's queue, what is unfinished and what is delivered (to stderr).
//!
//! `--in-flight` sets `pipeline.max_in_flight_events` for the runs from Kafka (default: the
//! daemon's); the file sink is then also run without Kafka at that window, to compare at the
//! same window. `--partitions N` makes the topic with N partitions (default 4),
//! `--produce-batch N` puts at most N messages in a produced batch (default 10,000), and
//! `--produce-compression CODEC` compresses the produced batches (librdkafka's
//! `compression.type`: `none`, the default, `lz4`, `zstd`, `gzip` or `snappy`), as many
//! audit topics are: the broker then serves fewer bytes and the consumer decompresses them.
//!
//! The broker of `../shared/tools/real-kafka` (Tansu 0.6) skips the rest of a record batch
//! when a fetch starts inside it. The daemon used to pause its partitions when its window was
//! full, and a consumer resumes inside a batch, so runs from Tansu then needed a window larger
//! than `--events`. It no longer pauses (its messages wait in a queue of its own), so it
//! fetches from inside a batch only when it starts from a committed offset, and the runs work
//! at any window. `tools/patched-tansu/build` builds a Tansu that serves such a fetch as Kafka
//! does.
//!
//! With more than one sink in `--sinks`, they then run at once, as one pipeline with those
//! sinks runs them: each event is registered with the offset tracker as owed by every sink and
//! queued for each, the window counts what not every sink has finished (as the source's does),
//! and the rate counts an event once every sink has delivered it. A sink that holds its share
//! of a full window while another holds far less spills to its park, as in the daemon
//! (`auditstream::deliver`); the bench prints how many deliveries went that way. The feeder
//! keeps the tracker for one sink too, as the source does.
//!
//! It prints events/s and MiB/s (of event JSON in) per sink, the peak RSS of each phase (the
//! high-water mark is reset between phases), the CPU time the process used per event (all
//! threads, in-process destination servers and librdkafka included: on a machine shared with
//! other work, `cores / (µs per event)` is the rate idle cores would give), how many of the
//! machine's cores were busy meanwhile (with anything: the broker and other processes count,
//! from `/proc/stat`) and how many the host took for other machines (steal time, which moves
//! the rates between runs on a shared host), and writes an SVG chart of events/s over each run.
//! CPU per event and busy and stolen cores cover the whole phase, start-up and stop included
//! (for the runs from Kafka, joining the group), where the rate is timed from the first message
//! read. With `--park` it also measures the park: `--events` (at most 200,000) rendered events
//! in batches of 1000, written durably (each append flushed), then replayed in order to a file
//! sink, each entry released with its receipt.

mod chart;
mod kafka;

use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditstream::config::load::Locator;
use auditstream::config::parse_str;
use auditstream::decode::decode;
use auditstream::deliver::{ParkLimits, Spill, Worker};
use auditstream::event::{Coords, RawMessage};
use auditstream::generate::Generator;
use auditstream::offsets::{Pending, Slot, Tracker};
use auditstream::park::export::Exporter;
use auditstream::park::quarantine::Quarantine;
use auditstream::park::Store;
use auditstream::status::{SinkStatus, Status};
use auditstream::template::{sample, Templates};
use bytes::Bytes;

const TEMPLATE: &str = r#"{"time":{{json timestamp}},"user":{{json actor.id}},"user_type":"{{upper actor.type}}","action":{{json action}},"result":{{json (default outcome "unknown")}},"target":"{{entity.type}}:{{entity.id}}","src_ip":{{json (default metadata.ip null)}},"agent":{{json metadata.user_agent}},"request":{{json metadata.request_id}},"changes":{{json changes}},"kafka":"{{_kafka.topic}}/{{_kafka.partition}}@{{_kafka.offset}}"}"#;
/// The window of the runs without Kafka: the daemon's default `max_in_flight_events`.
const IN_FLIGHT: u64 = 50_000;
/// Distinct payloads generated up front; runs cycle through them. The feeder copies each one,
/// as the source copies a message out of librdkafka, so every event owns its payload as in
/// the daemon, and the peak RSS is the pipeline's (the pool is about 5 MiB).
const POOL: usize = 10_000;
/// Events the park phase writes and replays (fewer when `--events` is smaller).
const PARK_EVENTS: usize = 200_000;

struct Args {
    events: usize,
    event_bytes: usize,
    sinks: Vec<String>,
    park: bool,
    kafka: bool,
    brokers: Option<String>,
    latency_rate: u64,
    latency_seconds: u64,
    chart: String,
    in_flight: Option<u64>,
    broker_pid: Option<u32>,
    produce_batch: usize,
    produce_compression: String,
    partitions: i32,
    timeline: bool,
    rounds: usize,
    consumer_properties: Vec<(String, String)>,
}

fn args() -> Args {
    let mut a = Args {
        events: 200_000,
        event_bytes: 500,
        sinks: vec!["file".into(), "s3".into(), "http".into()],
        park: false,
        kafka: false,
        brokers: None,
        latency_rate: 5_000,
        latency_seconds: 10,
        chart: "target/bench.svg".into(),
        in_flight: None,
        broker_pid: None,
        produce_batch: 10_000,
        produce_compression: "none".into(),
        partitions: 4,
        timeline: false,
        rounds: 1,
        consumer_properties: Vec::new(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--events" => a.events = value.parse().expect("--events N"),
            "--event-bytes" => a.event_bytes = value.parse().expect("--event-bytes B"),
            "--sinks" if value == "none" => a.sinks.clear(),
            "--sinks" => a.sinks = value.split(',').map(str::to_string).collect(),
            "--brokers" => a.brokers = Some(value),
            "--latency-rate" => a.latency_rate = value.parse().expect("--latency-rate R"),
            "--latency-seconds" => a.latency_seconds = value.parse().expect("--latency-seconds S"),
            "--chart" => a.chart = value,
            "--in-flight" => a.in_flight = Some(value.parse().expect("--in-flight N")),
            "--broker-pid" => a.broker_pid = Some(value.parse().expect("--broker-pid PID")),
            "--partitions" => a.partitions = value.parse().expect("--partitions N"),
            "--produce-batch" => a.produce_batch = value.parse().expect("--produce-batch N"),
            "--produce-compression" => a.produce_compression = value,
            "--rounds" => a.rounds = value.parse().expect("--rounds N"),
            "--consumer-property" => {
                let (k, v) = value
                    .split_once('=')
                    .expect("--consumer-property KEY=VALUE");
                a.consumer_properties.push((k.to_string(), v.to_string()));
            }
            flag @ ("--park" | "--kafka" | "--timeline") => {
                match flag {
                    "--park" => a.park = true,
                    "--kafka" => a.kafka = true,
                    _ => a.timeline = true,
                }
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}; see the header of examples/bench/main.rs"),
        }
        i += 2;
    }
    a
}

/// Generated audit events padded to about `bytes` each: (key, Kafka message value).
pub struct Padded {
    g: Generator,
    bytes: usize,
}

impl Padded {
    /// Events from the generator seeded with `seed`.
    pub fn new(seed: u64, bytes: usize) -> Self {
        Self {
            g: Generator::new(7 + seed, 64),
            bytes,
        }
    }

    pub fn next_message(&mut self) -> (String, Bytes) {
        let (key, mut e) = self.g.next_event();
        let len = e.to_string().len();
        if len + 12 < self.bytes {
            e["metadata"]["note"] = "n".repeat(self.bytes - len - 12).into();
        }
        (key, Bytes::from(e.to_string()))
    }
}

fn payloads(n: usize, bytes: usize) -> Vec<Bytes> {
    let mut g = Padded::new(0, bytes);
    (0..n).map(|_| g.next_message().1).collect()
}

async fn http_receiver() -> String {
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(|body: axum::body::Bytes| async move {
            std::hint::black_box(body.len());
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

async fn s3_server(root: &Path) -> String {
    std::fs::create_dir_all(root.join("bench")).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(
        "AKIDBENCH",
        "bench-secret",
    ));
    let service = b.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                .await;
            });
        }
    });
    format!("http://{addr}")
}

async fn sink_toml(kind: &str, dir: &Path) -> String {
    let head = format!("name = \"{kind}\"\ntemplate = '{TEMPLATE}'\n");
    match kind {
        "file" => format!("{head}type = \"file\"\npath = \"{}\"\n", dir.join("bench.jsonl").display()),
        "s3" => format!(
            "{head}type = \"s3\"\nbucket = \"bench\"\nendpoint = \"{}\"\nforce_path_style = true\nregion = \"us-east-1\"\naccess_key_id = \"AKIDBENCH\"\nsecret_access_key = \"bench-secret\"\ncompression = \"zstd\"\n[sinks.batch]\nmax_events = 10000\nmax_bytes = \"8MiB\"\nmax_age = \"1s\"\n",
            s3_server(&dir.join("s3")).await
        ),
        "http" => format!(
            "{head}type = \"http\"\nurl = \"{}\"\nencoding = \"ndjson\"\n[sinks.batch]\nmax_events = 5000\nmax_bytes = \"4MiB\"\nmax_age = \"1s\"\n",
            http_receiver().await
        ),
        other => panic!("unknown sink {other}; use file, s3, http"),
    }
}

/// Runs `payloads` through the sinks `kinds` at once, as one pipeline fans each event out to
/// all of its sinks: every event is queued for each sink and counts as finished once every
/// sink has delivered it. Returns the elapsed time and the deliveries that went through a
/// sink's park (spilled, see `auditstream::deliver`) on their way.
/// `events` messages are fed, cycling through `payloads` (a pool, so that a run of millions
/// does not hold millions of payloads: the memory measured is the pipeline's).
async fn run_sinks(
    kinds: &[String],
    payloads: Arc<Vec<Bytes>>,
    count: usize,
    window: u64,
    dir: &Path,
) -> (Duration, chart::Series, u64) {
    let mut text = String::from("[kafka]\nbrokers = \"unused\"\ntopics = [\"bench\"]\n");
    for kind in kinds {
        text += &format!("[[sinks]]\n{}", sink_toml(kind, dir).await);
    }
    let config = parse_str(&text, "bench", &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let templates = Templates::compile(&config.sinks, &sample::builtin(), &Locator::new(&text))
        .unwrap_or_else(|e| panic!("{e:?}"));
    let templates = Arc::new(templates);
    let store = Store::open(&dir.join("park")).unwrap();
    let (reports_tx, reports) = std::sync::mpsc::channel();
    let (quarantine, qqueue) = Quarantine::channel();
    drop(qqueue);
    let mut sinks = Vec::new();
    for sc in &config.sinks {
        let sink = auditstream::sink::build(sc).await.unwrap();
        let park = store.sink_park(&sc.name).unwrap();
        let status = Arc::new(SinkStatus::new(
            &sc.name,
            sc.type_name(),
            sink.describe(),
            park.counts(),
        ));
        sinks.push((sc, sink, park, status));
    }
    // The pipeline's status, as `Pipeline::build` makes it: the feeder pauses it as the source
    // does (from a full window until half of it has finished), and with several sinks a sink
    // that holds its share of the window spills to its park, as in the daemon.
    let pipeline = Arc::new(Status {
        sinks: sinks.iter().map(|(.., status)| status.clone()).collect(),
        ..Status::default()
    });
    let (mut queues, mut workers) = (Vec::new(), Vec::new());
    for (index, (sc, sink, park, status)) in sinks.into_iter().enumerate() {
        let (queue, events) = tokio::sync::mpsc::unbounded_channel();
        let worker = Worker {
            index,
            slot: Slot::sink(index).unwrap(),
            sink,
            templates: templates.clone(),
            batch: sc.batch,
            retry: sc.retry,
            concurrency: sc.concurrency(),
            status: status.clone(),
            reports: reports_tx.clone(),
            quarantine: quarantine.clone(),
            park,
            limits: ParkLimits {
                max_bytes: config.park.max_bytes.bytes(),
                when_full: config.park.when_full,
                max_age: config.park.max_age.get(),
                probe_max_interval: config.park.probe_max_interval.get(),
                exporter: Exporter::new(&dir.join("expired").join(&sc.name)),
            },
            probe_now: Arc::new(tokio::sync::Notify::new()),
            held: pipeline.source.watch_paused(),
            spill: (kinds.len() > 1).then(|| Spill {
                status: pipeline.clone(),
                backlog: (window as usize / kinds.len()).max(1),
            }),
            redactor: None,
            journal: None,
        };
        queues.push(queue);
        workers.push((worker, events));
    }
    drop((reports_tx, quarantine));
    let statuses = pipeline.sinks.clone();
    let paused = pipeline.clone();
    let started = Instant::now();
    let handles: Vec<_> = workers
        .into_iter()
        .map(|(worker, events)| tokio::spawn(worker.run(events)))
        .collect();
    let sampler = tokio::spawn(sample(statuses.clone()));
    let total = count as u64;
    let counted = statuses.clone();
    // The feeder plays the source: decode, register with the offset tracker (owed by every
    // sink), queue for every sink, and stay within the in-flight bound, which counts what the
    // tracker does not yet hold finished by all of them, as the source's does.
    let feeder = std::thread::spawn(move || {
        let topic: Arc<str> = "bench".into();
        let owed = (0..queues.len())
            .filter_map(Slot::sink)
            .fold(Pending::NONE, Pending::with);
        let mut tracker = Tracker::new();
        for (i, p) in payloads.iter().cycle().take(count).enumerate() {
            while let Ok(r) = reports.try_recv() {
                tracker.apply(&r);
            }
            while tracker.in_flight() as u64 >= window {
                paused.source.set_paused(true);
                match reports.recv_timeout(Duration::from_millis(100)) {
                    Ok(r) => tracker.apply(&r),
                    // A worker that stopped reports nothing more while the others keep the
                    // channel open.
                    Err(RecvTimeoutError::Timeout) if queues.iter().any(|q| q.is_closed()) => {
                        return tracker.committed_messages();
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return tracker.committed_messages(),
                }
            }
            if tracker.in_flight() as u64 <= window / 2 {
                paused.source.set_paused(false);
            }
            let msg = RawMessage {
                coords: Coords {
                    topic: topic.clone(),
                    partition: (i % 4) as i32,
                    offset: (i / 4) as i64,
                },
                timestamp_ms: Some(1_767_225_600_000),
                key: None,
                headers: vec![],
                payload: Some(Bytes::copy_from_slice(p)),
            };
            let event = Arc::new(decode(msg, 1 << 20).expect("generated events decode"));
            let coords = &event.coords;
            tracker
                .register(&coords.topic_partition(), coords.offset, owed)
                .expect("the feeder's offsets increase per partition");
            for (queue, status) in queues.iter().zip(&counted) {
                // Counted before it is sent, as the fan-out does.
                status.add_queued(1);
                if queue.send(event.clone()).is_err() {
                    return tracker.committed_messages();
                }
            }
        }
        // Every event is queued. As at a full window, the open batches go out at once; what
        // a sink spilled is replayed from its park, which only a running worker does, so the
        // queues close once every sink has delivered everything.
        paused.source.set_paused(true);
        while counted.iter().any(|s| s.delivered() < total) {
            match reports.recv_timeout(Duration::from_millis(1)) {
                Ok(r) => tracker.apply(&r),
                Err(RecvTimeoutError::Timeout) if queues.iter().any(|q| q.is_closed()) => break,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(queues);
        while let Ok(r) = reports.recv() {
            tracker.apply(&r);
        }
        tracker.committed_messages()
    });
    let finished = tokio::task::spawn_blocking(move || feeder.join().unwrap())
        .await
        .unwrap();
    let took = started.elapsed();
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(finished, total, "every event delivered");
    for status in &statuses {
        assert_eq!(status.delivered(), total);
    }
    sampler.abort();
    let _ = sampler.await;
    let points = SAMPLES
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    let label = format!("{}, no Kafka", together(kinds));
    let replayed = statuses.iter().map(|s| s.snapshot().replayed_events).sum();
    (took, chart::Series { label, points }, replayed)
}

/// One phase without Kafka, `kinds` at once in a directory of its own: runs it, prints its
/// line as `label` (`bytes` of event JSON in) and returns its time, its CPU µs per event and
/// its series for the chart.
async fn without_kafka(
    label: &str,
    kinds: &[String],
    payloads: &Arc<Vec<Bytes>>,
    count: usize,
    window: u64,
    bytes: usize,
) -> (Duration, Option<f64>, chart::Series) {
    let dir = tempfile::tempdir().unwrap();
    start_phase();
    let (took, series, replayed) =
        run_sinks(kinds, payloads.clone(), count, window, dir.path()).await;
    let cpu = phase_cpu_per_event(count);
    rate_line(label, count, bytes, took, cpu);
    if replayed > 0 {
        println!("  of which went through a sink's park (spilled, then replayed): {replayed}");
    }
    (took, cpu, series)
}

/// A run's name: its sink, or its sinks joined by `+` when they run together.
fn together(kinds: &[String]) -> String {
    match kinds {
        [one] => one.clone(),
        many => format!("{} together", many.join("+")),
    }
}

static SAMPLES: std::sync::Mutex<Vec<(f64, f64)>> = std::sync::Mutex::new(Vec::new());

/// Samples the sinks' delivered counts every 250 ms into `SAMPLES` as events/s: the fewest
/// any one sink has delivered (close to what all have, for a chart).
async fn sample(statuses: Vec<Arc<SinkStatus>>) {
    let started = Instant::now();
    let (mut last_t, mut last_n) = (started, 0u64);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let n = statuses.iter().map(|s| s.delivered()).min().unwrap_or(0);
        let rate = (n - last_n) as f64 / (now - last_t).as_secs_f64();
        if let Ok(mut v) = SAMPLES.lock() {
            v.push(((now - started).as_secs_f64(), rate));
        }
        (last_t, last_n) = (now, n);
    }
}

/// Park write (durable) and replay times for `payloads` as 1000-event batches.
async fn park_bench(payloads: &[Bytes], count: usize, dir: &Path) -> (Duration, Duration) {
    use auditstream::batch::{Batch, Record};
    use auditstream::event::TopicPartition;
    let store = Store::open(&dir.join("park")).unwrap();
    let park = store.sink_park("bench").unwrap();
    let events: Vec<&Bytes> = payloads.iter().cycle().take(count).collect();
    let batches: Vec<Batch> = events
        .chunks(1000)
        .enumerate()
        .map(|(i, chunk)| {
            let mut b = Batch::new(
                TopicPartition {
                    topic: "bench".into(),
                    partition: 0,
                },
                None,
            );
            for (j, p) in chunk.iter().enumerate() {
                b.push(Record {
                    offset: (i * 1000 + j) as i64,
                    body: String::from_utf8_lossy(p).into_owned(),
                });
            }
            b
        })
        .collect();
    let started = Instant::now();
    for b in &batches {
        park.append(b, Some("bench")).await.unwrap();
    }
    let write = started.elapsed();
    let text = format!(
        "[kafka]\nbrokers = \"unused\"\ntopics = [\"bench\"]\n[[sinks]]\nname = \"out\"\ntype = \"file\"\npath = \"{}\"\n",
        dir.join("replayed.jsonl").display()
    );
    let config = parse_str(&text, "bench", &|_| None).unwrap();
    let sink = auditstream::sink::build(&config.sinks[0]).await.unwrap();
    let started = Instant::now();
    while let Some(head) = park.head().unwrap() {
        let receipt = sink.deliver(&head.batch).await.unwrap();
        park.release(&head, auditstream::park::Release::Delivered(receipt))
            .unwrap();
    }
    let replay = started.elapsed();
    assert_eq!(park.verify().unwrap().entries, 0);
    (write, replay)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user and system, all threads) this process has used, in microseconds.
fn cpu_micros() -> u64 {
    // SAFETY: getrusage(2) fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    micros(ru.ru_utime) + micros(ru.ru_stime)
}

/// CPU time (user and system) another process on this machine has used, in microseconds: the
/// broker's, from `/proc/PID/stat` (fields 14 and 15, in clock ticks).
fn process_cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000 / per_second)
}

/// The CPU time used when the current phase started.
static PHASE_CPU: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// The machine's busy and stolen CPU ticks, and when, at the start of the current phase.
static PHASE_TICKS: std::sync::Mutex<Option<(Ticks, Instant)>> = std::sync::Mutex::new(None);

/// CPU ticks of the whole machine so far, all cores together, from the first line of
/// `/proc/stat`.
#[derive(Clone, Copy)]
struct Ticks {
    /// Every process's: user, nice, system, irq and softirq.
    busy: u64,
    /// Taken by the host for other machines (steal): on a shared host, the reason a phase's
    /// rate moves between runs.
    stolen: u64,
}

fn machine_ticks() -> Ticks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let t: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    Ticks {
        busy: [0, 1, 2, 5, 6].iter().filter_map(|&i| t.get(i)).sum(),
        stolen: t.get(7).copied().unwrap_or(0),
    }
}

/// How many of the machine's cores were busy (with anything) and how many the host took,
/// since the phase started: ticks per clock tick of the time that passed.
fn phase_cores() -> (f64, f64) {
    let Some((at_start, since)) = *PHASE_TICKS.lock().unwrap() else {
        return (0.0, 0.0);
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = (since.elapsed().as_secs_f64() * per_second).max(1.0);
    let now = machine_ticks();
    (
        now.busy.saturating_sub(at_start.busy) as f64 / ticks,
        now.stolen.saturating_sub(at_start.stolen) as f64 / ticks,
    )
}

/// Starts a phase: resets the peak RSS (VmHWM) to the current RSS, so the phase measures its
/// own, and notes the CPU time used so far.
fn start_phase() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    PHASE_CPU.store(cpu_micros(), std::sync::atomic::Ordering::Relaxed);
    *PHASE_TICKS.lock().unwrap() = Some((machine_ticks(), Instant::now()));
}

/// CPU µs per event since the phase started: what the rate would be on idle cores is
/// `cores / (µs per event)`, whatever else ran on the machine.
fn phase_cpu_per_event(n: usize) -> Option<f64> {
    let used = cpu_micros().saturating_sub(PHASE_CPU.load(std::sync::atomic::Ordering::Relaxed));
    Some(used as f64 / n.max(1) as f64)
}

fn rate_line(what: &str, n: usize, bytes: usize, took: Duration, cpu: Option<f64>) {
    let secs = took.as_secs_f64().max(1e-9);
    let (busy, stolen) = phase_cores();
    let cores = |c: f64| cpu.map_or(String::new(), |_| format!("{c:.2}"));
    println!(
        "{:<33} {:>10.0} {:>8.1} {:>8.2} {:>9.0} {:>10} {:>10} {:>7}",
        what,
        n as f64 / secs,
        bytes as f64 / 1048576.0 / secs,
        secs,
        peak_rss_mib(),
        cpu.map_or(String::new(), |c| format!("{c:.1}")),
        cores(busy),
        cores(stolen),
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    if let Err(e) = kafka::check_properties(&a.consumer_properties) {
        eprintln!("bench: --consumer-property: {e}");
        std::process::exit(2);
    }
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let mean = a.event_bytes;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "auditstream bench: {} events of about {mean} bytes; template {} bytes; {cores} cores\n",
        a.events,
        TEMPLATE.len()
    );
    println!(
        "{:<33} {:>10} {:>8} {:>8} {:>9} {:>10} {:>10} {:>7}",
        "phase", "events/s", "MiB/s", "seconds", "peak RSS", "CPU µs/ev", "busy cores", "stolen"
    );
    let mut series = Vec::new();
    // The file sink's run without Kafka (duration, CPU µs per event), to compare with the run
    // from Kafka.
    let mut file_alone: Option<(Duration, f64)> = None;
    // The same with the window of the runs from Kafka, when that is another.
    let mut file_same_window: Option<(Duration, f64)> = None;
    let payloads = Arc::new(payloads(a.events.min(POOL), a.event_bytes));
    if !a.sinks.is_empty() {
        let pool_bytes: usize = payloads.iter().map(|p| p.len()).sum();
        let bytes = pool_bytes * a.events / payloads.len().max(1);
        for kind in &a.sinks {
            let label = format!("{kind} (no Kafka)");
            let (took, cpu, s) = without_kafka(
                &label,
                std::slice::from_ref(kind),
                &payloads,
                a.events,
                IN_FLIGHT,
                bytes,
            )
            .await;
            if kind == "file" {
                file_alone = cpu.map(|c| (took, c));
            }
            series.push(s);
        }
        // The runs from Kafka may need a larger window (see the header); the file sink is
        // run again with it, so that Kafka's cost is compared at the same window (a larger
        // window holds more in memory, and fresh pages cost CPU).
        if let (Some(window), true, true) = (
            a.in_flight.filter(|w| *w != IN_FLIGHT),
            a.brokers.is_some() || a.kafka,
            a.sinks.iter().any(|k| k == "file"),
        ) {
            let label = format!("file (no Kafka), window {window}");
            let (took, cpu, _) =
                without_kafka(&label, &["file".into()], &payloads, a.events, window, bytes).await;
            file_same_window = cpu.map(|c| (took, c));
        }
        if a.sinks.len() > 1 {
            let label = format!("{} (no Kafka)", together(&a.sinks));
            let (_, _, s) =
                without_kafka(&label, &a.sinks, &payloads, a.events, IN_FLIGHT, bytes).await;
            series.push(s);
        }
        if a.park {
            let dir = tempfile::tempdir().unwrap();
            start_phase();
            let n = a.events.min(PARK_EVENTS);
            let (write, replay) = park_bench(&payloads, n, dir.path()).await;
            let bytes = pool_bytes * n / payloads.len().max(1);
            rate_line("park: written durably", n, bytes, write, None);
            rate_line("park: replayed to a file", n, bytes, replay, None);
        }
    }
    let mut embedded = None;
    let brokers = match (&a.brokers, a.kafka) {
        (Some(b), _) => Some(b.clone()),
        (None, true) => {
            let k = auditstream::embedded_kafka::EmbeddedKafka::start(1).expect("in-process Kafka");
            let b = k.bootstrap_servers().to_string();
            embedded = Some(k);
            Some(b)
        }
        (None, false) => None,
    };
    // The in-process cluster makes topics through its handle, a real broker by request.
    let partitions = a.partitions;
    let create_topic = |topic: String| {
        let brokers = brokers.clone().unwrap_or_default();
        let embedded = &embedded;
        async move {
            match embedded {
                Some(k) => k.create_topic(&topic, partitions).expect("create topic"),
                None => kafka::create_topic(&brokers, &topic, partitions).await,
            }
        }
    };
    if let Some(brokers) = brokers.clone() {
        let topic = format!("bench-{}", std::process::id());
        create_topic(topic.clone()).await;
        let started = Instant::now();
        tokio::task::block_in_place(|| {
            kafka::produce(
                &brokers,
                &topic,
                a.events,
                a.event_bytes,
                a.produce_batch,
                &a.produce_compression,
            )
        });
        let bytes = a.events * a.event_bytes;
        println!(
            "{:<33} {:>10.0}",
            "produced to the broker",
            a.events as f64 / started.elapsed().as_secs_f64()
        );
        // The broker's CPU time since `before`, per event (with `--broker-pid`).
        let broker_cpu_per_event = |before: Option<u64>| {
            a.broker_pid
                .and_then(process_cpu_micros)
                .zip(before)
                .map(|(after, before)| after.saturating_sub(before) as f64 / a.events as f64)
        };
        start_phase();
        let broker_before = a.broker_pid.and_then(process_cpu_micros);
        let bare = tokio::task::block_in_place(|| kafka::bare_consume(&brokers, &topic, a.events));
        let cpu = phase_cpu_per_event(a.events);
        rate_line("bare rdkafka consumer", a.events, bytes, bare, cpu);
        if let Some(b) = broker_cpu_per_event(broker_before) {
            println!("  the broker's CPU per event {b:.2} µs");
        }
        let window = a.in_flight.unwrap_or(IN_FLIGHT);
        // Each round's (rate, CPU per event) against the file sink alone at the same window.
        let mut ratios = Vec::new();
        for round in 1..=a.rounds {
            // Round 1 compares with the runs above; later rounds run the file sink alone
            // again just before, so that both halves of each pair see the machine alike.
            let alone = if round == 1 {
                file_same_window.or(file_alone)
            } else {
                let label = format!("round {round}: file (no Kafka)");
                let (took, cpu, _) =
                    without_kafka(&label, &["file".into()], &payloads, a.events, window, bytes)
                        .await;
                cpu.map(|c| (took, c))
            };
            let dir = tempfile::tempdir().unwrap();
            // The file sink as the run without Kafka has it (default batching); the run ends
            // as that one does, with the last batches flushed (see `run_pipeline`).
            let sink = format!(
                "name = \"file\"\ntype = \"file\"\npath = \"{}\"\ntemplate = '{TEMPLATE}'\n",
                dir.path().join("bench.jsonl").display()
            );
            start_phase();
            let broker_before = a.broker_pid.and_then(process_cpu_micros);
            let group = format!("bench-daemon-{topic}-{round}");
            let from = kafka::Subscription {
                brokers: &brokers,
                topic: &topic,
                group: &group,
                properties: &a.consumer_properties,
            };
            let run = kafka::run_pipeline(
                &from,
                &sink,
                a.events as u64,
                a.in_flight,
                dir.path(),
                a.timeline,
            )
            .await;
            let cpu = phase_cpu_per_event(a.events);
            let broker_cpu = broker_cpu_per_event(broker_before);
            if let (Some((alone, alone_cpu)), Some(cpu)) = (alone, cpu) {
                ratios.push((
                    alone.as_secs_f64() / run.took.as_secs_f64().max(1e-9),
                    cpu / alone_cpu.max(1e-9),
                ));
            }
            if round > 1 {
                rate_line(
                    &format!("round {round}: end to end"),
                    a.events,
                    bytes,
                    run.took,
                    cpu,
                );
                if let Some((rate, cpu)) = ratios.last() {
                    let broker = broker_cpu.map_or(String::new(), |b| {
                        format!("; the broker's CPU per event {b:.2} µs")
                    });
                    println!(
                        "  of the file sink alone just before: {:.0}%, CPU per event {:.0}% of it{broker}",
                        100.0 * rate,
                        100.0 * cpu
                    );
                }
                continue;
            }
            rate_line(
                "file, end to end from Kafka",
                a.events,
                bytes,
                run.took,
                cpu,
            );
            println!(
                "  of the bare consumer: {:.0}%",
                100.0 * bare.as_secs_f64() / run.took.as_secs_f64().max(1e-9)
            );
            let windows = [(IN_FLIGHT, file_alone), (window, file_same_window)];
            for (window, alone) in windows {
                if let (Some((alone, alone_cpu)), Some(cpu)) = (alone, cpu) {
                    println!(
                        "  of the file sink alone at a window of {window}: {:.0}%, CPU per event {:.0}% of it",
                        100.0 * alone.as_secs_f64() / run.took.as_secs_f64().max(1e-9),
                        100.0 * cpu / alone_cpu.max(1e-9)
                    );
                }
            }
            if let (Some((_, alone_cpu)), Some(cpu)) = (file_alone, cpu) {
                if let Some(broker) = broker_cpu {
                    println!(
                        "  the broker, on the same cores: CPU per event {broker:.2} µs; the pipeline's own and the broker's together {:.0}% of the file sink alone at a window of {IN_FLIGHT}",
                        100.0 * (cpu + broker) / alone_cpu.max(1e-9)
                    );
                }
            }
            series.push(run.series);
        }
        if ratios.len() > 1 {
            // Of an even count, the mean of the two middle values.
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                let mid = v.len() / 2;
                if v.len() % 2 == 0 {
                    (v[mid - 1] + v[mid]) / 2.0
                } else {
                    v[mid]
                }
            };
            println!(
                "\nend to end against the file sink alone, {} pairs: rate {} (median {:.0}%), CPU per event median {:.0}%",
                ratios.len(),
                ratios.iter().map(|(r, _)| format!("{:.0}%", 100.0 * r)).collect::<Vec<_>>().join(" "),
                100.0 * median(ratios.iter().map(|(r, _)| *r).collect()),
                100.0 * median(ratios.iter().map(|(_, c)| *c).collect()),
            );
        }
        if a.latency_rate > 0 {
            let topic = format!("bench-latency-{}", std::process::id());
            create_topic(topic.clone()).await;
            let dir = tempfile::tempdir().unwrap();
            let d = kafka::latency(
                &brokers,
                &topic,
                &a.consumer_properties,
                a.latency_rate,
                a.latency_seconds,
                dir.path(),
            )
            .await;
            println!(
                "\ndelay from Kafka timestamp to arrival (HTTP ndjson, default batching: max_age 1 s),\n{} events at {} events/s: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                d.len(),
                a.latency_rate,
                kafka::quantile(&d, 0.5),
                kafka::quantile(&d, 0.99),
                d.last().copied().unwrap_or(0.0)
            );
        }
    }
    if !series.is_empty() {
        let title = format!(
            "auditstream bench: events/s over each run ({} events of {} bytes, {cores} cores)",
            a.events, a.event_bytes
        );
        match std::fs::write(&a.chart, chart::svg(&title, &series)) {
            Ok(()) => println!("\nchart: {}", a.chart),
            Err(e) => println!("\ncannot write the chart to {}: {e}", a.chart),
        }
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
