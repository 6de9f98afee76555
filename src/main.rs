//! The command line: parse, set up logging, call one function per command (see `cli`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use auditstream::cli;

#[derive(Parser)]
#[command(
    name = "auditstream",
    version,
    about = "Streams audit events from Kafka to archives and SIEMs; nothing is lost when a destination breaks."
)]
struct Args {
    /// Log line format on stderr (level from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

const DEFAULT_CONFIG: &str = "config/auditstream.toml";

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Load, check and compile everything; print `ok` or every problem.
    Validate {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print exactly what a sink would send for one event.
    Render {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The sink's name.
        #[arg(long, required_unless_present = "format", conflicts_with = "format")]
        sink: Option<String>,
        /// A built-in format instead of a configured sink (no configuration needed).
        #[arg(long)]
        format: Option<String>,
        /// With --format: print the format's template (to copy into a template_file).
        #[arg(long, requires = "format")]
        print_template: bool,
        /// A file holding the event, or `-` for stdin (default: a built-in sample event).
        #[arg(long)]
        event: Option<String>,
    },
    /// Inspect events that could not be decoded or rendered.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Inspect and act on parked deliveries (through the admin API while the daemon runs).
    Parked {
        #[command(subcommand)]
        action: ParkedAction,
    },
    /// Check an S3 sink's archive against its signed chain of digests.
    Verify {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The S3 sink whose archive to check.
        #[arg(long)]
        sink: String,
        /// Check objects written from this time (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long)]
        from: Option<String>,
        /// Check objects written before this time.
        #[arg(long)]
        to: Option<String>,
        /// The public key to check signatures with (default: the configured signing key's).
        #[arg(long)]
        public_key: Option<String>,
        /// The daemon's digest interval, when this configuration has no [integrity] (a verifier
        /// without the signing key): objects older than two intervals must be in a digest.
        #[arg(long)]
        digest_interval: Option<String>,
    },
    /// The key that signs integrity digests.
    Integrity {
        #[command(subcommand)]
        action: IntegrityAction,
    },
    /// Run the whole pipeline on an embedded default, with no external services.
    Demo {
        /// How many audit events to generate.
        #[arg(long, default_value_t = 5000)]
        events: usize,
        /// Where the sinks write.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
        /// Use this Kafka cluster (a fresh topic is created) instead of the in-process one.
        #[arg(long)]
        brokers: Option<String>,
        /// How long the demo's `hec` endpoint is down at the start (e.g. 4s).
        #[arg(long, default_value = "4s")]
        outage: String,
    },
    /// A long run against a real Kafka-protocol broker with one sink flapping, sampled as it
    /// goes (RSS, open fds, park on disk, lag) and judged at the end (README, "Reliability").
    Soak {
        /// The broker (e.g. from `../shared/tools/real-kafka start`); a fresh topic is made.
        #[arg(long)]
        brokers: String,
        /// How long to produce, in minutes.
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Events per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// How often to print a row.
        #[arg(long, default_value = "3m")]
        report_every: String,
        /// The flapping sink is down for this long at the end of every `--flap-every`.
        #[arg(long, default_value = "2m")]
        flap_down: String,
        #[arg(long, default_value = "5m")]
        flap_every: String,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// How long the final drain may take.
        #[arg(long, default_value = "10m")]
        drain_timeout: String,
        /// How long after the drain the park's size on disk is taken again.
        #[arg(long, default_value = "1m")]
        settle: String,
        /// Where the config, the daemon's log, the park and report.md go (emptied first).
        #[arg(long, default_value = "target/soak")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ParkedAction {
    /// Per sink: entries, events, bytes, oldest, newest, last error.
    List {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The oldest parked entries of one sink.
    Show {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        sink: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Deliver one sink's park now, in order.
    Replay {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        sink: String,
    },
    /// Export entries older than a duration to park.expired_dir, then remove them.
    Purge {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        sink: String,
        /// e.g. 3d, 12h
        #[arg(long)]
        older_than: String,
        /// Really do it.
        #[arg(long)]
        yes: bool,
    },
    /// Every parked record of one sink as NDJSON (they stay parked).
    Export {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        sink: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum IntegrityAction {
    /// Print the public key of `integrity.signing_key` (give it to whoever verifies).
    PublicKey {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print a new random signing key (base64) for `integrity.signing_key`.
    GenerateKey,
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// One line per quarantined message.
    List {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Show at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Every quarantined message as one JSON object per line.
    Export {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // One JSON object per line; lines from a sink's worker carry `span.sink`.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The demo prints its own progress and summary (the quarantine and the outage included);
    // its logs show only errors.
    let default_level = match args.command {
        Command::Demo { .. } | Command::Soak { .. } => "error",
        _ => "info",
    };
    init_logging(args.log_format, default_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(cli::FAILURE);
        }
    };
    let code = match args.command {
        Command::Run { config } => runtime.block_on(cli::run(&config)),
        Command::Validate { config } => cli::validate(&config),
        Command::Render {
            config,
            sink,
            format,
            print_template,
            event,
        } => match (sink, format) {
            (Some(sink), _) => cli::render(&config, &sink, event.as_deref()),
            (None, Some(format)) => cli::render_format(&format, print_template, event.as_deref()),
            (None, None) => ExitCode::from(cli::USAGE),
        },
        Command::Parked { action } => match action {
            ParkedAction::List { config } => cli::parked_list(&config),
            ParkedAction::Show {
                config,
                sink,
                limit,
            } => cli::parked_show(&config, &sink, limit),
            ParkedAction::Replay { config, sink } => {
                runtime.block_on(cli::parked_replay(&config, &sink))
            }
            ParkedAction::Purge {
                config,
                sink,
                older_than,
                yes,
            } => cli::parked_purge(&config, &sink, &older_than, yes),
            ParkedAction::Export { config, sink, out } => {
                cli::parked_export(&config, &sink, out.as_ref())
            }
        },
        Command::Quarantine { action } => match action {
            QuarantineAction::List { config, limit } => cli::quarantine_list(&config, limit),
            QuarantineAction::Export { config, out } => {
                cli::quarantine_export(&config, out.as_ref())
            }
        },
        Command::Verify {
            config,
            sink,
            from,
            to,
            public_key,
            digest_interval,
        } => runtime.block_on(cli::verify(
            &config,
            &sink,
            cli::VerifyOptions {
                from: from.as_deref(),
                to: to.as_deref(),
                public_key: public_key.as_deref(),
                digest_interval: digest_interval.as_deref(),
            },
        )),
        Command::Integrity { action } => match action {
            IntegrityAction::PublicKey { config } => cli::integrity_public_key(&config),
            IntegrityAction::GenerateKey => cli::integrity_generate_key(),
        },
        Command::Soak {
            brokers,
            minutes,
            rate,
            report_every,
            flap_down,
            flap_every,
            partitions,
            drain_timeout,
            settle,
            dir,
        } => {
            let d = |name: &str, v: &str| {
                v.parse::<auditstream::config::HumanDuration>()
                    .map(|d| d.get())
                    .map_err(|e| eprintln!("--{name}: {e}"))
            };
            match (
                d("report-every", &report_every),
                d("flap-down", &flap_down),
                d("flap-every", &flap_every),
                d("drain-timeout", &drain_timeout),
                d("settle", &settle),
            ) {
                (
                    Ok(report_every),
                    Ok(flap_down),
                    Ok(flap_every),
                    Ok(drain_timeout),
                    Ok(settle),
                ) if flap_down < flap_every && minutes > 0.0 => {
                    let opts = auditstream::soak::SoakOptions {
                        brokers,
                        duration: std::time::Duration::from_secs_f64(minutes * 60.0),
                        rate,
                        report_every,
                        flap_every,
                        flap_down,
                        partitions,
                        dir,
                        drain_timeout,
                        settle,
                    };
                    match runtime.block_on(auditstream::soak::run(opts)) {
                        Ok(true) => ExitCode::from(cli::OK),
                        Ok(false) => ExitCode::from(cli::FAILURE),
                        Err(e) => {
                            eprintln!("soak failed: {e:#}");
                            ExitCode::from(cli::FAILURE)
                        }
                    }
                }
                _ => {
                    eprintln!("--flap-down must be shorter than --flap-every, --minutes positive");
                    ExitCode::from(cli::USAGE)
                }
            }
        }
        Command::Demo {
            events,
            out,
            brokers,
            outage,
        } => match outage.parse::<auditstream::config::HumanDuration>() {
            Ok(d) => runtime.block_on(cli::demo(events, out, brokers, d.get())),
            Err(e) => {
                eprintln!("--outage: {e}");
                ExitCode::from(cli::USAGE)
            }
        },
    };
    // A write stuck on a destination that stopped reading must not keep the process alive
    // after an immediate stop; everything that matters was committed or not by now.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
