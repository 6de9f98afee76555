//! Sinks: the destinations. Each implements [`Sink`]: deliver one batch, or say why not and
//! whether trying again can help ([`DeliveryError`]).
//!
//! A sink knows nothing of Kafka, offsets, retries or the park: the [`crate::deliver`] worker
//! around it decides what a failure means. `Ok` from [`Sink::deliver`] is a promise that the
//! destination has the batch (for the file sink: written and fsynced), because the worker then
//! lets the batch's offsets be committed.

pub mod compress;
pub mod file;
pub mod http;
pub mod s3;
pub mod stdout;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::batch::Batch;
use crate::config::{SinkConfig, SinkKind};

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connection failures, timeouts, throttling, server errors, a full disk.
    Retryable,
    /// The destination refuses this data or these credentials; retrying the same request
    /// cannot succeed until a person changes something.
    Permanent,
}

/// A failed delivery, with the detail a person needs (status, error code, message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DeliveryError {
    pub class: ErrorClass,
    pub detail: String,
    /// The destination asked us to wait this long (HTTP `Retry-After`, S3 `SlowDown`).
    pub retry_after: Option<Duration>,
}

impl DeliveryError {
    pub fn retryable(detail: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Retryable,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn permanent(detail: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Permanent,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.class == ErrorClass::Permanent
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Permanent => "permanent",
        };
        write!(f, "{} ({class})", self.detail)
    }
}

/// Proof that a destination accepted one batch. Only sinks can make one (its constructor is
/// private to this module), so the park, which removes a parked batch only in exchange for the
/// receipt of that same batch, cannot be emptied without a delivery.
///
/// A destination may take a batch but refuse single records in it for good (an HTTP endpoint
/// answering 413 to a request holding one record): those are listed in [`Receipt::refused`],
/// and the worker quarantines them before the batch counts as finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    topic: std::sync::Arc<str>,
    partition: i32,
    first: Option<i64>,
    last: Option<i64>,
    records: usize,
    refused: Vec<Refused>,
    objects: Vec<WrittenObject>,
}

/// An object a sink wrote for a batch (the S3 sink), for the integrity digests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrittenObject {
    pub key: String,
    /// SHA-256 of the object's bytes as stored (after compression), hex.
    pub sha256: String,
    pub bytes: u64,
}

/// One record of a batch that the destination refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The record's index in its batch.
    pub index: usize,
    pub reason: String,
}

impl Receipt {
    /// Made by a sink once the destination has `batch`.
    pub(in crate::sink) fn for_batch(batch: &Batch) -> Self {
        Self {
            topic: batch.tp.topic.clone(),
            partition: batch.tp.partition,
            first: batch.first_offset(),
            last: batch.last_offset(),
            records: batch.len(),
            refused: Vec::new(),
            objects: Vec::new(),
        }
    }

    /// Made by a sink that wrote `objects` for `batch`.
    pub(in crate::sink) fn with_objects(mut self, objects: Vec<WrittenObject>) -> Self {
        self.objects = objects;
        self
    }

    /// The objects written for the batch.
    pub fn objects(&self) -> &[WrittenObject] {
        &self.objects
    }

    /// Made by a sink once the destination has `batch`, except the `refused` records.
    pub(in crate::sink) fn refusing(batch: &Batch, refused: Vec<Refused>) -> Self {
        Self {
            refused,
            ..Self::for_batch(batch)
        }
    }

    /// Whether this receipt is for `batch`.
    pub fn is_for(&self, batch: &Batch) -> bool {
        let b = Self::for_batch(batch);
        (
            &self.topic,
            self.partition,
            self.first,
            self.last,
            self.records,
        ) == (&b.topic, b.partition, b.first, b.last, b.records)
    }

    /// The records the destination refused for good.
    pub fn refused(&self) -> &[Refused] {
        &self.refused
    }
}

/// A destination for batches of rendered records.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Sends one batch. `Ok` means the destination has it, and carries the receipt.
    async fn deliver(&self, batch: &Batch) -> Result<Receipt, DeliveryError>;

    /// Checks that the destination is reachable (and, where cheap, writable).
    async fn health_check(&self) -> Result<(), DeliveryError> {
        Ok(())
    }

    /// The destination with secrets removed, for logs, the status page and alerts.
    fn describe(&self) -> String;

    /// Whether records are sent one per line (files, stdout, S3 objects, NDJSON requests): a
    /// rendered record with a line break in it would then read as several, so the worker
    /// quarantines it for this sink instead.
    fn one_record_per_line(&self) -> bool {
        true
    }
}

/// Builds the sink a configuration entry describes.
pub async fn build(config: &SinkConfig) -> anyhow::Result<Box<dyn Sink>> {
    Ok(match &config.kind {
        SinkKind::File(c) => Box::new(file::FileSink::open(c)?),
        SinkKind::Stdout(_) => Box::new(stdout::StdoutSink),
        SinkKind::S3(c) => Box::new(s3::S3Sink::new(c).await?),
        SinkKind::Http(c) => Box::new(http::HttpSink::new(c)?),
    })
}
