//! The daemon as a real child process against an in-process Kafka cluster on loopback:
//! stopped mid-stream by SIGTERM and by kill -9 and started again, two daemons in one group,
//! a slow sink that fills the window and holds reading back, and a second signal that stops at once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use auditstream::embedded_kafka::EmbeddedKafka;
use auditstream::generate::Generator;
use common::*;

const TOPIC: &str = "audit";
const LONG: Duration = Duration::from_secs(60);

/// Produces `n` events at about `per_sec`, returning their ids in order.
fn produce_paced(kafka: &EmbeddedKafka, seed: u64, n: usize, per_sec: usize) -> Vec<String> {
    produce_counted(
        kafka,
        seed,
        &AtomicUsize::new(n),
        per_sec,
        &AtomicUsize::new(0),
    )
}

/// Produces events at about `per_sec` until it has sent `until` of them (`until` may be moved
/// while this runs), then waits for the cluster's acknowledgement; counts in `produced` what
/// the cluster has acknowledged. Returns the ids sent, in order.
fn produce_counted(
    kafka: &EmbeddedKafka,
    seed: u64,
    until: &AtomicUsize,
    per_sec: usize,
    produced: &AtomicUsize,
) -> Vec<String> {
    let mut g = Generator::new(seed, 8);
    let mut ids = Vec::new();
    let chunk = (per_sec / 20).max(1);
    let mut i = 0;
    while i < until.load(Ordering::SeqCst) {
        let (key, e) = g.next_event();
        ids.push(e["id"].as_str().unwrap().to_string());
        kafka
            .send(
                TOPIC,
                None,
                Some(key.as_bytes()),
                Some(e.to_string().as_bytes()),
            )
            .unwrap();
        i += 1;
        if i % chunk == 0 {
            kafka.flush().unwrap();
            produced.store(i, Ordering::SeqCst);
            // Pacing the producer, not waiting for a condition.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    kafka.flush().unwrap();
    produced.store(i, Ordering::SeqCst);
    ids
}

/// Stops a [`produce_counted`] that runs until told, also when the test fails before telling it
/// (a scope waits for its threads, so a producer left running would hang the failing test).
struct StopOnDrop<'a>(&'a AtomicUsize);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

fn lines(path: &std::path::Path) -> usize {
    read_seen(path).len()
}

#[test]
fn sigterm_mid_stream_commits_what_was_delivered_and_restart_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let brokers = kafka.bootstrap_servers().to_string();
    let config = write_config(dir.path(), &brokers, "g-term", TOPIC, "", &[("out", "")]);
    let out = dir.path().join("out.jsonl");

    std::thread::scope(|s| {
        let producer = s.spawn(|| produce_paced(&kafka, 1, 3000, 1500));
        let mut d = Daemon::start(&config, &dir.path().join("run1.log"));
        wait_for("first events delivered", LONG, || lines(&out) >= 600);
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait(LONG), Some(0), "clean stop; log:\n{}", d.log_text());
        assert!(d.log_text().contains("committed final offsets"));

        // A graceful stop delivers what it read and commits exactly that.
        let first = read_seen(&out);
        let committed_at_stop = committed(&brokers, "g-term", TOPIC, 4);
        assert_eq!(
            committed_at_stop.values().sum::<i64>() as usize,
            first.len(),
            "committed {committed_at_stop:?}"
        );
        assert!(first.len() < 3000, "stopped mid-stream");

        let mut d = Daemon::start(&config, &dir.path().join("run2.log"));
        let ids = producer.join().unwrap();
        wait_for("every event delivered", LONG, || lines(&out) >= ids.len());
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait(LONG), Some(0));
        let seen = read_seen(&out);
        assert_eq!(
            assert_all_arrived(&ids, &seen),
            0,
            "resumed at the commit: no duplicates"
        );
        assert_ordered_per_partition(&seen, false);
    });
}

#[test]
fn kill_dash_nine_mid_stream_loses_nothing_and_restart_resumes_from_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let brokers = kafka.bootstrap_servers().to_string();
    let config = write_config(dir.path(), &brokers, "g-kill", TOPIC, "", &[("out", "")]);
    // Batches close by age only: at any moment about a second of events is read but not yet
    // delivered, which a commit made too early would lose at the kill.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "max_events = 200\nmax_age = \"100ms\"",
        "max_events = 100000\nmax_age = \"1s\"",
    );
    std::fs::write(&config, text).unwrap();
    let out = dir.path().join("out.jsonl");

    let produced = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let producer =
            s.spawn(|| produce_counted(&kafka, 2, &AtomicUsize::new(5000), 800, &produced));
        let mut resumed_somewhere = false;
        for (round, at) in [500usize, 1500, 2500].into_iter().enumerate() {
            let mut d = Daemon::start(&config, &dir.path().join(format!("run{round}.log")));
            wait_for("events delivered", LONG, || lines(&out) >= at);
            // Kill at a moment unrelated to the last write.
            std::thread::sleep(Duration::from_millis(fastrand::u64(100..900)));
            d.signal(libc::SIGKILL);
            assert_eq!(d.wait(LONG), None, "killed by the signal");

            let before = lines(&out);
            let committed_at_kill = committed(&brokers, "g-kill", TOPIC, 4);
            // Nothing was committed that had not been delivered: every offset below each
            // partition's commit is in the file.
            let delivered: BTreeSet<(i32, i64)> = read_seen(&out)
                .iter()
                .map(|s| (s.partition, s.offset))
                .collect();
            for (p, c) in &committed_at_kill {
                let missing: Vec<i64> =
                    (0..*c).filter(|o| !delivered.contains(&(*p, *o))).collect();
                assert!(
                    missing.is_empty(),
                    "partition {p} committed up to {c} but offsets {:?}... were never delivered",
                    &missing[..missing.len().min(5)]
                );
            }
            resumed_somewhere |= committed_at_kill.values().any(|o| *o > 0);

            // The next run starts exactly at each partition's committed offset: let it catch
            // up with what is in Kafka now, then compare.
            let target = produced.load(Ordering::SeqCst) as i64;
            let mut d = Daemon::start(&config, &dir.path().join(format!("check{round}.log")));
            wait_for("the restart to catch up", LONG, || {
                committed(&brokers, "g-kill", TOPIC, 4)
                    .values()
                    .sum::<i64>()
                    >= target
            });
            d.signal(libc::SIGTERM);
            assert_eq!(d.wait(LONG), Some(0));
            let after = read_seen(&out);
            let second = &after[before..];
            assert_ordered_per_partition(second, false);
            let mut first_offset: BTreeMap<i32, i64> = BTreeMap::new();
            for s in second {
                first_offset.entry(s.partition).or_insert(s.offset);
            }
            for (p, o) in first_offset {
                let c = committed_at_kill.get(&p).copied().unwrap_or(0);
                assert_eq!(o, c, "partition {p} resumed at {o}, committed was {c}");
            }
        }
        assert!(
            resumed_somewhere,
            "some offsets were committed before a kill"
        );

        let mut d = Daemon::start(&config, &dir.path().join("final.log"));
        let ids = producer.join().unwrap();
        wait_for("every event delivered", LONG, || {
            let seen = read_seen(&out);
            let got: BTreeSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
            ids.iter().all(|id| got.contains(id.as_str()))
        });
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait(LONG), Some(0));
        let seen = read_seen(&out);
        let dups = assert_all_arrived(&ids, &seen);
        eprintln!(
            "{} events, {} delivered more than once after three kill -9",
            ids.len(),
            dups
        );
    });
}

#[test]
fn two_daemons_split_the_partitions_and_one_takes_over_without_a_gap() {
    two_daemons_split_and_one_takes_over(None);
}

/// The same with the cooperative protocol, where a rebalance moves only some partitions and
/// each daemon routes the ones it gains to its message queue while it goes on reading the rest
/// (`source/messages.rs`, "Order").
#[test]
fn with_cooperative_rebalancing_two_daemons_split_the_partitions_and_one_takes_over() {
    two_daemons_split_and_one_takes_over(Some("cooperative-sticky"));
}

fn two_daemons_split_and_one_takes_over(assignor: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let brokers = kafka.bootstrap_servers().to_string();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let group = format!("g-pair-{}", assignor.unwrap_or("eager"));
    let config = |d: &std::path::Path| {
        let path = write_config(d, &brokers, &group, TOPIC, "", &[("out", "")]);
        if let Some(assignor) = assignor {
            let text = std::fs::read_to_string(&path).unwrap().replace(
                "[kafka.properties]\n",
                &format!(
                    "[kafka.properties]\n\"partition.assignment.strategy\" = \"{assignor}\"\n"
                ),
            );
            std::fs::write(&path, text).unwrap();
        }
        path
    };
    let (ca, cb) = (config(&da), config(&db));
    let (oa, ob) = (da.join("out.jsonl"), db.join("out.jsonl"));

    // The producer goes on until a has died and 2,000 more events are on their way, so that b
    // has a's partitions to take over.
    let (until, produced) = (AtomicUsize::new(usize::MAX), AtomicUsize::new(0));
    std::thread::scope(|s| {
        let producer = s.spawn(|| produce_counted(&kafka, 3, &until, 1000, &produced));
        let _stops_the_producer_on_failure = StopOnDrop(&until);
        let mut a = Daemon::start(&ca, &dir.path().join("a.log"));
        // b joins only once a holds every partition, so that a is the one that must give some
        // up (started together, either may be first, or both may join the same generation).
        wait_for("a holds every partition", LONG, || {
            a.log_text().lines().any(|l| {
                l.contains("partitions assigned") && l.matches(&format!("\"{TOPIC}/")).count() == 4
            })
        });
        let mut b = Daemon::start(&cb, &dir.path().join("b.log"));
        wait_for("both daemons deliver", LONG, || {
            lines(&oa) > 100 && lines(&ob) > 100
        });
        let pa: BTreeSet<i32> = read_seen(&oa).iter().map(|s| s.partition).collect();
        let pb: BTreeSet<i32> = read_seen(&ob).iter().map(|s| s.partition).collect();
        assert!(!pa.is_empty() && !pb.is_empty(), "split: a {pa:?} b {pb:?}");

        // a dies without warning; b must take over a's partitions from a's commits.
        if assignor.is_some() {
            // Incremental: when b joined, a gave up some of its partitions and kept reading
            // the others (the eager protocol revokes them all).
            let log = a.log_text();
            let revoked = log
                .lines()
                .find(|l| l.contains("partitions revoked"))
                .map(|l| l.matches(&format!("\"{TOPIC}/")).count());
            assert!(
                matches!(revoked, Some(1..=3)),
                "a gave up only some of its partitions:\n{log}"
            );
        }
        a.signal(libc::SIGKILL);
        a.wait(LONG);
        let b_before = lines(&ob);
        until.store(produced.load(Ordering::SeqCst) + 2000, Ordering::SeqCst);
        let ids = producer.join().unwrap();
        wait_for(
            "every event delivered by a or b",
            Duration::from_secs(90),
            || {
                let mut got: BTreeSet<String> = read_seen(&oa).into_iter().map(|s| s.id).collect();
                got.extend(read_seen(&ob).into_iter().map(|s| s.id));
                ids.iter().all(|id| got.contains(id))
            },
        );
        let after: BTreeSet<i32> = read_seen(&ob)[b_before..]
            .iter()
            .map(|s| s.partition)
            .collect();
        assert_eq!(after, (0..4).collect(), "b took every partition");
        b.signal(libc::SIGTERM);
        assert_eq!(b.wait(LONG), Some(0));
        let mut all = read_seen(&oa);
        all.extend(read_seen(&ob));
        assert_all_arrived(&ids, &all);
        for d in [&a, &b] {
            let log = d.log_text();
            assert!(
                !log.contains("came on the consumer's queue"),
                "every assigned partition was routed to the message queue:\n{log}"
            );
        }
    });
}

#[test]
fn a_slow_sink_holds_reading_back_and_the_consumer_stays_in_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let brokers = kafka.bootstrap_servers().to_string();
    let ids = produce_events(&kafka, TOPIC, 4, 2000);
    let config = write_config(
        dir.path(),
        &brokers,
        "g-slow",
        TOPIC,
        "max_in_flight_events = 100",
        &[],
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace(
        "\"heartbeat.interval.ms\" = 500",
        "\"heartbeat.interval.ms\" = 500\n\"max.poll.interval.ms\" = 7000",
    );
    text.push_str(&format!(
        "\n[[sinks]]\nname = \"slow\"\ntype = \"stdout\"\ntemplate = '{COORDS_TEMPLATE}'\n[sinks.batch]\nmax_events = 20\nmax_age = \"50ms\"\n"
    ));
    std::fs::write(&config, text).unwrap();

    let mut d = Daemon::start_with_stdout(&config, &dir.path().join("run.log"), Stdio::piped());
    let stdout = d.child.stdout.take().unwrap();
    // Read slowly: 2000 lines at about 200 a second is longer than max.poll.interval.ms. The
    // reading runs on its own thread so that a daemon that stops writing fails the test (with
    // what arrived) instead of blocking it.
    let (lines, arrived) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (i, line) in BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .enumerate()
        {
            if lines.send(line).is_err() {
                return;
            }
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(50)); // pacing, not waiting
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < ids.len() {
        let Ok(line) = arrived.recv_timeout(LONG) else {
            panic!(
                "{} of {} events arrived, then nothing for {LONG:?}:\n{}",
                seen.len(),
                ids.len(),
                d.log_text()
            );
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.push(Seen {
            id: v["id"].as_str().unwrap().to_string(),
            partition: v["p"].as_i64().unwrap() as i32,
            offset: v["o"].as_i64().unwrap(),
        });
    }
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(LONG), Some(0));
    let log = d.log_text();
    assert!(
        log.contains("the window is full, so reading waits for room"),
        "the window filled:\n{log}"
    );
    assert!(
        log.contains("half the window is free"),
        "and reading went on:\n{log}"
    );
    assert!(
        !log.contains("max.poll.interval"),
        "never left the group:\n{log}"
    );
    // No rebalance happened, so every event came exactly once, in order.
    assert_eq!(assert_all_arrived(&ids, &seen), 0);
    assert_ordered_per_partition(&seen, false);
}

#[test]
fn a_second_signal_stops_at_once_without_committing_undelivered_work() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let brokers = kafka.bootstrap_servers().to_string();
    produce_events(&kafka, TOPIC, 5, 3000);
    let config = write_config(dir.path(), &brokers, "g-stuck", TOPIC, "", &[]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[sinks]]\nname = \"stuck\"\ntype = \"stdout\"\ntemplate = '{COORDS_TEMPLATE}'\n"
    ));
    std::fs::write(&config, text).unwrap();

    // Read the first records, then stop reading: the sink blocks once the pipe is full, so a
    // graceful stop cannot finish.
    let mut d = Daemon::start_with_stdout(&config, &dir.path().join("run.log"), Stdio::piped());
    let mut stdout = BufReader::new(d.child.stdout.take().unwrap());
    let mut delivered = 0;
    let mut line = String::new();
    while delivered < 100 {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "stdout closed early"
        );
        delivered += 1;
    }
    d.signal(libc::SIGTERM);
    let log = d.log.clone();
    wait_for("the graceful stop to begin", LONG, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stopping: no more reading")
    });
    let start = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    let code = d.wait(Duration::from_secs(10));
    assert!(start.elapsed() < Duration::from_secs(5), "stopped at once");
    assert_eq!(code, Some(0));
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    delivered += rest.iter().filter(|b| **b == b'\n').count();
    let committed: i64 = committed(&brokers, "g-stuck", TOPIC, 4).values().sum();

    assert!(
        committed as usize <= delivered,
        "committed {committed} but only {delivered} records reached stdout"
    );
    assert!(
        delivered < 3000,
        "the sink really was stuck ({delivered} delivered)"
    );
}

/// A daemon whose sink is slow holds thousands of events in flight when a second daemon joins
/// its group. Its partitions are revoked: it may commit only what its sink has finished. It is
/// then killed at once; the newcomer starts from those commits, so nothing is skipped.
#[test]
fn a_rebalance_never_commits_past_work_still_in_flight() {
    use common::servers::{Answer, Receiver};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::new();
    // 50 events per request, 200 ms per request: about 250 events a second.
    receiver.then(Answer::Slow(Duration::from_millis(200)));
    let addr = rt.block_on(receiver.serve());
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let brokers = kafka.bootstrap_servers().to_string();
    let ids = produce_events(&kafka, TOPIC, 6, 3000);
    let config = |d: &std::path::Path| {
        std::fs::create_dir_all(d).unwrap();
        let path = write_config(d, &brokers, "g-rebalance", TOPIC, "", &[]);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!(
            "\n[[sinks]]\nname = \"siem\"\ntype = \"http\"\nurl = \"http://{addr}/\"\ntimeout = \"5s\"\ntemplate = '{COORDS_TEMPLATE}'\n[sinks.batch]\nmax_events = 50\nmax_age = \"50ms\"\n"
        ));
        std::fs::write(&path, text).unwrap();
        path
    };
    let (ca, cb) = (config(&dir.path().join("a")), config(&dir.path().join("b")));

    let mut b = Daemon::start(&cb, &dir.path().join("b.log"));
    wait_for("b to deliver", LONG, || {
        receiver.accepted_lines().len() >= 100
    });
    let mut a = Daemon::start(&ca, &dir.path().join("a.log"));
    wait_for("b's partitions to be revoked", LONG, || {
        b.log_text().contains("partitions revoked")
    });
    let delivered_by_b = receiver.accepted_lines().len();
    b.signal(libc::SIGKILL);
    b.wait(LONG);
    assert!(
        delivered_by_b < ids.len() / 2,
        "b still had most events in flight when it died ({delivered_by_b} delivered)"
    );

    wait_for("every event, from a or b", Duration::from_secs(120), || {
        let got: BTreeSet<String> = parse_seen(&receiver.accepted_lines())
            .into_iter()
            .map(|s| s.id)
            .collect();
        ids.iter().all(|id| got.contains(id))
    });
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(LONG), Some(0), "{}", a.log_text());
    let seen = parse_seen(&receiver.accepted_lines());
    let twice = assert_all_arrived(&ids, &seen);
    eprintln!(
        "b delivered {delivered_by_b} before it died; {twice} events arrived twice, none missing"
    );
}
