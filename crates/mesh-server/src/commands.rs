//! The built-in commands, one function each, and custom-command dispatch.
//!
//! Every handler returns the reply payload or an [`ErrorPayload`]; the
//! connection task turns either into the reply frame.

use crate::auth::IDENTITY_FIELDS;
use crate::backend::BackendError;
use crate::connection::Connection;
use crate::error::ServerError;
use crate::hooks::CommandRequest;
use crate::server::ServerHandle;
use crate::tracking::{GuardRequest, TrackOptions};
use bytes::Bytes;
use mesh_protocol::payload::{
    ConnectionMetadataRequest, PublishPresenceState, RoomRequest, SetMetadataRequest,
};
use mesh_protocol::{
    command, now_millis, validate_room_name, ErrorCode, ErrorPayload, PresenceUpdate, Strategy,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

type Reply = Result<Value, ErrorPayload>;

/// What a command answers: a value to encode, or parts already encoded
/// (a room snapshot shared with every other asker) to send in order.
pub(crate) enum Payload {
    /// A value, encoded for this reply alone.
    Value(Value),
    /// Encoded JSON, in pieces that are not copied.
    Shared(Vec<Bytes>),
}

/// Runs one command for `conn`.
pub(crate) async fn dispatch(
    conn: &mut Connection,
    name: &str,
    payload: Value,
) -> Result<Payload, ErrorPayload> {
    match name {
        command::JOIN_ROOM => join_room(conn, room_of(payload)?).await,
        command::SUBSCRIBE_PRESENCE => subscribe_presence(conn, room_of(payload)?).await,
        _ => run(conn, name, payload).await.map(Payload::Value),
    }
}

/// Runs a command whose reply is built for this asker alone.
async fn run(conn: &mut Connection, name: &str, payload: Value) -> Reply {
    match name {
        command::NOOP => Ok(json!(true)),
        command::LEAVE_ROOM => leave_room(conn, room_of(payload)?).await,
        command::UNSUBSCRIBE_PRESENCE => unsubscribe_presence(conn, room_of(payload)?),
        command::PUBLISH_PRESENCE_STATE => publish_presence_state(conn, parse(payload)?).await,
        command::CLEAR_PRESENCE_STATE => clear_presence_state(conn, room_of(payload)?).await,
        command::GET_PRESENCE_STATE => get_presence_state(conn, room_of(payload)?).await,
        command::GET_CONNECTION_METADATA => get_connection_metadata(conn, parse(payload)?).await,
        command::GET_MY_CONNECTION_METADATA => {
            let metadata = conn
                .server
                .get_metadata(&conn.id)
                .await
                .map_err(server_error)?;
            Ok(json!({ "metadata": metadata }))
        }
        command::SET_MY_CONNECTION_METADATA => set_my_metadata(conn, parse(payload)?).await,
        command::REFRESH_TOKEN => refresh_token(conn, parse(payload)?).await,
        command::GET_ROOM_METADATA => {
            let room = room_of(payload)?;
            check_access(conn, &room, Access::Read)?;
            let metadata = conn
                .server
                .get_room_metadata(&room)
                .await
                .map_err(server_error)?;
            Ok(json!({ "metadata": metadata }))
        }
        _ => match conn.server.shared.commands.get(name) {
            Some(handler) => {
                let run = handler(CommandRequest {
                    connection_id: conn.id.clone(),
                    command: name.to_string(),
                    payload,
                    server: conn.server.clone(),
                });
                // Embedder code may wait on anything; it must not hold up a
                // shutdown.
                tokio::select! {
                    reply = run => reply,
                    _ = crate::server::stopped(&mut conn.shutdown) => Err(ErrorPayload::new(
                        ErrorCode::Server,
                        "server shutting down",
                    )),
                }
            }
            None => Err(ErrorPayload::new(
                ErrorCode::NotFound,
                format!("Command \"{name}\" not found"),
            )),
        },
    }
}

fn parse<T: DeserializeOwned>(payload: Value) -> Result<T, ErrorPayload> {
    serde_json::from_value(payload)
        .map_err(|e| ErrorPayload::new(ErrorCode::Invalid, format!("invalid payload: {e}")))
}

/// Reads and checks the `roomName` of a room request.
fn room_of(payload: Value) -> Result<String, ErrorPayload> {
    let RoomRequest { room_name } = parse(payload)?;
    check_room(&room_name)?;
    Ok(room_name)
}

fn check_room(room: &str) -> Result<(), ErrorPayload> {
    validate_room_name(room).map_err(|e| ErrorPayload::new(ErrorCode::Invalid, e))
}

fn forbidden(message: impl Into<String>) -> ErrorPayload {
    ErrorPayload::new(ErrorCode::Forbidden, message)
}

/// What a command does with a room, for the token's room claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Join it or publish in it: the `rooms` claim.
    Join,
    /// Subscribe to it or read it: `rooms` or `watch`.
    Read,
}

/// Refuses a room the connection's token does not open. Without
/// authentication every room is open.
fn check_access(conn: &Connection, room: &str, access: Access) -> Result<(), ErrorPayload> {
    let Some(claims) = &conn.claims else {
        return Ok(());
    };
    let allowed = match access {
        Access::Join => claims.may_join(room),
        Access::Read => claims.may_read(room),
    };
    if allowed {
        Ok(())
    } else {
        let what = match access {
            Access::Join => "join",
            Access::Read => "read",
        };
        Err(forbidden(format!(
            "your token does not let you {what} room {room:?}"
        )))
    }
}

fn server_error(e: ServerError) -> ErrorPayload {
    tracing::warn!(error = %e, "command failed");
    ErrorPayload::new(ErrorCode::Server, e.to_string())
}

fn backend_error(e: BackendError) -> ErrorPayload {
    server_error(ServerError::Backend(e))
}

fn check_size(value: &Value, max: usize, what: &str) -> Result<(), ErrorPayload> {
    let len = crate::backend::json_len(value);
    if len > max {
        return Err(ErrorPayload::new(
            ErrorCode::TooLarge,
            format!("{what} is {len} bytes; the limit is {max}"),
        ));
    }
    Ok(())
}

/// Asks a tracked room's guard, if it has one.
async fn guard_allows(
    conn: &Connection,
    room: &str,
    track: &TrackOptions,
) -> Result<bool, ErrorPayload> {
    let Some(guard) = &track.guard else {
        return Ok(true);
    };
    let metadata = conn
        .server
        .get_metadata(&conn.id)
        .await
        .map_err(server_error)?
        .unwrap_or(Value::Null);
    Ok(guard
        .allows(GuardRequest {
            connection_id: conn.id.clone(),
            room_name: room.to_string(),
            metadata,
        })
        .await)
}

async fn join_room(conn: &mut Connection, room: String) -> Result<Payload, ErrorPayload> {
    check_access(conn, &room, Access::Join)?;
    let shared = conn.server.shared.clone();
    if !conn.rooms.contains_key(&room) {
        let max = shared.config.limits.max_rooms_per_connection;
        if conn.rooms.len() >= max {
            return Err(ErrorPayload::new(
                ErrorCode::TooLarge,
                format!("a connection may be in at most {max} rooms"),
            ));
        }
        let backend = &shared.backend;
        let max = shared.config.limits.max_room_members;
        if backend.room_size(&room).await.map_err(backend_error)? >= max {
            return Err(room_full(max));
        }
        let joined = backend
            .join_room(&room, &conn.id)
            .await
            .map_err(backend_error)?;
        // Joins racing for the last places (from several instances) may
        // all pass the check above; the ones past the limit back out.
        if joined && backend.room_size(&room).await.map_err(backend_error)? > max {
            backend
                .leave_room(&room, &conn.id)
                .await
                .map_err(backend_error)?;
            return Err(room_full(max));
        }
        conn.rooms
            .insert(room.clone(), shared.tracker.lookup(&room));
        conn.server
            .interest_gained(&room)
            .await
            .map_err(server_error)?;
    }
    // Marking presence again on a repeated join restores a presence whose
    // TTL lapsed (a stalled client rejoining) and refreshes it otherwise.
    if let Some(track) = joined_tracked(conn, &room) {
        let joined = shared
            .backend
            .mark_present(&room, &conn.id, track.ttl)
            .await
            .map_err(backend_error)?;
        if joined {
            conn.server
                .publish(PresenceUpdate::Join {
                    connection_id: conn.id.clone(),
                    room_name: room.clone(),
                    timestamp: now_millis(),
                })
                .await
                .map_err(server_error)?;
        }
    }
    let present = shared
        .backend
        .members_snapshot(&room)
        .await
        .map_err(backend_error)?;
    Ok(Payload::Shared(vec![
        Bytes::from_static(br#"{"success":true,"present":"#),
        present,
        Bytes::from_static(b"}"),
    ]))
}

fn room_full(max: usize) -> ErrorPayload {
    ErrorPayload::new(
        ErrorCode::TooLarge,
        format!("the room is full: a room may have at most {max} members"),
    )
}

async fn leave_room(conn: &mut Connection, room: String) -> Reply {
    let Some(track) = conn.rooms.remove(&room) else {
        return Ok(json!({ "success": false }));
    };
    leave(&conn.server, &conn.id, &room, track.is_some())
        .await
        .map_err(server_error)?;
    Ok(json!({ "success": true }))
}

/// Takes `conn` (a local connection) out of `room`; in a tracked room also
/// removes its presence and state and announces the `leave`.
pub(crate) async fn leave(
    server: &ServerHandle,
    conn: &str,
    room: &str,
    tracked: bool,
) -> Result<(), ServerError> {
    let backend = &server.shared.backend;
    server.interest_lost(room);
    backend.leave_room(room, conn).await?;
    if tracked && backend.mark_absent(room, conn).await? {
        server
            .publish(PresenceUpdate::Leave {
                connection_id: conn.to_string(),
                room_name: room.to_string(),
                timestamp: now_millis(),
            })
            .await?;
    }
    Ok(())
}

fn refused() -> Value {
    json!({ "success": false, "present": [] })
}

async fn subscribe_presence(conn: &mut Connection, room: String) -> Result<Payload, ErrorPayload> {
    check_access(conn, &room, Access::Read)?;
    let shared = conn.server.shared.clone();
    let Some(track) = shared.tracker.lookup(&room) else {
        return Ok(Payload::Value(refused()));
    };
    if !guard_allows(conn, &room, &track).await? {
        return Ok(Payload::Value(refused()));
    }
    if !conn.subscriptions.contains(&room) {
        let max = shared.config.limits.max_rooms_per_connection;
        if conn.subscriptions.len() >= max {
            return Err(ErrorPayload::new(
                ErrorCode::TooLarge,
                format!("a connection may subscribe to at most {max} rooms"),
            ));
        }
        // Subscribe before taking the snapshot: an update racing with it is
        // then delivered, never lost.
        shared.subscribers.add(&room, &conn.id, conn.outbox.clone());
        conn.subscriptions.insert(room.clone());
        // And make sure the backend delivers the room here before the
        // snapshot is read.
        conn.server
            .interest_gained(&room)
            .await
            .map_err(server_error)?;
    }
    let backend = &shared.backend;
    let present = backend
        .present_snapshot(&room)
        .await
        .map_err(backend_error)?;
    let states = backend
        .states_snapshot(&room)
        .await
        .map_err(backend_error)?;
    Ok(Payload::Shared(vec![
        Bytes::from_static(br#"{"success":true,"present":"#),
        present,
        Bytes::from_static(br#","states":"#),
        states,
        Bytes::from_static(b"}"),
    ]))
}

fn unsubscribe_presence(conn: &mut Connection, room: String) -> Reply {
    let was = conn.subscriptions.remove(&room);
    if was {
        conn.server.shared.subscribers.remove(&room, &conn.id);
        conn.server.interest_lost(&room);
    }
    Ok(json!(was))
}

/// The tracking options of a room `conn` has joined, if it is tracked.
fn joined_tracked(conn: &Connection, room: &str) -> Option<Arc<TrackOptions>> {
    conn.rooms.get(room).cloned().flatten()
}

async fn publish_presence_state(conn: &mut Connection, req: PublishPresenceState) -> Reply {
    check_room(&req.room_name)?;
    let state = match req.state {
        None | Some(Value::Null) => return Ok(json!(false)),
        Some(state @ Value::Object(_)) => state,
        Some(_) => {
            return Err(ErrorPayload::new(
                ErrorCode::Invalid,
                "state must be a JSON object",
            ))
        }
    };
    let max = conn.server.shared.config.limits.max_state_bytes;
    check_size(&state, max, "state")?;
    check_access(conn, &req.room_name, Access::Join)?;
    if let Some(claims) = &conn.claims {
        // Clients that group people by the state's `userId` must not be
        // fooled by someone else's connection.
        if state
            .get("userId")
            .is_some_and(|id| id.as_str() != Some(&claims.sub))
        {
            return Err(forbidden("the state's userId is not your token's sub"));
        }
    }
    let Some(track) = joined_tracked(conn, &req.room_name) else {
        return Ok(json!(false));
    };
    if !guard_allows(conn, &req.room_name, &track).await? {
        return Ok(json!(false));
    }
    let expire_after = req
        .expire_after
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    let silent = req.silent.unwrap_or(false);
    let update = (!silent).then(|| PresenceUpdate::State {
        connection_id: conn.id.clone(),
        room_name: req.room_name.clone(),
        state: Some(state.clone()),
        timestamp: now_millis(),
    });
    let stored = conn
        .server
        .shared
        .backend
        .set_state(&req.room_name, &conn.id, state, expire_after)
        .await
        .map_err(backend_error)?;
    if !stored {
        return Ok(json!(false));
    }
    if let Some(update) = update {
        conn.server.publish(update).await.map_err(server_error)?;
    }
    Ok(json!(true))
}

async fn clear_presence_state(conn: &mut Connection, room: String) -> Reply {
    if joined_tracked(conn, &room).is_none() {
        return Ok(json!(false));
    }
    let cleared = conn
        .server
        .shared
        .backend
        .clear_state(&room, &conn.id)
        .await
        .map_err(backend_error)?;
    if cleared {
        conn.server
            .publish(PresenceUpdate::State {
                connection_id: conn.id.clone(),
                room_name: room,
                state: None,
                timestamp: now_millis(),
            })
            .await
            .map_err(server_error)?;
    }
    Ok(json!(cleared))
}

async fn get_presence_state(conn: &mut Connection, room: String) -> Reply {
    check_access(conn, &room, Access::Read)?;
    let shared = conn.server.shared.clone();
    let allowed = match shared.tracker.lookup(&room) {
        Some(track) => guard_allows(conn, &room, &track).await?,
        None => false,
    };
    if !allowed {
        return Ok(json!({ "success": false, "present": [], "states": {} }));
    }
    let present = shared.backend.present(&room).await.map_err(backend_error)?;
    let states = shared.backend.states(&room).await.map_err(backend_error)?;
    Ok(json!({ "success": true, "present": present, "states": states }))
}

/// Whether `conn` may read `target`'s metadata: its own, or a connection
/// in a room `conn` has joined or subscribes to (unless metadata is open).
async fn may_see(conn: &Connection, target: &str) -> Result<bool, ErrorPayload> {
    if target == conn.id || conn.server.shared.config.open_metadata {
        return Ok(true);
    }
    let rooms = conn
        .server
        .shared
        .backend
        .connection_rooms(target)
        .await
        .map_err(backend_error)?;
    Ok(rooms.iter().any(|room| {
        (conn.rooms.contains_key(room) || conn.subscriptions.contains(room))
            && check_access(conn, room, Access::Read).is_ok()
    }))
}

async fn get_connection_metadata(conn: &mut Connection, req: ConnectionMetadataRequest) -> Reply {
    if !may_see(conn, &req.connection_id).await? {
        return Ok(json!({ "metadata": null }));
    }
    let metadata = conn
        .server
        .get_metadata(&req.connection_id)
        .await
        .map_err(server_error)?;
    Ok(json!({ "metadata": metadata }))
}

async fn set_my_metadata(conn: &mut Connection, req: SetMetadataRequest) -> Reply {
    let max = conn.server.shared.config.limits.max_state_bytes;
    check_size(&req.metadata, max, "metadata")?;
    let strategy = req.strategy();
    let mut metadata = req.metadata;
    if conn.claims.is_some() {
        let current = conn
            .server
            .get_metadata(&conn.id)
            .await
            .map_err(server_error)?;
        keep_identity(&mut metadata, strategy, current.as_ref())?;
    }
    // The limit is on what is stored: merges must not add up past it.
    let stored = conn
        .server
        .shared
        .backend
        .set_metadata(&conn.id, metadata, strategy, Some(max))
        .await;
    match stored {
        Ok(_) => Ok(json!({ "success": true })),
        Err(BackendError::TooLarge { len, max }) => Err(ErrorPayload::new(
            ErrorCode::TooLarge,
            format!("metadata would be {len} bytes; the limit is {max}"),
        )),
        Err(e) => Err(backend_error(e)),
    }
}

/// Makes a metadata write keep the server's identity fields: it may repeat
/// them unchanged but not change, add or drop one. A `replace` gets them
/// put back.
fn keep_identity(
    metadata: &mut Value,
    strategy: Strategy,
    current: Option<&Value>,
) -> Result<(), ErrorPayload> {
    let Value::Object(new) = metadata else {
        return Err(forbidden(
            "metadata must be an object that keeps your verified identity",
        ));
    };
    for field in IDENTITY_FIELDS {
        let attested = current.and_then(|c| c.get(field));
        if let Some(value) = new.get(field) {
            if Some(value) != attested {
                return Err(forbidden(format!(
                    "{field} is set by your token and cannot be changed"
                )));
            }
        } else if let (Strategy::Replace, Some(value)) = (strategy, attested) {
            new.insert(field.to_string(), value.clone());
        }
    }
    Ok(())
}

/// `mesh/refresh-token`: a newer token for the same user pushes back the
/// connection's expiry and updates its attested identity.
async fn refresh_token(conn: &mut Connection, req: RefreshTokenRequest) -> Reply {
    let Some(auth) = conn.server.shared.config.auth.clone() else {
        return Err(ErrorPayload::new(
            ErrorCode::Invalid,
            "this server does not use tokens",
        ));
    };
    let claims = auth
        .verify(&req.token)
        .map_err(|e| forbidden(e.to_string()))?;
    if conn.claims.as_ref().is_some_and(|c| c.sub != claims.sub) {
        return Err(forbidden("the new token is for another user"));
    }
    let mut metadata = match conn
        .server
        .get_metadata(&conn.id)
        .await
        .map_err(server_error)?
    {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    for field in IDENTITY_FIELDS {
        metadata.remove(field);
    }
    if let Value::Object(attested) = claims.metadata() {
        metadata.extend(attested);
    }
    conn.server
        .set_metadata(&conn.id, Value::Object(metadata), Strategy::Replace)
        .await
        .map_err(server_error)?;
    conn.token_expires = Some(tokio::time::Instant::now() + claims.time_left());
    let expires_at = claims.exp.saturating_mul(1000);
    conn.claims = Some(Arc::new(claims));
    // A narrower token takes effect now, not at the next join.
    let closed: Vec<String> = conn
        .rooms
        .keys()
        .filter(|room| check_access(conn, room, Access::Join).is_err())
        .cloned()
        .collect();
    for room in closed {
        leave_room(conn, room).await?;
    }
    let unwatched: Vec<String> = conn
        .subscriptions
        .iter()
        .filter(|room| check_access(conn, room, Access::Read).is_err())
        .cloned()
        .collect();
    for room in unwatched {
        unsubscribe_presence(conn, room)?;
    }
    Ok(json!({ "success": true, "expiresAt": expires_at }))
}

/// The payload of `mesh/refresh-token`.
#[derive(Debug, serde::Deserialize)]
struct RefreshTokenRequest {
    token: String,
}
