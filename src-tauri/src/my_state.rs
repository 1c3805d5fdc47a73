//! Building the presence state this app publishes for you.
//!
//! The state is `{userId, username, status}`, the fields other presence
//! clients in the room (such as `createPresence` in JavaScript) read, plus
//! `expiresAt` (ms since the epoch) for a short-lived status, so that
//! other windows can show how long it has left. The `userId` always comes from
//! the store, never from the webview: it is what groups your windows.

use mesh_client::presence::CHANGED_AT;
use serde_json::{json, Map, Value};

/// Your state for a publish from the window.
pub fn compose(
    user_id: &str,
    username: &str,
    status: &str,
    expire_after_ms: Option<u64>,
    now_ms: u64,
) -> Value {
    let mut state = json!({"userId": user_id, "username": username, "status": status});
    if let Some(ms) = expire_after_ms {
        state["expiresAt"] = json!(now_ms.saturating_add(ms));
    }
    state
}

/// The state to republish at start from the one saved last time, and the
/// expiry it still has left.
///
/// A saved short-lived status that has run out since is dropped (your name is
/// kept), as a change made when it ran out; one still running is republished
/// with only its remaining time. The saved `changedAt` is kept otherwise:
/// coming back is not a new change.
pub fn restore(
    saved: Option<Value>,
    user_id: &str,
    display_name: &str,
    now_ms: u64,
) -> (Value, Option<u64>) {
    let mut state = match saved {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    state.insert("userId".into(), json!(user_id));
    let has_name = state
        .get("username")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name {
        state.insert("username".into(), json!(display_name));
    }
    let mut expire_after = None;
    if let Some(expires_at) = state.get("expiresAt").map(Value::as_u64) {
        match expires_at {
            Some(at) if at > now_ms => expire_after = Some(at - now_ms),
            Some(at) => {
                drop_status(&mut state);
                state.insert(CHANGED_AT.into(), json!(at));
            }
            None => drop_status(&mut state),
        }
    }
    state.entry("status").or_insert(json!(""));
    (Value::Object(state), expire_after)
}

/// `state` with its short-lived status run out: the status and its
/// `expiresAt` are gone, and everything else (your `userId`, which groups
/// your windows into one row, and your name) is kept as it was.
pub fn clear_status(state: Value) -> Value {
    let mut state = match state {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    drop_status(&mut state);
    Value::Object(state)
}

fn drop_status(state: &mut Map<String, Value>) {
    state.remove("expiresAt");
    state.insert("status".into(), json!(""));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_sets_identity_and_optional_expiry() {
        assert_eq!(
            compose("u1", "Ada", "busy", None, 1_000),
            json!({"userId": "u1", "username": "Ada", "status": "busy"})
        );
        assert_eq!(
            compose("u1", "Ada", "brb", Some(30_000), 1_000)["expiresAt"],
            json!(31_000)
        );
    }

    #[test]
    fn first_run_publishes_name_and_empty_status() {
        let (state, expiry) = restore(None, "u1", "Ada", 0);
        assert_eq!(
            state,
            json!({"userId": "u1", "username": "Ada", "status": ""})
        );
        assert_eq!(expiry, None);
    }

    #[test]
    fn saved_state_is_restored_with_our_user_id() {
        let saved =
            json!({"userId": "someone-else", "username": "Ada L.", "status": "writing", "mood": 3});
        let (state, expiry) = restore(Some(saved), "u1", "Ada", 0);
        assert_eq!(
            state,
            json!({"userId": "u1", "username": "Ada L.", "status": "writing", "mood": 3})
        );
        assert_eq!(expiry, None);
    }

    #[test]
    fn short_lived_status_keeps_only_its_remaining_time() {
        let saved = json!({"username": "Ada", "status": "brb", "expiresAt": 10_000});
        let (state, expiry) = restore(Some(saved.clone()), "u1", "", 4_000);
        assert_eq!(state["status"], "brb");
        assert_eq!(expiry, Some(6_000));

        let (state, expiry) = restore(Some(saved), "u1", "", 10_000);
        assert_eq!(state["status"], "", "an expired status is not brought back");
        assert_eq!(state["changedAt"], 10_000, "it ended when it expired");
        assert!(state.get("expiresAt").is_none());
        assert_eq!(state["username"], "Ada");
        assert_eq!(expiry, None);
    }

    #[test]
    fn a_saved_state_keeps_when_it_changed() {
        let saved = json!({"userId": "u1", "username": "Ada", "status": "in", "changedAt": 5});
        let (state, _) = restore(Some(saved.clone()), "u1", "Ada", 9);
        assert_eq!(state, saved);
    }

    #[test]
    fn clearing_an_expired_status_keeps_who_you_are() {
        let state = compose("u1", "Ada", "brb", Some(2_000), 1_000);
        assert_eq!(
            clear_status(state),
            json!({"userId": "u1", "username": "Ada", "status": ""})
        );
        let other = json!({"userId": "u1", "username": "Ada", "status": "x", "mood": 3});
        assert_eq!(clear_status(other)["mood"], 3, "other fields are kept");
    }

    #[test]
    fn damaged_saved_state_is_replaced() {
        let (state, _) = restore(Some(json!([1, 2])), "u1", "Ada", 0);
        assert_eq!(state["userId"], "u1");
        let (state, _) = restore(Some(json!({"expiresAt": "soon"})), "u1", "Ada", 0);
        assert!(state.get("expiresAt").is_none());
    }
}
