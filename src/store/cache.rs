//! The per-user token cache: one small JSON file per (registry, credential identity).
//!
//! The cache key is the registry host plus the identity of the credential *source* (profile,
//! role, IoT thing), never secret material: the incumbent keys by access key ID, so rotating role
//! credentials miss every time. Files live in a private directory (see [`crate::settings::cache_dir`]); an entry
//! that cannot be parsed or does not match its key is ignored and later replaced, never trusted.
//! Writes are atomic ([`crate::store::files::write_atomic`]), so readers never see half a file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::store::files::{self, FilesError, Lock};
use crate::token::Token;

/// Largest cache file read. An entry is well under 4 KiB; ECR does not bound token length, so
/// leave generous room, but never read an arbitrarily large file.
pub const MAX_ENTRY_BYTES: u64 = 64 * 1024;

/// Version of the entry format; entries of another version are ignored.
const FORMAT_VERSION: u32 = 1;

/// A cache directory that has been checked to be private to this user.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
}

/// One cache file as stored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    version: u32,
    registry: String,
    identity: String,
    password: crate::token::Secret,
    expires_at: i64,
    fetched_at: i64,
}

impl Cache {
    /// Opens (creating if needed) the cache directory `dir`.
    ///
    /// # Errors
    /// [`FilesError`] when the directory cannot be created or is not private to this user.
    pub fn open(dir: PathBuf) -> Result<Cache, FilesError> {
        files::ensure_private_dir(&dir)?;
        Ok(Cache { dir })
    }

    /// The directory this cache lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stem(registry: &str, identity: &str) -> String {
        let mut key = Vec::with_capacity(registry.len() + identity.len() + 1);
        key.extend_from_slice(registry.as_bytes());
        key.push(0);
        key.extend_from_slice(identity.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &key);
        let mut stem = String::with_capacity(32);
        for b in &digest.as_ref()[..16] {
            let _ = write!(stem, "{b:02x}");
        }
        stem
    }

    fn entry_path(&self, registry: &str, identity: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", Self::stem(registry, identity)))
    }

    /// The cached token for `registry` under `identity`, if a well-formed entry exists.
    ///
    /// Entries that are unreadable, corrupt, of another format version or written for another
    /// key are treated as absent (and logged at debug level); the next fetch replaces them.
    pub fn get(&self, registry: &str, identity: &str) -> Option<Token> {
        let path = self.entry_path(registry, identity);
        let entry = read_entry(&path)?;
        if entry.registry != registry || entry.identity != identity {
            tracing::debug!(path = %path.display(), "cache entry belongs to another key; ignored");
            return None;
        }
        Some(Token {
            password: entry.password,
            expires_at: entry.expires_at,
            fetched_at: entry.fetched_at,
        })
    }

    /// Stores `token` for `registry` under `identity`, atomically, mode 0600.
    ///
    /// # Errors
    /// [`FilesError`] when the file cannot be written.
    pub fn put(&self, registry: &str, identity: &str, token: &Token) -> Result<(), FilesError> {
        let entry = Entry {
            version: FORMAT_VERSION,
            registry: registry.to_owned(),
            identity: identity.to_owned(),
            password: token.password.clone(),
            expires_at: token.expires_at,
            fetched_at: token.fetched_at,
        };
        let json = serde_json::to_vec(&entry).unwrap_or_default();
        files::write_atomic(&self.entry_path(registry, identity), &json, 0o600)
    }

    /// Removes the entry for `registry` under `identity`, if any.
    pub fn remove(&self, registry: &str, identity: &str) {
        let _ = std::fs::remove_file(self.entry_path(registry, identity));
    }

    /// Takes the per-key lock that makes fetching single-flight across processes.
    ///
    /// # Errors
    /// [`FilesError::LockTimeout`] if another process holds it past `deadline`.
    pub fn lock(
        &self,
        registry: &str,
        identity: &str,
        deadline: Instant,
    ) -> Result<Lock, FilesError> {
        let path = self
            .dir
            .join(format!("{}.lock", Self::stem(registry, identity)));
        files::lock_exclusive(&path, deadline)
    }

    /// Every registry with a token still usable at `now`, with the latest expiry among its
    /// entries. Reads only this directory: no network.
    pub fn registries(&self, now: i64) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for item in dir.flatten() {
            let path = item.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Some(entry) = read_entry(&path) else {
                continue;
            };
            let token = Token {
                password: crate::token::Secret::new(""),
                expires_at: entry.expires_at,
                fetched_at: entry.fetched_at,
            };
            if token.is_usable(now) {
                let slot = out.entry(entry.registry).or_insert(entry.expires_at);
                *slot = (*slot).max(entry.expires_at);
            }
        }
        out
    }
}

fn read_entry(path: &Path) -> Option<Entry> {
    let bytes = match files::read_private(path, MAX_ENTRY_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!("cache entry ignored: {e}");
            return None;
        }
    };
    match serde_json::from_slice::<Entry>(&bytes) {
        Ok(e) if e.version == FORMAT_VERSION => Some(e),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(path = %path.display(), "corrupt cache entry ignored: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn token(expires_at: i64) -> Token {
        Token {
            password: crate::token::Secret::new("pw"),
            expires_at,
            fetched_at: 0,
        }
    }

    #[test]
    fn round_trip_and_key_separation() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("c")).unwrap();
        assert_eq!(
            std::fs::metadata(cache.dir()).unwrap().mode() & 0o777,
            0o700
        );
        cache.put("r1", "id-a", &token(100_000)).unwrap();
        assert_eq!(cache.get("r1", "id-a"), Some(token(100_000)));
        assert_eq!(cache.get("r1", "id-b"), None);
        assert_eq!(cache.get("r2", "id-a"), None);
        cache.remove("r1", "id-a");
        assert_eq!(cache.get("r1", "id-a"), None);
    }

    #[test]
    fn corrupt_and_foreign_entries_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().to_owned()).unwrap();
        let path = cache.entry_path("r1", "id");
        for junk in [&b"{not json"[..], b"", b"\xff\xfe", b"{\"version\":1}"] {
            std::fs::write(&path, junk).unwrap();
            assert_eq!(cache.get("r1", "id"), None);
        }
        // An entry copied under another key's name is not trusted.
        cache.put("r2", "id", &token(100_000)).unwrap();
        std::fs::copy(cache.entry_path("r2", "id"), &path).unwrap();
        assert_eq!(cache.get("r1", "id"), None);
        // And a fresh put replaces the junk.
        cache.put("r1", "id", &token(5)).unwrap();
        assert_eq!(cache.get("r1", "id"), Some(token(5)));
    }

    #[test]
    fn registries_lists_usable_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().to_owned()).unwrap();
        cache.put("live", "a", &token(10_000)).unwrap();
        cache.put("live", "b", &token(20_000)).unwrap();
        cache.put("dead", "a", &token(100)).unwrap();
        let got = cache.registries(1000);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![("live".to_string(), 20_000)]
        );
    }
}
