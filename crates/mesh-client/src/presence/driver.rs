//! The driver of a [`Presence`](super::Presence): the one task that owns
//! the grouping engine. It reads the room's presence stream and the
//! client's events, resolves group keys in spawned tasks (so a slow lookup
//! never stalls updates), publishes the sorted user list through a `watch`
//! channel and its [diffs](super::diff) to each subscriber at most once per
//! `emit_interval`, keeps your tabs in step, and republishes your saved
//! state after a reconnect.

use super::changed_at::changed_at;
use super::diff::{DiffSubscriber, UsersDiff};
use super::engine::{PresenceEngine, User, UserEvent};
use super::group_key::GroupKey;
use super::store::StateStore;
use super::unified::PresenceOptions;
use crate::{ClientEvent, MeshClient, PresenceEvent, PresenceStream};
use futures_util::future::join_all;
use mesh_protocol::{now_millis, PresenceUpdate};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, warn};

/// How many of our own former connection ids a presence remembers.
const FORMER_IDS_KEPT: usize = 8;

/// What a driver starts from: the handle's settings, the engine built from
/// the first snapshot, and the channels the handle listens on.
pub(super) struct Start {
    pub client: MeshClient,
    pub room: String,
    pub storage_key: String,
    pub store: Arc<dyn StateStore>,
    pub options: PresenceOptions,
    pub group_key: GroupKey,
    pub engine: PresenceEngine,
    pub own_changed_at: Arc<AtomicU64>,
    pub users_tx: watch::Sender<Vec<User>>,
    pub events_tx: broadcast::Sender<UserEvent>,
    /// Each new [`UserDiffs`](super::UserDiffs)' sender.
    pub subscribe: mpsc::UnboundedReceiver<mpsc::Sender<UsersDiff>>,
}

/// Starts the driver on `stream`; it runs until `stop` fires (or its sender
/// is dropped, and then it leaves the room on the handle's behalf).
pub(super) fn spawn(
    start: Start,
    stream: PresenceStream,
    stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    let (resolutions_tx, resolutions) = mpsc::unbounded_channel();
    let client_events = start.client.events();
    let driver = Driver {
        my_id: start.client.connection_id(),
        client: start.client,
        room: start.room,
        storage_key: start.storage_key,
        store: start.store,
        options: start.options,
        group_key: start.group_key,
        engine: start.engine,
        former_ids: VecDeque::new(),
        own_changed_at: start.own_changed_at,
        users_tx: start.users_tx,
        events_tx: start.events_tx,
        subscribe: start.subscribe,
        diff_subscribers: Vec::new(),
        full_next: false,
        catch_up_at: None,
        resolutions_tx,
        resolutions,
        flush_at: None,
        last_flush: Instant::now(),
        republish_at: None,
        keep_until: None,
    };
    tokio::spawn(driver.run(stream, client_events, stop))
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
    subscribe: mpsc::UnboundedReceiver<mpsc::Sender<UsersDiff>>,
    diff_subscribers: Vec<DiffSubscriber>,
    /// The next emission sends every subscriber the full list (after a
    /// resync, whose diff against before would be most of the room).
    full_next: bool,
    /// When subscribers that fell behind are tried again with a full list.
    catch_up_at: Option<Instant>,
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
                        // Wait for the handle to go; nothing else will
                        // come, but a new subscriber still gets the list.
                        break loop {
                            tokio::select! {
                                stopped = &mut stop => break stopped.is_err(),
                                Some(tx) = self.subscribe.recv() => self.on_subscribe(tx),
                            }
                        };
                    }
                },
                event = client_events.recv(), if client_events_open => match event {
                    Ok(ClientEvent::Reconnected { id }) => self.on_new_id(Some(id)),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => client_events_open = false,
                },
                Some(resolution) = self.resolutions.recv() => self.on_resolution(resolution),
                Some(tx) = self.subscribe.recv() => self.on_subscribe(tx),
                () = sleep_until_some(self.flush_at) => self.flush(),
                () = sleep_until_some(self.catch_up_at) => self.catch_up(),
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
        let changes = self.engine.take_changes();
        let events = self.engine.take_events();
        self.send_diffs(&events);
        // Patched in place rather than rebuilt: in a big room an emission
        // costs the users that changed, whoever holds the list or not.
        self.users_tx
            .send_modify(|users| changes.apply_to_list(users));
        for event in events {
            let _ = self.events_tx.send(event);
        }
    }

    /// A new subscriber: it gets the full list at once.
    fn on_subscribe(&mut self, tx: mpsc::Sender<UsersDiff>) {
        self.diff_subscribers
            .extend(DiffSubscriber::new(tx, self.engine.users()));
    }

    /// Sends each subscriber the diff of this emission (`events` is what
    /// changed since the last one); one that fell behind, or every one
    /// after a resync, gets the full list instead, built only then.
    fn send_diffs(&mut self, events: &[UserEvent]) {
        let full = std::mem::take(&mut self.full_next);
        if self.diff_subscribers.is_empty() {
            return;
        }
        let changes = if full {
            None
        } else {
            UsersDiff::from_events(&self.engine, events)
        };
        let engine = &self.engine;
        let mut users: Option<Vec<User>> = None;
        self.diff_subscribers.retain_mut(|subscriber| {
            if full || subscriber.behind() {
                let users = users.get_or_insert_with(|| engine.users());
                subscriber.send(UsersDiff::Full(users.clone()))
            } else {
                match &changes {
                    Some(diff) => subscriber.send(diff.clone()),
                    None => true,
                }
            }
        });
        self.schedule_catch_up();
    }

    /// Sends the full list to the subscribers that fell behind, if they
    /// have room for it now.
    fn catch_up(&mut self) {
        self.catch_up_at = None;
        let users = self.engine.users();
        self.diff_subscribers.retain_mut(|subscriber| {
            !subscriber.behind() || subscriber.send(UsersDiff::Full(users.clone()))
        });
        self.schedule_catch_up();
    }

    fn schedule_catch_up(&mut self) {
        if self.catch_up_at.is_none() && self.diff_subscribers.iter().any(|s| s.behind()) {
            self.catch_up_at = Some(Instant::now() + self.options.emit_interval);
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
        self.full_next = true;
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
