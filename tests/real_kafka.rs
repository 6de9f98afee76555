//! End to end against a real Kafka-protocol broker (opt-in: the broker address comes from
//! AUDITSTREAM_TEST_BROKERS). `.ci/run` starts one with `../shared/tools/real-kafka start` and
//! runs this with `--ignored`.

mod common;

use std::time::Duration;

use auditstream::embedded_kafka::send;
use auditstream::generate::Generator;
use common::instances::{self, Ending};
use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

fn brokers() -> String {
    std::env::var("AUDITSTREAM_TEST_BROKERS")
        .expect("set AUDITSTREAM_TEST_BROKERS to a broker address, e.g. 127.0.0.1:19092")
}

#[tokio::main(flavor = "current_thread")]
async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

#[test]
#[ignore = "needs a real Kafka-protocol broker in AUDITSTREAM_TEST_BROKERS; .ci/run starts one and runs it"]
fn twenty_thousand_events_through_a_real_broker_in_order_and_committed() {
    let _serial = instances::serial();
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let topic = format!("e2e-{}", std::process::id());
    create_topic(&brokers, &topic, 4);

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut g = Generator::new(42, 16);
    let n = 20_000;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let (key, e) = g.next_event();
        ids.push(e["id"].as_str().unwrap().to_string());
        send(
            &producer,
            &topic,
            None,
            Some(key.as_bytes()),
            Some(e.to_string().as_bytes()),
        )
        .unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();

    let group = format!("g-{topic}");
    let config = write_config(dir.path(), &brokers, &group, &topic, "", &[("out", "")]);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[kafka.properties]",
        "[kafka.properties]\n\"fetch.wait.max.ms\" = 10",
    );
    std::fs::write(&config, text).unwrap();
    let out = dir.path().join("out.jsonl");
    let started = std::time::Instant::now();
    let mut d = Daemon::start(&config, &dir.path().join("run.log"));
    wait_for("every event delivered", Duration::from_secs(120), || {
        read_seen(&out).len() >= n
    });
    let took = started.elapsed();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(30)), Some(0), "{}", d.log_text());
    let seen = read_seen(&out);
    assert_eq!(assert_all_arrived(&ids, &seen), 0);
    assert_ordered_per_partition(&seen, false);
    let committed = committed(&brokers, &group, &topic, 4);
    assert_eq!(committed.values().sum::<i64>() as usize, n, "{committed:?}");
    eprintln!(
        "real broker {brokers}: {n} events delivered and committed in {:.2}s (debug build, including start-up)",
        took.as_secs_f64()
    );
}

// Several instances in one group against the real broker. `.ci/run` ends them with SIGTERM,
// not kill -9: Tansu 0.6.0's group coordinator does not rebalance after a member's session
// expires (its heartbeat handler drops the silent member but leaves the group "formed" with
// the same generation, so the survivors rejoin and get their old assignment back; a silent
// leader stays the leader). The partitions of a killed instance would wait for it to come
// back. Apache Kafka and librdkafka's mock cluster do rebalance, and `tests/instances.rs`
// runs the same scenarios with kill -9 against the mock cluster in `cargo test`. Against a
// broker that expires dead members (Tansu patched by `tools/patched-tansu/build`, too slow to
// build in `.ci/run`), `AUDITSTREAM_TEST_ENDING=kill` runs these two with kill -9.

/// How the instance under test ends: SIGTERM, or kill -9 with `AUDITSTREAM_TEST_ENDING=kill`.
fn ending() -> Ending {
    match std::env::var("AUDITSTREAM_TEST_ENDING").as_deref() {
        Ok("kill") => Ending::Kill,
        Ok("term") | Err(_) => Ending::Term,
        Ok(other) => panic!("AUDITSTREAM_TEST_ENDING is `kill` or `term`, not {other:?}"),
    }
}

#[test]
#[ignore = "needs a real Kafka-protocol broker in AUDITSTREAM_TEST_BROKERS; .ci/run starts one and runs it"]
fn three_instances_split_the_partitions_and_the_others_take_over_from_one_that_ends() {
    let brokers = brokers();
    instances::three_instances_spread_and_take_over(
        &brokers,
        &|topic, partitions| create_topic(&brokers, topic, partitions),
        ending(),
    );
}

#[test]
#[ignore = "needs a real Kafka-protocol broker in AUDITSTREAM_TEST_BROKERS; .ci/run starts one and runs it"]
fn an_instance_that_ends_keeps_its_park_on_its_volume_and_drains_it_when_it_comes_back() {
    let brokers = brokers();
    instances::an_ended_instance_keeps_its_park_and_drains_it_when_it_comes_back(
        &brokers,
        &|topic, partitions| create_topic(&brokers, topic, partitions),
        ending(),
    );
}
