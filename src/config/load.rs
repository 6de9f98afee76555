//! Loading `auditstream.toml`: TOML text -> `${ENV}` interpolation -> typed [`Config`], with
//! every problem reported by key path (`sinks[1].batch.max_bytes`) and line.
//!
//! The steps, each collecting errors instead of stopping at the first:
//! 1. parse the text into a TOML table (a syntax error ends here, with its line);
//! 2. replace `${NAME}` / `${NAME:-default}` in every string value (`$${` writes a literal `${`);
//! 3. deserialize each section, and each sink, on its own, so one bad section does not hide the
//!    problems of the others (within a section the first problem is reported);
//! 4. check the rules that types cannot express (unique sink names, at most 63 sinks, ...).
//!
//! Line numbers come from a second, span-keeping parse of the same text with `toml_edit`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::*;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path such as `sinks[1].batch.max_bytes`; empty for the file as a whole.
    pub path: String,
    /// 1-based line in the file, where the key (or its nearest parent) is written.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path[..], self.line) {
            ("", Some(l)) => write!(f, "line {l}: {}", self.message),
            ("", None) => write!(f, "{}", self.message),
            (p, Some(l)) => write!(f, "{p} (line {l}): {}", self.message),
            (p, None) => write!(f, "{p}: {}", self.message),
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub origin: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} problem{}",
            self.origin,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// The most sinks one daemon runs: the offset tracker keeps one bit per sink (and one for the
/// quarantine) in a `u64`.
pub const MAX_SINKS: usize = 63;

/// Loads and checks a configuration file, interpolating from the process environment.
/// Relative paths inside it stay relative to the working directory, as users expect from a
/// daemon started by systemd or a container.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        origin: origin.clone(),
        errors: vec![ConfigError {
            path: String::new(),
            line: None,
            message: format!("cannot read the configuration file: {e}"),
        }],
    })?;
    parse_str(&text, &origin, &|name| std::env::var(name).ok())
}

/// Parses configuration text. `env` looks up `${NAME}` references.
pub fn parse_str(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut ctx = Loader {
        errors: Vec::new(),
        lines: LineIndex::new(text),
    };
    let config = ctx.load(text, env);
    match config {
        Some(c) if ctx.errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors {
            origin: origin.to_string(),
            errors: ctx.errors,
        }),
    }
}

/// A key path under construction.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyPath(Vec<Seg>);

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

impl KeyPath {
    pub(crate) fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    pub(crate) fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    fn extend(&self, path: &serde_path_to_error::Path) -> KeyPath {
        let mut p = self.clone();
        for seg in path.iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => p.0.push(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => p.0.push(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { variant } => {
                    p.0.push(Seg::Key(variant.clone()))
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) if k.contains('.') || k.is_empty() => write!(f, ".\"{k}\"")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Finds the line of a key path in the original text.
struct LineIndex {
    doc: Option<toml_edit::ImDocument<String>>,
    line_starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            doc: toml_edit::ImDocument::parse(text.to_string()).ok(),
            line_starts,
        }
    }

    fn line_of_offset(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// The line where the deepest existing part of `path` is written.
    fn line(&self, path: &KeyPath) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut item = doc.as_item();
        let mut best = None;
        for seg in &path.0 {
            let next = match seg {
                Seg::Key(k) => {
                    let key_span = match item {
                        toml_edit::Item::Table(t) => t.key(k).and_then(|k| k.span()),
                        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
                            t.key(k).and_then(|k| k.span())
                        }
                        _ => None,
                    };
                    let next = item.get(k.as_str());
                    if let Some(s) = key_span.or_else(|| next.and_then(|n| n.span())) {
                        best = Some(s.start);
                    }
                    next
                }
                Seg::Index(i) => {
                    let next = item.get(*i);
                    if let Some(s) = next.and_then(|n| n.span()) {
                        best = Some(s.start);
                    }
                    next
                }
            };
            match next {
                Some(n) => item = n,
                None => break,
            }
        }
        best.map(|o| self.line_of_offset(o))
    }
}

struct Loader {
    errors: Vec<ConfigError>,
    lines: LineIndex,
}

impl Loader {
    fn error(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_string(),
            line: self.lines.line(path),
            message: message.into(),
        });
    }

    fn load(&mut self, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<Config> {
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let e: toml::de::Error = e;
                let line = e.span().map(|s| self.lines.line_of_offset(s.start));
                self.errors.push(ConfigError {
                    path: String::new(),
                    line,
                    message: format!("not valid TOML: {}", e.message()),
                });
                return None;
            }
        };
        for (k, v) in table.iter_mut() {
            self.interpolate(v, &KeyPath::default().key(k), env);
        }

        let root = KeyPath::default();
        let mut kafka = None;
        let mut pipeline = Some(PipelineConfig::default());
        let mut park = Some(ParkConfig::default());
        let mut alerts = None;
        let mut integrity = None;
        let mut admin = Some(AdminConfig::default());
        let mut sinks = None;
        for (key, value) in table {
            let path = root.key(&key);
            match key.as_str() {
                "kafka" => kafka = self.typed::<KafkaConfig>(value, &path),
                "pipeline" => pipeline = self.typed(value, &path),
                "park" => park = self.typed(value, &path),
                "alerts" => alerts = Some(self.typed::<AlertsConfig>(value, &path)),
                "integrity" => integrity = Some(self.typed::<IntegrityConfig>(value, &path)),
                "admin" => admin = self.typed(value, &path),
                "sinks" => sinks = self.sinks(value, &path),
                other => self.error(
                    &path,
                    format!(
                        "unknown section `{other}`; expected one of kafka, pipeline, park, alerts, integrity, admin, sinks"
                    ),
                ),
            }
        }
        if kafka.is_none() && !self.errors.iter().any(|e| e.path.starts_with("kafka")) {
            self.error(&root.key("kafka"), "missing: a [kafka] section is required");
        }
        if sinks.is_none() && !self.errors.iter().any(|e| e.path.starts_with("sinks")) {
            self.error(
                &root.key("sinks"),
                "missing: at least one [[sinks]] is required",
            );
        }
        let alerts = match alerts {
            Some(parsed) => Some(parsed?),
            None => None,
        };
        let integrity = match integrity {
            Some(parsed) => Some(parsed?),
            None => None,
        };
        let config = Config {
            kafka: kafka?,
            pipeline: pipeline?,
            park: park?,
            alerts,
            integrity,
            admin: admin?,
            sinks: sinks?,
        };
        self.check(&config);
        Some(config)
    }

    /// Replaces `${NAME}` and `${NAME:-default}` in every string below `value`.
    fn interpolate(
        &mut self,
        value: &mut toml::Value,
        path: &KeyPath,
        env: &dyn Fn(&str) -> Option<String>,
    ) {
        match value {
            toml::Value::String(s) => match interpolate_str(s, env) {
                Ok(new) => *s = new,
                Err(msg) => self.error(path, msg),
            },
            toml::Value::Array(items) => {
                for (i, v) in items.iter_mut().enumerate() {
                    self.interpolate(v, &path.index(i), env);
                }
            }
            toml::Value::Table(t) => {
                for (k, v) in t.iter_mut() {
                    self.interpolate(v, &path.key(k), env);
                }
            }
            _ => {}
        }
    }

    /// Deserializes one part of the tree, recording the first problem in it by path.
    fn typed<T: DeserializeOwned>(&mut self, value: toml::Value, path: &KeyPath) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let at = path.extend(e.path());
                self.error(&at, e.inner().message());
                None
            }
        }
    }

    fn sinks(&mut self, value: toml::Value, path: &KeyPath) -> Option<Vec<SinkConfig>> {
        let toml::Value::Array(items) = value else {
            self.error(path, "`sinks` must be an array of tables: write [[sinks]]");
            return None;
        };
        if items.is_empty() {
            self.error(path, "at least one [[sinks]] is required");
            return None;
        }
        let n = items.len();
        let parsed: Vec<_> = items
            .into_iter()
            .enumerate()
            .map(|(i, v)| self.sink(v, &path.index(i)))
            .collect();
        let sinks: Vec<SinkConfig> = parsed.into_iter().flatten().collect();
        (sinks.len() == n).then_some(sinks)
    }

    fn sink(&mut self, value: toml::Value, path: &KeyPath) -> Option<SinkConfig> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Common {
            name: String,
            #[serde(rename = "type")]
            kind: String,
            format: Option<String>,
            template: Option<String>,
            template_file: Option<PathBuf>,
            #[serde(default)]
            format_options: BTreeMap<String, String>,
            #[serde(default)]
            redact: Vec<String>,
            #[serde(default)]
            pseudonymise: Vec<String>,
            pseudonymise_key: Option<Secret>,
            #[serde(default)]
            filter: BTreeMap<String, GlobList>,
            #[serde(default)]
            batch: PartialBatch,
            #[serde(default)]
            retry: RetryConfig,
        }
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct PartialBatch {
            max_events: Option<usize>,
            max_bytes: Option<ByteSize>,
            max_age: Option<HumanDuration>,
        }
        const COMMON: &[&str] = &[
            "name",
            "type",
            "format",
            "template",
            "template_file",
            "format_options",
            "redact",
            "pseudonymise",
            "pseudonymise_key",
            "filter",
            "batch",
            "retry",
        ];

        let toml::Value::Table(table) = value else {
            self.error(path, "each [[sinks]] entry must be a table");
            return None;
        };
        let (common, specific): (toml::Table, toml::Table) = table
            .into_iter()
            .partition(|(k, _)| COMMON.contains(&k.as_str()));
        let common: Common = self.typed(toml::Value::Table(common), path)?;
        let kind = match common.kind.as_str() {
            "file" => SinkKind::File(self.typed(toml::Value::Table(specific), path)?),
            "stdout" => SinkKind::Stdout(self.typed(toml::Value::Table(specific), path)?),
            "s3" => SinkKind::S3(Box::new(self.typed(toml::Value::Table(specific), path)?)),
            "http" => SinkKind::Http(Box::new(self.typed(toml::Value::Table(specific), path)?)),
            other => {
                self.error(
                    &path.key("type"),
                    format!(
                        "unknown sink type `{other}`; expected one of {}",
                        SINK_TYPES.join(", ")
                    ),
                );
                return None;
            }
        };
        let render = match (common.format, common.template, common.template_file) {
            (None, None, None) => RenderSpec::Format("ndjson".into()),
            (Some(f), None, None) => RenderSpec::Format(f),
            (None, Some(t), None) => RenderSpec::Template(t),
            (None, None, Some(p)) => RenderSpec::TemplateFile(p),
            _ => {
                self.error(
                    path,
                    "give at most one of `format`, `template` and `template_file`",
                );
                return None;
            }
        };
        let defaults = SinkKind::default_batch(kind.type_name());
        let batch = BatchConfig {
            max_events: common.batch.max_events.unwrap_or(defaults.max_events),
            max_bytes: common.batch.max_bytes.unwrap_or(defaults.max_bytes),
            max_age: common.batch.max_age.unwrap_or(defaults.max_age),
        };
        Some(SinkConfig {
            name: common.name,
            render,
            format_options: common.format_options,
            privacy: Privacy {
                redact: common.redact,
                pseudonymise: common.pseudonymise,
                key: common.pseudonymise_key,
            },
            filter: common.filter,
            batch,
            retry: common.retry,
            kind,
        })
    }

    /// Rules across fields that serde cannot check.
    fn check(&mut self, c: &Config) {
        let root = KeyPath::default();
        let kafka = root.key("kafka");
        if c.kafka.brokers.trim().is_empty() {
            self.error(&kafka.key("brokers"), "must name at least one broker");
        }
        if c.kafka.topics.is_empty() {
            self.error(&kafka.key("topics"), "must name at least one topic");
        }
        for key in c.kafka.properties.keys() {
            let why = match key.as_str() {
                "bootstrap.servers" | "metadata.broker.list" => Some("set `kafka.brokers` instead"),
                "group.id" => Some("set `kafka.group_id` instead"),
                "enable.auto.offset.store" | "enable.auto.commit" => Some(
                    "auditstream stores and commits offsets itself, only for events every sink has finished",
                ),
                _ => None,
            };
            if let Some(why) = why {
                self.error(
                    &kafka.key("properties").key(key),
                    format!("`{key}` cannot be set here: {why}"),
                );
            }
        }
        let pipeline = root.key("pipeline");
        if c.pipeline.max_in_flight_events == 0 {
            self.error(&pipeline.key("max_in_flight_events"), "must be at least 1");
        }
        if c.pipeline.max_event_bytes.bytes() == 0 {
            self.error(&pipeline.key("max_event_bytes"), "must be more than 0");
        }
        if let Some(i) = &c.integrity {
            let p = root.key("integrity");
            if let Err(e) = i.seed() {
                self.error(&p.key("signing_key"), e);
            }
            if i.digest_interval.get().is_zero() {
                self.error(&p.key("digest_interval"), "must be more than 0");
            }
            if let Some(chain) = &i.chain {
                if chain.is_empty()
                    || !chain
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
                {
                    self.error(&p.key("chain"), "use letters, digits, `-`, `_` and `.`");
                }
            }
        }
        if let Some(a) = &c.alerts {
            let p = root.key("alerts");
            if a.to.is_empty() {
                self.error(&p.key("to"), "name at least one recipient");
            }
            for (i, addr) in a.to.iter().enumerate() {
                if addr.parse::<lettre::Address>().is_err() {
                    self.error(
                        &p.key("to").index(i),
                        format!("`{addr}` is not an email address"),
                    );
                }
            }
            if a.from.parse::<lettre::message::Mailbox>().is_err() {
                self.error(
                    &p.key("from"),
                    format!("`{}` is not an email address", a.from),
                );
            }
            if let Some(u) = &a.smtp_url {
                if let Err(e) = SmtpSettings::parse(u.expose()) {
                    self.error(&p.key("smtp_url"), e);
                }
            }
        }
        if c.admin.enabled && c.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            self.error(
                &root.key("admin").key("listen"),
                format!(
                    "`{}` is not an address such as 127.0.0.1:9600",
                    c.admin.listen
                ),
            );
        }
        if c.sinks.len() > MAX_SINKS {
            self.error(
                &root.key("sinks"),
                format!("at most {MAX_SINKS} sinks per daemon (run a second daemon with another group_id for more)"),
            );
        }
        let mut names = HashSet::new();
        for (i, s) in c.sinks.iter().enumerate() {
            let p = root.key("sinks").index(i);
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                self.error(
                    &p.key("name"),
                    format!(
                        "`{}` is not a valid sink name: use letters, digits, `-` and `_`",
                        s.name
                    ),
                );
            } else if !names.insert(s.name.as_str()) {
                self.error(
                    &p.key("name"),
                    format!("another sink is already named `{}`", s.name),
                );
            }
            if s.batch.max_events == 0 {
                self.error(&p.key("batch").key("max_events"), "must be at least 1");
            }
            if s.batch.max_bytes.bytes() == 0 {
                self.error(&p.key("batch").key("max_bytes"), "must be more than 0");
            }
            if s.retry.initial_interval > s.retry.max_interval {
                self.error(
                    &p.key("retry").key("initial_interval"),
                    "must not be longer than `max_interval`",
                );
            }
            for (field, globs) in &s.filter {
                if globs.patterns().is_empty() {
                    self.error(&p.key("filter").key(field), "give at least one pattern");
                }
            }
            if !s.privacy.pseudonymise.is_empty()
                && s.privacy
                    .key
                    .as_ref()
                    .is_none_or(|k| k.expose().chars().count() < 16)
            {
                self.error(
                    &p.key("pseudonymise_key"),
                    "`pseudonymise` needs a key of at least 16 characters, e.g. pseudonymise_key = \"${AUDITSTREAM_PSEUDONYM_KEY}\"",
                );
            }
            for (list, key) in [
                (&s.privacy.redact, "redact"),
                (&s.privacy.pseudonymise, "pseudonymise"),
            ] {
                if let Some(bad) = list
                    .iter()
                    .find(|f| f.is_empty() || f.split('.').any(str::is_empty))
                {
                    self.error(
                        &p.key(key),
                        format!(
                            "`{bad}` is not a field path such as `metadata.ip` or `changes.*.old`"
                        ),
                    );
                }
            }
            if !s.format_options.is_empty() && !matches!(s.render, RenderSpec::Format(_)) {
                self.error(
                    &p.key("format_options"),
                    "only applies with `format`: a template takes no options",
                );
            }
            if let (RenderSpec::Format(name), SinkKind::Http(h)) = (&s.render, &s.kind) {
                if let Some(crate::template::formats::Format::Template(f)) =
                    crate::template::formats::lookup(name)
                {
                    if let Some(needed) = f.needs_encoding {
                        if h.encoding.as_str() != needed {
                            self.error(
                                &p.key("encoding"),
                                format!("format `{name}` sends a JSON array of records: set encoding = \"{needed}\""),
                            );
                        }
                    }
                }
            }
            match &s.kind {
                SinkKind::File(f) => {
                    if f.rotate_bytes.is_some_and(|b| b.bytes() == 0) {
                        self.error(&p.key("rotate_bytes"), "must be more than 0");
                    }
                }
                SinkKind::S3(c) => self.check_s3(c, &p),
                SinkKind::Http(c) => self.check_http(c, &p),
                SinkKind::Stdout(_) => {}
            }
        }
    }
}

impl Loader {
    fn check_s3(&mut self, c: &S3SinkConfig, p: &KeyPath) {
        if c.bucket.is_empty() {
            self.error(&p.key("bucket"), "must name a bucket");
        }
        if c.prefix.starts_with('/') || c.prefix.split('/').any(|s| s == "..") {
            self.error(&p.key("prefix"), "must not start with `/` or contain `..`");
        }
        if c.kms_key_id.is_some() && c.server_side_encryption != Some(ServerSideEncryption::AwsKms)
        {
            self.error(
                &p.key("kms_key_id"),
                "only applies with server_side_encryption = \"aws:kms\"",
            );
        }
        match (c.object_lock_mode, c.object_lock_days) {
            (Some(_), None) => self.error(
                &p.key("object_lock_days"),
                "object_lock_mode needs object_lock_days (the retention per object)",
            ),
            (None, Some(_)) => self.error(
                &p.key("object_lock_mode"),
                "object_lock_days needs object_lock_mode (GOVERNANCE or COMPLIANCE)",
            ),
            (Some(_), Some(0)) => self.error(&p.key("object_lock_days"), "must be at least 1"),
            _ => {}
        }
        if c.access_key_id.is_some() != c.secret_access_key.is_some() {
            self.error(
                &p.key("secret_access_key"),
                "give both access_key_id and secret_access_key, or neither (then the AWS default chain is used)",
            );
        }
        if c.multipart_part_size < ByteSize::mib(5) {
            self.error(
                &p.key("multipart_part_size"),
                "S3 needs parts of at least 5MiB",
            );
        }
        if let Some(e) = &c.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                self.error(&p.key("endpoint"), "must start with http:// or https://");
            }
        }
    }

    fn check_http(&mut self, c: &HttpSinkConfig, p: &KeyPath) {
        match reqwest::Url::parse(&c.url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(_) => self.error(&p.key("url"), "must be an http:// or https:// URL"),
            Err(e) => self.error(&p.key("url"), format!("not a URL: {e}")),
        }
        if c.concurrency == 0 {
            self.error(&p.key("concurrency"), "must be at least 1");
        }
        if c.client_cert.is_some() != c.client_key.is_some() {
            self.error(
                &p.key("client_key"),
                "give both client_cert and client_key for mutual TLS",
            );
        }
        if c.max_request_bytes.is_some_and(|b| b.bytes() == 0) {
            self.error(&p.key("max_request_bytes"), "must be more than 0");
        }
        for name in c.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error(&p.key("headers").key(name), "not a valid header name");
            }
        }
    }
}

/// Finds lines for key paths in a configuration text; used for errors found after loading,
/// such as template compile errors.
pub struct Locator(LineIndex);

impl Locator {
    pub fn new(text: &str) -> Self {
        Self(LineIndex::new(text))
    }

    /// Builds an error for the sink option `sinks[index].key`.
    pub fn sink_error(&self, index: usize, key: &str, message: impl Into<String>) -> ConfigError {
        let path = KeyPath::default().key("sinks").index(index).key(key);
        ConfigError {
            line: self.0.line(&path),
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// Builds an error for a top-level option such as `pipeline.sample_event`.
    pub fn error(&self, section: &str, key: &str, message: impl Into<String>) -> ConfigError {
        let path = KeyPath::default().key(section).key(key);
        ConfigError {
            line: self.0.line(&path),
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// `${NAME}`, `${NAME:-default}` (default also when NAME is empty, as in the shell), `$${` for a
/// literal `${`.
pub fn interpolate_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{expr}}}` is not a valid reference: write ${{NAME}} or ${{NAME:-default}}"
                ));
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "BROKERS" => Some("kafka-1:9092".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    const MINIMAL: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
topics = ["audit-events"]

[[sinks]]
name = "archive"
type = "file"
path = "out/archive.ndjson"
"#;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_str(text, "test.toml", &env)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.kafka.group_id, "auditstream");
        assert_eq!(c.pipeline.max_in_flight_events, 50_000);
        assert_eq!(c.sinks[0].render, RenderSpec::Format("ndjson".into()));
        assert_eq!(c.sinks[0].batch.max_events, 10_000);
    }

    #[test]
    fn interpolation_forms() {
        assert_eq!(interpolate_str("${BROKERS}", &env).unwrap(), "kafka-1:9092");
        assert_eq!(interpolate_str("x${NOPE:-d}y", &env).unwrap(), "xdy");
        assert_eq!(interpolate_str("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(interpolate_str("$${BROKERS}", &env).unwrap(), "${BROKERS}");
        assert_eq!(interpolate_str("cost $5", &env).unwrap(), "cost $5");
        assert!(interpolate_str("${NOPE}", &env)
            .unwrap_err()
            .contains("NOPE"));
        assert!(interpolate_str("${BROKERS", &env).is_err());
        assert!(interpolate_str("${1X}", &env).is_err());
    }

    #[test]
    fn every_problem_is_named_with_path_and_line() {
        let text = r#"
[kafka]
brokers = "${MISSING_BROKERS}"
topics = ["a"]
colour = "blue"

[pipeline]
max_event_bytes = "lots"

[[sinks]]
name = "one"
type = "file"
path = "a.log"
[sinks.batch]
max_age = "soon"

[[sinks]]
name = "two"
type = "file"
path = "b.log"
rotate_bytes = "1MiB"
bucket = "nope"
"#;
        let errs = parse(text).unwrap_err().errors;
        let find = |p: &str| {
            errs.iter()
                .find(|e| e.path == p)
                .unwrap_or_else(|| panic!("no error at {p}: {errs:#?}"))
        };
        let e = find("kafka.brokers");
        assert!(e.message.contains("MISSING_BROKERS"));
        assert_eq!(e.line, Some(3));
        assert_eq!(find("kafka.colour").line, Some(5));
        let e = find("pipeline.max_event_bytes");
        assert_eq!(e.line, Some(8));
        assert!(e.message.contains("invalid size"));
        let e = find("sinks[0].batch.max_age");
        assert_eq!(e.line, Some(15));
        assert!(e.message.contains("invalid duration"), "{}", e.message);
        let e = find("sinks[1].bucket");
        assert_eq!(e.line, Some(22));
        assert!(e.message.contains("unknown field"));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let errs = parse("[kafka]\nbrokers = \"x\"\ntopics = [\n")
            .unwrap_err()
            .errors;
        assert_eq!(errs.len(), 1);
        assert!(errs[0].line.is_some());
        assert!(errs[0].message.contains("not valid TOML"));
    }

    #[test]
    fn rules_across_fields() {
        let text = format!(
            "{MINIMAL}\n[[sinks]]\nname = \"archive\"\ntype = \"stdout\"\n[kafka.properties]\n\"enable.auto.offset.store\" = true\n"
        );
        let errs = parse(&text).unwrap_err().errors;
        assert!(errs.iter().any(|e| e.path == "sinks[1].name"), "{errs:?}");
        assert!(
            errs.iter()
                .any(|e| e.path == "kafka.properties.\"enable.auto.offset.store\""),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_sink_type_and_section() {
        let text = MINIMAL.replace("type = \"file\"", "type = \"ftp\"") + "\n[extras]\nx = 1\n";
        let errs = parse(&text).unwrap_err().errors;
        assert!(errs.iter().any(|e| e.path == "sinks[0].type"), "{errs:?}");
        assert!(errs.iter().any(|e| e.path == "extras"), "{errs:?}");
    }
}
