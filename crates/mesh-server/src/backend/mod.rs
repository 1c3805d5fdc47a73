//! Where rooms, presence, states and metadata live, and how presence updates
//! reach every server instance.
//!
//! The server core never keeps shared state of its own: it asks a
//! [`Backend`]. A backend may be shared by several server instances (the
//! Redis backend is), so the trait assumes nothing about where a connection
//! lives. Connections are named by opaque ids that are unique across
//! instances, and presence updates go *through* the backend: an instance
//! calls [`Backend::publish`], and the backend hands the update to the
//! [`UpdateSink`] of every attached instance, which delivers it to its own
//! local subscribers.
//!
//! Expiry (presence TTL and state `expireAfter`) is the backend's job too,
//! because only the backend can make sure an expiry is announced exactly
//! once across the cluster.

pub mod memory;
pub mod redis;

pub use self::redis::{RedisBackend, RedisConfig};
pub use memory::MemoryBackend;

use async_trait::async_trait;
use bytes::Bytes;
use mesh_protocol::{PresenceUpdate, Strategy};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// A failed backend operation.
#[derive(Debug, Clone, Error)]
pub enum BackendError {
    /// The backend cannot be reached (network, server down).
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The result of a write would be larger than the caller allows;
    /// nothing was changed.
    #[error("the result would be {len} bytes; the limit is {max}")]
    TooLarge {
        /// Size of the result's JSON encoding.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Any other failure, described.
    #[error("backend error: {0}")]
    Other(String),
}

/// Size of a value's JSON encoding, without building the string.
pub(crate) fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// `Err(TooLarge)` when `len` is over `max` (no limit when `None`).
pub(crate) fn check_len(len: usize, max: Option<usize>) -> BackendResult<()> {
    match max {
        Some(max) if len > max => Err(BackendError::TooLarge { len, max }),
        _ => Ok(()),
    }
}

/// Result of a backend operation.
pub type BackendResult<T> = Result<T, BackendError>;

/// What a backend counts about itself, read by `GET /metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Presence updates received from other instances.
    pub messages_received: u64,
    /// Operations that failed (each failed request to a remote store).
    pub errors: u64,
}

/// Receives the presence updates a backend fans out to one server instance.
///
/// `deliver` runs on the backend's task and must not block: the server's
/// sink encodes the update once and queues the bytes to each local
/// subscriber.
pub trait UpdateSink: Send + Sync + 'static {
    /// Hands one update to the instance.
    fn deliver(&self, update: &PresenceUpdate);
}

/// Storage and fan-out for rooms, presence, states and metadata.
///
/// Semantics every implementation follows (the memory backend is the
/// reference):
///
/// * Room membership and presence are separate: a connection joins a room,
///   and in a tracked room it is also marked present. Presence may carry a
///   TTL; when it lapses the backend removes the presence and the state and
///   publishes a `leave`, once.
/// * A state may carry an expiry; when it lapses the backend removes it and
///   publishes a `state` update with `state: null`, once. Replacing or
///   clearing a state cancels its expiry.
/// * Metadata of a connection and of a room are JSON values combined with a
///   [`Strategy`].
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Registers an instance: every update published from now on, by any
    /// instance, reaches `sink`.
    async fn attach(&self, sink: Arc<dyn UpdateSink>) -> BackendResult<()>;

    /// A connection of this instance opened (before anything else is
    /// stored for it). A shared backend records which instance owns it, so
    /// that a surviving instance can remove it should this one crash.
    async fn connection_opened(&self, conn: &str) -> BackendResult<()> {
        let _ = conn;
        Ok(())
    }

    /// This instance gained a local member or subscriber in `room`. A
    /// backend that routes updates by interest starts delivering the room's
    /// updates to the attached sinks (if it was not already) and returns
    /// once they flow, so that a snapshot read afterwards misses nothing.
    /// Every call is paired with one [`Backend::unwatch_room`].
    async fn watch_room(&self, room: &str) -> BackendResult<()> {
        let _ = room;
        Ok(())
    }

    /// This instance lost a local member or subscriber in `room`; when it
    /// was the last one, the room's updates may stop reaching this
    /// instance.
    fn unwatch_room(&self, room: &str) {
        let _ = room;
    }

    /// Sends an update to every attached instance.
    async fn publish(&self, update: PresenceUpdate) -> BackendResult<()>;

    /// Adds `conn` to `room`; `true` if it was not a member before.
    async fn join_room(&self, room: &str, conn: &str) -> BackendResult<bool>;

    /// Removes `conn` from `room`; `true` if it was a member.
    async fn leave_room(&self, room: &str, conn: &str) -> BackendResult<bool>;

    /// Every member of `room`.
    async fn room_members(&self, room: &str) -> BackendResult<Vec<String>>;

    /// How many members `room` has.
    async fn room_size(&self, room: &str) -> BackendResult<usize> {
        Ok(self.room_members(room).await?.len())
    }

    /// The members of `room` with their metadata, encoded as the `present`
    /// list of a `mesh/join-room` reply (`[{"id", "metadata"}]`). A backend
    /// that can tell when a room changes builds it once per change and
    /// hands every asker the same bytes.
    async fn members_snapshot(&self, room: &str) -> BackendResult<Bytes> {
        let ids = self.room_members(room).await?;
        with_metadata_encoded(self, &ids).await
    }
    /// The present connections of `room` with their metadata, encoded as
    /// the `present` list of a `mesh/subscribe-presence` reply; shared like
    /// [`Backend::members_snapshot`].
    async fn present_snapshot(&self, room: &str) -> BackendResult<Bytes> {
        let ids = self.present(room).await?;
        with_metadata_encoded(self, &ids).await
    }

    /// Every state of `room`, encoded as the `states` object of a
    /// `mesh/subscribe-presence` reply; shared like
    /// [`Backend::members_snapshot`].
    async fn states_snapshot(&self, room: &str) -> BackendResult<Bytes> {
        let states = self.states(room).await?;
        Ok(Bytes::from(serde_json::to_vec(&states).unwrap_or_default()))
    }

    /// Every room `conn` is a member of.
    async fn connection_rooms(&self, conn: &str) -> BackendResult<Vec<String>>;

    /// Marks `conn` present in `room`, with an optional TTL; `true` if it
    /// was not present before.
    async fn mark_present(
        &self,
        room: &str,
        conn: &str,
        ttl: Option<Duration>,
    ) -> BackendResult<bool>;

    /// Pushes back the TTL of a present connection; `false` if it is no
    /// longer present (its TTL lapsed already).
    async fn refresh_presence(&self, room: &str, conn: &str, ttl: Duration) -> BackendResult<bool>;

    /// Removes `conn`'s presence and state from `room`; `true` if it was
    /// present. The caller publishes the `leave`.
    async fn mark_absent(&self, room: &str, conn: &str) -> BackendResult<bool>;

    /// The connections present in `room`.
    async fn present(&self, room: &str) -> BackendResult<Vec<String>>;

    /// Stores `conn`'s state in `room`, replacing any earlier state and its
    /// expiry. `false` (and nothing stored) when `conn` is not present.
    async fn set_state(
        &self,
        room: &str,
        conn: &str,
        state: Value,
        expire_after: Option<Duration>,
    ) -> BackendResult<bool>;

    /// Deletes `conn`'s state in `room`; `true` if there was one.
    async fn clear_state(&self, room: &str, conn: &str) -> BackendResult<bool>;

    /// Every state in `room`, by connection id.
    async fn states(&self, room: &str) -> BackendResult<Map<String, Value>>;

    /// Combines `value` with `conn`'s metadata; returns the stored result.
    /// When the result's JSON would be over `max_bytes`, nothing is stored
    /// and the error is [`BackendError::TooLarge`]: the limit holds for
    /// what is stored, whatever the strategy.
    async fn set_metadata(
        &self,
        conn: &str,
        value: Value,
        strategy: Strategy,
        max_bytes: Option<usize>,
    ) -> BackendResult<Value>;

    /// `conn`'s metadata, `None` when it has none.
    async fn get_metadata(&self, conn: &str) -> BackendResult<Option<Value>>;

    /// The metadata of several connections at once, in order.
    async fn get_metadata_many(&self, conns: &[String]) -> BackendResult<Vec<Option<Value>>> {
        let mut out = Vec::with_capacity(conns.len());
        for conn in conns {
            out.push(self.get_metadata(conn).await?);
        }
        Ok(out)
    }

    /// Deletes `conn`'s metadata (the connection closed).
    async fn remove_metadata(&self, conn: &str) -> BackendResult<()>;

    /// Combines `value` with `room`'s metadata; returns the stored result.
    async fn set_room_metadata(
        &self,
        room: &str,
        value: Value,
        strategy: Strategy,
    ) -> BackendResult<Value>;

    /// `room`'s metadata, `None` when it has none.
    async fn get_room_metadata(&self, room: &str) -> BackendResult<Option<Value>>;

    /// The backend's own counters; zero for a backend that keeps none.
    fn stats(&self) -> BackendStats {
        BackendStats::default()
    }
}

/// `ids` with their metadata, encoded by [`encode_members`].
async fn with_metadata_encoded<B: Backend + ?Sized>(
    backend: &B,
    ids: &[String],
) -> BackendResult<Bytes> {
    let metadata = backend.get_metadata_many(ids).await?;
    Ok(encode_members(
        ids.iter()
            .map(String::as_str)
            .zip(metadata.iter().map(Option::as_ref)),
    ))
}

/// Encodes `[{"id", "metadata"}]`; a connection without metadata has
/// `null`.
pub(crate) fn encode_members<'a>(
    members: impl Iterator<Item = (&'a str, Option<&'a Value>)>,
) -> Bytes {
    #[derive(serde::Serialize)]
    struct Member<'a> {
        id: &'a str,
        metadata: &'a Value,
    }
    let mut out = Vec::with_capacity(64);
    out.push(b'[');
    for (i, (id, metadata)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let member = Member {
            id,
            metadata: metadata.unwrap_or(&Value::Null),
        };
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &member);
    }
    out.push(b']');
    Bytes::from(out)
}
