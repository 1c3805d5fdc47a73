//! Building the presence state this app publishes for you.
//!
//! The state is `{userId, username, status}`, the fields other presence
//! clients in the room (such as `createPresence` in JavaScript) read, plus
//! `expiresAt` (ms since the epoch) for a short-lived status, so that
//! other windows can show how long it has left; `availability` when you are
//! not simply available (`away`, `busy`, `dnd`: chosen by hand); and
//! `idleSince` (ms since the epoch) while automatic away holds, the marker
//! that says you have not touched the machine since then. Automatic away
//! only ever adds or removes that marker: what you chose stays. The
//! `userId` always comes from
//! the store, never from the webview: it is what groups your windows.

use mesh_client::presence::CHANGED_AT;
use serde_json::{json, Map, Value};

use crate::error::AppError;

/// What you can choose to be, besides a status text; the first is the
/// default, which the state leaves out.
pub const AVAILABILITIES: [&str; 4] = ["available", "away", "busy", "dnd"];

/// The key of the automatic away marker.
pub const IDLE_SINCE: &str = "idleSince";

/// `text` if it is one of [`AVAILABILITIES`].
pub fn validate_availability(text: &str) -> Result<&'static str, AppError> {
    AVAILABILITIES
        .into_iter()
        .find(|a| *a == text)
        .ok_or_else(|| {
            AppError::invalid(format!(
                "Availability must be one of {}",
                AVAILABILITIES.join(", ")
            ))
        })
}

/// Your state for a publish from the window. A publish by hand is input:
/// it carries no automatic away marker.
pub fn compose(
    user_id: &str,
    username: &str,
    status: &str,
    availability: &str,
    expire_after_ms: Option<u64>,
    now_ms: u64,
) -> Value {
    let mut state = json!({"userId": user_id, "username": username, "status": status});
    if availability != AVAILABILITIES[0] {
        state["availability"] = json!(availability);
    }
    if let Some(ms) = expire_after_ms {
        state["expiresAt"] = json!(now_ms.saturating_add(ms));
    }
    state
}

/// The availability `state` holds (the default when none).
pub fn availability(state: Option<&Value>) -> &str {
    state
        .and_then(|s| s.get("availability"))
        .and_then(Value::as_str)
        .unwrap_or(AVAILABILITIES[0])
}

/// `state` with one field set (or removed, for `None`, or for the default
/// availability), everything else kept; and the time its short-lived
/// status still has, so a republish keeps its expiry.
pub fn with_field(
    state: Value,
    key: &str,
    value: Option<Value>,
    now_ms: u64,
) -> (Value, Option<u64>) {
    let mut state = match state {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let value = value.filter(|v| !(key == "availability" && v == AVAILABILITIES[0]));
    match value {
        Some(value) => state.insert(key.into(), value),
        None => state.remove(key),
    };
    let left = state
        .get("expiresAt")
        .and_then(Value::as_u64)
        .map(|at| at.saturating_sub(now_ms).max(1));
    (Value::Object(state), left)
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
    // Starting the app is input: whoever starts it is at the machine.
    state.remove(IDLE_SINCE);
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
            compose("u1", "Ada", "busy", "available", None, 1_000),
            json!({"userId": "u1", "username": "Ada", "status": "busy"})
        );
        assert_eq!(
            compose("u1", "Ada", "brb", "available", Some(30_000), 1_000)["expiresAt"],
            json!(31_000)
        );
        assert_eq!(
            compose("u1", "Ada", "", "dnd", None, 1_000)["availability"],
            "dnd"
        );
    }

    #[test]
    fn availability_is_checked_and_read() {
        assert_eq!(validate_availability("busy").unwrap(), "busy");
        assert!(validate_availability("asleep").is_err());
        assert_eq!(availability(None), "available");
        assert_eq!(availability(Some(&json!({"availability": "away"}))), "away");
    }

    #[test]
    fn one_field_changes_and_the_rest_and_the_expiry_stay() {
        let state = compose("u1", "Ada", "brb", "busy", Some(10_000), 1_000);
        let (away, left) = with_field(state.clone(), IDLE_SINCE, Some(json!(500)), 4_000);
        assert_eq!(away[IDLE_SINCE], 500);
        assert_eq!(
            (away["status"].as_str(), away["availability"].as_str()),
            (Some("brb"), Some("busy"))
        );
        assert_eq!(left, Some(7_000));
        let (back, _) = with_field(away, IDLE_SINCE, None, 4_000);
        assert_eq!(back, state);
        let (available, left) = with_field(state, "availability", Some(json!("available")), 20_000);
        assert!(
            available.get("availability").is_none(),
            "the default is left out"
        );
        assert_eq!(left, Some(1), "an expired status still gets its timer");
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
        let state = compose("u1", "Ada", "brb", "available", Some(2_000), 1_000);
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
