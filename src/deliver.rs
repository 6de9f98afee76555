//! The delivery worker: one task per sink, the whole life of an event inside that sink.
//!
//! ```text
//! queue of events -> render (or quarantine) -> batch -> deliver with retries -> report finished
//! ```
//!
//! Each sink has its own task and queue, so a slow or failing sink holds back only its own
//! events (and, through the source's in-flight bound, at most `max_in_flight_events` of them).
//! Batches are delivered one at a time in the order they close, which keeps Kafka's order per
//! partition.
//!
//! A failed delivery is retried with exponential backoff and jitter (`[sinks.retry]`),
//! honouring a destination's `Retry-After`. The sink's state follows: `retrying` while a batch
//! is being retried, `broken` when a permanent error comes back or retries run past
//! `max_elapsed`. A batch that cannot be delivered is never reported finished, so its offsets
//! are never committed: the worker keeps trying it, at `max_interval`, until it succeeds or the
//! daemon stops (and the next start reads it again from Kafka).

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::batch::{self, Batch, Record};
use crate::config::{BatchConfig, RetryConfig};
use crate::event::{Event, RawMessage};
use crate::offsets::{Finished, Slot};
use crate::park::quarantine::{Quarantine, QuarantineEntry};
use crate::sink::{DeliveryError, ErrorClass, Sink};
use crate::status::{SinkState, SinkStatus};
use crate::template::Templates;

/// Everything one sink's worker needs.
pub struct Worker {
    /// The sink's index in the configuration (its template and status).
    pub index: usize,
    pub slot: Slot,
    pub sink: Box<dyn Sink>,
    pub templates: Arc<Templates>,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    /// Batches delivered at once; above 1, order across batches is given up.
    pub concurrency: usize,
    pub status: Arc<SinkStatus>,
    pub reports: Sender<Finished>,
    pub quarantine: Quarantine,
}

impl Worker {
    /// Runs until the queue closes and every batch is delivered.
    pub async fn run(self, queue: UnboundedReceiver<Arc<Event>>) {
        let this = Arc::new(self);
        this.check_health().await;
        let render = this.clone();
        let label = this.clone();
        let records =
            futures::stream::unfold(queue, |mut q| async move { q.recv().await.map(|e| (e, q)) })
                .filter_map(move |event| futures::future::ready(render.render(event)));
        batch::batches(records, this.batch, move |first: &Arc<Event>| {
            label.label(first)
        })
        .for_each_concurrent(this.concurrency.max(1), |b| {
            let this = this.clone();
            async move { this.deliver(b).await }
        })
        .await;
        tracing::info!(sink = %this.status.name, "sink worker finished");
    }

    /// The start-up check of the destination. A failure is logged and shown as `retrying`; the
    /// worker goes on (deliveries are retried as usual), it never stops the daemon.
    async fn check_health(&self) {
        match self.sink.health_check().await {
            Ok(()) => {
                tracing::info!(sink = %self.status.name, destination = %self.status.destination, "destination reachable")
            }
            Err(e) => {
                self.status
                    .set_state(SinkState::Retrying, Some(e.to_string()));
                tracing::error!(sink = %self.status.name, destination = %self.status.destination, error = %e, "start-up check failed: the destination is not reachable or not writable; deliveries will be retried");
            }
        }
    }

    /// The label of a batch this event opens: the S3 object key part. A key template that
    /// fails on this event files the batch under `unrendered-key/` and says so.
    fn label(&self, first: &Event) -> Option<String> {
        match self.templates.render_key(self.index, first)? {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!(sink = %self.status.name, coords = %first.coords, error = %e, "the key template failed on a batch's first event; the batch goes under unrendered-key/");
                metrics::counter!("auditstream_key_render_failures_total", "sink" => self.status.name.clone()).increment(1);
                Some("unrendered-key/".into())
            }
        }
    }

    /// Renders one event, or quarantines it for this sink.
    fn render(
        &self,
        event: Arc<Event>,
    ) -> Option<(crate::event::TopicPartition, Record, Arc<Event>)> {
        match self.templates.render(self.index, &event) {
            Ok(body) => Some((
                event.coords.topic_partition(),
                Record {
                    offset: event.coords.offset,
                    body,
                },
                event,
            )),
            Err(e) => {
                let msg = RawMessage {
                    coords: event.coords.clone(),
                    timestamp_ms: None,
                    key: None,
                    headers: vec![],
                    payload: Some(event.raw.clone()),
                };
                let entry = QuarantineEntry::new(
                    &msg,
                    Some(&self.status.name),
                    "render_failed",
                    e.to_string(),
                );
                self.status.add_quarantined(1);
                self.quarantine.submit(self.slot, entry);
                None
            }
        }
    }

    /// Delivers one batch, however long it takes, then reports it finished.
    async fn deliver(&self, batch: Batch) {
        let started = Instant::now();
        let mut policy = backoff_policy(&self.retry);
        loop {
            match self.sink.deliver(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    let wait = self.after_failure(&e, started, &mut policy);
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if self.status.set_state(SinkState::Healthy, None) != SinkState::Healthy {
            tracing::info!(sink = %self.status.name, "sink delivers again");
        }
        let n = batch.len() as u64;
        self.status.add_delivered(n);
        metrics::counter!("auditstream_delivered_events_total", "sink" => self.status.name.clone())
            .increment(n);
        let report = Finished {
            slot: self.slot,
            tp: batch.tp.clone(),
            offsets: batch.offsets(),
        };
        // The source has gone only when the pipeline is stopping at once.
        let _ = self.reports.send(report);
    }

    /// Updates the state after a failed attempt and says how long to wait before the next.
    fn after_failure(
        &self,
        e: &DeliveryError,
        started: Instant,
        policy: &mut ExponentialBackoff,
    ) -> Duration {
        let max_elapsed = self.retry.max_elapsed.get();
        let broken = e.class == ErrorClass::Permanent || started.elapsed() >= max_elapsed;
        let state = if broken {
            SinkState::Broken
        } else {
            SinkState::Retrying
        };
        let before = self.status.set_state(state, Some(e.to_string()));
        if broken && before != SinkState::Broken {
            tracing::error!(sink = %self.status.name, error = %e, "sink is broken; its events are held (not committed) until it delivers again");
        } else if !broken {
            tracing::warn!(sink = %self.status.name, error = %e, "delivery failed; retrying");
        }
        metrics::counter!("auditstream_delivery_retries_total", "sink" => self.status.name.clone())
            .increment(1);
        let backoff = if broken {
            self.retry.max_interval.get()
        } else {
            policy
                .next_backoff()
                .unwrap_or(self.retry.max_interval.get())
        };
        // A destination that asks us to wait is obeyed, within reason.
        e.retry_after
            .map(|ra| ra.min(self.retry.max_interval.get()).max(backoff))
            .unwrap_or(backoff)
    }
}

/// Exponential backoff with jitter from `[sinks.retry]`, never giving up by itself.
pub fn backoff_policy(retry: &RetryConfig) -> ExponentialBackoff {
    ExponentialBackoff {
        // `current_interval` is where the schedule starts; the default would start at 500ms
        // whatever `initial_interval` says.
        current_interval: retry.initial_interval.get(),
        initial_interval: retry.initial_interval.get(),
        max_interval: retry.max_interval.get(),
        randomization_factor: 0.3,
        multiplier: 2.0,
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    #[test]
    fn the_schedule_starts_at_initial_interval_and_doubles_to_the_cap() {
        let retry = RetryConfig {
            initial_interval: HumanDuration::from_millis(100),
            max_interval: HumanDuration::from_millis(700),
            max_elapsed: HumanDuration::from_secs(60),
        };
        let mut p = backoff_policy(&retry);
        let waits: Vec<u128> = (0..6)
            .map(|_| p.next_backoff().unwrap().as_millis())
            .collect();
        for (w, base) in waits.iter().zip([100u128, 200, 400, 700, 700, 700]) {
            let (lo, hi) = (base * 7 / 10, base * 13 / 10);
            assert!((lo..=hi).contains(w), "{waits:?}");
        }
    }
}
