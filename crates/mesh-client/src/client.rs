//! [`MeshClient`]: the cheap, cloneable handle applications use.

use crate::connection::{self, lock, Command, Connection, Lookup, Shared};
use crate::error::ClientError;
use crate::events::{ClientEvent, PresenceStream, Status};
use crate::metadata_cache::MetadataCache;
use crate::options::{ClientOptions, Token};
use crate::requests::{Effect, Outgoing};
use futures_util::future::{join_all, FutureExt};
use mesh_protocol::command;
use mesh_protocol::payload::{
    ConnectionMetadataRequest, JoinRoomReply, MetadataReply, PresenceStateReply,
    PublishPresenceState, SetMetadataOptions, SetMetadataRequest, SubscribePresenceReply,
    SuccessReply,
};
use mesh_protocol::Strategy;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Commands waiting for the connection task; senders wait when it is full,
/// which slows down a caller that outruns the socket.
const COMMAND_BUFFER: usize = 1024;
/// Lifecycle events kept for slow event receivers.
const EVENT_BUFFER: usize = 256;

/// A connection to a Mesh server that survives dropped links.
///
/// Cloning is cheap; all clones share one connection. The connection closes
/// when [`MeshClient::close`] is called or the last clone is dropped.
#[derive(Clone, Debug)]
pub struct MeshClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    status: watch::Receiver<Status>,
    events: broadcast::Sender<ClientEvent>,
    options: ClientOptions,
}

impl MeshClient {
    /// Connects to `url` (`ws://` or `wss://`) and resolves once the server
    /// has assigned a connection id.
    pub async fn connect(url: &str, options: ClientOptions) -> Result<MeshClient, ClientError> {
        let (ws, id) = connection::open(url, &options).await?;
        let (commands, commands_rx) = mpsc::channel(COMMAND_BUFFER);
        let (status_tx, status) = watch::channel(Status::Online);
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            connection_id: Mutex::new(Some(id.clone())),
            metadata: Mutex::new(MetadataCache::new(options.metadata_cache_capacity)),
        });
        let task = Connection::new(
            url.to_string(),
            options.clone(),
            commands_rx,
            status_tx,
            events.clone(),
            shared.clone(),
        );
        tokio::spawn(task.run(ws));
        // Nobody can be subscribed yet; sent for symmetry with reconnects.
        let _ = events.send(ClientEvent::Connected { id });
        Ok(MeshClient {
            inner: Arc::new(Inner {
                commands,
                shared,
                status,
                events,
                options,
            }),
        })
    }

    /// The current connection id; it changes on every reconnect and is
    /// `None` while disconnected.
    pub fn connection_id(&self) -> Option<String> {
        lock(&self.inner.shared.connection_id).clone()
    }

    /// The connection status, as a watch.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.inner.status.clone()
    }

    /// Lifecycle events from now on.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.events.subscribe()
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Sends any command and returns its reply payload. An error payload
    /// becomes [`ClientError::Server`]; no reply within the request timeout
    /// becomes [`ClientError::Timeout`]. While reconnecting, the request
    /// waits in a queue and is sent once the session is restored.
    pub async fn request(&self, command: &str, payload: Value) -> Result<Value, ClientError> {
        self.call(command, payload, Effect::None).await
    }

    /// Like [`MeshClient::request`], with its own timeout instead of the
    /// client's `request_timeout`.
    pub async fn request_with_timeout(
        &self,
        command: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.call_within(command, payload, Effect::None, timeout)
            .await
    }

    async fn call(
        &self,
        command: &str,
        payload: Value,
        effect: Effect,
    ) -> Result<Value, ClientError> {
        let timeout = self.inner.options.request_timeout;
        self.call_within(command, payload, effect, timeout).await
    }

    async fn call_within(
        &self,
        command: &str,
        payload: Value,
        effect: Effect,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let (reply, rx) = oneshot::channel();
        let out = Outgoing {
            command: command.to_string(),
            payload,
            effect,
            reply,
        };
        let exchange = async {
            self.inner
                .commands
                .send(Command::Request(out))
                .await
                .map_err(|_| ClientError::Closed)?;
            // A dropped reply sender means the task ended without answering.
            rx.await.map_err(|_| ClientError::Closed)?
        };
        // Dropping `rx` on timeout tells the task the caller gave up, so a
        // queued request is not sent late and a pending one is swept.
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn call_typed<T: DeserializeOwned>(
        &self,
        command: &str,
        payload: Value,
        effect: Effect,
    ) -> Result<T, ClientError> {
        let reply = self.call(command, payload, effect).await?;
        parse_reply(command, reply)
    }

    /// Joins `room`; it is rejoined after every reconnect.
    pub async fn join_room(&self, room: &str) -> Result<JoinRoomReply, ClientError> {
        let effect = Effect::Join(room.to_string());
        self.call_typed(command::JOIN_ROOM, room_payload(room), effect)
            .await
    }

    /// Leaves `room`. Also drops the metadata cache.
    pub async fn leave_room(&self, room: &str) -> Result<bool, ClientError> {
        let effect = Effect::Leave(room.to_string());
        let reply: SuccessReply = self
            .call_typed(command::LEAVE_ROOM, room_payload(room), effect)
            .await?;
        Ok(reply.success)
    }

    /// Subscribes to the presence of `room`: the snapshot (members with
    /// metadata, states) and a stream of the updates that follow. The
    /// subscription is renewed after every reconnect, and the stream then
    /// gets a [`crate::PresenceEvent::Resync`]. When the server refuses
    /// (`success: false`), the stream is already ended.
    pub async fn subscribe_presence(
        &self,
        room: &str,
    ) -> Result<(SubscribePresenceReply, PresenceStream), ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let effect = Effect::Subscribe(room.to_string(), tx);
        let reply = self
            .call_typed(command::SUBSCRIBE_PRESENCE, room_payload(room), effect)
            .await?;
        Ok((reply, PresenceStream::new(room.to_string(), rx)))
    }

    /// Stops the presence updates of `room`; its stream ends.
    pub async fn unsubscribe_presence(&self, room: &str) -> Result<bool, ClientError> {
        let effect = Effect::Unsubscribe(room.to_string());
        self.call_typed(command::UNSUBSCRIBE_PRESENCE, room_payload(room), effect)
            .await
    }

    /// Publishes this connection's presence state in `room` (which it must
    /// have joined). `expire_after` clears it after that many milliseconds;
    /// `silent` stores it without notifying subscribers.
    pub async fn publish_presence_state(
        &self,
        room: &str,
        state: Value,
        expire_after: Option<u64>,
        silent: bool,
    ) -> Result<bool, ClientError> {
        let payload = PublishPresenceState {
            room_name: room.to_string(),
            state: Some(state),
            expire_after,
            silent: silent.then_some(true),
        };
        self.call_typed(
            command::PUBLISH_PRESENCE_STATE,
            to_payload(&payload)?,
            Effect::None,
        )
        .await
    }

    /// Clears this connection's presence state in `room`.
    pub async fn clear_presence_state(&self, room: &str) -> Result<bool, ClientError> {
        self.call_typed(
            command::CLEAR_PRESENCE_STATE,
            room_payload(room),
            Effect::None,
        )
        .await
    }

    /// A snapshot of `room`'s presence: connection ids and states.
    pub async fn get_presence_state(&self, room: &str) -> Result<PresenceStateReply, ClientError> {
        self.call_typed(
            command::GET_PRESENCE_STATE,
            room_payload(room),
            Effect::None,
        )
        .await
    }

    /// Another connection's metadata (`Value::Null` when it has none).
    ///
    /// Answers are cached (bounded; dropped on leave and on reconnect), and
    /// concurrent lookups of one id share a single request.
    pub async fn get_connection_metadata(&self, id: &str) -> Result<Value, ClientError> {
        let lookup = {
            let mut cache = lock(&self.inner.shared.metadata);
            if let Some(value) = cache.get(id) {
                return Ok(value);
            }
            match cache.inflight(id) {
                Some(lookup) => lookup,
                None => {
                    let lookup = self.start_lookup(id, cache.generation());
                    cache.start(id, lookup.clone());
                    lookup
                }
            }
        };
        lookup.await
    }

    /// Starts a metadata lookup in its own task, so that it completes (and
    /// fills the cache) even if the caller that started it is cancelled.
    fn start_lookup(&self, id: &str, generation: u64) -> Lookup {
        let client = self.clone();
        let id = id.to_string();
        let task = tokio::spawn(async move {
            let payload = to_payload(&ConnectionMetadataRequest {
                connection_id: id.clone(),
            });
            let result = match payload {
                Ok(payload) => client
                    .call_typed::<MetadataReply>(
                        command::GET_CONNECTION_METADATA,
                        payload,
                        Effect::None,
                    )
                    .await
                    .map(|r| r.metadata),
                Err(e) => Err(e),
            };
            lock(&client.inner.shared.metadata).finish(generation, &id, result.as_ref().ok());
            result
        });
        async move { task.await.unwrap_or(Err(ClientError::Closed)) }
            .boxed()
            .shared()
    }

    /// The metadata of many connections at once, looked up concurrently.
    /// Fails with the first error if any lookup fails.
    pub async fn get_connection_metadata_many(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Value>, ClientError> {
        let mut unique: Vec<&String> = ids.iter().collect();
        unique.sort();
        unique.dedup();
        let lookups = unique.iter().map(|id| self.get_connection_metadata(id));
        let values = join_all(lookups).await;
        unique
            .into_iter()
            .zip(values)
            .map(|(id, value)| value.map(|v| (id.clone(), v)))
            .collect()
    }

    /// This connection's metadata (`Value::Null` when none).
    pub async fn get_my_connection_metadata(&self) -> Result<Value, ClientError> {
        let reply: MetadataReply = self
            .call_typed(command::GET_MY_CONNECTION_METADATA, json!({}), Effect::None)
            .await?;
        Ok(reply.metadata)
    }

    /// Sets this connection's metadata, combined with what is stored
    /// according to `strategy`.
    pub async fn set_my_connection_metadata(
        &self,
        metadata: Value,
        strategy: Strategy,
    ) -> Result<bool, ClientError> {
        let payload = SetMetadataRequest {
            metadata,
            options: Some(SetMetadataOptions { strategy }),
        };
        let reply: SuccessReply = self
            .call_typed(
                command::SET_MY_CONNECTION_METADATA,
                to_payload(&payload)?,
                Effect::SetMetadata,
            )
            .await?;
        Ok(reply.success)
    }

    /// Replaces the connection's token with a newer one for the same user
    /// (`mesh/refresh-token`) before the current one expires; the server
    /// would otherwise close the connection at expiry. Reconnects use the
    /// new token from then on. Returns the new expiry, in milliseconds
    /// since the Unix epoch.
    pub async fn refresh_token(&self, token: Token) -> Result<u64, ClientError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Refreshed {
            expires_at: u64,
        }
        let payload = json!({ "token": token.expose() });
        let reply: Refreshed = self
            .call_typed(command::REFRESH_TOKEN, payload, Effect::Token(token))
            .await?;
        Ok(reply.expires_at)
    }

    /// A room's metadata (`Value::Null` when none).
    pub async fn get_room_metadata(&self, room: &str) -> Result<Value, ClientError> {
        let reply: MetadataReply = self
            .call_typed(command::GET_ROOM_METADATA, room_payload(room), Effect::None)
            .await?;
        Ok(reply.metadata)
    }

    /// Closes the connection for every clone: pending requests fail with
    /// [`ClientError::Closed`], presence streams end, the status becomes
    /// `Offline`. Returns once the socket is closed.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.inner.commands.send(Command::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

fn room_payload(room: &str) -> Value {
    json!({ "roomName": room })
}

fn to_payload<T: serde::Serialize>(payload: &T) -> Result<Value, ClientError> {
    serde_json::to_value(payload).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Reads a reply payload as the type the command promises.
fn parse_reply<T: DeserializeOwned>(command: &str, reply: Value) -> Result<T, ClientError> {
    serde_json::from_value(reply.clone())
        .map_err(|e| ClientError::Protocol(format!("unexpected reply to {command}: {reply} ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_of_the_wrong_shape_are_protocol_errors() {
        let err = parse_reply::<bool>("mesh/unsubscribe-presence", json!({"x": 1})).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(ref m) if m.contains("unsubscribe")));
        let ok: JoinRoomReply =
            parse_reply("mesh/join-room", json!({"success": true, "present": []})).unwrap();
        assert!(ok.success);
    }
}
