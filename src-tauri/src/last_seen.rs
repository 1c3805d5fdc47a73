//! Last seen: people who left the room in the last 24 hours, with when they
//! left and their last status, kept in the store so that a restart still
//! knows them. Shown below the people present, dimmed.
//!
//! At most [`MAX_ENTRIES`] are kept (the latest to leave): a big room that
//! empties must not grow the store, or the page, by thousands of rows.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::list_view::ListView;
use crate::store::AppStore;
use crate::user_list::ListDiff;

/// How long someone stays in last seen after they left.
pub const KEEP_MS: u64 = 24 * 60 * 60 * 1000;
/// The most people kept.
pub const MAX_ENTRIES: usize = 100;

/// The store key of a room's last seen.
pub fn key(room: &str) -> String {
    format!("last-seen:{room}")
}

/// Someone who left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Departure {
    /// Their user id.
    pub id: String,
    /// Their name when they left.
    pub username: String,
    /// Their status when they left.
    pub status: String,
    /// Their availability when they left (empty: available).
    #[serde(default)]
    pub availability: String,
    /// When they left (ms since the epoch).
    pub left_at: u64,
}

/// One room's last seen, newest first, as stored.
///
/// Changes are written to the store by [`LastSeen::save`], which the caller
/// paces: a room that empties changes last seen every frame, and writing
/// the store that often cost the app more than the room itself. What is not
/// saved yet is saved when this is dropped (the window closes, the app
/// quits), so nothing is lost.
pub struct LastSeen {
    store: AppStore,
    room: String,
    entries: Vec<Departure>,
    /// Changed since it was last saved.
    unsaved: bool,
}

impl LastSeen {
    /// The room's last seen as stored, without those who left over 24 h
    /// before `now_ms` (a stored list that cannot be read is empty).
    pub fn load(store: AppStore, room: &str, now_ms: u64) -> LastSeen {
        let entries = store
            .key_value()
            .get(&key(room))
            .and_then(|v| serde_json::from_value::<Vec<Departure>>(v).ok())
            .unwrap_or_default();
        let mut last_seen = LastSeen {
            store,
            room: room.to_string(),
            entries,
            unsaved: false,
        };
        last_seen.prune(now_ms);
        last_seen
    }

    /// Notes what `diff` does to `list` before it is applied: who leaves
    /// goes into last seen (never you), who is here is no longer in it.
    /// Returns whether last seen changed (it is then unsaved until
    /// [`LastSeen::save`]).
    pub fn observe(&mut self, list: &ListView, diff: &ListDiff, now_ms: u64) -> bool {
        let before = self.entries.len();
        let mut changed = false;
        if !self.entries.is_empty() {
            let here: std::collections::HashSet<&str> =
                diff.upsert.iter().map(|r| r.id.as_str()).collect();
            self.entries.retain(|e| !here.contains(e.id.as_str()));
        }
        for id in &diff.remove {
            let Some(row) = list.list().get(id) else {
                continue;
            };
            if row.you {
                continue;
            }
            self.entries.retain(|e| e.id != row.id);
            self.entries.insert(
                0,
                Departure {
                    id: row.id.clone(),
                    username: row.username.clone(),
                    status: row.status.clone(),
                    availability: row.availability.clone(),
                    left_at: now_ms,
                },
            );
            changed = true;
        }
        self.prune(now_ms);
        changed |= self.entries.len() != before;
        self.unsaved |= changed;
        changed
    }

    /// Who left in the last 24 hours, newest first.
    pub fn entries(&self) -> &[Departure] {
        &self.entries
    }

    /// Forgets everyone (the setting's Clear).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.unsaved = true;
        self.save();
    }

    fn prune(&mut self, now_ms: u64) {
        self.entries
            .retain(|e| now_ms.saturating_sub(e.left_at) < KEEP_MS);
        self.entries.truncate(MAX_ENTRIES);
    }

    /// Writes what changed since the last save to the store.
    pub fn save(&mut self) {
        if !std::mem::take(&mut self.unsaved) {
            return;
        }
        let kv = self.store.key_value();
        let result = if self.entries.is_empty() {
            kv.remove(&key(&self.room))
        } else {
            kv.set(
                &key(&self.room),
                serde_json::to_value(&self.entries).unwrap_or(Value::Null),
            )
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not save last seen");
        }
    }
}

impl Drop for LastSeen {
    fn drop(&mut self) {
        self.save();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::MemoryKeyValue;
    use crate::user_list::UserRow;

    fn row(id: &str, status: &str, you: bool) -> UserRow {
        UserRow {
            id: id.into(),
            username: id.to_uppercase(),
            status: status.into(),
            expires_at: None,
            availability: String::new(),
            idle_since: None,
            tab_count: 1,
            you,
            starred: false,
            timestamp: 0,
            unverified: false,
        }
    }

    fn diff(upsert: Vec<UserRow>, remove: &[&str]) -> ListDiff {
        ListDiff {
            full: false,
            upsert,
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn who_leaves_is_kept_with_their_last_status_and_forgotten_when_back() {
        let store = AppStore::new(Arc::new(MemoryKeyValue::default()));
        let mut list = ListView::new();
        let mut seen = LastSeen::load(store.clone(), "r", 0);
        let came = diff(vec![row("me", "", true), row("bob", "lunch", false)], &[]);
        assert!(!seen.observe(&list, &came, 1));
        list.apply(came);

        let left = diff(vec![], &["bob", "me"]);
        assert!(seen.observe(&list, &left, 1_000));
        list.apply(left);
        assert_eq!(seen.entries().len(), 1, "never you");
        let bob = &seen.entries()[0];
        assert_eq!(
            (bob.username.as_str(), bob.status.as_str(), bob.left_at),
            ("BOB", "lunch", 1_000)
        );

        // Saved when the caller says so; a restart then finds him, and a
        // day later he is gone.
        assert!(LastSeen::load(store.clone(), "r", 2_000)
            .entries()
            .is_empty());
        seen.save();
        assert_eq!(
            LastSeen::load(store.clone(), "r", 2_000).entries(),
            seen.entries()
        );
        assert!(LastSeen::load(store.clone(), "r", 1_000 + KEEP_MS)
            .entries()
            .is_empty());

        // Back: no longer last seen.
        let back = diff(vec![row("bob", "back", false)], &[]);
        assert!(seen.observe(&list, &back, 3_000));
        assert!(seen.entries().is_empty());
        seen.save();
        assert!(LastSeen::load(store, "r", 3_000).entries().is_empty());
    }

    #[test]
    fn what_is_not_saved_yet_is_saved_when_dropped() {
        let store = AppStore::new(Arc::new(MemoryKeyValue::default()));
        let mut list = ListView::new();
        let mut seen = LastSeen::load(store.clone(), "r", 0);
        let came = diff(vec![row("bob", "lunch", false)], &[]);
        seen.observe(&list, &came, 1);
        list.apply(came);
        assert!(seen.observe(&list, &diff(vec![], &["bob"]), 5));
        drop(seen);
        let after = LastSeen::load(store, "r", 6);
        assert_eq!(after.entries().len(), 1);
        assert_eq!(after.entries()[0].id, "bob");
    }

    #[test]
    fn a_room_that_empties_keeps_the_latest_few_and_clear_forgets_them() {
        let store = AppStore::new(Arc::new(MemoryKeyValue::default()));
        let mut list = ListView::new();
        let mut seen = LastSeen::load(store.clone(), "r", 0);
        let ids: Vec<String> = (0..MAX_ENTRIES + 50).map(|i| format!("u{i}")).collect();
        list.apply(diff(ids.iter().map(|id| row(id, "", false)).collect(), &[]));
        for (i, id) in ids.iter().enumerate() {
            let left = diff(vec![], &[id.as_str()]);
            seen.observe(&list, &left, i as u64);
            list.apply(left);
        }
        assert_eq!(seen.entries().len(), MAX_ENTRIES);
        assert_eq!(seen.entries()[0].id, ids[ids.len() - 1], "newest first");
        seen.clear();
        assert!(LastSeen::load(store, "r", 0).entries().is_empty());
    }
}
