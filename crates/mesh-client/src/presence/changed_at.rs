//! When a state's owner changed it: the `changedAt` field.
//!
//! Mesh stamps each presence update with the time the *server* handled it,
//! and snapshots carry no time at all. Neither says which of two states of
//! one person is their latest: a state saved offline and republished later
//! reaches the server after newer ones. So [`Presence`](super::Presence)
//! writes the time of the change into the state itself, as `changedAt`
//! (milliseconds since the Unix epoch, the owner's clock), and keeps it
//! through saves, tab sync and republishes.
//!
//! A field inside the state needs nothing from the server: any Mesh server
//! stores and forwards it unchanged, and other Mesh clients see one more
//! field. States without it (from other clients) are ordered by the time
//! the server handled them, or count as oldest when they come from a
//! snapshot, which has no times.

use serde_json::Value;

/// The state field that says when its owner changed it (ms since the epoch).
pub const CHANGED_AT: &str = "changedAt";

/// When `state`'s owner changed it, if it says (a whole number of ms).
pub fn changed_at(state: &Value) -> Option<u64> {
    state.get(CHANGED_AT)?.as_u64()
}

/// Writes `at` into `state` (an object; anything else is left alone).
pub(crate) fn stamp(state: &mut Value, at: u64) {
    if let Some(map) = state.as_object_mut() {
        map.insert(CHANGED_AT.to_string(), Value::from(at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_and_writes_the_field() {
        let mut state = json!({"status": "busy"});
        assert_eq!(changed_at(&state), None);
        stamp(&mut state, 1_700_000_000_123);
        assert_eq!(state["changedAt"], 1_700_000_000_123u64);
        assert_eq!(changed_at(&state), Some(1_700_000_000_123));
        stamp(&mut state, 5);
        assert_eq!(changed_at(&state), Some(5), "a new change replaces it");
    }

    #[test]
    fn anything_but_a_whole_number_is_no_time() {
        for odd in [json!("1"), json!(-1), json!(1.5), json!(null)] {
            assert_eq!(changed_at(&json!({ "changedAt": odd })), None, "{odd}");
        }
        let mut not_an_object = json!([1]);
        stamp(&mut not_an_object, 1);
        assert_eq!(not_an_object, json!([1]));
    }
}
