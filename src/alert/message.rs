//! What an alert says: the sink, its state and since when, the last error verbatim, the class
//! of problem with concrete steps to fix it, what is parked and when expiry starts, and for a
//! recovery how long it was down and how much was replayed.
//!
//! Messages are handlebars templates shipped with the binary (`src/alert/templates/`):
//! `subject.hbs`, `text.hbs` and `html.hbs`. A file of the same name in
//! `alerts.templates_dir` replaces the built-in one. Subjects start with `[auditstream]` and
//! the sink name, so they sort by sink in a mailbox.

use std::path::Path;

use handlebars::Handlebars;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Alert, AlertKind};

const SUBJECT: &str = include_str!("templates/subject.hbs");
const TEXT: &str = include_str!("templates/text.hbs");
const HTML: &str = include_str!("templates/html.hbs");

/// The kind of trouble a last error points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Credentials,
    Missing,
    Connection,
    Tls,
    Rejected,
    Failing,
    ParkFull,
    Unknown,
}

/// Reads the class of problem from an error's text (statuses, S3 codes, transport words).
pub fn classify(error: &str) -> Problem {
    let e = error.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| e.contains(w));
    if has(&["park is full", "cannot park"]) {
        Problem::ParkFull
    } else if has(&["tls", "certificate", "handshake"]) {
        Problem::Tls
    } else if has(&[
        "http 401",
        "http 403",
        "accessdenied",
        "invalidaccesskeyid",
        "signaturedoesnotmatch",
        "expiredtoken",
        "invalidtoken",
        "forbidden",
        "unauthorized",
        "credentials",
    ]) {
        Problem::Credentials
    } else if has(&["nosuchbucket", "http 404", "not found"]) {
        Problem::Missing
    } else if has(&[
        "http 400",
        "http 413",
        "http 422",
        "http 415",
        "payload",
        "too large",
        "invalidrequest",
        "malformed",
    ]) {
        Problem::Rejected
    } else if has(&[
        "http 5",
        "http 429",
        "http 408",
        "slowdown",
        "throttl",
        "internalerror",
        "serviceunavailable",
    ]) {
        Problem::Failing
    } else if has(&[
        "connect",
        "dns",
        "resolve",
        "refused",
        "timed out",
        "timeout",
        "reset",
        "unreachable",
        "closed",
        "broken pipe",
    ]) {
        Problem::Connection
    } else {
        Problem::Unknown
    }
}

impl Problem {
    pub fn title(self) -> &'static str {
        match self {
            Problem::Credentials => "credentials or permissions rejected",
            Problem::Missing => "the destination does not exist",
            Problem::Connection => "cannot connect",
            Problem::Tls => "TLS failure",
            Problem::Rejected => "the destination rejects the data",
            Problem::Failing => "the destination is failing or throttling",
            Problem::ParkFull => "the park is full",
            Problem::Unknown => "delivery fails",
        }
    }

    /// Concrete things to check, for this kind of sink.
    pub fn steps(self, kind: &str) -> Vec<String> {
        let s3 = kind == "s3";
        let v: Vec<&str> = match self {
            Problem::Credentials if s3 => vec![
                "Check the credentials the daemon uses: static access_key_id/secret_access_key in the sink, or the AWS default chain (AWS_* environment, profile, IRSA web identity, instance role). Were they rotated or did they expire?",
                "Check the permissions: the principal needs s3:PutObject on the bucket and prefix (plus kms:GenerateDataKey for aws:kms encryption, and s3:PutObjectRetention for Object Lock).",
                "Try it by hand with the same identity: aws s3 cp test.txt s3://BUCKET/PREFIX/test.txt",
            ],
            Problem::Credentials => vec![
                "Check the sink's auth (bearer token, basic user/password or Splunk HEC token) and the environment variables it is read from. Was the token rotated, revoked or did it expire?",
                "Check that the token may write where the sink sends (the HEC index, the API scope).",
                "Try it by hand: curl -i -X POST -H 'Authorization: ...' URL -d '{}'",
            ],
            Problem::Missing if s3 => vec![
                "The bucket does not exist or is in another account or region: create it or fix bucket, region and endpoint in the sink.",
            ],
            Problem::Missing => vec![
                "The URL answers 404: check the path in the sink's url (for Splunk HEC: /services/collector/event).",
            ],
            Problem::Connection => vec![
                "Check that the destination is up and its address is right (host, port, scheme).",
                "Check name resolution from the daemon's host (dig HOST) and the network path: firewalls, security groups, proxies.",
                "auditstream keeps retrying on its own; nothing to do here once the destination is reachable again.",
            ],
            Problem::Tls => vec![
                "The destination's certificate is not trusted, has expired, or names another host: check it with openssl s_client -connect HOST:443 -servername HOST.",
                "For a private CA, set ca_file in the sink; if the server requires a client certificate, set client_cert and client_key.",
            ],
            Problem::Rejected => vec![
                "The destination refuses what it is sent: compare the sink's template or format with what it expects (auditstream render --config FILE --sink NAME shows the exact bytes).",
                "For 413 (too large), lower the sink's batch.max_bytes or set max_request_bytes.",
                "A rejected batch stays parked; after fixing the template restart the daemon, or export and purge the parked data (auditstream parked export / purge).",
            ],
            Problem::Failing => vec![
                "The destination answers with errors or asks us to slow down (5xx, 429, SlowDown): check its health, quotas and rate limits.",
                "auditstream backs off and retries on its own; smaller batches or lower concurrency can help a struggling endpoint.",
            ],
            Problem::ParkFull => vec![
                "The park reached park.max_bytes. With when_full = \"block\" the stream is paused for every sink of this daemon until the broken sink drains (Kafka keeps the data).",
                "Fix the destination, or make room: raise park.max_bytes (and the disk), or export and purge old parked data (auditstream parked export / purge).",
            ],
            Problem::Unknown => vec![
                "Read the last error above and the daemon's logs (journalctl, kubectl logs) around the time it broke.",
            ],
        };
        v.into_iter().map(str::to_string).collect()
    }
}

/// A message ready to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rendered {
    pub sink: String,
    pub kind: AlertKind,
    pub subject: String,
    pub text: String,
    pub html: String,
    pub created_at: String,
}

/// The compiled templates.
pub struct Renderer {
    plain: Handlebars<'static>,
    html: Handlebars<'static>,
    /// The admin API's address (`http://host:port`), for the commands in each message.
    admin: String,
}

impl Renderer {
    /// Built-in templates, each replaced by a file of the same name in `dir` when present.
    pub fn new(dir: Option<&Path>) -> anyhow::Result<Self> {
        let source = |name: &str, builtin: &'static str| -> anyhow::Result<String> {
            match dir.map(|d| d.join(name)) {
                Some(p) if p.exists() => std::fs::read_to_string(&p)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display())),
                _ => Ok(builtin.to_string()),
            }
        };
        let mut plain = Handlebars::new();
        plain.register_escape_fn(handlebars::no_escape);
        plain.register_template_string("subject", source("subject.hbs", SUBJECT)?)?;
        plain.register_template_string("text", source("text.hbs", TEXT)?)?;
        let mut html = Handlebars::new();
        html.register_template_string("html", source("html.hbs", HTML)?)?;
        let r = Self {
            plain,
            html,
            admin: "http://127.0.0.1:9600".into(),
        };
        r.try_render(&sample())?;
        Ok(r)
    }

    /// Names the admin API's address in the messages (`{{admin}}` in the templates).
    pub fn with_admin(mut self, admin: Option<String>) -> Self {
        if let Some(a) = admin {
            self.admin = a;
        }
        self
    }

    /// Renders an alert; a broken override falls back to a plain message rather than losing it.
    pub fn render(&self, alert: &Alert) -> Rendered {
        self.try_render(alert).unwrap_or_else(|e| {
            tracing::error!(error = %e, "an alert template failed; sending a plain message");
            let text = format!(
                "{:?} for sink {}: {}",
                alert.kind,
                alert.sink.name,
                alert.sink.last_error.clone().unwrap_or_default()
            );
            Rendered {
                sink: alert.sink.name.clone(),
                kind: alert.kind,
                subject: format!("[auditstream] {}: {:?}", alert.sink.name, alert.kind),
                html: format!("<pre>{}</pre>", html_escape(&text)),
                text,
                created_at: now(),
            }
        })
    }

    fn try_render(&self, alert: &Alert) -> anyhow::Result<Rendered> {
        let mut ctx = context(alert);
        ctx["admin"] = Value::String(self.admin.clone());
        let subject = self.plain.render("subject", &ctx)?;
        Ok(Rendered {
            sink: alert.sink.name.clone(),
            kind: alert.kind,
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: self.plain.render("text", &ctx)?,
            html: self.html.render("html", &ctx)?,
            created_at: now(),
        })
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

/// A duration in words: `2h 13m`, `45s`.
pub fn human_duration(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    let (d, h, m, sec) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// The template context.
fn context(a: &Alert) -> Value {
    let s = &a.sink;
    // A sink that holds the stream is first of all a park problem.
    let problem = classify(
        s.holding
            .as_deref()
            .or(s.last_error.as_deref())
            .unwrap_or(""),
    );
    let since: chrono::DateTime<chrono::Utc> = s.since.into();
    let percent = a.park_bytes * 100 / a.park_max_bytes.max(1);
    json!({
        "kind": a.kind,
        "broken": a.kind == AlertKind::Broken,
        "reminder": a.kind == AlertKind::Reminder,
        "recovered": a.kind == AlertKind::Recovered,
        "park_filling": a.kind == AlertKind::ParkFilling,
        "expiry_soon": a.kind == AlertKind::ExpirySoon,
        "holding": a.kind == AlertKind::Holding,
        "holding_why": s.holding,
        "reminder_number": a.reminder,
        "host": hostname(),
        "sink": {
            "name": s.name, "type": s.kind, "destination": s.destination,
            "state": s.state.as_str(), "since": since.format("%Y-%m-%d %H:%M UTC").to_string(),
            "last_error": s.last_error.clone().unwrap_or_else(|| "(none recorded)".into()),
        },
        "problem": {"title": problem.title(), "steps": problem.steps(s.kind)},
        "broken_for": a.broken_since_ms.map(|b| human_duration(a.at_ms - b)),
        "broken_since": a.broken_since_ms.map(when),
        "parked": {
            "events": s.parked_events, "entries": s.parked_entries,
            "bytes": bytesize::ByteSize(s.parked_bytes).display().iec().to_string(),
            "oldest": s.oldest_parked_ms.map(when),
            "expires_at": a.expires_at_ms.map(when),
            "expires_in": a.expires_at_ms.map(|e| human_duration(e - a.at_ms)),
        },
        "park": {
            "bytes": bytesize::ByteSize(a.park_bytes).display().iec().to_string(),
            "max": bytesize::ByteSize(a.park_max_bytes).display().iec().to_string(),
            "percent": percent,
        },
        "downtime": a.downtime_ms.map(human_duration),
        "replayed": a.replayed,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into())
}

/// An alert to check templates with.
fn sample() -> Alert {
    Alert {
        kind: AlertKind::Broken,
        sink: crate::status::SinkSnapshot {
            name: "sample".into(),
            kind: "http",
            destination: "POST https://siem.example.com/".into(),
            state: crate::status::SinkState::Broken,
            since: std::time::SystemTime::now(),
            last_error: Some("HTTP 503".into()),
            holding: None,
            delivered_events: 0,
            replayed_events: 0,
            quarantined_events: 0,
            parked_entries: 1,
            parked_events: 10,
            parked_bytes: 5000,
            oldest_parked_at: None,
            oldest_parked_ms: Some(0),
            newest_parked_at: None,
            queued_events: 0,
        },
        at_ms: 0,
        broken_since_ms: Some(0),
        downtime_ms: Some(0),
        replayed: Some(0),
        reminder: 1,
        park_bytes: 5000,
        park_max_bytes: 10_000,
        expires_at_ms: Some(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_into_problems_people_can_act_on() {
        assert_eq!(
            classify("HTTP 401 Unauthorized: bad token (permanent)"),
            Problem::Credentials
        );
        assert_eq!(
            classify("S3 AccessDenied (HTTP 403) on bucket b: Access Denied"),
            Problem::Credentials
        );
        assert_eq!(
            classify("S3 NoSuchBucket (HTTP 404) on bucket b"),
            Problem::Missing
        );
        assert_eq!(
            classify(
                "cannot connect: error trying to connect: tcp connect error: Connection refused"
            ),
            Problem::Connection
        );
        assert_eq!(
            classify("TLS: invalid peer certificate: UnknownIssuer"),
            Problem::Tls
        );
        assert_eq!(classify("HTTP 503 Service Unavailable"), Problem::Failing);
        assert_eq!(classify("S3 SlowDown (HTTP 503)"), Problem::Failing);
        assert_eq!(
            classify("HTTP 400 Bad Request: invalid event"),
            Problem::Rejected
        );
        assert_eq!(
            classify("the park is full (10 of 10 bytes)"),
            Problem::ParkFull
        );
    }

    #[test]
    fn messages_say_what_broke_and_how_to_fix_it() {
        let r = Renderer::new(None).unwrap();
        let mut a = sample();
        a.sink.name = "siem".into();
        a.sink.last_error =
            Some("HTTP 401 Unauthorized: {\"text\":\"Invalid token\"} (permanent)".into());
        let m = r.render(&a);
        assert!(
            m.subject.starts_with("[auditstream] siem: broken"),
            "{}",
            m.subject
        );
        assert!(m.subject.contains("credentials"), "{}", m.subject);
        for part in [&m.text, &m.html] {
            assert!(part.contains("Invalid token"), "{part}");
            assert!(part.contains("https://siem.example.com/"));
            assert!(part.contains("curl"), "troubleshooting steps: {part}");
            assert!(
                part.contains("10 events") || part.contains(">10<"),
                "{part}"
            );
        }
        assert!(
            m.html.contains("&quot;Invalid token&quot;") || m.html.contains("&#x22;Invalid token"),
            "escaped: {}",
            m.html
        );

        a.kind = AlertKind::Recovered;
        a.downtime_ms = Some(7_980_000);
        a.replayed = Some(4200);
        let m = r.render(&a);
        assert!(
            m.subject
                .starts_with("[auditstream] siem: recovered after 2h 13m"),
            "{}",
            m.subject
        );
        assert!(m.text.contains("4200"));
    }
}
