//! The pipeline: builds every stage from the configuration, runs them, and stops them in order.
//!
//! ```text
//! source thread --(Arc<Event>)--> sink worker x N --(Finished)--> source thread
//!       \--(rejected)--> quarantine writer --(Finished)--/
//! ```
//!
//! Queues run one way (events), reports the other (finished offsets). On a graceful stop the
//! source closes the event queues; each worker flushes its batches and drops its report sender;
//! once the last one has, the source commits its final positions and returns. A worker that
//! ends while the pipeline runs (a panic) stops the daemon with an error: its events are never
//! committed, and the next start reads them again.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinSet;

use crate::config::Config;
use std::collections::HashMap;

use tokio::sync::Notify;
use tracing::Instrument;

use crate::admin::{self, AdminState};
use crate::alert;
use crate::deliver::{ParkLimits, Worker};
use crate::fanout::{Filter, Route, Router};
use crate::integrity::{Digester, Journal, Signer};
use crate::offsets::Slot;
use crate::park::export::Exporter;
use crate::park::quarantine::{run_writer, Quarantine};
use crate::park::SinkPark;
use crate::park::Store;
use crate::shutdown::{Shutdown, Stage};
use crate::sink::{self, Sink};
use crate::source::{Source, SourceControl, SourceSettings};
use crate::status::{SinkStatus, Status};
use crate::template::Templates;

/// A pipeline ready to run: store open, sinks built.
pub struct Pipeline {
    config: Config,
    templates: Arc<Templates>,
    store: Store,
    sinks: Vec<(Box<dyn Sink>, SinkPark)>,
    status: Arc<Status>,
    /// Per sink: the integrity journal and digester (S3 sinks, with `[integrity]`).
    integrity: Vec<Option<(Journal, Arc<tokio::sync::Mutex<Digester>>)>>,
}

impl Pipeline {
    /// Opens the park store and builds every sink.
    pub async fn build(config: Config, templates: Templates) -> anyhow::Result<Self> {
        let store = open_store(&config.park.path).await?;
        let integrity = integrity_for(&config, &store).await?;
        let mut sinks = Vec::with_capacity(config.sinks.len());
        let mut statuses = Vec::with_capacity(config.sinks.len());
        for sc in &config.sinks {
            let sink = sink::build(sc)
                .instrument(tracing::info_span!("sink", sink = %sc.name))
                .await
                .with_context(|| format!("starting sink `{}`", sc.name))?;
            let park = store.sink_park(&sc.name)?;
            statuses.push(Arc::new(SinkStatus::new(
                &sc.name,
                sc.type_name(),
                sink.describe(),
                park.counts(),
            )));
            sinks.push((sink, park));
        }
        // Every park is open (their counts known): from now on a drain may compact the store.
        store.compact_when_drained(config.park.compact_above.bytes());
        Ok(Self {
            config,
            templates: Arc::new(templates),
            store,
            sinks,
            status: Arc::new(Status {
                sinks: statuses,
                ..Status::default()
            }),
            integrity,
        })
    }

    /// The live status, for progress displays, the admin API and alerts.
    /// The park store (for the restart after a full disk).
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Starts the admin API (when enabled) and the alerts (when configured).
    async fn start_services(
        &self,
        probe_now: &HashMap<String, Arc<Notify>>,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<Option<admin::AdminServer>> {
        let mut server = None;
        if self.config.admin.enabled {
            let state = AdminState {
                status: self.status.clone(),
                store: self.store.clone(),
                parks: Arc::new(
                    self.sinks
                        .iter()
                        .zip(&self.config.sinks)
                        .map(|((_, park), sc)| (sc.name.clone(), park.clone()))
                        .collect(),
                ),
                probe_now: Arc::new(probe_now.clone()),
                token: self.config.admin.token.clone(),
                park: self.config.park.clone(),
                throughput: Default::default(),
                started: std::time::Instant::now(),
            };
            let started = admin::serve(&self.config.admin, state).await?;
            let _ = self.status.admin_addr.set(started.addr);
            server = Some(started);
        }
        match &self.config.alerts {
            Some(alerts) => {
                let run = alert::run(
                    alerts.clone(),
                    self.config.park.clone(),
                    self.status.clone(),
                    self.store.clone(),
                );
                tasks.spawn(async move {
                    if let Err(e) = run.await {
                        tracing::error!(error = format!("{e:#}"), "alerts stopped; sink problems are only logged now");
                    }
                    // Alerts ending must not look like a pipeline task ending.
                    std::future::pending::<()>().await
                });
            }
            None => tracing::warn!("no [alerts] configured: nobody is emailed when a sink breaks (states are logged and on /status)"),
        }
        Ok(server)
    }

    /// Runs until `shutdown` asks to stop, then stops in order.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let probe_now: HashMap<String, Arc<Notify>> = self
            .config
            .sinks
            .iter()
            .map(|s| (s.name.clone(), Arc::new(Notify::new())))
            .collect();
        let mut services = JoinSet::new();
        let admin_server = self.start_services(&probe_now, &mut services).await?;
        let Pipeline {
            config,
            templates,
            store,
            sinks,
            status,
            integrity,
        } = self;
        let digest_every = config
            .integrity
            .as_ref()
            .map(|i| i.digest_interval.get())
            .unwrap_or(std::time::Duration::from_secs(3600));
        for (_, digester) in integrity.iter().flatten() {
            let d = digester.clone();
            services.spawn(async move {
                let mut tick = tokio::time::interval(digest_every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = d.lock().await.digest_now().await {
                        tracing::error!(error = format!("{e:#}"), "cannot write an integrity digest; the objects stay journaled for the next one");
                    }
                }
            });
        }
        let (reports_tx, reports_rx) = std::sync::mpsc::channel();
        let (quarantine, quarantine_queue) = Quarantine::channel();
        let mut tasks = JoinSet::new();
        tasks.spawn(run_writer(
            store.clone(),
            quarantine_queue,
            reports_tx.clone(),
        ));

        let mut routes = Vec::with_capacity(sinks.len());
        let limits = ParkLimits {
            max_bytes: config.park.max_bytes.bytes(),
            when_full: config.park.when_full,
            max_age: config.park.max_age.get(),
            probe_max_interval: config.park.probe_max_interval.get(),
            exporter: Exporter::new(&config.park.expired_dir),
        };
        for (index, ((sink, park), sc)) in sinks.into_iter().zip(&config.sinks).enumerate() {
            let slot = Slot::sink(index).context("too many sinks")?;
            let (queue, events) = tokio::sync::mpsc::unbounded_channel();
            routes.push(Route {
                slot,
                filter: Filter::new(sc),
                queue,
                status: status.sinks[index].clone(),
            });
            let worker = Worker {
                index,
                slot,
                sink,
                templates: templates.clone(),
                batch: sc.batch,
                retry: sc.retry,
                concurrency: sc.concurrency(),
                status: status.sinks[index].clone(),
                reports: reports_tx.clone(),
                quarantine: quarantine.clone(),
                park,
                limits: limits.clone(),
                probe_now: probe_now[&sc.name].clone(),
                redactor: crate::redact::Redactor::new(&sc.privacy),
                journal: integrity[index].as_ref().map(|(j, _)| j.clone()),
                held: status.source.watch_paused(),
                // A sink that holds its share of the window is holding the others.
                spill: (config.sinks.len() > 1).then(|| crate::deliver::Spill {
                    status: status.clone(),
                    backlog: (config.pipeline.max_in_flight_events / config.sinks.len()).max(1),
                }),
            };
            let span = tracing::info_span!("sink", sink = %sc.name);
            tasks.spawn(worker.run(events).instrument(span));
        }
        drop(reports_tx);

        let control = Arc::new(SourceControl::default());
        let settings = SourceSettings {
            kafka: config.kafka.clone(),
            max_event_bytes: config.pipeline.max_event_bytes.as_usize(),
            max_in_flight: config.pipeline.max_in_flight_events,
        };
        let source = Source::connect(
            settings,
            Router::new(routes),
            quarantine,
            reports_rx,
            control.clone(),
            status.clone(),
        )
        .context("connecting to Kafka")?;
        let mut source_thread = tokio::task::spawn_blocking(move || source.run());
        // Should this future be dropped (the runtime going away), the source thread still ends:
        // a runtime waits for its blocking threads when it shuts down.
        let _stop_source_on_drop = StopOnDrop(control.clone());

        // Running: until asked to stop, or until something ends that should not.
        let failure = tokio::select! {
            _ = shutdown.reached(Stage::Graceful) => None,
            ended = tasks.join_next() => Some(match ended {
                Some(Err(e)) => format!("a pipeline task failed: {e}"),
                _ => "a pipeline task ended unexpectedly".to_string(),
            }),
            ended = &mut source_thread => Some(match ended {
                Err(e) => format!("the Kafka source failed: {e}"),
                Ok(()) => "the Kafka source ended unexpectedly".to_string(),
            }),
        };
        if let Some(why) = &failure {
            tracing::error!("{why}; stopping without committing unfinished work");
            control.stop_now();
        } else {
            control.drain();
        }

        // Stopping: let the workers flush, within the shutdown timeout.
        let deadline = tokio::time::sleep(config.pipeline.shutdown_timeout.get());
        tokio::pin!(deadline);
        while failure.is_none() {
            tokio::select! {
                ended = tasks.join_next() => match ended {
                    None => break,
                    Some(Err(e)) => tracing::error!(error = %e, "a pipeline task failed while stopping"),
                    Some(Ok(())) => {}
                },
                _ = &mut deadline => {
                    tracing::warn!(timeout = %config.pipeline.shutdown_timeout, "stopping before every batch was delivered; the rest will be read again from Kafka");
                    break;
                }
                _ = shutdown.reached(Stage::Immediate) => break,
            }
        }
        tasks.shutdown().await;
        services.shutdown().await;
        // The objects written until now go into one more digest (not when stopping at once:
        // they stay journaled for the next start).
        let immediate = shutdown.stage() == Stage::Immediate;
        for (_, digester) in integrity.iter().flatten().filter(|_| !immediate) {
            let mut d = digester.lock().await;
            match tokio::time::timeout(std::time::Duration::from_secs(30), d.digest_now()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "cannot write the final integrity digest; the objects stay journaled for the next start"),
                Err(_) => tracing::error!("the final integrity digest took too long; the objects stay journaled for the next start"),
            }
        }
        if let Some(server) = admin_server {
            server.stop().await;
        }
        control.stop_now();
        // Closing the consumer leaves the group; against a broker that has gone it can take
        // a minute. The stop stays bounded: past this, the process exits without waiting (the
        // final commit is already done or given up, so nothing is skipped).
        if !source_thread.is_finished()
            && tokio::time::timeout(SOURCE_CLOSE_WAIT, &mut source_thread)
                .await
                .is_err()
        {
            tracing::warn!(wait = ?SOURCE_CLOSE_WAIT, "the Kafka consumer did not close in time; stopping without waiting for it");
        }
        // A compaction under way finishes (one left half done is undone at the next start).
        let waiting = store.clone();
        let _ = tokio::task::spawn_blocking(move || waiting.wait_for_compaction()).await;
        store.flush().await?;
        match failure {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Ok(()),
        }
    }
}

/// Opens the park store, waiting a little while another process holds it: a command such as
/// `auditstream parked list` opens the store for a moment when no daemon answers.
async fn open_store(path: &std::path::Path) -> anyhow::Result<Store> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(path) {
            Err(crate::park::StoreError::InUse { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// The integrity journal and digester of each S3 sink, when `[integrity]` is configured.
async fn integrity_for(
    config: &Config,
    store: &Store,
) -> anyhow::Result<Vec<Option<(Journal, Arc<tokio::sync::Mutex<Digester>>)>>> {
    let Some(ic) = &config.integrity else {
        return Ok(config.sinks.iter().map(|_| None).collect());
    };
    let seed = ic
        .seed()
        .map_err(|e| anyhow::anyhow!("integrity.signing_key: {e}"))?;
    let mut out = Vec::with_capacity(config.sinks.len());
    for sc in &config.sinks {
        let crate::config::SinkKind::S3(c) = &sc.kind else {
            out.push(None);
            continue;
        };
        let journal = Journal::open(store, &sc.name)?;
        let signer =
            Signer::new(&seed).map_err(|e| anyhow::anyhow!("integrity.signing_key: {e}"))?;
        let s3 = crate::sink::s3::S3Sink::new(c).await?;
        let chain = ic
            .chain
            .clone()
            .unwrap_or_else(crate::integrity::default_chain);
        let digester = Digester::new(&sc.name, &chain, s3, journal.clone(), signer);
        out.push(Some((journal, Arc::new(tokio::sync::Mutex::new(digester)))));
    }
    Ok(out)
}

/// How long a stop waits for the Kafka consumer to close after the final commit.
const SOURCE_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Tells the source thread to stop when dropped.
struct StopOnDrop(Arc<SourceControl>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_now();
    }
}
