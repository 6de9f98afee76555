//! Several daemon instances in one consumer group, each a separate process with its own park
//! directory, against librdkafka's mock cluster (a Kafka-protocol broker on 127.0.0.1 whose
//! group coordinator expires a silent member after `session.timeout.ms` and rebalances):
//! kill -9 of one instance mid-stream, and of one holding parked events. The same scenarios
//! end an instance with SIGTERM against a real broker in `tests/real_kafka.rs`.

mod common;

use auditstream::embedded_kafka::EmbeddedKafka;
use common::instances::{self, Ending};

#[test]
fn three_instances_split_the_partitions_and_the_others_take_over_from_one_killed_with_kill_dash_nine(
) {
    let kafka = EmbeddedKafka::start(1).unwrap();
    instances::three_instances_spread_and_take_over(
        kafka.bootstrap_servers(),
        &|topic, partitions| kafka.create_topic(topic, partitions).unwrap(),
        Ending::Kill,
    );
}

#[test]
fn an_instance_killed_with_parked_events_keeps_them_on_its_volume_and_drains_them_when_it_comes_back(
) {
    let kafka = EmbeddedKafka::start(1).unwrap();
    instances::an_ended_instance_keeps_its_park_and_drains_it_when_it_comes_back(
        kafka.bootstrap_servers(),
        &|topic, partitions| kafka.create_topic(topic, partitions).unwrap(),
        Ending::Kill,
    );
}
