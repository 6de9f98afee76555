//! Several daemon instances in one consumer group, each a separate process with its own
//! directory (its "volume": park, exports, logs) and admin port, against a Kafka-protocol
//! broker at `brokers`. The scenarios are shared by `tests/instances.rs` (librdkafka's mock
//! cluster, in `cargo test`) and `tests/real_kafka.rs` (a real broker, `.ci/run`).
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use auditstream::embedded_kafka::send;
use auditstream::generate::Generator;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use serde_json::Value;

use super::servers::{Receiver, Switch};
use super::*;

/// How the instance under test goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// kill -9: no revoke, no final commit, no LeaveGroup; the group coordinator notices only
    /// when `session.timeout.ms` has passed.
    Kill,
    /// SIGTERM: the graceful stop (flush or park, commit, LeaveGroup).
    Term,
}

/// The tests here start several daemons each, on a 2-core machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const LONG: Duration = Duration::from_secs(90);

/// One daemon instance: its own directory (its "volume": park, expired exports, logs), its own
/// admin port (`127.0.0.1:0`, read back from its log) and the same group, topic and sink as
/// the others. The HTTP sink tags its requests with `x-instance` so the shared receiver knows
/// who delivered what.
struct Instance {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    daemon: Option<Daemon>,
    runs: usize,
}

impl Instance {
    fn new(root: &Path, i: usize, brokers: &str, group: &str, topic: &str, url: &str) -> Self {
        let name = format!("i{i}");
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{topic}"]
[kafka.properties]
"auto.commit.interval.ms" = 200
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500
"fetch.wait.max.ms" = 10

[pipeline]
shutdown_timeout = "10s"

[admin]
listen = "127.0.0.1:0"

[park]
path = "{park}"
expired_dir = "{expired}"
probe_max_interval = "1s"

[[sinks]]
name = "siem"
type = "http"
url = "{url}"
headers = {{ "x-instance" = "{name}" }}
template = '{COORDS_TEMPLATE}'
timeout = "2s"
[sinks.batch]
max_events = 100
max_age = "100ms"
[sinks.retry]
initial_interval = "100ms"
max_interval = "500ms"
max_elapsed = "1s"
"#,
            park = dir.join("park").display(),
            expired = dir.join("expired").display(),
        );
        let config = dir.join("auditstream.toml");
        std::fs::write(&config, text).unwrap();
        Instance {
            name,
            dir,
            config,
            daemon: None,
            runs: 0,
        }
    }

    fn start(&mut self) {
        assert!(self.daemon.is_none(), "{} is running", self.name);
        self.runs += 1;
        let log = self.dir.join(format!("run{}.log", self.runs));
        self.daemon = Some(Daemon::start(&self.config, &log));
    }

    /// Ends the instance as `how` says.
    fn end(&mut self, how: Ending) {
        match how {
            Ending::Kill => {
                let mut d = self.daemon.take().expect("running");
                d.signal(libc::SIGKILL);
                assert_eq!(d.wait(LONG), None, "ended by the signal");
            }
            Ending::Term => self.stop(),
        }
    }

    /// SIGTERM; the graceful stop must succeed.
    fn stop(&mut self) {
        let mut d = self.daemon.take().expect("running");
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait(LONG), Some(0), "{}: {}", self.name, d.log_text());
    }

    /// The current run's log (empty when not running).
    fn log(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }

    /// The partitions this instance holds now, from its log: the last "partitions assigned"
    /// minus what was revoked after it. Nothing when it is not running.
    fn assignment(&self) -> BTreeSet<i32> {
        let mut held = BTreeSet::new();
        for line in self.log().lines() {
            if line.contains("partitions assigned") {
                held = logged_partitions(line);
            } else if line.contains("partitions revoked") {
                for p in logged_partitions(line) {
                    held.remove(&p);
                }
            }
        }
        held
    }

    /// The admin API's address, from the log line the daemon writes when it listens.
    fn admin(&self) -> Option<String> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("admin API listening"))?;
        let rest = &line[line.find("addr=")? + 5..];
        Some(rest.split_whitespace().next()?.to_string())
    }
}

/// The partition numbers of a `partitions=["topic/0", "topic/3"]` log field.
fn logged_partitions(line: &str) -> BTreeSet<i32> {
    let Some(start) = line.find("partitions=[") else {
        return BTreeSet::new();
    };
    let rest = &line[start + "partitions=[".len()..];
    let list = &rest[..rest.find(']').unwrap_or(rest.len())];
    list.split(',')
        .filter_map(|s| s.trim().trim_matches('"').rsplit('/').next()?.parse().ok())
        .collect()
}

/// GET /status of a running instance.
fn status(rt: &tokio::runtime::Runtime, inst: &Instance) -> Option<Value> {
    let addr = inst.admin()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        let text = client
            .get(format!("http://{addr}/status"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        serde_json::from_str(&text).ok()
    })
}

/// `assigned_partitions` and the sink's `parked_events` from /status.
fn assigned_and_parked(rt: &tokio::runtime::Runtime, inst: &Instance) -> Option<(u64, u64)> {
    let s = status(rt, inst)?;
    Some((
        s["source"]["assigned_partitions"].as_u64()?,
        s["sinks"][0]["parked_events"].as_u64()?,
    ))
}

/// Waits until the running instances in `live` split partitions `0..partitions` among them:
/// every one holds some, none is held twice, none is missing, in their logs and on /status.
/// Returns each one's partitions (indexed like `all`; empty for the others).
fn wait_for_spread(
    rt: &tokio::runtime::Runtime,
    all: &[Instance],
    live: &[usize],
    partitions: i32,
) -> Vec<BTreeSet<i32>> {
    let mut last = Vec::new();
    let spread = |last: &mut Vec<BTreeSet<i32>>| {
        *last = all.iter().map(Instance::assignment).collect();
        let mut union = BTreeSet::new();
        let mut total = 0;
        for &i in live {
            if last[i].is_empty() {
                return false;
            }
            total += last[i].len();
            union.extend(last[i].iter().copied());
        }
        total == union.len()
            && union == (0..partitions).collect()
            && live.iter().all(|&i| {
                assigned_and_parked(rt, &all[i]).map(|(a, _)| a) == Some(last[i].len() as u64)
            })
    };
    let start = Instant::now();
    while !spread(&mut last) {
        assert!(
            start.elapsed() < LONG,
            "the partitions were not spread over {live:?} within {LONG:?}: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

/// Sets the flag when dropped: a failing test stops its producer thread, so the scope ends.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Produces generated events at about `per_sec`, round-robin over `partitions` (so each one
/// gets its share), until `stop` is set; returns their ids.
fn produce_until(
    brokers: &str,
    topic: &str,
    partitions: i32,
    seed: u64,
    per_sec: usize,
    stop: &AtomicBool,
    produced: &AtomicUsize,
) -> Vec<String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut g = Generator::new(seed, 16);
    let chunk = (per_sec / 20).max(1);
    let mut ids = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        for _ in 0..chunk {
            let (key, e) = g.next_event();
            let p = (ids.len() % partitions as usize) as i32;
            ids.push(e["id"].as_str().unwrap().to_string());
            send(
                &producer,
                topic,
                Some(p),
                Some(key.as_bytes()),
                Some(e.to_string().as_bytes()),
            )
            .unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        produced.store(ids.len(), Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50)); // pacing, not waiting
    }
    ids
}

/// What the receiver accepted, in arrival order: (the instance that sent it, the record).
fn arrivals(receiver: &Receiver) -> Vec<(String, Seen)> {
    receiver
        .requests()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .flat_map(|r| {
            let from = r
                .headers
                .get("x-instance")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            let lines: Vec<String> = String::from_utf8_lossy(&r.body)
                .lines()
                .map(str::to_string)
                .collect();
            parse_seen(&lines)
                .into_iter()
                .map(move |s| (from.clone(), s))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn arrived_ids(receiver: &Receiver) -> BTreeSet<String> {
    arrivals(receiver).into_iter().map(|(_, s)| s.id).collect()
}

/// Partitions whose first arrivals (over all instances, in arrival order) go backwards.
fn partitions_out_of_order(seen: &[Seen]) -> BTreeSet<i32> {
    let mut first = BTreeSet::new();
    let mut last: HashMap<i32, i64> = HashMap::new();
    let mut out = BTreeSet::new();
    for s in seen
        .iter()
        .filter(|s| first.insert((s.partition, s.offset)))
    {
        if last.get(&s.partition).is_some_and(|prev| s.offset < *prev) {
            out.insert(s.partition);
        }
        last.insert(s.partition, s.offset);
    }
    out
}

/// Three instances split the partitions of a topic while events are produced; one of them ends
/// (`how`) mid-stream; the other two take over its partitions; every event arrives, the first
/// arrival of each offset in order per partition, and everything is committed.
pub fn three_instances_spread_and_take_over(
    brokers: &str,
    create_topic: &dyn Fn(&str, i32),
    how: Ending,
) {
    let _serial = serial();
    const PARTITIONS: i32 = 9;
    let topic = format!("multi-{how:?}-{}", std::process::id()).to_lowercase();
    create_topic(&topic, PARTITIONS);
    let group = format!("g-{topic}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::new();
    let url = format!("http://{}/", rt.block_on(receiver.serve()));
    let root = tempfile::tempdir().unwrap();
    let mut inst: Vec<Instance> = (0..3)
        .map(|i| Instance::new(root.path(), i, brokers, &group, &topic, &url))
        .collect();
    let (stop, produced) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let producer =
            s.spawn(|| produce_until(brokers, &topic, PARTITIONS, 61, 400, &stop, &produced));
        for i in &mut inst {
            i.start();
        }
        let spread = wait_for_spread(&rt, &inst, &[0, 1, 2], PARTITIONS);
        eprintln!("spread over three instances: {spread:?}");
        wait_for("every instance to deliver", LONG, || {
            let a = arrivals(&receiver);
            inst.iter()
                .all(|i| a.iter().filter(|(from, _)| *from == i.name).count() >= 50)
        });

        // One instance goes away mid-stream.
        let victim = 1;
        let orphaned = spread[victim].clone();
        let before_end = arrivals(&receiver).len();
        inst[victim].end(how);
        let ended_at = Instant::now();
        let after = wait_for_spread(&rt, &inst, &[0, 2], PARTITIONS);
        let takeover = ended_at.elapsed();
        eprintln!(
            "after {how:?} of {}: {after:?}, {:.1}s later",
            inst[victim].name,
            takeover.as_secs_f64()
        );
        for p in &orphaned {
            assert!(
                after[0].contains(p) || after[2].contains(p),
                "partition {p} of the ended instance has no owner: {after:?}"
            );
        }
        // The survivors deliver the orphaned partitions' new events.
        wait_for(
            "the survivors to deliver the ended instance's partitions",
            LONG,
            || {
                arrivals(&receiver)[before_end..]
                    .iter()
                    .filter(|(from, s)| *from != "i1" && orphaned.contains(&s.partition))
                    .count()
                    >= 300
            },
        );
        stop.store(true, Ordering::SeqCst);
        let ids = producer.join().unwrap();
        wait_for("every event at the receiver", LONG, || {
            let got = arrived_ids(&receiver);
            ids.iter().all(|id| got.contains(id))
        });
        // Caught up: every offset committed (lag 0), before the stops move partitions again.
        wait_for("every event committed", LONG, || {
            committed(brokers, &group, &topic, PARTITIONS)
                .values()
                .sum::<i64>() as usize
                == ids.len()
        });
        inst[0].stop();
        inst[2].stop();

        let all = arrivals(&receiver);
        let seen: Vec<Seen> = all.iter().map(|(_, s)| s.clone()).collect();
        let twice = assert_all_arrived(&ids, &seen);
        // The receiver saw the requests in the order they arrived, whoever sent them: the
        // first arrival of each offset is in order per partition, across the takeover.
        assert_first_arrivals_ordered(&seen);
        // The stops (and their rebalances) committed nothing backwards.
        let committed = committed(brokers, &group, &topic, PARTITIONS);
        assert_eq!(
            committed.values().sum::<i64>() as usize,
            ids.len(),
            "every event committed: {committed:?}"
        );
        let by: Vec<usize> = inst
            .iter()
            .map(|i| all.iter().filter(|(from, _)| *from == i.name).count())
            .collect();
        eprintln!(
            "3 instances, {PARTITIONS} partitions, {how:?}: {} events, {} records delivered ({twice} events more than once), by instance {by:?}; the takeover took {:.1}s (session.timeout.ms = 6000)",
            ids.len(),
            seen.len(),
            takeover.as_secs_f64()
        );
    });
}

/// Every instance parks (the SIEM is down); one of them ends (`how`) with events parked and
/// committed; the others take over its partitions and go on; the SIEM comes back and they
/// drain their own parks, while what is still missing is exactly what the ended instance's
/// park holds. It comes back on the same directory and drains its park; every event arrives.
pub fn an_ended_instance_keeps_its_park_and_drains_it_when_it_comes_back(
    brokers: &str,
    create_topic: &dyn Fn(&str, i32),
    how: Ending,
) {
    let _serial = serial();
    const PARTITIONS: i32 = 6;
    let topic = format!("multipark-{how:?}-{}", std::process::id()).to_lowercase();
    create_topic(&topic, PARTITIONS);
    let group = format!("g-{topic}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::new();
    // The SIEM is down from the start: every instance parks what it reads.
    let switch = rt.block_on(async { Switch::start(receiver.serve().await, false).await });
    let url = format!("http://{}/", switch.addr);
    let root = tempfile::tempdir().unwrap();
    let mut inst: Vec<Instance> = (0..3)
        .map(|i| Instance::new(root.path(), i, brokers, &group, &topic, &url))
        .collect();
    let (stop, produced) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let producer =
            s.spawn(|| produce_until(brokers, &topic, PARTITIONS, 62, 300, &stop, &produced));
        for i in &mut inst {
            i.start();
        }
        let spread = wait_for_spread(&rt, &inst, &[0, 1, 2], PARTITIONS);
        let victim = 2;
        let orphaned = spread[victim].clone();
        // The victim has parked events, and their offsets are committed at the broker
        // (durably parked counts as finished): the positions its /status shows for its
        // partitions, read first, are all committed.
        wait_for(
            "the victim to park events and commit their offsets",
            LONG,
            || {
                let Some(s) = status(&rt, &inst[victim]) else {
                    return false;
                };
                let positions: HashMap<i32, i64> = s["source"]["partitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        Some((p["partition"].as_i64()? as i32, p["committed"].as_i64()?))
                    })
                    .collect();
                let c = committed(brokers, &group, &topic, PARTITIONS);
                s["sinks"][0]["parked_events"].as_u64().unwrap_or(0) >= 100
                    && orphaned.iter().all(|p| {
                        positions
                            .get(p)
                            .is_some_and(|o| *o > 0 && c.get(p) >= Some(o))
                    })
            },
        );
        inst[victim].end(how);
        let at_end = committed(brokers, &group, &topic, PARTITIONS);
        wait_for_spread(&rt, &inst, &[0, 1], PARTITIONS);
        // The survivors go on with the orphaned partitions from the victim's commits (and park
        // too: the SIEM is still down).
        wait_for(
            "the survivors to read on past the victim's commits",
            LONG,
            || {
                let c = committed(brokers, &group, &topic, PARTITIONS);
                orphaned.iter().all(|p| c[p] >= at_end[p] + 30)
            },
        );
        stop.store(true, Ordering::SeqCst);
        let ids = producer.join().unwrap();
        wait_for("every event committed", LONG, || {
            committed(brokers, &group, &topic, PARTITIONS)
                .values()
                .sum::<i64>() as usize
                == ids.len()
        });

        // The SIEM comes back: the survivors drain their own parks.
        switch.set(true);
        wait_for("the survivors' parks to drain", LONG, || {
            [0, 1].iter().all(|&i| {
                status(&rt, &inst[i]).is_some_and(|s| {
                    s["sinks"][0]["parked_events"] == 0 && s["sinks"][0]["state"] == "healthy"
                })
            })
        });
        // What is still missing is exactly what waits in the ended instance's park, on its
        // volume: its offsets were committed, so nobody else reads it again.
        let arrived = arrived_ids(&receiver);
        let missing: BTreeSet<&String> = ids.iter().filter(|id| !arrived.contains(*id)).collect();
        let export = root.path().join("victim-park.ndjson");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditstream"))
            .args(["parked", "export", "--config"])
            .arg(&inst[victim].config)
            .args(["--sink", "siem", "--out"])
            .arg(&export)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parked: Vec<Value> = std::fs::read_to_string(&export)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let parked_ids: BTreeSet<String> = parked
            .iter()
            .map(|v| {
                let record: Value = serde_json::from_str(v["record"].as_str().unwrap()).unwrap();
                record["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert!(
            !missing.is_empty(),
            "the ended instance's park holds events nobody else delivered"
        );
        let elsewhere: Vec<&&String> = missing
            .iter()
            .filter(|id| !parked_ids.contains(**id))
            .collect();
        assert!(
            elsewhere.is_empty(),
            "{} events are missing and not in the ended instance's park, e.g. {:?}",
            elsewhere.len(),
            &elsewhere[..elsewhere.len().min(5)]
        );
        let only_parked_there: BTreeSet<i32> = parked
            .iter()
            .filter(|v| {
                let record: Value = serde_json::from_str(v["record"].as_str().unwrap()).unwrap();
                missing.contains(&record["id"].as_str().unwrap().to_string())
            })
            .map(|v| v["partition"].as_i64().unwrap() as i32)
            .collect();
        // It comes back on the same volume: it drains its park, and every event has arrived.
        inst[victim].start();
        wait_for("the returning instance to drain its park", LONG, || {
            inst[victim].log().contains("park drained")
                && status(&rt, &inst[victim]).is_some_and(|s| s["sinks"][0]["parked_events"] == 0)
        });
        wait_for("every event at the receiver", LONG, || {
            let got = arrived_ids(&receiver);
            ids.iter().all(|id| got.contains(id))
        });
        wait_for_spread(&rt, &inst, &[0, 1, 2], PARTITIONS);
        for i in &mut inst {
            i.stop();
        }

        let all = arrivals(&receiver);
        let seen: Vec<Seen> = all.iter().map(|(_, s)| s.clone()).collect();
        let twice = assert_all_arrived(&ids, &seen);
        // Each instance delivers its own deliveries in order per partition (its park too)...
        for i in &inst {
            let own: Vec<Seen> = all
                .iter()
                .filter(|(from, _)| *from == i.name)
                .map(|(_, s)| s.clone())
                .collect();
            assert_first_arrivals_ordered(&own);
        }
        // ...but the ended instance's park arrived after newer events of the same partitions,
        // which the survivors delivered meanwhile: order across an ended instance's park is not
        // kept (the documented cost of per-instance parks).
        let late = partitions_out_of_order(&seen);
        assert!(
            only_parked_there.is_subset(&late),
            "the partitions of events only the ended instance's park held {only_parked_there:?} \
             should show the late replay; out of order: {late:?}"
        );
        assert_eq!(
            committed(brokers, &group, &topic, PARTITIONS)
                .values()
                .sum::<i64>() as usize,
            ids.len()
        );
        eprintln!(
            "{how:?}: {} events; {} parked on the ended instance's volume ({} of them \
             nowhere else), delivered when it came back; {twice} events arrived more than \
             once; partitions {orphaned:?} were taken over; first arrivals out of order in \
             {late:?}",
            ids.len(),
            parked.len(),
            missing.len()
        );
    });
}
