//! The S3 and HTTP sinks against real servers on 127.0.0.1: an S3 server (s3s-fs) and an axum
//! receiver with scripted faults, TLS from a private CA, a front that drops connections.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::Duration;

use auditstream::batch::{Batch, Record};
use auditstream::config::{parse_str, HttpSinkConfig, S3SinkConfig, SinkKind};
use auditstream::embedded_kafka::EmbeddedKafka;
use auditstream::event::TopicPartition;
use auditstream::sink::http::HttpSink;
use auditstream::sink::s3::S3Sink;
use auditstream::sink::Sink;
use auditstream::status::SinkState;
use common::servers::*;
use common::*;

const TOPIC: &str = "audit";
const LONG: Duration = Duration::from_secs(60);

fn sink_kind(fragment: &str) -> SinkKind {
    let text = format!(
        "[kafka]\nbrokers=\"x\"\ntopics=[\"t\"]\n[[sinks]]\nname=\"s\"\nformat=\"ndjson\"\n{fragment}\n"
    );
    parse_str(&text, "test", &|_| None)
        .unwrap_or_else(|e| panic!("{e}"))
        .sinks
        .remove(0)
        .kind
}

fn http_config(fragment: &str) -> HttpSinkConfig {
    match sink_kind(&format!("type=\"http\"\n{fragment}")) {
        SinkKind::Http(c) => *c,
        _ => unreachable!(),
    }
}

fn s3_config(fragment: &str) -> S3SinkConfig {
    match sink_kind(&format!("type=\"s3\"\n{fragment}")) {
        SinkKind::S3(c) => *c,
        _ => unreachable!(),
    }
}

fn batch(partition: i32, from: i64, bodies: Vec<String>) -> Batch {
    let mut b = Batch::new(
        TopicPartition {
            topic: TOPIC.into(),
            partition,
        },
        None,
    );
    for (i, body) in bodies.into_iter().enumerate() {
        b.push(Record {
            offset: from + i as i64,
            body,
        });
    }
    b
}

fn s3_sink_toml(name: &str, endpoint: &str, bucket: &str, extra: &str) -> String {
    format!(
        r#"
[[sinks]]
name = "{name}"
type = "s3"
bucket = "{bucket}"
endpoint = "{endpoint}"
force_path_style = true
region = "us-east-1"
access_key_id = "{S3_KEY}"
secret_access_key = "{S3_SECRET}"
template = '{COORDS_TEMPLATE}'
{extra}
[sinks.batch]
max_events = 150
max_age = "200ms"
"#
    )
}

fn http_sink_toml(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[sinks]]
name = "{name}"
type = "http"
url = "{url}"
template = '{COORDS_TEMPLATE}'
{extra}
[sinks.batch]
max_events = 100
max_age = "200ms"
[sinks.retry]
initial_interval = "100ms"
max_interval = "2s"
max_elapsed = "30s"
"#
    )
}

/// An object as read back: key, content-encoding, metadata, decompressed lines.
type Object = (
    String,
    Option<String>,
    BTreeMap<String, String>,
    Vec<String>,
);

/// Every object under `prefix`.
async fn objects(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<Object> {
    let list = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    let mut out = Vec::new();
    for o in list.contents() {
        let key = o.key().unwrap().to_string();
        let got = client
            .get_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(got.content_type(), Some("application/x-ndjson"));
        let encoding = got.content_encoding().map(str::to_string);
        let meta: BTreeMap<String, String> = got
            .metadata()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let raw = got.body.collect().await.unwrap().into_bytes().to_vec();
        let text = match encoding.as_deref() {
            Some("gzip") => {
                let mut s = String::new();
                flate2::read::GzDecoder::new(&raw[..])
                    .read_to_string(&mut s)
                    .unwrap();
                s
            }
            Some("zstd") => String::from_utf8(zstd::decode_all(&raw[..]).unwrap()).unwrap(),
            _ => String::from_utf8(raw).unwrap(),
        };
        out.push((
            key,
            encoding,
            meta,
            text.lines().map(str::to_string).collect(),
        ));
    }
    out
}

/// Seen records across objects, objects ordered by (partition, first offset).
fn seen_in(objs: &[Object]) -> Vec<Seen> {
    let mut all: Vec<Seen> = objs.iter().flat_map(|o| parse_seen(&o.3)).collect();
    // Objects are listed by key; order per partition is the order of offsets within each
    // object and of objects by first offset, which the key's deterministic name encodes.
    all.sort_by_key(|s| (s.partition, s.offset));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_hold_every_event_compressed_under_safe_keys() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("archive")).unwrap();
    let endpoint = start_s3(&root).await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    // A hostile workspace the key template puts into keys, first on its partition so that it
    // opens a batch (keys are rendered on a batch's first event).
    kafka
        .send(
            TOPIC,
            Some(0),
            None,
            Some(br#"{"id":"evil","workspace":"../../../etc\u0000/passwd","timestamp":"2026-01-01T00:00:00Z","action":"x"}"#),
        )
        .unwrap();
    let ids = produce_events(&kafka, TOPIC, 21, 900);

    let mut text = config_head(kafka.bootstrap_servers(), "g-s3", TOPIC, dir.path());
    text += &s3_sink_toml(
        "zstd",
        &endpoint,
        "archive",
        "prefix = \"z/\"\ncompression = \"zstd\"",
    );
    text += &s3_sink_toml(
        "gzip",
        &endpoint,
        "archive",
        "prefix = \"g/\"\ncompression = \"gzip\"\nstorage_class = \"STANDARD\"",
    );
    text += &s3_sink_toml(
        "plain",
        &endpoint,
        "archive",
        "prefix = \"p/\"\ncompression = \"none\"\nkey = \"{{default workspace \\\"none\\\"}}/\"\nchecksum = \"when_required\"",
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let total = ids.len() as u64 + 1;
    let status = running.status.clone();
    wait_until("every message committed", LONG, || {
        status.source.committable() >= total
    })
    .await;
    running.stop().await.unwrap();

    let client = s3_client(&endpoint);
    let mut all_ids = ids.clone();
    all_ids.push("evil".into());
    for (prefix, encoding) in [("z/", Some("zstd")), ("g/", Some("gzip")), ("p/", None)] {
        let objs = objects(&client, "archive", prefix).await;
        assert!(
            objs.len() >= 4,
            "{prefix}: one object per batch, {} objects",
            objs.len()
        );
        for (key, enc, meta, lines) in &objs {
            assert_eq!(enc.as_deref(), encoding, "{key}");
            assert!(!key.contains(".."), "{key}");
            assert!(!key.contains('\0'));
            let seen = parse_seen(lines);
            let first = seen[0].offset;
            let name = format!("{TOPIC}-{}-{first:020}.ndjson", seen[0].partition);
            assert!(key.contains(&name), "deterministic name {name} in {key}");
            assert_eq!(
                meta.get("auditstream-first-offset"),
                Some(&first.to_string())
            );
            assert_eq!(
                meta.get("auditstream-records"),
                Some(&lines.len().to_string())
            );
            assert_ordered_per_partition(&seen, false);
        }
        let seen = seen_in(&objs);
        assert_eq!(assert_all_arrived(&all_ids, &seen), 0, "{prefix}");
        if prefix == "z/" {
            // The default key: the event's hour.
            assert!(
                objs.iter().all(|o| o.0.starts_with("z/2026/01/01/")),
                "{:?}",
                objs[0].0
            );
        }
    }
    let plain = objects(&client, "archive", "p/").await;
    let evil = plain
        .iter()
        .find(|o| o.3.iter().any(|l| l.contains("\"evil\"")))
        .unwrap();
    assert!(evil.0.starts_with("p/etc/passwd/"), "{}", evil.0);
}

#[tokio::test]
async fn s3_missing_bucket_is_permanent_and_the_health_check_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = start_s3(dir.path()).await;
    let c = s3_config(&format!(
        "bucket=\"nope\"\nendpoint=\"{endpoint}\"\nforce_path_style=true\naccess_key_id=\"{S3_KEY}\"\nsecret_access_key=\"{S3_SECRET}\""
    ));
    let sink = S3Sink::new(&c).await.unwrap();
    let e = sink.health_check().await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    // (s3s-fs creates buckets on write, so a put to a missing bucket is checked against
    // moto in tests/s3_moto.rs.)

    let wrong_key = s3_config(&format!(
        "bucket=\"nope\"\nendpoint=\"{endpoint}\"\nforce_path_style=true\naccess_key_id=\"{S3_KEY}\"\nsecret_access_key=\"wrong\""
    ));
    let e = S3Sink::new(&wrong_key)
        .await
        .unwrap()
        .deliver(&batch(0, 0, vec!["{}".into()]))
        .await
        .unwrap_err();
    assert!(e.is_permanent(), "bad credentials: {e}");

    // Nothing listening: retryable.
    let down = s3_config(&format!(
        "bucket=\"b\"\nendpoint=\"http://127.0.0.1:9\"\nforce_path_style=true\naccess_key_id=\"{S3_KEY}\"\nsecret_access_key=\"{S3_SECRET}\"\ntimeout=\"2s\""
    ));
    let e = S3Sink::new(&down)
        .await
        .unwrap()
        .deliver(&batch(0, 0, vec!["{}".into()]))
        .await
        .unwrap_err();
    assert!(!e.is_permanent(), "{e}");
}

#[tokio::test]
async fn s3_large_batches_go_up_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("big")).unwrap();
    let endpoint = start_s3(dir.path()).await;
    let c = s3_config(&format!(
        "bucket=\"big\"\nendpoint=\"{endpoint}\"\nforce_path_style=true\naccess_key_id=\"{S3_KEY}\"\nsecret_access_key=\"{S3_SECRET}\"\ncompression=\"none\"\nmultipart_threshold=\"6MiB\"\nmultipart_part_size=\"5MiB\""
    ));
    let sink = S3Sink::new(&c).await.unwrap();
    let bodies: Vec<String> = (0..12_000)
        .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(1000)))
        .collect();
    let b = batch(2, 5000, bodies.clone());
    sink.deliver(&b).await.unwrap();
    let objs = objects(&s3_client(&endpoint), "big", "").await;
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].3, bodies);
    assert_eq!(objs[0].0, sink.object_key(&b));
}

#[tokio::test]
async fn a_failed_multipart_upload_is_aborted_leaving_no_parts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("big")).unwrap();
    let (endpoint, requests) = common::servers::start_s3_failing_part(dir.path(), 2).await;
    let c = s3_config(&format!(
        "bucket=\"big\"\nendpoint=\"{endpoint}\"\nforce_path_style=true\naccess_key_id=\"{S3_KEY}\"\nsecret_access_key=\"{S3_SECRET}\"\ncompression=\"none\"\nmultipart_threshold=\"6MiB\"\nmultipart_part_size=\"5MiB\""
    ));
    let sink = S3Sink::new(&c).await.unwrap();
    let bodies: Vec<String> = (0..12_000)
        .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(1000)))
        .collect();
    let e = sink.deliver(&batch(2, 5000, bodies)).await.unwrap_err();
    assert!(
        !e.is_permanent() && e.detail.contains("InternalError"),
        "{e}"
    );
    let requests = requests.lock().unwrap().clone();
    let upload_id = requests
        .iter()
        .find_map(|(_, q)| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("uploadId="))
                .map(str::to_string)
        })
        .expect("a multipart upload was started");
    assert!(
        requests
            .iter()
            .any(|(m, q)| m == "DELETE" && q.contains(&format!("uploadId={upload_id}"))),
        "the upload was aborted: {requests:?}"
    );
    let parts = s3_client(&endpoint)
        .list_parts()
        .bucket("big")
        .key(sink.object_key(&batch(2, 5000, vec!["x".into()])))
        .upload_id(&upload_id)
        .send()
        .await
        .unwrap();
    assert!(parts.parts().is_empty(), "no parts are left behind");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(&upload_id))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(objects(&s3_client(&endpoint), "big", "").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_retries_transient_failures_and_every_event_arrives_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    receiver.script(vec![
        Answer::Status(503),
        Answer::Status(503),
        Answer::Status(503),
        Answer::RetryAfter(4),
        Answer::Slow(Duration::from_millis(1500)),
        Answer::Status(500),
    ]);
    let addr = receiver.serve().await;
    let front = dropping_front(addr, 2).await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let ids = produce_events(&kafka, TOPIC, 22, 800);
    let mut text = config_head(kafka.bootstrap_servers(), "g-http", TOPIC, dir.path());
    text += &http_sink_toml(
        "siem",
        &format!("http://{front}/ingest"),
        "timeout = \"500ms\"",
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let sink = running.status.sink("siem").unwrap().clone();
    // Both: a replayed batch counts as delivered a moment before its park entry is released
    // (CI once saw every event delivered with the last 95 still in the park).
    wait_until("every event delivered and the park drained", LONG, || {
        sink.delivered() >= ids.len() as u64 && sink.snapshot().parked_events == 0
    })
    .await;
    running.stop().await.unwrap();

    let seen = parse_seen(&receiver.accepted_lines());
    assert_all_arrived(&ids, &seen);
    assert_first_arrivals_ordered(&seen);

    // The waits followed the schedule: backoff between the 503s, and at least the
    // Retry-After seconds after the 429 (longer than the schedule's own step, at most 2.6 s).
    let reqs = receiver.requests();
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(
        &statuses[..6],
        &[503, 503, 503, 429, 200, 500],
        "{statuses:?}"
    );
    let gap = |i: usize| reqs[i + 1].at - reqs[i].at;
    let gaps: Vec<Duration> = (0..5).map(gap).collect();
    eprintln!("gaps between the first requests: {gaps:?}");
    // Two dropped connections took the 100 and 200 ms steps; then 400 and 800 ms, +-30%.
    let ms = |d: Duration| d.as_millis();
    assert!((250..=700).contains(&ms(gaps[0])), "{gaps:?}");
    assert!((500..=1300).contains(&ms(gaps[1])), "{gaps:?}");
    assert!(
        gaps[3] >= Duration::from_millis(3900),
        "Retry-After honoured: {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_permanent_errors_break_the_sink_at_once_and_park_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    receiver.then(Answer::Status(401));
    let addr = receiver.serve().await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 1).unwrap();
    let ids = produce_events(&kafka, TOPIC, 23, 50);
    let mut text = config_head(kafka.bootstrap_servers(), "g-401", TOPIC, dir.path());
    // Probes start 1 s (+-10%) after the break: far longer than the 50 ms it takes to see it.
    text += &http_sink_toml("siem", &format!("http://{addr}/"), "")
        .replace("initial_interval = \"100ms\"", "initial_interval = \"1s\"");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let sink = running.status.sink("siem").unwrap().clone();
    wait_until("the sink to break", LONG, || {
        sink.state() == SinkState::Broken
    })
    .await;
    // Broken on the first answer: a permanent error is not put through the retry schedule.
    assert_eq!(receiver.requests().len(), 1);
    let snap = sink.snapshot();
    assert!(
        snap.last_error.as_deref().unwrap().contains("401"),
        "{snap:?}"
    );
    assert!(
        snap.last_error.as_deref().unwrap().contains("scripted 401"),
        "{snap:?}"
    );
    // Nothing is dropped: every event is parked, durably, and only then committed.
    let status = running.status.clone();
    wait_until("every message parked and committed", LONG, || {
        status.source.committable() >= ids.len() as u64
    })
    .await;
    assert_eq!(sink.snapshot().parked_events, ids.len() as u64);
    assert_eq!(sink.delivered(), 0);

    // The credentials are fixed: the next probe replays the park in order.
    receiver.then(Answer::Ok);
    wait_until("the park to drain", LONG, || {
        sink.snapshot().parked_events == 0
    })
    .await;
    wait_until("the sink to be healthy", LONG, || {
        sink.state() == SinkState::Healthy
    })
    .await;
    running.stop().await.unwrap();
    let seen = parse_seen(&receiver.accepted_lines());
    assert_eq!(assert_all_arrived(&ids, &seen), 0);
}

#[tokio::test]
async fn http_requests_too_large_are_split_not_retried_forever() {
    let receiver = Receiver::new();
    receiver.max_body(2000);
    let addr = receiver.serve().await;
    let sink = HttpSink::new(&http_config(&format!("url=\"http://{addr}/\""))).unwrap();
    let bodies: Vec<String> = (0..60)
        .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "y".repeat(80)))
        .collect();
    sink.deliver(&batch(0, 0, bodies.clone())).await.unwrap();
    assert_eq!(receiver.accepted_lines(), bodies, "all records, in order");
    assert!(
        receiver.requests().iter().any(|r| r.status == 413),
        "the endpoint refused some"
    );
    assert!(receiver
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .all(|r| r.body.len() <= 2000));

    // A single record the endpoint still refuses is listed as refused (the worker quarantines
    // it); the records around it arrive, in order.
    let before = receiver.accepted_lines().len();
    let mixed = vec![
        "{\"n\":\"a\"}".to_string(),
        "z".repeat(3000),
        "{\"n\":\"b\"}".to_string(),
    ];
    let receipt = sink.deliver(&batch(0, 60, mixed.clone())).await.unwrap();
    assert_eq!(receipt.refused().len(), 1);
    assert_eq!(receipt.refused()[0].index, 1);
    assert!(
        receipt.refused()[0].reason.contains("413"),
        "{:?}",
        receipt.refused()
    );
    assert_eq!(
        receiver.accepted_lines()[before..].to_vec(),
        vec![mixed[0].clone(), mixed[2].clone()]
    );

    // max_request_bytes splits before sending: no 413 at all.
    let polite = Receiver::new();
    polite.max_body(1000);
    let addr = polite.serve().await;
    let sink = HttpSink::new(&http_config(&format!(
        "url=\"http://{addr}/\"\nmax_request_bytes=\"1000\""
    )))
    .unwrap();
    sink.deliver(&batch(0, 0, bodies.clone())).await.unwrap();
    assert!(polite.requests().iter().all(|r| r.status == 200));
    assert_eq!(polite.accepted_lines(), bodies);
}

#[tokio::test]
async fn http_encodings_auth_and_compression() {
    let receiver = Receiver::new();
    let addr = receiver.serve().await;
    let records = vec![r#"{"a":1}"#.to_string(), r#"{"a":2}"#.to_string()];

    let sink = HttpSink::new(&http_config(&format!(
        "url=\"http://{addr}/a\"\nencoding=\"json_array\"\ncompression=\"gzip\"\nauth={{ bearer = \"t0k\" }}\nheaders={{ \"X-Source\" = \"auditstream\" }}"
    )))
    .unwrap();
    sink.deliver(&batch(0, 0, records.clone())).await.unwrap();
    let r = receiver.requests().pop().unwrap();
    assert_eq!(String::from_utf8(r.body).unwrap(), r#"[{"a":1},{"a":2}]"#);
    assert_eq!(r.headers["authorization"], "Bearer t0k");
    assert_eq!(r.headers["content-encoding"], "gzip");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["x-source"], "auditstream");

    let sink = HttpSink::new(&http_config(&format!(
        "url=\"http://{addr}/hec\"\nencoding=\"concatenated\"\nauth={{ splunk = \"hec-token\" }}"
    )))
    .unwrap();
    sink.deliver(&batch(0, 0, records.clone())).await.unwrap();
    let r = receiver.requests().pop().unwrap();
    assert_eq!(String::from_utf8(r.body).unwrap(), r#"{"a":1}{"a":2}"#);
    assert_eq!(r.headers["authorization"], "Splunk hec-token");

    let before = receiver.requests().len();
    let sink = HttpSink::new(&http_config(&format!(
        "url=\"http://{addr}/one\"\nencoding=\"single\"\nmethod=\"PUT\"\nauth={{ basic = {{ user = \"u\", password = \"p\" }} }}"
    )))
    .unwrap();
    sink.deliver(&batch(0, 0, records.clone())).await.unwrap();
    let reqs = receiver.requests();
    assert_eq!(reqs.len() - before, 2, "one request per record");
    assert_eq!(reqs.last().unwrap().headers["authorization"], "Basic dTpw");
    assert!(!sink.describe().contains("dTpw"));
}

#[tokio::test]
async fn http_tls_with_a_private_ca_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let ca = dir.path().join("ca.pem");
    let cert = dir.path().join("client.pem");
    let key = dir.path().join("client.key");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    std::fs::write(&cert, &pki.client_cert_pem).unwrap();
    std::fs::write(&key, &pki.client_key_pem).unwrap();
    let one = || batch(0, 0, vec!["{}".to_string()]);

    let receiver = Receiver::new();
    let addr = receiver.serve_tls(pki.server_config(false)).await;
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let untrusting = HttpSink::new(&http_config(&format!("url=\"{url}\""))).unwrap();
    let e = untrusting.deliver(&one()).await.unwrap_err();
    assert!(
        e.is_permanent(),
        "an untrusted certificate is permanent: {e}"
    );
    let trusting = HttpSink::new(&http_config(&format!(
        "url=\"{url}\"\nca_file=\"{}\"",
        ca.display()
    )))
    .unwrap();
    trusting.deliver(&one()).await.unwrap();
    let insecure = HttpSink::new(&http_config(&format!(
        "url=\"{url}\"\ntls_insecure_skip_verify=true"
    )))
    .unwrap();
    insecure.deliver(&one()).await.unwrap();

    let mtls = Receiver::new();
    let addr = mtls.serve_tls(pki.server_config(true)).await;
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let without = HttpSink::new(&http_config(&format!(
        "url=\"{url}\"\nca_file=\"{}\"",
        ca.display()
    )))
    .unwrap();
    let e = without.deliver(&one()).await.unwrap_err();
    eprintln!("without a client certificate: {e}");
    assert!(
        e.is_permanent() && e.detail.to_lowercase().contains("certificate"),
        "the server wants a client certificate, and only a person can fix that: {e}"
    );
    let with = HttpSink::new(&http_config(&format!(
        "url=\"{url}\"\nca_file=\"{}\"\nclient_cert=\"{}\"\nclient_key=\"{}\"",
        ca.display(),
        cert.display(),
        key.display()
    )))
    .unwrap();
    with.deliver(&one()).await.unwrap();
    assert_eq!(mtls.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_sink_does_not_stop_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join("archive")).unwrap();
    let endpoint = start_s3(&root).await;
    let receiver = Receiver::new();
    receiver.then(Answer::Status(503));
    let addr = receiver.serve().await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 4).unwrap();
    let ids = produce_events(&kafka, TOPIC, 24, 600);
    let mut text = config_head(kafka.bootstrap_servers(), "g-both", TOPIC, dir.path());
    text += &s3_sink_toml("archive", &endpoint, "archive", "compression = \"zstd\"");
    text += &http_sink_toml("siem", &format!("http://{addr}/"), "");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let archive = running.status.sink("archive").unwrap().clone();
    wait_until("the archive has everything", LONG, || {
        archive.delivered() >= ids.len() as u64
    })
    .await;
    let siem = running.status.sink("siem").unwrap().snapshot();
    assert_eq!(siem.delivered_events, 0);
    assert_ne!(siem.state, SinkState::Healthy);
    assert!(siem.last_error.unwrap().contains("503"));
    let objs = objects(&s3_client(&endpoint), "archive", "").await;
    let seen = seen_in(&objs);
    assert_eq!(assert_all_arrived(&ids, &seen), 0);
    let partitions: BTreeSet<i32> = seen.iter().map(|s| s.partition).collect();
    assert_eq!(partitions.len(), 4);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_endpoint_always_refuses_is_quarantined_and_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    receiver.max_body(3000);
    let addr = receiver.serve().await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 1).unwrap();
    let before = produce_events(&kafka, TOPIC, 24, 40);
    let huge = format!(r#"{{"id":"huge","action":"{}"}}"#, "x".repeat(5000));
    kafka
        .send(TOPIC, Some(0), None, Some(huge.as_bytes()))
        .unwrap();
    kafka.flush().unwrap();
    let after = produce_events(&kafka, TOPIC, 25, 40);
    let mut text = config_head(kafka.bootstrap_servers(), "g-refused", TOPIC, dir.path());
    text += &http_sink_toml("siem", &format!("http://{addr}/"), "");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let sink = running.status.sink("siem").unwrap().clone();
    let status = running.status.clone();
    let total = (before.len() + 1 + after.len()) as u64;
    wait_until("every message finished and committed", LONG, || {
        status.source.committable() >= total
    })
    .await;
    assert_eq!(sink.state(), SinkState::Healthy, "{:?}", sink.snapshot());
    assert_eq!(
        sink.snapshot().parked_events,
        0,
        "nothing is stuck in the park"
    );
    assert_eq!(sink.quarantined(), 1);
    running.stop().await.unwrap();

    let seen = parse_seen(&receiver.accepted_lines());
    let ids: Vec<String> = before.iter().chain(&after).cloned().collect();
    assert_eq!(assert_all_arrived(&ids, &seen), 0);
    assert!(seen.iter().all(|s| s.id != "huge"));
    let store = auditstream::park::Store::open(&dir.path().join("park")).unwrap();
    let q: Vec<_> = store.quarantine_entries().map(|e| e.unwrap().1).collect();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].sink.as_deref(), Some("siem"));
    assert_eq!(q[0].kind, "refused_by_destination");
    assert_eq!(q[0].offset, before.len() as i64);
    assert!(q[0].reason.contains("413"), "{}", q[0].reason);
    assert!(q[0].value.as_deref().unwrap().contains("\"id\":\"huge\""));
}

/// A sink that is slow but never fails would fill the in-flight window and hold everyone
/// back; instead it spills to its park, the other sink goes on at full speed, and the slow one
/// gets everything later, in order, at its own pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_spills_to_its_park_and_the_other_goes_on_at_full_speed() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::new();
    // 50 events per request, 150 ms per request: at most about 330 events a second.
    receiver.then(Answer::Slow(Duration::from_millis(150)));
    let addr = receiver.serve().await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    let ids = produce_events(&kafka, TOPIC, 26, 3000);
    let mut text = config_head(kafka.bootstrap_servers(), "g-slow-spill", TOPIC, dir.path());
    text += "[pipeline]\nmax_in_flight_events = 400\n";
    text += &http_sink_toml("siem", &format!("http://{addr}/"), "timeout = \"5s\"")
        .replace("max_events = 100", "max_events = 50");
    text += &format!(
        "\n[[sinks]]\nname = \"archive\"\ntype = \"file\"\npath = \"{}\"\ntemplate = '{COORDS_TEMPLATE}'\n[sinks.batch]\nmax_events = 100\nmax_age = \"50ms\"\n",
        dir.path().join("archive.jsonl").display()
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let siem = running.status.sink("siem").unwrap().clone();
    let archive = running.status.sink("archive").unwrap().clone();
    wait_until("the archive to have everything", LONG, || {
        archive.delivered() >= ids.len() as u64
    })
    .await;
    // Without spilling, the archive could be at most the in-flight window (400) ahead of the
    // SIEM: the window holds everything the SIEM has not finished. Further ahead, the SIEM's
    // backlog left the window for its park. (Not a speed ratio: that depends on the machine.)
    let siem_then = siem.delivered();
    assert!(
        siem_then + 400 < ids.len() as u64,
        "the archive did not get ahead of the slow SIEM by more than the window ({siem_then} of {} at the SIEM by then)",
        ids.len()
    );
    assert!(
        siem.snapshot().parked_events > 0,
        "the SIEM's backlog is parked"
    );
    wait_until("the SIEM to have everything", LONG, || {
        siem.delivered() >= ids.len() as u64 && siem.snapshot().parked_events == 0
    })
    .await;
    running.stop().await.unwrap();
    let seen = parse_seen(&receiver.accepted_lines());
    assert_eq!(assert_all_arrived(&ids, &seen), 0);
    assert_first_arrivals_ordered(&seen);
    let archived = read_seen(&dir.path().join("archive.jsonl"));
    assert_eq!(assert_all_arrived(&ids, &archived), 0);
    eprintln!(
        "the archive had all {} events when the SIEM had {siem_then}",
        ids.len()
    );
}

/// A destination that is down at start-up is a clear state and error, not a crash: the daemon
/// runs, and what it cannot deliver is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_down_at_start_up_is_retrying_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 1).unwrap();
    let closed = common::servers::free_port(); // nothing listens there
    let mut text = config_head(kafka.bootstrap_servers(), "g-down", TOPIC, dir.path());
    text += &s3_sink_toml(
        "archive",
        &format!("http://127.0.0.1:{closed}"),
        "archive",
        "",
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let archive = running.status.sink("archive").unwrap().clone();
    wait_until("the start-up check to fail", LONG, || {
        archive.state() == SinkState::Retrying
    })
    .await;
    let error = archive.snapshot().last_error.unwrap();
    assert!(error.contains("cannot reach S3"), "{error}");
    let ids = produce_events(&kafka, TOPIC, 27, 20);
    let status = running.status.clone();
    wait_until("the events parked and committed", LONG, || {
        status.source.committable() >= ids.len() as u64
    })
    .await;
    assert_eq!(archive.snapshot().parked_events, ids.len() as u64);
    running.stop().await.unwrap();
}
