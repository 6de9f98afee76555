//! `type = "http"`: batches sent to an HTTP endpoint (a SIEM, a log service, a webhook).
//!
//! A batch becomes one or more requests ([`HttpSink::deliver`]):
//! - `encoding` decides the body: `ndjson` (one record per line), `json_array`
//!   (`[r1,r2,...]`), `concatenated` (records back to back, as Splunk HEC wants), or `single`
//!   (one request per record);
//! - `max_request_bytes` splits a batch into several requests before sending, and a 413 answer
//!   splits the refused request in halves, down to single records (a single record the endpoint
//!   refuses is a permanent error, not an endless retry);
//! - the body is optionally compressed (`Content-Encoding: gzip` or `zstd`).
//!
//! Answers are classified honestly ([`classify`]): 2xx delivered; 408, 429 and 5xx retryable
//! (with `Retry-After` when given); other 4xx and 3xx permanent. Transport failures (refused,
//! reset, DNS, timeouts) are retryable, except TLS certificate failures, which no retry fixes.
//! Every error keeps the status and an excerpt of the answer for the logs, the status page and
//! the alert.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use super::compress::compress;
use super::{DeliveryError, Receipt, Refused, Sink};
use crate::batch::{Batch, Record};
use crate::config::{Compression, HttpAuth, HttpEncoding, HttpMethod, HttpSinkConfig};

pub struct HttpSink {
    client: reqwest::Client,
    url: Url,
    method: Method,
    headers: HeaderMap,
    encoding: HttpEncoding,
    compression: Compression,
    max_request_bytes: usize,
}

impl HttpSink {
    pub fn new(c: &HttpSinkConfig) -> anyhow::Result<Self> {
        let url = Url::parse(&c.url)?;
        let mut b = reqwest::Client::builder()
            .timeout(c.timeout.get())
            .connect_timeout(c.timeout.get().min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(c.concurrency.max(1))
            .user_agent(concat!("auditstream/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("reading ca_file {}: {e}", ca.display()))?;
            b = b.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem)?);
        }
        if let (Some(cert), Some(key)) = (&c.client_cert, &c.client_key) {
            let mut pem = std::fs::read(cert)
                .map_err(|e| anyhow::anyhow!("reading client_cert {}: {e}", cert.display()))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key)
                    .map_err(|e| anyhow::anyhow!("reading client_key {}: {e}", key.display()))?,
            );
            b = b.identity(reqwest::Identity::from_pem(&pem)?);
        }
        if c.tls_insecure_skip_verify {
            tracing::warn!(url = %redacted(&url), "tls_insecure_skip_verify is on: any server certificate is accepted; never use this in production");
            b = b.tls_danger_accept_invalid_certs(true);
        }
        let mut headers = HeaderMap::new();
        let content_type = match c.encoding {
            HttpEncoding::Ndjson => "application/x-ndjson",
            HttpEncoding::JsonArray | HttpEncoding::Single => "application/json",
            HttpEncoding::Concatenated => "application/json",
        };
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        for (k, v) in &c.headers {
            headers.insert(
                HeaderName::from_bytes(k.as_bytes())?,
                HeaderValue::from_str(v)?,
            );
        }
        if let Some(auth) = &c.auth {
            let value = match auth {
                HttpAuth::Bearer(t) => format!("Bearer {}", t.expose()),
                HttpAuth::Splunk(t) => format!("Splunk {}", t.expose()),
                HttpAuth::Basic { user, password } => {
                    use base64::Engine;
                    let raw = format!("{user}:{}", password.expose());
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    )
                }
            };
            let mut v = HeaderValue::from_str(&value)?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        Ok(Self {
            client: b.build()?,
            url,
            method: match c.method {
                HttpMethod::Post => Method::POST,
                HttpMethod::Put => Method::PUT,
            },
            headers,
            encoding: c.encoding,
            compression: c.compression,
            max_request_bytes: c.max_request_bytes.map_or(usize::MAX, |b| b.as_usize()),
        })
    }

    /// The request bodies for a batch, before compression: index ranges of records.
    fn plan(&self, records: &[Record]) -> Vec<std::ops::Range<usize>> {
        if self.encoding == HttpEncoding::Single {
            return (0..records.len()).map(|i| i..i + 1).collect();
        }
        let mut out = Vec::new();
        let mut start = 0;
        let mut size = 2;
        for (i, r) in records.iter().enumerate() {
            let add = r.body.len() + 1;
            if i > start && size + add > self.max_request_bytes {
                out.push(start..i);
                start = i;
                size = 2;
            }
            size += add;
        }
        if start < records.len() {
            out.push(start..records.len());
        }
        out
    }

    /// Sends records as one request; on 413 splits them in halves and sends each.
    /// `records` start at index `base` of their batch; a lone record the endpoint still finds
    /// too large is refused (quarantined by the worker), not retried forever.
    async fn send(&self, records: &[Record], base: usize) -> Result<Vec<Refused>, DeliveryError> {
        let mut refused = Vec::new();
        let mut pending = vec![(base, records)];
        while let Some((at, part)) = pending.pop() {
            match self.request(part).await {
                Err(e) if e.too_large && part.len() > 1 => {
                    let (a, b) = part.split_at(part.len() / 2);
                    tracing::info!(
                        records = part.len(),
                        "413 from the endpoint: sending the request in two halves"
                    );
                    pending.push((at + a.len(), b));
                    pending.push((at, a));
                }
                Err(e) if e.too_large => {
                    tracing::warn!(offset = part[0].offset, bytes = part[0].body.len(), "the endpoint refuses a single record as too large; it goes to the quarantine");
                    refused.push(Refused {
                        index: at,
                        reason: format!(
                            "{} (a single record of {} bytes is larger than the endpoint accepts)",
                            e.error.detail,
                            part[0].body.len()
                        ),
                    });
                }
                Err(e) => return Err(e.error),
                Ok(()) => {}
            }
        }
        refused.sort_by_key(|r| r.index);
        Ok(refused)
    }

    async fn request(&self, records: &[Record]) -> Result<(), Answer> {
        let (body, encoding) = compress(encode_body(self.encoding, records), self.compression)
            .map_err(|e| Answer::from(DeliveryError::permanent(format!("compressing: {e}"))))?;
        let mut req = self
            .client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone());
        if let Some(enc) = encoding {
            req = req.header(reqwest::header::CONTENT_ENCODING, enc);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| Answer::from(transport_error(e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let excerpt = excerpt(resp).await;
        Err(Answer {
            too_large: status == StatusCode::PAYLOAD_TOO_LARGE,
            error: classify(status, retry_after, &excerpt),
        })
    }
}

/// A failed request, and whether it was refused as too large.
struct Answer {
    error: DeliveryError,
    too_large: bool,
}

impl From<DeliveryError> for Answer {
    fn from(error: DeliveryError) -> Self {
        Self {
            error,
            too_large: false,
        }
    }
}

/// What a non-2xx status means for retrying.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, excerpt: &str) -> DeliveryError {
    let detail = if excerpt.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {excerpt}")
    };
    let retryable = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    let mut e = if retryable {
        DeliveryError::retryable(detail)
    } else {
        DeliveryError::permanent(detail)
    };
    e.retry_after = retry_after;
    e
}

/// The request body for `records` in `encoding` (before compression): what the endpoint
/// receives, and what `auditstream render` prints.
pub fn encode_body(encoding: HttpEncoding, records: &[Record]) -> Vec<u8> {
    let total: usize = records.iter().map(|r| r.body.len() + 1).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(total);
    match encoding {
        HttpEncoding::Ndjson => {
            for r in records {
                out.extend_from_slice(r.body.as_bytes());
                out.push(b'\n');
            }
        }
        HttpEncoding::JsonArray => {
            out.push(b'[');
            for (i, r) in records.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(r.body.as_bytes());
            }
            out.push(b']');
        }
        HttpEncoding::Concatenated | HttpEncoding::Single => {
            for r in records {
                out.extend_from_slice(r.body.as_bytes());
            }
        }
    }
    out
}

/// A transport failure: retryable, except a certificate the client cannot trust. The URL is
/// left out of the detail: its query string or user info may hold a credential, and the
/// detail goes to `/status`, the park and alert emails.
fn transport_error(e: reqwest::Error) -> DeliveryError {
    let e = e.without_url();
    let mut chain = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(&e);
    while let Some(err) = cur {
        chain.push(err.to_string());
        cur = err.source();
    }
    let chain = chain.join(": ");
    let lower = chain.to_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("tls handshake") && lower.contains("alert")
    {
        return DeliveryError::permanent(format!("TLS: {chain}"));
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    DeliveryError::retryable(format!("{kind}: {chain}"))
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Up to 300 characters of the answer, on one line.
async fn excerpt(resp: reqwest::Response) -> String {
    let bytes = resp.bytes().await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(1200)]);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(300).collect()
}

/// The URL without credentials or query string (which may hold tokens).
fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

#[async_trait]
impl Sink for HttpSink {
    async fn deliver(&self, batch: &Batch) -> Result<Receipt, DeliveryError> {
        let mut refused = Vec::new();
        for range in self.plan(&batch.records) {
            let base = range.start;
            refused.extend(self.send(&batch.records[range], base).await?);
        }
        Ok(Receipt::refusing(batch, refused))
    }

    fn describe(&self) -> String {
        format!("{} {}", self.method, redacted(&self.url))
    }

    fn one_record_per_line(&self) -> bool {
        self.encoding == HttpEncoding::Ndjson
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_honestly() {
        for s in [408, 429, 500, 502, 503, 504] {
            let e = classify(StatusCode::from_u16(s).unwrap(), None, "");
            assert!(!e.is_permanent(), "{s}");
        }
        for s in [301, 400, 401, 403, 404, 405, 413, 422] {
            let e = classify(StatusCode::from_u16(s).unwrap(), None, "nope");
            assert!(e.is_permanent(), "{s}");
            assert!(e.detail.contains(&s.to_string()) && e.detail.contains("nope"));
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let d = parse_retry_after(&later).unwrap();
        assert!(
            d > Duration::from_secs(85) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn urls_lose_credentials_and_queries_in_descriptions() {
        let u = Url::parse("https://user:pw@siem.example.com/hec?token=abc").unwrap();
        assert_eq!(redacted(&u), "https://siem.example.com/hec");
    }
}
