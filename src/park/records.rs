//! Small record stores in the park database for other modules, so that sled stays behind
//! this module: the alert outbox (a FIFO of messages not yet sent everywhere), the alert
//! incident states (one value per sink), and each S3 sink's integrity journal (objects written
//! since its last digest).
//!
//! Values are JSON, framed by [`codec`] (version, CRC32) and checked on every read, like the
//! rest of the store. Writes are not flushed here; callers that need a value on disk before
//! they go on call [`Store::flush`].

use std::collections::HashMap;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{self, key_to_u64};
use super::{Store, StoreError};

/// A FIFO of `T`, oldest first, keyed by sequence numbers that only grow.
pub struct Fifo<T> {
    store: Store,
    tree: String,
    _values: PhantomData<fn() -> T>,
}

impl<T> Clone for Fifo<T> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            tree: self.tree.clone(),
            _values: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Fifo<T> {
    /// Appends a value; returns its sequence number.
    pub fn push(&self, value: &T) -> Result<u64, StoreError> {
        let w = self.store.writing()?;
        let key = w.next_key()?;
        w.tree(&self.tree)?
            .insert(key, codec::encode(&serde_json::to_vec(value)?))
            .map_err(|e| self.store.sled_err(e))?;
        Ok(u64::from_be_bytes(key))
    }

    /// The oldest value, with its sequence number.
    pub fn first(&self) -> Result<Option<(u64, T)>, StoreError> {
        let Some((k, v)) = self
            .store
            .tree(&self.tree)?
            .first()
            .map_err(|e| self.store.sled_err(e))?
        else {
            return Ok(None);
        };
        let seq = key_to_u64(&k);
        Ok(Some((
            seq,
            serde_json::from_slice(codec::decode(seq, &v)?)?,
        )))
    }

    /// Every value, oldest first, with its sequence number.
    pub fn all(&self) -> Result<Vec<(u64, T)>, StoreError> {
        self.store
            .tree(&self.tree)?
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.store.sled_err(e))?;
                let seq = key_to_u64(&k);
                Ok((seq, serde_json::from_slice(codec::decode(seq, &v)?)?))
            })
            .collect()
    }

    /// Replaces the value at `seq`.
    pub fn update(&self, seq: u64, value: &T) -> Result<(), StoreError> {
        self.store
            .writing()?
            .tree(&self.tree)?
            .insert(
                seq.to_be_bytes(),
                codec::encode(&serde_json::to_vec(value)?),
            )
            .map_err(|e| self.store.sled_err(e))?;
        Ok(())
    }

    /// Removes the value at `seq`.
    pub fn remove(&self, seq: u64) -> Result<(), StoreError> {
        self.store
            .writing()?
            .tree(&self.tree)?
            .remove(seq.to_be_bytes())
            .map_err(|e| self.store.sled_err(e))?;
        Ok(())
    }
}

/// One `T` per name.
pub struct Table<T> {
    store: Store,
    tree: String,
    _values: PhantomData<fn() -> T>,
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            tree: self.tree.clone(),
            _values: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Table<T> {
    /// Every value, by name.
    pub fn all(&self) -> Result<HashMap<String, T>, StoreError> {
        self.store
            .tree(&self.tree)?
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.store.sled_err(e))?;
                let name = String::from_utf8_lossy(&k).into_owned();
                Ok((name, serde_json::from_slice(codec::decode(0, &v)?)?))
            })
            .collect()
    }

    pub fn put(&self, name: &str, value: &T) -> Result<(), StoreError> {
        self.store
            .writing()?
            .tree(&self.tree)?
            .insert(name.as_bytes(), codec::encode(&serde_json::to_vec(value)?))
            .map_err(|e| self.store.sled_err(e))?;
        Ok(())
    }
}

impl Store {
    /// The FIFO in tree `name`.
    pub fn fifo<T>(&self, name: &str) -> Result<Fifo<T>, StoreError> {
        Ok(Fifo {
            store: self.clone(),
            tree: {
                self.tree(name)?;
                name.to_string()
            },
            _values: PhantomData,
        })
    }

    /// The table in tree `name`.
    pub fn table<T>(&self, name: &str) -> Result<Table<T>, StoreError> {
        Ok(Table {
            store: self.clone(),
            tree: {
                self.tree(name)?;
                name.to_string()
            },
            _values: PhantomData,
        })
    }

    /// Writes a small value and flushes it: whether the park can take writes now (for
    /// `/ready`).
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        self.writing()?
            .tree("health")?
            .insert(
                "ready",
                chrono::Utc::now().timestamp_millis().to_be_bytes().to_vec(),
            )
            .map_err(|e| self.sled_err(e))?;
        self.flush().await
    }
}
