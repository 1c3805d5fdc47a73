//! The rows of the user list: [`UserRow`] for one person, and
//! [`RowMapper`], which turns the presence helper's diffs (who came, changed
//! or left) into rows; [`crate::list_view`] keeps the sorted list from those.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mesh_client::presence::UsersDiff;
use serde::Serialize;
use serde_json::Value;

use crate::error::lock;
use crate::stars::Stars;

/// One person in the list.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRow {
    /// The user id (the `userId` of their state, or a connection id when a
    /// connection has published nothing yet).
    pub id: String,
    /// Their display name, empty when unknown.
    pub username: String,
    /// Their status text, empty when none.
    pub status: String,
    /// When their state expires (ms since the epoch), for short-lived states.
    pub expires_at: Option<u64>,
    /// `away`, `busy` or `dnd` as they chose it; empty when available.
    pub availability: String,
    /// Since when they have been idle (ms since the epoch), while their app
    /// shows them away automatically.
    pub idle_since: Option<u64>,
    /// How many connections (windows, tabs, devices) they have in the room.
    pub tab_count: usize,
    /// Whether this is the user running this app.
    pub you: bool,
    /// Whether you starred them (never on your own row; see
    /// [`crate::stars`]).
    pub starred: bool,
    /// When their state last changed (ms since the epoch). Not sent: the
    /// page does not show it, and every byte of a row is sent again each
    /// time the page scrolls to it.
    #[serde(skip)]
    pub timestamp: u64,
    /// On a server that attests identity: the row's identity is not one the
    /// server vouches for, or its state claims to be someone else.
    pub unverified: bool,
}

/// The names a server attests, by verified user id, learned from
/// connection metadata as the presence helper groups connections by it.
///
/// Grows with the distinct users seen in the room, like the list itself.
#[derive(Debug, Clone, Default)]
pub struct VerifiedNames(Arc<Mutex<HashMap<String, String>>>);

impl VerifiedNames {
    /// The verified user id in `metadata` (its `userId`), remembering the
    /// verified name (`username`) that goes with it. This is the group key
    /// of a session on a server that attests identity.
    pub fn key_of(&self, metadata: &Value) -> Option<String> {
        let id = metadata.get("userId")?.as_str()?.to_string();
        let name = metadata
            .get("username")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        lock(&self.0).insert(id.clone(), name);
        Some(id)
    }

    /// The verified name of `id`; `None` when `id` is not a verified user.
    pub fn name(&self, id: &str) -> Option<String> {
        lock(&self.0).get(id).cloned()
    }
}

impl UserRow {
    /// Builds a row from a user's id, latest state and connection count.
    /// With `verified` (a server that attests identity), the name is the
    /// verified one and a row the server does not vouch for is marked.
    pub fn new(
        id: &str,
        state: Option<&Value>,
        tab_count: usize,
        timestamp: u64,
        me: &str,
        verified: Option<&VerifiedNames>,
    ) -> Self {
        let text = |key: &str| {
            state
                .and_then(|s| s.get(key))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let verified_name = verified.and_then(|v| v.name(id));
        let claims_other = state
            .and_then(|s| s.get("userId"))
            .is_some_and(|claimed| claimed.as_str() != Some(id));
        let unverified = verified.is_some() && (verified_name.is_none() || claims_other);
        UserRow {
            id: id.to_string(),
            username: verified_name
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| text("username")),
            unverified,
            status: text("status"),
            expires_at: state
                .and_then(|s| s.get("expiresAt"))
                .and_then(Value::as_u64),
            availability: text("availability"),
            idle_since: state
                .and_then(|s| s.get("idleSince"))
                .and_then(Value::as_u64),
            tab_count,
            you: id == me,
            starred: false,
            timestamp,
        }
    }
}

/// What changed in the list, as rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ListDiff {
    /// `true`: drop every row you have and take `upsert` as the whole list.
    pub full: bool,
    /// Rows that are new or changed.
    pub upsert: Vec<UserRow>,
    /// Ids of users who left.
    pub remove: Vec<String>,
}

/// Turns the presence helper's [`UsersDiff`]s into rows for this app's user.
///
/// The diffs name only the users who changed, so a 5k-user room where ten
/// people change costs ten rows per frame, not five thousand.
#[derive(Debug)]
pub struct RowMapper {
    me: String,
    verified: Option<VerifiedNames>,
    stars: Arc<Stars>,
}

impl RowMapper {
    /// Rows for `me` (this app's user id). With `verified` (a server that
    /// attests identity), rows carry verified names and unverified marks
    /// (see [`UserRow::new`]). Rows of people in `stars` are marked.
    pub fn new(me: &str, verified: Option<VerifiedNames>, stars: Arc<Stars>) -> Self {
        RowMapper {
            me: me.to_string(),
            verified,
            stars,
        }
    }

    /// The rows of `diff`; `None` when it changes nothing.
    pub fn rows(&self, diff: UsersDiff) -> Option<ListDiff> {
        let (full, users, removed) = match diff {
            UsersDiff::Full(users) => (true, users, Vec::new()),
            UsersDiff::Changed { upserted, removed } => (false, upserted, removed),
        };
        if !full && users.is_empty() && removed.is_empty() {
            return None;
        }
        // One read lock for the diff, one lookup per row.
        let stars = self.stars.read();
        let upsert = users
            .iter()
            .map(|user| {
                let mut row = UserRow::new(
                    &user.id,
                    user.state.as_deref(),
                    user.tab_count,
                    user.timestamp,
                    &self.me,
                    self.verified.as_ref(),
                );
                row.starred = !stars.is_empty() && !row.you && stars.contains(row.id.as_str());
                row
            })
            .collect();
        Some(ListDiff {
            full,
            upsert,
            remove: removed.iter().map(|id| id.to_string()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_client::presence::User;
    use serde_json::json;

    fn user(id: &str, status: &str, tabs: usize) -> User {
        User {
            id: Arc::from(id),
            state: Some(Arc::new(
                json!({"userId": id, "username": id, "status": status}),
            )),
            tab_count: tabs,
            members: Arc::from([]),
            representative: None,
            timestamp: 1,
        }
    }

    #[test]
    fn rows_read_name_status_and_expiry_from_the_state() {
        let state = json!({"userId": "me", "username": "Ada", "status": "busy", "expiresAt": 99});
        let r = UserRow::new("me", Some(&state), 2, 5, "me", None);
        assert_eq!((r.username.as_str(), r.status.as_str()), ("Ada", "busy"));
        assert_eq!(r.expires_at, Some(99));
        assert!(r.you);
        assert_eq!(r.tab_count, 2);
        let bare = UserRow::new("conn-1", None, 1, 0, "me", None);
        assert_eq!(bare.username, "");
        assert!(!bare.you);
        // A peer's odd state shape is shown as empty fields, never an error.
        let odd = UserRow::new(
            "x",
            Some(&json!({"username": 5, "status": ["a"]})),
            1,
            0,
            "me",
            None,
        );
        assert_eq!((odd.username.as_str(), odd.status.as_str()), ("", ""));
        assert!(
            !odd.unverified,
            "without attested identity nothing is marked"
        );
    }

    #[test]
    fn attested_identity_names_rows_and_marks_impostors() {
        let verified = VerifiedNames::default();
        let meta = json!({"userId": "alice", "username": "Alice (verified)"});
        assert_eq!(verified.key_of(&meta), Some("alice".into()));
        assert_eq!(verified.key_of(&json!({"username": "no id"})), None);
        let v = Some(&verified);

        // The verified name wins over whatever the state says.
        let state = json!({"userId": "alice", "username": "Al"});
        let row = UserRow::new("alice", Some(&state), 1, 0, "me", v);
        assert_eq!(row.username, "Alice (verified)");
        assert!(!row.unverified);
        // A state claiming someone else's id is marked, not merged.
        let spoof = json!({"userId": "bob", "username": "Bob"});
        let row = UserRow::new("alice", Some(&spoof), 1, 0, "me", v);
        assert!(row.unverified);
        assert_eq!(row.username, "Alice (verified)");
        // So is a connection the server vouches for no one for.
        let row = UserRow::new("conn-7", Some(&spoof), 1, 0, "me", v);
        assert!(row.unverified);
        assert_eq!(row.username, "Bob");
    }

    #[test]
    fn a_full_list_is_full_then_only_changes_are_sent() {
        let m = RowMapper::new("me", None, Arc::default());
        let first = m
            .rows(UsersDiff::Full(vec![user("a", "", 1), user("b", "", 1)]))
            .unwrap();
        assert!(first.full);
        assert_eq!(first.upsert.len(), 2);

        let nothing = UsersDiff::Changed {
            upserted: vec![],
            removed: vec![],
        };
        assert_eq!(m.rows(nothing), None);

        let change = m
            .rows(UsersDiff::Changed {
                upserted: vec![user("a", "away", 1), user("c", "", 1)],
                removed: vec![Arc::from("b")],
            })
            .unwrap();
        assert!(!change.full);
        let ids: Vec<_> = change.upsert.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(change.remove, ["b"]);
        assert_eq!(change.upsert[0].status, "away");
    }

    #[test]
    fn rows_say_who_you_are_and_count_tabs() {
        let m = RowMapper::new("b", None, Arc::default());
        let rows = m
            .rows(UsersDiff::Full(vec![user("a", "", 2), user("b", "", 1)]))
            .unwrap();
        assert_eq!(rows.upsert[0].tab_count, 2);
        assert!(!rows.upsert[0].you && rows.upsert[1].you);
        // An empty room is still worth one (full, empty) event.
        let empty = m.rows(UsersDiff::Full(vec![])).unwrap();
        assert!(empty.full && empty.upsert.is_empty());
    }

    #[test]
    fn rows_of_starred_people_are_marked_but_never_yours() {
        let store = crate::store::AppStore::new(Arc::new(crate::store::MemoryKeyValue::default()));
        let stars = Arc::new(Stars::load(&store));
        stars.set(&store, "me", "a", true).unwrap();
        let m = RowMapper::new("me", None, stars.clone());
        let rows = m
            .rows(UsersDiff::Full(vec![
                user("a", "", 1),
                user("b", "", 1),
                user("me", "", 1),
            ]))
            .unwrap();
        let starred: Vec<bool> = rows.upsert.iter().map(|r| r.starred).collect();
        assert_eq!(starred, [true, false, false]);
        // A star given later marks the rows built after it.
        stars.set(&store, "me", "b", true).unwrap();
        let later = m
            .rows(UsersDiff::Changed {
                upserted: vec![user("b", "back", 1)],
                removed: vec![],
            })
            .unwrap();
        assert!(later.upsert[0].starred);
    }
}
