//! Prometheus metrics. Counters and histograms are recorded where things happen (through the
//! `metrics` facade); gauges that describe a state (sink state, park depth, lag, committed
//! offsets, in-flight events) are set from the live status just before each scrape.
//!
//! Names start with `auditstream_`, counters end in `_total`, units are in the name, and every
//! per-sink series has a `sink` label.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::status::{SinkState, Status};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    &[
                        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Suffix("_events".into()),
                        &[1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0],
                    )
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

const STATES: [SinkState; 4] = [
    SinkState::Healthy,
    SinkState::Retrying,
    SinkState::Broken,
    SinkState::Recovering,
];

/// Sets the state gauges from `status` and renders everything.
pub fn render(status: &Status, park_bytes: u64, park_max_bytes: u64) -> String {
    let Some(h) = handle() else {
        return String::new();
    };
    let now = chrono::Utc::now().timestamp_millis();
    for s in &status.sinks {
        let snap = s.snapshot();
        let sink = snap.name.clone();
        for st in STATES {
            let v = if snap.state == st { 1.0 } else { 0.0 };
            metrics::gauge!("auditstream_sink_state", "sink" => sink.clone(), "state" => st.as_str()).set(v);
        }
        metrics::gauge!("auditstream_park_entries", "sink" => sink.clone())
            .set(snap.parked_entries as f64);
        metrics::gauge!("auditstream_park_events", "sink" => sink.clone())
            .set(snap.parked_events as f64);
        metrics::gauge!("auditstream_park_bytes", "sink" => sink.clone())
            .set(snap.parked_bytes as f64);
        let age = snap
            .oldest_parked_ms
            .map_or(0.0, |o| (now - o).max(0) as f64 / 1000.0);
        metrics::gauge!("auditstream_park_oldest_age_seconds", "sink" => sink.clone()).set(age);
    }
    let src = &status.source;
    metrics::counter!("auditstream_consumed_events_total").absolute(src.consumed());
    metrics::counter!("auditstream_rejected_messages_total").absolute(src.rejected());
    metrics::counter!("auditstream_committable_events_total").absolute(src.committable());
    metrics::gauge!("auditstream_in_flight_events").set(src.in_flight() as f64);
    metrics::gauge!("auditstream_source_paused").set(if src.paused() { 1.0 } else { 0.0 });
    metrics::gauge!("auditstream_assigned_partitions").set(src.assigned() as f64);
    for (tp, p) in src.partitions() {
        let (topic, partition) = (tp.topic.to_string(), tp.partition.to_string());
        if let Some(lag) = p.lag {
            metrics::gauge!("auditstream_consumer_lag_events", "topic" => topic.clone(), "partition" => partition.clone()).set(lag as f64);
        }
        if let Some(c) = p.committed {
            metrics::gauge!("auditstream_committed_offset", "topic" => topic, "partition" => partition).set(c as f64);
        }
    }
    metrics::gauge!("auditstream_park_total_bytes").set(park_bytes as f64);
    metrics::gauge!("auditstream_park_max_bytes").set(park_max_bytes as f64);
    h.render()
}
