//! Exports of parked batches that leave the park without being delivered: expired
//! (`park.max_age`), dropped to make room (`when_full = "drop_oldest"`), purged by a person, or
//! damaged. Nothing leaves quietly: each record is written to `park.expired_dir` as one JSON
//! line with its metadata, the file is fsynced, and only then does the exporter hand out the
//! [`Exported`] proofs that let the park remove the entries.
//!
//! A file is written under a hidden name (`.<name>.partial`) and renamed once it is fsynced, so
//! whoever reads `expired_dir` sees whole files only. A `.partial` file is what a crash in the
//! middle of an export left: its entries are still in the park and are exported again.
//!
//! File: `<expired_dir>/<sink>-<reason>-<UTC time>-<first seq>.ndjson`. Line:
//!
//! ```json
//! {"sink":"siem","reason":"expired","entry":12,"topic":"audit","partition":0,"offset":41,
//!  "parked_at":"...","attempts":9,"last_error":"HTTP 503 ...","label":null,"record":"<as it would be sent>"}
//! ```

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::entry::{Parked, ParkedHeader};

/// Why entries left the park undelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportReason {
    Expired,
    DroppedOldest,
    Purged,
    Damaged,
}

impl ExportReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportReason::Expired => "expired",
            ExportReason::DroppedOldest => "dropped_oldest",
            ExportReason::Purged => "purged",
            ExportReason::Damaged => "damaged",
        }
    }
}

/// Proof that the entry `seq` was written to an export file and fsynced.
#[derive(Debug)]
pub struct Exported {
    seq: u64,
    pub path: PathBuf,
}

impl Exported {
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

#[derive(Serialize)]
struct Line<'a> {
    sink: &'a str,
    reason: &'a str,
    entry: u64,
    topic: &'a str,
    partition: i32,
    offset: i64,
    parked_at: &'a str,
    attempts: u32,
    last_error: Option<&'a str>,
    label: Option<&'a str>,
    record: &'a str,
}

/// Writes export files into one directory.
#[derive(Debug, Clone)]
pub struct Exporter {
    dir: PathBuf,
}

impl Exporter {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `entries` (in order) and returns one proof per entry.
    pub fn export(
        &self,
        sink: &str,
        entries: &[Parked],
        reason: ExportReason,
    ) -> io::Result<Vec<Exported>> {
        let Some(first) = entries.first() else {
            return Ok(Vec::new());
        };
        let path = self.file_for(sink, reason, first.seq);
        let (mut out, partial) = self.create(&path)?;
        for p in entries {
            write_entry(&mut out, sink, reason.as_str(), p)?;
        }
        self.finish(out, &partial, &path)?;
        Ok(entries
            .iter()
            .map(|p| Exported {
                seq: p.seq,
                path: path.clone(),
            })
            .collect())
    }

    /// Exports the header of an entry whose records cannot be read.
    pub fn export_damaged(
        &self,
        sink: &str,
        seq: u64,
        header: Option<&ParkedHeader>,
        problem: &str,
    ) -> io::Result<Exported> {
        let path = self.file_for(sink, ExportReason::Damaged, seq);
        let (mut out, partial) = self.create(&path)?;
        let line = serde_json::json!({
            "sink": sink, "reason": "damaged", "entry": seq, "problem": problem, "header": header,
        });
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
        self.finish(out, &partial, &path)?;
        Ok(Exported { seq, path })
    }

    fn file_for(&self, sink: &str, reason: ExportReason, seq: u64) -> PathBuf {
        let now = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        self.dir
            .join(format!("{sink}-{}-{now}-{seq}.ndjson", reason.as_str()))
    }

    /// Opens the hidden file that becomes `path` once finished; returns it and its path.
    fn create(&self, path: &Path) -> io::Result<(BufWriter<std::fs::File>, PathBuf)> {
        std::fs::create_dir_all(&self.dir)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let partial = self.dir.join(format!(".{name}.partial"));
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&partial)?;
        Ok((BufWriter::new(f), partial))
    }

    /// Makes the written file durable under its final name.
    fn finish(&self, out: BufWriter<std::fs::File>, partial: &Path, path: &Path) -> io::Result<()> {
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(partial, path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        tracing::debug!(path = %path.display(), "export written");
        Ok(())
    }
}

/// Writes one entry's records as export lines (also used by `auditstream parked export`).
pub fn write_entry(out: &mut impl Write, sink: &str, reason: &str, p: &Parked) -> io::Result<()> {
    let h: &ParkedHeader = &p.header;
    for r in &p.batch.records {
        let line = Line {
            sink,
            reason,
            entry: p.seq,
            topic: &h.topic,
            partition: h.partition,
            offset: r.offset,
            parked_at: &h.parked_at,
            attempts: h.attempts,
            last_error: h.last_error.as_deref(),
            label: h.label.as_deref(),
            record: &r.body,
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_appears_whole_under_its_name_and_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let exporter = Exporter::new(&dir.path().join("expired"));
        let done = exporter
            .export_damaged("siem", 7, None, "the records do not decode")
            .unwrap();
        let names: Vec<String> = std::fs::read_dir(exporter.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].starts_with("siem-damaged-") && names[0].ends_with("-7.ndjson"));
        assert_eq!(done.path, exporter.dir().join(&names[0]));
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&done.path).unwrap().trim_end()).unwrap();
        assert_eq!(line["entry"], 7);
        assert_eq!(line["problem"], "the records do not decode");
    }
}
