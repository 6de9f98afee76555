//! Built-in formats: named templates shipped inside the binary (`format = "..."`).
//!
//! `ndjson` is the event as it came. The others are handlebars templates in
//! `src/template/formats/*.hbs`, rendered like a user's template with the helpers of
//! [`super::helpers`] and [`super::siem`]; `auditstream render --format NAME --print-template`
//! prints one to copy into a `template_file` and adapt.
//!
//! A format may take options (`format_options = { index = "audit" }`): `@@name@@` in its
//! template is replaced, when the template is compiled, by the option's value quoted for its
//! place (a JSON string, or an escaped CEF/LEEF header field), or else by the option's default,
//! which is a template fragment. Each format's field mapping is tabled in the README.

use std::collections::BTreeMap;

use super::siem::escape_cef_header;

/// A built-in format.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// The message exactly as received.
    Passthrough,
    /// A handlebars template with options.
    Template(&'static TemplateFormat),
}

/// A format's template and the options it takes.
#[derive(Debug)]
pub struct TemplateFormat {
    pub source: &'static str,
    pub options: &'static [FormatOption],
    /// The HTTP `encoding` its records need, when `ndjson` will not do.
    pub needs_encoding: Option<&'static str>,
}

/// One option of a format.
#[derive(Debug)]
pub struct FormatOption {
    pub name: &'static str,
    /// What stands in when the option is not given: a template fragment.
    pub default: &'static str,
    pub quote: Quote,
}

/// How a given value is written into the template.
#[derive(Debug, Clone, Copy)]
pub enum Quote {
    /// A JSON string.
    Json,
    /// `"name":"value",` when given; nothing by default.
    JsonField,
    /// An escaped CEF or LEEF header field.
    Header,
}

const VENDOR: FormatOption = FormatOption {
    name: "vendor",
    default: "auditstream",
    quote: Quote::Header,
};
const PRODUCT: FormatOption = FormatOption {
    name: "product",
    default: "auditstream",
    quote: Quote::Header,
};
const VERSION: FormatOption = FormatOption {
    name: "version",
    default: env!("CARGO_PKG_VERSION"),
    quote: Quote::Header,
};

static SPLUNK_HEC: TemplateFormat = TemplateFormat {
    source: include_str!("formats/splunk_hec.hbs"),
    options: &[
        FormatOption {
            name: "host",
            default: r#"{{json (default workspace "auditstream")}}"#,
            quote: Quote::Json,
        },
        FormatOption {
            name: "source",
            default: r#""auditstream""#,
            quote: Quote::Json,
        },
        FormatOption {
            name: "sourcetype",
            default: r#""auditstream:audit""#,
            quote: Quote::Json,
        },
        FormatOption {
            name: "index",
            default: "",
            quote: Quote::JsonField,
        },
    ],
    needs_encoding: None,
};

static ECS: TemplateFormat = TemplateFormat {
    source: include_str!("formats/ecs.hbs"),
    options: &[FormatOption {
        name: "dataset",
        default: r#""auditstream.audit""#,
        quote: Quote::Json,
    }],
    needs_encoding: None,
};

static CEF: TemplateFormat = TemplateFormat {
    source: include_str!("formats/cef.hbs"),
    options: &[VENDOR, PRODUCT, VERSION],
    needs_encoding: None,
};

static LEEF: TemplateFormat = TemplateFormat {
    source: include_str!("formats/leef.hbs"),
    options: &[VENDOR, PRODUCT, VERSION],
    needs_encoding: None,
};

static OCSF: TemplateFormat = TemplateFormat {
    source: include_str!("formats/ocsf.hbs"),
    options: &[
        FormatOption {
            name: "vendor",
            default: r#""auditstream""#,
            quote: Quote::Json,
        },
        FormatOption {
            name: "product",
            default: r#""auditstream""#,
            quote: Quote::Json,
        },
    ],
    needs_encoding: None,
};

static DATADOG: TemplateFormat = TemplateFormat {
    source: include_str!("formats/datadog.hbs"),
    options: &[
        FormatOption {
            name: "source",
            default: r#""auditstream""#,
            quote: Quote::Json,
        },
        FormatOption {
            name: "service",
            default: r#""audit""#,
            quote: Quote::Json,
        },
        FormatOption {
            name: "tags",
            default: r#""source:auditstream""#,
            quote: Quote::Json,
        },
    ],
    needs_encoding: Some("json_array"),
};

static AZURE_MONITOR: TemplateFormat = TemplateFormat {
    source: include_str!("formats/azure_monitor.hbs"),
    options: &[],
    needs_encoding: Some("json_array"),
};

static TEXT: TemplateFormat = TemplateFormat {
    source: include_str!("formats/text.hbs"),
    options: &[],
    needs_encoding: None,
};

const FORMATS: &[(&str, Format)] = &[
    ("ndjson", Format::Passthrough),
    ("splunk_hec", Format::Template(&SPLUNK_HEC)),
    ("ecs", Format::Template(&ECS)),
    ("cef", Format::Template(&CEF)),
    ("leef", Format::Template(&LEEF)),
    ("ocsf", Format::Template(&OCSF)),
    ("datadog", Format::Template(&DATADOG)),
    ("azure_monitor", Format::Template(&AZURE_MONITOR)),
    ("text", Format::Template(&TEXT)),
];

/// The format called `name`.
pub fn lookup(name: &str) -> Option<Format> {
    FORMATS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Every built-in format's name.
pub fn names() -> Vec<&'static str> {
    FORMATS.iter().map(|(n, _)| *n).collect()
}

impl TemplateFormat {
    /// The template with its options filled in (`given`, else the defaults).
    pub fn expand(&self, given: &BTreeMap<String, String>) -> Result<String, String> {
        if let Some(unknown) = given
            .keys()
            .find(|k| !self.options.iter().any(|o| o.name == k.as_str()))
        {
            let known: Vec<&str> = self.options.iter().map(|o| o.name).collect();
            return Err(match known.is_empty() {
                true => format!("unknown option `{unknown}`: this format takes none"),
                false => format!(
                    "unknown option `{unknown}`; this format takes: {}",
                    known.join(", ")
                ),
            });
        }
        let mut out = self.source.trim_end().to_string();
        for o in self.options {
            let value = match given.get(o.name) {
                None => o.default.to_string(),
                Some(v) if v.contains("{{") || v.contains("}}") => {
                    return Err(format!(
                        "option `{}` may not contain `{{{{` or `}}}}`",
                        o.name
                    ))
                }
                Some(v) => match o.quote {
                    Quote::Json => Value::String(v.clone()).to_string(),
                    Quote::JsonField => {
                        format!("\"{}\":{},", o.name, Value::String(v.clone()))
                    }
                    Quote::Header => escape_cef_header(v),
                },
            };
            out = out.replace(&format!("@@{}@@", o.name), &value);
        }
        Ok(out)
    }
}

use serde_json::Value;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_quoted_for_their_place_and_unknown_ones_refused() {
        let Some(Format::Template(hec)) = lookup("splunk_hec") else {
            panic!("splunk_hec is a template")
        };
        let plain = hec.expand(&BTreeMap::new()).unwrap();
        assert!(!plain.contains("@@") && !plain.contains("\"index\""));
        let given = BTreeMap::from([
            ("index".to_string(), "audit \"prod\"".to_string()),
            ("host".to_string(), "h1".to_string()),
        ]);
        let t = hec.expand(&given).unwrap();
        assert!(t.contains(r#""index":"audit \"prod\"","#), "{t}");
        assert!(t.contains(r#""host":"h1""#), "{t}");
        let bad = BTreeMap::from([("colour".to_string(), "x".to_string())]);
        assert!(hec.expand(&bad).unwrap_err().contains("index"));
        let inject = BTreeMap::from([("host".to_string(), "{{secret}}".to_string())]);
        assert!(hec.expand(&inject).is_err());

        let Some(Format::Template(cef)) = lookup("cef") else {
            panic!("cef is a template")
        };
        let given = BTreeMap::from([("vendor".to_string(), "Acme|Corp\\".to_string())]);
        assert!(cef
            .expand(&given)
            .unwrap()
            .starts_with("CEF:0|Acme\\|Corp\\\\|auditstream|"));
    }
}
