//! The events the backend sends to a window, and their payloads.
//!
//! Every event goes to one window only: each window has its own connection,
//! so its status and its list are its own.

use serde::Serialize;
use tauri::{AppHandle, Emitter, EventTarget, Runtime};

use crate::list_view::UsersWindow;

/// The user list changed where the page can see it: its length, or a row
/// of its window ([`crate::list_view::UsersWindow`], as a JSON string: see
/// [`emit_users`]); at most one per frame.
pub const USERS: &str = "presence://users";
/// The connection changed state or measured a new latency ([`StatusPayload`]).
pub const STATUS: &str = "mesh://status";
/// Something the user should know that is not an error (a token that was
/// not carried to another server): a message string.
pub const NOTICE: &str = "app://notice";
/// Who left the room in the last 24 hours, newest first
/// ([`crate::last_seen::Departure`]s); sent with the first list and when it
/// changes.
pub const LAST_SEEN: &str = "presence://last-seen";
/// Your availability was changed outside the window (the tray's menu): the
/// new one, for the window's picker.
pub const AVAILABILITY: &str = "app://availability";
/// The tray's "Custom status…": the window should put the cursor in the
/// status field.
pub const EDIT_STATUS: &str = "app://edit-status";
/// Something failed in the background ([`crate::error::AppError`]).
pub const ERROR: &str = "mesh://error";

/// Where the window's connection stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusPayload {
    /// `connecting`, `online`, `reconnecting` or `offline`.
    pub status: &'static str,
    /// The reconnect attempt, while reconnecting.
    pub attempt: Option<u32>,
    /// The last measured round trip to the server, in ms.
    pub latency_ms: Option<u64>,
    /// The connection id the server gave us (changes on reconnect).
    pub connection_id: Option<String>,
    /// The server this window talks to.
    pub server_url: String,
    /// Whether that server runs inside the app.
    pub embedded: bool,
    /// The room shown.
    pub room: String,
}

impl StatusPayload {
    /// A window that has no connection.
    pub fn offline(server_url: &str, embedded: bool, room: &str) -> Self {
        StatusPayload {
            status: "offline",
            attempt: None,
            latency_ms: None,
            connection_id: None,
            server_url: server_url.to_string(),
            embedded,
            room: room.to_string(),
        }
    }
}

/// Sends `payload` as `event` to the window labelled `label`. A window that
/// closed meanwhile is not an error worth reporting.
pub fn emit<R: Runtime, S: Serialize + Clone>(
    app: &AppHandle<R>,
    label: &str,
    event: &str,
    payload: S,
) {
    if let Err(e) = app.emit_to(EventTarget::webview_window(label), event, payload) {
        tracing::debug!(label, event, error = %e, "event not delivered");
    }
}

/// Sends a [`USERS`] event as a JSON string, which the page parses.
///
/// Tauri delivers an event as a script with its payload written in it. A
/// window of rows written as an object literal is a program of a thousand
/// property writes that the page's JavaScript engine parses and compiles
/// for a single run, several times a second while a room fills or empties;
/// a string literal compiles to one constant, and `JSON.parse` builds the
/// same rows without a compiler.
pub fn emit_users<R: Runtime>(app: &AppHandle<R>, label: &str, window: &UsersWindow) {
    match serde_json::to_string(window) {
        Ok(json) => emit(app, label, USERS, json),
        Err(e) => tracing::warn!(label, error = %e, "user list not serialized"),
    }
}
