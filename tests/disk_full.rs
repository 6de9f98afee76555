//! Full disks, for real: the park, or a file sink's file, on a small filesystem of its own (a
//! size-limited tmpfs mounted by the test and unmounted when it ends), filled while the daemon
//! runs. The daemon stays up, says why (log, `/status`, an alert), commits no offset it has not
//! stored, and recovers by itself when space returns.
//!
//! tmpfs rather than a loop-mounted ext4 image: it is a real filesystem with a hard size limit
//! (writes past it fail with ENOSPC, as on a full disk), and it needs neither a loop device nor
//! mkfs, which containers often lack. Mounting needs root: these tests are ignored by default
//! and `.ci/run` runs them (and fails when it cannot mount).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditstream::batch::{Batch, Record};
use auditstream::embedded_kafka::EmbeddedKafka;
use auditstream::event::TopicPartition;
use auditstream::generate::Generator;
use auditstream::park::Store;
use common::servers::*;
use common::*;

const TOPIC: &str = "audit";
const LONG: Duration = Duration::from_secs(120);

/// A size-limited tmpfs mounted at a fresh directory, unmounted and removed on drop.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = std::env::temp_dir().join(format!(
            "auditstream-smallfs-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (these tests need root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Bytes still free for writing.
    fn available(&self) -> u64 {
        let c = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs(3) on a NUL-terminated path into a zeroed struct we own.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// Writes a filler file until only about `leave` bytes are free (or none); returns it.
    fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path(&format!("filler-{}", fastrand::u32(..)));
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5a_u8; 64 * 1024];
        while self.available() > leave {
            let n = (self.available() - leave).min(chunk.len() as u64) as usize;
            if f.write_all(&chunk[..n.max(1)]).is_err() {
                break; // full
            }
        }
        path
    }
}

impl SmallFs {
    /// Unmounts lazily at once: for a test whose process still holds files on it.
    fn detach(self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
        std::mem::forget(self);
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        for _ in 0..50 {
            match Command::new("umount").arg(&self.dir).status() {
                Ok(s) if s.success() => {
                    let _ = std::fs::remove_dir(&self.dir);
                    return;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        // Still busy (a process of a failed test holds it): detach it rather than leak it.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn batch(offset: i64, n: usize, body_bytes: usize) -> Batch {
    let mut b = Batch::new(
        TopicPartition {
            topic: "t".into(),
            partition: 0,
        },
        None,
    );
    for i in 0..n {
        b.push(Record {
            offset: offset + i as i64,
            body: format!(
                "{{\"o\":{},\"pad\":\"{}\"}}",
                offset + i as i64,
                "x".repeat(body_bytes)
            ),
        });
    }
    b
}

/// The store alone: an append on a full disk fails with the disk's error (it never pretends),
/// and from then on every call fails at once (sled 0.34 cannot be trusted after a failed log
/// write: its later flushes and its drop can block forever), so nothing in the daemon hangs on
/// it. (Recovery is the daemon restarting itself; see the tests below.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mount (root); .ci/run runs it"]
async fn the_park_store_on_a_full_disk_fails_appends_at_once_and_never_blocks() {
    let fs = SmallFs::mount("8m");
    let store = Store::open(&fs.path("park")).unwrap();
    let park = store.sink_park("siem").unwrap();
    for i in 0..20 {
        park.append(&batch(i * 100, 100, 200), None).await.unwrap();
    }
    let _filler = fs.fill(256 * 1024);
    let mut first_error = None;
    let mut offset = 2000;
    for _ in 0..2000 {
        let b = batch(offset, 100, 200);
        match tokio::time::timeout(Duration::from_secs(30), park.append(&b, None))
            .await
            .expect("an append on a full disk blocked")
        {
            Ok(_) => {}
            Err(e) => {
                first_error = Some(e.to_string());
                break;
            }
        }
        offset += 100;
    }
    let first_error = first_error.expect("the park never filled");
    eprintln!("the first failed append: {first_error}");
    assert!(
        first_error.contains("No space left on device"),
        "{first_error}"
    );
    assert!(store.failed());
    // Every later call fails at once, saying why, and blocks nothing.
    for _ in 0..3 {
        let e = tokio::time::timeout(
            Duration::from_secs(5),
            park.append(&batch(offset, 100, 200), None),
        )
        .await
        .expect("an append on a failed store blocked")
        .unwrap_err();
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert!(e.is_unwritable());
    }
    assert!(park.head().is_err());
    assert!(tokio::time::timeout(Duration::from_secs(5), store.flush())
        .await
        .expect("a flush on a failed store blocked")
        .is_err());
}

/// A compaction on a disk too full for its copy: it fails with the disk's error (it never
/// blocks: the store's writes wait on it), removes its partial generation, and the store goes
/// on in the old one with everything in it; once there is room, a compaction succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mount (root); .ci/run runs it"]
async fn a_compaction_on_a_full_disk_fails_cleanly_and_the_store_goes_on() {
    use auditstream::park::quarantine::QuarantineEntry;
    let fs = SmallFs::mount("32m");
    let path = fs.path("park");
    let store = Store::open(&path).unwrap();
    // About 4 MiB outside the parks, for the copy to need room.
    let entries: Vec<QuarantineEntry> = (0..2000)
        .map(|i| quarantined(i, format!("{i:06}{}", "q".repeat(2000))))
        .collect();
    for chunk in entries.chunks(100) {
        store.quarantine_durably(chunk).await.unwrap();
    }
    let park = store.sink_park("siem").unwrap();
    park.append(&batch(0, 10, 10), None).await.unwrap();
    let filler = fs.fill(512 * 1024);

    let s = store.clone();
    let compacted = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || s.compact()),
    )
    .await
    .expect("a compaction on a full disk blocked")
    .unwrap();
    let e = compacted.expect_err("the copy cannot fit");
    eprintln!("the compaction on a full disk: {e}");
    assert!(e.to_string().contains("No space left on device"), "{e}");
    assert!(!store.failed(), "the live generation is fine");
    assert_eq!(store.generation(), 1);
    assert!(!path.join("gen-2").exists(), "the partial copy is removed");

    // Everything is still there, and the store takes writes again once there is room.
    let found: Vec<i64> = store
        .quarantine_entries()
        .map(|e| e.unwrap().1.offset)
        .collect();
    assert_eq!(found, (0..2000).collect::<Vec<_>>());
    std::fs::remove_file(&filler).unwrap();
    park.append(&batch(100, 10, 10), None).await.unwrap();
    assert_eq!(park.verify().unwrap().entries, 2);
    let done = tokio::task::spawn_blocking({
        let s = store.clone();
        move || s.compact()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(done.generation, 2);
    assert_eq!(park.verify().unwrap().entries, 2);
    assert_eq!(store.quarantine_entries().count(), 2000);
    // The failed copy's database is leaked, not closed (its close can block forever after a
    // failed write): its deleted files stay open, and the filesystem busy, until the process
    // ends.
    drop((park, store));
    fs.detach();
}

/// Produces generated events at about `per_sec` until stopped; the ids, in order.
struct Producer {
    stop: Arc<AtomicBool>,
    ids: Arc<Mutex<Vec<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Producer {
    fn start(kafka: &Arc<EmbeddedKafka>, per_sec: usize) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let ids = Arc::new(Mutex::new(Vec::new()));
        let (k, s, i) = (kafka.clone(), stop.clone(), ids.clone());
        let handle = std::thread::spawn(move || {
            let mut g = Generator::new(81, 8);
            while !s.load(Ordering::SeqCst) {
                for _ in 0..per_sec / 20 {
                    let (key, e) = g.next_event();
                    k.send(
                        TOPIC,
                        None,
                        Some(key.as_bytes()),
                        Some(e.to_string().as_bytes()),
                    )
                    .unwrap();
                    i.lock()
                        .unwrap()
                        .push(e["id"].as_str().unwrap().to_string());
                }
                k.flush().unwrap();
                std::thread::sleep(Duration::from_millis(50)); // pacing, not waiting
            }
        });
        Producer {
            stop,
            ids,
            handle: Some(handle),
        }
    }

    /// Stops and returns every id produced.
    fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.ids.lock().unwrap().clone()
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A record template large enough to fill a small disk quickly, with what the checks need.
const TEMPLATE: &str = r#"{"id":{{json (default id "")}},"p":{{_kafka.partition}},"o":{{_kafka.offset}},"actor":{{json actor}},"entity":{{json entity}},"changes":{{json changes}},"metadata":{{json metadata}}}"#;

fn config(
    brokers: &str,
    group: &str,
    admin_port: u16,
    smtp_port: u16,
    park: &Path,
    dir: &Path,
    sink: &str,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
topics = ["{TOPIC}"]
[kafka.properties]
"auto.commit.interval.ms" = 200
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500
[pipeline]
shutdown_timeout = "10s"
[admin]
listen = "127.0.0.1:{admin_port}"
[park]
path = "{park}"
expired_dir = "{expired}"
probe_max_interval = "1s"
[alerts]
from = "auditstream@test.example"
to = ["oncall@test.example"]
smtp_url = "smtp://127.0.0.1:{smtp_port}"
reminder_interval = "1h"
recovery_hold = "1s"
{sink}
[sinks.batch]
max_events = 100
max_age = "100ms"
[sinks.retry]
initial_interval = "100ms"
max_interval = "500ms"
max_elapsed = "1s"
"#,
        park = park.display(),
        expired = dir.join("expired").display(),
    )
}

async fn status(admin_port: u16) -> serde_json::Value {
    match reqwest::get(format!("http://127.0.0.1:{admin_port}/status")).await {
        Ok(r) => serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    }
}

fn sink_of<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["sinks"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

/// Waits (async) for a condition that needs an await to check.
async fn wait_for_async<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn alive(d: &mut Daemon) {
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the daemon died:\n{}",
        d.log_text()
    );
}

/// Every event below each committed offset is among `seen`: nothing was acknowledged to Kafka
/// that was not stored (delivered, or parked durably).
fn assert_committed_were_stored(committed: &BTreeMap<i32, i64>, seen: &[Seen]) {
    let have: BTreeSet<(i32, i64)> = seen.iter().map(|s| (s.partition, s.offset)).collect();
    for (&p, &upto) in committed {
        let missing: Vec<i64> = (0..upto).filter(|o| !have.contains(&(p, *o))).collect();
        assert!(
            missing.is_empty(),
            "partition {p} was committed up to {upto}, but {} events below it were never stored, e.g. offsets {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

/// The park's disk fills while the SIEM is down: the daemon holds the stream, says why in its
/// log, on `/status` and by email, commits nothing it has not parked, and goes on by itself
/// when space returns; then the same again, killed with -9 while holding, and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mount (root); .ci/run runs it"]
async fn a_full_park_disk_holds_the_stream_says_why_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SmallFs::mount("16m");
    let smtp_port = free_port();
    let mail = start_smtp(smtp_port);
    let receiver = Receiver::new();
    let switch = Switch::start(receiver.serve().await, false).await;
    let kafka = Arc::new(EmbeddedKafka::start(1).unwrap());
    kafka.create_topic(TOPIC, 2).unwrap();
    let admin_port = free_port();
    let sink = format!(
        "[[sinks]]\nname = \"siem\"\ntype = \"http\"\nurl = \"http://{}/\"\ntemplate = '{TEMPLATE}'\ntimeout = \"2s\"",
        switch.addr
    );
    let path = dir.path().join("auditstream.toml");
    std::fs::write(
        &path,
        config(
            kafka.bootstrap_servers(),
            "g-park-disk",
            admin_port,
            smtp_port,
            &fs.path("park"),
            dir.path(),
            &sink,
        ),
    )
    .unwrap();
    let producer = Producer::start(&kafka, 1000);
    let mut d = Daemon::start(&path, &dir.path().join("run1.log"));
    let parked =
        |st: serde_json::Value| sink_of(&st, "siem")["parked_events"].as_u64().unwrap_or(0);
    wait_for_async("the SIEM's batches to park", LONG, || async {
        parked(status(admin_port).await) > 0
    })
    .await;

    // Round 1: fill the disk; it holds, says why, and goes on by itself once space returns.
    let filler = fs.fill(512 * 1024);
    wait_for("the log to say the disk is full", LONG, || {
        d.log_text().contains("No space left on device")
    });
    wait_for_async(
        "/status to say the SIEM holds the stream, and why",
        LONG,
        || async {
            let st = status(admin_port).await;
            let holding = sink_of(&st, "siem")["holding"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            holding.contains("cannot park") && holding.contains("No space left on device")
        },
    )
    .await;
    wait_for("an alert saying the SIEM holds the stream", LONG, || {
        !mail.with_subject("holding the stream").is_empty()
    });
    let alert = mail.with_subject("holding the stream").remove(0);
    assert!(alert.contains("No space left on device"), "{alert}");
    alive(&mut d);
    let held = committed(kafka.bootstrap_servers(), "g-park-disk", TOPIC, 2);
    let parked_while_full = parked(status(admin_port).await);

    std::fs::remove_file(&filler).unwrap();
    wait_for_async(
        "the park to take batches again (holding cleared)",
        LONG,
        || async {
            let st = status(admin_port).await;
            let s = sink_of(&st, "siem");
            s["holding"].is_null() && s["parked_events"].as_u64().unwrap_or(0) > parked_while_full
        },
    )
    .await;
    // The same process (pid) restarted itself in place to open the store afresh.
    assert!(
        d.log_text().contains("restarting in place"),
        "{}",
        d.log_text()
    );
    let after = committed(kafka.bootstrap_servers(), "g-park-disk", TOPIC, 2);
    wait_for("the committed offsets to move on", LONG, || {
        committed(kafka.bootstrap_servers(), "g-park-disk", TOPIC, 2) != after
    });
    alive(&mut d);

    // Round 2: full again, then killed with -9 while holding; the restarted daemon delivers
    // everything, including every event below the offsets committed before the kill.
    let filler = fs.fill(512 * 1024);
    let log1 = d.log.clone();
    let failures_before = std::fs::read_to_string(&log1)
        .unwrap_or_default()
        .matches("cannot park a batch")
        .count();
    wait_for("the park to fail again", LONG, || {
        d.log_text().matches("cannot park a batch").count() > failures_before
    });
    wait_for_async("/status to say it holds again", LONG, || async {
        sink_of(&status(admin_port).await, "siem")["holding"].is_string()
    })
    .await;
    let before_kill = committed(kafka.bootstrap_servers(), "g-park-disk", TOPIC, 2);
    d.signal(libc::SIGKILL);
    d.wait(LONG);
    let ids = producer.stop();
    std::fs::remove_file(&filler).unwrap();
    switch.set(true);
    let mut d = Daemon::start(&path, &dir.path().join("run2.log"));
    wait_for("every event at the SIEM", LONG, || {
        let seen: BTreeSet<String> = parse_seen(&receiver.accepted_lines())
            .into_iter()
            .map(|s| s.id)
            .collect();
        ids.iter().all(|id| seen.contains(id))
    });
    let seen = parse_seen(&receiver.accepted_lines());
    assert_all_arrived(&ids, &seen);
    assert_first_arrivals_ordered(&seen);
    assert_committed_were_stored(&held, &seen);
    assert_committed_were_stored(&before_kill, &seen);
    wait_for_async("the park to drain", LONG, || async {
        sink_of(&status(admin_port).await, "siem")["parked_events"] == 0
    })
    .await;
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(LONG), Some(0), "{}", d.log_text());
    eprintln!(
        "{} events; {} parked when the disk first filled; committed before the kill: {before_kill:?}",
        ids.len(),
        parked_while_full
    );
}

/// A file sink's disk fills: its batches park (on another disk), the daemon says why and stays
/// up, commits nothing that is neither in the file nor parked, and once space returns every
/// event is in the file, whole lines only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mount (root); .ci/run runs it"]
async fn a_full_file_sink_disk_parks_says_why_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let fs = SmallFs::mount("8m");
    let smtp_port = free_port();
    let mail = start_smtp(smtp_port);
    let kafka = Arc::new(EmbeddedKafka::start(1).unwrap());
    kafka.create_topic(TOPIC, 2).unwrap();
    let admin_port = free_port();
    let out = fs.path("archive.jsonl");
    let sink = format!(
        "[[sinks]]\nname = \"archive\"\ntype = \"file\"\npath = \"{}\"\ntemplate = '{TEMPLATE}'",
        out.display()
    );
    let path = dir.path().join("auditstream.toml");
    std::fs::write(
        &path,
        config(
            kafka.bootstrap_servers(),
            "g-file-disk",
            admin_port,
            smtp_port,
            &dir.path().join("park"),
            dir.path(),
            &sink,
        ),
    )
    .unwrap();
    let producer = Producer::start(&kafka, 1000);
    let mut d = Daemon::start(&path, &dir.path().join("run1.log"));
    wait_for("records in the file", LONG, || read_seen(&out).len() > 500);

    let filler = fs.fill(0);
    wait_for("the log to say the file's disk is full", LONG, || {
        d.log_text().contains("No space left on device")
    });
    wait_for_async(
        "/status to say why, and the batches to park",
        LONG,
        || async {
            let st = status(admin_port).await;
            let s = sink_of(&st, "archive");
            s["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("No space left on device")
                && s["parked_events"].as_u64().unwrap_or(0) > 0
        },
    )
    .await;
    wait_for("an alert saying the archive is broken", LONG, || {
        !mail.with_subject("archive: broken").is_empty()
    });
    assert!(mail.with_subject("archive: broken")[0].contains("No space left on device"));
    alive(&mut d);
    let held = committed(kafka.bootstrap_servers(), "g-file-disk", TOPIC, 2);
    let in_file = read_seen(&out).len();

    std::fs::remove_file(&filler).unwrap();
    let ids = producer.stop();
    wait_for("every event in the file", LONG, || {
        let seen: BTreeSet<String> = read_seen(&out).into_iter().map(|s| s.id).collect();
        ids.iter().all(|id| seen.contains(id))
    });
    wait_for("a recovered alert", LONG, || {
        !mail.with_subject("archive: recovered").is_empty()
    });
    // read_seen parses every line: a torn line left by a failed write would fail it.
    let seen = read_seen(&out);
    assert_all_arrived(&ids, &seen);
    assert_first_arrivals_ordered(&seen);
    assert_committed_were_stored(&held, &seen);
    alive(&mut d);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(LONG), Some(0), "{}", d.log_text());
    eprintln!(
        "{} events, {in_file} in the file when its disk filled, committed then: {held:?}",
        ids.len()
    );
}
