//! [`Presence`]: the user list of one room, and your own state kept across
//! restarts and reconnects (what `createPresence` is in JavaScript).
//!
//! The handle joins the room, builds the first user list from the
//! snapshot, and hands the grouping engine to its driver task
//! ([`super::driver`]), which keeps the list current. The handle talks to
//! the client directly for publishing and to the driver only to stop it.

use super::changed_at::{changed_at, stamp};
use super::diff::{UserDiffs, UsersDiff, DIFF_BUFFER};
use super::driver::{self, Start};
use super::engine::{PresenceEngine, User, UserEvent};
use super::group_key::GroupKey;
use super::store::{StateStore, StoreError};
use crate::{ClientError, MeshClient};
use mesh_protocol::{now_millis, validate_room_name, DEFAULT_MAX_STATE_BYTES};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::warn;

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
    /// Hands the driver the sender of each new [`UserDiffs`].
    subscribe: mpsc::UnboundedSender<mpsc::Sender<UsersDiff>>,
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
        // The first take is the whole list; the driver patches it from then on.
        let mut first = Vec::new();
        engine.take_changes().apply_to_list(&mut first);
        let (users_tx, users) = watch::channel(first);
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
        let (subscribe, subscribe_rx) = mpsc::unbounded_channel();
        let driver = driver::spawn(
            Start {
                client: client.clone(),
                room: room.to_string(),
                storage_key: storage_key.to_string(),
                store: store.clone(),
                options: options.clone(),
                group_key,
                engine,
                own_changed_at: own_changed_at.clone(),
                users_tx,
                events_tx: events.clone(),
                subscribe: subscribe_rx,
            },
            stream,
            stop_rx,
        );
        Ok(Presence {
            client,
            room: room.to_string(),
            storage_key: storage_key.to_string(),
            store,
            options,
            own_changed_at,
            users,
            events,
            subscribe,
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

    /// The user list as diffs, as Phoenix Presence sends `presence_state`
    /// then `presence_diff`: the full list first (and again after a
    /// reconnect's resync, or when this subscriber fell behind), then, per
    /// emission, the users who came or changed and the ids of those who
    /// left. Cheaper than [`Presence::users`] for a consumer that keeps its
    /// own copy: an emission costs the users that changed, not the room.
    pub fn diffs(&self) -> UserDiffs {
        let (tx, rx) = mpsc::channel(DIFF_BUFFER);
        // When the driver has stopped, `tx` is dropped with the message and
        // the stream ends at once.
        let _ = self.subscribe.send(tx);
        UserDiffs::new(rx)
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
