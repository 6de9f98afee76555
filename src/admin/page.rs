//! The status page for people (`GET /`): one self-contained HTML page, no external assets and
//! no scripts, that refreshes itself every 5 seconds. Each sink shows its state as a colour and
//! a word, the last error, what is parked and since when, and its throughput over the last ten
//! minutes as a small inline chart. It reads well on a phone.

use handlebars::Handlebars;
use serde_json::{json, Value};

use super::Throughput;

const PAGE: &str = include_str!("page.hbs");

fn colour(state: &str) -> &'static str {
    match state {
        "healthy" => "#1e8e3e",
        "retrying" => "#e37400",
        "broken" => "#d93025",
        "recovering" => "#1a73e8",
        _ => "#5f6368",
    }
}

/// An SVG polyline's points for the rates, scaled into 300 x 40.
fn sparkline(rates: &[f64]) -> String {
    if rates.len() < 2 {
        return String::new();
    }
    let max = rates.iter().cloned().fold(1.0, f64::max);
    let step = 300.0 / (rates.len() - 1) as f64;
    rates
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{:.1},{:.1}", i as f64 * step, 38.0 - r / max * 36.0))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Renders the page from the `/status` document and the throughput samples.
pub fn render(status: &Value, throughput: &Throughput) -> String {
    let sinks: Vec<Value> = status["sinks"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let name = s["name"].as_str().unwrap_or_default();
            let state = s["state"].as_str().unwrap_or("unknown");
            let rates = throughput.rates(name);
            let last = rates.last().copied().unwrap_or(0.0);
            json!({
                "name": name, "type": s["type"], "destination": s["destination"],
                "state": state, "colour": colour(state), "since": s["since"],
                "last_error": s["last_error"], "holding": s["holding"],
                "delivered": s["delivered_events"],
                "quarantined": s["quarantined_events"], "parked_events": s["parked_events"],
                "parked_bytes": bytesize::ByteSize(s["parked_bytes"].as_u64().unwrap_or(0)).display().iec().to_string(),
                "oldest": s["oldest_parked_at"], "replayed": s["replayed_events"],
                "rate": format!("{last:.0}"), "points": sparkline(&rates),
                "parked": s["parked_events"].as_u64().unwrap_or(0) > 0,
            })
        })
        .collect();
    let src = &status["source"];
    let ctx = json!({
        "sinks": sinks,
        "consumed": src["consumed_events"], "in_flight": src["in_flight_events"],
        "paused": src["paused"], "assigned": src["assigned_partitions"],
        "rejected": src["rejected_messages"],
        "park_bytes": bytesize::ByteSize(status["park"]["bytes"].as_u64().unwrap_or(0)).display().iec().to_string(),
        "park_max": bytesize::ByteSize(status["park"]["max_bytes"].as_u64().unwrap_or(0)).display().iec().to_string(),
        "version": status["version"],
        "now": chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    });
    let mut hb = Handlebars::new();
    hb.set_strict_mode(false);
    hb.render_template(PAGE, &ctx).unwrap_or_else(|e| {
        format!(
            "<!doctype html><p>status page error: {}</p>",
            e.to_string().replace('<', "&lt;")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_shows_each_sink_with_its_state_and_escapes_errors() {
        let status = json!({
            "version": "0.1.0",
            "source": {"consumed_events": 10, "in_flight_events": 0, "paused": false, "assigned_partitions": 4, "rejected_messages": 1},
            "park": {"bytes": 2048, "max_bytes": 1048576},
            "sinks": [
                {"name": "archive", "type": "s3", "destination": "s3://b/", "state": "healthy", "since": "2026-01-01T00:00:00Z",
                 "last_error": null, "delivered_events": 10, "quarantined_events": 0, "parked_events": 0, "parked_bytes": 0},
                {"name": "siem", "type": "http", "destination": "POST https://siem/", "state": "broken", "since": "2026-01-01T00:00:00Z",
                 "last_error": "HTTP 401: <script>alert(1)</script>", "delivered_events": 0, "quarantined_events": 0,
                 "parked_events": 7, "parked_bytes": 2048, "oldest_parked_at": "2026-01-01T00:00:01Z"}
            ]
        });
        let html = render(&status, &Throughput::default());
        assert!(html.contains("archive") && html.contains("siem"));
        assert!(html.contains(">broken<") && html.contains("#d93025"));
        assert!(html.contains("HTTP 401: &lt;script&gt;"), "escaped");
        assert!(!html.contains("<script>alert"));
        assert!(
            !html.contains("src=\"http") && !html.contains("href=\"http"),
            "self-contained"
        );
    }
}
