//! Mesh Presence, the desktop app: who is in a room right now, one row per
//! person, with their live status and how many windows they have open.
//!
//! The app is a thin shell over `mesh-client` and its presence helper:
//!
//! * [`state`]: the managed state, one [`session`] (connection + presence)
//!   per window, and the [`embedded`] server used when none is configured.
//! * [`commands`]: what the webview may invoke; [`events`]: what it is sent.
//! * [`store`]: the user id, [`settings`] and last state per room, kept in
//!   one JSON file that is replaced atomically and never lost to damage;
//!   [`my_state`] builds the state we publish.
//! * [`user_list`]: the list's rows and what changed each frame;
//!   [`list_view`] keeps it sorted and gives the page only the rows it shows.
//! * [`rendering`]: how WebKit draws on a machine without a GPU.
//!
//! The webview (`ui/`) holds no protocol logic.

#![warn(missing_docs)]

pub mod commands;
pub mod embedded;
pub mod error;
pub mod events;
pub mod list_view;
pub mod my_state;
pub mod rendering;
pub mod session;
pub mod settings;
pub mod state;
pub mod store;
pub mod user_list;

use std::sync::atomic::{AtomicU32, Ordering};

use tauri::menu::{Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::{AppHandle, Manager, Runtime, WebviewUrl, WebviewWindowBuilder, WindowEvent};

use crate::error::{AppError, ErrorCode};
use crate::state::AppState;
use crate::store::{AppStore, STORE_FILE};

/// Environment variable that changes the embedded server's first port.
pub const PORT_ENV: &str = "MESH_PRESENCE_PORT";

const NEW_WINDOW_MENU_ID: &str = "new-window";

/// Numbers the windows after the first (`window-1`, `window-2`, ...).
static NEXT_WINDOW: AtomicU32 = AtomicU32::new(1);

/// Builds and runs the app until its last window closes.
pub fn run() {
    rendering::configure();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let result = builder(tauri::Builder::default())
        .setup(|app| {
            let (store, recovery) = store::open_file(&app.path().app_data_dir()?.join(STORE_FILE))?;
            let port = std::env::var(PORT_ENV)
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(embedded::DEFAULT_PORT);
            let state = AppState::new(AppStore::new(store), port)?;
            if let Some(recovery) = recovery {
                state.notify(recovery.notice());
            }
            app.manage(state);
            app.set_menu(menu(app.handle())?)?;
            open_window_labelled(app.handle(), "main")?;
            Ok(())
        })
        .run(tauri::generate_context!());
    if let Err(e) = result {
        eprintln!("mesh-presence: {e}");
        std::process::exit(1);
    }
}

/// Adds the plugins, commands and handlers the app needs to `builder`; `run`
/// and the tests (on a mock runtime) share this.
pub fn builder<R: Runtime>(builder: tauri::Builder<R>) -> tauri::Builder<R> {
    builder
        .invoke_handler(tauri::generate_handler![
            commands::get_settings,
            commands::set_settings,
            commands::connect,
            commands::publish,
            commands::clear_status,
            commands::read,
            commands::take_notices,
            commands::new_window,
            commands::users_window,
        ])
        .on_menu_event(|app, event| {
            if event.id() == NEW_WINDOW_MENU_ID {
                if let Err(e) = open_window(app) {
                    tracing::warn!(error = %e, "could not open a window");
                }
            }
        })
        .on_window_event(|window, event| {
            if let WindowEvent::Destroyed = event {
                if let Some(state) = window.try_state::<AppState>() {
                    state.remove_session(window.label());
                }
            }
        })
}

fn menu<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<Menu<R>> {
    let new_window = MenuItem::with_id(
        app,
        NEW_WINDOW_MENU_ID,
        "New Window",
        true,
        Some("CmdOrCtrl+Shift+N"),
    )?;
    let file = Submenu::with_items(
        app,
        "File",
        true,
        &[
            &new_window,
            &PredefinedMenuItem::separator(app)?,
            &PredefinedMenuItem::close_window(app, Some("Close Window"))?,
            &PredefinedMenuItem::quit(app, None)?,
        ],
    )?;
    Menu::with_items(app, &[&file])
}

/// Opens another window (another connection for the same user) and returns
/// its label.
pub fn open_window<R: Runtime>(app: &AppHandle<R>) -> Result<String, AppError> {
    let label = format!("window-{}", NEXT_WINDOW.fetch_add(1, Ordering::Relaxed));
    open_window_labelled(app, &label)?;
    Ok(label)
}

fn open_window_labelled<R: Runtime>(app: &AppHandle<R>, label: &str) -> Result<(), AppError> {
    WebviewWindowBuilder::new(app, label, WebviewUrl::App("index.html".into()))
        .title("Mesh Presence")
        .inner_size(900.0, 640.0)
        .min_inner_size(420.0, 360.0)
        .build()
        .map_err(|e| AppError::new(ErrorCode::Window, format!("Could not open a window: {e}")))?;
    Ok(())
}
