//! [`Presence`]: the user list of one room, and your own state kept across
//! restarts and reconnects (what `createPresence` is in JavaScript).
//!
//! One task (the *driver*) owns the grouping engine. It reads the room's
//! presence stream and the client's events, resolves group keys in spawned
//! tasks (so a slow lookup never stalls updates), and publishes the sorted
//! user list through a `watch` channel at most once per `emit_interval`.
//! The [`Presence`] handle talks to the client directly for publishing and
//! to the driver only to stop it.

use super::changed_at::{changed_at, stamp};
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
    /// After a reconnect, how long a person who was here keeps their row
    /// (with 0 tabs and their last state) while they reconnect too (15 s).
    pub reconnect_grace: Duration,
}

impl Default for PresenceOptions {
    fn default() -> Self {
        PresenceOptions {
            emit_interval: Duration::from_millis(16),
            republish_jitter: Duration::from_millis(250),
            expire_after: None,
            resolve_timeout: Duration::from_secs(5),
            resolve_retry_after: Duration::from_secs(1),
            reconnect_grace: Duration::from_secs(15),
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
    /// When the state this connection holds was changed (its `changedAt`,
    /// ms). Another tab's state is adopted only when changed later, so two
    /// tabs never ping-pong, and a new change is stamped after it, so it
    /// wins even when this clock is behind another device's.
    own_changed_at: Arc<AtomicU64>,
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
        engine.reset(present, std::mem::take(&mut snapshot.states));
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
        let own_changed_at = Arc::new(AtomicU64::new(0));

        // Republished as it was saved, `changedAt` included: it is no newer
        // a change for having been away.
        if let Some(state) = saved {
            own_changed_at.fetch_max(changed_at(&state).unwrap_or(0), Ordering::SeqCst);
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
            own_changed_at: own_changed_at.clone(),
            users_tx,
            events_tx: events.clone(),
            resolutions_tx,
            resolutions,
            flush_at: None,
            last_flush: Instant::now(),
            republish_at: None,
            keep_until: None,
        };
        let client_events = client.events();
        let driver = tokio::spawn(driver.run(stream, client_events, stop_rx));
        Ok(Presence {
            client,
            room: room.to_string(),
            storage_key: storage_key.to_string(),
            store,
            options,
            own_changed_at,
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
    /// connection's presence state. It is a change made now: it gets a
    /// `changedAt` of now (and later than any state of yours this presence
    /// has seen), so it wins over every earlier one. Returns the state as
    /// published, `changedAt` included.
    pub async fn publish(&self, state: Value) -> Result<Value, PresenceError> {
        let at = next_change(&self.own_changed_at);
        self.publish_changed(state, at).await
    }

    /// [`publish`](Self::publish) for a state its owner changed at
    /// `changed_at` (ms since the epoch), such as one brought back from a
    /// saved copy: it does not win over a change made since.
    pub async fn publish_as_of(
        &self,
        state: Value,
        changed_at: u64,
    ) -> Result<Value, PresenceError> {
        self.publish_changed(state, changed_at).await
    }

    async fn publish_changed(&self, mut state: Value, at: u64) -> Result<Value, PresenceError> {
        stamp(&mut state, at);
        check_state(&state)?;
        self.store.set(&self.storage_key, &state)?;
        self.own_changed_at.fetch_max(at, Ordering::SeqCst);
        let published = self
            .client
            .publish_presence_state(&self.room, state.clone(), self.options.expire_after, false)
            .await?;
        if !published {
            return Err(PresenceError::Refused {
                action: "publish in",
                room: self.room.clone(),
            });
        }
        Ok(state)
    }

    /// The state saved under this presence's storage key.
    pub fn read(&self) -> Result<Option<Value>, PresenceError> {
        Ok(self.store.get(&self.storage_key)?)
    }

    /// Forgets the saved state and clears it on the server; your other
    /// tabs follow. A clear carries no `changedAt` (there is no state to
    /// hold it): it counts as made when the server handles it, so after a
    /// clear made offline, an older state of another device of yours can
    /// come back. Publish an empty status instead when it must win.
    pub async fn clear(&self) -> Result<(), PresenceError> {
        self.store.remove(&self.storage_key)?;
        next_change(&self.own_changed_at);
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

/// The `changedAt` of a change made now: the clock, but after `held` (the
/// state we hold), which it then becomes.
fn next_change(held: &AtomicU64) -> u64 {
    let now = now_millis();
    let after = |held: u64| now.max(held.saturating_add(1));
    let before = held
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| Some(after(h)))
        .unwrap_or_else(|h| h);
    after(before)
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
    own_changed_at: Arc<AtomicU64>,
    users_tx: watch::Sender<Vec<User>>,
    events_tx: broadcast::Sender<UserEvent>,
    resolutions_tx: mpsc::UnboundedSender<Resolution>,
    resolutions: mpsc::UnboundedReceiver<Resolution>,
    flush_at: Option<Instant>,
    last_flush: Instant,
    republish_at: Option<Instant>,
    /// When the grace of a person kept over a reconnect ends.
    keep_until: Option<Instant>,
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
                        self.engine.reset(std::iter::empty::<&str>(), Map::new());
                        self.keep_until = None;
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
                () = sleep_until_some(self.keep_until) => {
                    self.engine.expire(now_millis());
                    self.schedule_expiry();
                }
            }
        };
        if dropped {
            // The handle was dropped without `dispose`: leave on its behalf.
            let _ = self.client.unsubscribe_presence(&self.room).await;
            let _ = self.client.leave_room(&self.room).await;
        }
    }

    /// Keeps the tabs in step, schedules an emission if something visible
    /// changed, and starts lookups for connections whose key is unknown.
    fn after_input(&mut self) {
        self.sync_tabs();
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
        self.engine.apply(update);
    }

    /// Tab sync: when our user's state was sent by another connection of
    /// ours and changed later than the one we hold, adopt it: save it
    /// (unless the store has it already, as windows sharing a store do) and
    /// hold it on our connection too, silently, so no update goes out, the
    /// other tab hears nothing back and nothing loops. Holding it matters:
    /// a newcomer's snapshot lists every connection's state.
    fn sync_tabs(&mut self) {
        let Some(me) = self.my_id.as_deref() else {
            return;
        };
        let Some(mine) = self.engine.user_of(me) else {
            return;
        };
        // No sender: it left, or the state is kept over a reconnect.
        let Some(latest) = self.engine.latest(mine) else {
            return;
        };
        let at = latest.changed_at;
        let Some(from) = latest.sender else {
            return;
        };
        if **from == *me || at <= self.own_changed_at.load(Ordering::SeqCst) {
            return;
        }
        let state = latest.state.map(|s| (**s).clone());
        self.own_changed_at.fetch_max(at, Ordering::SeqCst);
        let saved = match self.store.get(&self.storage_key) {
            Ok(saved) => saved,
            Err(e) => {
                warn!(error = %e, "tab sync: cannot read the saved state");
                None
            }
        };
        // Never over a later change another window saved meanwhile.
        let save = match &saved {
            Some(saved) => state.as_ref() != Some(saved) && changed_at(saved).unwrap_or(0) <= at,
            None => state.is_some(),
        };
        let (client, room) = (self.client.clone(), self.room.clone());
        let written = match state {
            Some(state) => {
                let saved = if save {
                    self.store.set(&self.storage_key, &state)
                } else {
                    Ok(())
                };
                let expire_after = self.options.expire_after;
                tokio::spawn(async move {
                    if let Err(e) = client
                        .publish_presence_state(&room, state, expire_after, true)
                        .await
                    {
                        warn!(room, error = %e, "tab sync: silent publish failed");
                    }
                });
                saved
            }
            None => {
                tokio::spawn(async move {
                    if let Err(e) = client.clear_presence_state(&room).await {
                        warn!(room, error = %e, "tab sync: clearing failed");
                    }
                });
                if save {
                    self.store.remove(&self.storage_key)
                } else {
                    Ok(())
                }
            }
        };
        if let Err(e) = written {
            warn!(error = %e, "tab sync: cannot save the adopted state");
        }
    }

    /// After a reconnect: rebuild from the snapshot, keeping those who were
    /// here for the grace period (they may be reconnecting too).
    fn on_resync(&mut self, present: &[String], states: Map<String, Value>) {
        let until = self.grace_end();
        let new_id = self.client.connection_id();
        let old_id = self
            .my_id
            .as_ref()
            .filter(|&old| Some(old) != new_id.as_ref());
        // The snapshot may still list our former connections (the server
        // has not noticed they are gone): never a second row for us.
        let present = present
            .iter()
            .filter(|id| !self.former_ids.contains(id) && Some(*id) != old_id);
        self.engine.resync(present, states, until);
        self.on_new_id(new_id);
        self.schedule_expiry();
    }

    /// When the grace of someone kept over a reconnect now would end.
    fn grace_end(&self) -> u64 {
        now_millis().saturating_add(self.options.reconnect_grace.as_millis() as u64)
    }

    /// Wakes the driver when the earliest grace ends.
    fn schedule_expiry(&mut self) {
        self.keep_until = self.engine.next_deadline().map(|at| {
            // One ms late rather than early: the engine compares ms.
            let wait = at.saturating_sub(now_millis()).saturating_add(1);
            Instant::now() + Duration::from_millis(wait)
        });
    }

    /// After a reconnect: forget our old connection at once (the server may
    /// still list it until it notices it is gone) and schedule the
    /// republication of our saved state.
    fn on_new_id(&mut self, id: Option<String>) {
        if id.is_none() || id == self.my_id {
            return;
        }
        if let Some(old) = self.my_id.take() {
            // Our row stays while we come back.
            let until = self.grace_end();
            self.engine.leave_keeping(&old, until);
            self.schedule_expiry();
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
        // As saved, `changedAt` included: not a new change.
        let at = changed_at(&saved).unwrap_or(0);
        self.own_changed_at.fetch_max(at, Ordering::SeqCst);
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
