//! What survives a restart: the user id, the settings, and the last state per
//! room.
//!
//! Everything goes through [`KeyValue`], which `tauri-plugin-store` implements
//! for the app and a `HashMap` implements for tests, so the rules below (a
//! stable id created once, settings that tolerate missing fields) are tested
//! without a window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mesh_client::presence::{StateStore, StoreError};
use rand::Rng;
use serde_json::Value;
use tauri::Runtime;

use crate::error::AppError;
use crate::settings::Settings;

/// The store file, under the app's data directory.
pub const STORE_FILE: &str = "mesh-presence.json";

const USER_ID_KEY: &str = "userId";
const SETTINGS_KEY: &str = "settings";

/// The key under which your last state in `room` is kept (as the seed demo's
/// `user-state:general`).
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

impl<R: Runtime> KeyValue for tauri_plugin_store::Store<R> {
    fn get(&self, key: &str) -> Option<Value> {
        tauri_plugin_store::Store::get(self, key)
    }

    fn set(&self, key: &str, value: Value) -> Result<(), AppError> {
        tauri_plugin_store::Store::set(self, key, value);
        // Save now rather than on the debounce timer: the app may be killed
        // right after, and a restart must find what the user typed.
        self.save().map_err(AppError::store)
    }

    fn remove(&self, key: &str) -> Result<(), AppError> {
        self.delete(key);
        self.save().map_err(AppError::store)
    }
}

/// An in-memory [`KeyValue`], for tests.
#[derive(Debug, Default)]
pub struct MemoryKeyValue(Mutex<HashMap<String, Value>>);

impl KeyValue for MemoryKeyValue {
    fn get(&self, key: &str) -> Option<Value> {
        self.0.lock().ok()?.get(key).cloned()
    }

    fn set(&self, key: &str, value: Value) -> Result<(), AppError> {
        let mut map = self.0.lock().map_err(AppError::store)?;
        map.insert(key.to_string(), value);
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), AppError> {
        let mut map = self.0.lock().map_err(AppError::store)?;
        map.remove(key);
        Ok(())
    }
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

    /// The saved settings, or the defaults. A damaged entry falls back to the
    /// defaults rather than keeping the app from starting.
    pub fn settings(&self) -> Settings {
        self.kv
            .get(SETTINGS_KEY)
            .and_then(|v| serde_json::from_value::<Settings>(v).ok())
            .and_then(|s| s.validate().ok())
            .unwrap_or_default()
    }

    /// Saves the settings.
    pub fn save_settings(&self, settings: &Settings) -> Result<(), AppError> {
        let value = serde_json::to_value(settings).map_err(AppError::store)?;
        self.kv.set(SETTINGS_KEY, value)
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

    #[test]
    fn settings_round_trip_and_damaged_ones_fall_back_to_defaults() {
        let s = store();
        assert_eq!(s.settings(), Settings::default());
        let custom = Settings {
            server_url: Some("ws://10.0.0.2:4000".into()),
            room: "design".into(),
            display_name: "Ada".into(),
            token: Some(mesh_client::Token::new("a.b.c")),
        };
        s.save_settings(&custom).unwrap();
        assert_eq!(s.settings(), custom);
        s.kv.set(SETTINGS_KEY, json!({"serverUrl": "ftp://x", "room": "r"}))
            .unwrap();
        assert_eq!(s.settings(), Settings::default());
        s.kv.set(SETTINGS_KEY, json!("garbage")).unwrap();
        assert_eq!(s.settings(), Settings::default());
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
