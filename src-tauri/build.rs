/// The commands the webview may invoke. Listing them makes Tauri generate an
/// `allow-<command>` permission for each and deny any command not granted in
/// `capabilities/`.
const COMMANDS: &[&str] = &[
    "get_settings",
    "set_settings",
    "connect",
    "publish",
    "clear_status",
    "read",
    "take_notices",
    "new_window",
    "users_window",
    "invite_link",
    "tray_menu",
    "clear_last_seen",
    "set_starred",
];

fn main() {
    let attributes = tauri_build::Attributes::new()
        .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS));
    if let Err(e) = tauri_build::try_build(attributes) {
        panic!("tauri build step failed: {e:#}");
    }
}
