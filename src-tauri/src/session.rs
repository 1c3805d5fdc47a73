//! One window's connection: a Mesh client, the room's presence, and two
//! tasks that forward what changes to the window.
//!
//! Each window is its own connection, like a browser tab: two windows are
//! two members of the room, grouped into one row by the shared user id.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_client::presence::{GroupKey, Presence};
use mesh_client::{ClientEvent, ClientOptions, MeshClient, Status};
use serde_json::Value;
use tauri::async_runtime::JoinHandle;
use tauri::{AppHandle, Runtime};
use tokio::sync::{broadcast, Notify};

use crate::error::AppError;
use crate::events::{self, StatusPayload};
use crate::my_state;
use crate::store::{state_key, AppStore};
use crate::user_list::ListDiffer;

/// The shortest gap between two `presence://users` events: one frame at 60 Hz.
/// Changes that arrive in between are merged into the next event.
pub const FRAME: Duration = Duration::from_millis(16);

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
    tasks: Vec<JoinHandle<()>>,
    /// Clears a short-lived status when it runs out. A std mutex: only held
    /// to swap the handle.
    expiry: Mutex<Option<JoinHandle<()>>>,
}

impl Session {
    /// Connects, joins the room, publishes your restored state, and starts
    /// forwarding status and users to the window `label`.
    pub async fn start<R: Runtime>(
        app: AppHandle<R>,
        label: String,
        target: Target,
        store: AppStore,
        user_id: String,
    ) -> Result<Session, AppError> {
        let connecting = StatusPayload {
            status: "connecting",
            ..StatusPayload::offline(&target.url, target.embedded, &target.room)
        };
        events::emit(&app, &label, events::STATUS, connecting);

        let connect = MeshClient::connect(&target.url, ClientOptions::default());
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(unreachable_server(&target.url, e.to_string())),
            Err(_) => return Err(unreachable_server(&target.url, "timed out".into())),
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

        // Your windows share a `userId` in their state; that groups them.
        let presence = Presence::new(
            client.clone(),
            &target.room,
            &state_key(&target.room),
            GroupKey::state_field("userId"),
            store.presence_store(),
        )
        .await
        .map_err(|e| AppError::new("ESERVER", format!("Could not join {}: {e}", target.room)))?;
        let presence = Arc::new(presence);

        let resync = Arc::new(Notify::new());
        let tasks = vec![
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
                target.room.clone(),
                user_id.clone(),
                resync.clone(),
            )),
        ];
        let session = Session {
            target,
            client,
            presence,
            user_id,
            resync,
            tasks,
            expiry: Mutex::new(None),
        };
        // `Presence::new` published the restored state; a short-lived one
        // still needs its timer.
        session.clear_on_expiry(state, expire_after);
        Ok(session)
    }

    /// Makes the next `presence://users` event a full list (the window reloaded).
    pub fn resync(&self) {
        self.resync.notify_one();
    }

    /// The connection's status right now.
    pub fn status(&self) -> StatusPayload {
        status_payload(&self.client, &self.target, None)
    }

    /// Publishes your state, built from what the window sent.
    pub async fn publish(
        &self,
        username: &str,
        status: &str,
        expire_after_ms: Option<u64>,
    ) -> Result<Value, AppError> {
        let state = my_state::compose(
            &self.user_id,
            username,
            status,
            expire_after_ms,
            mesh_protocol::now_millis(),
        );
        self.publish_state(state.clone(), expire_after_ms).await?;
        Ok(state)
    }

    /// Publishes (and saves) `state`; a short-lived one gets a timer that
    /// clears its status when it runs out, so you keep your row and name.
    async fn publish_state(
        &self,
        state: Value,
        expire_after_ms: Option<u64>,
    ) -> Result<(), AppError> {
        self.clear_on_expiry(state.clone(), expire_after_ms);
        self.presence
            .publish(state)
            .await
            .map_err(|e| AppError::new("ESERVER", format!("Could not publish your state: {e}")))
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
        if let Some(old) = self
            .expiry
            .lock()
            .ok()
            .and_then(|mut t| std::mem::replace(&mut *t, timer))
        {
            old.abort();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(timer) = self.expiry.lock().ok().and_then(|mut t| t.take()) {
            timer.abort();
        }
        // Closing the connection takes us out of the room on the server; the
        // presence helper stops when its connection ends.
        let client = self.client.clone();
        tauri::async_runtime::spawn(async move { client.close().await });
    }
}

fn unreachable_server(url: &str, reason: String) -> AppError {
    AppError::new("EOFFLINE", format!("Could not connect to {url}: {reason}"))
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
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}

/// Sends the user list as diffs, at most one event per [`FRAME`].
async fn forward_users<R: Runtime>(
    app: AppHandle<R>,
    label: String,
    presence: Arc<Presence>,
    room: String,
    me: String,
    resync: Arc<Notify>,
) {
    let mut users = presence.users();
    let mut differ = ListDiffer::new();
    loop {
        // Diffed in place: the list is only read, and copying 5k users
        // every frame would cost more than the diff.
        let event = differ.diff(&room, &users.borrow_and_update(), &me);
        if let Some(event) = event {
            events::emit(&app, &label, events::USERS, event);
        }
        tokio::time::sleep(FRAME).await;
        tokio::select! {
            changed = users.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = resync.notified() => differ.reset(),
        }
    }
}
