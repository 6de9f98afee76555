//! Sending alerts: a persistent outbox and one sender task.
//!
//! Rendered messages go into the `outbox` tree of the park store first, so an alert survives a
//! restart; the sender takes them oldest first and removes each once every channel has it:
//! - email: SMTP (lettre; STARTTLS when offered, or as `alerts.smtp_url` says), or, without
//!   `smtp_url`, an `.eml` file per message in `alerts.outbox_dir`;
//! - `alerts.webhook_url`: `{"text": ...}` as JSON (Slack and Teams incoming webhooks).
//!
//! A failed send is logged and retried with backoff (1 s doubling to 5 min). The sender runs in
//! its own task: a mail server that is down delays the alert, never a delivery.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::message::Rendered;
use super::SinkAlertState;
use crate::config::{AlertsConfig, SmtpSettings, SmtpTls};
use crate::park::records::{Fifo, Table};
use crate::park::{Store, StoreError};

/// A message waiting to go out, and which channels already have it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub message: Rendered,
    pub email_sent: bool,
    pub webhook_sent: bool,
}

/// The outbox and the watcher's incident states, in the park store.
#[derive(Clone)]
pub struct Outbox {
    outbox: Fifo<Pending>,
    states: Table<SinkAlertState>,
    wake: Arc<Notify>,
}

impl Outbox {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            outbox: store.fifo("outbox")?,
            states: store.table("alerts")?,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Queues a message.
    pub fn push(&self, m: &Rendered) -> Result<(), StoreError> {
        self.outbox.push(&Pending {
            message: m.clone(),
            email_sent: false,
            webhook_sent: false,
        })?;
        self.wake.notify_one();
        Ok(())
    }

    /// The oldest message not yet sent everywhere.
    pub fn first(&self) -> Result<Option<(u64, Pending)>, StoreError> {
        self.outbox.first()
    }

    fn update(&self, seq: u64, p: &Pending) -> Result<(), StoreError> {
        self.outbox.update(seq, p)
    }

    fn remove(&self, seq: u64) -> Result<(), StoreError> {
        self.outbox.remove(seq)
    }

    pub fn load_states(&self) -> Result<HashMap<String, SinkAlertState>, StoreError> {
        self.states.all()
    }

    pub fn save_state(&self, sink: &str, st: &SinkAlertState) -> Result<(), StoreError> {
        self.states.put(sink, st)
    }
}

enum Email {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(AsyncFileTransport<Tokio1Executor>, PathBuf),
}

/// Delivers queued messages to their channels.
pub struct Sender {
    email: Email,
    from: Mailbox,
    to: Vec<Mailbox>,
    webhook: Option<(reqwest::Client, String)>,
}

/// Where alerts go, for the start-up log line.
pub fn describe(c: &AlertsConfig) -> String {
    let email = match c
        .smtp_url
        .as_ref()
        .and_then(|u| SmtpSettings::parse(u.expose()).ok())
    {
        Some(s) => format!("smtp {}:{} ({:?})", s.host, s.port, s.tls),
        None => format!(".eml files in {}", c.outbox_dir.display()),
    };
    match &c.webhook_url {
        Some(_) => format!("{email} and a webhook"),
        None => email,
    }
}

/// An SMTP transport for the settings.
pub fn smtp_transport(s: &SmtpSettings) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let params = || TlsParameters::new(s.host.clone());
    let tls = match s.tls {
        SmtpTls::Opportunistic => Tls::Opportunistic(params()?),
        SmtpTls::Required => Tls::Required(params()?),
        SmtpTls::Implicit => Tls::Wrapper(params()?),
        SmtpTls::None => Tls::None,
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
        .port(s.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(30)));
    if let (Some(u), Some(p)) = (&s.user, &s.password) {
        b = b.credentials(Credentials::new(u.clone(), p.expose().to_string()));
    }
    Ok(b.build())
}

impl Sender {
    pub fn new(c: &AlertsConfig) -> anyhow::Result<Self> {
        let email = match &c.smtp_url {
            Some(url) => {
                let s = SmtpSettings::parse(url.expose())
                    .map_err(|e| anyhow::anyhow!("alerts.smtp_url: {e}"))?;
                Email::Smtp(smtp_transport(&s)?)
            }
            None => {
                std::fs::create_dir_all(&c.outbox_dir)?;
                Email::Files(
                    AsyncFileTransport::<Tokio1Executor>::new(&c.outbox_dir),
                    c.outbox_dir.clone(),
                )
            }
        };
        let webhook = match &c.webhook_url {
            Some(u) => Some((
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()?,
                u.expose().to_string(),
            )),
            None => None,
        };
        Ok(Self {
            email,
            from: c.from.parse()?,
            to: c.to.iter().map(|t| t.parse()).collect::<Result<_, _>>()?,
            webhook,
        })
    }

    async fn send_email(&self, m: &Rendered) -> anyhow::Result<()> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(&m.subject);
        for t in &self.to {
            b = b.to(t.clone());
        }
        let email = b.multipart(MultiPart::alternative_plain_html(
            m.text.clone(),
            m.html.clone(),
        ))?;
        match &self.email {
            Email::Smtp(t) => {
                t.send(email).await?;
            }
            Email::Files(t, dir) => {
                let id = t.send(email).await?;
                tracing::info!(file = %dir.join(format!("{id}.eml")).display(), subject = %m.subject, "alert written to the outbox (no smtp_url)");
            }
        }
        Ok(())
    }

    async fn send_webhook(&self, m: &Rendered) -> anyhow::Result<()> {
        let Some((client, url)) = &self.webhook else {
            return Ok(());
        };
        let body = serde_json::json!({ "text": format!("{}\n\n{}", m.subject, m.text) });
        let resp = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?)
            .send()
            .await
            // The URL of an incoming webhook is its secret: never in a log line.
            .map_err(|e| e.without_url())?;
        if !resp.status().is_success() {
            anyhow::bail!("webhook answered HTTP {}", resp.status());
        }
        Ok(())
    }

    /// Sends one message on every channel that does not have it yet; each channel on its
    /// own, so a mail server that is down does not hold the webhook back (or the reverse).
    async fn send(&self, p: &mut Pending) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        if !p.email_sent {
            match self.send_email(&p.message).await {
                Ok(()) => p.email_sent = true,
                Err(e) => failures.push(format!("email: {e:#}")),
            }
        }
        if !p.webhook_sent {
            match self.send_webhook(&p.message).await {
                Ok(()) => p.webhook_sent = true,
                Err(e) => failures.push(format!("webhook: {e:#}")),
            }
        }
        match failures.is_empty() {
            true => Ok(()),
            false => Err(anyhow::anyhow!(failures.join("; "))),
        }
    }

    /// Sends a message that could not be queued in the outbox (the park store cannot be
    /// written: a full disk), straight from memory, retrying until it is sent. A restart
    /// before then loses it.
    pub async fn send_unqueued(self: Arc<Self>, message: Rendered) {
        let mut pending = Pending {
            message,
            email_sent: false,
            webhook_sent: false,
        };
        let mut wait = Duration::from_secs(1);
        loop {
            match self.send(&mut pending).await {
                Ok(()) => {
                    tracing::info!(subject = %pending.message.subject, "alert sent (from memory: the outbox could not be written)");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), subject = %pending.message.subject, retry_in = ?wait, "alert not sent yet; retrying (deliveries are not affected)");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(300));
                }
            }
        }
    }

    /// Sends queued messages, oldest first, forever.
    pub async fn run(self: Arc<Self>, outbox: Outbox) {
        let mut wait = Duration::from_secs(1);
        loop {
            let next = match outbox.first() {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the alert outbox");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            let Some((seq, mut pending)) = next else {
                let _ = tokio::time::timeout(Duration::from_secs(5), outbox.wake.notified()).await;
                continue;
            };
            let result = self.send(&mut pending).await;
            let stored = if result.is_ok() {
                outbox.remove(seq)
            } else {
                outbox.update(seq, &pending)
            };
            if let Err(e) = stored {
                tracing::error!(error = %e, "cannot update the alert outbox");
            }
            match result {
                Ok(()) => {
                    tracing::info!(subject = %pending.message.subject, "alert sent");
                    wait = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), subject = %pending.message.subject, retry_in = ?wait, "alert not sent yet; retrying (deliveries are not affected)");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(300));
                }
            }
        }
    }
}
