//! The admin HTTP endpoint (axum) at `admin.listen`, and the client the CLI uses to reach a
//! running daemon ([`client`]).
//!
//! | route | what | token |
//! |---|---|---|
//! | `GET /health` | the process is alive | no |
//! | `GET /ready` | partitions are assigned and the park is writable (503 otherwise) | no |
//! | `GET /metrics` | Prometheus text ([`metrics`]) | no |
//! | `GET /status` | JSON: every sink's state, errors, park depth; the source | no |
//! | `GET /` | the status page for people ([`page`]) | no |
//! | `GET /sinks/{name}/parked?limit=N` | parked entries' headers (no records) | no |
//! | `GET /quarantine?limit=N` | quarantined messages, without their values | no |
//! | `GET /sinks/{name}/parked/export` | every parked record, NDJSON | yes |
//! | `GET /quarantine/export` | every quarantined message with its value, NDJSON | yes |
//! | `POST /sinks/{name}/replay` | probe the sink now instead of waiting | yes |
//! | `POST /sinks/{name}/purge?older_than=3d` | export old parked entries, then remove them | yes |
//!
//! Requests that need the token carry `Authorization: Bearer <admin.token>`; the token is
//! compared in constant time; without a configured token those requests are refused. No
//! response contains a secret: destinations are shown without credentials or query strings.

pub mod client;
pub mod metrics;
pub mod page;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use crate::config::{AdminConfig, ParkConfig, Secret};
use crate::park::export::{ExportReason, Exporter};
use crate::park::{Release, SinkPark, Store};
use crate::status::Status;

/// Delivered-event samples every 10 s for the last 10 minutes, per sink (for the page).
#[derive(Debug, Default)]
pub struct Throughput {
    samples: HashMap<String, Vec<(Instant, u64)>>,
}

impl Throughput {
    const KEEP: usize = 61;

    fn sample(&mut self, status: &Status) {
        let now = Instant::now();
        for s in &status.sinks {
            let v = self.samples.entry(s.name.clone()).or_default();
            v.push((now, s.delivered()));
            if v.len() > Self::KEEP {
                v.remove(0);
            }
        }
    }

    /// Events per second in each 10 s step, oldest first.
    pub fn rates(&self, sink: &str) -> Vec<f64> {
        let Some(v) = self.samples.get(sink) else {
            return Vec::new();
        };
        v.windows(2)
            .map(|w| {
                let secs = w[1].0.duration_since(w[0].0).as_secs_f64().max(0.001);
                w[1].1.saturating_sub(w[0].1) as f64 / secs
            })
            .collect()
    }
}

/// Everything the routes need.
#[derive(Clone)]
pub struct AdminState {
    pub status: Arc<Status>,
    pub store: Store,
    pub parks: Arc<HashMap<String, SinkPark>>,
    /// Rings a sink's replayer to probe at once.
    pub probe_now: Arc<HashMap<String, Arc<Notify>>>,
    pub token: Option<Secret>,
    pub park: ParkConfig,
    pub throughput: Arc<Mutex<Throughput>>,
    pub started: Instant,
}

/// The running admin server. Its state holds the park store, so the pipeline stops it before
/// it lets go of the store: [`AdminServer::stop`] closes the listener and every connection.
pub struct AdminServer {
    pub addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Stops accepting, closes idle connections, and waits (a few seconds at most) for the
    /// requests in progress.
    pub async fn stop(self) {
        self.stop.cancel();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!("the admin server did not stop within 5s; dropping its connections");
            abort.abort();
        }
    }
}

/// Starts the server; its address is known even when port 0 was asked.
pub async fn serve(config: &AdminConfig, state: AdminState) -> anyhow::Result<AdminServer> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    // Installed before the first event, so counters start at the start, not at the first scrape.
    metrics::handle();
    if state.token.as_ref().is_none_or(|t| t.expose().is_empty()) {
        tracing::warn!(
            "admin.token is not set: the admin API refuses every action (POST) and export"
        );
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = state.clone();
    let sampling = async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            sampler
                .throughput
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sample(&sampler.status);
        }
    };
    let app = router(state);
    let serving = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    let task = tokio::spawn(async move {
        tokio::select! {
            result = serving => if let Err(e) = result {
                tracing::error!(error = %e, "the admin server stopped");
            },
            _ = sampling => {}
        }
    });
    tracing::info!(%addr, "admin API listening");
    Ok(AdminServer { addr, stop, task })
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status_json))
        .route("/sinks/{name}/parked", get(parked_list))
        .route("/sinks/{name}/parked/export", get(parked_export))
        .route("/sinks/{name}/replay", post(replay))
        .route("/sinks/{name}/purge", post(purge))
        .route("/quarantine", get(quarantine_list))
        .route("/quarantine/export", get(quarantine_export))
        .with_state(state)
}

/// An error answer: a status and a message, as JSON.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError(status, message.into()).into_response()
}

/// Checks `Authorization: Bearer <token>` in constant time.
fn authorized(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    // An empty token (say `${TOKEN:-}` with TOKEN unset) is no token: it must not match an
    // empty or missing header.
    let Some(token) = state.token.as_ref().filter(|t| !t.expose().is_empty()) else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "this daemon has no admin.token: actions are disabled".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), token.expose().as_bytes());
    if a.len() == b.len() && bool::from(a.ct_eq(b)) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        ))
    }
}

async fn ready(State(s): State<AdminState>) -> Response {
    let assigned = s.status.source.assigned();
    let writable = s.store.check_writable().await.is_ok();
    let body = json!({ "ready": assigned > 0 && writable, "assigned_partitions": assigned, "park_writable": writable });
    let code = if assigned > 0 && writable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    let text = metrics::render(&s.status, s.store.total_bytes(), s.park.max_bytes.bytes());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The `/status` document.
pub fn status_document(s: &AdminState) -> serde_json::Value {
    let src = &s.status.source;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "source": {
            "consumed_events": src.consumed(),
            "rejected_messages": src.rejected(),
            "committable_events": src.committable(),
            "in_flight_events": src.in_flight(),
            "paused": src.paused(),
            "assigned_partitions": src.assigned(),
            "partitions": src.partitions().into_iter().map(|(tp, p)| json!({
                "topic": &*tp.topic, "partition": tp.partition, "committed": p.committed, "lag": p.lag,
            })).collect::<Vec<_>>(),
        },
        "park": {
            "bytes": s.store.total_bytes(),
            "max_bytes": s.park.max_bytes.bytes(),
            "when_full": s.park.when_full,
        },
        "sinks": s.status.sinks.iter().map(|x| x.snapshot()).collect::<Vec<_>>(),
    })
}

async fn status_json(State(s): State<AdminState>) -> Response {
    Json(status_document(&s)).into_response()
}

async fn page(State(s): State<AdminState>) -> Response {
    let rates = s.throughput.lock().unwrap_or_else(|p| p.into_inner());
    Html(page::render(&status_document(&s), &rates)).into_response()
}

fn park_of<'a>(s: &'a AdminState, name: &str) -> Result<&'a SinkPark, ApiError> {
    s.parks
        .get(name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no sink named `{name}`")))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn parked_list(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Response {
    let park = match park_of(&s, &name) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    match park.headers(q.limit.unwrap_or(100)) {
        Ok(h) => Json(json!({
            "sink": name,
            "entries": park.entries(),
            "parked": h.into_iter().map(|(seq, h)| json!({"entry": seq, "header": h})).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn parked_export(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r.into_response();
    }
    let park = match park_of(&s, &name) {
        Ok(p) => p.clone(),
        Err(r) => return r.into_response(),
    };
    let mut out = Vec::new();
    for entry in park.entries_iter() {
        match entry {
            Ok(p) => {
                if let Err(e) = crate::park::export::write_entry(&mut out, &name, "parked", &p) {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                }
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    ([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response()
}

async fn replay(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r.into_response();
    }
    let Some(n) = s.probe_now.get(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no sink named `{name}`"));
    };
    n.notify_one();
    tracing::info!(sink = %name, "replay requested through the admin API: probing now");
    (
        StatusCode::ACCEPTED,
        Json(json!({"sink": name, "probing": true, "parked_events": s.parks.get(&name).map(|p| p.counts().events())})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct OlderThan {
    older_than: String,
}

async fn purge(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<OlderThan>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r.into_response();
    }
    let age: crate::config::HumanDuration = match q.older_than.parse() {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let park = match park_of(&s, &name) {
        Ok(p) => p.clone(),
        Err(r) => return r.into_response(),
    };
    let exporter = Exporter::new(&s.park.expired_dir);
    let cutoff = chrono::Utc::now().timestamp_millis() - age.get().as_millis() as i64;
    let (mut entries, mut events) = (0u64, 0u64);
    loop {
        let head = match park.head() {
            Ok(Some(h)) if h.header.parked_at_ms <= cutoff => h,
            Ok(_) => break,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let done = exporter
            .export(&name, std::slice::from_ref(&head), ExportReason::Purged)
            .map_err(|e| e.to_string())
            .and_then(|mut p| {
                let proof = p.pop().ok_or("nothing exported")?;
                park.release(&head, Release::Exported(proof))
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = done {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
        entries += 1;
        events += head.header.events;
    }
    tracing::warn!(sink = %name, entries, events, dir = %s.park.expired_dir.display(), "parked entries purged through the admin API (exported first)");
    Json(json!({"sink": name, "purged_entries": entries, "purged_events": events, "exported_to": s.park.expired_dir})).into_response()
}

async fn quarantine_list(State(s): State<AdminState>, Query(q): Query<Limit>) -> Response {
    let limit = q.limit.unwrap_or(100);
    let mut rows = Vec::new();
    let mut total = 0usize;
    for item in s.store.quarantine_entries() {
        match item {
            Ok((seq, e)) => {
                total += 1;
                if rows.len() < limit {
                    rows.push(json!({
                        "entry": seq, "quarantined_at": e.quarantined_at, "sink": e.sink, "kind": e.kind,
                        "reason": e.reason, "topic": e.topic, "partition": e.partition, "offset": e.offset,
                    }));
                }
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    Json(json!({"total": total, "quarantined": rows})).into_response()
}

async fn quarantine_export(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r.into_response();
    }
    let mut out = Vec::new();
    for item in s.store.quarantine_entries() {
        match item {
            Ok((_, e)) => {
                if serde_json::to_writer(&mut out, &e).is_err() {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, "encoding");
                }
                out.push(b'\n');
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    ([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response()
}
