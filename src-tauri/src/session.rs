//! One window's connection: a Mesh client, the room's presence, and two
//! tasks that forward what changes to the window.
//!
//! Each window is its own connection, like a browser tab: two windows are
//! two members of the room, grouped into one row by the shared user id.

use std::sync::Arc;
use std::time::Duration;

use mesh_client::presence::User;
use mesh_client::{ClientEvent, ClientOptions, MeshClient, Status};
use serde_json::Value;
use tauri::{AppHandle, Runtime};
use tokio::sync::{broadcast, Notify};
use tauri::async_runtime::JoinHandle;

use crate::error::AppError;
use crate::events::{self, StatusPayload};
use crate::my_state;
use crate::room_presence::Presence;
use crate::store::{state_key, AppStore};
use crate::user_list::{ListDiffer, UserRow};

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

        let presence = Presence::new(
            client.clone(),
            &target.room,
            &state_key(&target.room),
            group_by_user_id,
            store.key_value(),
        )
        .await
        .map_err(|e| AppError::new("ESERVER", format!("Could not join {}: {e}", target.room)))?;
        let presence = Arc::new(presence);

        let settings = store.settings();
        let (state, expire_after) = my_state::restore(
            store.last_state(&target.room),
            &user_id,
            &settings.display_name,
            mesh_protocol::now_millis(),
        );
        presence
            .publish_with_expiry(state, expire_after)
            .await
            .map_err(|e| AppError::new("ESERVER", format!("Could not publish your state: {e}")))?;

        let resync = Arc::new(Notify::new());
        let tasks = vec![
            tauri::async_runtime::spawn(forward_status(app.clone(), label.clone(), client.clone(), target.clone())),
            tauri::async_runtime::spawn(forward_users(
                app,
                label,
                presence.clone(),
                target.room.clone(),
                user_id.clone(),
                resync.clone(),
            )),
        ];
        Ok(Session {
            target,
            client,
            presence,
            user_id,
            resync,
            tasks,
        })
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
        self.presence
            .publish_with_expiry(state.clone(), expire_after_ms)
            .await
            .map_err(|e| AppError::new("ESERVER", format!("Could not publish your state: {e}")))?;
        Ok(state)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let presence = self.presence.clone();
        let client = self.client.clone();
        tauri::async_runtime::spawn(async move {
            presence.dispose().await;
            client.close().await;
        });
    }
}

fn unreachable_server(url: &str, reason: String) -> AppError {
    AppError::new("EOFFLINE", format!("Could not connect to {url}: {reason}"))
}

/// Your windows share a `userId` in their state; that groups them. A
/// connection that has published nothing yet stays on its own.
fn group_by_user_id(state: &Value) -> Option<String> {
    state
        .get("userId")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
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

/// Sends `mesh://status` whenever the status changes or a latency arrives.
async fn forward_status<R: Runtime>(app: AppHandle<R>, label: String, client: MeshClient, target: Target) {
    let mut status = client.status();
    let mut client_events = client.events();
    let mut latency = None;
    loop {
        events::emit(&app, &label, events::STATUS, status_payload(&client, &target, latency));
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
        let rows: Vec<UserRow> = users.borrow_and_update().iter().map(|u| row(u, &me)).collect();
        if let Some(event) = differ.diff(&room, rows) {
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

fn row(user: &User, me: &str) -> UserRow {
    UserRow::new(&user.id, user.state.as_ref(), user.tab_count, user.timestamp, me)
}
