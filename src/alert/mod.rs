//! Alerts: the admins learn from us, by email, that a sink broke, that it is still broken, and
//! that it recovered; and are warned before data would be lost or the stream held.
//!
//! ```text
//! sink states (status) --tick every second--> Watcher --Alert--> message::Renderer --> outbox (park store) --> send (SMTP or .eml, webhook)
//! ```
//!
//! The [`Watcher`] is a pure state machine over sink snapshots, one incident per sink:
//! - a sink that becomes `broken` opens an incident and sends **broken**;
//! - while it stays broken, a **reminder** every `reminder_interval`;
//! - once it has been `healthy` (park drained) for `recovery_hold`, **recovered**, with how
//!   long it was down and how much was replayed. Breaking again during the hold continues the
//!   same incident: a flapping sink sends no storm;
//! - **holding** when a sink holds the whole stream back (its park is full with
//!   `when_full = "block"`, or the park cannot be written): every sink waits until it clears;
//! - **park filling** when the park reaches 80% of `park.max_bytes` (again after it fell below
//!   70%), and **expiry soon** when a sink's oldest parked batch is within 24 hours (or half of
//!   `max_age`, when that is shorter) of being exported by `park.max_age`.
//!
//! Incidents and unsent messages live in the park store (trees `alerts` and `outbox`), so a
//! restart neither loses an alert nor sends a second "broken" for the same incident. Sending
//! runs in its own task and never blocks delivery ([`send`]).

pub mod message;
pub mod send;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{AlertsConfig, ParkConfig};
use crate::park::Store;
use crate::status::{SinkSnapshot, SinkState, Status};

/// What a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Broken,
    Reminder,
    Recovered,
    ParkFilling,
    ExpirySoon,
    Holding,
}

/// One message to send, with the facts it reports.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub sink: SinkSnapshot,
    pub at_ms: i64,
    /// Since when the sink has been broken (the incident's start).
    pub broken_since_ms: Option<i64>,
    /// For `recovered`: how long it was down, and how many events were replayed.
    pub downtime_ms: Option<i64>,
    pub replayed: Option<u64>,
    /// For reminders: which one.
    pub reminder: u32,
    /// Bytes parked across all sinks, and the limit.
    pub park_bytes: u64,
    pub park_max_bytes: u64,
    /// When the sink's oldest parked batch will be exported by `park.max_age`.
    pub expires_at_ms: Option<i64>,
}

/// One sink's open incident, persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub broken_since_ms: i64,
    pub last_sent_ms: i64,
    pub reminders: u32,
    /// Healthy since (the recovery hold runs); cleared if it breaks again.
    pub healthy_since_ms: Option<i64>,
    /// Events replayed during this incident, kept across restarts.
    #[serde(default)]
    pub replayed: u64,
}

/// What the watcher remembers of one sink, persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkAlertState {
    pub incident: Option<Incident>,
    pub expiry_warned: bool,
    #[serde(default)]
    pub holding_warned: bool,
}

/// The timings and limits the watcher works with.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    pub reminder: Duration,
    pub recovery_hold: Duration,
    pub park_max_bytes: u64,
    pub park_max_age: Duration,
}

/// Decides which messages to send, from successive snapshots.
#[derive(Debug, Clone)]
pub struct Watcher {
    settings: WatchSettings,
    states: HashMap<String, SinkAlertState>,
    park_full_warned: bool,
    /// Each sink's replayed counter at the last tick (this process's counters start at 0).
    replayed_seen: HashMap<String, u64>,
}

impl Watcher {
    pub fn new(settings: WatchSettings, states: HashMap<String, SinkAlertState>) -> Self {
        Self {
            settings,
            states,
            park_full_warned: false,
            replayed_seen: HashMap::new(),
        }
    }

    pub fn state(&self, sink: &str) -> Option<&SinkAlertState> {
        self.states.get(sink)
    }

    /// One look at every sink; returns the messages to send now and the sinks whose state
    /// changed (to persist).
    pub fn tick(
        &mut self,
        now_ms: i64,
        sinks: &[SinkSnapshot],
        park_bytes: u64,
    ) -> (Vec<Alert>, Vec<String>) {
        let mut alerts = Vec::new();
        let mut changed = Vec::new();
        let max_age_ms = self.settings.park_max_age.as_millis() as i64;
        let window_ms = (max_age_ms / 2).min(86_400_000);
        let base = |kind, s: &SinkSnapshot| Alert {
            kind,
            sink: s.clone(),
            at_ms: now_ms,
            broken_since_ms: None,
            downtime_ms: None,
            replayed: None,
            reminder: 0,
            park_bytes,
            park_max_bytes: self.settings.park_max_bytes,
            expires_at_ms: s.oldest_parked_ms.map(|o| o + max_age_ms),
        };
        for s in sinks {
            let seen = self.replayed_seen.insert(s.name.clone(), s.replayed_events);
            let replayed_now = s.replayed_events.saturating_sub(seen.unwrap_or(0));
            let st = self.states.entry(s.name.clone()).or_default();
            let before = st.clone();
            if let Some(inc) = st.incident.as_mut() {
                inc.replayed += replayed_now;
            }
            match (s.state, st.incident.as_mut()) {
                (SinkState::Broken, None) => {
                    st.incident = Some(Incident {
                        broken_since_ms: now_ms,
                        last_sent_ms: now_ms,
                        reminders: 0,
                        healthy_since_ms: None,
                        replayed: 0,
                    });
                    alerts.push(Alert {
                        broken_since_ms: Some(now_ms),
                        ..base(AlertKind::Broken, s)
                    });
                }
                (SinkState::Broken | SinkState::Retrying, Some(inc)) => {
                    inc.healthy_since_ms = None;
                    let reminder_ms = self.settings.reminder.as_millis() as i64;
                    if now_ms - inc.last_sent_ms >= reminder_ms {
                        inc.last_sent_ms = now_ms;
                        inc.reminders += 1;
                        alerts.push(Alert {
                            broken_since_ms: Some(inc.broken_since_ms),
                            reminder: inc.reminders,
                            ..base(AlertKind::Reminder, s)
                        });
                    }
                }
                (SinkState::Recovering, Some(inc)) => inc.healthy_since_ms = None,
                (SinkState::Healthy, Some(inc)) => {
                    let since = *inc.healthy_since_ms.get_or_insert(now_ms);
                    if now_ms - since >= self.settings.recovery_hold.as_millis() as i64 {
                        alerts.push(Alert {
                            broken_since_ms: Some(inc.broken_since_ms),
                            downtime_ms: Some(since - inc.broken_since_ms),
                            replayed: Some(inc.replayed),
                            ..base(AlertKind::Recovered, s)
                        });
                        st.incident = None;
                    }
                }
                (_, None) => {}
            }
            // The sink holds the stream back.
            match (&s.holding, st.holding_warned) {
                (Some(_), false) => {
                    st.holding_warned = true;
                    alerts.push(base(AlertKind::Holding, s));
                }
                (None, true) => st.holding_warned = false,
                _ => {}
            }
            // Parked data close to expiry.
            match s.oldest_parked_ms {
                Some(oldest) if now_ms >= oldest + max_age_ms - window_ms => {
                    if !st.expiry_warned {
                        st.expiry_warned = true;
                        alerts.push(base(AlertKind::ExpirySoon, s));
                    }
                }
                _ => st.expiry_warned = false,
            }
            if *st != before {
                changed.push(s.name.clone());
            }
        }
        // The park as a whole filling up: reported against the sink holding the most.
        let max = self.settings.park_max_bytes.max(1);
        if park_bytes * 10 >= max * 8 && !self.park_full_warned {
            self.park_full_warned = true;
            if let Some(s) = sinks.iter().max_by_key(|s| s.parked_bytes) {
                alerts.push(base(AlertKind::ParkFilling, s));
            }
        } else if park_bytes * 10 < max * 7 {
            self.park_full_warned = false;
        }
        (alerts, changed)
    }
}

/// Runs the watcher and the sender until the task is dropped.
pub async fn run(
    config: AlertsConfig,
    park: ParkConfig,
    status: Arc<Status>,
    store: Store,
) -> anyhow::Result<()> {
    let renderer = message::Renderer::new(config.templates_dir.as_deref())?
        .with_admin(status.admin_addr.get().map(|a| format!("http://{a}")));
    let outbox = send::Outbox::open(&store)?;
    let sender = Arc::new(send::Sender::new(&config)?);
    // Alerts that could not be queued in the store, being sent from memory.
    let mut unqueued = tokio::task::JoinSet::new();
    let settings = WatchSettings {
        reminder: config.reminder_interval.get(),
        recovery_hold: config.recovery_hold.get(),
        park_max_bytes: park.max_bytes.bytes(),
        park_max_age: park.max_age.get(),
    };
    let mut watcher = Watcher::new(settings, outbox.load_states()?);
    // Aborted with this task: the sender holds the store.
    let sending =
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(sender.clone().run(outbox.clone())));
    tracing::info!(to = ?config.to, via = %send::describe(&config), "alerts enabled");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tick.tick().await;
        let snaps: Vec<SinkSnapshot> = status.sinks.iter().map(|s| s.snapshot()).collect();
        let now = chrono::Utc::now().timestamp_millis();
        let previous = watcher.clone();
        let (alerts, changed) = watcher.tick(now, &snaps, store.total_bytes());
        let mut failed = false;
        for alert in &alerts {
            let rendered = renderer.render(alert);
            tracing::warn!(sink = %alert.sink.name, subject = %rendered.subject, "alert");
            match outbox.push(&rendered) {
                Ok(_) => {}
                Err(e) if e.is_unwritable() => {
                    // The store cannot be written (a full disk, which is often what this
                    // alert is about): the alert goes out from memory rather than never.
                    tracing::error!(error = %e, subject = %rendered.subject, "cannot queue an alert in the park store; sending it from memory");
                    unqueued.spawn(sender.clone().send_unqueued(rendered));
                }
                Err(e) => {
                    tracing::error!(error = %e, subject = %rendered.subject, "cannot queue an alert; it is tried again in a second");
                    failed = true;
                }
            }
        }
        while unqueued.try_join_next().is_some() {}
        if failed {
            // Forget this tick: the same alerts come up again at the next one.
            watcher = previous;
            continue;
        }
        for name in &changed {
            if let Some(st) = watcher.state(name) {
                if let Err(e) = outbox.save_state(name, st) {
                    tracing::error!(error = %e, sink = %name, "cannot store the alert state; after a restart an alert may be sent twice");
                }
            }
        }
        if !alerts.is_empty() || !changed.is_empty() {
            // Queued alerts survive a crash from here on.
            if let Err(e) = store.flush().await {
                tracing::error!(error = %e, "cannot flush queued alerts to disk");
            }
        }
        if sending.is_finished() {
            break Err(anyhow::anyhow!("the alert sender stopped"));
        }
    };
    drop(sending);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn snap(
        state: SinkState,
        replayed: u64,
        oldest: Option<i64>,
        parked_bytes: u64,
    ) -> SinkSnapshot {
        SinkSnapshot {
            name: "siem".into(),
            kind: "http",
            destination: "POST https://siem.example.com/".into(),
            state,
            since: SystemTime::now(),
            last_error: Some("HTTP 401 Unauthorized".into()),
            holding: None,
            delivered_events: 0,
            replayed_events: replayed,
            quarantined_events: 0,
            parked_entries: 0,
            parked_events: 0,
            parked_bytes,
            oldest_parked_at: None,
            oldest_parked_ms: oldest,
            newest_parked_at: None,
            queued_events: 0,
        }
    }

    fn watcher() -> Watcher {
        Watcher::new(
            WatchSettings {
                reminder: Duration::from_secs(3600),
                recovery_hold: Duration::from_secs(300),
                park_max_bytes: 1000,
                park_max_age: Duration::from_secs(7 * 86400),
            },
            HashMap::new(),
        )
    }

    fn kinds(a: &[Alert]) -> Vec<AlertKind> {
        a.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn broken_then_reminders_then_recovered_after_the_hold() {
        let mut w = watcher();
        let t0 = 1_000_000;
        assert!(w
            .tick(t0, &[snap(SinkState::Retrying, 0, None, 0)], 0)
            .0
            .is_empty());
        let (a, _) = w.tick(t0 + 1000, &[snap(SinkState::Broken, 0, None, 0)], 0);
        assert_eq!(kinds(&a), vec![AlertKind::Broken]);
        assert!(w
            .tick(t0 + 2000, &[snap(SinkState::Broken, 0, None, 0)], 0)
            .0
            .is_empty());
        let (a, _) = w.tick(
            t0 + 1000 + 3_600_000,
            &[snap(SinkState::Broken, 0, None, 0)],
            0,
        );
        assert_eq!(kinds(&a), vec![AlertKind::Reminder]);
        assert_eq!(a[0].reminder, 1);
        let t1 = t0 + 4_000_000;
        assert!(w
            .tick(t1, &[snap(SinkState::Recovering, 10, None, 0)], 0)
            .0
            .is_empty());
        assert!(w
            .tick(t1 + 1000, &[snap(SinkState::Healthy, 250, None, 0)], 0)
            .0
            .is_empty());
        let (a, _) = w.tick(
            t1 + 1000 + 300_000,
            &[snap(SinkState::Healthy, 250, None, 0)],
            0,
        );
        assert_eq!(kinds(&a), vec![AlertKind::Recovered]);
        assert_eq!(a[0].replayed, Some(250));
        assert_eq!(a[0].downtime_ms, Some(t1 + 1000 - (t0 + 1000)));
        assert!(w.state("siem").unwrap().incident.is_none());
    }

    #[test]
    fn a_flapping_sink_sends_no_storm() {
        let mut w = watcher();
        let mut sent = Vec::new();
        for i in 0..200 {
            let state = if i % 2 == 0 {
                SinkState::Broken
            } else {
                SinkState::Healthy
            };
            sent.extend(
                w.tick(1_000_000 + i * 1000, &[snap(state, 0, None, 0)], 0)
                    .0,
            );
        }
        assert_eq!(kinds(&sent), vec![AlertKind::Broken]);
    }

    #[test]
    fn park_filling_and_expiry_warnings_once_each() {
        let mut w = watcher();
        let now = 10 * 86_400_000;
        let (a, _) = w.tick(now, &[snap(SinkState::Broken, 0, None, 850)], 850);
        assert_eq!(kinds(&a), vec![AlertKind::Broken, AlertKind::ParkFilling]);
        assert!(w
            .tick(now + 1, &[snap(SinkState::Broken, 0, None, 900)], 900)
            .0
            .is_empty());
        // Six and a half days old with a seven-day max_age: within a day of expiring.
        let oldest = now - (6 * 86_400_000 + 43_200_000);
        let (a, _) = w.tick(
            now + 2,
            &[snap(SinkState::Broken, 0, Some(oldest), 900)],
            900,
        );
        assert_eq!(kinds(&a), vec![AlertKind::ExpirySoon]);
        assert_eq!(a[0].expires_at_ms, Some(oldest + 7 * 86_400_000));
        assert!(w
            .tick(
                now + 3,
                &[snap(SinkState::Broken, 0, Some(oldest), 900)],
                900
            )
            .0
            .is_empty());
        // Below 70% the filling warning re-arms.
        w.tick(now + 4, &[snap(SinkState::Broken, 0, None, 100)], 100);
        let (a, _) = w.tick(now + 5, &[snap(SinkState::Broken, 0, None, 820)], 820);
        assert_eq!(kinds(&a), vec![AlertKind::ParkFilling]);
    }

    #[test]
    fn the_replayed_count_of_an_incident_survives_a_restart() {
        let mut w = watcher();
        let t0 = 1_000_000;
        w.tick(t0, &[snap(SinkState::Broken, 0, None, 0)], 0);
        w.tick(t0 + 1000, &[snap(SinkState::Recovering, 100, None, 0)], 0);
        w.tick(t0 + 2000, &[snap(SinkState::Broken, 100, None, 0)], 0);
        // A restart: the incident comes back from the store, the process counters from 0.
        let saved = w.state("siem").unwrap().clone();
        let mut w = Watcher::new(
            w.settings.clone(),
            HashMap::from([("siem".to_string(), saved)]),
        );
        w.tick(t0 + 3000, &[snap(SinkState::Recovering, 50, None, 0)], 0);
        w.tick(t0 + 4000, &[snap(SinkState::Healthy, 80, None, 0)], 0);
        let (a, _) = w.tick(
            t0 + 4000 + 300_000,
            &[snap(SinkState::Healthy, 80, None, 0)],
            0,
        );
        assert_eq!(kinds(&a), vec![AlertKind::Recovered]);
        assert_eq!(a[0].replayed, Some(180));
    }

    #[test]
    fn holding_the_stream_is_reported_once_until_it_clears() {
        let mut w = watcher();
        let holding = |why: Option<&str>| SinkSnapshot {
            holding: why.map(str::to_string),
            ..snap(SinkState::Broken, 0, None, 0)
        };
        let why = Some("the park is full (1000 of 1000 bytes)");
        let (a, _) = w.tick(1, &[holding(why)], 1000);
        assert!(kinds(&a).contains(&AlertKind::Holding));
        assert!(!kinds(&w.tick(2, &[holding(why)], 1000).0).contains(&AlertKind::Holding));
        w.tick(3, &[holding(None)], 500);
        assert!(kinds(&w.tick(4, &[holding(why)], 1000).0).contains(&AlertKind::Holding));
        let alert = a.iter().find(|a| a.kind == AlertKind::Holding).unwrap();
        let text = message::Renderer::new(None).unwrap().render(alert);
        assert!(
            text.subject.contains("holding the stream"),
            "{}",
            text.subject
        );
        assert!(text.text.contains("every sink waits"), "{}", text.text);
    }
}
