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
