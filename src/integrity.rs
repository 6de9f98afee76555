//! The tamper-evident archive: signed, chained digests of what each S3 sink wrote, and the
//! `auditstream verify` walk that checks them.
//!
//! # How an archive becomes verifiable
//!
//! 1. Every object an S3 sink writes carries the SHA-256 of its stored bytes in its metadata
//!    (`auditstream-sha256`), and the sink's receipt names it ([`crate::sink::WrittenObject`]).
//! 2. Before the batch counts as delivered, the delivery worker appends the object (key, hash,
//!    size, Kafka range, time) to the sink's **journal** in the park store and flushes it
//!    ([`Journal::record`]). A crash between the put and the journal means the batch was not
//!    acknowledged: it is sent again (the same key) and journaled then.
//! 3. Every `integrity.digest_interval` and once more at every stop, the [`Digester`] writes a
//!    **digest** object listing the journaled objects, with the SHA-256 of the previous digest
//!    (so the digests form a chain) and an Ed25519 signature, at
//!    `<prefix>.auditstream/digests/<sequence, 10 digits>.json`; then it forgets those journal
//!    entries. The chain's head is read back from the bucket at start-up, so a new park volume
//!    continues the same chain. A crash after the digest and before forgetting lists those
//!    objects once more in the next digest, which [`verify`] allows.
//!
//! # Digest format
//!
//! JSON ([`Digest`]): `format` (`auditstream-digest/1`), `sink`, `prefix`, `sequence` (from 1),
//! `created_at`, `previous` (`{key, sha256}` of the digest before, absent for the first),
//! `objects` (`{key, sha256, bytes, topic, partition, first_offset, last_offset, written_at}`),
//! `public_key` and `signature` (base64). The signature covers the digest serialised without
//! its `signature` field.
//!
//! # What `verify` reports
//!
//! Walking the chain from sequence 1: a digest missing from the sequence, one whose `previous`
//! is not the hash of the digest before it (reordered, replaced), a bad signature. Then every
//! object the digests list: deleted, or modified (its bytes no longer hash to the listed
//! SHA-256). Then every object under the prefix that no digest lists: an error when it is older
//! than the last digest or than two digest intervals (added outside the chain, or the digests
//! that listed it were removed), otherwise only "not yet in a digest". With Object Lock on the
//! bucket, neither objects nor digests can be changed or deleted during their retention.

use std::collections::{BTreeMap, HashMap};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::batch::Batch;
use crate::park::records::Fifo;
use crate::park::{Store, StoreError};
use crate::sink::s3::{sha256_hex, S3Sink};
use crate::sink::{DeliveryError, WrittenObject};

const FORMAT: &str = "auditstream-digest/1";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Where the digests of a sink with `prefix` live.
pub fn digests_prefix(prefix: &str) -> String {
    format!("{prefix}.auditstream/digests/")
}

/// Each daemon writing to a prefix keeps its own chain (`integrity.chain`, by default the
/// host name), so several instances of one consumer group never number over each other.
fn chain_prefix(prefix: &str, chain: &str) -> String {
    format!("{}{chain}/", digests_prefix(prefix))
}

fn digest_key(prefix: &str, chain: &str, sequence: u64) -> String {
    format!("{}{sequence:010}.json", chain_prefix(prefix, chain))
}

/// The default chain name: this host's name, made safe for a key.
pub fn default_chain() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "default".into()
    } else {
        clean
    }
}

/// The Ed25519 key that signs digests.
pub struct Signer {
    pair: Ed25519KeyPair,
}

impl Signer {
    pub fn new(seed: &[u8; 32]) -> Result<Self, String> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map(|pair| Self { pair })
            .map_err(|e| format!("not an Ed25519 key: {e}"))
    }

    /// The public key, base64: what `verify` checks signatures with.
    pub fn public_key(&self) -> String {
        B64.encode(self.pair.public_key().as_ref())
    }

    /// The signature of a digest (over the digest without its signature), base64.
    pub fn sign_digest(&self, digest: &Digest) -> String {
        B64.encode(self.pair.sign(&digest.signed_bytes()).as_ref())
    }
}

/// A new random Ed25519 key (its seed), base64.
pub fn generate_key() -> Result<String, String> {
    use aws_lc_rs::rand::SecureRandom;
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| "no randomness available".to_string())?;
    Ok(B64.encode(seed))
}

/// One object a digest lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub sha256: String,
    pub bytes: u64,
    pub topic: String,
    pub partition: i32,
    pub first_offset: Option<i64>,
    pub last_offset: Option<i64>,
    /// RFC 3339.
    pub written_at: String,
}

/// The digest before this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    pub key: String,
    pub sha256: String,
}

/// A digest object (see the module header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub format: String,
    pub sink: String,
    /// The chain (one per daemon writing to the prefix).
    pub chain: String,
    pub prefix: String,
    pub sequence: u64,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
    pub objects: Vec<Entry>,
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Digest {
    /// The bytes the signature covers: the digest without its signature.
    fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Digest {
            signature: None,
            ..self.clone()
        };
        serde_json::to_vec(&unsigned).unwrap_or_default()
    }

    /// Whether the signature is valid for `public_key` (base64).
    pub fn signature_ok(&self, public_key: &str) -> bool {
        let (Ok(pk), Some(Ok(sig))) = (
            B64.decode(public_key),
            self.signature.as_deref().map(|s| B64.decode(s)),
        ) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, pk)
            .verify(&self.signed_bytes(), &sig)
            .is_ok()
    }
}

/// A sink's journal of objects written since its last digest, in the park store.
#[derive(Clone)]
pub struct Journal {
    fifo: Fifo<Entry>,
    store: Store,
}

impl Journal {
    pub fn open(store: &Store, sink: &str) -> Result<Self, StoreError> {
        Ok(Self {
            fifo: store.fifo(&format!("integrity:{sink}"))?,
            store: store.clone(),
        })
    }

    /// Records the objects written for `batch`, durably.
    pub async fn record(&self, batch: &Batch, objects: &[WrittenObject]) -> Result<(), StoreError> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for o in objects {
            self.fifo.push(&Entry {
                key: o.key.clone(),
                sha256: o.sha256.clone(),
                bytes: o.bytes,
                topic: batch.tp.topic.to_string(),
                partition: batch.tp.partition,
                first_offset: batch.first_offset(),
                last_offset: batch.last_offset(),
                written_at: now.clone(),
            })?;
        }
        self.store.flush().await
    }
}

/// Writes one sink's digests.
pub struct Digester {
    sink: String,
    chain: String,
    s3: S3Sink,
    journal: Journal,
    signer: Signer,
    /// The last digest in the bucket (its sequence, key and hash), once read from the bucket.
    head: Option<Option<(u64, Previous)>>,
}

impl Digester {
    /// A digester; it reads the chain's head from the bucket before its first digest.
    pub fn new(sink: &str, chain: &str, s3: S3Sink, journal: Journal, signer: Signer) -> Self {
        Self {
            sink: sink.to_string(),
            chain: chain.to_string(),
            s3,
            journal,
            signer,
            head: None,
        }
    }

    async fn find_head(&self) -> Result<Option<(u64, Previous)>, DeliveryError> {
        let listed = self
            .s3
            .list(&chain_prefix(self.s3.prefix(), &self.chain))
            .await?;
        let Some(last) = listed.iter().rev().find_map(|l| {
            let name = l.key.rsplit('/').next()?;
            let seq: u64 = name.strip_suffix(".json")?.parse().ok()?;
            Some((seq, l.key.clone()))
        }) else {
            return Ok(None);
        };
        let bytes = self.s3.get(&last.1).await?.unwrap_or_default();
        Ok(Some((
            last.0,
            Previous {
                key: last.1,
                sha256: sha256_hex(&bytes),
            },
        )))
    }

    /// Writes a digest of everything journaled since the last one; `None` when there was
    /// nothing to list.
    pub async fn digest_now(&mut self) -> anyhow::Result<Option<u64>> {
        let pending = self.journal.fifo.all()?;
        if pending.is_empty() {
            return Ok(None);
        }
        let head = match self.head.take() {
            Some(head) => head,
            None => self.find_head().await?,
        };
        self.head = Some(head.clone());
        let sequence = head.as_ref().map_or(1, |(s, _)| s + 1);
        let mut digest = Digest {
            format: FORMAT.into(),
            sink: self.sink.clone(),
            chain: self.chain.clone(),
            prefix: self.s3.prefix().to_string(),
            sequence,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            previous: head.map(|(_, p)| p),
            objects: pending.iter().map(|(_, e)| e.clone()).collect(),
            public_key: self.signer.public_key(),
            signature: None,
        };
        digest.signature = Some(self.signer.sign_digest(&digest));
        let bytes = serde_json::to_vec(&digest)?;
        let key = digest_key(self.s3.prefix(), &self.chain, sequence);
        let sha256 = sha256_hex(&bytes);
        self.s3.put_own(&key, bytes).await?;
        self.head = Some(Some((sequence, Previous { key, sha256 })));
        for (seq, _) in &pending {
            self.journal.fifo.remove(*seq)?;
        }
        metrics::counter!("auditstream_digests_written_total", "sink" => self.sink.clone())
            .increment(1);
        tracing::info!(sink = %self.sink, sequence, objects = pending.len(), "integrity digest written");
        Ok(Some(sequence))
    }
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Report {
    /// Everything that does not check out; empty means the archive is intact.
    pub problems: Vec<String>,
    /// Objects newer than the last digest and than two digest intervals: not yet listed.
    pub pending: Vec<String>,
    pub digests: usize,
    pub objects_checked: usize,
}

/// The time window of objects to check (by when they were written), RFC 3339 bounds.
#[derive(Debug, Default, Clone)]
pub struct Window {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl Window {
    fn contains(&self, written_at: &str) -> bool {
        let Ok(t) = chrono::DateTime::parse_from_rfc3339(written_at) else {
            return true;
        };
        let ms = t.timestamp_millis();
        self.from_ms.is_none_or(|f| ms >= f) && self.to_ms.is_none_or(|to| ms < to)
    }
}

/// Checks one chain: sequence from 1 without gaps, each digest following the one before it,
/// signatures. Adds the objects it lists to `latest`; returns when its last digest was made.
fn walk_chain(
    chain_name: &str,
    chain: &BTreeMap<u64, (String, Vec<u8>)>,
    public_key: &str,
    latest: &mut HashMap<String, Entry>,
    problems: &mut Vec<String>,
) -> Option<i64> {
    let mut expected_seq = 1;
    let mut previous: Option<Previous> = None;
    let mut last_created_ms = None;
    for (seq, (key, bytes)) in chain {
        if *seq != expected_seq {
            problems.push(format!(
                "chain broken: digest {expected_seq} of chain `{chain_name}` is missing (the next one is {key})"
            ));
        }
        expected_seq = seq + 1;
        let this = Previous {
            key: key.clone(),
            sha256: sha256_hex(bytes),
        };
        let digest: Digest = match serde_json::from_slice(bytes) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("chain broken: {key} is not a digest ({e})"));
                previous = Some(this);
                continue;
            }
        };
        if !digest.signature_ok(public_key) {
            problems.push(format!(
                "bad signature: {key} is not signed by the configured key"
            ));
        }
        if digest.sequence != *seq || digest.chain != chain_name {
            problems.push(format!(
                "chain broken: {key} says it is digest {} of chain `{}` (moved or reordered)",
                digest.sequence, digest.chain
            ));
        }
        if digest.previous != previous {
            problems.push(format!(
                "chain broken: {key} does not follow the digest before it (its `previous` is {}, the digest before it hashes to {})",
                digest.previous.as_ref().map_or("none".into(), |p| format!("{} {}", p.key, p.sha256)),
                previous.as_ref().map_or("nothing".into(), |p| format!("{} {}", p.key, p.sha256)),
            ));
        }
        last_created_ms = chrono::DateTime::parse_from_rfc3339(&digest.created_at)
            .ok()
            .map(|t| t.timestamp_millis());
        for e in digest.objects {
            latest.insert(e.key.clone(), e);
        }
        previous = Some(this);
    }
    last_created_ms
}

/// Walks the chains of digests and checks every object they list (see the module header).
/// `progress` is called with (objects checked, objects to check).
pub async fn verify(
    s3: &S3Sink,
    public_key: &str,
    digest_interval: std::time::Duration,
    window: &Window,
    progress: &dyn Fn(u64, u64),
) -> Result<Report, DeliveryError> {
    let mut report = Report::default();
    let dprefix = digests_prefix(s3.prefix());
    let listed = s3.list(&dprefix).await?;
    // The chains, each in sequence order.
    let mut chains: BTreeMap<String, BTreeMap<u64, (String, Vec<u8>)>> = BTreeMap::new();
    for l in &listed {
        let parsed = l.key.strip_prefix(&dprefix).and_then(|rest| {
            let (chain, name) = rest.split_once('/')?;
            let seq = name.strip_suffix(".json")?.parse::<u64>().ok()?;
            Some((chain.to_string(), seq))
        });
        match parsed {
            Some((chain, seq)) => {
                let bytes = s3.get(&l.key).await?.unwrap_or_default();
                chains
                    .entry(chain)
                    .or_default()
                    .insert(seq, (l.key.clone(), bytes));
            }
            None => report
                .problems
                .push(format!("not a digest, among the digests: {}", l.key)),
        }
    }
    let mut latest: HashMap<String, Entry> = HashMap::new();
    // The time of the oldest chain's last digest: what is older is in a digest everywhere.
    let mut all_digested_before: Option<i64> = None;
    for (chain_name, chain) in &chains {
        report.digests += chain.len();
        let last = walk_chain(
            chain_name,
            chain,
            public_key,
            &mut latest,
            &mut report.problems,
        );
        all_digested_before = match (all_digested_before, last) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (None, b) => b,
            (a, None) => a,
        };
    }
    let last_created_ms = all_digested_before;

    // Every listed object, as it is now.
    let mut to_check: Vec<&Entry> = latest
        .values()
        .filter(|e| window.contains(&e.written_at))
        .collect();
    to_check.sort_by(|a, b| a.key.cmp(&b.key));
    let total = to_check.len() as u64;
    for (i, e) in to_check.iter().enumerate() {
        match s3.get(&e.key).await? {
            None => report.problems.push(format!("deleted: {}", e.key)),
            Some(bytes) => {
                let now = sha256_hex(&bytes);
                if now != e.sha256 {
                    report.problems.push(format!(
                        "modified: {} (listed with SHA-256 {}, now {now})",
                        e.key, e.sha256
                    ));
                }
            }
        }
        report.objects_checked += 1;
        progress(i as u64 + 1, total);
    }

    // Objects no digest lists.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let grace_ms = 2 * digest_interval.as_millis() as i64;
    let own = format!("{}.auditstream/", s3.prefix());
    for l in s3.list(s3.prefix()).await? {
        if l.key.starts_with(&own) || latest.contains_key(&l.key) {
            continue;
        }
        let before_last = last_created_ms.is_some_and(|t| l.last_modified_ms < t);
        if before_last || now_ms - l.last_modified_ms > grace_ms {
            report.problems.push(format!(
                "added outside the chain: {} (in no digest; or the digests that listed it were removed)",
                l.key
            ));
        } else {
            report.pending.push(l.key);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(signer: &Signer) -> Digest {
        let mut d = Digest {
            format: FORMAT.into(),
            sink: "archive".into(),
            chain: "host-1".into(),
            prefix: "audit/".into(),
            sequence: 1,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            previous: None,
            objects: vec![Entry {
                key: "audit/a.ndjson".into(),
                sha256: "00".repeat(32),
                bytes: 10,
                topic: "t".into(),
                partition: 0,
                first_offset: Some(0),
                last_offset: Some(9),
                written_at: "2026-01-01T00:00:00.000Z".into(),
            }],
            public_key: signer.public_key(),
            signature: None,
        };
        d.signature = Some(signer.sign_digest(&d));
        d
    }

    #[test]
    fn signatures_check_out_only_for_the_signing_key_and_the_signed_content() {
        let seed = |b| [b; 32];
        let (a, b) = (
            Signer::new(&seed(1)).unwrap(),
            Signer::new(&seed(2)).unwrap(),
        );
        let d = digest(&a);
        assert!(d.signature_ok(&a.public_key()));
        assert!(!d.signature_ok(&b.public_key()));
        let mut changed = d.clone();
        changed.objects[0].sha256 = "11".repeat(32);
        assert!(!changed.signature_ok(&a.public_key()));
        let back: Digest = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert!(back.signature_ok(&a.public_key()), "survives its own JSON");
        assert_eq!(generate_key().unwrap().len(), 44);
    }
}
