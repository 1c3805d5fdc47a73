//! Connection status, lifecycle events, and per-room presence streams.

use mesh_protocol::PresenceUpdate;
use serde_json::{Map, Value};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Where the connection stands, as a `tokio::sync::watch` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Opening the first connection.
    Connecting,
    /// Connected, with a connection id.
    Online,
    /// The link was lost; reconnect attempt `attempt` (1-based) is under way.
    Reconnecting {
        /// Which attempt this is.
        attempt: u32,
    },
    /// Closed, or reconnecting is disabled or gave up.
    Offline,
}

/// Something that happened to the connection, as a `tokio::sync::broadcast`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The first connection is up, with this id.
    Connected {
        /// The connection id.
        id: String,
    },
    /// The link was lost (closed, errored, or no ping in time).
    Disconnected,
    /// A new connection is up and rooms, presence subscriptions and
    /// snapshots are restored. Sent after every `PresenceEvent::Resync`.
    Reconnected {
        /// The new connection id.
        id: String,
    },
    /// Reconnecting gave up after the configured number of attempts.
    ReconnectFailed,
    /// A reconnect was refused with `401` (the token expired or was
    /// revoked). Retrying cannot help: `ReconnectFailed` follows and the
    /// client stays offline.
    Unauthorized,
    /// The server measured this round trip, in milliseconds.
    Latency(u64),
}

/// What a [`PresenceStream`] delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceEvent {
    /// A join, leave or state change, in the order the server sent them.
    Update(PresenceUpdate),
    /// After a reconnect: the room's presence as it is now. Whatever the
    /// consumer built before is stale (the old connection ids are gone);
    /// rebuild from this snapshot.
    Resync {
        /// The room.
        room: String,
        /// Connection ids present.
        present: Vec<String>,
        /// States by connection id.
        states: Map<String, Value>,
    },
}

/// The presence updates of one room, in order.
///
/// The stream is unbounded so that the connection task never waits on (or
/// drops updates for) a slow reader; read it promptly, or drop it to stop
/// the routing.
///
/// The stream ends (`recv` returns `None`) when the subscription ends:
/// `unsubscribe_presence`, a newer `subscribe_presence` for the same room,
/// a server refusing the resubscription after a reconnect, or the client
/// closing or giving up.
#[derive(Debug)]
pub struct PresenceStream {
    room: String,
    rx: mpsc::UnboundedReceiver<PresenceEvent>,
}

impl PresenceStream {
    pub(crate) fn new(room: String, rx: mpsc::UnboundedReceiver<PresenceEvent>) -> Self {
        PresenceStream { room, rx }
    }

    /// The room this stream belongs to.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The next event, or `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<PresenceEvent> {
        self.rx.recv().await
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<PresenceEvent> {
        self.rx.try_recv().ok()
    }
}

impl futures_util::Stream for PresenceStream {
    type Item = PresenceEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
