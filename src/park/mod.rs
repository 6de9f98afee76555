//! The park: auditstream's persistent store, one sled database at `park.path`.
//!
//! # What it holds
//!
//! - tree `quarantine`: events that could not be decoded, or that one sink could not render
//!   ([`quarantine`]). Each entry keeps the raw message (base64 when it is not UTF-8), the
//!   reason, the sink (none when decoding failed) and the Kafka coordinates.
//!
//! # On-disk format
//!
//! Keys are big-endian `u64` sequence numbers from sled's `generate_id`, so each tree iterates
//! oldest first (a FIFO). Values are framed by [`codec`]: a format version byte, a CRC32 of the
//! payload, then the payload (JSON). Every read checks the checksum: sled 0.34 is beta and
//! corruption after abrupt stops has been reported, so a damaged entry is reported as damaged,
//! never silently misread.
//!
//! # Durability rule
//!
//! A write counts only after [`Store::flush`] returns: the offsets of the events it holds may
//! be committed only then. The quarantine writer flushes once per group of writes and only then
//! reports the events finished.
//!
//! # One process
//!
//! sled locks its directory: while the daemon runs, another process (the `quarantine` command)
//! cannot open the store and says so ([`StoreError::InUse`]).

pub mod codec;
pub mod quarantine;

use std::path::{Path, PathBuf};

pub use codec::CorruptEntry;

/// Problems with the store, typed at the module boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the park store at {path} is in use by another process (a running daemon?); sled allows one process at a time")]
    InUse { path: PathBuf },
    #[error("the park store at {path}: {source}")]
    Sled {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(transparent)]
    Corrupt(#[from] CorruptEntry),
    #[error("encoding an entry: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The sled database and its trees.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    quarantine: sled::Tree,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::InUse {
                        path: path.to_path_buf(),
                    }
                }
                other => StoreError::Sled {
                    path: path.to_path_buf(),
                    source: other,
                },
            })?;
        let quarantine = db.open_tree("quarantine").map_err(|e| StoreError::Sled {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            db,
            quarantine,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sled_err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// The next key: a big-endian sequence number, increasing across restarts.
    fn next_key(&self) -> Result<[u8; 8], StoreError> {
        self.db
            .generate_id()
            .map(u64::to_be_bytes)
            .map_err(|e| self.sled_err(e))
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| self.sled_err(e))
    }
}
