//! Independent readers for CEF and LEEF records, written from the specs' escaping rules and
//! not from the code that writes them. Shared by `tests/formats.rs` (the golden events) and
//! the `formats` fuzz target (`fuzz/`), which both check that what a format writes reads back
//! to the input values. Plain std, so both crates can include it with `#[path]`.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// The CEF extensions that carry one event field as text: (extension key, event field path).
pub const CEF_FIELDS: &[(&str, &str)] = &[
    ("externalId", "id"),
    ("act", "action"),
    ("outcome", "outcome"),
    ("suid", "actor.id"),
    ("suser", "actor.name"),
    ("src", "metadata.ip"),
    ("requestClientApplication", "metadata.user_agent"),
    ("cs1", "workspace"),
    ("cs2", "actor.type"),
    ("cs4", "metadata.request_id"),
];

/// The LEEF attributes that carry one event field as text: (attribute, event field path).
pub const LEEF_FIELDS: &[(&str, &str)] = &[
    ("eventId", "id"),
    ("cat", "action"),
    ("outcome", "outcome"),
    ("accountName", "actor.id"),
    ("usrName", "actor.name"),
    ("actorType", "actor.type"),
    ("src", "metadata.ip"),
    ("userAgent", "metadata.user_agent"),
    ("requestId", "metadata.request_id"),
    ("workspace", "workspace"),
];

/// Splits on `sep` where it is not escaped by a backslash; keeps the escapes.
fn split_unescaped(s: &str, sep: char, max: usize) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            parts.last_mut().unwrap().push(c);
            if let Some(n) = chars.next() {
                parts.last_mut().unwrap().push(n);
            }
        } else if c == sep && parts.len() < max {
            parts.push(String::new());
        } else {
            parts.last_mut().unwrap().push(c);
        }
    }
    parts
}

/// Undoes backslash escapes: `\n`, `\r`, `\t` are line breaks and tabs, `\x` is `x`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

/// A CEF record: the seven header fields after `CEF:0`, and the extensions. Per the CEF spec,
/// a header field escapes `|` and `\`; an extension value escapes `=` and `\` and writes line
/// breaks as `\n`/`\r`; extensions are `key=value` separated by spaces, a key being
/// alphanumeric and followed by an unescaped `=`.
pub fn parse_cef(line: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let rest = line.strip_prefix("CEF:0|").expect("CEF:0| prefix");
    let parts = split_unescaped(rest, '|', 7);
    assert_eq!(
        parts.len(),
        7,
        "six header fields and the extensions: {line}"
    );
    let header: Vec<String> = parts[..6].iter().map(|p| unescape(p)).collect();
    let ext = &parts[6];
    // Find each ` key=` (the key's `=` unescaped), then values run to the next one.
    let bytes: Vec<char> = ext.chars().collect();
    let mut starts = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if (i == 0 || bytes[i - 1] == ' ') && bytes[i].is_ascii_alphanumeric() {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == '_') {
                j += 1;
            }
            if j < bytes.len() && bytes[j] == '=' {
                starts.push((i, j));
            }
        }
        if bytes[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    let mut map = BTreeMap::new();
    for (n, (k0, eq)) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map(|(s, _)| s - 1).unwrap_or(bytes.len());
        let key: String = bytes[*k0..*eq].iter().collect();
        let raw: String = bytes[eq + 1..end].iter().collect();
        map.insert(key, unescape(&raw));
    }
    (header, map)
}

/// A LEEF 2.0 record with the `^` delimiter: header fields escape `|` and `\`; attribute
/// values escape `^` and `\` and write line breaks and tabs as `\n`, `\r`, `\t`.
pub fn parse_leef(line: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let rest = line.strip_prefix("LEEF:2.0|").expect("LEEF:2.0| prefix");
    let parts = split_unescaped(rest, '|', 6);
    assert_eq!(parts.len(), 6, "{line}");
    let header: Vec<String> = parts[..5].iter().map(|p| unescape(p)).collect();
    assert_eq!(header[4], "^", "the declared delimiter");
    let mut map = BTreeMap::new();
    for attr in split_unescaped(&parts[5], '^', usize::MAX) {
        let (k, v) = attr.split_once('=').expect("key=value");
        map.insert(k.to_string(), unescape(v));
    }
    (header, map)
}
