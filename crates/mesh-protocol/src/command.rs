//! Command and push names, exactly as they appear on the wire.

/// Server push: the connection's id, sent once right after the handshake.
pub const ASSIGN_ID: &str = "mesh/assign-id";
/// Server push: heartbeat; the client answers [`PONG`].
pub const PING: &str = "ping";
/// Client answer to [`PING`].
pub const PONG: &str = "pong";
/// Server push: asks the client to answer [`LATENCY_RESPONSE`].
pub const LATENCY_REQUEST: &str = "latency:request";
/// Client answer to [`LATENCY_REQUEST`].
pub const LATENCY_RESPONSE: &str = "latency:response";
/// Server push: the measured round trip in milliseconds.
pub const LATENCY: &str = "latency";
/// Server push: a presence join, leave or state change.
pub const PRESENCE_UPDATE: &str = "mesh/presence-update";
/// Server push used by the reference server for channel messages; presence
/// copies of it are duplicates and are ignored by our client.
pub const SUBSCRIPTION_MESSAGE: &str = "mesh/subscription-message";

/// Request: does nothing, answers `true`.
pub const NOOP: &str = "mesh/noop";
/// Request: join a room.
pub const JOIN_ROOM: &str = "mesh/join-room";
/// Request: leave a room.
pub const LEAVE_ROOM: &str = "mesh/leave-room";
/// Request: receive a room's presence updates.
pub const SUBSCRIBE_PRESENCE: &str = "mesh/subscribe-presence";
/// Request: stop receiving a room's presence updates.
pub const UNSUBSCRIBE_PRESENCE: &str = "mesh/unsubscribe-presence";
/// Request: publish this connection's presence state in a room.
pub const PUBLISH_PRESENCE_STATE: &str = "mesh/publish-presence-state";
/// Request: clear this connection's presence state in a room.
pub const CLEAR_PRESENCE_STATE: &str = "mesh/clear-presence-state";
/// Request: a snapshot of a room's members (ids only) and states.
pub const GET_PRESENCE_STATE: &str = "mesh/get-presence-state";
/// Request: another connection's metadata.
pub const GET_CONNECTION_METADATA: &str = "mesh/get-connection-metadata";
/// Request: this connection's metadata.
pub const GET_MY_CONNECTION_METADATA: &str = "mesh/get-my-connection-metadata";
/// Request: set this connection's metadata.
pub const SET_MY_CONNECTION_METADATA: &str = "mesh/set-my-connection-metadata";
/// Request: a room's metadata.
pub const GET_ROOM_METADATA: &str = "mesh/get-room-metadata";
/// Request: replace this connection's token with a newer one for the same
/// user before the current one expires (servers with authentication).
pub const REFRESH_TOKEN: &str = "mesh/refresh-token";

/// Prefix of the reference server's presence channels, whose
/// `mesh/subscription-message` copies duplicate `mesh/presence-update`.
pub const PRESENCE_CHANNEL_PREFIX: &str = "mesh:presence:updates:";
