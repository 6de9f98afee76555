//! Built-in formats: named templates shipped inside the binary (`format = "..."`).
//!
//! `ndjson` is the event as it came. Other formats are handlebars templates in
//! `src/template/formats/*.hbs`, rendered like a user's template; copy one into a
//! `template_file` to adapt it.

/// A built-in format.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// The message exactly as received.
    Passthrough,
    /// A handlebars template.
    Template(&'static str),
}

const FORMATS: &[(&str, Format)] = &[
    ("ndjson", Format::Passthrough),
    ("text", Format::Template(include_str!("formats/text.hbs"))),
];

/// The format called `name`.
pub fn lookup(name: &str) -> Option<Format> {
    FORMATS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Every built-in format's name.
pub fn names() -> Vec<&'static str> {
    FORMATS.iter().map(|(n, _)| *n).collect()
}
