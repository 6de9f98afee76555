//! The commands behind `auditstream <command>`: one function each, returning the exit code the
//! contract gives (0 fine, 1 runtime failure, 2 usage or configuration error). Anything meant
//! for a script goes to stdout; logs and progress go to stderr.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::load::Locator;
use crate::config::{parse_str, Config, ConfigError, ConfigErrors, SinkKind};
use crate::decode::decode;
use crate::event::{Coords, RawMessage};
use crate::park::Store;
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;
use crate::template::{sample, Templates};

/// Exit codes of the contract.
pub const OK: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;

/// Loads a configuration file and compiles (and test-renders) its templates.
pub fn load(path: &Path) -> Result<(Config, Templates), ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        origin: origin.clone(),
        errors: vec![ConfigError {
            path: String::new(),
            line: None,
            message: format!("cannot read the configuration file: {e}"),
        }],
    })?;
    compile(&text, &origin, &|name| std::env::var(name).ok())
}

/// Parses a configuration's text and compiles its templates.
fn compile(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Templates), ConfigErrors> {
    let origin = origin.to_string();
    let config = parse_str(text, &origin, env)?;
    let locator = Locator::new(text);
    let sample = match &config.pipeline.sample_event {
        Some(p) => sample::from_file(p).map_err(|e| ConfigErrors {
            origin: origin.clone(),
            errors: vec![locator.error("pipeline", "sample_event", e)],
        })?,
        None => sample::builtin(),
    };
    let templates = Templates::compile(&config.sinks, &sample, &locator)
        .map_err(|errors| ConfigErrors { origin, errors })?;
    Ok((config, templates))
}

fn load_or_report(path: &Path) -> Result<(Config, Templates), ExitCode> {
    load(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(USAGE)
    })
}

/// Logged by `run` once SIGINT and SIGTERM stop it gracefully; before that line, a signal
/// ends the process with the default action. Tests that send signals wait for it.
pub const SIGNALS_HANDLED: &str = "signals handled";

/// `auditstream run`: the daemon.
pub async fn run(path: &Path) -> ExitCode {
    let (config, templates) = match load_or_report(path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.on_signals() {
        tracing::error!(error = %e, "cannot listen for signals");
        return ExitCode::from(FAILURE);
    }
    tracing::info!("{SIGNALS_HANDLED}: SIGINT or SIGTERM stops gracefully, a second one at once");
    let result = match Pipeline::build(config, templates).await {
        Ok(p) => {
            // After a failed park write (a full disk) the daemon restarts itself in place once
            // there is room again (park/mod.rs, "A full disk"); this returns only if it cannot.
            let store = p.store();
            tokio::select! {
                r = p.run(shutdown) => r,
                e = store.restart_when_space_returns() => {
                    tracing::error!(error = %e, "cannot restart in place after the park store failed");
                    // Dropping the failed store could block forever.
                    std::process::exit(FAILURE.into());
                }
            }
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::from(OK)
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "auditstream failed");
            ExitCode::from(FAILURE)
        }
    }
}

/// `auditstream validate`: prints `ok` or every problem.
pub fn validate(path: &Path) -> ExitCode {
    match load(path) {
        Ok(_) => {
            println!("ok");
            ExitCode::from(OK)
        }
        Err(e) => {
            print!("{e}");
            ExitCode::from(USAGE)
        }
    }
}

/// `auditstream render`: prints exactly what a sink would send for one event.
pub fn render(path: &Path, sink: &str, event: Option<&str>) -> ExitCode {
    let (config, templates) = match load_or_report(path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some(index) = config.sinks.iter().position(|s| s.name == sink) else {
        let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        eprintln!(
            "no sink named `{sink}`; the sinks are: {}",
            names.join(", ")
        );
        return ExitCode::from(USAGE);
    };
    render_with(&config, &templates, index, event)
}

/// Prints what the sink at `index` would send for `event`.
fn render_with(
    config: &Config,
    templates: &Templates,
    index: usize,
    event: Option<&str>,
) -> ExitCode {
    let payload = match read_event(event) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(USAGE);
        }
    };
    let msg = RawMessage {
        coords: Coords {
            topic: config
                .kafka
                .topics
                .first()
                .map(String::as_str)
                .unwrap_or("audit-events")
                .into(),
            partition: 0,
            offset: 0,
        },
        timestamp_ms: Some(chrono::Utc::now().timestamp_millis()),
        key: None,
        headers: vec![],
        payload: Some(payload.into()),
    };
    let event = match decode(msg, config.pipeline.max_event_bytes.as_usize()) {
        Ok(e) => e,
        Err(rejected) => {
            eprintln!("the event would be quarantined: {}", rejected.why);
            return ExitCode::from(USAGE);
        }
    };
    let redactor = crate::redact::Redactor::new(&config.sinks[index].privacy);
    let body = match templates.render_redacted(index, redactor.as_ref(), &event) {
        Ok(body) => body,
        Err(e) => {
            eprintln!(
                "sink `{}` cannot render this event (it would be quarantined): {e}",
                config.sinks[index].name
            );
            return ExitCode::from(USAGE);
        }
    };
    // The event as a batch of one, encoded as the sink encodes a batch.
    let mut batch = crate::batch::Batch::new(
        event.coords.topic_partition(),
        templates
            .render_key(index, &event)
            .map(|k| k.unwrap_or_else(|_| "unrendered-key/".into())),
    );
    batch.push(crate::batch::Record {
        offset: event.coords.offset,
        body,
    });
    let bytes = match &config.sinks[index].kind {
        SinkKind::Http(h) => crate::sink::http::encode_body(h.encoding, &batch.records),
        SinkKind::S3(c) => {
            eprintln!("object key: {}", crate::sink::s3::object_key(c, &batch));
            if c.compression != crate::config::Compression::None {
                eprintln!("(shown before {:?} compression)", c.compression);
            }
            line(&batch.records[0].body)
        }
        SinkKind::File(_) | SinkKind::Stdout(_) => line(&batch.records[0].body),
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(&bytes).and_then(|_| out.flush()) {
        Ok(()) => ExitCode::from(OK),
        Err(_) => ExitCode::from(FAILURE),
    }
}

/// `render --format NAME`: a built-in format on an event, or (`--print-template`) its template.
pub fn render_format(name: &str, print_template: bool, event: Option<&str>) -> ExitCode {
    use crate::template::formats::{self, Format};
    let Some(format) = formats::lookup(name) else {
        eprintln!(
            "no built-in format `{name}`; they are: {}",
            formats::names().join(", ")
        );
        return ExitCode::from(USAGE);
    };
    if print_template {
        let text = match format {
            Format::Passthrough => {
                eprintln!("`{name}` is the event exactly as it came; it has no template");
                return ExitCode::from(USAGE);
            }
            Format::Template(t) => match t.expand(&Default::default()) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(FAILURE);
                }
            },
        };
        println!("{text}");
        return ExitCode::from(OK);
    }
    // The format as the one sink of a minimal configuration.
    let text = format!(
        "[kafka]\nbrokers = \"-\"\ntopics = [\"audit-events\"]\n[[sinks]]\nname = \"{name}\"\ntype = \"stdout\"\nformat = \"{name}\"\n"
    );
    match compile(&text, "--format", &|_| None) {
        Ok((config, templates)) => render_with(&config, &templates, 0, event),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(FAILURE)
        }
    }
}

/// One record as a line.
fn line(body: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 1);
    v.extend_from_slice(body.as_bytes());
    v.push(b'\n');
    v
}

/// The event for `render`: a file, `-` for stdin, or the built-in sample.
fn read_event(source: Option<&str>) -> Result<Vec<u8>, String> {
    match source {
        None => {
            let mut v = sample::builtin();
            if let Some(o) = v.as_object_mut() {
                o.remove("_kafka");
            }
            Ok(v.to_string().into_bytes())
        }
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading the event from stdin: {e}"))?;
            Ok(buf)
        }
        Some(path) => std::fs::read(path).map_err(|e| format!("reading {path}: {e}")),
    }
}

/// `auditstream demo`.
pub async fn demo(
    events: usize,
    out: PathBuf,
    brokers: Option<String>,
    outage: std::time::Duration,
) -> ExitCode {
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.on_signals() {
        eprintln!("cannot listen for signals: {e}");
        return ExitCode::from(FAILURE);
    }
    match crate::demo::run(
        crate::demo::DemoOptions {
            events,
            out,
            brokers,
            outage,
        },
        shutdown,
    )
    .await
    {
        Ok(()) => ExitCode::from(OK),
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::from(FAILURE)
        }
    }
}

/// Where the offline commands read from: the store itself, or a running daemon's admin API
/// (the store is single-process, so while the daemon runs it holds the store).
enum Access {
    Local(Config, Store),
    Daemon(Config, crate::admin::client::AdminClient),
}

fn access(path: &Path) -> Result<Access, ExitCode> {
    let (config, _) = load_or_report(path)?;
    match Store::open(&config.park.path) {
        Ok(store) => Ok(Access::Local(config, store)),
        Err(crate::park::StoreError::InUse { .. }) if config.admin.enabled => {
            match crate::admin::client::AdminClient::new(&config.admin) {
                Ok(c) => {
                    eprintln!("the daemon holds the park store; asking it at {}", c.base());
                    Ok(Access::Daemon(config, c))
                }
                Err(e) => {
                    eprintln!("{e}");
                    Err(ExitCode::from(FAILURE))
                }
            }
        }
        Err(e) => {
            eprintln!("{e}");
            if matches!(e, crate::park::StoreError::InUse { .. }) {
                eprintln!("the daemon's admin API is disabled (admin.enabled = false): stop the daemon to use this command");
            }
            Err(ExitCode::from(FAILURE))
        }
    }
}

/// Runs an admin API call from a synchronous command.
fn remote<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> Result<T, ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(FAILURE)
        })?;
    rt.block_on(f).map_err(|e| {
        eprintln!("{e:#}");
        ExitCode::from(FAILURE)
    })
}

fn write_out(out: Option<&PathBuf>, bytes: &[u8]) -> Result<(), ExitCode> {
    let result = match out {
        Some(p) => std::fs::write(p, bytes),
        None => std::io::stdout().lock().write_all(bytes),
    };
    result.map_err(|e| {
        eprintln!("writing the export: {e}");
        ExitCode::from(FAILURE)
    })
}

fn exit(r: Result<ExitCode, ExitCode>) -> ExitCode {
    r.unwrap_or_else(|c| c)
}

fn quarantine_line(seq: u64, e: &crate::park::quarantine::QuarantineEntry) -> String {
    format!(
        "{seq:>6}  {}  {:<10} {}/{}@{}  {}: {}\n",
        e.quarantined_at,
        e.sink.as_deref().unwrap_or("(decode)"),
        e.topic,
        e.partition,
        e.offset,
        e.kind,
        e.reason
    )
}

/// `auditstream quarantine list`: one line per quarantined message.
pub fn quarantine_list(path: &Path, limit: Option<usize>) -> ExitCode {
    exit((|| {
        let mut out = std::io::stdout().lock();
        match access(path)? {
            Access::Daemon(_, c) => {
                let v = remote(c.get_json(&format!(
                    "/quarantine?limit={}",
                    limit.unwrap_or(usize::MAX)
                )))?;
                for e in v["quarantined"]
                    .as_array()
                    .map(|a| a.as_slice())
                    .unwrap_or_default()
                {
                    let Ok(entry) = serde_json::from_value::<
                        crate::park::quarantine::QuarantineEntry,
                    >(e.clone()) else {
                        continue;
                    };
                    let line = quarantine_line(e["entry"].as_u64().unwrap_or(0), &entry);
                    let _ = out.write_all(line.as_bytes());
                }
                eprintln!("{} quarantined messages", v["total"]);
                Ok(ExitCode::from(OK))
            }
            Access::Local(_, store) => {
                let (mut shown, mut total, mut damaged) = (0, 0, 0);
                for item in store.quarantine_entries() {
                    match item {
                        Ok((seq, e)) => {
                            total += 1;
                            if limit.is_some_and(|l| shown >= l) {
                                continue;
                            }
                            shown += 1;
                            let line = quarantine_line(seq, &e);
                            if out.write_all(line.as_bytes()).is_err() {
                                return Err(ExitCode::from(FAILURE));
                            }
                        }
                        Err(e) => {
                            damaged += 1;
                            eprintln!("{e}");
                        }
                    }
                }
                eprintln!(
                    "{total} quarantined message{} in {}{}",
                    if total == 1 { "" } else { "s" },
                    store.path().display(),
                    if damaged > 0 {
                        format!(", {damaged} damaged entries")
                    } else {
                        String::new()
                    }
                );
                Ok(ExitCode::from(if damaged > 0 { FAILURE } else { OK }))
            }
        }
    })())
}

/// `auditstream quarantine export`: every entry as one JSON object per line.
pub fn quarantine_export(path: &Path, out: Option<&PathBuf>) -> ExitCode {
    exit((|| {
        let (bytes, n, damaged) = match access(path)? {
            Access::Daemon(_, c) => {
                let b = remote(c.get_bytes("/quarantine/export"))?;
                let n = b.iter().filter(|x| **x == b'\n').count();
                (b, n, 0)
            }
            Access::Local(_, store) => {
                let (mut b, mut n, mut damaged) = (Vec::new(), 0, 0);
                for item in store.quarantine_entries() {
                    match item {
                        Ok((_, e)) => {
                            if serde_json::to_writer(&mut b, &e).is_err() {
                                return Err(ExitCode::from(FAILURE));
                            }
                            b.push(b'\n');
                            n += 1;
                        }
                        Err(e) => {
                            damaged += 1;
                            eprintln!("{e}");
                        }
                    }
                }
                (b, n, damaged)
            }
        };
        write_out(out, &bytes)?;
        eprintln!("exported {n} entries");
        Ok(ExitCode::from(if damaged > 0 { FAILURE } else { OK }))
    })())
}

fn known_sink(config: &Config, store: Option<&Store>, sink: &str) -> Result<(), ExitCode> {
    let in_config = config.sinks.iter().any(|s| s.name == sink);
    let in_store = store.is_some_and(|st| st.sinks_with_parks().iter().any(|s| s == sink));
    if in_config || in_store {
        Ok(())
    } else {
        eprintln!("no sink named `{sink}` in the configuration or the park");
        Err(ExitCode::from(USAGE))
    }
}

fn open_park(store: &Store, sink: &str) -> Result<crate::park::SinkPark, ExitCode> {
    store.sink_park(sink).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(FAILURE)
    })
}

fn when(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

fn parked_row(
    name: &str,
    entries: u64,
    events: u64,
    bytes: u64,
    oldest: &str,
    newest: &str,
    last_error: &str,
) -> String {
    format!("{name:<16} {entries:>8} {events:>10} {bytes:>12}  {oldest:<20}  {newest:<20}  {last_error}")
}

/// `auditstream parked list`: per sink, what is parked.
pub fn parked_list(path: &Path) -> ExitCode {
    exit((|| {
        println!(
            "{:<16} {:>8} {:>10} {:>12}  {:<20}  {:<20}  last error",
            "sink", "entries", "events", "bytes", "oldest", "newest"
        );
        match access(path)? {
            Access::Daemon(_, c) => {
                let v = remote(c.get_json("/status"))?;
                for s in v["sinks"]
                    .as_array()
                    .map(|a| a.as_slice())
                    .unwrap_or_default()
                {
                    println!(
                        "{}",
                        parked_row(
                            s["name"].as_str().unwrap_or(""),
                            s["parked_entries"].as_u64().unwrap_or(0),
                            s["parked_events"].as_u64().unwrap_or(0),
                            s["parked_bytes"].as_u64().unwrap_or(0),
                            s["oldest_parked_at"].as_str().unwrap_or("-"),
                            s["newest_parked_at"].as_str().unwrap_or("-"),
                            s["last_error"].as_str().unwrap_or(""),
                        )
                    );
                }
                Ok(ExitCode::from(OK))
            }
            Access::Local(config, store) => {
                let mut names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
                for n in store.sinks_with_parks() {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                let mut code = OK;
                for name in names {
                    let park = match store.sink_park(&name) {
                        Ok(p) => p,
                        Err(e) => {
                            eprintln!("{name}: {e}");
                            code = FAILURE;
                            continue;
                        }
                    };
                    let c = park.counts();
                    let newest = park.newest().ok().flatten().map(|(_, h)| h.parked_at_ms);
                    let last_error = park
                        .headers(1)
                        .ok()
                        .and_then(|h| h.into_iter().next())
                        .and_then(|(_, h)| h.last_error)
                        .unwrap_or_default();
                    println!(
                        "{}",
                        parked_row(
                            &name,
                            c.entries(),
                            c.events(),
                            c.bytes(),
                            &when(c.oldest_ms()),
                            &when(newest),
                            &last_error
                        )
                    );
                }
                Ok(ExitCode::from(code))
            }
        }
    })())
}

fn print_header(seq: u64, h: &crate::park::ParkedHeader) {
    println!(
        "{seq:>6}  parked {}  {}/{}@{}..{}  {} events  {} bytes  {} attempts  {}",
        h.parked_at,
        h.topic,
        h.partition,
        h.first_offset,
        h.last_offset,
        h.events,
        h.bytes,
        h.attempts,
        h.last_error.as_deref().unwrap_or_default()
    );
}

/// `auditstream parked show --sink S`: the oldest entries of one sink.
pub fn parked_show(path: &Path, sink: &str, limit: usize) -> ExitCode {
    exit((|| match access(path)? {
        Access::Daemon(config, c) => {
            known_sink(&config, None, sink)?;
            let v = remote(c.get_json(&format!("/sinks/{sink}/parked?limit={limit}")))?;
            for e in v["parked"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or_default()
            {
                if let Ok(h) =
                    serde_json::from_value::<crate::park::ParkedHeader>(e["header"].clone())
                {
                    print_header(e["entry"].as_u64().unwrap_or(0), &h);
                }
            }
            eprintln!("{} entries parked for {sink}", v["entries"]);
            Ok(ExitCode::from(OK))
        }
        Access::Local(config, store) => {
            known_sink(&config, Some(&store), sink)?;
            let park = open_park(&store, sink)?;
            let headers = park.headers(limit).map_err(|e| {
                eprintln!("{e}");
                ExitCode::from(FAILURE)
            })?;
            for (seq, h) in headers {
                print_header(seq, &h);
            }
            eprintln!("{} entries parked for {sink}", park.entries());
            Ok(ExitCode::from(OK))
        }
    })())
}

/// `auditstream parked export --sink S --out FILE`: every parked record as NDJSON, kept.
pub fn parked_export(path: &Path, sink: &str, out: Option<&PathBuf>) -> ExitCode {
    exit((|| {
        let bytes = match access(path)? {
            Access::Daemon(config, c) => {
                known_sink(&config, None, sink)?;
                remote(c.get_bytes(&format!("/sinks/{sink}/parked/export")))?
            }
            Access::Local(config, store) => {
                known_sink(&config, Some(&store), sink)?;
                let park = open_park(&store, sink)?;
                let mut b = Vec::new();
                for entry in park.entries_iter() {
                    let p = entry.map_err(|e| {
                        eprintln!("{e}");
                        ExitCode::from(FAILURE)
                    })?;
                    crate::park::export::write_entry(&mut b, sink, "parked", &p).map_err(|e| {
                        eprintln!("{e}");
                        ExitCode::from(FAILURE)
                    })?;
                }
                b
            }
        };
        write_out(out, &bytes)?;
        let n = bytes.iter().filter(|b| **b == b'\n').count();
        eprintln!("exported {n} parked events of {sink} (they stay parked)");
        Ok(ExitCode::from(OK))
    })())
}

/// `auditstream parked purge --sink S --older-than D --yes`: exports, then removes.
pub fn parked_purge(path: &Path, sink: &str, older_than: &str, yes: bool) -> ExitCode {
    exit((|| {
        let age: crate::config::HumanDuration = older_than.parse().map_err(|e| {
            eprintln!("--older-than: {e}");
            ExitCode::from(USAGE)
        })?;
        let access = access(path)?;
        if !yes {
            let dir = match &access {
                Access::Local(c, _) | Access::Daemon(c, _) => {
                    c.park.expired_dir.display().to_string()
                }
            };
            eprintln!("would export the parked entries of {sink} older than {age} to {dir} and remove them; add --yes to do it");
            return Err(ExitCode::from(USAGE));
        }
        match access {
            Access::Daemon(config, c) => {
                known_sink(&config, None, sink)?;
                let v =
                    remote(c.post_json(&format!("/sinks/{sink}/purge?older_than={older_than}")))?;
                eprintln!(
                    "purged {} entries ({} events) of {sink}; their records are in {}",
                    v["purged_entries"],
                    v["purged_events"],
                    config.park.expired_dir.display()
                );
                Ok(ExitCode::from(OK))
            }
            Access::Local(config, store) => {
                known_sink(&config, Some(&store), sink)?;
                let park = open_park(&store, sink)?;
                let cutoff = chrono::Utc::now().timestamp_millis() - age.get().as_millis() as i64;
                let exporter = crate::park::export::Exporter::new(&config.park.expired_dir);
                let mut removed = 0;
                loop {
                    let p = match park.head() {
                        Ok(Some(p)) if p.header.parked_at_ms <= cutoff => p,
                        Ok(_) => break,
                        Err(e) => {
                            eprintln!("{e}");
                            return Err(ExitCode::from(FAILURE));
                        }
                    };
                    let result = exporter
                        .export(
                            sink,
                            std::slice::from_ref(&p),
                            crate::park::export::ExportReason::Purged,
                        )
                        .map_err(|e| e.to_string())
                        .and_then(|mut proofs| {
                            let proof = proofs.pop().ok_or("nothing exported")?;
                            park.release(&p, crate::park::Release::Exported(proof))
                                .map_err(|e| e.to_string())
                        });
                    if let Err(e) = result {
                        eprintln!("purging entry {}: {e}", p.seq);
                        return Err(ExitCode::from(FAILURE));
                    }
                    removed += 1;
                }
                eprintln!(
                    "purged {removed} entries of {sink}; their records are in {}",
                    config.park.expired_dir.display()
                );
                Ok(ExitCode::from(OK))
            }
        }
    })())
}

/// `auditstream integrity public-key`.
pub fn integrity_public_key(path: &Path) -> ExitCode {
    let (config, _) = match load_or_report(path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match signer(&config) {
        Ok(s) => {
            println!("{}", s.public_key());
            ExitCode::from(OK)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(USAGE)
        }
    }
}

/// `auditstream integrity generate-key`.
pub fn integrity_generate_key() -> ExitCode {
    match crate::integrity::generate_key() {
        Ok(k) => {
            println!("{k}");
            eprintln!("keep it secret: set integrity.signing_key = \"${{AUDITSTREAM_SIGNING_KEY}}\" and put this in that variable");
            ExitCode::from(OK)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(FAILURE)
        }
    }
}

fn signer(config: &Config) -> Result<crate::integrity::Signer, String> {
    let ic = config
        .integrity
        .as_ref()
        .ok_or("this configuration has no [integrity] section")?;
    crate::integrity::Signer::new(&ic.seed()?)
}

/// A time bound for `verify`: RFC 3339, or a date (midnight UTC).
fn time_bound(s: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| format!("`{s}` is neither RFC 3339 nor YYYY-MM-DD"))
}

/// `auditstream verify --sink S`: walks the digest chain and checks every object; exit 0 only
/// when everything checks out.
/// `verify`'s options beyond the sink.
pub struct VerifyOptions<'a> {
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub public_key: Option<&'a str>,
    pub digest_interval: Option<&'a str>,
}

pub async fn verify(path: &Path, sink: &str, o: VerifyOptions<'_>) -> ExitCode {
    let VerifyOptions {
        from,
        to,
        public_key,
        digest_interval,
    } = o;
    let (config, _) = match load_or_report(path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let Some(sc) = config.sinks.iter().find(|s| s.name == sink) else {
        eprintln!("no sink named `{sink}`");
        return ExitCode::from(USAGE);
    };
    let SinkKind::S3(c) = &sc.kind else {
        eprintln!("sink `{sink}` is not an S3 sink; only S3 archives carry digests");
        return ExitCode::from(USAGE);
    };
    let key = match public_key {
        Some(k) => k.to_string(),
        None => match signer(&config) {
            Ok(s) => s.public_key(),
            Err(e) => {
                eprintln!("{e}; or give --public-key");
                return ExitCode::from(USAGE);
            }
        },
    };
    let window = match (
        from.map(time_bound).transpose(),
        to.map(time_bound).transpose(),
    ) {
        (Ok(from_ms), Ok(to_ms)) => crate::integrity::Window { from_ms, to_ms },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(USAGE);
        }
    };
    let interval = match (digest_interval, &config.integrity) {
        (Some(text), _) => match text.parse::<crate::config::HumanDuration>() {
            Ok(d) => d.get(),
            Err(e) => {
                eprintln!("--digest-interval: {e}");
                return ExitCode::from(USAGE);
            }
        },
        (None, Some(i)) => i.digest_interval.get(),
        (None, None) => {
            eprintln!("give --digest-interval (the daemon's integrity.digest_interval): this configuration has no [integrity]");
            return ExitCode::from(USAGE);
        }
    };
    let s3 = match crate::sink::s3::S3Sink::new(c).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(FAILURE);
        }
    };
    let bar = styled_bar(
        0,
        "{spinner} checking objects [{bar:40}] {pos}/{len} ({per_sec}, {eta})",
    );
    let report = crate::integrity::verify(&s3, &key, interval, &window, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await;
    bar.finish_and_clear();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot read the archive: {e}");
            return ExitCode::from(FAILURE);
        }
    };
    for p in &report.problems {
        println!("{p}");
    }
    for p in &report.pending {
        println!("not yet in a digest: {p}");
    }
    println!(
        "{} digests, {} objects checked: {}",
        report.digests,
        report.objects_checked,
        if report.problems.is_empty() {
            "everything checks out".to_string()
        } else {
            format!("{} problems", report.problems.len())
        }
    );
    if report.problems.is_empty() {
        ExitCode::from(OK)
    } else {
        ExitCode::from(FAILURE)
    }
}

fn progress(total: u64, sink: &str) -> indicatif::ProgressBar {
    let bar = styled_bar(
        total,
        "{spinner} replaying {msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta})",
    );
    bar.set_message(sink.to_string());
    bar
}

/// A progress bar on stderr drawn by `template`.
fn styled_bar(total: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// `auditstream parked replay --sink S`: delivers the park now, in order, with progress. While
/// the daemon runs it asks the daemon to probe at once and follows its drain.
pub async fn parked_replay(path: &Path, sink: &str) -> ExitCode {
    let (config, _) = match load_or_report(path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let store = match Store::open(&config.park.path) {
        Ok(s) => s,
        Err(crate::park::StoreError::InUse { .. }) if config.admin.enabled => {
            return replay_via_daemon(&config, sink).await;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(FAILURE);
        }
    };
    if let Err(c) = known_sink(&config, Some(&store), sink) {
        return c;
    }
    let park = match open_park(&store, sink) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let Some(sc) = config.sinks.iter().find(|s| s.name == sink) else {
        eprintln!(
            "`{sink}` has parked entries but is not in the configuration: nothing to send them to"
        );
        return ExitCode::from(USAGE);
    };
    let destination = match crate::sink::build(sc).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("starting sink `{sink}`: {e:#}");
            return ExitCode::from(FAILURE);
        }
    };
    let total = park.counts().events();
    let bar = progress(total, sink);
    loop {
        let head = match park.head() {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => {
                bar.abandon();
                eprintln!("{e}");
                return ExitCode::from(FAILURE);
            }
        };
        match destination.deliver(&head.batch).await {
            Ok(receipt) => {
                if let Err(e) = park.release(&head, crate::park::Release::Delivered(receipt)) {
                    bar.abandon();
                    eprintln!("{e}");
                    return ExitCode::from(FAILURE);
                }
                bar.inc(head.header.events);
            }
            Err(e) => {
                bar.abandon();
                let _ = park.record_attempt(head.seq, &e.to_string());
                eprintln!(
                    "stopped: entry {} could not be delivered: {e}; {} entries stay parked",
                    head.seq,
                    park.entries()
                );
                let _ = store.flush().await;
                return ExitCode::from(FAILURE);
            }
        }
    }
    bar.finish();
    let _ = store.flush().await;
    eprintln!("replayed {total} events; the park of {sink} is empty");
    ExitCode::from(OK)
}

async fn replay_via_daemon(config: &Config, sink: &str) -> ExitCode {
    if let Err(c) = known_sink(config, None, sink) {
        return c;
    }
    let client = match crate::admin::client::AdminClient::new(&config.admin) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(FAILURE);
        }
    };
    eprintln!(
        "the daemon holds the park store; asking it to replay at {}",
        client.base()
    );
    let parked = |v: &serde_json::Value| {
        v["sinks"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == sink))
            .map(|s| {
                (
                    s["parked_events"].as_u64().unwrap_or(0),
                    s["state"].as_str().unwrap_or("").to_string(),
                    s["last_error"].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap_or_default()
    };
    let start = match client.get_json("/status").await {
        Ok(v) => parked(&v).0,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(FAILURE);
        }
    };
    if let Err(e) = client.post_json(&format!("/sinks/{sink}/replay")).await {
        eprintln!("{e:#}");
        return ExitCode::from(FAILURE);
    }
    let bar = progress(start, sink);
    let mut stuck_since = std::time::Instant::now();
    let mut last = start;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let (left, state, error) = match client.get_json("/status").await {
            Ok(v) => parked(&v),
            Err(e) => {
                bar.abandon();
                eprintln!("{e:#}");
                return ExitCode::from(FAILURE);
            }
        };
        bar.set_position(start.saturating_sub(left));
        if left == 0 {
            bar.finish();
            eprintln!("the park of {sink} is empty");
            return ExitCode::from(OK);
        }
        if left != last {
            last = left;
            stuck_since = std::time::Instant::now();
        } else if state == "broken" && stuck_since.elapsed() > std::time::Duration::from_secs(10) {
            bar.abandon();
            eprintln!("the sink is still broken ({error}); {left} events stay parked and the daemon keeps probing");
            return ExitCode::from(FAILURE);
        }
    }
}
