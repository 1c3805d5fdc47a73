//! The grouping engine: connections in, users out. No sockets, no clocks.
//!
//! Mesh tracks presence per connection. The engine folds those connections
//! into *users* (groups) by a key, and keeps, per user, the member
//! connections, the latest state, when it changed and who sent it.
//!
//! Every input costs O(1) amortized: a connection index points each
//! connection at its group, and groups hold their members in a set, so no
//! update scans the room or copies the group map. The sorted user list is
//! only built when asked for, from an ordered index of keys that changes
//! only when a user appears or disappears; a caller that keeps one copy of
//! the list current (as the async `Presence` does, once per coalesced
//! emission) patches it with [`PresenceEngine::take_changes`] instead, at
//! the cost of the users touched since, not the room.
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
//! # State rules: which state is the latest
//!
//! A user's state is the one their owner changed last, by the state's
//! [`changedAt`](super::CHANGED_AT) (a state without it, and a clear, count
//! as changed when the server handled them; in a snapshot, which carries no
//! times, as oldest). So a state saved offline and republished late never
//! wins over a newer one, and every client, whether it watched the updates
//! arrive or started from a snapshot, picks the same state. Ties (the same
//! millisecond) are broken by the state's text, the same way everywhere. A
//! connection's own next update always replaces the state it sent before:
//! the server delivers each connection's updates in order.
//!
//! When the connection that sent the state leaves, the user keeps it: tabs
//! of one user keep their states in step, so it is still that person's. A
//! state update for a connection that never joined counts as a join (the
//! server only accepts states from members), except a cleared state, which
//! is ignored so a late expiry can never bring back a connection that left.
//!
//! # Reconnecting without a gap
//!
//! After a reconnect the room comes back as a snapshot, taken while the
//! others may still be reconnecting too. [`PresenceEngine::resync`] keeps a
//! user who was here before and is missing from the snapshot, with no
//! connections (`tab_count` 0: reconnecting) and their last state, until
//! they come back or a grace period ends; a user who is back but has not
//! republished yet keeps their last state meanwhile. Such a kept state is a
//! placeholder: the first state from one of the user's connections replaces
//! it, whatever its time. [`PresenceEngine::expire`] ends the grace.

use super::changed_at::changed_at;
use super::diff::UsersDiff;
use mesh_protocol::PresenceUpdate;
use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::cmp::Ordering;
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

impl UserEvent {
    /// The user it is about.
    pub fn id(&self) -> &Arc<str> {
        match self {
            UserEvent::Joined { id } | UserEvent::Left { id } | UserEvent::Updated { id, .. } => id,
        }
    }
}

/// How many touches past the room's size [`PresenceEngine::take_changes`]
/// keeps before it gives up on patching: then the next take is the whole
/// list, which costs no more, and a caller that never takes changes holds
/// a bounded record.
const TOUCHED_SLACK: usize = 64;

/// One person (group of connections), as shown in a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The group key (user id, or a connection id for a connection standing alone).
    pub id: Arc<str>,
    /// The latest state, `None` when there is none. Shared, so a list is cheap to build.
    pub state: Option<Arc<Value>>,
    /// Number of connections (tabs, devices) of this user; 0 while they
    /// are reconnecting (kept for a grace period after a resync).
    pub tab_count: usize,
    /// Connection ids of this user, sorted. Shared, so a list is cheap to build.
    pub members: Arc<[Arc<str>]>,
    /// The connection that sent the current state, while it is still here.
    pub representative: Option<Arc<str>>,
    /// When the state last changed (milliseconds since the Unix epoch): its
    /// `changedAt`, else when the server handled it; 0 when unknown.
    pub timestamp: u64,
}

/// A user's current state, as [`PresenceEngine::latest`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Latest<'a> {
    /// The state, `None` when there is none.
    pub state: Option<&'a Arc<Value>>,
    /// When it changed (as [`User::timestamp`]).
    pub changed_at: u64,
    /// The connection that sent it; `None` when that connection left, or
    /// when the state is kept over a resync and no connection has sent it.
    pub sender: Option<&'a Arc<str>>,
}

/// Where one connection stands.
enum Placement {
    /// Key unknown: not shown. Keeps the latest state seen meanwhile, and
    /// when it changed.
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
    /// When the state changed (see the module documentation).
    timestamp: u64,
    /// Set while the group is kept over a resync (ms since the epoch): its
    /// state is a placeholder until a member sends one, and a group without
    /// members goes at this time.
    kept_until: Option<u64>,
}

impl Group {
    fn new() -> Self {
        Group {
            members: HashSet::new(),
            sorted: OnceLock::new(),
            state: None,
            representative: None,
            timestamp: 0,
            kept_until: None,
        }
    }

    /// Whether `state`, sent by `conn` and changed at `time`, replaces this
    /// group's state (see the module documentation).
    fn superseded_by(&self, conn: &str, state: Option<&Value>, time: u64) -> bool {
        if self.kept_until.is_some() || self.representative.as_deref() == Some(conn) {
            return true;
        }
        match time.cmp(&self.timestamp) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => wins_tie(state, self.state.as_deref()),
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
    /// Users whose row may have changed since the last
    /// [`take_changes`](PresenceEngine::take_changes), repeats included:
    /// every event's user, and a representative set without an event.
    touched: Vec<Arc<str>>,
    /// Any row may have changed (a rebuild, or more touches than users):
    /// the next `take_changes` is the whole list.
    touched_all: bool,
    dirty: bool,
    /// The earliest `kept_until` of any group, when one is kept.
    next_deadline: Option<u64>,
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
            touched: Vec::new(),
            // The first take is the whole list, so a copy can start empty.
            touched_all: true,
            dirty: false,
            next_deadline: None,
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

    /// A connection's state changed (`None`: cleared or expired), in an
    /// update the server handled at `timestamp`.
    pub fn set_state(&mut self, conn: &str, state: Option<Value>, timestamp: u64) {
        let time = state.as_ref().and_then(changed_at).unwrap_or(timestamp);
        // Fast path, the common case: a placed connection whose key stays.
        // Two hash lookups, no allocation but the shared state itself.
        if let Some((conn_id, Placement::Placed(key))) = self.conns.get_key_value(conn) {
            let key_stays = match (&self.source, &state) {
                (KeySource::State(key_of), Some(value)) => {
                    key_of.key_of(value).is_none_or(|new| *new == **key)
                }
                _ => true,
            };
            if key_stays && self.groups.contains_key(key) {
                let (conn_id, key) = (conn_id.clone(), key.clone());
                self.offer_state(&key, &conn_id, state.map(Arc::new), time);
                return;
            }
        }
        self.put_state(conn, state.map(Arc::new), time);
    }

    /// Places a connection's state changed at `timestamp` (moving the
    /// connection when the state names another key).
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
            (Some(key), _) => self.offer_state(&key, &conn, state, timestamp),
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

    /// Replaces everything with a snapshot (the initial seed): `present`
    /// connection ids and their `states`. Keys already known for
    /// connections still present are kept. Emits only the differences.
    pub fn reset<I, S>(&mut self, present: I, states: Map<String, Value>)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.rebuild(present, states, None);
    }

    /// [`reset`](Self::reset) after a reconnect: users who were here and
    /// are missing from the snapshot, or are back without a state, keep
    /// their last state until one of their connections sends one or
    /// `keep_until` (ms since the epoch) passes; see [`expire`](Self::expire).
    /// Keys known for connections still present are kept, so a resync does
    /// not look everyone up again.
    pub fn resync<I, S>(&mut self, present: I, states: Map<String, Value>, keep_until: u64)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.rebuild(present, states, Some(keep_until));
    }

    fn rebuild<I, S>(&mut self, present: I, mut states: Map<String, Value>, keep_until: Option<u64>)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut old_conns = std::mem::take(&mut self.conns);
        let old_groups = std::mem::take(&mut self.groups);
        self.order.clear();
        self.unresolved.clear();
        // Its events are a diff by tabs and state only (a member swapped
        // for another is none): copies of the list are rebuilt whole.
        self.touch_all();
        let events_before = self.events.len();
        self.conns.reserve(old_conns.len().max(states.len()));
        for conn in present {
            let conn = conn.as_ref();
            if self.conns.contains_key(conn) {
                continue;
            }
            let state = states.remove(conn).filter(|s| !s.is_null());
            // A snapshot has no times: a state that does not say when it
            // changed is older than any update.
            let time = state.as_ref().and_then(changed_at).unwrap_or(0);
            let state = state.map(Arc::new);
            let known_key = match (&self.source, old_conns.remove(conn)) {
                (KeySource::Resolved, Some(Placement::Placed(key))) => Some(key),
                _ => None,
            };
            self.join(conn, 0);
            match (known_key, state) {
                (Some(key), state) => {
                    self.conns.remove(conn);
                    let conn: Arc<str> = Arc::from(conn);
                    match state {
                        Some(state) => self.attach(&conn, key, Some(state), time),
                        None => self.attach_stateless(&conn, key),
                    }
                }
                (None, Some(state)) => self.put_state(conn, Some(state), time),
                (None, None) => {}
            }
        }
        self.next_deadline = None;
        if let Some(until) = keep_until {
            self.keep_over_resync(&old_groups, until);
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

    /// Keeps the users of `old_groups` that the rebuilt room lacks, or that
    /// came back without a state, as the module documentation says.
    fn keep_over_resync(&mut self, old_groups: &HashMap<Arc<str>, Group>, until: u64) {
        for (key, old) in old_groups {
            let until = old.kept_until.map_or(until, |t| t.min(until));
            match self.groups.get_mut(key) {
                Some(new) if new.state.is_none() && old.state.is_some() => {
                    new.state = old.state.clone();
                    new.timestamp = old.timestamp;
                    new.representative = None;
                    new.kept_until = Some(until);
                }
                Some(_) => continue,
                None => {
                    let mut kept = Group::new();
                    kept.state = old.state.clone();
                    kept.timestamp = old.timestamp;
                    kept.kept_until = Some(until);
                    self.groups.insert(key.clone(), kept);
                    self.order.insert(key.clone());
                }
            }
            self.next_deadline = Some(self.next_deadline.map_or(until, |t| t.min(until)));
        }
    }

    /// When the earliest grace of a user kept over a resync ends (ms since
    /// the epoch), if any: call [`expire`](Self::expire) then.
    pub fn next_deadline(&self) -> Option<u64> {
        self.next_deadline
    }

    /// Ends the grace of kept users whose time is up at `now`: those who did
    /// not come back leave; those who came back without sending a state
    /// lose the placeholder.
    pub fn expire(&mut self, now: u64) {
        if self.next_deadline.is_none_or(|at| at > now) {
            return;
        }
        let mut next: Option<u64> = None;
        let mut gone = Vec::new();
        let mut emptied = Vec::new();
        for (key, group) in &mut self.groups {
            match group.kept_until {
                Some(until) if until <= now => {
                    group.kept_until = None;
                    if group.members.is_empty() {
                        gone.push(key.clone());
                    } else if group.state.is_some() {
                        group.state = None;
                        group.timestamp = 0;
                        emptied.push(key.clone());
                    }
                }
                Some(until) => next = Some(next.map_or(until, |t| t.min(until))),
                None => {}
            }
        }
        self.next_deadline = next;
        for key in gone {
            self.groups.remove(&key);
            self.order.remove(&key);
            self.push_event(UserEvent::Left { id: key });
        }
        for key in emptied {
            self.push_event(UserEvent::Updated {
                id: key,
                change: Change::State,
            });
        }
    }

    /// Our own connection left because we reconnected: like
    /// [`leave`](Self::leave), but when it was our user's last connection
    /// the user is kept until `keep_until`, since we are coming back.
    pub fn leave_keeping(&mut self, conn: &str, keep_until: u64) {
        let Some((conn, placement)) = self.conns.remove_entry(conn) else {
            return;
        };
        let Placement::Placed(key) = placement else {
            return;
        };
        match self.groups.get_mut(&key) {
            Some(group) if group.members.len() == 1 && group.members.contains(&conn) => {
                group.members.clear();
                group.sorted.take();
                group.representative = None;
                let until = group.kept_until.map_or(keep_until, |t| t.min(keep_until));
                group.kept_until = Some(until);
                self.next_deadline = Some(self.next_deadline.map_or(until, |t| t.min(until)));
                self.push_event(UserEvent::Updated {
                    id: key,
                    change: Change::Tabs,
                });
            }
            _ => {
                self.detach(&conn, &key);
            }
        }
    }

    /// A user's state, when it changed and who sent it, without building a
    /// [`User`].
    pub fn latest(&self, id: &str) -> Option<Latest<'_>> {
        let group = self.groups.get(id)?;
        Some(Latest {
            state: group.state.as_ref(),
            changed_at: group.timestamp,
            sender: group.representative.as_ref(),
        })
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

    /// What changed in the [user list](Self::users) since the last call,
    /// for keeping one copy of it current without rebuilding it: applying
    /// every result in turn with [`UsersDiff::apply_to_list`] to a list
    /// that starts empty keeps it equal to `users()`, every field included
    /// ([`User::representative`] too, unlike [`UsersDiff::from_events`]).
    /// Costs the users touched since the last call; the whole list on the
    /// first call, after a [`reset`](Self::reset) or [`resync`](Self::resync),
    /// and when more were touched than there are users.
    pub fn take_changes(&mut self) -> UsersDiff {
        if std::mem::take(&mut self.touched_all) {
            self.touched.clear();
            return UsersDiff::Full(self.users());
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        let mut upserted = Vec::with_capacity(self.touched.len());
        let mut removed = Vec::new();
        for id in self.touched.drain(..) {
            match self.groups.get_key_value(&id) {
                Some((key, group)) => upserted.push(to_user(key, group)),
                None => removed.push(id),
            }
        }
        UsersDiff::Changed { upserted, removed }
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
        self.touch(event.id());
        if self.events.last() != Some(&event) {
            self.events.push(event);
        }
        self.dirty = true;
    }

    /// Records that user `key`'s row may have changed, for
    /// [`take_changes`](Self::take_changes).
    fn touch(&mut self, key: &Arc<str>) {
        if self.touched_all {
            return;
        }
        if self.touched.len() > self.groups.len() + TOUCHED_SLACK {
            return self.touch_all();
        }
        self.touched.push(key.clone());
    }

    /// Records that any row may have changed.
    fn touch_all(&mut self) {
        self.touched_all = true;
        self.touched.clear();
    }

    /// Puts a connection into group `key` with the state it changed at
    /// `timestamp`; the state wins unless the group already has a later one.
    fn attach(
        &mut self,
        conn: &Arc<str>,
        key: Arc<str>,
        state: Option<Arc<Value>>,
        timestamp: u64,
    ) {
        self.attach_stateless(conn, key.clone());
        self.offer_state(&key, conn, state, timestamp);
    }

    /// Puts a connection into group `key` without touching the group's state.
    fn attach_stateless(&mut self, conn: &Arc<str>, key: Arc<str>) {
        self.conns
            .insert(conn.clone(), Placement::Placed(key.clone()));
        let group = self.groups.entry(key.clone()).or_insert_with(Group::new);
        group.members.insert(conn.clone());
        group.sorted.take();
        // A user kept over a resync is already listed: they are back.
        let event = if group.members.len() == 1 && self.order.insert(key.clone()) {
            UserEvent::Joined { id: key }
        } else {
            UserEvent::Updated {
                id: key,
                change: Change::Tabs,
            }
        };
        self.touch(event.id());
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
        self.touch(key);
        self.events.push(event);
        self.dirty = true;
        carried
    }

    /// Offers `state`, sent by `conn` and changed at `timestamp`, to group
    /// `key`: it becomes the user's state unless theirs is later.
    fn offer_state(
        &mut self,
        key: &Arc<str>,
        conn: &Arc<str>,
        state: Option<Arc<Value>>,
        timestamp: u64,
    ) {
        let Some(group) = self.groups.get_mut(key) else {
            return;
        };
        if !group.superseded_by(conn, state.as_deref(), timestamp) {
            return;
        }
        let was_kept = group.kept_until.take().is_some();
        if group.timestamp >= timestamp && group.state == state {
            // The same state, not newer: a duplicate delivery, or the state
            // kept over a resync confirmed. Nothing a diff shows changes.
            if was_kept {
                group.representative = Some(conn.clone());
                self.touch(key);
            }
            return;
        }
        if group.representative.as_ref() != Some(conn) {
            group.representative = Some(conn.clone());
        }
        group.state = state;
        group.timestamp = timestamp;
        self.push_event(UserEvent::Updated {
            id: key.clone(),
            change: Change::State,
        });
    }
}

/// Between two different states changed in the same millisecond, the one
/// whose text sorts last wins, so every client picks the same; a state wins
/// over a clear.
fn wins_tie(new: Option<&Value>, old: Option<&Value>) -> bool {
    match (new, old) {
        (Some(new), Some(old)) => {
            let text = |v: &Value| serde_json::to_string(v).unwrap_or_default();
            new != old && text(new) > text(old)
        }
        (Some(_), None) => true,
        (None, _) => false,
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
