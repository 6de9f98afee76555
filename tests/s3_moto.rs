//! The S3 sink against moto's S3 server, which enforces what the in-process server does not:
//! missing buckets, Object Lock (whose puts must carry a checksum) and encryption headers.
//! Opt-in: MOTO_S3_ENDPOINT names a running `moto_server`; `.ci/run` starts one.

mod common;

use std::time::{Duration, SystemTime};

use auditstream::batch::{Batch, Record};
use auditstream::config::{parse_str, SinkKind};
use auditstream::event::TopicPartition;
use auditstream::sink::s3::S3Sink;
use auditstream::sink::Sink;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ObjectLockMode, ServerSideEncryption};

fn endpoint() -> String {
    std::env::var("MOTO_S3_ENDPOINT")
        .expect("set MOTO_S3_ENDPOINT to a moto_server address, e.g. http://127.0.0.1:5055")
}

fn client(endpoint: &str, checksums: RequestChecksumCalculation) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .request_checksum_calculation(checksums)
            .credentials_provider(Credentials::new("moto", "moto", None, None, "test"))
            .build(),
    )
}

async fn sink(endpoint: &str, bucket: &str, extra: &str) -> S3Sink {
    let text = format!(
        "[kafka]\nbrokers=\"x\"\ntopics=[\"t\"]\n[[sinks]]\nname=\"a\"\ntype=\"s3\"\nbucket=\"{bucket}\"\nendpoint=\"{endpoint}\"\nforce_path_style=true\nregion=\"us-east-1\"\naccess_key_id=\"moto\"\nsecret_access_key=\"moto\"\n{extra}\n"
    );
    let mut c = parse_str(&text, "t", &|_| None).unwrap_or_else(|e| panic!("{e}"));
    match c.sinks.remove(0).kind {
        SinkKind::S3(s3) => S3Sink::new(&s3).await.unwrap(),
        _ => unreachable!(),
    }
}

fn batch() -> Batch {
    let mut b = Batch::new(
        TopicPartition {
            topic: "audit".into(),
            partition: 1,
        },
        Some("2026/05/01/".into()),
    );
    for o in 40..45 {
        b.push(Record {
            offset: o,
            body: format!("{{\"o\":{o}}}"),
        });
    }
    b
}

#[tokio::test]
#[ignore = "needs moto_server in MOTO_S3_ENDPOINT; .ci/run starts one and runs it"]
async fn object_lock_puts_carry_a_checksum_and_retention_even_with_when_required() {
    let endpoint = endpoint();
    let bucket = format!("locked-{}", std::process::id());
    let admin = client(&endpoint, RequestChecksumCalculation::WhenSupported);
    admin
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();

    // moto enforces the rule: a locked put without a checksum is refused.
    let bare = client(&endpoint, RequestChecksumCalculation::WhenRequired);
    let refused = bare
        .put_object()
        .bucket(&bucket)
        .key("bare")
        .body(ByteStream::from_static(b"x"))
        .object_lock_mode(ObjectLockMode::Governance)
        .object_lock_retain_until_date(DateTime::from(
            SystemTime::now() + Duration::from_secs(86_400),
        ))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "moto should refuse a locked put without a checksum"
    );

    let s = sink(
        &endpoint,
        &bucket,
        "checksum=\"when_required\"\nobject_lock_mode=\"GOVERNANCE\"\nobject_lock_days=2\nserver_side_encryption=\"AES256\"\ncompression=\"zstd\"\nprefix=\"audit/\"\nstorage_class=\"STANDARD_IA\"",
    )
    .await;
    s.health_check().await.unwrap();
    let b = batch();
    s.deliver(&b).await.unwrap();
    let key = s.object_key(&b);
    assert_eq!(
        key,
        "audit/2026/05/01/audit-1-00000000000000000040.ndjson.zst"
    );
    let head = admin
        .head_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Governance));
    let until = head.object_lock_retain_until_date().unwrap().secs();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (until - now - 2 * 86_400).abs() < 600,
        "retained for two days: {until} vs {now}"
    );
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::Aes256)
    );
    assert_eq!(head.content_encoding(), Some("zstd"));
    assert_eq!(
        head.storage_class().map(|c| c.as_str()),
        Some("STANDARD_IA")
    );
    let meta = head.metadata().unwrap();
    assert_eq!(
        meta.get("auditstream-last-offset").map(String::as_str),
        Some("44")
    );
    let body = admin
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let text = String::from_utf8(zstd::decode_all(&body[..]).unwrap()).unwrap();
    assert_eq!(text.lines().count(), 5);

    // Sent again (a retry), the batch overwrites its own key: still one object.
    s.deliver(&b).await.unwrap();
    let list = admin
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("audit/")
        .send()
        .await
        .unwrap();
    assert_eq!(list.key_count(), Some(1));
}

#[tokio::test]
#[ignore = "needs moto_server in MOTO_S3_ENDPOINT; .ci/run starts one and runs it"]
async fn a_missing_bucket_is_a_permanent_error() {
    let endpoint = endpoint();
    let s = sink(&endpoint, "no-such-bucket-here", "").await;
    let e = s.deliver(&batch()).await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(e.detail.contains("NoSuchBucket"), "{e}");
    let e = s.health_check().await.unwrap_err();
    assert!(e.is_permanent(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server in MOTO_S3_ENDPOINT; .ci/run starts one and runs it"]
async fn a_missing_bucket_parks_and_replays_once_the_bucket_exists() {
    use auditstream::embedded_kafka::EmbeddedKafka;
    use auditstream::status::SinkState;
    use common::*;

    let endpoint = endpoint();
    let bucket = format!("late-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("audit", 2).unwrap();
    let ids = produce_events(&kafka, "audit", 51, 600);
    let mut text = config_head(kafka.bootstrap_servers(), "g-late", "audit", dir.path());
    text = text.replace("[park]", "[park]\nprobe_max_interval = \"1s\"");
    text += &format!(
        r#"
[[sinks]]
name = "archive"
type = "s3"
bucket = "{bucket}"
endpoint = "{endpoint}"
force_path_style = true
region = "us-east-1"
access_key_id = "moto"
secret_access_key = "moto"
compression = "gzip"
template = '{COORDS_TEMPLATE}'
[sinks.batch]
max_events = 100
max_age = "100ms"
[sinks.retry]
initial_interval = "100ms"
max_interval = "500ms"
"#
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let running = start_pipeline(&path).await;
    let archive = running.status.sink("archive").unwrap().clone();
    wait_until("everything parked", Duration::from_secs(60), || {
        archive.snapshot().parked_events == ids.len() as u64
    })
    .await;
    assert_eq!(archive.state(), SinkState::Broken);
    assert!(archive
        .snapshot()
        .last_error
        .unwrap()
        .contains("NoSuchBucket"));

    client(&endpoint, RequestChecksumCalculation::WhenSupported)
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    wait_until("the replay", Duration::from_secs(60), || {
        archive.delivered() >= ids.len() as u64 && archive.snapshot().parked_events == 0
    })
    .await;
    running.stop().await.unwrap();
    let admin = client(&endpoint, RequestChecksumCalculation::WhenSupported);
    let list = admin
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let mut seen = Vec::new();
    for o in list.contents() {
        let body = admin
            .get_object()
            .bucket(&bucket)
            .key(o.key().unwrap())
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        let mut text = String::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap();
        seen.extend(parse_seen(
            &text.lines().map(str::to_string).collect::<Vec<_>>(),
        ));
    }
    assert_eq!(assert_all_arrived(&ids, &seen), 0);
}

#[tokio::test]
#[ignore = "needs moto_server in MOTO_S3_ENDPOINT; .ci/run starts one and runs it"]
async fn kms_encryption_is_asked_for_with_the_configured_key() {
    let endpoint = endpoint();
    let bucket = format!("kms-{}", std::process::id());
    let admin = client(&endpoint, RequestChecksumCalculation::WhenSupported);
    admin.create_bucket().bucket(&bucket).send().await.unwrap();
    let key_id = "arn:aws:kms:us-east-1:123456789012:key/0a1b2c3d-auditstream";
    let s = sink(
        &endpoint,
        &bucket,
        &format!("server_side_encryption=\"aws:kms\"\nkms_key_id=\"{key_id}\""),
    )
    .await;
    let b = batch();
    s.deliver(&b).await.unwrap();
    let head = admin
        .head_object()
        .bucket(&bucket)
        .key(s.object_key(&b))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::AwsKms)
    );
    assert_eq!(head.ssekms_key_id(), Some(key_id));
}
