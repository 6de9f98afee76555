//! The bench's Kafka part: the same events produced to a broker, read by a bare rdkafka
//! consumer (the ceiling), then by the whole pipeline (`Pipeline`, as `auditstream run` builds
//! it) to a file sink; and the delay from a message's Kafka timestamp to its arrival at an
//! HTTP endpoint at a moderate, steady rate.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditstream::config::load::Locator;
use auditstream::config::{parse_str, Config};
use auditstream::pipeline::Pipeline;
use auditstream::shutdown::{Shutdown, Stage};
use auditstream::status::Status;
use auditstream::template::{sample, Templates};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::Message;
use tokio::task::JoinHandle;

use crate::chart::Series;

/// A producer tuned for loading a topic quickly, putting at most `batch` messages in a batch,
/// each compressed with `compression` (librdkafka's `compression.type`).
fn producer(brokers: &str, batch: usize, compression: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", batch.to_string())
        .set("compression.type", compression)
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .expect("a producer")
}

/// Creates `topic` with `partitions` (the in-process cluster does it through its handle).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("an admin client");
    let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
    let results = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("create_topics");
    for r in results {
        if let Err((name, e)) = r {
            panic!("cannot create topic {name}: {e}");
        }
    }
}

/// Producers loading the topic at once, each with its own connection. With batches of one
/// message, one producer loaded Tansu at about 7,000 events/s and eight at about 16,000.
const PRODUCERS: usize = 8;

/// Sends `g`'s next event to `topic`, keyed by its workspace.
fn send_next(p: &BaseProducer, topic: &str, g: &mut crate::Padded) {
    let (key, payload) = g.next_message();
    auditstream::embedded_kafka::send(p, topic, None, Some(key.as_bytes()), Some(&payload))
        .expect("produce");
    p.poll(Duration::ZERO);
}

/// Produces `n` events (generated, padded to about `bytes`, keyed by workspace) in batches of
/// at most `batch` messages compressed with `compression`, from [`PRODUCERS`] producers at once.
pub fn produce(
    brokers: &str,
    topic: &str,
    n: usize,
    bytes: usize,
    batch: usize,
    compression: &str,
) {
    std::thread::scope(|s| {
        for i in 0..PRODUCERS {
            let count = n / PRODUCERS + usize::from(i < n % PRODUCERS);
            s.spawn(move || {
                let p = producer(brokers, batch, compression);
                let mut g = crate::Padded::new(i as u64, bytes);
                for _ in 0..count {
                    send_next(&p, topic, &mut g);
                }
                p.flush(Duration::from_secs(600)).expect("flush");
            });
        }
    });
}

/// Reads `n` messages from the start of `topic` with a plain consumer, copying each value
/// out as the daemon does; returns the time taken.
pub fn bare_consume(brokers: &str, topic: &str, n: usize) -> Duration {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-bare-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        // As the daemon sets it (`source::client_config`).
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .expect("a consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut seen = 0;
    let mut started = None;
    let mut progress = Instant::now();
    while seen < n {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                started.get_or_insert_with(Instant::now);
                std::hint::black_box(m.payload().map(bytes::Bytes::copy_from_slice));
                seen += 1;
                progress = Instant::now();
            }
            Some(Err(e)) => panic!("bare consumer: {e}"),
            None => assert!(
                progress.elapsed() < STALLED,
                "the bare consumer stalled for {STALLED:?}: read {seen} of {n}; positions {:?}",
                c.position().map(|l| l.to_topic_map()),
            ),
        }
    }
    started.map_or(Duration::ZERO, |s| s.elapsed())
}

/// What the pipeline reads: a topic, as a consumer group, from brokers, with the consumer's
/// librdkafka properties (`--consumer-property`) over the bench's own.
pub struct Subscription<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    pub group: &'a str,
    pub properties: &'a [(String, String)],
}

/// The daemon's `[kafka.properties]` in the runs from Kafka: `fetch.wait.max.ms` 5, then
/// `properties` (the last value of a key wins). The broker of `../shared/tools/real-kafka`
/// holds every fetch for the whole `fetch.wait.max.ms` even when data waits, so at
/// librdkafka's default of 500 ms a consumer reads a few batches a second.
fn properties_toml(properties: &[(String, String)]) -> String {
    let mut table = toml::Table::new();
    table.insert("fetch.wait.max.ms".into(), "5".into());
    for (k, v) in properties {
        table.insert(k.clone(), v.as_str().into());
    }
    toml::to_string(&table).expect("a table of strings is TOML")
}

/// Checks `properties` as the daemon would take them, before the bench spends minutes on
/// the phases before the runs from Kafka: the configuration must accept them (some keys are
/// the daemon's own) and librdkafka must know them.
pub fn check_properties(properties: &[(String, String)]) -> Result<(), String> {
    if properties.is_empty() {
        return Ok(());
    }
    let from = Subscription {
        brokers: "127.0.0.1:9",
        topic: "bench",
        group: "bench-check",
        properties,
    };
    let sink = "name = \"x\"\ntype = \"file\"\npath = \"x\"\n";
    let (config, _) = parsed(&from, sink, None, &std::env::temp_dir())?;
    auditstream::source::client_config(&config.kafka)
        .create::<BaseConsumer>()
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The daemon's configuration for reading `from` into `sink`, parsed as `auditstream run`
/// parses its file, with the text it came from.
fn parsed(
    from: &Subscription<'_>,
    sink: &str,
    in_flight: Option<u64>,
    dir: &Path,
) -> Result<(Config, String), String> {
    let text = config(from, sink, in_flight, dir);
    let config = parse_str(&text, "bench", &|_| None).map_err(|e| e.to_string())?;
    Ok((config, text))
}

/// Builds the whole pipeline, as `auditstream run` does, for reading `from` into `sink`,
/// and starts it: its status, what stops it, and its task.
async fn start(
    from: &Subscription<'_>,
    sink: &str,
    in_flight: Option<u64>,
    dir: &Path,
) -> (Arc<Status>, Shutdown, JoinHandle<anyhow::Result<()>>) {
    let (config, text) = parsed(from, sink, in_flight, dir).unwrap_or_else(|e| panic!("{e}"));
    let templates = Templates::compile(&config.sinks, &sample::builtin(), &Locator::new(&text))
        .unwrap_or_else(|e| panic!("{e:?}"));
    let pipeline = Pipeline::build(config, templates).await.expect("pipeline");
    let status = pipeline.status();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(pipeline.run(shutdown.clone()));
    (status, shutdown, running)
}

fn config(from: &Subscription<'_>, sink: &str, in_flight: Option<u64>, dir: &Path) -> String {
    let Subscription {
        brokers,
        topic,
        group,
        properties,
    } = from;
    let window = in_flight.map_or(String::new(), |n| {
        format!("[pipeline]\nmax_in_flight_events = {n}\n")
    });
    let properties = properties_toml(properties);
    format!(
        "{window}[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{group}\"\ntopics = [\"{topic}\"]\n\
         [kafka.properties]\n{properties}\
         [park]\npath = \"{park}\"\nexpired_dir = \"{expired}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[sinks]]\n{sink}",
        park = dir.join("park").display(),
        expired = dir.join("expired").display(),
    )
}

/// How long a run from Kafka may make no progress before it fails.
const STALLED: Duration = Duration::from_secs(30);

/// What one run of the pipeline from Kafka measured.
pub struct Run {
    /// From the first message read to the last event delivered (joining the group is not
    /// counted).
    pub took: Duration,
    pub series: Series,
}

/// Runs the pipeline on `topic` until `n` events are delivered by its one sink, sampling
/// events/s every 250 ms (and, with `timeline`, printing what was read, queued and delivered
/// at each sample, to stderr). It is stopped gracefully once all `n` are read, so that the
/// open batches are flushed as at the end of the run without Kafka.
pub async fn run_pipeline(
    from: &Subscription<'_>,
    sink: &str,
    n: u64,
    in_flight: Option<u64>,
    dir: &Path,
    timeline: bool,
) -> Run {
    let (status, shutdown, running) = start(from, sink, in_flight, dir).await;
    let sink = status.sinks[0].clone();
    // The run is timed from the first message read (joining the group is not the pipeline's
    // rate) to the last event delivered, looked at every 5 ms; the chart samples every 250 ms.
    // It ends as the run without Kafka ends, where the queue closes after the last event:
    // once all `n` are read, a graceful stop flushes the open batches (a source never ends,
    // so the last batches would otherwise wait for `max_age`).
    let mut points = Vec::new();
    let mut first: Option<Instant> = None;
    let mut stopping = false;
    let mut last_sample: Option<(Instant, u64)> = None;
    let mut progress = (Instant::now(), (0, 0));
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = Instant::now();
        // A run that stops short of `n` fails with what it read, rather than waiting forever.
        let done = (status.source.consumed(), sink.delivered());
        if done != progress.1 {
            progress = (now, done);
        }
        assert!(
            now - progress.0 < STALLED,
            "the run from Kafka stalled for {STALLED:?}: read {}, delivered {} of {n}; committed positions {:?}",
            done.0,
            done.1,
            status.source.partitions().iter().map(|(tp, p)| (tp.to_string(), p.committed)).collect::<Vec<_>>(),
        );
        if !stopping && status.source.consumed() >= n {
            shutdown.request(Stage::Graceful);
            stopping = true;
        }
        if first.is_none() && status.source.consumed() > 0 {
            first = Some(now);
            last_sample = Some((now, 0));
        }
        let delivered = sink.delivered();
        if let (Some(start), Some((t, at))) = (first, last_sample) {
            if now - t >= Duration::from_millis(250) || delivered >= n {
                let rate = (delivered - at) as f64 / (now - t).as_secs_f64();
                if timeline {
                    eprintln!(
                        "{:>6.2} s  read {:>9}  queued {:>8}  unfinished {:>8}  delivered {:>9}  {rate:>7.0}/s",
                        (now - start).as_secs_f64(),
                        status.source.consumed(),
                        sink.queued(),
                        sink.unfinished(),
                        delivered,
                    );
                }
                points.push(((now - start).as_secs_f64(), rate));
                last_sample = Some((now, delivered));
            }
        }
        if delivered >= n {
            break;
        }
        if running.is_finished() {
            // It may have delivered the last events since `delivered` was read.
            let delivered = sink.delivered();
            assert!(
                delivered >= n,
                "the pipeline stopped with {delivered} of {n} delivered"
            );
            break;
        }
    }
    let took = first.map_or(Duration::ZERO, |f| f.elapsed());
    if !stopping {
        shutdown.request(Stage::Graceful);
    }
    running.await.expect("join").expect("the pipeline ran");
    Run {
        took,
        series: Series {
            label: "file, from Kafka".to_string(),
            points,
        },
    }
}

/// The delay from each message's Kafka timestamp to its arrival at an HTTP endpoint, at
/// `rate` events/s for `seconds`; returns the sorted delays in milliseconds.
pub async fn latency(
    brokers: &str,
    topic: &str,
    properties: &[(String, String)],
    rate: u64,
    seconds: u64,
    dir: &Path,
) -> Vec<f64> {
    let delays = Arc::new(Mutex::new(Vec::<f64>::new()));
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::post(
                |axum::extract::State(d): axum::extract::State<Arc<Mutex<Vec<f64>>>>,
                 body: String| async move {
                    let now = chrono::Utc::now();
                    let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
                    for line in body.lines() {
                        let ts = line
                            .trim_start_matches("{\"ts\":\"")
                            .trim_end_matches("\"}");
                        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) {
                            d.push(
                                (now - t.with_timezone(&chrono::Utc))
                                    .num_microseconds()
                                    .unwrap_or(0) as f64
                                    / 1000.0,
                            );
                        }
                    }
                    "ok"
                },
            ),
        )
        .with_state(delays.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sink = format!(
        "name = \"siem\"\ntype = \"http\"\nurl = \"http://{addr}/\"\nencoding = \"ndjson\"\ntemplate = '{{\"ts\":{{{{json _kafka.timestamp}}}}}}'\n"
    );
    let group = format!("bench-daemon-{topic}");
    let from = Subscription {
        brokers,
        topic,
        group: &group,
        properties,
    };
    let (status, shutdown, running) = start(&from, &sink, None, dir).await;
    while status.source.assigned() == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = rate * seconds;
    let brokers = brokers.to_string();
    let topic = topic.to_string();
    // Paced in steps of 10 ms, on a thread of its own.
    tokio::task::spawn_blocking(move || {
        let p = producer(&brokers, 10_000, "none");
        let mut g = crate::Padded::new(0, 500);
        let started = Instant::now();
        for i in 0..total {
            let due = started + Duration::from_micros(i * 1_000_000 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            send_next(&p, &topic, &mut g);
        }
        p.flush(Duration::from_secs(60)).expect("flush");
    })
    .await
    .expect("producer");
    while (delays.lock().unwrap_or_else(|e| e.into_inner()).len() as u64) < total {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!running.is_finished(), "the pipeline stopped early");
    }
    shutdown.request(Stage::Graceful);
    running.await.expect("join").expect("the pipeline ran");
    let mut d = delays.lock().unwrap_or_else(|e| e.into_inner()).clone();
    d.sort_by(f64::total_cmp);
    d
}

/// The value at quantile `q` of sorted `v`.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}
