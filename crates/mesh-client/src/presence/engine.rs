//! The grouping engine: connections in, users out. No sockets, no clocks.
//!
//! Mesh tracks presence per connection. The engine folds those connections
//! into *users* (groups) by a key, and keeps, per user, the member
//! connections, the latest state, when it changed and who sent it.
//!
//! Every input costs O(1) amortized: a connection index points each
//! connection at its group, and groups hold their members in a set, so no
//! update scans the room or copies the group map. The sorted user list is
//! only built when asked for (the async `Presence` asks once per coalesced
//! emission), from an ordered index of keys that changes only when a user
//! appears or disappears.
//!
//! # Where keys come from
//!
//! * [`KeySource::Resolved`]: the caller resolves keys (typically from
//!   connection metadata, which needs a request). A connection whose key is
//!   unknown is *held apart*: not shown, its state kept aside, and listed by
//!   [`PresenceEngine::take_unresolved`] so the caller can look many of them
//!   up in one batch. [`PresenceEngine::resolve`] places it; a resolver that
//!   yields nothing (or fails) places it alone under its own connection id.
//! * [`KeySource::State`]: the key is read from the presence state by a
//!   function (e.g. `state.userId`). A connection is held apart until it has
//!   a state with a key; after that the key sticks when the state is cleared
//!   or expires (the person is still here, only their status is gone), and a
//!   state with a different key moves the connection to that user.
//!
//! # State rules
//!
//! A user's state is the last state any of its connections published (last
//! writer wins, a clear included). When the connection that sent it leaves,
//! the user keeps the state: tabs of one user keep their states in step, so
//! the state is still that person's. A state update for a connection that
//! never joined counts as a join (the server only accepts states from
//! members), except a cleared state, which is ignored so a late expiry can
//! never bring back a connection that left.

use mesh_protocol::PresenceUpdate;
use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// A function that reads a group key out of a presence state.
pub type StateKeyFn = Arc<dyn Fn(&Value) -> Option<String> + Send + Sync>;

/// How a group key is read out of a presence state.
#[derive(Clone)]
pub enum StateKey {
    /// A top-level field, e.g. `"userId"`: a string (read without
    /// allocating) or a number.
    Field(Arc<str>),
    /// Any function of the state.
    Fn(StateKeyFn),
}

impl StateKey {
    fn key_of<'a>(&self, state: &'a Value) -> Option<Cow<'a, str>> {
        match self {
            StateKey::Field(name) => key_from_field(state.get(&**name)?),
            StateKey::Fn(f) => f(state).map(Cow::Owned),
        }
    }
}

/// Reads a key from a field value: strings as they are, numbers in decimal
/// (ids are often numeric); anything else is no key.
pub fn key_from_field(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// Where the engine gets each connection's group key.
#[derive(Clone)]
pub enum KeySource {
    /// Keys are supplied by the caller through [`PresenceEngine::resolve`].
    Resolved,
    /// Keys are read from each connection's presence state.
    State(StateKey),
}

impl KeySource {
    /// Keys from a top-level string field of the state, e.g. `"userId"`.
    pub fn state_field(name: &str) -> Self {
        KeySource::State(StateKey::Field(Arc::from(name)))
    }

    /// Keys computed from the state by `f`.
    pub fn state_fn(f: impl Fn(&Value) -> Option<String> + Send + Sync + 'static) -> Self {
        KeySource::State(StateKey::Fn(Arc::new(f)))
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Resolved => f.write_str("Resolved"),
            KeySource::State(StateKey::Field(name)) => write!(f, "State(field {name:?})"),
            KeySource::State(StateKey::Fn(_)) => f.write_str("State(fn)"),
        }
    }
}

/// What changed about one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    /// The user's state (or its timestamp) changed.
    State,
    /// The number of connections (tabs) changed.
    Tabs,
}

/// A user-level change, as opposed to a connection-level one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum UserEvent {
    /// The first connection of a user appeared.
    Joined {
        /// The user's group key.
        id: Arc<str>,
    },
    /// The last connection of a user went away.
    Left {
        /// The user's group key.
        id: Arc<str>,
    },
    /// A present user changed.
    Updated {
        /// The user's group key.
        id: Arc<str>,
        /// What changed.
        change: Change,
    },
}

/// One person (group of connections), as shown in a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The group key (user id, or a connection id for a connection standing alone).
    pub id: Arc<str>,
    /// The latest state, `None` when there is none. Shared, so a list is cheap to build.
    pub state: Option<Arc<Value>>,
    /// Number of connections (tabs, devices) of this user.
    pub tab_count: usize,
    /// Connection ids of this user, sorted. Shared, so a list is cheap to build.
    pub members: Arc<[Arc<str>]>,
    /// The connection that sent the current state, while it is still here.
    pub representative: Option<Arc<str>>,
    /// When the state last changed (milliseconds since the Unix epoch).
    pub timestamp: u64,
}

/// Where one connection stands.
enum Placement {
    /// Key unknown: not shown. Keeps the latest state seen meanwhile.
    Held {
        state: Option<Arc<Value>>,
        timestamp: u64,
    },
    /// Member of the group with this key.
    Placed(Arc<str>),
}

struct Group {
    members: HashSet<Arc<str>>,
    /// `members` sorted, built on first use after a change: a list is
    /// emitted up to once a frame, and members change far less often.
    sorted: OnceLock<Arc<[Arc<str>]>>,
    state: Option<Arc<Value>>,
    representative: Option<Arc<str>>,
    timestamp: u64,
}

impl Group {
    fn new() -> Self {
        Group {
            members: HashSet::new(),
            sorted: OnceLock::new(),
            state: None,
            representative: None,
            timestamp: 0,
        }
    }

    fn sorted_members(&self) -> Arc<[Arc<str>]> {
        self.sorted
            .get_or_init(|| {
                let mut members: Vec<Arc<str>> = self.members.iter().cloned().collect();
                members.sort_unstable();
                members.into()
            })
            .clone()
    }
}

/// Groups a room's connections into users. See the module documentation.
pub struct PresenceEngine {
    source: KeySource,
    conns: HashMap<Arc<str>, Placement>,
    groups: HashMap<Arc<str>, Group>,
    /// Group keys in display order; touched only when a user appears or goes.
    order: BTreeSet<Arc<str>>,
    /// Connections waiting for a key lookup (may contain stale entries,
    /// filtered when taken).
    unresolved: Vec<Arc<str>>,
    events: Vec<UserEvent>,
    dirty: bool,
}

impl fmt::Debug for PresenceEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceEngine")
            .field("source", &self.source)
            .field("connections", &self.conns.len())
            .field("users", &self.groups.len())
            .finish()
    }
}

impl PresenceEngine {
    /// An empty engine taking keys from `source`.
    pub fn new(source: KeySource) -> Self {
        PresenceEngine {
            source,
            conns: HashMap::new(),
            groups: HashMap::new(),
            order: BTreeSet::new(),
            unresolved: Vec::new(),
            events: Vec::new(),
            dirty: false,
        }
    }

    /// Feeds one presence update.
    pub fn apply(&mut self, update: PresenceUpdate) {
        match update {
            PresenceUpdate::Join {
                connection_id,
                timestamp,
                ..
            } => self.join(&connection_id, timestamp),
            PresenceUpdate::Leave { connection_id, .. } => self.leave(&connection_id),
            PresenceUpdate::State {
                connection_id,
                state,
                timestamp,
                ..
            } => self.set_state(&connection_id, state, timestamp),
        }
    }

    /// A connection joined. A duplicate join changes nothing.
    pub fn join(&mut self, conn: &str, _timestamp: u64) {
        if self.conns.contains_key(conn) {
            return;
        }
        let conn: Arc<str> = Arc::from(conn);
        self.conns.insert(
            conn.clone(),
            Placement::Held {
                state: None,
                timestamp: 0,
            },
        );
        if matches!(self.source, KeySource::Resolved) {
            self.unresolved.push(conn);
        }
    }

    /// A connection left. Leaving an unknown connection changes nothing.
    pub fn leave(&mut self, conn: &str) {
        if let Some((conn, Placement::Placed(key))) = self.conns.remove_entry(conn) {
            self.detach(&conn, &key);
        }
    }

    /// A connection's state changed (`None`: cleared or expired).
    pub fn set_state(&mut self, conn: &str, state: Option<Value>, timestamp: u64) {
        // Fast path, the common case: a placed connection whose key stays.
        // Two hash lookups, no allocation but the shared state itself.
        if let Some((conn_id, Placement::Placed(key))) = self.conns.get_key_value(conn) {
            let key_stays = match (&self.source, &state) {
                (KeySource::State(key_of), Some(value)) => {
                    key_of.key_of(value).is_none_or(|new| *new == **key)
                }
                _ => true,
            };
            if key_stays {
                if let Some(group) = self.groups.get_mut(key) {
                    let state = state.map(Arc::new);
                    if group.timestamp >= timestamp && group.state == state {
                        return; // a duplicate delivery
                    }
                    group.state = state;
                    group.timestamp = timestamp;
                    if group.representative.as_ref() != Some(conn_id) {
                        group.representative = Some(conn_id.clone());
                    }
                    let event = UserEvent::Updated {
                        id: key.clone(),
                        change: Change::State,
                    };
                    self.push_event(event);
                    return;
                }
            }
        }
        self.put_state(conn, state.map(Arc::new), timestamp);
    }

    fn put_state(&mut self, conn: &str, state: Option<Arc<Value>>, timestamp: u64) {
        let key_from_state = match (&self.source, &state) {
            (KeySource::State(key), Some(value)) => key.key_of(value),
            _ => None,
        };
        let Some((conn, placement)) = self.conns.get_key_value(conn) else {
            if state.is_none() {
                // A clear for a connection we do not know: most likely a late
                // expiry of someone who left. Never resurrect them.
                return;
            }
            self.join(conn, timestamp);
            return self.put_state(conn, state, timestamp);
        };
        let conn = conn.clone();
        let current = match placement {
            Placement::Placed(key) => Some(key.clone()),
            Placement::Held { .. } => None,
        };
        match (current, key_from_state) {
            (Some(key), Some(new_key)) if *new_key != *key => {
                self.detach(&conn, &key);
                self.attach(&conn, Arc::from(new_key), state, timestamp);
            }
            (Some(key), _) => self.set_group_state(&key, &conn, state, timestamp),
            (None, Some(new_key)) => self.attach(&conn, Arc::from(new_key), state, timestamp),
            (None, None) => {
                self.conns
                    .insert(conn, Placement::Held { state, timestamp });
            }
        }
    }

    /// Gives the key of a connection held for resolution (`None`: the
    /// resolver found nothing or failed, so the connection stands alone
    /// under its own id). Resolving a placed connection to another key moves
    /// it (a user whose id changed). Unknown connections are ignored.
    pub fn resolve(&mut self, conn: &str, key: Option<String>) {
        let Some((conn, placement)) = self.conns.get_key_value(conn) else {
            return;
        };
        let conn = conn.clone();
        let current = match placement {
            Placement::Placed(key) => Some(key.clone()),
            Placement::Held { .. } => None,
        };
        let key: Arc<str> = key.map(Arc::from).unwrap_or_else(|| conn.clone());
        match current {
            Some(old) if old == key => {}
            Some(old) => {
                let carried = self.detach(&conn, &old);
                match carried {
                    Some((state, timestamp)) => self.attach(&conn, key, state, timestamp),
                    None => self.attach_stateless(&conn, key),
                }
            }
            None => {
                let Some(Placement::Held { state, timestamp }) = self.conns.remove(&conn) else {
                    return;
                };
                if state.is_some() || timestamp > 0 {
                    self.attach(&conn, key, state, timestamp);
                } else {
                    self.attach_stateless(&conn, key);
                }
            }
        }
    }

    /// Connections whose key must be looked up, each listed once. Only
    /// [`KeySource::Resolved`] engines list any.
    pub fn take_unresolved(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for conn in self.unresolved.drain(..) {
            if matches!(self.conns.get(&conn), Some(Placement::Held { .. })) {
                out.push(conn.to_string());
            }
        }
        out
    }

    /// Replaces everything with a snapshot (initial seed, or a resync after
    /// a reconnect): `present` connection ids and their `states`. Keys
    /// already known for connections still present are kept, so a resync
    /// does not look everyone up again. Emits only the differences.
    /// `now` stamps the seeded states (a snapshot carries no timestamps).
    pub fn reset<I, S>(&mut self, present: I, mut states: Map<String, Value>, now: u64)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut old_conns = std::mem::take(&mut self.conns);
        let old_groups = std::mem::take(&mut self.groups);
        self.order.clear();
        self.unresolved.clear();
        let events_before = self.events.len();
        self.conns.reserve(old_conns.len().max(states.len()));
        for conn in present {
            let conn = conn.as_ref();
            if self.conns.contains_key(conn) {
                continue;
            }
            let state = states.remove(conn).filter(|s| !s.is_null()).map(Arc::new);
            let known_key = match (&self.source, old_conns.remove(conn)) {
                (KeySource::Resolved, Some(Placement::Placed(key))) => Some(key),
                _ => None,
            };
            self.join(conn, now);
            match (known_key, state) {
                (Some(key), state) => {
                    self.conns.remove(conn);
                    let conn: Arc<str> = Arc::from(conn);
                    match state {
                        Some(state) => self.attach(&conn, key, Some(state), now),
                        None => self.attach_stateless(&conn, key),
                    }
                }
                (None, Some(state)) => self.put_state(conn, Some(state), now),
                (None, None) => {}
            }
        }
        // The events of the rebuild are replaced by a diff against before.
        self.events.truncate(events_before);
        for (key, old) in &old_groups {
            match self.groups.get(key) {
                None => self.events.push(UserEvent::Left { id: key.clone() }),
                Some(new) => {
                    if new.members.len() != old.members.len() {
                        self.events.push(UserEvent::Updated {
                            id: key.clone(),
                            change: Change::Tabs,
                        });
                    }
                    if new.state != old.state {
                        self.events.push(UserEvent::Updated {
                            id: key.clone(),
                            change: Change::State,
                        });
                    }
                }
            }
        }
        for key in self.groups.keys() {
            if !old_groups.contains_key(key) {
                self.events.push(UserEvent::Joined { id: key.clone() });
            }
        }
        self.dirty = true;
    }

    /// The user a connection belongs to, if it is placed.
    pub fn user_of(&self, conn: &str) -> Option<&str> {
        match self.conns.get(conn) {
            Some(Placement::Placed(key)) => Some(key),
            _ => None,
        }
    }

    /// Whether the connection is known (placed or held).
    pub fn contains_connection(&self, conn: &str) -> bool {
        self.conns.contains_key(conn)
    }

    /// One user by key.
    pub fn user(&self, id: &str) -> Option<User> {
        self.groups.get_key_value(id).map(|(k, g)| to_user(k, g))
    }

    /// All users, sorted by key (a stable order: rows do not jump around as
    /// states change, and every client sorts the same way).
    pub fn users(&self) -> Vec<User> {
        self.order
            .iter()
            .filter_map(|k| self.groups.get(k).map(|g| to_user(k, g)))
            .collect()
    }

    /// Number of users shown.
    pub fn user_count(&self) -> usize {
        self.groups.len()
    }

    /// Number of connections known, held ones included.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Takes the user-level events since the last call.
    pub fn take_events(&mut self) -> Vec<UserEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether anything visible changed since the last call, and clears the flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::replace(&mut self.dirty, false)
    }

    /// Records a user-level event; the same event twice in a row (a burst of
    /// states from one user) is kept once.
    fn push_event(&mut self, event: UserEvent) {
        if self.events.last() != Some(&event) {
            self.events.push(event);
        }
        self.dirty = true;
    }

    /// Puts a connection into group `key` with the state it sent at
    /// `timestamp`; the state wins unless the group already has a newer one.
    fn attach(
        &mut self,
        conn: &Arc<str>,
        key: Arc<str>,
        state: Option<Arc<Value>>,
        timestamp: u64,
    ) {
        self.attach_stateless(conn, key.clone());
        let newer_there = self
            .groups
            .get(&key)
            .is_some_and(|g| g.timestamp > timestamp);
        if !newer_there {
            self.set_group_state(&key, conn, state, timestamp);
        }
    }

    /// Puts a connection into group `key` without touching the group's state.
    fn attach_stateless(&mut self, conn: &Arc<str>, key: Arc<str>) {
        self.conns
            .insert(conn.clone(), Placement::Placed(key.clone()));
        let group = self.groups.entry(key.clone()).or_insert_with(Group::new);
        group.members.insert(conn.clone());
        group.sorted.take();
        let event = if group.members.len() == 1 {
            self.order.insert(key.clone());
            UserEvent::Joined { id: key }
        } else {
            UserEvent::Updated {
                id: key,
                change: Change::Tabs,
            }
        };
        self.events.push(event);
        self.dirty = true;
    }

    /// Takes a connection out of group `key`. Returns the group's state when
    /// this connection was the one that sent it (so a move can carry it).
    fn detach(&mut self, conn: &Arc<str>, key: &Arc<str>) -> Option<(Option<Arc<Value>>, u64)> {
        let group = self.groups.get_mut(key)?;
        if !group.members.remove(conn) {
            return None;
        }
        group.sorted.take();
        let was_representative = group.representative.as_ref() == Some(conn);
        let carried = if was_representative {
            group.representative = None;
            Some((group.state.clone(), group.timestamp))
        } else {
            None
        };
        let event = if group.members.is_empty() {
            self.groups.remove(key);
            self.order.remove(key);
            UserEvent::Left { id: key.clone() }
        } else {
            UserEvent::Updated {
                id: key.clone(),
                change: Change::Tabs,
            }
        };
        self.events.push(event);
        self.dirty = true;
        carried
    }

    fn set_group_state(
        &mut self,
        key: &Arc<str>,
        conn: &Arc<str>,
        state: Option<Arc<Value>>,
        timestamp: u64,
    ) {
        let Some(group) = self.groups.get_mut(key) else {
            return;
        };
        if group.timestamp >= timestamp && group.state == state {
            // Same state, not newer: a duplicate delivery; nothing visible changes.
            return;
        }
        group.state = state;
        group.timestamp = timestamp;
        group.representative = Some(conn.clone());
        self.push_event(UserEvent::Updated {
            id: key.clone(),
            change: Change::State,
        });
    }
}

fn to_user(key: &Arc<str>, group: &Group) -> User {
    User {
        id: key.clone(),
        state: group.state.clone(),
        tab_count: group.members.len(),
        members: group.sorted_members(),
        representative: group.representative.clone(),
        timestamp: group.timestamp,
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
