//! The tamper-evident archive against a real S3 server (s3s-fs on loopback): the daemon writes
//! objects and signed, chained digests; `auditstream verify` (the binary) says everything
//! checks out, then catches, and names, each kind of tampering: a modified object, a deleted
//! one, one added outside the chain, digests reordered, the chain cut at its start or in its
//! middle, and a digest forged with another key.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use auditstream::embedded_kafka::EmbeddedKafka;
use auditstream::integrity::{generate_key, Digest, Signer};
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use common::servers::*;
use common::*;

const TOPIC: &str = "audit";
const BUCKET: &str = "archive";
const DIGESTS: &str = "audit/.auditstream/digests/";

struct Archive {
    root: PathBuf,
    client: aws_sdk_s3::Client,
    config: PathBuf,
}

impl Archive {
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let list = self
            .client
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        let mut keys: Vec<String> = list
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        keys.sort();
        keys
    }

    async fn objects(&self) -> Vec<String> {
        self.keys("audit/")
            .await
            .into_iter()
            .filter(|k| !k.starts_with("audit/.auditstream/"))
            .collect()
    }

    async fn get(&self, key: &str) -> Vec<u8> {
        self.client
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes()
            .to_vec()
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.client
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .unwrap();
    }

    async fn delete(&self, key: &str) {
        self.client
            .delete_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .unwrap();
    }

    /// Makes an object look an hour old (s3s-fs reports the file's modification time).
    fn age(&self, key: &str) {
        let f = std::fs::File::options()
            .write(true)
            .open(self.root.join(BUCKET).join(key))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    }

    /// Runs `auditstream verify`; returns (exit code, stdout).
    fn verify(&self) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_auditstream"))
            .args(["verify", "--config"])
            .arg(&self.config)
            .args(["--sink", "archive"])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn assert_intact(&self, after: &str) {
        let (code, out) = self.verify();
        assert_eq!(code, 0, "{after}: {out}");
        assert!(out.contains("everything checks out"), "{after}: {out}");
    }

    fn assert_caught(&self, what: &str, want: &str) {
        let (code, out) = self.verify();
        assert_eq!(code, 1, "{what} must fail verify: {out}");
        assert!(out.contains(want), "{what}: expected {want:?} in:\n{out}");
    }
}

fn config(dir: &Path, brokers: &str, endpoint: &str, key: &str) -> PathBuf {
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "g-integrity"
topics = ["{TOPIC}"]
[kafka.properties]
"auto.commit.interval.ms" = 200
[park]
path = "{park}"
[integrity]
signing_key = "{key}"
digest_interval = "1s"

[[sinks]]
name = "archive"
type = "s3"
bucket = "{BUCKET}"
prefix = "audit/"
endpoint = "{endpoint}"
force_path_style = true
region = "us-east-1"
access_key_id = "{S3_KEY}"
secret_access_key = "{S3_SECRET}"
compression = "gzip"
template = '{COORDS_TEMPLATE}'
[sinks.batch]
max_events = 50
max_age = "100ms"
"#,
        park = dir.join("park").display(),
    );
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_an_intact_archive_and_names_every_kind_of_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s3");
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let endpoint = start_s3(&root).await;
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, 2).unwrap();
    let key = generate_key().unwrap();
    let archive = Archive {
        root: root.clone(),
        client: s3_client(&endpoint),
        config: config(dir.path(), kafka.bootstrap_servers(), &endpoint, &key),
    };

    // Three rounds of events, a digest after each: a chain of at least three.
    let running = start_pipeline(&archive.config).await;
    let mut ids = Vec::new();
    for round in 0..3u64 {
        ids.extend(produce_events(&kafka, TOPIC, 80 + round, 150));
        let want = ids.len() as u64;
        let sink = running.status.sink("archive").unwrap().clone();
        wait_until("the round delivered", Duration::from_secs(60), || {
            sink.delivered() >= want
        })
        .await;
        let digests_before = archive.keys(DIGESTS).await.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while archive.keys(DIGESTS).await.len() <= digests_before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no digest after round {round}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    running.stop().await.unwrap();
    let digests = archive.keys(DIGESTS).await;
    assert!(digests.len() >= 3, "{digests:?}");
    let objects = archive.objects().await;
    assert!(objects.len() >= 9, "{objects:?}");
    archive.assert_intact("after the run");

    // Every object is listed in a digest with its hash; the hash is in its metadata too.
    let head = archive
        .client
        .head_object()
        .bucket(BUCKET)
        .key(&objects[0])
        .send()
        .await
        .unwrap();
    let sha = head.metadata().unwrap()["auditstream-sha256"].clone();
    assert_eq!(
        sha,
        auditstream::sink::s3::sha256_hex(&archive.get(&objects[0]).await)
    );

    // The public key the command prints is the one digests are signed with.
    let out = Command::new(env!("CARGO_BIN_EXE_auditstream"))
        .args(["integrity", "public-key", "--config"])
        .arg(&archive.config)
        .output()
        .unwrap();
    let seed: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .unwrap()
        .try_into()
        .unwrap();
    let public = Signer::new(&seed).unwrap().public_key();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), public);

    // A modified object.
    let victim = objects[objects.len() / 2].clone();
    let original = archive.get(&victim).await;
    let mut forged = original.clone();
    forged[10] ^= 0xff;
    archive.put(&victim, forged).await;
    archive.assert_caught("a modified object", &format!("modified: {victim}"));
    archive.put(&victim, original.clone()).await;
    archive.assert_intact("restoring the object");

    // A deleted object.
    archive.delete(&victim).await;
    archive.assert_caught("a deleted object", &format!("deleted: {victim}"));
    archive.put(&victim, original).await;
    archive.assert_intact("restoring the object");

    // An object added outside the chain: new, it is only "not yet in a digest"; once it is
    // older than the last digest and two digest intervals, it is an error.
    let extra = "audit/2026/01/01/00/audit-0-00000000000000000001.ndjson.gz".to_string();
    archive.put(&extra, b"forged".to_vec()).await;
    let (code, out) = archive.verify();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("not yet in a digest: {extra}")),
        "{out}"
    );
    archive.age(&extra);
    archive.assert_caught(
        "an added object",
        &format!("added outside the chain: {extra}"),
    );
    archive.delete(&extra).await;
    archive.assert_intact("removing the added object");

    // Digests reordered.
    let (first, second) = (
        archive.get(&digests[0]).await,
        archive.get(&digests[1]).await,
    );
    archive.put(&digests[0], second.clone()).await;
    archive.put(&digests[1], first.clone()).await;
    archive.assert_caught("reordered digests", "chain broken");
    archive.put(&digests[0], first.clone()).await;
    archive.put(&digests[1], second.clone()).await;
    archive.assert_intact("restoring the order");

    // The chain cut at its start, then in its middle.
    archive.delete(&digests[0]).await;
    archive.assert_caught("a chain without its first digest", "digest 1 of chain");
    archive.put(&digests[0], first.clone()).await;
    archive.delete(&digests[1]).await;
    archive.assert_caught("a chain cut in its middle", "digest 2 of chain");
    archive.put(&digests[1], second.clone()).await;
    archive.assert_intact("restoring the chain");

    // A digest forged with another key, listing a forged object's hash.
    let mut digest: Digest = serde_json::from_slice(&second).unwrap();
    let target = digest.objects[0].key.clone();
    let original = archive.get(&target).await;
    let replacement = b"nothing happened here".to_vec();
    digest.objects[0].sha256 = auditstream::sink::s3::sha256_hex(&replacement);
    let other = Signer::new(&[7u8; 32]).unwrap();
    digest.public_key = other.public_key();
    digest.signature = None;
    let resigned = resign(&digest, &other);
    archive.put(&target, replacement).await;
    archive.put(&digests[1], resigned).await;
    let (code, out) = archive.verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("bad signature: {}", digests[1])),
        "{out}"
    );
    assert!(
        out.contains("chain broken"),
        "the next digest no longer follows it: {out}"
    );
    archive.put(&target, original).await;
    archive.put(&digests[1], second).await;
    archive.assert_intact("restoring the digest");
}

/// Signs a digest with `signer`, the way the daemon does (JSON without the signature).
fn resign(digest: &Digest, signer: &Signer) -> Vec<u8> {
    let mut d = digest.clone();
    d.signature = Some(signer.sign_digest(&d));
    serde_json::to_vec(&d).unwrap()
}
