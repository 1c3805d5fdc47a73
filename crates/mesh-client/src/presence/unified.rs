//! [`Presence`]: the user list of one room, and your own state kept across
//! restarts and reconnects (what `createPresence` is in JavaScript).
//!
//! One task (the *driver*) owns the grouping engine. It reads the room's
//! presence stream and the client's events, resolves group keys in spawned
//! tasks (so a slow lookup never stalls updates), and publishes the sorted
//! user list through a `watch` channel at most once per `emit_interval`.
//! The [`Presence`] handle talks to the client directly for publishing and
//! to the driver only to stop it.

use super::engine::{PresenceEngine, User, UserEvent};
use super::group_key::GroupKey;
use super::store::{StateStore, StoreError};
use crate::{ClientError, ClientEvent, MeshClient, PresenceEvent, PresenceStream};
use futures_util::future::join_all;
use mesh_protocol::{now_millis, validate_room_name, PresenceUpdate, DEFAULT_MAX_STATE_BYTES};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How many of our own former connection ids a presence remembers.
const FORMER_IDS_KEPT: usize = 8;
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, warn};

/// Tuning of a [`Presence`]; `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct PresenceOptions {
    /// Least time between two user-list emissions (16 ms, one frame).
    pub emit_interval: Duration,
    /// After a reconnect, your saved state is republished after a random
    /// delay up to this (250 ms), so a whole room reconnecting at once does
    /// not stampede the server.
    pub republish_jitter: Duration,
    /// Published states expire after this many milliseconds (`None`: never).
    pub expire_after: Option<u64>,
    /// Longest wait for one batch of key lookups (5 s); a lookup that fails
    /// or times out leaves the connection standing alone under its own id.
    pub resolve_timeout: Duration,
    /// Failed lookups are tried once more after this delay (1 s).
    pub resolve_retry_after: Duration,
}

impl Default for PresenceOptions {
    fn default() -> Self {
        PresenceOptions {
            emit_interval: Duration::from_millis(16),
            republish_jitter: Duration::from_millis(250),
            expire_after: None,
            resolve_timeout: Duration::from_secs(5),
            resolve_retry_after: Duration::from_secs(1),
        }
    }
}

/// Why a [`Presence`] call failed.
#[derive(Debug, Error)]
pub enum PresenceError {
    /// The client call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The state store failed; the state was not published.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server answered `false` (room not tracked, guarded, or not joined).
    #[error("the server refused to {action} room {room:?}")]
    Refused {
        /// What was refused: `"join"`, `"subscribe to"`, `"publish in"`.
        action: &'static str,
        /// The room.
        room: String,
    },
    /// The state is not one the protocol accepts; nothing was saved.
    #[error("invalid presence state: {0}")]
    InvalidState(String),
    /// The room name is not valid.
    #[error("invalid room name: {0}")]
    InvalidRoom(String),
}

/// The people in one room, and your own presence state in it.
///
/// Created with [`Presence::new`]; see the [module documentation](super)
/// for an example. Dropping it stops it and leaves the room in the
/// background; [`Presence::dispose`] does the same and waits.
pub struct Presence {
    client: MeshClient,
    room: String,
    storage_key: String,
    store: Arc<dyn StateStore>,
    options: PresenceOptions,
    /// Timestamp (ms) of the newest state of ours: set when we publish and
    /// when our own update comes back. Another tab's state is adopted only
    /// when newer than this, so two tabs never ping-pong.
    own_state_ts: Arc<AtomicU64>,
    users: watch::Receiver<Vec<User>>,
    events: broadcast::Sender<UserEvent>,
    stop: Option<oneshot::Sender<()>>,
    driver: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("room", &self.room)
            .field("storage_key", &self.storage_key)
            .field("options", &self.options)
            .finish()
    }
}

impl Presence {
    /// Joins `room`, subscribes to its presence, builds the user list from
    /// the snapshot, and republishes the state saved under `storage_key`
    /// in `store`, if any. Uses [`PresenceOptions::default`].
    pub async fn new(
        client: MeshClient,
        room: &str,
        storage_key: &str,
        group_key: GroupKey,
        store: Arc<dyn StateStore>,
    ) -> Result<Presence, PresenceError> {
        Self::with_options(
            client,
            room,
            storage_key,
            group_key,
            store,
            PresenceOptions::default(),
        )
        .await
    }

    /// [`Presence::new`] with explicit options.
    pub async fn with_options(
        client: MeshClient,
        room: &str,
        storage_key: &str,
        group_key: GroupKey,
        store: Arc<dyn StateStore>,
        options: PresenceOptions,
    ) -> Result<Presence, PresenceError> {
        validate_room_name(room).map_err(PresenceError::InvalidRoom)?;
        // Read the saved state first: a broken store should fail before we
        // touch the room.
        let saved = store.get(storage_key)?;
        let joined = client.join_room(room).await?;
        if !joined.success {
            return Err(PresenceError::Refused {
                action: "join",
                room: room.to_string(),
            });
        }
        let (mut snapshot, stream) = client.subscribe_presence(room).await?;
        if !snapshot.success {
            let _ = client.leave_room(room).await;
            return Err(PresenceError::Refused {
                action: "subscribe to",
                room: room.to_string(),
            });
        }

        let mut engine = PresenceEngine::new(group_key.key_source());
        let present = snapshot.present.iter().map(|m| m.id.as_str());
        engine.reset(present, std::mem::take(&mut snapshot.states), now_millis());
        if let GroupKey::Metadata(key_of) = &group_key {
            // The subscribe reply carries metadata: no lookups for these.
            // (A bare id from another server has `null`; it is looked up.)
            for member in snapshot.present.iter().filter(|m| !m.metadata.is_null()) {
                engine.resolve(&member.id, key_of(&member.metadata));
            }
        }
        engine.take_events();
        engine.take_dirty();
        let (users_tx, users) = watch::channel(engine.users());
        let (events, _) = broadcast::channel(256);
        let own_state_ts = Arc::new(AtomicU64::new(0));

        if let Some(state) = saved {
            own_state_ts.fetch_max(now_millis(), Ordering::SeqCst);
            match client
                .publish_presence_state(room, state, options.expire_after, false)
                .await
            {
                Ok(true) => {}
                Ok(false) => warn!(room, "the server refused the saved presence state"),
                Err(e) => warn!(room, error = %e, "republishing the saved presence state failed"),
            }
        }

        let (stop, stop_rx) = oneshot::channel();
        let (resolutions_tx, resolutions) = mpsc::unbounded_channel();
        let driver = Driver {
            client: client.clone(),
            room: room.to_string(),
            storage_key: storage_key.to_string(),
            store: store.clone(),
            options: options.clone(),
            group_key,
            engine,
            my_id: client.connection_id(),
            former_ids: VecDeque::new(),
            own_state_ts: own_state_ts.clone(),
            users_tx,
            events_tx: events.clone(),
            resolutions_tx,
            resolutions,
            flush_at: None,
            last_flush: Instant::now(),
            republish_at: None,
        };
        let client_events = client.events();
        let driver = tokio::spawn(driver.run(stream, client_events, stop_rx));
        Ok(Presence {
            client,
            room: room.to_string(),
            storage_key: storage_key.to_string(),
            store,
            options,
            own_state_ts,
            users,
            events,
            stop: Some(stop),
            driver: Some(driver),
        })
    }

    /// The room.
    pub fn room(&self) -> &str {
        &self.room
    }

    /// The user list, sorted by user id, updated at most once per
    /// `emit_interval`. `borrow()` it for the current list, `changed()` to
    /// wait for the next one.
    pub fn users(&self) -> watch::Receiver<Vec<User>> {
        self.users.clone()
    }

    /// Calls `f` with every new user list (coalesced as [`Presence::users`]),
    /// from a task of its own, until this presence stops. The list is a
    /// copy, so a slow callback never holds up the presence task.
    pub fn on_users(&self, mut f: impl FnMut(&[User]) + Send + 'static) -> JoinHandle<()> {
        let mut users = self.users();
        tokio::spawn(async move {
            while users.changed().await.is_ok() {
                let list = users.borrow_and_update().clone();
                f(&list);
            }
        })
    }

    /// User-level events (joined, left, updated), delivered with each
    /// user-list emission.
    pub fn events(&self) -> broadcast::Receiver<UserEvent> {
        self.events.subscribe()
    }

    /// Saves `state` (a JSON object), then publishes it as this
    /// connection's presence state.
    pub async fn publish(&self, state: Value) -> Result<(), PresenceError> {
        check_state(&state)?;
        self.store.set(&self.storage_key, &state)?;
        self.own_state_ts.fetch_max(now_millis(), Ordering::SeqCst);
        let published = self
            .client
            .publish_presence_state(&self.room, state, self.options.expire_after, false)
            .await?;
        if !published {
            return Err(PresenceError::Refused {
                action: "publish in",
                room: self.room.clone(),
            });
        }
        Ok(())
    }

    /// The state saved under this presence's storage key.
    pub fn read(&self) -> Result<Option<Value>, PresenceError> {
        Ok(self.store.get(&self.storage_key)?)
    }

    /// Forgets the saved state and clears it on the server.
    pub async fn clear(&self) -> Result<(), PresenceError> {
        self.store.remove(&self.storage_key)?;
        self.own_state_ts.fetch_max(now_millis(), Ordering::SeqCst);
        self.client.clear_presence_state(&self.room).await?;
        Ok(())
    }

    /// Stops tracking, unsubscribes and leaves the room. The saved state
    /// stays in the store for next time.
    pub async fn dispose(mut self) -> Result<(), PresenceError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(driver) = self.driver.take() {
            let _ = driver.await;
        }
        self.client.unsubscribe_presence(&self.room).await?;
        self.client.leave_room(&self.room).await?;
        Ok(())
    }
}

/// A presence state must be a JSON object within the protocol's size limit.
fn check_state(state: &Value) -> Result<(), PresenceError> {
    if !state.is_object() {
        return Err(PresenceError::InvalidState(
            "a presence state must be a JSON object".into(),
        ));
    }
    let size = serde_json::to_vec(state).map(|v| v.len()).unwrap_or(0);
    if size > DEFAULT_MAX_STATE_BYTES {
        return Err(PresenceError::InvalidState(format!(
            "state is {size} bytes; the limit is {DEFAULT_MAX_STATE_BYTES}"
        )));
    }
    Ok(())
}

/// The outcome of one batch of key lookups.
struct Resolution {
    keys: Vec<(String, Result<Option<String>, String>)>,
    attempt: u32,
}

/// The task that owns the engine.
struct Driver {
    client: MeshClient,
    room: String,
    storage_key: String,
    store: Arc<dyn StateStore>,
    options: PresenceOptions,
    group_key: GroupKey,
    engine: PresenceEngine,
    my_id: Option<String>,
    /// Our connection ids from before the latest reconnects. A snapshot can
    /// still list them (the server has not noticed the old socket is gone),
    /// and whichever of `Resync` and `Reconnected` we see first, they must
    /// never come back as a second row for us.
    former_ids: VecDeque<String>,
    own_state_ts: Arc<AtomicU64>,
    users_tx: watch::Sender<Vec<User>>,
    events_tx: broadcast::Sender<UserEvent>,
    resolutions_tx: mpsc::UnboundedSender<Resolution>,
    resolutions: mpsc::UnboundedReceiver<Resolution>,
    flush_at: Option<Instant>,
    last_flush: Instant,
    republish_at: Option<Instant>,
}

/// Sleeps until `at`, or forever when there is nothing scheduled.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(
        mut self,
        mut stream: PresenceStream,
        mut client_events: broadcast::Receiver<ClientEvent>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut client_events_open = true;
        let dropped = loop {
            self.after_input();
            tokio::select! {
                stopped = &mut stop => break stopped.is_err(),
                event = stream.recv() => match event {
                    Some(PresenceEvent::Update(update)) => self.on_update(update),
                    Some(PresenceEvent::Resync { present, states, .. }) => {
                        self.on_resync(&present, states)
                    }
                    None => {
                        // The subscription is over (client closed or gave
                        // up): what we knew is no longer true.
                        debug!(room = self.room, "presence stream ended");
                        self.engine.reset(std::iter::empty::<&str>(), Map::new(), now_millis());
                        self.flush();
                        // Wait for the handle to go; nothing else will come.
                        break (&mut stop).await.is_err();
                    }
                },
                event = client_events.recv(), if client_events_open => match event {
                    Ok(ClientEvent::Reconnected { id }) => self.on_new_id(Some(id)),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => client_events_open = false,
                },
                Some(resolution) = self.resolutions.recv() => self.on_resolution(resolution),
                () = sleep_until_some(self.flush_at) => self.flush(),
                () = sleep_until_some(self.republish_at) => self.republish(),
            }
        };
        if dropped {
            // The handle was dropped without `dispose`: leave on its behalf.
            let _ = self.client.unsubscribe_presence(&self.room).await;
            let _ = self.client.leave_room(&self.room).await;
        }
    }

    /// Schedules an emission if something visible changed, and starts
    /// lookups for connections whose key is unknown.
    fn after_input(&mut self) {
        if self.engine.take_dirty() && self.flush_at.is_none() {
            let earliest = self.last_flush + self.options.emit_interval;
            self.flush_at = Some(earliest.max(Instant::now()));
        }
        let unresolved = self.engine.take_unresolved();
        if !unresolved.is_empty() {
            self.spawn_resolution(unresolved, 0);
        }
    }

    fn flush(&mut self) {
        self.flush_at = None;
        self.last_flush = Instant::now();
        self.users_tx.send_replace(self.engine.users());
        for event in self.engine.take_events() {
            let _ = self.events_tx.send(event);
        }
    }

    fn on_update(&mut self, update: PresenceUpdate) {
        let state_from = match &update {
            PresenceUpdate::State {
                connection_id,
                timestamp,
                ..
            } => Some((connection_id.clone(), *timestamp)),
            _ => None,
        };
        self.engine.apply(update);
        if let Some((from, timestamp)) = state_from {
            self.sync_tabs(&from, timestamp);
        }
    }

    /// Tab sync: when another connection of the same user published a state
    /// newer than ours, adopt it silently (no update goes out, so the other
    /// tab hears nothing back and nothing loops) and save it.
    fn sync_tabs(&mut self, from: &str, timestamp: u64) {
        let Some(me) = self.my_id.as_deref() else {
            return;
        };
        if from == me {
            self.own_state_ts.fetch_max(timestamp, Ordering::SeqCst);
            return;
        }
        let (Some(mine), Some(theirs)) = (self.engine.user_of(me), self.engine.user_of(from))
        else {
            return;
        };
        if mine != theirs || timestamp <= self.own_state_ts.load(Ordering::SeqCst) {
            return;
        }
        let Some(user) = self.engine.user(mine) else {
            return;
        };
        if user.representative.as_deref() != Some(from) || user.timestamp != timestamp {
            return; // this update did not become the user's state
        }
        let state = user.state.map(|s| (*s).clone());
        let saved = match self.store.get(&self.storage_key) {
            Ok(saved) => saved,
            Err(e) => {
                warn!(error = %e, "tab sync: cannot read the saved state");
                return;
            }
        };
        if saved == state {
            return;
        }
        self.own_state_ts.fetch_max(timestamp, Ordering::SeqCst);
        let (client, room) = (self.client.clone(), self.room.clone());
        let written = match state {
            Some(state) => self.store.set(&self.storage_key, &state).map(|()| {
                let expire_after = self.options.expire_after;
                tokio::spawn(async move {
                    if let Err(e) = client
                        .publish_presence_state(&room, state, expire_after, true)
                        .await
                    {
                        warn!(room, error = %e, "tab sync: silent publish failed");
                    }
                });
            }),
            None => self.store.remove(&self.storage_key).map(|()| {
                tokio::spawn(async move {
                    if let Err(e) = client.clear_presence_state(&room).await {
                        warn!(room, error = %e, "tab sync: clearing failed");
                    }
                });
            }),
        };
        if let Err(e) = written {
            warn!(error = %e, "tab sync: cannot save the adopted state");
        }
    }

    fn on_resync(&mut self, present: &[String], states: Map<String, Value>) {
        self.engine.reset(present, states, now_millis());
        for old in &self.former_ids {
            self.engine.leave(old);
        }
        self.on_new_id(self.client.connection_id());
    }

    /// After a reconnect: forget our old connection at once (the server may
    /// still list it until it notices it is gone) and schedule the
    /// republication of our saved state.
    fn on_new_id(&mut self, id: Option<String>) {
        if id.is_none() || id == self.my_id {
            return;
        }
        if let Some(old) = self.my_id.take() {
            self.engine.leave(&old);
            // A handful is plenty: older ids are long gone from the server.
            if self.former_ids.len() == FORMER_IDS_KEPT {
                self.former_ids.pop_front();
            }
            self.former_ids.push_back(old);
        }
        self.my_id = id;
        let jitter = self.options.republish_jitter.mul_f64(rand::random::<f64>());
        self.republish_at = Some(Instant::now() + jitter);
    }

    fn republish(&mut self) {
        self.republish_at = None;
        let saved = match self.store.get(&self.storage_key) {
            Ok(Some(saved)) => saved,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "cannot read the saved state to republish it");
                return;
            }
        };
        self.own_state_ts.fetch_max(now_millis(), Ordering::SeqCst);
        let (client, room) = (self.client.clone(), self.room.clone());
        let expire_after = self.options.expire_after;
        tokio::spawn(async move {
            match client
                .publish_presence_state(&room, saved, expire_after, false)
                .await
            {
                Ok(true) => debug!(room, "saved presence state republished"),
                Ok(false) => warn!(room, "the server refused the saved presence state"),
                Err(e) => warn!(room, error = %e, "republishing the saved state failed"),
            }
        });
    }

    /// Looks up keys in a task of its own; the answer comes back on
    /// `resolutions`. Attempt 1 is the retry of failed lookups.
    fn spawn_resolution(&self, ids: Vec<String>, attempt: u32) {
        let (client, group_key) = (self.client.clone(), self.group_key.clone());
        let (tx, limit) = (self.resolutions_tx.clone(), self.options.resolve_timeout);
        let delay = if attempt > 0 {
            self.options.resolve_retry_after
        } else {
            Duration::ZERO
        };
        tokio::spawn(async move {
            if !delay.is_zero() {
                sleep(delay).await;
            }
            let keys = resolve_keys(&group_key, &client, ids, limit).await;
            let _ = tx.send(Resolution { keys, attempt });
        });
    }

    fn on_resolution(&mut self, resolution: Resolution) {
        let mut retry = Vec::new();
        for (id, key) in resolution.keys {
            match key {
                Ok(key) => self.engine.resolve(&id, key),
                Err(e) => {
                    // Shown alone for now rather than hidden; a later
                    // answer moves it under its user.
                    warn!(connection = id, error = e, "group key lookup failed");
                    self.engine.resolve(&id, None);
                    if resolution.attempt == 0 && self.engine.contains_connection(&id) {
                        retry.push(id);
                    }
                }
            }
        }
        if !retry.is_empty() {
            self.spawn_resolution(retry, resolution.attempt + 1);
        }
    }
}

/// Resolves the keys of `ids`, each within `limit`.
async fn resolve_keys(
    group_key: &GroupKey,
    client: &MeshClient,
    ids: Vec<String>,
    limit: Duration,
) -> Vec<(String, Result<Option<String>, String>)> {
    match group_key {
        GroupKey::Metadata(key_of) => {
            let lookups = ids
                .iter()
                .map(|id| timeout(limit, client.get_connection_metadata(id)));
            let answers = join_all(lookups).await;
            ids.into_iter()
                .zip(answers)
                .map(|(id, answer)| {
                    let key = match answer {
                        Ok(Ok(Value::Null)) => Ok(None),
                        Ok(Ok(metadata)) => Ok(key_of(&metadata)),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("metadata lookup timed out".to_string()),
                    };
                    (id, key)
                })
                .collect()
        }
        GroupKey::Resolver(resolve) => {
            let outcome: Result<HashMap<String, Option<String>>, String> =
                match timeout(limit, resolve(ids.clone())).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err("resolver timed out".to_string()),
                };
            ids.into_iter()
                .map(|id| {
                    let key = match &outcome {
                        Ok(keys) => Ok(keys.get(&id).cloned().flatten()),
                        Err(e) => Err(e.clone()),
                    };
                    (id, key)
                })
                .collect()
        }
        // State keys are never looked up.
        GroupKey::State(_) => ids.into_iter().map(|id| (id, Ok(None))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn states_are_checked_before_saving() {
        assert!(check_state(&json!({"status": "ok"})).is_ok());
        let err = check_state(&json!("busy")).unwrap_err();
        assert!(err.to_string().contains("JSON object"), "{err}");
        let big = json!({"blob": "x".repeat(DEFAULT_MAX_STATE_BYTES)});
        let err = check_state(&big).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    }
}
