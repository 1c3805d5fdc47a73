//! Where your own presence state is saved between runs.
//!
//! [`Presence`](super::Presence) saves every state it publishes under a
//! storage key and republishes it after a restart or a reconnect. The
//! [`StateStore`] trait is that storage: JSON values by key. Two stores live
//! here: [`MemoryStore`] (tests, or state that need not outlive the process)
//! and [`FileStore`] (one JSON file, replaced atomically on every write). The
//! desktop app keeps its whole store file, settings included, in a
//! [`FileStore`].
//!
//! The trait is synchronous on purpose: saved states are small, and a store
//! that must do slow I/O can hand it to its own thread.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use thiserror::Error;

/// Why a store could not read or write.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The underlying file could not be read or written.
    #[error("state store I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The file exists but is not a JSON object; it is left untouched
    /// rather than overwritten, so nothing in it is lost.
    #[error("state store file {path} is not a JSON object: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A store-specific failure (for stores defined elsewhere).
    #[error("state store error: {0}")]
    Other(String),
}

/// Saved presence states, as JSON values by key.
pub trait StateStore: Send + Sync {
    /// The value saved under `key`, if any.
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError>;
    /// Saves `value` under `key`, replacing what was there.
    fn set(&self, key: &str, value: &Value) -> Result<(), StoreError>;
    /// Forgets `key`; forgetting a missing key is not an error.
    fn remove(&self, key: &str) -> Result<(), StoreError>;
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it
/// (every write here leaves the data consistent).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A store in memory, gone with the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    values: Mutex<HashMap<String, Value>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StateStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        Ok(lock(&self.values).get(key).cloned())
    }

    fn set(&self, key: &str, value: &Value) -> Result<(), StoreError> {
        lock(&self.values).insert(key.to_string(), value.clone());
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        lock(&self.values).remove(key);
        Ok(())
    }
}

/// A store in one JSON file holding an object of key → value.
///
/// Every write reads the file, changes one key and replaces the file
/// atomically (a temporary file in the same directory, flushed to disk, then
/// renamed over the old one), so a crash mid-write leaves either the old or
/// the new file, never a torn one. Reading the file afresh on each write
/// keeps the keys that other processes (other app windows) wrote meanwhile.
///
/// [`FileStore::owner_only`] makes a store for files that hold secrets (the
/// app keeps a token in its store): only the file's owner may read it.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    /// Serializes this process's read-modify-write cycles.
    write: Mutex<()>,
    /// Create every new file readable and writable by its owner only.
    owner_only: bool,
}

/// Distinguishes temporary files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FileStore {
    /// A store backed by the file at `path`. The file and its directory are
    /// created on the first write; a missing file reads as empty.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore {
            path: path.into(),
            write: Mutex::new(()),
            owner_only: false,
        }
    }

    /// A store backed by the file at `path` that only the file's owner may
    /// read or write (mode 0600 on Unix; elsewhere the same as
    /// [`FileStore::new`]).
    ///
    /// Every write creates its temporary file with that mode before renaming
    /// it into place, so the contents are never readable by others, not even
    /// for a moment. An existing file with a wider mode (an older version
    /// wrote it, or a hand edit) is narrowed here, before anything is read.
    pub fn owner_only(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = FileStore {
            owner_only: true,
            ..FileStore::new(path)
        };
        store.narrow_mode().map_err(|e| store.io_error(e))?;
        Ok(store)
    }

    /// Takes group and other permissions off the existing file, if any.
    #[cfg(unix)]
    fn narrow_mode(&self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mode = match fs::metadata(&self.path) {
            Ok(meta) => meta.permissions().mode(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if mode & 0o077 != 0 {
            fs::set_permissions(&self.path, fs::Permissions::from_mode(mode & 0o700))?;
        }
        Ok(())
    }

    #[cfg(not(unix))]
    fn narrow_mode(&self) -> io::Result<()> {
        Ok(())
    }

    /// Creates (or empties) the temporary file `temp`, owner-only if asked:
    /// created with that mode, and set to it in case a stale file of that
    /// name was already there.
    fn create_temp(&self, temp: &Path) -> io::Result<fs::File> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if self.owner_only {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let file = options.mode(0o600).open(temp)?;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            return Ok(file);
        }
        options.open(temp)
    }

    /// The file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, source: io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn load(&self) -> Result<Map<String, Value>, StoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(e) => return Err(self.io_error(e)),
        };
        if text.trim().is_empty() {
            return Ok(Map::new());
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(StoreError::Corrupt {
                path: self.path.clone(),
                reason: format!("top level is {}", kind_of(&other)),
            }),
            Err(e) => Err(StoreError::Corrupt {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Writes `map` to a temporary file and renames it over the store file.
    fn save(&self, map: &Map<String, Value>) -> Result<(), StoreError> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(|e| self.io_error(e))?;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        let temp = dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let text = serde_json::to_vec_pretty(map)
            .map_err(|e| StoreError::Other(format!("cannot encode states: {e}")))?;
        let written = self.create_temp(&temp).and_then(|mut file| {
            file.write_all(&text)?;
            file.sync_all()
        });
        let renamed = written.and_then(|()| fs::rename(&temp, &self.path));
        if let Err(e) = renamed {
            let _ = fs::remove_file(&temp);
            return Err(self.io_error(e));
        }
        Ok(())
    }

    fn update(
        &self,
        change: impl FnOnce(&mut Map<String, Value>) -> bool,
    ) -> Result<(), StoreError> {
        let _guard = lock(&self.write);
        let mut map = self.load()?;
        if change(&mut map) {
            self.save(&map)?;
        }
        Ok(())
    }
}

impl StateStore for FileStore {
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.load()?.remove(key))
    }

    fn set(&self, key: &str, value: &Value) -> Result<(), StoreError> {
        self.update(|map| {
            map.insert(key.to_string(), value.clone());
            true
        })
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.update(|map| map.remove(key).is_some())
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "mesh-presence-store-{tag}-{}-{}",
                std::process::id(),
                TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn round_trip(store: &dyn StateStore) {
        assert_eq!(store.get("k").unwrap(), None);
        store.set("k", &json!({"status": "away"})).unwrap();
        store.set("other", &json!(1)).unwrap();
        assert_eq!(store.get("k").unwrap(), Some(json!({"status": "away"})));
        store.set("k", &json!({"status": "back"})).unwrap();
        assert_eq!(store.get("k").unwrap(), Some(json!({"status": "back"})));
        store.remove("k").unwrap();
        store.remove("k").unwrap();
        assert_eq!(store.get("k").unwrap(), None);
        assert_eq!(store.get("other").unwrap(), Some(json!(1)));
    }

    #[test]
    fn memory_store_round_trips() {
        round_trip(&MemoryStore::new());
    }

    #[test]
    fn file_store_round_trips_and_survives_reopening() {
        let dir = TempDir::new("reopen");
        let path = dir.0.join("nested").join("presence.json");
        round_trip(&FileStore::new(&path));
        let reopened = FileStore::new(&path);
        assert_eq!(reopened.get("other").unwrap(), Some(json!(1)));
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary files left behind");
    }

    #[test]
    fn file_store_keeps_keys_written_by_another_instance() {
        let dir = TempDir::new("shared");
        let path = dir.0.join("presence.json");
        let (a, b) = (FileStore::new(&path), FileStore::new(&path));
        a.set("room:a", &json!({"s": "a"})).unwrap();
        b.set("room:b", &json!({"s": "b"})).unwrap();
        assert_eq!(a.get("room:b").unwrap(), Some(json!({"s": "b"})));
        assert_eq!(b.get("room:a").unwrap(), Some(json!({"s": "a"})));
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn owner_only_files_are_never_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("owner-only");
        // A new file: the renamed temporary file had the mode from the start.
        let fresh = dir.0.join("fresh.json");
        let store = FileStore::owner_only(&fresh).unwrap();
        store.set("token", &json!("secret")).unwrap();
        assert_eq!(mode(&fresh), 0o600);

        // An existing file readable by all is narrowed before any write,
        // keeping what the owner had; later writes keep it narrow.
        let wide = dir.0.join("wide.json");
        fs::write(&wide, r#"{"token": "secret"}"#).unwrap();
        fs::set_permissions(&wide, fs::Permissions::from_mode(0o664)).unwrap();
        let store = FileStore::owner_only(&wide).unwrap();
        assert_eq!(mode(&wide), 0o600);
        assert_eq!(store.get("token").unwrap(), Some(json!("secret")));
        store.set("other", &json!(1)).unwrap();
        assert_eq!(mode(&wide), 0o600);

        // A stale temporary file of the same name does not lend its mode.
        let stale = dir.0.join(".wide.json.stale.tmp");
        fs::write(&stale, "stale").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o666)).unwrap();
        drop(store.create_temp(&stale).unwrap());
        assert_eq!(mode(&stale), 0o600);
        assert_eq!(fs::read(&stale).unwrap(), b"", "emptied");
    }

    #[test]
    fn corrupt_file_is_an_error_and_is_not_overwritten() {
        let dir = TempDir::new("corrupt");
        let path = dir.0.join("presence.json");
        fs::write(&path, "{not json").unwrap();
        let store = FileStore::new(&path);
        assert!(matches!(store.get("k"), Err(StoreError::Corrupt { .. })));
        let err = store.set("k", &json!(1)).unwrap_err();
        assert!(err.to_string().contains("not a JSON object"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "{not json");

        fs::write(&path, "[1, 2]").unwrap();
        let err = store.get("k").unwrap_err();
        assert!(err.to_string().contains("an array"), "{err}");
    }

    #[test]
    fn unwritable_location_is_an_io_error() {
        let dir = TempDir::new("io");
        let blocker = dir.0.join("file");
        fs::write(&blocker, "x").unwrap();
        // A path "under" a regular file cannot be created.
        let store = FileStore::new(blocker.join("presence.json"));
        assert!(matches!(
            store.set("k", &json!(1)),
            Err(StoreError::Io { .. })
        ));
    }
}
