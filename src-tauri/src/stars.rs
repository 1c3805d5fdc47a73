//! The people you starred: a star on their row, and (see [`crate::notify`])
//! a desktop notification when they come online.
//!
//! Stars are kept by user id in the store, so a restart remembers them, and
//! in memory as a set that every window's rows are marked from: one lookup
//! per row that changes, whatever the size of the room or of the set.

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use serde_json::Value;

use crate::error::AppError;
use crate::store::AppStore;

/// The store key of the starred user ids.
pub const KEY: &str = "starred";
/// The most people you may star: a list you keep by hand, not a directory.
pub const MAX_STARS: usize = 500;
/// The longest user id that can be starred, in bytes (ids are short:
/// `user-` and ten characters, or what a server attests).
pub const MAX_ID_BYTES: usize = 256;

/// The starred user ids, shared by the app's windows.
#[derive(Debug, Default)]
pub struct Stars {
    ids: RwLock<HashSet<String>>,
}

impl Stars {
    /// The stars saved in `store`. A saved list that is damaged or edited
    /// by hand keeps what is still usable: ids that pass [`check_id`], up
    /// to [`MAX_STARS`].
    pub fn load(store: &AppStore) -> Stars {
        let ids = match store.key_value().get(KEY) {
            Some(Value::Array(ids)) => ids
                .iter()
                .filter_map(Value::as_str)
                .filter(|id| check_id(id).is_ok())
                .take(MAX_STARS)
                .map(str::to_string)
                .collect(),
            _ => HashSet::new(),
        };
        Stars {
            ids: RwLock::new(ids),
        }
    }

    /// The set, read-locked: hold it for a batch of lookups (a diff's rows),
    /// not across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, HashSet<String>> {
        self.ids.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `id` is starred.
    pub fn contains(&self, id: &str) -> bool {
        self.read().contains(id)
    }

    /// How many people are starred.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no one is starred.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Stars or unstars `id` (not `me`: your own row has no star) and saves
    /// the set in `store`. A bad id, a full set or a failed save changes
    /// nothing. Returns whether anything changed.
    pub fn set(
        &self,
        store: &AppStore,
        me: &str,
        id: &str,
        starred: bool,
    ) -> Result<bool, AppError> {
        check_id(id)?;
        if id == me {
            return Err(AppError::invalid("You cannot star yourself"));
        }
        let mut ids = self.ids.write().unwrap_or_else(PoisonError::into_inner);
        if ids.contains(id) == starred {
            return Ok(false);
        }
        if starred && ids.len() >= MAX_STARS {
            return Err(AppError::invalid(format!(
                "You can star at most {MAX_STARS} people; unstar someone first"
            )));
        }
        let mut next: Vec<&str> = ids.iter().map(String::as_str).collect();
        if starred {
            next.push(id);
        } else {
            next.retain(|other| *other != id);
        }
        // Sorted, so that the file does not change order from run to run.
        next.sort_unstable();
        // Saved before the set changes: a failed save loses nothing.
        store.key_value().set(KEY, Value::from(next))?;
        if starred {
            ids.insert(id.to_string());
        } else {
            ids.remove(id);
        }
        Ok(true)
    }
}

/// Checks that `id` can be a user id: not empty, at most
/// [`MAX_ID_BYTES`], no control characters.
pub fn check_id(id: &str) -> Result<(), AppError> {
    if id.is_empty() {
        return Err(AppError::invalid("A user id is needed to star someone"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(AppError::invalid(format!(
            "A user id is at most {MAX_ID_BYTES} bytes long"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "A user id cannot hold control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::store::{KeyValue, MemoryKeyValue};

    fn store() -> AppStore {
        AppStore::new(Arc::new(MemoryKeyValue::default()))
    }

    #[test]
    fn stars_are_saved_and_a_restart_finds_them() {
        let store = store();
        let stars = Stars::load(&store);
        assert!(stars.is_empty());
        assert!(stars.set(&store, "me", "bob", true).unwrap());
        assert!(!stars.set(&store, "me", "bob", true).unwrap(), "no change");
        assert!(stars.set(&store, "me", "ada", true).unwrap());
        assert_eq!(store.key_value().get(KEY), Some(json!(["ada", "bob"])));

        let again = Stars::load(&store);
        assert!(again.contains("bob") && again.contains("ada"));
        assert!(again.set(&store, "me", "bob", false).unwrap());
        assert!(!again.set(&store, "me", "carol", false).unwrap());
        assert_eq!(store.key_value().get(KEY), Some(json!(["ada"])));
        assert!(!Stars::load(&store).contains("bob"));
    }

    #[test]
    fn bad_ids_yourself_and_a_full_set_are_refused_and_change_nothing() {
        let store = store();
        let stars = Stars::load(&store);
        for (id, says) in [
            ("", "is needed"),
            (&"x".repeat(MAX_ID_BYTES + 1), "at most 256 bytes"),
            ("bob\nmallory", "control characters"),
            ("me", "cannot star yourself"),
        ] {
            let err = stars.set(&store, "me", id, true).unwrap_err();
            assert_eq!(err.code, "EINVALID");
            assert!(err.message.contains(says), "{id:?}: {}", err.message);
        }
        assert!(stars.is_empty());
        assert_eq!(store.key_value().get(KEY), None);

        for i in 0..MAX_STARS {
            stars.set(&store, "me", &format!("u{i}"), true).unwrap();
        }
        let err = stars.set(&store, "me", "one-more", true).unwrap_err();
        assert!(err.message.contains("at most 500"), "{}", err.message);
        assert_eq!(stars.len(), MAX_STARS);
        assert!(!stars.contains("one-more"));
        // Unstarring still works, and then there is room again.
        assert!(stars.set(&store, "me", "u0", false).unwrap());
        assert!(stars.set(&store, "me", "one-more", true).unwrap());
    }

    /// A store that cannot write.
    struct ReadOnly(MemoryKeyValue);

    impl KeyValue for ReadOnly {
        fn get(&self, key: &str) -> Option<Value> {
            self.0.get(key)
        }
        fn set(&self, _: &str, _: Value) -> Result<(), AppError> {
            Err(AppError::store("disk full"))
        }
        fn remove(&self, _: &str) -> Result<(), AppError> {
            Err(AppError::store("disk full"))
        }
    }

    #[test]
    fn a_failed_save_is_an_error_and_keeps_the_set_as_it_was() {
        let kv = MemoryKeyValue::default();
        kv.set(KEY, json!(["bob"])).unwrap();
        let store = AppStore::new(Arc::new(ReadOnly(kv)));
        let stars = Stars::load(&store);
        let err = stars.set(&store, "me", "ada", true).unwrap_err();
        assert_eq!(err.code, "ESTORE");
        assert!(!stars.contains("ada"));
        stars.set(&store, "me", "bob", false).unwrap_err();
        assert!(stars.contains("bob"));
    }

    #[test]
    fn a_damaged_saved_list_keeps_what_is_usable() {
        let store = store();
        let mut saved: Vec<Value> = vec![json!(5), json!(""), json!("bob"), json!(null)];
        saved.extend((0..MAX_STARS + 10).map(|i| json!(format!("u{i}"))));
        store.key_value().set(KEY, Value::from(saved)).unwrap();
        let stars = Stars::load(&store);
        assert_eq!(stars.len(), MAX_STARS);
        assert!(stars.contains("bob"));
        store.key_value().set(KEY, json!({"bob": true})).unwrap();
        assert!(Stars::load(&store).is_empty());
    }
}
