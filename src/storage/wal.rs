//! The WAL archive's view of the bucket: the object store and WAL-G's
//! `wal_005/` keys.

use std::collections::HashMap;

use super::codec::READ_EXTENSIONS;
use super::layout::Layout;
use super::s3::{ObjectStore, StoreError};
use crate::config::{Compression, StorageConfig};

/// Metadata key of the XXH3-128 of the uncompressed content (hex).
pub const META_HASH: &str = "tusk-xxh3";
/// Metadata key of the uncompressed size.
pub const META_SIZE: &str = "tusk-size";

/// An object that holds the archived copy of one WAL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key: String,
    /// The extension after the name (`lz4`, `zst`, `br`, `lzma`, `lzo`,
    /// `""`, `"."`).
    pub ext: String,
    pub size: u64,
}

impl Found {
    pub fn compression(&self) -> Option<Compression> {
        super::codec::from_extension(&self.ext)
    }
}

/// The warm client and where the WAL lives.
#[derive(Clone, Debug)]
pub struct WalStore {
    store: ObjectStore,
    layout: Layout,
}

impl WalStore {
    /// Builds the client (no request is sent).
    pub async fn new(cfg: &StorageConfig) -> Result<WalStore, StoreError> {
        Ok(WalStore { store: ObjectStore::new(cfg).await?, layout: Layout::new(&cfg.root) })
    }

    pub fn key(&self, name: &str, ext: &str) -> String {
        self.layout.wal_key(name, ext)
    }

    /// Every archived copy of `name` (one LIST). `Err` for unknown
    /// compression extensions: such an object exists but cannot be read.
    pub async fn find(&self, name: &str) -> Result<Vec<Found>, StoreError> {
        let prefix = self.layout.wal_key(name, "");
        let mut found = Vec::new();
        for obj in self.store.list_first(&prefix, 100).await? {
            let rest = &obj.key[prefix.len()..];
            let ext = match rest {
                "" => "",
                "." => ".",
                r => match r.strip_prefix('.') {
                    // `<name>.partial.lz4` etc. are other files, not a copy of `name`.
                    Some(e) if !e.contains('.') => e,
                    _ => continue,
                },
            };
            if !READ_EXTENSIONS.contains(&ext) {
                return Err(StoreError::S3 {
                    op: "LIST",
                    key: obj.key.clone(),
                    message: format!(
                        "archived with compression {ext:?}, which tusk cannot read (lz4, zst, br, lzma, lzo, none)"
                    ),
                });
            }
            found.push(Found { ext: ext.to_owned(), key: obj.key, size: obj.size });
        }
        found.sort_by_key(|f| READ_EXTENSIONS.iter().position(|e| *e == f.ext));
        Ok(found)
    }

    /// The user metadata of `key`; `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<HashMap<String, String>>, StoreError> {
        self.store.head(key).await
    }

    /// The object's bytes and user metadata; `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, HashMap<String, String>)>, StoreError> {
        self.store.get(key).await
    }

    /// Uploads `body` as `key` (see [`ObjectStore::put`]).
    pub async fn put(&self, key: &str, body: Vec<u8>, meta: &[(&str, String)]) -> Result<(), StoreError> {
        self.store.put(key, body, meta).await
    }
}
