//! One window's connection: a Mesh client, the room's presence, and two
//! tasks that forward what changes to the window.
//!
//! Each window is its own connection, like a browser tab: two windows are
//! two members of the room, grouped into one row by the shared user id.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_client::presence::{GroupKey, Presence};
use mesh_client::{ClientError, ClientEvent, ClientOptions, MeshClient, Status, Token};
use serde_json::Value;
use tauri::async_runtime::JoinHandle;
use tauri::{AppHandle, Runtime};
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;

use crate::error::{lock, AppError, ErrorCode};
use crate::events::{self, StatusPayload};
use crate::last_seen::LastSeen;
use crate::list_view::{ListView, UsersWindow};
use crate::my_state;
use crate::notify;
use crate::stars::Stars;
use crate::store::{state_key, AppStore};
use crate::user_list::{RowMapper, VerifiedNames};

/// The shortest gap between two `presence://users` events: one frame at 60 Hz.
/// Changes that arrive in between are merged into the next event.
pub const FRAME: Duration = Duration::from_millis(16);

/// The shortest gap between two `presence://last-seen` events and store
/// writes of last seen. A room that empties changes last seen every frame;
/// resending a hundred departures and rewriting the store each time cost
/// the page and the app more than the room itself, and "left 2 min ago"
/// needs no more than this.
pub const LAST_SEEN_EVERY: Duration = Duration::from_secs(1);

/// How long connecting to a server may take before the window shows an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a session connects to and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The server.
    pub url: String,
    /// Whether that is the embedded server.
    pub embedded: bool,
    /// The room.
    pub room: String,
    /// The token to present, if any.
    pub token: Option<Token>,
}

/// A window's live connection. Dropping it stops its tasks and closes the
/// connection in the background.
pub struct Session {
    /// What this session is connected to.
    pub target: Target,
    client: MeshClient,
    presence: Arc<Presence>,
    user_id: String,
    resync: Arc<Notify>,
    /// The sorted list and what the page has of it. A std mutex: held only
    /// to apply a frame's changes or copy out a window of rows.
    list: Arc<Mutex<ListView>>,
    tasks: Vec<JoinHandle<()>>,
    /// Clears a short-lived status when it runs out. A std mutex: only held
    /// to swap the handle.
    expiry: Mutex<Option<JoinHandle<()>>>,
    /// How many people are in the room (for the tray).
    people: watch::Receiver<usize>,
    /// Who left the room lately (shared with the task that sees them go).
    last_seen: Arc<Mutex<LastSeen>>,
    /// Tells this session from any other the app ever had.
    serial: u64,
}

/// The next session's [`Session::serial`].
static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Session {
    /// Connects, joins the room, publishes your restored state, and starts
    /// forwarding status and users to the window `label`.
    pub async fn start<R: Runtime>(
        app: AppHandle<R>,
        label: String,
        target: Target,
        store: AppStore,
        user_id: String,
        stars: Arc<Stars>,
    ) -> Result<Session, AppError> {
        let connecting = StatusPayload {
            status: "connecting",
            ..StatusPayload::offline(&target.url, target.embedded, &target.room)
        };
        events::emit(&app, &label, events::STATUS, connecting);

        let options = ClientOptions {
            token: target.token.clone(),
            ..ClientOptions::default()
        };
        let connect = MeshClient::connect(&target.url, options);
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(ClientError::Unauthorized)) => return Err(token_refused(&target.url)),
            Ok(Err(e)) => return Err(unreachable_server(&target.url, e.to_string())),
            Err(_) => return Err(unreachable_server(&target.url, "timed out".into())),
        };

        // A server that attests identity puts your verified user id in your
        // connection's metadata. Then people are grouped by that, which no
        // one can forge; otherwise your windows share a `userId` in their
        // state, and that groups them.
        let attested = client
            .get_my_connection_metadata()
            .await
            .ok()
            .and_then(|m| m.get("userId").and_then(Value::as_str).map(str::to_string));
        let (group_key, verified, user_id) = match attested {
            Some(id) => {
                let names = VerifiedNames::default();
                let recorder = names.clone();
                let key = GroupKey::metadata_fn(move |metadata| recorder.key_of(metadata));
                (key, Some(names), id)
            }
            None => (GroupKey::state_field("userId"), None, user_id),
        };

        // Your saved state (an expired short-lived status dropped), or your
        // name on a first run, is corrected in the store before the presence
        // helper republishes what the store holds: peers see it once, as it
        // should be, never the stale version first.
        let settings = store.settings();
        let (state, expire_after) = my_state::restore(
            store.last_state(&target.room),
            &user_id,
            &settings.display_name,
            mesh_protocol::now_millis(),
        );
        store.save_last_state(&target.room, &state)?;
        let presence = Presence::new(
            client.clone(),
            &target.room,
            &state_key(&target.room),
            group_key,
            store.presence_store(),
        )
        .await
        .map_err(|e| AppError::from(e).context(&format!("Could not join {}", target.room)))?;
        let presence = Arc::new(presence);

        let resync = Arc::new(Notify::new());
        let list = Arc::new(Mutex::new(ListView::new()));
        let (count, people) = watch::channel(0);
        let last_seen = Arc::new(Mutex::new(LastSeen::load(
            store.clone(),
            &target.room,
            mesh_protocol::now_millis(),
        )));
        let tasks = vec![
            tauri::async_runtime::spawn(count_people(presence.clone(), count)),
            tauri::async_runtime::spawn(forward_status(
                app.clone(),
                label.clone(),
                client.clone(),
                target.clone(),
            )),
            tauri::async_runtime::spawn(forward_users(
                app,
                label,
                presence.clone(),
                RowMapper::new(&user_id, verified, stars),
                list.clone(),
                resync.clone(),
                last_seen.clone(),
            )),
        ];
        let session = Session {
            target,
            client,
            presence,
            user_id,
            resync,
            list,
            tasks,
            expiry: Mutex::new(None),
            people,
            last_seen,
            serial: NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        // `Presence::new` published the restored state; a short-lived one
        // still needs its timer.
        session.clear_on_expiry(state, expire_after);
        Ok(session)
    }

    /// Sends the page the list's length and first rows again (it reloaded).
    pub fn resync(&self) {
        self.resync.notify_one();
    }

    /// Rows `start..end` of the list, which become the page's window.
    pub fn users_window(&self, start: usize, end: usize) -> Result<UsersWindow, AppError> {
        lock(&self.list).request(start, end)
    }

    /// Marks user `id`'s row starred or not; what the page must be told.
    pub fn set_starred(&self, id: &str, starred: bool) -> Option<UsersWindow> {
        lock(&self.list).set_starred(id, starred)
    }

    /// The connection's status right now.
    pub fn status(&self) -> StatusPayload {
        status_payload(&self.client, &self.target, None)
    }

    /// Publishes your state, built from what the window sent; without an
    /// `availability`, the one you had is kept.
    pub async fn publish(
        &self,
        username: &str,
        status: &str,
        availability: Option<&str>,
        expire_after_ms: Option<u64>,
    ) -> Result<Value, AppError> {
        let current = self.presence.read().ok().flatten();
        let availability = availability.unwrap_or_else(|| my_state::availability(current.as_ref()));
        let state = my_state::compose(
            &self.user_id,
            username,
            status,
            availability,
            expire_after_ms,
            mesh_protocol::now_millis(),
        );
        self.publish_state(state, expire_after_ms).await
    }

    /// Your state as published last (by any of your windows).
    pub fn my_state(&self) -> Option<Value> {
        self.presence.read().ok().flatten()
    }

    /// Republishes your state with field `key` set to `value` (removed for
    /// `None`), everything else as it is, a short-lived status with the
    /// time it has left. Nothing is sent when the field already is so.
    pub async fn set_field(&self, key: &str, value: Option<Value>) -> Result<(), AppError> {
        let Some(current) = self.my_state() else {
            return Ok(());
        };
        if current.get(key) == value.as_ref() {
            return Ok(());
        }
        let (state, expire_after) =
            my_state::with_field(current, key, value, mesh_protocol::now_millis());
        self.publish_state(state, expire_after).await.map(drop)
    }

    /// Closes the connection (which takes you out of the room) and waits
    /// until it is closed.
    pub async fn close(&self) {
        self.client.close().await;
    }

    /// Forgets who left the room lately, and tells the page.
    pub fn clear_last_seen(&self) {
        lock(&self.last_seen).clear();
        self.resync.notify_one();
    }

    /// A number no other session of this app has.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// How many people the room's list holds, as it changes.
    pub fn people(&self) -> tokio::sync::watch::Receiver<usize> {
        self.people.clone()
    }

    /// Publishes (and saves) `state`; a short-lived one gets a timer that
    /// clears its status when it runs out, so you keep your row and name.
    /// It is a change made now: returns the state as published, with the
    /// `changedAt` that orders it against your other windows and devices.
    async fn publish_state(
        &self,
        state: Value,
        expire_after_ms: Option<u64>,
    ) -> Result<Value, AppError> {
        let published = self
            .presence
            .publish(state)
            .await
            .map_err(|e| AppError::from(e).context("Could not publish your state"))?;
        // The timer compares against the state as published, `changedAt`
        // included: that is what the store holds until something newer.
        self.clear_on_expiry(published.clone(), expire_after_ms);
        Ok(published)
    }

    /// Replaces the expiry timer: after `expire_after_ms` (if any), the
    /// status of `state` is cleared, unless something newer was published
    /// since (here or, through tab sync, in another window).
    fn clear_on_expiry(&self, state: Value, expire_after_ms: Option<u64>) {
        let timer = expire_after_ms.map(|ms| {
            let presence = self.presence.clone();
            tauri::async_runtime::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if presence.read().ok().flatten().as_ref() == Some(&state) {
                    if let Err(e) = presence.publish(my_state::clear_status(state)).await {
                        tracing::warn!(error = %e, "could not clear an expired status");
                    }
                }
            })
        });
        if let Some(old) = std::mem::replace(&mut *lock(&self.expiry), timer) {
            old.abort();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(timer) = lock(&self.expiry).take() {
            timer.abort();
        }
        // Closing the connection takes us out of the room on the server; the
        // presence helper stops when its connection ends.
        let client = self.client.clone();
        tauri::async_runtime::spawn(async move { client.close().await });
    }
}

fn unreachable_server(url: &str, reason: String) -> AppError {
    AppError::new(
        ErrorCode::Offline,
        format!("Could not connect to {url}: {reason}"),
    )
}

fn token_refused(url: &str) -> AppError {
    AppError::new(
        ErrorCode::Unauthorized,
        format!(
            "{url} refused your token (missing, invalid or expired). \
             Set the one you were given in Settings → Token."
        ),
    )
}

fn status_payload(client: &MeshClient, target: &Target, latency_ms: Option<u64>) -> StatusPayload {
    let (status, attempt) = match *client.status().borrow() {
        Status::Connecting => ("connecting", None),
        Status::Online => ("online", None),
        Status::Reconnecting { attempt } => ("reconnecting", Some(attempt)),
        Status::Offline => ("offline", None),
    };
    StatusPayload {
        status,
        attempt,
        latency_ms,
        connection_id: client.connection_id(),
        ..StatusPayload::offline(&target.url, target.embedded, &target.room)
    }
}

/// Sends `mesh://status` when what the window shows changes: the status,
/// the connection id, or the latency. A latency push that measured the same
/// round trip again, or a client event that changed nothing, sends nothing.
async fn forward_status<R: Runtime>(
    app: AppHandle<R>,
    label: String,
    client: MeshClient,
    target: Target,
) {
    let mut status = client.status();
    let mut client_events = client.events();
    let mut latency = None;
    let mut shown = None;
    loop {
        let now = status_payload(&client, &target, latency);
        if shown.as_ref() != Some(&now) {
            events::emit(&app, &label, events::STATUS, now.clone());
            shown = Some(now);
        }
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            event = client_events.recv() => match event {
                Ok(ClientEvent::Latency(ms)) => latency = Some(ms),
                // The client stays offline rather than retry: say why.
                Ok(ClientEvent::Unauthorized) => {
                    events::emit(&app, &label, events::ERROR, token_refused(&target.url));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}

/// Keeps `count` at the number of people in the room, at most once a
/// second: the tray's label needs no more, and a busy room costs one
/// length read per second.
async fn count_people(presence: Arc<Presence>, count: watch::Sender<usize>) {
    let mut users = presence.users();
    loop {
        let n = users.borrow_and_update().len();
        count.send_if_modified(|shown| std::mem::replace(shown, n) != n);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if users.changed().await.is_err() {
            break;
        }
    }
}

/// Keeps the window's sorted list up to date and tells the page what it can
/// see changed, at most one event per [`FRAME`].
async fn forward_users<R: Runtime>(
    app: AppHandle<R>,
    label: String,
    presence: Arc<Presence>,
    rows: RowMapper,
    list: Arc<Mutex<ListView>>,
    resync: Arc<Notify>,
    last_seen: Arc<Mutex<LastSeen>>,
) {
    // The first diff is the full list.
    let mut diffs = presence.diffs();
    let mut next = diffs.recv().await;
    // Last seen goes to the page with the first list, and when it changed,
    // at most once per LAST_SEEN_EVERY.
    let mut departed = true;
    let mut last_seen_sent: Option<Instant> = None;
    loop {
        let mut arrived = Vec::new();
        let last_seen_due = last_seen_sent.is_none_or(|at| at.elapsed() >= LAST_SEEN_EVERY);
        let (event, departures) = {
            let mut list = lock(&list);
            let mut last_seen = lock(&last_seen);
            // Every diff that is ready goes into this frame.
            while let Some(diff) = next.take().or_else(|| diffs.try_recv()) {
                if let Some(diff) = rows.rows(diff) {
                    let now = mesh_protocol::now_millis();
                    departed |= last_seen.observe(&list, &diff, now);
                    arrived.extend(notify::arrivals(&list, &diff));
                    list.apply(diff);
                }
            }
            let departures = (departed && last_seen_due).then(|| {
                last_seen.save();
                last_seen.entries().to_vec()
            });
            (list.event(), departures)
        };
        if let Some(event) = event {
            events::emit_users(&app, &label, &event);
        }
        if let Some(departures) = departures {
            events::emit(&app, &label, events::LAST_SEEN, departures);
            departed = false;
            last_seen_sent = Some(Instant::now());
        }
        notify::announce(&app, &presence, arrived);
        tokio::time::sleep(FRAME).await;
        // A change of last seen held back waits at most until it is due.
        let held_until = departed
            .then(|| last_seen_sent.map(|at| at + LAST_SEEN_EVERY))
            .flatten();
        tokio::select! {
            diff = diffs.recv() => match diff {
                Some(diff) => next = Some(diff),
                None => break,
            },
            () = resync.notified() => {
                lock(&list).reset();
                departed = true;
                last_seen_sent = None;
            }
            () = sleep_until_some(held_until) => {}
        }
    }
}

/// Sleeps until `at`, or forever when it is `None`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
