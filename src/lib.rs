//! auditstream: audit events from Kafka to the places that must keep or watch them.
//!
//! The path of one event, one module per stage:
//!
//! ```text
//! Kafka -> source -> decode -> fanout --> [sink task] render -> batch -> deliver -> file/stdout
//!            ^                                                                      |
//!            +---- offsets: commit the prefix every sink has finished <-------------+
//! ```
//!
//! - [`config`]: the typed configuration, loaded from TOML with `${ENV}` and checked.
//! - [`source`]: the Kafka consumer thread: polls, takes messages as the window allows,
//!   registers offsets, commits.
//! - [`decode`]: message bytes -> [`event::Event`], or a reason for the quarantine.
//! - [`fanout`]: routes each event to the sinks whose filter matches.
//! - [`redact`]: per sink, fields removed or pseudonymised before rendering.
//! - [`template`]: handlebars templates, helpers and built-in formats.
//! - [`batch`]: groups one sink's records per partition by count, size and age.
//! - [`deliver`]: one worker per sink: render, batch, deliver with retries, report finished.
//! - [`sink`]: the `Sink` trait and the destinations.
//! - [`offsets`]: the contiguous-prefix offset tracker (pure, property-tested).
//! - [`park`]: the persistent sled store (parked batches, the quarantine, alert and integrity
//!   journals).
//! - [`integrity`]: signed, chained digests of what the S3 sinks wrote, and `verify`.
//! - [`pipeline`]: wires the stages for `run` and `demo`; start-up and graceful stop.
//! - [`demo`]: the embedded demo; [`embedded_kafka`]: the in-process Kafka cluster it uses.

pub mod admin;
pub mod alert;
pub mod batch;
pub mod cli;
pub mod config;
pub mod decode;
pub mod deliver;
pub mod demo;
pub mod embedded_kafka;
pub mod event;
pub mod fanout;
pub mod generate;
pub mod integrity;
pub mod offsets;
pub mod park;
pub mod pipeline;
pub mod redact;
pub mod shutdown;
pub mod sink;
pub mod soak;
pub mod source;
pub mod status;
pub mod template;
