//! `type = "file"`: rendered records appended to a local file, one per line.
//!
//! A batch counts as delivered only after its bytes are written and `fsync`ed. A batch that
//! fails half-way (a full disk) is cut off again, so a retry does not leave half a batch behind.
//! At start-up a torn last line (the daemon was killed mid-write, before that batch was
//! acknowledged) is cut off too; the batch comes again from Kafka.
//!
//! With `rotate_bytes`, a file that would grow past the limit is renamed `<path>.000001`,
//! `<path>.000002`, ... (the highest number is the most recent) and a new one is started.
//! Reading the rotated files in number order, then `<path>`, gives the records in order.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{DeliveryError, Receipt, Sink};
use crate::batch::Batch;
use crate::config::FileSinkConfig;

pub struct FileSink {
    path: PathBuf,
    state: Arc<Mutex<FileState>>,
}

struct FileState {
    path: PathBuf,
    rotate_bytes: Option<u64>,
    file: Option<File>,
    size: u64,
}

impl FileSink {
    /// Opens (or creates) the file, repairing a torn last line.
    pub fn open(config: &FileSinkConfig) -> anyhow::Result<Self> {
        let mut state = FileState {
            path: config.path.clone(),
            rotate_bytes: config.rotate_bytes.map(|b| b.bytes()),
            file: None,
            size: 0,
        };
        state
            .reopen()
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", config.path.display()))?;
        Ok(Self {
            path: config.path.clone(),
            state: Arc::new(Mutex::new(state)),
        })
    }
}

impl FileState {
    fn reopen(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let created = !self.path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        if created {
            // A new file's name is durable only once its directory is synced.
            file.sync_all()?;
            sync_dir(&self.path)?;
        }
        self.size = cut_torn_tail(&mut file)?;
        self.file = Some(file);
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(limit) = self.rotate_bytes {
            if self.size > 0 && self.size + bytes.len() as u64 > limit {
                self.rotate()?;
            }
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        let before = self.size;
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("file not open"))?;
        let result = file.write_all(bytes).and_then(|_| file.sync_data());
        match result {
            Ok(()) => {
                self.size += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Leave no partial batch behind; the retry writes it whole.
                if file.set_len(before).and_then(|_| file.sync_data()).is_err() {
                    self.file = None;
                }
                Err(e)
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let next = last_rotation(&self.path)? + 1;
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(format!(".{next:06}"));
        std::fs::rename(&self.path, PathBuf::from(rotated))?;
        sync_dir(&self.path)?;
        self.reopen()
    }
}

/// Syncs the directory holding `path`, so a created or renamed entry survives a crash.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Truncates the file after its last newline; returns the new length.
fn cut_torn_tail(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut keep = len;
    let mut buf = vec![0u8; 64 * 1024];
    while keep > 0 {
        let start = keep.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(keep - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        keep = start;
    }
    if keep != len {
        tracing::warn!(
            cut = len - keep,
            "file sink: cutting a torn last line left by an interrupted write"
        );
        file.set_len(keep)?;
        file.sync_data()?;
    }
    Ok(keep)
}

/// The highest rotation number next to `path` (0 when none).
fn last_rotation(path: &Path) -> io::Result<u32> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(0);
    };
    let prefix = format!("{base}.");
    let mut max = 0;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|s| s.parse::<u32>().ok())
        {
            max = max.max(n);
        }
    }
    Ok(max)
}

#[async_trait]
impl Sink for FileSink {
    async fn deliver(&self, batch: &Batch) -> Result<Receipt, DeliveryError> {
        let bytes = batch.lines();
        let state = self.state.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.write(&bytes)
        })
        .await
        .map_err(|e| DeliveryError::retryable(format!("file writer failed: {e}")))?
        .map_err(|e| {
            let detail = format!("writing {}: {e}", path.display());
            match e.kind() {
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                    DeliveryError::permanent(detail)
                }
                _ => DeliveryError::retryable(detail),
            }
        })?;
        Ok(Receipt::for_batch(batch))
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Record;
    use crate::config::ByteSize;
    use crate::event::TopicPartition;

    fn batch(from: i64, n: i64) -> Batch {
        let records: Vec<Record> = (from..from + n)
            .map(|o| Record {
                offset: o,
                body: format!("record-{o}"),
            })
            .collect();
        let mut b = Batch::new(
            TopicPartition {
                topic: "t".into(),
                partition: 0,
            },
            None,
        );
        records.into_iter().for_each(|r| b.push(r));
        b
    }

    #[tokio::test]
    async fn appends_lines_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/audit.log");
        let sink = FileSink::open(&FileSinkConfig {
            path: path.clone(),
            rotate_bytes: Some(ByteSize(40)),
        })
        .unwrap();
        sink.deliver(&batch(0, 3)).await.unwrap(); // 27 bytes
        sink.deliver(&batch(3, 2)).await.unwrap(); // would pass 40: rotates first
        sink.deliver(&batch(5, 1)).await.unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("out/audit.log.000001")).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        let all: Vec<&str> = rotated.lines().chain(current.lines()).collect();
        let want: Vec<String> = (0..6).map(|o| format!("record-{o}")).collect();
        assert_eq!(all, want);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "whole line\nhalf a li").unwrap();
        let sink = FileSink::open(&FileSinkConfig {
            path: path.clone(),
            rotate_bytes: None,
        })
        .unwrap();
        sink.deliver(&batch(0, 1)).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "whole line\nrecord-0\n"
        );
    }
}
