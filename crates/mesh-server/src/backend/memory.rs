//! The in-memory backend: the default, and the reference for semantics.
//!
//! All data sits behind one mutex that is held only for short, synchronous
//! map operations, never across an `.await` and never while updates are
//! handed to sinks. Expiry uses a single timer wheel: a time-ordered set of
//! `(deadline, key)` pairs and one purge task that sleeps until the earliest
//! deadline, as tokio's mini-redis does. Several server instances may share
//! one `MemoryBackend` (it fans out to every attached sink), which is how
//! the tests exercise cross-instance behaviour without Redis.

use super::{check_len, encode_members, json_len, Backend, BackendResult, UpdateSink};
use async_trait::async_trait;
use bytes::Bytes;
use mesh_protocol::{now_millis, PresenceUpdate, Strategy};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Rooms, presence, states and metadata held in this process.
///
/// Cloning is cheap and clones share the data. Must be created inside a
/// tokio runtime: it spawns its purge task, which ends when the last clone
/// is dropped.
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
    /// Dropped with the last clone; tells the purge task to stop.
    _guard: Arc<PurgeGuard>,
}

struct Shared {
    state: Mutex<State>,
    sinks: RwLock<Vec<Arc<dyn UpdateSink>>>,
    /// Wakes the purge task when an earlier deadline arrives or on drop.
    wake: Arc<Notify>,
}

struct PurgeGuard(Arc<Shared>);

impl Drop for PurgeGuard {
    fn drop(&mut self) {
        self.0.wake.notify_one();
    }
}

/// What an entry of the timer wheel expires.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Expiry {
    Presence { room: String, conn: String },
    State { room: String, conn: String },
}

#[derive(Default)]
struct Room {
    members: HashSet<String>,
    /// Present connections and the deadline of their TTL, if any.
    present: HashMap<String, Option<Instant>>,
    /// States and their expiry deadline, if any.
    states: HashMap<String, (Value, Option<Instant>)>,
    /// Encoded snapshots, built on demand and dropped on every change.
    snapshots: Snapshots,
}

/// The snapshot of a room that does not exist.
const EMPTY_LIST: Bytes = Bytes::from_static(b"[]");

/// `slot`, or else `ids` with their metadata encoded into it.
fn member_list<'a>(
    slot: &mut Option<Bytes>,
    ids: impl Iterator<Item = &'a String>,
    metadata: &HashMap<String, Value>,
) -> Bytes {
    slot.get_or_insert_with(|| encode_members(ids.map(|id| (id.as_str(), metadata.get(id)))))
        .clone()
}

/// A room's encoded snapshots, shared by every asker until the room
/// changes.
#[derive(Default)]
struct Snapshots {
    members: Option<Bytes>,
    present: Option<Bytes>,
    states: Option<Bytes>,
}

impl Room {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.present.is_empty() && self.states.is_empty()
    }
}

#[derive(Default)]
struct State {
    rooms: HashMap<String, Room>,
    conn_rooms: HashMap<String, HashSet<String>>,
    metadata: HashMap<String, Value>,
    room_metadata: HashMap<String, Value>,
    /// The timer wheel: every pending expiry, earliest first.
    expirations: BTreeSet<(Instant, Expiry)>,
}

impl State {
    /// Forgets a room's snapshots: its members, presence, states or a
    /// member's metadata changed.
    fn changed(&mut self, room: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.snapshots = Snapshots::default();
        }
    }

    /// Forgets the snapshots of every room `conn` is in.
    fn metadata_changed(&mut self, conn: &str) {
        let State {
            rooms, conn_rooms, ..
        } = self;
        for room in conn_rooms.get(conn).into_iter().flatten() {
            if let Some(r) = rooms.get_mut(room) {
                r.snapshots = Snapshots::default();
            }
        }
    }

    /// Drops a room's entry once nothing refers to it any more.
    fn tidy(&mut self, room: &str) {
        if self.rooms.get(room).is_some_and(Room::is_empty) {
            self.rooms.remove(room);
        }
    }

    fn cancel(&mut self, when: Option<Instant>, key: Expiry) {
        if let Some(when) = when {
            self.expirations.remove(&(when, key));
        }
    }

    /// Removes every entry whose deadline has passed; returns the updates
    /// to publish and the next deadline.
    fn purge(&mut self, now: Instant) -> (Vec<PresenceUpdate>, Option<Instant>) {
        let mut updates = Vec::new();
        while let Some((when, _)) = self.expirations.first() {
            if *when > now {
                break;
            }
            let Some((when, key)) = self.expirations.pop_first() else {
                break;
            };
            match key {
                Expiry::Presence { room, conn } => {
                    let Some(r) = self.rooms.get_mut(&room) else {
                        continue;
                    };
                    if r.present.get(&conn) != Some(&Some(when)) {
                        continue;
                    }
                    r.present.remove(&conn);
                    r.snapshots = Snapshots::default();
                    if let Some((_, Some(state_when))) = r.states.remove(&conn) {
                        self.expirations.remove(&(
                            state_when,
                            Expiry::State {
                                room: room.clone(),
                                conn: conn.clone(),
                            },
                        ));
                    }
                    self.tidy(&room);
                    updates.push(PresenceUpdate::Leave {
                        connection_id: conn,
                        room_name: room,
                        timestamp: now_millis(),
                    });
                }
                Expiry::State { room, conn } => {
                    let Some(r) = self.rooms.get_mut(&room) else {
                        continue;
                    };
                    if r.states.get(&conn).map(|(_, w)| *w) != Some(Some(when)) {
                        continue;
                    }
                    r.states.remove(&conn);
                    r.snapshots = Snapshots::default();
                    self.tidy(&room);
                    updates.push(PresenceUpdate::State {
                        connection_id: conn,
                        room_name: room,
                        state: None,
                        timestamp: now_millis(),
                    });
                }
            }
        }
        (updates, self.expirations.first().map(|(when, _)| *when))
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty backend with its purge task running.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the purge task needs one).
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            sinks: RwLock::new(Vec::new()),
            wake: Arc::new(Notify::new()),
        });
        tokio::spawn(purge_task(Arc::downgrade(&shared), shared.wake.clone()));
        MemoryBackend {
            _guard: Arc::new(PurgeGuard(shared.clone())),
            shared,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than stopping would; keep serving.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds an expiry to the wheel, waking the purge task if it is now the
    /// earliest.
    fn schedule(&self, state: &mut State, when: Instant, key: Expiry) {
        let earliest = state.expirations.first().is_none_or(|(w, _)| when < *w);
        state.expirations.insert((when, key));
        if earliest {
            self.shared.wake.notify_one();
        }
    }
}

impl Shared {
    fn fan_out(&self, update: &PresenceUpdate) {
        let sinks = self
            .sinks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for sink in sinks.iter() {
            sink.deliver(update);
        }
    }
}

/// The single purge task: sleeps until the earliest deadline, removes what
/// expired, and publishes one update per expired entry.
async fn purge_task(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        // Gone once every `MemoryBackend` clone was dropped.
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let (updates, next) = {
            let mut state = strong
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.purge(Instant::now())
        };
        for update in &updates {
            strong.fan_out(update);
        }
        // Not holding a strong reference while asleep lets the backend be
        // dropped; `notify_one` keeps a permit, so a wake-up sent between
        // the purge above and the wait below is not lost.
        drop(strong);
        match next {
            Some(next) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn attach(&self, sink: Arc<dyn UpdateSink>) -> BackendResult<()> {
        self.shared
            .sinks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(sink);
        Ok(())
    }

    async fn publish(&self, update: PresenceUpdate) -> BackendResult<()> {
        self.shared.fan_out(&update);
        Ok(())
    }

    async fn join_room(&self, room: &str, conn: &str) -> BackendResult<bool> {
        let mut state = self.state();
        let added = state
            .rooms
            .entry(room.to_string())
            .or_default()
            .members
            .insert(conn.to_string());
        state.changed(room);
        state
            .conn_rooms
            .entry(conn.to_string())
            .or_default()
            .insert(room.to_string());
        Ok(added)
    }

    async fn leave_room(&self, room: &str, conn: &str) -> BackendResult<bool> {
        let mut state = self.state();
        let removed = state
            .rooms
            .get_mut(room)
            .is_some_and(|r| r.members.remove(conn));
        state.changed(room);
        if let Some(rooms) = state.conn_rooms.get_mut(conn) {
            rooms.remove(room);
            if rooms.is_empty() {
                state.conn_rooms.remove(conn);
            }
        }
        state.tidy(room);
        Ok(removed)
    }

    async fn room_members(&self, room: &str) -> BackendResult<Vec<String>> {
        let state = self.state();
        Ok(state
            .rooms
            .get(room)
            .map(|r| r.members.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn room_size(&self, room: &str) -> BackendResult<usize> {
        Ok(self.state().rooms.get(room).map_or(0, |r| r.members.len()))
    }

    async fn members_snapshot(&self, room: &str) -> BackendResult<Bytes> {
        let mut state = self.state();
        let State {
            rooms, metadata, ..
        } = &mut *state;
        Ok(rooms.get_mut(room).map_or(EMPTY_LIST, |r| {
            member_list(&mut r.snapshots.members, r.members.iter(), metadata)
        }))
    }

    async fn present_snapshot(&self, room: &str) -> BackendResult<Bytes> {
        let mut state = self.state();
        let State {
            rooms, metadata, ..
        } = &mut *state;
        Ok(rooms.get_mut(room).map_or(EMPTY_LIST, |r| {
            member_list(&mut r.snapshots.present, r.present.keys(), metadata)
        }))
    }

    async fn states_snapshot(&self, room: &str) -> BackendResult<Bytes> {
        let mut state = self.state();
        let Some(r) = state.rooms.get_mut(room) else {
            return Ok(Bytes::from_static(b"{}"));
        };
        let snapshot = r.snapshots.states.get_or_insert_with(|| {
            let states: HashMap<&str, &Value> =
                r.states.iter().map(|(c, (v, _))| (c.as_str(), v)).collect();
            Bytes::from(serde_json::to_vec(&states).unwrap_or_default())
        });
        Ok(snapshot.clone())
    }

    async fn connection_rooms(&self, conn: &str) -> BackendResult<Vec<String>> {
        let state = self.state();
        Ok(state
            .conn_rooms
            .get(conn)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn mark_present(
        &self,
        room: &str,
        conn: &str,
        ttl: Option<Duration>,
    ) -> BackendResult<bool> {
        let mut state = self.state();
        let when = ttl.map(|ttl| Instant::now() + ttl);
        let old = state
            .rooms
            .entry(room.to_string())
            .or_default()
            .present
            .insert(conn.to_string(), when);
        let key = || Expiry::Presence {
            room: room.to_string(),
            conn: conn.to_string(),
        };
        if let Some(old_when) = old {
            state.cancel(old_when, key());
        } else {
            state.changed(room);
        }
        if let Some(when) = when {
            self.schedule(&mut state, when, key());
        }
        Ok(old.is_none())
    }

    async fn refresh_presence(&self, room: &str, conn: &str, ttl: Duration) -> BackendResult<bool> {
        let mut state = self.state();
        let when = Instant::now() + ttl;
        let Some(slot) = state
            .rooms
            .get_mut(room)
            .and_then(|r| r.present.get_mut(conn))
        else {
            return Ok(false);
        };
        let old = slot.replace(when);
        let key = || Expiry::Presence {
            room: room.to_string(),
            conn: conn.to_string(),
        };
        state.cancel(old, key());
        self.schedule(&mut state, when, key());
        Ok(true)
    }

    async fn mark_absent(&self, room: &str, conn: &str) -> BackendResult<bool> {
        let mut state = self.state();
        let Some(r) = state.rooms.get_mut(room) else {
            return Ok(false);
        };
        let was = r.present.remove(conn);
        let old_state = r.states.remove(conn);
        r.snapshots = Snapshots::default();
        if let Some(when) = was {
            state.cancel(
                when,
                Expiry::Presence {
                    room: room.to_string(),
                    conn: conn.to_string(),
                },
            );
        }
        if let Some((_, when)) = old_state {
            state.cancel(
                when,
                Expiry::State {
                    room: room.to_string(),
                    conn: conn.to_string(),
                },
            );
        }
        state.tidy(room);
        Ok(was.is_some())
    }

    async fn present(&self, room: &str) -> BackendResult<Vec<String>> {
        let state = self.state();
        Ok(state
            .rooms
            .get(room)
            .map(|r| r.present.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn set_state(
        &self,
        room: &str,
        conn: &str,
        value: Value,
        expire_after: Option<Duration>,
    ) -> BackendResult<bool> {
        let mut state = self.state();
        let when = expire_after.map(|d| Instant::now() + d);
        let Some(r) = state.rooms.get_mut(room) else {
            return Ok(false);
        };
        if !r.present.contains_key(conn) {
            return Ok(false);
        }
        let old = r.states.insert(conn.to_string(), (value, when));
        r.snapshots = Snapshots::default();
        let key = || Expiry::State {
            room: room.to_string(),
            conn: conn.to_string(),
        };
        if let Some((_, old_when)) = old {
            state.cancel(old_when, key());
        }
        if let Some(when) = when {
            self.schedule(&mut state, when, key());
        }
        Ok(true)
    }

    async fn clear_state(&self, room: &str, conn: &str) -> BackendResult<bool> {
        let mut state = self.state();
        let Some(old) = state
            .rooms
            .get_mut(room)
            .and_then(|r| r.states.remove(conn))
        else {
            return Ok(false);
        };
        state.changed(room);
        state.cancel(
            old.1,
            Expiry::State {
                room: room.to_string(),
                conn: conn.to_string(),
            },
        );
        state.tidy(room);
        Ok(true)
    }

    async fn states(&self, room: &str) -> BackendResult<Map<String, Value>> {
        let state = self.state();
        Ok(state
            .rooms
            .get(room)
            .map(|r| {
                r.states
                    .iter()
                    .map(|(conn, (value, _))| (conn.clone(), value.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn set_metadata(
        &self,
        conn: &str,
        value: Value,
        strategy: Strategy,
        max_bytes: Option<usize>,
    ) -> BackendResult<Value> {
        let mut state = self.state();
        let old = state.metadata.get(conn).cloned();
        let new = strategy.apply(old, value);
        if max_bytes.is_some() {
            check_len(json_len(&new), max_bytes)?;
        }
        state.metadata.insert(conn.to_string(), new.clone());
        state.metadata_changed(conn);
        Ok(new)
    }

    async fn get_metadata(&self, conn: &str) -> BackendResult<Option<Value>> {
        Ok(self.state().metadata.get(conn).cloned())
    }

    async fn get_metadata_many(&self, conns: &[String]) -> BackendResult<Vec<Option<Value>>> {
        let state = self.state();
        Ok(conns
            .iter()
            .map(|c| state.metadata.get(c).cloned())
            .collect())
    }

    async fn remove_metadata(&self, conn: &str) -> BackendResult<()> {
        let mut state = self.state();
        state.metadata.remove(conn);
        state.metadata_changed(conn);
        Ok(())
    }

    async fn set_room_metadata(
        &self,
        room: &str,
        value: Value,
        strategy: Strategy,
    ) -> BackendResult<Value> {
        let mut state = self.state();
        let old = state.room_metadata.remove(room);
        let new = strategy.apply(old, value);
        state.room_metadata.insert(room.to_string(), new.clone());
        Ok(new)
    }

    async fn get_room_metadata(&self, room: &str) -> BackendResult<Option<Value>> {
        Ok(self.state().room_metadata.get(room).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::sync::mpsc;

    struct ChannelSink(mpsc::UnboundedSender<PresenceUpdate>);

    impl UpdateSink for ChannelSink {
        fn deliver(&self, update: &PresenceUpdate) {
            let _ = self.0.send(update.clone());
        }
    }

    async fn backend_with_sink() -> (MemoryBackend, mpsc::UnboundedReceiver<PresenceUpdate>) {
        let backend = MemoryBackend::new();
        let (tx, rx) = mpsc::unbounded_channel();
        backend.attach(Arc::new(ChannelSink(tx))).await.unwrap();
        (backend, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn state_expiry_publishes_one_null() {
        let (b, mut rx) = backend_with_sink().await;
        b.mark_present("r", "c1", None).await.unwrap();
        assert!(b
            .set_state("r", "c1", json!({"s": 1}), Some(Duration::from_millis(50)))
            .await
            .unwrap());
        let update = rx.recv().await.unwrap();
        assert!(matches!(
            update,
            PresenceUpdate::State { state: None, ref connection_id, .. } if connection_id == "c1"
        ));
        assert!(b.states("r").await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(rx.try_recv().is_err(), "expiry must be announced once");
        assert!(b.shared.state.lock().unwrap().expirations.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn replacing_a_state_cancels_its_expiry() {
        let (b, mut rx) = backend_with_sink().await;
        b.mark_present("r", "c1", None).await.unwrap();
        b.set_state("r", "c1", json!({"s": 1}), Some(Duration::from_millis(50)))
            .await
            .unwrap();
        b.set_state("r", "c1", json!({"s": 2}), None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(b.states("r").await.unwrap()["c1"], json!({"s": 2}));
    }

    #[tokio::test(start_paused = true)]
    async fn presence_ttl_lapses_unless_refreshed() {
        let (b, mut rx) = backend_with_sink().await;
        let ttl = Duration::from_millis(100);
        b.mark_present("r", "keep", Some(ttl)).await.unwrap();
        b.mark_present("r", "drop", Some(ttl)).await.unwrap();
        b.set_state("r", "drop", json!({"x": 1}), Some(Duration::from_secs(60)))
            .await
            .unwrap();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert!(b.refresh_presence("r", "keep", ttl).await.unwrap());
        }
        let update = rx.recv().await.unwrap();
        assert!(matches!(
            update,
            PresenceUpdate::Leave { ref connection_id, .. } if connection_id == "drop"
        ));
        assert_eq!(b.present("r").await.unwrap(), vec!["keep".to_string()]);
        // The lapsed member's state went with it, expiry included.
        assert!(b.states("r").await.unwrap().is_empty());
        assert!(!b.refresh_presence("r", "drop", ttl).await.unwrap());
        // Only `keep`'s own TTL is left on the wheel.
        assert_eq!(b.shared.state.lock().unwrap().expirations.len(), 1);
    }

    #[tokio::test]
    async fn membership_and_metadata() {
        let b = MemoryBackend::new();
        assert!(b.join_room("r", "c1").await.unwrap());
        assert!(!b.join_room("r", "c1").await.unwrap());
        assert_eq!(b.connection_rooms("c1").await.unwrap(), vec!["r"]);
        assert!(b.leave_room("r", "c1").await.unwrap());
        assert!(!b.leave_room("r", "c1").await.unwrap());
        assert!(b.shared.state.lock().unwrap().rooms.is_empty());

        assert_eq!(b.get_metadata("c1").await.unwrap(), None);
        b.set_metadata("c1", json!({"a": {"x": 1}}), Strategy::Replace, None)
            .await
            .unwrap();
        let merged = b
            .set_metadata("c1", json!({"a": {"y": 2}}), Strategy::DeepMerge, None)
            .await
            .unwrap();
        assert_eq!(merged, json!({"a": {"x": 1, "y": 2}}));
        b.remove_metadata("c1").await.unwrap();
        assert_eq!(b.get_metadata("c1").await.unwrap(), None);
    }
}
