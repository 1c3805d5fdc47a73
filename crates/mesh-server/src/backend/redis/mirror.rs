//! What this instance has written to Redis on behalf of its own
//! connections, kept in memory so that it can be written again when Redis
//! comes back empty (restart) or after this instance was swept as dead.

use mesh_protocol::PresenceUpdate;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Most removals and updates kept while Redis is away; beyond that the
/// oldest are dropped (and the loss logged).
const MAX_BACKLOG: usize = 10_000;

/// One local connection as Redis should know it.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct LocalConn {
    pub(crate) rooms: HashSet<String>,
    /// Present rooms and their presence TTL.
    pub(crate) present: HashMap<String, Option<Duration>>,
    /// States and when they expire.
    pub(crate) states: HashMap<String, (Value, Option<Instant>)>,
    pub(crate) metadata: Option<Value>,
}

/// A removal that happened locally while Redis could not be told.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    /// `conn` left `room`.
    Leave { room: String, conn: String },
    /// `conn`'s presence (and state) in `room` ended.
    Absent { room: String, conn: String },
    /// `conn`'s state in `room` was cleared.
    ClearState { room: String, conn: String },
    /// `conn` closed.
    Drop { conn: String },
}

/// The local picture; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    pub(crate) conns: HashMap<String, LocalConn>,
    /// Removals to replay once Redis is back, oldest first.
    pub(crate) pending: VecDeque<Pending>,
    /// Updates other instances have not received, oldest first.
    pub(crate) unsent: VecDeque<PresenceUpdate>,
}

impl Mirror {
    /// Remembers a removal to replay.
    pub(crate) fn defer(&mut self, pending: Pending) {
        if self.pending.len() >= MAX_BACKLOG {
            self.pending.pop_front();
            tracing::warn!("redis backlog full: dropping the oldest pending removal");
        }
        self.pending.push_back(pending);
    }

    /// Remembers an update other instances missed.
    pub(crate) fn defer_update(&mut self, update: PresenceUpdate) {
        if self.unsent.len() >= MAX_BACKLOG {
            self.unsent.pop_front();
            tracing::warn!("redis backlog full: dropping the oldest unsent update");
        }
        self.unsent.push_back(update);
    }

    /// The local connection `conn`, if it is one.
    pub(crate) fn conn(&mut self, conn: &str) -> Option<&mut LocalConn> {
        self.conns.get_mut(conn)
    }
}
