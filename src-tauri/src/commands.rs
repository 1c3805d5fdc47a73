//! The commands a window may invoke. Each is a thin layer over the window's
//! [`Session`](crate::session::Session) or the store; the ACL in
//! `capabilities/default.json` allows exactly these.

use mesh_client::Token;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tauri::{AppHandle, Runtime, State, WebviewWindow};

use crate::error::AppError;
use crate::events::StatusPayload;
use crate::list_view::UsersWindow;
use crate::my_state;
use crate::settings::{validate_name, validate_status, Settings};
use crate::state::AppState;

/// Longest expiry a status may ask for: one day.
const MAX_EXPIRE_AFTER_MS: u64 = 24 * 60 * 60 * 1000;

/// The settings as the settings panel shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsView {
    /// A Mesh server, or `None` for the embedded one.
    pub server_url: Option<String>,
    /// The room.
    pub room: String,
    /// Your display name.
    pub display_name: String,
    /// Your user id (read-only).
    pub user_id: String,
    /// The token sent to the server, if any (the panel shows it masked;
    /// `Debug` hides it).
    pub token: Option<Token>,
    /// Whether closing the last window keeps the app in the tray.
    pub close_to_tray: bool,
    /// Minutes without input before automatic away; 0 = off.
    pub away_after_minutes: u32,
    /// Whether this desktop shows the app's tray icon.
    pub has_tray: bool,
    /// Whether this desktop tells the app how long you have been idle
    /// (automatic away needs it).
    pub idle_available: bool,
    /// Whether a notification says when someone you starred comes online.
    pub notify_starred: bool,
    /// Why this desktop cannot show notifications, when it cannot.
    pub notifications_unavailable: Option<String>,
}

/// What the window sends to publish: the fields a user types. The app adds
/// your user id (and `expiresAt` for a short-lived status).
#[derive(Debug, Clone, Deserialize)]
pub struct PublishInput {
    /// Your name.
    #[serde(default)]
    pub username: String,
    /// Your status text.
    #[serde(default)]
    pub status: String,
    /// Available, away, busy or dnd; left out, the one you had is kept.
    #[serde(default)]
    pub availability: Option<String>,
}

fn view(state: &AppState, settings: Settings) -> SettingsView {
    SettingsView {
        server_url: settings.server_url,
        room: settings.room,
        display_name: settings.display_name,
        user_id: state.user_id().to_string(),
        token: settings.token,
        close_to_tray: settings.close_to_tray,
        away_after_minutes: settings.away_after_minutes,
        has_tray: state.has_tray(),
        idle_available: state.idle_available(),
        notify_starred: settings.notify_starred,
        notifications_unavailable: state.notifier().unavailable(),
    }
}

/// The current settings and your user id.
#[tauri::command]
pub fn get_settings(app_state: State<'_, AppState>) -> SettingsView {
    view(&app_state, app_state.store().settings())
}

/// Validates and saves the settings, then reconnects every window with them.
#[tauri::command]
pub async fn set_settings<R: Runtime>(
    app: AppHandle<R>,
    app_state: State<'_, AppState>,
    settings: Settings,
) -> Result<SettingsView, AppError> {
    let settings = settings.validate()?;
    app_state.store().save_settings(&settings)?;
    crate::state::reconnect_all(&app);
    Ok(view(&app_state, settings))
}

/// Connects this window (or, when it already is, resends it the full list).
#[tauri::command]
pub async fn connect<R: Runtime>(
    app: AppHandle<R>,
    window: WebviewWindow<R>,
    app_state: State<'_, AppState>,
) -> Result<StatusPayload, AppError> {
    app_state.connect(&app, window.label(), false).await
}

/// Publishes your name and status (optionally for `expireAfter` ms), and keeps
/// the name as your display name.
#[tauri::command]
pub async fn publish<R: Runtime>(
    window: WebviewWindow<R>,
    app_state: State<'_, AppState>,
    state: PublishInput,
    expire_after: Option<u64>,
) -> Result<Value, AppError> {
    let username = validate_name(&state.username)?;
    let status = validate_status(&state.status)?;
    let availability = state
        .availability
        .as_deref()
        .map(my_state::validate_availability)
        .transpose()?;
    if let Some(ms) = expire_after {
        if ms == 0 || ms > MAX_EXPIRE_AFTER_MS {
            return Err(AppError::invalid(format!(
                "expireAfter must be between 1 and {MAX_EXPIRE_AFTER_MS} ms"
            )));
        }
    }
    let session = app_state
        .session(window.label())
        .ok_or_else(AppError::not_connected)?;
    let published = session
        .publish(&username, &status, availability, expire_after)
        .await?;
    let mut settings = app_state.store().settings();
    if settings.display_name != username {
        settings.display_name = username;
        app_state.store().save_settings(&settings)?;
    }
    Ok(published)
}

/// Publishes your state with an empty status: your name stays, so you keep
/// your row. (Not [`Presence::clear`](mesh_client::presence::Presence::clear),
/// which takes your state away altogether.)
#[tauri::command]
pub async fn clear_status<R: Runtime>(
    window: WebviewWindow<R>,
    app_state: State<'_, AppState>,
) -> Result<Value, AppError> {
    let session = app_state
        .session(window.label())
        .ok_or_else(AppError::not_connected)?;
    let name = app_state.store().settings().display_name;
    session.publish(&name, "", None, None).await
}

/// Your last state in the current room, as stored (`null` when none).
#[tauri::command]
pub fn read(app_state: State<'_, AppState>) -> Option<Value> {
    let room = app_state.store().settings().room;
    app_state.store().last_state(&room)
}

/// What the user must be told about the app's start (a damaged store file
/// moved aside, a saved setting that could not be used). Each notice is
/// handed out once, to the first window that asks.
#[tauri::command]
pub fn take_notices(app_state: State<'_, AppState>) -> Vec<String> {
    app_state.take_notices()
}

/// Rows `start..end` of this window's user list, sorted as shown, with the
/// list's length. They become the window's rows: its `presence://users`
/// events send them again whenever one of them changes.
#[tauri::command]
pub fn users_window<R: Runtime>(
    window: WebviewWindow<R>,
    app_state: State<'_, AppState>,
    start: usize,
    end: usize,
) -> Result<UsersWindow, AppError> {
    app_state
        .session(window.label())
        .ok_or_else(AppError::not_connected)?
        .users_window(start, end)
}

/// Opens another window: another connection for the same user.
///
/// Async so that it runs off the main thread, which builds the window.
#[tauri::command]
pub async fn new_window<R: Runtime>(app: AppHandle<R>) -> Result<String, AppError> {
    crate::open_window(&app)
}

/// The link that opens this window's room on its server in another copy of
/// the app (`mesh-presence://join?server=…&room=…`). It carries no token.
#[tauri::command]
pub fn invite_link<R: Runtime>(
    window: WebviewWindow<R>,
    app_state: State<'_, AppState>,
) -> Result<String, AppError> {
    let session = app_state
        .session(window.label())
        .ok_or_else(AppError::not_connected)?;
    Ok(crate::invite::link(
        &session.target.url,
        &session.target.room,
    ))
}

/// Does what the tray menu item `id` does (`status-busy`, `tray-show`, ...).
/// The tray's clicks run the same handler; this lets the page, and the
/// end-to-end tests (a tray cannot be clicked under a virtual X server),
/// reach it.
#[tauri::command]
pub async fn tray_menu<R: Runtime>(app: AppHandle<R>, id: String) -> Result<(), AppError> {
    crate::tray::handle_menu(&app, &id).await
}

/// Stars (or unstars) user `userId`: their row shows it in every window,
/// a restart remembers it, and you are notified when they come online.
#[tauri::command]
pub fn set_starred<R: Runtime>(
    app: AppHandle<R>,
    app_state: State<'_, AppState>,
    user_id: String,
    starred: bool,
) -> Result<(), AppError> {
    app_state.set_starred(&app, &user_id, starred)
}

/// Forgets who left lately, in every window's room and in the store.
#[tauri::command]
pub fn clear_last_seen(app_state: State<'_, AppState>) -> Result<(), AppError> {
    let room = app_state.store().settings().room;
    app_state
        .store()
        .key_value()
        .remove(&crate::last_seen::key(&room))?;
    app_state.for_each_session(|session| session.clear_last_seen());
    Ok(())
}
