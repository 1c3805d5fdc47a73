//! What survives a restart: the user id, the settings, and the last state per
//! room.
//!
//! Everything goes through [`KeyValue`], which a JSON file implements for the
//! app and a `HashMap` implements for tests, so the rules below (a stable id
//! created once, settings checked field by field) are tested without a
//! window.
//!
//! The file is mesh-client's [`FileStore`]: every write goes to a temporary
//! file that is then renamed over the old one, so a crash or a full disk
//! leaves the old file or the new one, never a torn one. The file may hold
//! the user's token, so only its owner may read it (mode 0600 on Unix, set
//! on each temporary file before the rename). A file that is
//! damaged all the same (a bad edit, a disk fault, an older version of the
//! app) is never written over: [`open_file`] moves it aside under a name with
//! the time, carries what can still be read of it (at least the user id) into
//! a fresh file, and says so in a [`Recovery`] the window shows once.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use mesh_client::presence::{FileStore, StateStore, StoreError};
use rand::Rng;
use serde_json::{Map, Value};

use crate::error::{lock, AppError};
use crate::settings::{default_display_name, Settings};

/// The store file, under the app's data directory.
pub const STORE_FILE: &str = "mesh-presence.json";

const USER_ID_KEY: &str = "userId";
const SETTINGS_KEY: &str = "settings";

/// The key under which your last state in `room` is kept
/// (`user-state:general` for the room `general`).
pub fn state_key(room: &str) -> String {
    format!("user-state:{room}")
}

/// A persistent JSON key-value map.
pub trait KeyValue: Send + Sync {
    /// The value under `key`.
    fn get(&self, key: &str) -> Option<Value>;
    /// Stores `value` under `key` and writes it to disk.
    fn set(&self, key: &str, value: Value) -> Result<(), AppError>;
    /// Removes `key` and writes the change to disk.
    fn remove(&self, key: &str) -> Result<(), AppError>;
}

impl KeyValue for FileStore {
    fn get(&self, key: &str) -> Option<Value> {
        // Only a file damaged while the app runs fails here (`open_file`
        // repaired it at start); the damaged file is left as it is, since
        // `FileStore` refuses to write over it.
        StateStore::get(self, key).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not read the store");
            None
        })
    }

    fn set(&self, key: &str, value: Value) -> Result<(), AppError> {
        StateStore::set(self, key, &value).map_err(AppError::store)
    }

    fn remove(&self, key: &str) -> Result<(), AppError> {
        StateStore::remove(self, key).map_err(AppError::store)
    }
}

/// An in-memory [`KeyValue`], for tests.
#[derive(Debug, Default)]
pub struct MemoryKeyValue(Mutex<HashMap<String, Value>>);

impl KeyValue for MemoryKeyValue {
    fn get(&self, key: &str) -> Option<Value> {
        lock(&self.0).get(key).cloned()
    }

    fn set(&self, key: &str, value: Value) -> Result<(), AppError> {
        lock(&self.0).insert(key.to_string(), value);
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), AppError> {
        lock(&self.0).remove(key);
        Ok(())
    }
}

/// What [`open_file`] did with a damaged store file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Where the damaged file now is, unchanged.
    pub backup: PathBuf,
    /// What was wrong with it.
    pub reason: String,
    /// The keys carried over into the new file.
    pub recovered: Vec<String>,
}

impl Recovery {
    /// Whether the user id was among what could be read.
    pub fn kept_user_id(&self) -> bool {
        self.recovered.iter().any(|k| k == USER_ID_KEY)
    }

    /// What happened, for the window.
    pub fn notice(&self) -> String {
        let mut kept = Vec::new();
        if self.kept_user_id() {
            kept.push("your user id".to_string());
        }
        if self.recovered.iter().any(|k| k == SETTINGS_KEY) {
            kept.push("your settings".to_string());
        }
        let states = self
            .recovered
            .iter()
            .filter(|k| k.starts_with("user-state:"))
            .count();
        if states > 0 {
            kept.push(format!("your last status in {states} room(s)"));
        }
        let kept = if kept.is_empty() {
            "Nothing could be read from it.".to_string()
        } else {
            format!("Recovered from it: {}.", kept.join(", "))
        };
        let identity = if self.kept_user_id() {
            ""
        } else {
            " You have a new user id."
        };
        format!(
            "The settings file was damaged ({}). It was kept, unchanged, as {}. {kept}{identity}",
            self.reason,
            self.backup.display()
        )
    }
}

/// Opens the store file at `path` (which need not exist yet).
///
/// A file that is not a JSON object (truncated, invalid, empty) is renamed
/// beside `path` with the time in its name, and never written to again;
/// whatever can be read of it goes into a fresh file at `path`, and the
/// returned [`Recovery`] tells what happened.
pub fn open_file(path: &Path) -> Result<(Arc<FileStore>, Option<Recovery>), AppError> {
    let io_error = |e: io::Error| AppError::store(format!("{}: {e}", path.display()));
    // The file may hold a token: it is narrowed to its owner before anything
    // else, so a damaged one keeps that mode when it is moved aside, and
    // every write after is created with it.
    let store = Arc::new(FileStore::owner_only(path).map_err(AppError::store)?);
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((store, None)),
        Err(e) => return Err(io_error(e)),
    };
    let reason = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(_)) => return Ok((store, None)),
        Ok(_) => "it is not a JSON object".to_string(),
        Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => "it is empty".to_string(),
        Err(e) => e.to_string(),
    };
    let backup = backup_path(path, SystemTime::now());
    fs::rename(path, &backup).map_err(io_error)?;
    tracing::warn!(file = %path.display(), backup = %backup.display(), reason = %reason, "damaged store file moved aside");
    let entries = recover(&bytes);
    let mut recovered = Vec::new();
    for (key, value) in entries {
        StateStore::set(&*store, &key, &value).map_err(AppError::store)?;
        recovered.push(key);
    }
    recovered.sort();
    let recovery = Recovery {
        backup,
        reason,
        recovered,
    };
    Ok((store, Some(recovery)))
}

/// `mesh-presence.json` becomes `mesh-presence.damaged-20261126-033406.json`
/// (UTC); a name already taken gets `-2`, `-3`, ... so that no earlier
/// backup is ever replaced.
fn backup_path(path: &Path, now: SystemTime) -> PathBuf {
    let format = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let stamp = time::OffsetDateTime::from(now)
        .format(format)
        .unwrap_or_else(|_| "unknown-time".into());
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let name = |n: u32| match n {
        1 => format!("{stem}.damaged-{stamp}{ext}"),
        n => format!("{stem}.damaged-{stamp}-{n}{ext}"),
    };
    (1..)
        .map(|n| path.with_file_name(name(n)))
        .find(|candidate| !candidate.exists())
        .expect("some name is free")
}

/// What can be read of a damaged store file: every complete top-level entry
/// before the damage, and the user id wherever it still appears (your saved
/// states carry it too).
pub fn recover(bytes: &[u8]) -> Map<String, Value> {
    let text = String::from_utf8_lossy(bytes);
    let mut entries = leading_entries(&text, &[SETTINGS_KEY]);
    let has_id = matches!(entries.get(USER_ID_KEY), Some(Value::String(id)) if !id.is_empty());
    if !has_id {
        entries.remove(USER_ID_KEY);
        if let Some(id) = find_user_id(&text) {
            entries.insert(USER_ID_KEY.into(), Value::String(id));
        }
    }
    entries
}

/// The entries of a JSON object read from its start, up to the first one
/// that is not complete and followed by `,` or `}`. An object cut short under
/// a key in `partial` keeps its own leading entries: each setting stands on
/// its own, while a saved state is all or nothing (a status without its
/// expiry would never run out).
fn leading_entries(text: &str, partial: &[&str]) -> Map<String, Value> {
    let mut entries = Map::new();
    let Some(mut rest) = text.trim_start().strip_prefix('{') else {
        return entries;
    };
    loop {
        let Some((key, after_key)) = next_value::<String>(rest) else {
            return entries;
        };
        let Some(after_colon) = after_key.trim_start().strip_prefix(':') else {
            return entries;
        };
        let Some((value, after_value)) = next_value::<Value>(after_colon) else {
            if partial.contains(&key.as_str()) {
                let inner = leading_entries(after_colon, &[]);
                if !inner.is_empty() {
                    entries.insert(key, Value::Object(inner));
                }
            }
            return entries;
        };
        let after_value = after_value.trim_start();
        let (more, next) = match after_value.chars().next() {
            Some(',') => (true, &after_value[1..]),
            Some('}') => (false, ""),
            _ => return entries,
        };
        entries.insert(key, value);
        if !more {
            return entries;
        }
        rest = next;
    }
}

/// The first `"userId": "<non-empty string>"` anywhere in `text`.
fn find_user_id(text: &str) -> Option<String> {
    let needle = format!("\"{USER_ID_KEY}\"");
    text.match_indices(&needle).find_map(|(at, _)| {
        let after = text[at + needle.len()..].trim_start().strip_prefix(':')?;
        let (id, _) = next_value::<String>(after)?;
        (!id.is_empty()).then_some(id)
    })
}

/// One JSON value of type `T` at the start of `text` (after whitespace), and
/// the text after it.
fn next_value<T: serde::de::DeserializeOwned>(text: &str) -> Option<(T, &str)> {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<T>();
    let value = values.next()?.ok()?;
    Some((value, &text[values.byte_offset()..]))
}

/// The presence helper's view of the store: it keeps your last state per
/// room in the same file as everything else.
struct PresenceStore(Arc<dyn KeyValue>);

impl StateStore for PresenceStore {
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        Ok(self.0.get(key))
    }

    fn set(&self, key: &str, value: &Value) -> Result<(), StoreError> {
        self.0
            .set(key, value.clone())
            .map_err(|e| StoreError::Other(e.message))
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.0.remove(key).map_err(|e| StoreError::Other(e.message))
    }
}

/// The app's persistent data, typed.
#[derive(Clone)]
pub struct AppStore {
    kv: Arc<dyn KeyValue>,
}

impl AppStore {
    /// Wraps a key-value store.
    pub fn new(kv: Arc<dyn KeyValue>) -> Self {
        AppStore { kv }
    }

    /// The raw key-value store.
    pub fn key_value(&self) -> Arc<dyn KeyValue> {
        self.kv.clone()
    }

    /// The store as the presence helper uses it, to save your state per room.
    pub fn presence_store(&self) -> Arc<dyn StateStore> {
        Arc::new(PresenceStore(self.kv.clone()))
    }

    /// This installation's user id: read from the store, or created and saved
    /// on first run. Every window and every restart uses the same id, which is
    /// what groups them into one row.
    pub fn user_id(&self) -> Result<String, AppError> {
        if let Some(Value::String(id)) = self.kv.get(USER_ID_KEY) {
            if !id.is_empty() {
                return Ok(id);
            }
        }
        let id = new_user_id();
        self.kv.set(USER_ID_KEY, Value::String(id.clone()))?;
        Ok(id)
    }

    /// The saved settings, each field checked on its own (a bad one falls
    /// back to its default, see [`Settings::from_stored`]), and your
    /// account's name until you choose one.
    pub fn settings(&self) -> Settings {
        self.checked_settings().0
    }

    /// [`AppStore::settings`], with a notice for each saved field that was
    /// not valid and so was not used.
    pub fn checked_settings(&self) -> (Settings, Vec<String>) {
        let (mut settings, notices) = match self.kv.get(SETTINGS_KEY) {
            Some(stored) => Settings::from_stored(&stored),
            None => (Settings::default(), Vec::new()),
        };
        if settings.display_name.is_empty() {
            settings.display_name = default_display_name().to_string();
        }
        (settings, notices)
    }

    /// Saves the settings.
    pub fn save_settings(&self, settings: &Settings) -> Result<(), AppError> {
        let value = serde_json::to_value(settings).map_err(AppError::store)?;
        self.kv.set(SETTINGS_KEY, value)
    }

    /// Saves `state` as your last state in `room`.
    pub fn save_last_state(&self, room: &str, state: &Value) -> Result<(), AppError> {
        self.kv.set(&state_key(room), state.clone())
    }

    /// Your last state in `room`, if any.
    pub fn last_state(&self, room: &str) -> Option<Value> {
        self.kv.get(&state_key(room)).filter(Value::is_object)
    }
}

/// A fresh user id: `user-` and ten random base-36 characters.
fn new_user_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..10)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("user-{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_client::Token;
    use serde_json::json;

    fn store() -> AppStore {
        AppStore::new(Arc::new(MemoryKeyValue::default()))
    }

    #[test]
    fn user_id_is_created_once_and_then_stable() {
        let s = store();
        let first = s.user_id().unwrap();
        assert!(first.starts_with("user-") && first.len() == 15, "{first}");
        assert_eq!(s.user_id().unwrap(), first);
        // A second handle on the same data (another window) sees the same id.
        let other = AppStore::new(s.key_value());
        assert_eq!(other.user_id().unwrap(), first);
        assert_ne!(store().user_id().unwrap(), first, "fresh installs differ");
    }

    /// The defaults, as a new user sees them: named after their account.
    fn defaults() -> Settings {
        Settings {
            display_name: default_display_name().to_string(),
            ..Settings::default()
        }
    }

    #[test]
    fn settings_round_trip_and_bad_fields_fall_back_one_by_one() {
        let s = store();
        assert_eq!(s.checked_settings(), (defaults(), vec![]));
        let custom = Settings {
            server_url: Some("ws://10.0.0.2:4000".into()),
            room: "design".into(),
            display_name: "Ada".into(),
            token: Some(Token::new("a.b.c")),
            close_to_tray: false,
            away_after_minutes: 5,
            notify_starred: false,
        };
        s.save_settings(&custom).unwrap();
        assert_eq!(s.settings(), custom);

        // A bad server URL costs neither the room nor the name.
        for bad in ["ws://256.1.1.1", "http://example", "ftp://x"] {
            s.kv.set(
                SETTINGS_KEY,
                json!({"serverUrl": bad, "room": "design", "displayName": "Ada"}),
            )
            .unwrap();
            let (settings, notices) = s.checked_settings();
            assert_eq!(settings.server_url, None, "{bad}: embedded server");
            assert_eq!(settings.room, "design", "{bad}");
            assert_eq!(settings.display_name, "Ada", "{bad}");
            assert_eq!(notices.len(), 1, "{bad}: {notices:?}");
            assert!(notices[0].contains(bad), "{notices:?}");
        }
        s.kv.set(SETTINGS_KEY, json!("garbage")).unwrap();
        assert_eq!(s.settings(), defaults());
    }

    /// A store file as the app writes it.
    fn write_store(path: &Path) -> (String, Vec<u8>) {
        let kv = FileStore::new(path);
        let s = AppStore::new(Arc::new(kv));
        let id = s.user_id().unwrap();
        s.save_settings(&Settings {
            server_url: None,
            room: "design".into(),
            display_name: "Ada".into(),
            token: Some(Token::new("a.b.c")),
            ..Settings::default()
        })
        .unwrap();
        let state = json!({"userId": id, "username": "Ada", "status": "writing", "expiresAt": 99});
        s.save_last_state("design", &state).unwrap();
        (id, fs::read(path).unwrap())
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_sound_file_opens_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let (id, bytes) = write_store(&path);
        let (kv, recovery) = open_file(&path).unwrap();
        assert_eq!(recovery, None);
        assert_eq!(AppStore::new(kv).user_id().unwrap(), id);
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert_eq!(files_in(dir.path()), [STORE_FILE]);
        // The first run: no file yet, nothing to report.
        let (_, recovery) = open_file(&dir.path().join("new.json")).unwrap();
        assert_eq!(recovery, None);
    }

    #[test]
    fn writes_replace_the_file_and_leave_no_temporary_behind() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        write_store(&path);
        let (kv, _) = open_file(&path).unwrap();
        let before = fs::metadata(&path).unwrap().ino();
        AppStore::new(kv)
            .save_last_state("design", &json!({"status": "x"}))
            .unwrap();
        // A new file renamed over the old one, not the old one rewritten in
        // place (which a crash could leave half written).
        assert_ne!(fs::metadata(&path).unwrap().ino(), before);
        assert_eq!(files_in(dir.path()), [STORE_FILE]);
    }

    #[test]
    fn a_file_cut_short_anywhere_is_kept_and_the_user_id_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("original.json");
        let (id, bytes) = write_store(&original);
        let text = String::from_utf8(bytes.clone()).unwrap();
        // Where the first complete `"userId": "<id>"` ends: cut after it,
        // the id must come back.
        let id_complete = text.find(&format!("\"{id}\"")).unwrap() + id.len() + 2;
        for cut in 0..bytes.len() {
            let case = tempfile::tempdir().unwrap();
            let path = case.path().join(STORE_FILE);
            fs::write(&path, &bytes[..cut]).unwrap();
            let (kv, recovery) = open_file(&path).unwrap();
            let recovery = recovery.unwrap_or_else(|| panic!("cut at {cut}: not reported"));
            assert_eq!(
                fs::read(&recovery.backup).unwrap(),
                &bytes[..cut],
                "cut at {cut}: the damaged file is kept as it was"
            );
            let name = recovery.backup.file_name().unwrap().to_string_lossy();
            assert!(name.starts_with("mesh-presence.damaged-") && name.ends_with(".json"));
            let store = AppStore::new(kv);
            let now = store.user_id().unwrap();
            if cut >= id_complete {
                assert!(recovery.kept_user_id(), "cut at {cut}: {recovery:?}");
                assert_eq!(now, id, "cut at {cut}");
            }
            let rewritten: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            assert_eq!(rewritten["userId"], now, "cut at {cut}: a sound new file");
            // Whatever was recovered is sound: a state is never half kept.
            if let Some(state) = store.last_state("design") {
                assert_eq!(state["expiresAt"], 99, "cut at {cut}: {state}");
            }
            let notice = recovery.notice();
            assert!(
                notice.contains(&recovery.backup.display().to_string()),
                "{notice}"
            );
        }
    }

    #[test]
    fn what_a_bad_edit_left_readable_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        fs::write(
            &path,
            r#"{"settings": {"room": "design", "displayName": "Ada", "serverUrl": ws://x},
                "userId": "user-abc"}"#,
        )
        .unwrap();
        let (kv, recovery) = open_file(&path).unwrap();
        let recovery = recovery.unwrap();
        assert_eq!(recovery.recovered, ["settings", "userId"]);
        let store = AppStore::new(kv);
        assert_eq!(store.user_id().unwrap(), "user-abc");
        let settings = store.settings();
        assert_eq!(
            (settings.room.as_str(), settings.display_name.as_str()),
            ("design", "Ada")
        );
        let notice = recovery.notice();
        assert!(notice.contains("your user id, your settings"), "{notice}");
    }

    #[test]
    fn an_empty_or_foreign_file_is_reported_and_a_second_backup_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        fs::write(&path, "").unwrap();
        let (_, first) = open_file(&path).unwrap();
        let first = first.unwrap();
        assert_eq!(first.reason, "it is empty");
        assert!(
            first.notice().contains("You have a new user id"),
            "{}",
            first.notice()
        );

        fs::write(&path, "[1, 2]").unwrap();
        let (_, second) = open_file(&path).unwrap();
        let second = second.unwrap();
        assert_eq!(second.reason, "it is not a JSON object");
        assert_ne!(first.backup, second.backup);
        assert_eq!(fs::read_to_string(&first.backup).unwrap(), "");
        assert_eq!(fs::read_to_string(&second.backup).unwrap(), "[1, 2]");
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn the_file_holding_the_token_is_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let wide = fs::Permissions::from_mode(0o644);
        let dir = tempfile::tempdir().unwrap();

        // First run: the file is created private.
        let path = dir.path().join(STORE_FILE);
        let (kv, _) = open_file(&path).unwrap();
        let store = AppStore::new(kv);
        let me = store.user_id().unwrap();
        assert_eq!(mode(&path), 0o600);

        // A file left readable by others (an older version, a hand edit) is
        // narrowed at start, and saving a token keeps it so.
        fs::set_permissions(&path, wide.clone()).unwrap();
        let (kv, recovery) = open_file(&path).unwrap();
        assert_eq!(recovery, None);
        assert_eq!(mode(&path), 0o600);
        let store = AppStore::new(kv);
        assert_eq!(store.user_id().unwrap(), me);
        let settings = Settings {
            token: Some(Token::new("header.claims.signature")),
            ..store.settings()
        };
        store.save_settings(&settings).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(store.settings().token, settings.token);
        store
            .save_last_state("general", &json!({"status": "x"}))
            .unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(files_in(dir.path()), [STORE_FILE]);

        // A damaged file (with the token still in it) is moved aside
        // private too, and the fresh file is private from the start.
        fs::write(
            &path,
            r#"{"userId": "user-abc", "settings": {"token": "header.cla"#,
        )
        .unwrap();
        fs::set_permissions(&path, wide).unwrap();
        let (_, recovery) = open_file(&path).unwrap();
        let backup = recovery.unwrap().backup;
        assert_eq!(mode(&backup), 0o600);
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_bad_saved_token_is_dropped_with_a_notice_that_does_not_repeat_it() {
        let s = store();
        let secret = "eyJhbGciOiJIUzI1NiJ9 with a space";
        s.kv.set(
            SETTINGS_KEY,
            json!({"room": "design", "displayName": "Ada", "token": secret}),
        )
        .unwrap();
        let (settings, notices) = s.checked_settings();
        assert_eq!(settings.token, None, "no token is sent");
        assert_eq!(settings.room, "design");
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(notices[0].contains("saved token"), "{notices:?}");
        assert!(!notices[0].contains("eyJ"), "{notices:?}");

        s.kv.set(SETTINGS_KEY, json!({"token": {"nested": "eyJ"}}))
            .unwrap();
        let (settings, notices) = s.checked_settings();
        assert_eq!(settings.token, None);
        assert!(!notices[0].contains("eyJ"), "{notices:?}");

        // No token, or an empty one, is simply none, without a notice.
        s.kv.set(SETTINGS_KEY, json!({"token": " "})).unwrap();
        assert_eq!(s.checked_settings(), (defaults(), vec![]));
    }

    #[test]
    fn last_state_is_per_room_and_only_objects_count() {
        let s = store();
        s.kv.set(&state_key("general"), json!({"status": "here"}))
            .unwrap();
        s.kv.set(&state_key("other"), json!("not an object"))
            .unwrap();
        assert_eq!(s.last_state("general"), Some(json!({"status": "here"})));
        assert_eq!(s.last_state("other"), None);
        assert_eq!(s.last_state("nowhere"), None);
    }
}
