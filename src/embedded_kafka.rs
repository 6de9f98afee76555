//! An in-process Kafka cluster (librdkafka's mock cluster) for the demo and the tests.
//!
//! The cluster lives inside a producer client (`test.mock.num.brokers`), which makes it
//! `Send` and ties its life to [`EmbeddedKafka`]. Its brokers listen on 127.0.0.1, so other
//! processes (a daemon started as a child process) can use it too. Consumer groups start
//! without the usual 3 s initial rebalance delay.
//!
//! Seen with librdkafka's mock cluster: consumers stall once a topic holds a few MB, so keep
//! what goes through it small; use a real broker for volume.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// A running in-process cluster with a producer attached.
pub struct EmbeddedKafka {
    producer: BaseProducer,
    bootstrap: String,
}

impl EmbeddedKafka {
    /// Starts a cluster of `brokers` brokers.
    pub fn start(brokers: u32) -> Result<Self, KafkaError> {
        let producer: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .set("linger.ms", "5")
            .create()?;
        let bootstrap = {
            let mock = producer
                .client()
                .mock_cluster()
                .ok_or(KafkaError::MockCluster(RDKafkaErrorCode::Fail))?;
            mock.bootstrap_servers()
        };
        let kafka = Self {
            producer,
            bootstrap,
        };
        // SAFETY: the mock cluster belongs to the producer's client, which is alive here; the
        // call only sets an integer in the cluster's configuration.
        unsafe {
            let mcluster = kafka.mock_cluster_ptr();
            if !mcluster.is_null() {
                rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(mcluster, 0);
            }
        }
        Ok(kafka)
    }

    /// The cluster's bootstrap servers (`127.0.0.1:port,...`).
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        let mock = self
            .producer
            .client()
            .mock_cluster()
            .ok_or(KafkaError::MockCluster(RDKafkaErrorCode::Fail))?;
        mock.create_topic(name, partitions, 1)
    }

    fn mock_cluster_ptr(&self) -> *mut rdkafka::bindings::rd_kafka_mock_cluster_t {
        // SAFETY: the producer's client handle is live; a null answer is checked by callers.
        unsafe {
            rdkafka::bindings::rd_kafka_handle_mock_cluster(self.producer.client().native_ptr())
        }
    }

    /// Queues one message (to `partition`, or by key hash when `None`).
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<(), KafkaError> {
        send(&self.producer, topic, partition, key, payload)
    }

    /// Waits until every queued message is acknowledged.
    pub fn flush(&self) -> Result<(), KafkaError> {
        self.producer.flush(Duration::from_secs(30))
    }
}

/// Sends with a producer, waiting for queue space when the local queue is full.
pub fn send(
    producer: &BaseProducer,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<(), KafkaError> {
    loop {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = payload {
            record = record.payload(v);
        }
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
