//! The tray icon: how many people are in the room at a glance, your
//! availability in two clicks, and a place for the app to stay (still in
//! the room) while its windows are closed.
//!
//! Where the desktop shows no tray (no StatusNotifier host on the session
//! bus, no XEmbed tray on the X screen), there is no icon and the app
//! behaves as without one: closing the last window quits.
//!
//! The menu's actions go through [`handle_menu`], which the `tray_menu`
//! command also calls: a tray cannot be clicked under a virtual X server,
//! so the end-to-end tests drive the same handler through it.

use std::time::Duration;

use serde_json::json;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Emitter, Manager, Runtime};

use crate::error::AppError;
use crate::events;
use crate::my_state::{validate_availability, AVAILABILITIES};
use crate::state::AppState;

/// The environment variable that forces the tray on (`1`) or off (`0`)
/// where detection guesses wrong.
pub const TRAY_ENV: &str = "MESH_PRESENCE_TRAY";

const TRAY_ID: &str = "main";
const PEOPLE_ID: &str = "tray-people";
/// The menu items, by id: `status-<availability>` for each availability,
/// then these.
pub const CUSTOM_STATUS: &str = "tray-custom-status";
/// Shows (and focuses) a window.
pub const SHOW_WINDOW: &str = "tray-show";
/// Opens another window.
pub const NEW_WINDOW: &str = "tray-new-window";
/// Leaves the room and quits.
pub const QUIT: &str = "tray-quit";
const STATUS_PREFIX: &str = "status-";

/// What each availability is called in the menu.
fn label(availability: &str) -> &'static str {
    match availability {
        "away" => "Away",
        "busy" => "Busy",
        "dnd" => "Do not disturb",
        _ => "Available",
    }
}

/// The tooltip (and, on Linux, the label beside the icon says the count).
pub fn summary(people: usize, room: &str) -> String {
    match people {
        1 => format!("1 person in {room}"),
        n => format!("{n} people in {room}"),
    }
}

/// Whether the desktop shows tray icons: [`TRAY_ENV`] when set, else a
/// StatusNotifier host on the session bus or an XEmbed tray on the screen.
pub fn desktop_has_tray() -> bool {
    match std::env::var(TRAY_ENV).as_deref() {
        Ok("1") => return true,
        Ok("0") => return false,
        _ => {}
    }
    status_notifier_host() || xembed_tray()
}

fn status_notifier_host() -> bool {
    session_bus_offers("org.kde.StatusNotifierWatcher", false)
}

/// Whether a service owns `name` on the session bus now, or, with
/// `activatable`, the bus would start one on the first call (as it does
/// for most desktops' notification service). No session bus: `false`.
pub fn session_bus_offers(name: &str, activatable: bool) -> bool {
    let Ok(bus) = zbus::blocking::Connection::session() else {
        return false;
    };
    let owned = bus
        .call_method(DBUS, DBUS_PATH, DBUS, "NameHasOwner", &(name,))
        .and_then(|reply| reply.body().deserialize::<bool>())
        .unwrap_or(false);
    owned
        || activatable
            && bus
                .call_method(DBUS, DBUS_PATH, DBUS, "ListActivatableNames", &())
                .and_then(|reply| reply.body().deserialize::<Vec<String>>())
                .is_ok_and(|names| names.iter().any(|n| n == name))
}

const DBUS: Option<&str> = Some("org.freedesktop.DBus");
const DBUS_PATH: &str = "/org/freedesktop/DBus";

#[cfg(target_os = "linux")]
fn xembed_tray() -> bool {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::ConnectionExt;

    let Ok((conn, screen)) = x11rb::connect(None) else {
        return false;
    };
    let name = format!("_NET_SYSTEM_TRAY_S{screen}");
    let owner = conn
        .intern_atom(true, name.as_bytes())
        .ok()
        .and_then(|c| c.reply().ok())
        .filter(|atom| atom.atom != 0)
        .and_then(|atom| conn.get_selection_owner(atom.atom).ok()?.reply().ok());
    let _ = conn.flush();
    owner.is_some_and(|o| o.owner != 0)
}

#[cfg(not(target_os = "linux"))]
fn xembed_tray() -> bool {
    true
}

/// Puts the icon in the tray, if the desktop has one, and keeps its label
/// at the room's head count. Returns whether there is a tray.
pub fn install<R: Runtime>(app: &AppHandle<R>) -> bool {
    if !desktop_has_tray() {
        tracing::info!("no tray on this desktop: closing the last window quits");
        return false;
    }
    match build(app) {
        Ok((tray, people)) => {
            tauri::async_runtime::spawn(keep_count(app.clone(), tray, people));
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not put the icon in the tray");
            false
        }
    }
}

fn build<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<(TrayIcon<R>, MenuItem<R>)> {
    let people = MenuItem::with_id(app, PEOPLE_ID, "Mesh Presence", false, None::<&str>)?;
    let mut statuses = Vec::new();
    for availability in AVAILABILITIES {
        let id = format!("{STATUS_PREFIX}{availability}");
        statuses.push(MenuItem::with_id(
            app,
            id,
            label(availability),
            true,
            None::<&str>,
        )?);
    }
    let custom = MenuItem::with_id(app, CUSTOM_STATUS, "Custom status…", true, None::<&str>)?;
    let show = MenuItem::with_id(app, SHOW_WINDOW, "Show window", true, None::<&str>)?;
    let new = MenuItem::with_id(app, NEW_WINDOW, "New window", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, QUIT, "Quit", true, None::<&str>)?;
    let separator = || PredefinedMenuItem::separator(app);
    let menu = Menu::with_items(
        app,
        &[
            &people,
            &separator()?,
            &statuses[0],
            &statuses[1],
            &statuses[2],
            &statuses[3],
            &custom,
            &separator()?,
            &show,
            &new,
            &separator()?,
            &quit,
        ],
    )?;
    let mut builder = TrayIconBuilder::with_id(TRAY_ID)
        .menu(&menu)
        .tooltip("Mesh Presence");
    if let Some(icon) = app.default_window_icon() {
        builder = builder.icon(icon.clone());
    }
    Ok((builder.build(app)?, people))
}

/// Keeps the tray's label, tooltip and first menu line at the number of
/// people in the room (any window's: they share the room).
async fn keep_count<R: Runtime>(app: AppHandle<R>, tray: TrayIcon<R>, item: MenuItem<R>) {
    let mut shown = None;
    loop {
        // Not holding the session across the wait: a closed window's
        // session must be free to go.
        let Some((mut people, room)) = app
            .state::<AppState>()
            .any_session()
            .map(|s| (s.people(), s.target.room.clone()))
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let count = *people.borrow_and_update();
        let text = summary(count, &room);
        if shown.as_ref() != Some(&text) {
            let _ = tray.set_tooltip(Some(&text));
            let _ = tray.set_title(Some(count.to_string()));
            let _ = item.set_text(&text);
            shown = Some(text);
        }
        // A new count; or this session ended (another room, a closed
        // window), and the next one is looked at.
        if people.changed().await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Does what the tray menu item `id` says. The tray's own clicks and the
/// `tray_menu` command both come here.
pub async fn handle_menu<R: Runtime>(app: &AppHandle<R>, id: &str) -> Result<(), AppError> {
    if let Some(availability) = id.strip_prefix(STATUS_PREFIX) {
        let availability = validate_availability(availability)?;
        let state = app.state::<AppState>();
        let session = state.any_session().ok_or_else(AppError::not_connected)?;
        session
            .set_field("availability", Some(json!(availability)))
            .await?;
        // The windows' pickers show it too.
        let _ = app.emit(events::AVAILABILITY, availability);
        return Ok(());
    }
    match id {
        CUSTOM_STATUS => {
            crate::show_window(app);
            let _ = app.emit(events::EDIT_STATUS, ());
        }
        SHOW_WINDOW => crate::show_window(app),
        NEW_WINDOW => {
            crate::open_window(app)?;
        }
        QUIT => {
            app.state::<AppState>().leave_all().await;
            app.exit(0);
        }
        _ => return Err(AppError::invalid(format!("No tray menu item {id:?}"))),
    }
    Ok(())
}

/// Whether closing a window should hide it instead: the app has a tray,
/// the setting says so, and it is the last window shown.
pub fn hide_instead_of_close(has_tray: bool, close_to_tray: bool, other_visible: usize) -> bool {
    has_tray && close_to_tray && other_visible == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_people() {
        assert_eq!(summary(1, "general"), "1 person in general");
        assert_eq!(summary(5000, "big"), "5000 people in big");
    }

    #[test]
    fn only_the_last_window_hides_and_only_with_a_tray_and_the_setting() {
        assert!(hide_instead_of_close(true, true, 0));
        assert!(!hide_instead_of_close(true, true, 1), "others stay open");
        assert!(
            !hide_instead_of_close(false, true, 0),
            "no tray: quit as before"
        );
        assert!(!hide_instead_of_close(true, false, 0), "the setting is off");
    }

    #[test]
    fn every_availability_has_a_menu_label() {
        let labels: Vec<_> = AVAILABILITIES.iter().map(|a| label(a)).collect();
        assert_eq!(labels, ["Available", "Away", "Busy", "Do not disturb"]);
    }
}
