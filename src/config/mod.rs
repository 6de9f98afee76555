//! The typed configuration: what `auditstream.toml` may contain, with its defaults.
//!
//! Loading (TOML, `${ENV}` interpolation, error messages with key paths and lines) lives in
//! [`load`]; human units in [`units`]. Every struct here rejects unknown keys, so a typo is an
//! error rather than a silently ignored setting. `config/auditstream.example.toml` documents every
//! option; keep the two in step.

pub mod load;
pub mod units;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{load_file, parse_str, ConfigError, ConfigErrors};
pub use units::{ByteSize, HumanDuration};

/// The whole configuration of one daemon.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub pipeline: PipelineConfig,
    pub park: ParkConfig,
    /// Email (and webhook) alerts; `None` when the section is absent (alerts are only logged).
    pub alerts: Option<AlertsConfig>,
    /// Signed digests of what the S3 sinks wrote; `None` when the section is absent.
    pub integrity: Option<IntegrityConfig>,
    pub admin: AdminConfig,
    pub sinks: Vec<SinkConfig>,
}

/// `[integrity]`: every S3 sink writes signed, chained digests of the objects it wrote.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrityConfig {
    /// The Ed25519 private key (its 32-byte seed, base64), usually `${AUDITSTREAM_SIGNING_KEY}`;
    /// `auditstream integrity generate-key` makes one.
    pub signing_key: Secret,
    /// How often each S3 sink writes a digest (and once more at every stop).
    #[serde(default = "default_digest_interval")]
    pub digest_interval: HumanDuration,
    /// This daemon's chain of digests (default: the host name). Each daemon writing to the
    /// same prefix needs its own: several instances of a consumer group on one bucket do.
    #[serde(default)]
    pub chain: Option<String>,
}

impl IntegrityConfig {
    /// The 32-byte Ed25519 seed.
    pub fn seed(&self) -> Result<[u8; 32], String> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.signing_key.expose().trim())
            .map_err(|_| "not base64 (make a key with `auditstream integrity generate-key`)")?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            format!(
                "{} bytes; an Ed25519 key is 32 (make one with `auditstream integrity generate-key`)",
                bytes.len()
            )
        })
    }
}

fn default_digest_interval() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

/// `[alerts]`: telling the admins when a sink breaks, stays broken, and recovers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// `smtp://host[:port]` (STARTTLS when offered; `?tls=required` to insist, `?tls=none` for
    /// none), `smtps://host[:port]` (implicit TLS); `user:password@` allowed. Without it each
    /// message is written as a `.eml` file to `outbox_dir`.
    #[serde(default)]
    pub smtp_url: Option<Secret>,
    pub from: String,
    pub to: Vec<String>,
    /// How often a reminder is sent while a sink stays broken.
    #[serde(default = "default_reminder")]
    pub reminder_interval: HumanDuration,
    /// How long a sink must stay healthy before the "recovered" message (no flapping storms).
    #[serde(default = "default_recovery_hold")]
    pub recovery_hold: HumanDuration,
    #[serde(default = "default_outbox")]
    pub outbox_dir: PathBuf,
    /// Also post each message as JSON (`{"text": ...}`) to this incoming webhook (Slack, Teams).
    #[serde(default)]
    pub webhook_url: Option<Secret>,
    /// A directory with templates that override the built-in ones (`subject.hbs`,
    /// `text.hbs`, `html.hbs`).
    #[serde(default)]
    pub templates_dir: Option<PathBuf>,
}

/// How to reach the SMTP server, from `alerts.smtp_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub user: Option<String>,
    pub password: Option<Secret>,
}

/// TLS towards the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// `smtp://`: STARTTLS when the server offers it.
    Opportunistic,
    /// `smtp://...?tls=required`: STARTTLS or fail.
    Required,
    /// `smtps://`: TLS from the first byte.
    Implicit,
    /// `smtp://...?tls=none`: never (a local relay).
    None,
}

impl SmtpSettings {
    /// Parses `smtp[s]://[user[:password]@]host[:port][?tls=required|none]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let u = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let tls_param = u
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.to_string());
        let (tls, default_port) = match (u.scheme(), tls_param.as_deref()) {
            ("smtp", None | Some("opportunistic")) => (SmtpTls::Opportunistic, 25),
            ("smtp", Some("required")) => (SmtpTls::Required, 587),
            ("smtp", Some("none")) => (SmtpTls::None, 25),
            ("smtps", None) => (SmtpTls::Implicit, 465),
            (scheme, tls) => {
                return Err(format!(
                    "unsupported `{scheme}://` with tls={tls:?}; use smtp://host (STARTTLS when offered), smtp://host?tls=required, smtp://host?tls=none or smtps://host"
                ))
            }
        };
        let host = u.host_str().ok_or("the URL names no host")?.to_string();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = (!u.username().is_empty()).then(|| decode(u.username()));
        Ok(Self {
            host,
            port: u.port().unwrap_or(default_port),
            tls,
            user,
            password: u.password().map(|p| Secret::new(decode(p))),
        })
    }
}

fn default_reminder() -> HumanDuration {
    HumanDuration::from_secs(4 * 3600)
}
fn default_recovery_hold() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_outbox() -> PathBuf {
    PathBuf::from("var/outbox")
}

/// `[admin]`: the HTTP endpoint for health, readiness, metrics, status and actions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Address to listen on (`127.0.0.1:0` picks a free port, logged at start).
    pub listen: String,
    /// Required (as `Authorization: Bearer <token>`) for every POST; without it, POSTs are
    /// refused.
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9600".into(),
            token: None,
        }
    }
}

/// `[kafka]`: where events come from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    #[serde(default = "default_group_id")]
    pub group_id: String,
    pub topics: Vec<String>,
    /// Every other librdkafka property, passed as-is.
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
}

fn default_group_id() -> String {
    "auditstream".into()
}

/// A librdkafka property value: TOML strings, integers and booleans are all accepted.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum PropertyValue {
    Text(String),
    Integer(i64),
    Bool(bool),
}

impl std::fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PropertyValue::Text(s) => f.write_str(s),
            PropertyValue::Integer(i) => write!(f, "{i}"),
            PropertyValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// `[pipeline]`: limits that apply to every event.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Larger messages are quarantined.
    pub max_event_bytes: ByteSize,
    /// Events read from Kafka but not yet finished by every sink. At this bound the source
    /// takes no more messages (and keeps polling) until some have finished.
    pub max_in_flight_events: usize,
    /// How long a graceful stop may take to flush batches before the daemon exits anyway.
    pub shutdown_timeout: HumanDuration,
    /// A JSON file with a representative event, used by `validate` to test-render templates
    /// (default: a built-in audit event with every documented field).
    pub sample_event: Option<PathBuf>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: ByteSize::mib(1),
            max_in_flight_events: 50_000,
            shutdown_timeout: HumanDuration::from_secs(30),
            sample_event: None,
        }
    }
}

/// `[park]`: the persistent sled store for parked batches and quarantined events.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParkConfig {
    pub path: PathBuf,
    /// The most parked batches may take, all sinks together (records as they would be sent).
    pub max_bytes: ByteSize,
    /// What happens when `max_bytes` is reached.
    pub when_full: WhenFull,
    /// Parked batches older than this are exported to `expired_dir` and removed.
    pub max_age: HumanDuration,
    /// Where expired, dropped and purged batches are exported (NDJSON, one record per line).
    pub expired_dir: PathBuf,
    /// The longest wait between recovery probes of a broken sink.
    pub probe_max_interval: HumanDuration,
    /// Once every park is empty, the store is rewritten into a fresh database (giving the
    /// space an outage took back to the filesystem) if it takes more than this on disk (and
    /// more than twice what it took after its last rewrite). See `park/mod.rs`, "Compaction".
    pub compact_above: ByteSize,
}

impl Default for ParkConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("var/park"),
            max_bytes: ByteSize::gib(10),
            when_full: WhenFull::Block,
            max_age: HumanDuration::from_secs(7 * 86_400),
            expired_dir: PathBuf::from("var/expired"),
            probe_max_interval: HumanDuration::from_secs(300),
            compact_above: ByteSize::mib(8),
        }
    }
}

/// `park.when_full`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Stop taking new events for the full sink: the source stops reading once the window
    /// is full (Kafka keeps the data).
    #[default]
    Block,
    /// Export the oldest parked batches to `expired_dir` and remove them to make room.
    DropOldest,
}

/// One `[[sinks]]` entry: a destination with its template, filter, batching and retries.
#[derive(Debug, Clone, Serialize)]
pub struct SinkConfig {
    pub name: String,
    pub render: RenderSpec,
    /// Options of a built-in format (`index`, `vendor`, ...).
    pub format_options: BTreeMap<String, String>,
    /// Fields removed or pseudonymised before rendering.
    pub privacy: Privacy,
    /// Field path (dotted) to glob patterns; all fields must match one of their patterns.
    pub filter: BTreeMap<String, GlobList>,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub kind: SinkKind,
}

impl SinkConfig {
    /// The sink type as written in the config (`file`, `stdout`, ...).
    pub fn type_name(&self) -> &'static str {
        self.kind.type_name()
    }

    /// Batches in flight at once (only HTTP sinks may have more than one).
    pub fn concurrency(&self) -> usize {
        match &self.kind {
            SinkKind::Http(h) => h.concurrency.max(1),
            _ => 1,
        }
    }

    /// The S3 key template, for S3 sinks.
    pub fn key_template(&self) -> Option<&str> {
        match &self.kind {
            SinkKind::S3(c) => Some(c.key.as_deref().unwrap_or(DEFAULT_S3_KEY)),
            _ => None,
        }
    }
}

/// What a sink hides of each event before rendering it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Privacy {
    /// Field paths removed (`metadata.ip`; `*` matches any one key: `changes.*.old`).
    pub redact: Vec<String>,
    /// Field paths whose values are replaced by a keyed HMAC-SHA256 token.
    pub pseudonymise: Vec<String>,
    /// The HMAC key (from the environment: `pseudonymise_key = "${PSEUDONYM_KEY}"`).
    pub key: Option<Secret>,
}

impl Privacy {
    pub fn is_empty(&self) -> bool {
        self.redact.is_empty() && self.pseudonymise.is_empty()
    }
}

/// The default S3 key template: the event's hour, or the Kafka message's when it has no
/// timestamp.
pub const DEFAULT_S3_KEY: &str = r#"{{date (default timestamp _kafka.timestamp) "%Y/%m/%d/%H"}}/"#;

/// How a sink turns an event into a record.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RenderSpec {
    /// A built-in format by name (`ndjson`, ...).
    Format(String),
    /// A handlebars template written inline.
    Template(String),
    /// A handlebars template read from a file (the path as configured).
    TemplateFile(PathBuf),
}

/// One glob or several (any may match).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum GlobList {
    One(String),
    Any(Vec<String>),
}

impl GlobList {
    pub fn patterns(&self) -> &[String] {
        match self {
            GlobList::One(p) => std::slice::from_ref(p),
            GlobList::Any(ps) => ps,
        }
    }
}

/// `[sinks.batch]`: a batch is sent when any limit is reached.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_events: usize,
    pub max_bytes: ByteSize,
    pub max_age: HumanDuration,
}

/// `[sinks.retry]`: exponential backoff with jitter for retryable delivery errors.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub initial_interval: HumanDuration,
    pub max_interval: HumanDuration,
    /// How long one batch is retried before the sink counts as broken.
    pub max_elapsed: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_interval: HumanDuration::from_millis(500),
            max_interval: HumanDuration::from_secs(60),
            max_elapsed: HumanDuration::from_secs(120),
        }
    }
}

/// The type-specific part of a sink.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    File(FileSinkConfig),
    Stdout(StdoutSinkConfig),
    S3(Box<S3SinkConfig>),
    Http(Box<HttpSinkConfig>),
}

/// The sink types, as written in `type = "..."`.
pub const SINK_TYPES: &[&str] = &["s3", "http", "file", "stdout"];

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::File(_) => "file",
            SinkKind::Stdout(_) => "stdout",
            SinkKind::S3(_) => "s3",
            SinkKind::Http(_) => "http",
        }
    }

    /// The batching defaults that suit this kind of destination: S3 objects are worth
    /// filling, HTTP endpoints want small and prompt requests.
    pub fn default_batch(type_name: &str) -> BatchConfig {
        match type_name {
            "s3" => BatchConfig {
                max_events: 10_000,
                max_bytes: ByteSize::mib(8),
                max_age: HumanDuration::from_secs(30),
            },
            "http" => BatchConfig {
                max_events: 1_000,
                max_bytes: ByteSize::mib(1),
                max_age: HumanDuration::from_secs(1),
            },
            _ => BatchConfig {
                max_events: 10_000,
                max_bytes: ByteSize::mib(8),
                max_age: HumanDuration::from_secs(1),
            },
        }
    }
}

/// A secret from the configuration (a password, a token, a key). It never appears in logs,
/// `Debug` output or serialised configuration.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Compression of what a sink sends.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

/// `type = "s3"`: one object per batch in an S3 bucket (or an S3-compatible store).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3SinkConfig {
    pub bucket: String,
    /// Default: the AWS default chain's region, else us-east-1.
    #[serde(default)]
    pub region: Option<String>,
    /// For S3-compatible stores (MinIO, Ceph, ...): `http://host:port`.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub force_path_style: bool,
    /// A fixed prefix for every object key (`audit/`).
    #[serde(default)]
    pub prefix: String,
    /// A template for the part of the key between the prefix and the file name, rendered on
    /// a batch's first event. Default: `{{date (default timestamp _kafka.timestamp) "%Y/%m/%d/%H"}}/`.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default = "default_s3_compression")]
    pub compression: Compression,
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default)]
    pub server_side_encryption: Option<ServerSideEncryption>,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub object_lock_mode: Option<ObjectLockMode>,
    #[serde(default)]
    pub object_lock_days: Option<u32>,
    /// Static credentials; without them the AWS default chain is used (environment, profile,
    /// web identity, instance metadata).
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// `when_supported` (the SDK's default CRC32 on every request) or `when_required` (for
    /// stores that reject it; Object Lock puts still carry one).
    #[serde(default)]
    pub checksum: ChecksumMode,
    /// Objects larger than this are sent as multipart uploads.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: ByteSize,
    #[serde(default = "default_multipart_part_size")]
    pub multipart_part_size: ByteSize,
    /// How long one request may take.
    #[serde(default = "default_s3_timeout")]
    pub timeout: HumanDuration,
    /// The start-up check: `head` (the bucket exists and we may see it), `put` (also write a
    /// small marker object), or `none`.
    #[serde(default)]
    pub health_check: HealthCheck,
}

fn default_s3_compression() -> Compression {
    Compression::Gzip
}
fn default_multipart_threshold() -> ByteSize {
    ByteSize::mib(64)
}
fn default_multipart_part_size() -> ByteSize {
    ByteSize::mib(16)
}
fn default_s3_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum ServerSideEncryption {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum ObjectLockMode {
    Governance,
    Compliance,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumMode {
    #[default]
    WhenSupported,
    WhenRequired,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheck {
    #[default]
    Head,
    Put,
    None,
}

/// `type = "http"`: batches sent to an HTTP endpoint (a SIEM, a log service, a webhook).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    pub url: String,
    #[serde(default)]
    pub method: HttpMethod,
    /// Extra request headers (values may use `${ENV}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub auth: Option<HttpAuth>,
    #[serde(default)]
    pub encoding: HttpEncoding,
    /// Request body compression: `none`, `gzip` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    #[serde(default = "default_http_timeout")]
    pub timeout: HumanDuration,
    /// A PEM file of CA certificates to trust (for a private CA), in addition to the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and key, for endpoints that require mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate. Only for tests; logs a warning at every start.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
    /// Requests in flight at once. More than 1 gives up order across requests.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Split batches so no request body (before compression) is larger than this.
    #[serde(default)]
    pub max_request_bytes: Option<ByteSize>,
}

fn default_http_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_concurrency() -> usize {
    1
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Post,
    Put,
}

/// How the records of a batch become request bodies.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HttpEncoding {
    /// One record per line (`application/x-ndjson`).
    #[default]
    Ndjson,
    /// `[record,record,...]` (`application/json`); records must be JSON.
    JsonArray,
    /// Records back to back with no separator, as Splunk HEC wants its events.
    Concatenated,
    /// One request per record.
    Single,
}

impl HttpEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpEncoding::Ndjson => "ndjson",
            HttpEncoding::JsonArray => "json_array",
            HttpEncoding::Concatenated => "concatenated",
            HttpEncoding::Single => "single",
        }
    }
}

/// `auth = { bearer = "..." }`, `{ basic = { user = "...", password = "..." } }` or
/// `{ splunk = "..." }` (`Authorization: Splunk <token>`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HttpAuth {
    Bearer(Secret),
    Basic { user: String, password: Secret },
    Splunk(Secret),
}

/// `type = "file"`: rendered records, one per line, fsynced before a batch counts as delivered.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file written to. Rotated files are renamed `<path>.000001`, `<path>.000002`, ...
    pub path: PathBuf,
    /// Rotate once the file reaches this size (default: never).
    #[serde(default)]
    pub rotate_bytes: Option<ByteSize>,
}

/// `type = "stdout"`: rendered records, one per line, on standard output.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

#[cfg(test)]
mod smtp_url_tests {
    use super::*;

    #[test]
    fn smtp_urls_say_how_to_use_tls_and_carry_credentials() {
        let s = SmtpSettings::parse("smtp://relay.example.com").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.tls),
            ("relay.example.com", 25, SmtpTls::Opportunistic)
        );
        assert!(s.user.is_none() && s.password.is_none());

        let s =
            SmtpSettings::parse("smtp://alerts%40corp:p%40ss%3Aw0rd@mail.corp:2525?tls=required")
                .unwrap();
        assert_eq!((s.port, s.tls), (2525, SmtpTls::Required));
        assert_eq!(s.user.as_deref(), Some("alerts@corp"));
        assert_eq!(s.password.unwrap().expose(), "p@ss:w0rd");

        let s = SmtpSettings::parse("smtp://127.0.0.1?tls=required").unwrap();
        assert_eq!(s.port, 587, "submission port when STARTTLS is required");
        let s = SmtpSettings::parse("smtps://mail.corp").unwrap();
        assert_eq!((s.port, s.tls), (465, SmtpTls::Implicit));
        let s = SmtpSettings::parse("smtp://localhost?tls=none").unwrap();
        assert_eq!(s.tls, SmtpTls::None);

        for bad in [
            "http://mail.corp",
            "smtps://mail.corp?tls=none",
            "smtp://",
            "mail.corp",
        ] {
            assert!(SmtpSettings::parse(bad).is_err(), "{bad} is refused");
        }
    }
}
