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
    pub sinks: Vec<SinkConfig>,
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
    /// pauses its partitions (and keeps polling) until half of them have finished.
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

/// `[park]`: the persistent sled store for quarantined events (and, later, parked batches).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParkConfig {
    pub path: PathBuf,
}

impl Default for ParkConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("var/park"),
        }
    }
}

/// One `[[sinks]]` entry: a destination with its template, filter, batching and retries.
#[derive(Debug, Clone, Serialize)]
pub struct SinkConfig {
    pub name: String,
    pub render: RenderSpec,
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
}

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
}

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::File(_) => "file",
            SinkKind::Stdout(_) => "stdout",
        }
    }

    /// The batching defaults that suit this kind of destination.
    pub fn default_batch(_type_name: &str) -> BatchConfig {
        BatchConfig {
            max_events: 10_000,
            max_bytes: ByteSize::mib(8),
            max_age: HumanDuration::from_secs(1),
        }
    }
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
