//! The `mesh/presence-update` push.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One change to a room's presence, as pushed to its subscribers.
///
/// Presence is per connection: two tabs of one user are two members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum PresenceUpdate {
    /// A connection joined the room.
    #[serde(rename_all = "camelCase")]
    Join {
        /// The connection that joined.
        connection_id: String,
        /// The room.
        room_name: String,
        /// Milliseconds since the Unix epoch.
        timestamp: u64,
    },
    /// A connection left the room (by request, close, or TTL lapse).
    #[serde(rename_all = "camelCase")]
    Leave {
        /// The connection that left.
        connection_id: String,
        /// The room.
        room_name: String,
        /// Milliseconds since the Unix epoch.
        timestamp: u64,
    },
    /// A connection's state changed; `None` means cleared or expired.
    #[serde(rename_all = "camelCase")]
    State {
        /// The connection whose state changed.
        connection_id: String,
        /// The room.
        room_name: String,
        /// The new state object, or `None` when it was cleared or expired.
        state: Option<Value>,
        /// Milliseconds since the Unix epoch.
        timestamp: u64,
    },
}

impl PresenceUpdate {
    /// The connection the update is about.
    pub fn connection_id(&self) -> &str {
        match self {
            PresenceUpdate::Join { connection_id, .. }
            | PresenceUpdate::Leave { connection_id, .. }
            | PresenceUpdate::State { connection_id, .. } => connection_id,
        }
    }

    /// The room the update is about.
    pub fn room_name(&self) -> &str {
        match self {
            PresenceUpdate::Join { room_name, .. }
            | PresenceUpdate::Leave { room_name, .. }
            | PresenceUpdate::State { room_name, .. } => room_name,
        }
    }

    /// When the update happened, in milliseconds since the Unix epoch.
    pub fn timestamp(&self) -> u64 {
        match self {
            PresenceUpdate::Join { timestamp, .. }
            | PresenceUpdate::Leave { timestamp, .. }
            | PresenceUpdate::State { timestamp, .. } => *timestamp,
        }
    }

    /// The complete push frame text for this update.
    pub fn to_frame_text(&self) -> String {
        crate::Frame::push(
            crate::command::PRESENCE_UPDATE,
            serde_json::to_value(self).unwrap_or(Value::Null),
        )
        .encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_shape_matches_the_protocol() {
        let u = PresenceUpdate::State {
            connection_id: "c1".into(),
            room_name: "lobby".into(),
            state: None,
            timestamp: 5,
        };
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            json!({"type": "state", "connectionId": "c1", "roomName": "lobby", "state": null, "timestamp": 5})
        );
        let j: PresenceUpdate = serde_json::from_value(
            json!({"type": "join", "connectionId": "c2", "roomName": "r", "timestamp": 1}),
        )
        .unwrap();
        assert_eq!(j.connection_id(), "c2");
        assert_eq!(j.room_name(), "r");
        assert_eq!(j.timestamp(), 1);
        let frame = crate::Frame::decode(&j.to_frame_text(), 1024).unwrap();
        assert_eq!(frame.command, "mesh/presence-update");
        assert_eq!(frame.id, None);
        assert_eq!(frame.payload["type"], "join");
    }

    #[test]
    fn state_with_object_round_trips() {
        let u = PresenceUpdate::State {
            connection_id: "c1".into(),
            room_name: "lobby".into(),
            state: Some(json!({"status": "typing"})),
            timestamp: 5,
        };
        let back: PresenceUpdate =
            serde_json::from_value(serde_json::to_value(&u).unwrap()).unwrap();
        assert_eq!(back, u);
    }
}
