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
//! * [`last_seen`]: who left the room lately, kept across restarts.
//! * [`stars`]: the people you starred; [`notify`]: a desktop notification
//!   when one of them comes online.
//! * [`user_list`]: the list's rows, built from the presence helper's diffs;
//!   [`list_view`] keeps it sorted and gives the page only the rows it shows.
//! * [`invite`]: a room opened from the command line or an invite link;
//!   [`tray`]: the tray icon and its menu; [`idle`]: automatic away.
//! * [`rendering`]: how WebKit draws on a machine without a GPU;
//!   [`js_heap`]: how much JavaScript garbage the web view keeps.
//!
//! The webview (`ui/`) holds no protocol logic.

#![warn(missing_docs)]

pub mod commands;
pub mod embedded;
pub mod error;
pub mod events;
pub mod idle;
pub mod invite;
pub mod js_heap;
pub mod last_seen;
pub mod list_view;
pub mod my_state;
pub mod notify;
pub mod rendering;
pub mod session;
pub mod settings;
pub mod stars;
pub mod state;
pub mod store;
pub mod tray;
pub mod user_list;

use std::sync::atomic::{AtomicU32, Ordering};

use tauri::menu::{Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::{AppHandle, Emitter, Manager, Runtime, WebviewUrl, WebviewWindowBuilder, WindowEvent};
use tauri_plugin_deep_link::DeepLinkExt;

use crate::error::{AppError, ErrorCode};
use crate::invite::{Invite, Launch};
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
    js_heap::configure();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let launch = match invite::parse_args(std::env::args().skip(1)) {
        Ok(Launch::Help) => {
            println!("{}", invite::USAGE);
            return;
        }
        Ok(launch) => Ok(launch),
        Err(e) => Err(e),
    };

    // First: a second copy hands its arguments (or link) to the running one
    // and exits before it opens anything.
    let result = tauri::Builder::default()
        .plugin(tauri_plugin_single_instance::init(|app, argv, _cwd| {
            // A lone link went to the deep-link plugin (`on_open_url`).
            match invite::parse_args(argv.iter().skip(1)) {
                Ok(Launch::Open(invite)) => open_invite(app, Ok(invite)),
                Ok(_) => show_window(app),
                Err(e) => open_invite(app, Err(e)),
            }
        }))
        .plugin(tauri_plugin_deep_link::init())
        .plugin(tauri_plugin_notification::init());
    let result = builder(result)
        .setup(move |app| {
            let (store, recovery) = store::open_file(&app.path().app_data_dir()?.join(STORE_FILE))?;
            let port = std::env::var(PORT_ENV)
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(embedded::DEFAULT_PORT);
            let state = AppState::new(AppStore::new(store), port)?;
            if let Some(recovery) = recovery {
                state.notify(recovery.notice());
            }
            // The command line, or the link the desktop started us with.
            let link = app.deep_link().get_current().ok().flatten();
            let invite = match (&launch, link.as_deref()) {
                (Err(e), _) => Some(Err(e.clone())),
                (Ok(Launch::Open(invite)), _) => Some(Ok(invite.clone())),
                (_, Some([link, ..])) => Some(invite::parse_link(link.as_str())),
                _ => None,
            };
            if let Some(invite) = invite {
                match invite.and_then(|i| state.accept_invite(&i)) {
                    Ok(notice) => notice.into_iter().for_each(|n| state.notify(n)),
                    Err(e) => state.notify(e.message),
                }
            }
            app.manage(state);
            let handle = app.handle().clone();
            app.deep_link().on_open_url(move |event| {
                for url in event.urls() {
                    open_invite(&handle, invite::parse_link(url.as_str()));
                }
            });
            app.set_menu(menu(app.handle())?)?;
            let state = app.state::<AppState>();
            state.set_tray(tray::install(app.handle()));
            state.notifier().set_sink(notify::system_sink(app.handle()));
            match idle::system_source() {
                Ok(source) => {
                    state.set_idle_available(true);
                    tauri::async_runtime::spawn(idle::keep_away_marker(
                        app.handle().clone(),
                        source,
                    ));
                }
                Err(e) => tracing::info!(reason = %e, "automatic away is not available"),
            }
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
            commands::invite_link,
            commands::tray_menu,
            commands::clear_last_seen,
            commands::set_starred,
        ])
        .on_menu_event(|app, event| {
            if event.id() == NEW_WINDOW_MENU_ID {
                if let Err(e) = open_window(app) {
                    tracing::warn!(error = %e, "could not open a window");
                }
            } else if event.id().as_ref().starts_with("tray-")
                || event.id().as_ref().starts_with("status-")
            {
                let app = app.clone();
                let id = event.id().as_ref().to_string();
                tauri::async_runtime::spawn(async move {
                    if let Err(e) = tray::handle_menu(&app, &id).await {
                        tracing::warn!(error = %e, "tray menu");
                    }
                });
            }
        })
        .on_window_event(|window, event| match event {
            WindowEvent::CloseRequested { api, .. } => {
                let Some(state) = window.try_state::<AppState>() else {
                    return;
                };
                let others = window
                    .app_handle()
                    .webview_windows()
                    .values()
                    .filter(|w| w.label() != window.label() && w.is_visible().unwrap_or(false))
                    .count();
                let close_to_tray = state.store().settings().close_to_tray;
                if tray::hide_instead_of_close(state.has_tray(), close_to_tray, others) {
                    // Still in the room, still in the tray: Show window
                    // brings it back as it was.
                    api.prevent_close();
                    let _ = window.hide();
                }
            }
            WindowEvent::Destroyed => {
                if let Some(state) = window.try_state::<AppState>() {
                    state.remove_session(window.label());
                }
            }
            _ => {}
        })
}

/// Opens the room an invite names in every window (or says why not), and
/// brings a window up.
fn open_invite<R: Runtime>(app: &AppHandle<R>, invite: Result<Invite, AppError>) {
    let state = app.state::<AppState>();
    match invite.and_then(|i| state.accept_invite(&i)) {
        Ok(notice) => {
            if let Some(notice) = notice {
                tell(app, events::NOTICE, notice.clone(), notice);
            }
            state::reconnect_all(app);
        }
        Err(e) => tell(app, events::ERROR, e.clone(), e.message),
    }
    show_window(app);
}

/// Sends `payload` as `event` to every window; with none open, the next
/// window to open shows `notice`.
fn tell<R: Runtime, S: serde::Serialize + Clone>(
    app: &AppHandle<R>,
    event: &str,
    payload: S,
    notice: String,
) {
    if app.webview_windows().is_empty() {
        app.state::<AppState>().notify(notice);
    } else if let Err(e) = app.emit(event, payload) {
        tracing::warn!(error = %e, "could not tell the windows");
    }
}

/// Shows and focuses a window, opening one when there is none.
pub fn show_window<R: Runtime>(app: &AppHandle<R>) {
    let shown = app
        .webview_windows()
        .into_values()
        .min_by_key(|w| w.label() != "main");
    let result = match shown {
        Some(window) => window
            .unminimize()
            .and_then(|()| window.show())
            .and_then(|()| window.set_focus())
            .map_err(|e| AppError::new(ErrorCode::Window, e.to_string())),
        None => open_window_labelled(app, "main"),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not show a window");
    }
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
