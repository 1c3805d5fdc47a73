//! Typed payloads for every command and its reply (see `command`).
//!
//! Field names are the wire names (camelCase). Replies from other Mesh
//! servers are read leniently: missing collections default to empty, and a
//! member may be given as a bare connection id or as `{id, metadata}`.

use crate::metadata::Strategy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Payload of every command that names just a room: join, leave,
/// subscribe, unsubscribe, clear state, get state, get room metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomRequest {
    /// The room.
    pub room_name: String,
}

/// A present connection and its metadata (`null` when it has none).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// Connection id.
    pub id: String,
    /// Connection metadata.
    pub metadata: Value,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Id(String),
            Full {
                id: String,
                #[serde(default)]
                metadata: Value,
            },
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Id(id) => Member {
                id,
                metadata: Value::Null,
            },
            Repr::Full { id, metadata } => Member { id, metadata },
        })
    }
}

/// Reply to `mesh/join-room`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRoomReply {
    /// Whether the join happened.
    pub success: bool,
    /// Everyone in the room, the joiner included.
    #[serde(default)]
    pub present: Vec<Member>,
}

/// Reply carrying only a success flag (`mesh/leave-room`,
/// `mesh/set-my-connection-metadata`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuccessReply {
    /// Whether the request took effect.
    pub success: bool,
}

/// Reply to `mesh/subscribe-presence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribePresenceReply {
    /// Whether the subscription was made (false for an untracked or guarded room).
    pub success: bool,
    /// Members with their metadata.
    #[serde(default)]
    pub present: Vec<Member>,
    /// Current states by connection id.
    #[serde(default)]
    pub states: Map<String, Value>,
}

/// Payload of `mesh/publish-presence-state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishPresenceState {
    /// The room.
    pub room_name: String,
    /// The state object; a missing state makes the reply `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Value>,
    /// Delete the state after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_after: Option<u64>,
    /// Store without pushing an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent: Option<bool>,
}

/// Reply to `mesh/get-presence-state`: ids only, unlike subscribe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceStateReply {
    /// Whether the room is tracked.
    pub success: bool,
    /// Connection ids present.
    #[serde(default)]
    pub present: Vec<String>,
    /// Current states by connection id.
    #[serde(default)]
    pub states: Map<String, Value>,
}

/// Payload of `mesh/get-connection-metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionMetadataRequest {
    /// The connection asked about.
    pub connection_id: String,
}

/// Reply to the metadata getters: `{metadata}`, `null` when there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataReply {
    /// The metadata, or `null`.
    #[serde(default)]
    pub metadata: Value,
}

/// Options of `mesh/set-my-connection-metadata`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SetMetadataOptions {
    /// How the value combines with what is stored.
    #[serde(default)]
    pub strategy: Strategy,
}

/// Payload of `mesh/set-my-connection-metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetMetadataRequest {
    /// The value to store.
    pub metadata: Value,
    /// Write strategy; `replace` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<SetMetadataOptions>,
}

impl SetMetadataRequest {
    /// The strategy asked for, `replace` by default.
    pub fn strategy(&self) -> Strategy {
        self.options
            .as_ref()
            .map(|o| o.strategy)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_read_in_both_shapes() {
        let r: SubscribePresenceReply = serde_json::from_value(json!({
            "success": true,
            "present": ["a", {"id": "b", "metadata": {"userId": "u"}}],
            "states": {"b": {"status": "away"}}
        }))
        .unwrap();
        assert_eq!(r.present[0].id, "a");
        assert_eq!(r.present[0].metadata, Value::Null);
        assert_eq!(r.present[1].metadata, json!({"userId": "u"}));
        let bare: SubscribePresenceReply =
            serde_json::from_value(json!({"success": false, "present": []})).unwrap();
        assert!(bare.states.is_empty());
    }

    #[test]
    fn publish_payload_uses_wire_names() {
        let p = PublishPresenceState {
            room_name: "r".into(),
            state: Some(json!({"s": 1})),
            expire_after: Some(500),
            silent: None,
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"roomName": "r", "state": {"s": 1}, "expireAfter": 500})
        );
    }

    #[test]
    fn wrong_shapes_are_rejected() {
        assert!(serde_json::from_value::<RoomRequest>(json!({"room": "x"})).is_err());
        assert!(serde_json::from_value::<RoomRequest>(json!({"roomName": 5})).is_err());
        assert!(serde_json::from_value::<PublishPresenceState>(
            json!({"roomName": "r", "expireAfter": -3})
        )
        .is_err());
    }

    #[test]
    fn set_metadata_defaults_to_replace() {
        let r: SetMetadataRequest = serde_json::from_value(json!({"metadata": {"a": 1}})).unwrap();
        assert_eq!(r.strategy(), Strategy::Replace);
        let r: SetMetadataRequest = serde_json::from_value(
            json!({"metadata": {"a": 1}, "options": {"strategy": "deepMerge"}}),
        )
        .unwrap();
        assert_eq!(r.strategy(), Strategy::DeepMerge);
    }
}
