//! The commands behind `auditstream <command>`: one function each, returning the exit code the
//! contract gives (0 fine, 1 runtime failure, 2 usage or configuration error). Anything meant
//! for a script goes to stdout; logs and progress go to stderr.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::load::Locator;
use crate::config::{parse_str, Config, ConfigError, ConfigErrors};
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
    let config = parse_str(&text, &origin, &|name| std::env::var(name).ok())?;
    let locator = Locator::new(&text);
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
    let result = match Pipeline::build(config, templates).await {
        Ok(p) => p.run(shutdown).await,
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
    match templates.render(index, &event) {
        Ok(body) => {
            let mut out = std::io::stdout().lock();
            let written = out
                .write_all(body.as_bytes())
                .and_then(|_| out.write_all(b"\n"))
                .and_then(|_| out.flush());
            match written {
                Ok(()) => ExitCode::from(OK),
                Err(_) => ExitCode::from(FAILURE),
            }
        }
        Err(e) => {
            eprintln!("sink `{sink}` cannot render this event (it would be quarantined): {e}");
            ExitCode::from(USAGE)
        }
    }
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

/// Opens the park store named by a configuration, for the offline commands.
fn open_store(path: &Path) -> Result<Store, ExitCode> {
    let (config, _) = load_or_report(path)?;
    Store::open(&config.park.path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(FAILURE)
    })
}

/// `auditstream quarantine list`: one line per quarantined message.
pub fn quarantine_list(path: &Path, limit: Option<usize>) -> ExitCode {
    let store = match open_store(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    let mut shown = 0;
    let mut total = 0;
    let mut damaged = 0;
    for item in store.quarantine_entries() {
        match item {
            Ok((seq, e)) => {
                total += 1;
                if limit.is_some_and(|l| shown >= l) {
                    continue;
                }
                shown += 1;
                let line = format!(
                    "{seq:>6}  {}  {:<10} {}/{}@{}  {}: {}\n",
                    e.quarantined_at,
                    e.sink.as_deref().unwrap_or("(decode)"),
                    e.topic,
                    e.partition,
                    e.offset,
                    e.kind,
                    e.reason
                );
                if out.write_all(line.as_bytes()).is_err() {
                    return ExitCode::from(FAILURE);
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
    ExitCode::from(if damaged > 0 { FAILURE } else { OK })
}

/// `auditstream quarantine export`: every entry as one JSON object per line.
pub fn quarantine_export(path: &Path, out: Option<&PathBuf>) -> ExitCode {
    let store = match open_store(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut sink: Box<dyn Write> = match out {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("cannot create {}: {e}", p.display());
                return ExitCode::from(FAILURE);
            }
        },
        None => Box::new(std::io::stdout().lock()),
    };
    let mut n = 0;
    let mut damaged = 0;
    for item in store.quarantine_entries() {
        match item {
            Ok((_, e)) => {
                let written = serde_json::to_writer(&mut sink, &e)
                    .map_err(std::io::Error::other)
                    .and_then(|_| sink.write_all(b"\n"));
                if let Err(e) = written {
                    eprintln!("writing the export: {e}");
                    return ExitCode::from(FAILURE);
                }
                n += 1;
            }
            Err(e) => {
                damaged += 1;
                eprintln!("{e}");
            }
        }
    }
    if let Err(e) = sink.flush() {
        eprintln!("writing the export: {e}");
        return ExitCode::from(FAILURE);
    }
    eprintln!("exported {n} entries");
    ExitCode::from(if damaged > 0 { FAILURE } else { OK })
}

/// `auditstream demo`.
pub async fn demo(events: usize, out: PathBuf, brokers: Option<String>) -> ExitCode {
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

/// Opens the park of one sink for the offline `parked` commands.
fn open_park(path: &Path, sink: &str) -> Result<(Config, Store, crate::park::SinkPark), ExitCode> {
    let (config, _) = load_or_report(path)?;
    let store = Store::open(&config.park.path).map_err(|e| {
        eprintln!("{e}");
        if matches!(e, crate::park::StoreError::InUse { .. }) {
            eprintln!("stop the daemon first: these commands need the store to themselves");
        }
        ExitCode::from(FAILURE)
    })?;
    if !config.sinks.iter().any(|s| s.name == sink)
        && !store.sinks_with_parks().iter().any(|s| s == sink)
    {
        eprintln!("no sink named `{sink}` in the configuration or the park");
        return Err(ExitCode::from(USAGE));
    }
    let park = store.sink_park(sink).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(FAILURE)
    })?;
    Ok((config, store, park))
}

fn when(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

/// `auditstream parked list`: per sink, what is parked.
pub fn parked_list(path: &Path) -> ExitCode {
    let (config, _) = match load_or_report(path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let store = match Store::open(&config.park.path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(FAILURE);
        }
    };
    let mut names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
    for n in store.sinks_with_parks() {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    println!(
        "{:<16} {:>8} {:>10} {:>12}  {:<20}  {:<20}  last error",
        "sink", "entries", "events", "bytes", "oldest", "newest"
    );
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
            "{:<16} {:>8} {:>10} {:>12}  {:<20}  {:<20}  {}",
            name,
            c.entries(),
            c.events(),
            c.bytes(),
            when(c.oldest_ms()),
            when(newest),
            last_error
        );
    }
    ExitCode::from(code)
}

/// `auditstream parked show --sink S`: the oldest entries of one sink.
pub fn parked_show(path: &Path, sink: &str, limit: usize) -> ExitCode {
    let (_, _, park) = match open_park(path, sink) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match park.headers(limit) {
        Ok(headers) => {
            for (seq, h) in headers {
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
                    h.last_error.unwrap_or_default()
                );
            }
            eprintln!("{} entries parked for {sink}", park.entries());
            ExitCode::from(OK)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(FAILURE)
        }
    }
}

/// `auditstream parked export --sink S --out FILE`: every parked record as NDJSON, kept.
pub fn parked_export(path: &Path, sink: &str, out: Option<&PathBuf>) -> ExitCode {
    let (_, _, park) = match open_park(path, sink) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut w: Box<dyn Write> = match out {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("cannot create {}: {e}", p.display());
                return ExitCode::from(FAILURE);
            }
        },
        None => Box::new(std::io::stdout().lock()),
    };
    let mut n = 0u64;
    for entry in park.entries_iter() {
        let written = match entry {
            Ok(p) => {
                n += p.header.events;
                crate::park::export::write_entry(&mut w, sink, "parked", &p)
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(FAILURE);
            }
        };
        if let Err(e) = written {
            eprintln!("writing the export: {e}");
            return ExitCode::from(FAILURE);
        }
    }
    if let Err(e) = w.flush() {
        eprintln!("writing the export: {e}");
        return ExitCode::from(FAILURE);
    }
    eprintln!("exported {n} parked events of {sink} (they stay parked)");
    ExitCode::from(OK)
}

/// `auditstream parked purge --sink S --older-than D --yes`: exports, then removes.
pub fn parked_purge(path: &Path, sink: &str, older_than: &str, yes: bool) -> ExitCode {
    let age: crate::config::HumanDuration = match older_than.parse() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("--older-than: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let (config, _, park) = match open_park(path, sink) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let cutoff = chrono::Utc::now().timestamp_millis() - age.get().as_millis() as i64;
    let headers = match park.headers(usize::MAX) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(FAILURE);
        }
    };
    let old: Vec<u64> = headers
        .iter()
        .filter(|(_, h)| h.parked_at_ms <= cutoff)
        .map(|(seq, _)| *seq)
        .collect();
    let events: u64 = headers
        .iter()
        .filter(|(_, h)| h.parked_at_ms <= cutoff)
        .map(|(_, h)| h.events)
        .sum();
    if !yes {
        eprintln!(
            "would export {} entries ({events} events) of {sink} to {} and remove them; add --yes to do it",
            old.len(),
            config.park.expired_dir.display()
        );
        return ExitCode::from(USAGE);
    }
    let exporter = crate::park::export::Exporter::new(&config.park.expired_dir);
    let mut removed = 0;
    for entry in park.entries_iter() {
        let p = match entry {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(FAILURE);
            }
        };
        if p.header.parked_at_ms > cutoff {
            break;
        }
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
            return ExitCode::from(FAILURE);
        }
        removed += 1;
    }
    eprintln!(
        "purged {removed} entries of {sink}; their records are in {}",
        config.park.expired_dir.display()
    );
    ExitCode::from(OK)
}

/// `auditstream parked replay --sink S`: delivers the park now, in order, with progress.
pub async fn parked_replay(path: &Path, sink: &str) -> ExitCode {
    let (config, store, park) = match open_park(path, sink) {
        Ok(x) => x,
        Err(code) => return code,
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
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replaying {msg} [{bar:40}] {pos}/{len} events ({per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(sink.to_string());
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
