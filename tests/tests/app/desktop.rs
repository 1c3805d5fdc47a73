//! What the app does from outside its window: a room opened from the
//! command line or an invite link (in the running copy: single instance),
//! the tray's menu, automatic away, last seen, notifications about the
//! people you starred.

use super::*;

/// The notices the window shows.
fn notices(app: &mesh_presence_e2e::app::App) -> Result<String, String> {
    app.text("#notices")
}

#[test]
fn opens_the_room_named_on_the_command_line_or_in_a_link() {
    let out = output_dir("opens_the_room_named_on_the_command_line_or_in_a_link");
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "run under a D-Bus session (scripts/e2e.sh does): one copy of the app finds the other through it"
    );
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();
    let server = StandaloneServer::start(&["--addr", "127.0.0.1:0"]);
    let url = server.url();

    // A bad value: the window says why, and nothing is saved.
    let app = driver
        .launch_with(&["--server", "http://127.0.0.1:1", "--room", "team"])
        .unwrap();
    app.wait_connection("online").unwrap();
    let notice = wait_for("a notice about the server URL", UI_TIMEOUT, || {
        let text = notices(&app)?;
        Ok(text.contains("ws:// or wss://").then_some(text))
    })
    .unwrap();
    assert!(notice.contains("Nothing was changed"), "{notice}");
    assert_eq!(app.text("#room-name").unwrap(), ROOM);
    assert!(app.text("#server-url").unwrap().ends_with("(embedded)"));
    app.screenshot("01-bad-server-refused").unwrap();
    app.quit().unwrap();

    // A good one: a peer in that room sees the app.
    let rt = runtime();
    let options = ClientOptions::default();
    let bob = json!({"userId": "bob", "username": "Bob", "status": "in team"});
    let mut bob = rt.block_on(Peer::join_room(&url, "team", options.clone(), bob));
    let app = driver
        .launch_with(&["--server", &url, "--room", "team"])
        .unwrap();
    app.wait_connection("online").unwrap();
    assert_eq!(app.text("#room-name").unwrap(), "team");
    assert_eq!(app.server_url().unwrap(), url);
    let me = rt.block_on(bob.wait_state("the app in team", |s| {
        s["userId"]
            .as_str()
            .is_some_and(|id| id.starts_with("user-"))
    }));
    app.wait_rows("Bob and me", |rows| {
        rows.len() == 2 && rows.iter().any(|r| r.name == "Bob") && rows.iter().any(|r| r.you)
    })
    .unwrap();
    app.screenshot("02-opened-from-the-command-line").unwrap();

    // The invite link names this server and room, and no token.
    app.click("#copy-invite").unwrap();
    let link = wait_for("the invite link", UI_TIMEOUT, || {
        let link = app.value("#invite-link")?;
        Ok((!link.is_empty()).then_some(link))
    })
    .unwrap();
    let expected = format!(
        "mesh-presence://join?server={}&room=team",
        url.replace(':', "%3A").replace('/', "%2F")
    );
    assert_eq!(link, expected);
    app.screenshot("03-invite-link").unwrap();

    // A link opened while the app runs: a second copy hands it over and
    // exits, and the running one opens the room.
    let carol = json!({"userId": "carol", "username": "Carol", "status": "designing"});
    let mut carol = rt.block_on(Peer::join_room(&url, "design", options, carol));
    let design = link.replace("room=team", "room=design");
    let second = driver.second_copy(&[&design]).output().unwrap();
    assert!(second.status.success(), "the second copy: {second:?}");
    rt.block_on(carol.wait_state("the app in design", |s| s["userId"] == me["userId"]));
    wait_for("the window in design", UI_TIMEOUT, || {
        Ok((app.text("#room-name")? == "design").then_some(()))
    })
    .unwrap();
    app.wait_rows("Carol and me", |rows| {
        rows.len() == 2 && rows.iter().any(|r| r.name == "Carol")
    })
    .unwrap();
    app.screenshot("04-link-opened-in-the-running-app").unwrap();

    // And a bad link changes nothing: the window says why.
    let bad = driver
        .second_copy(&["mesh-presence://join?server=ws://h"])
        .output()
        .unwrap();
    assert!(bad.status.success(), "{bad:?}");
    wait_for("the error about the link", UI_TIMEOUT, || {
        let shown = app.text("#error-text")?;
        Ok(shown.contains("names no room").then_some(()))
    })
    .unwrap();
    assert_eq!(app.text("#room-name").unwrap(), "design");
    app.quit().unwrap();
}

/// Waits until `peer` sees connection `id` leave.
async fn wait_leave(peer: &mut Peer, id: &str) {
    let wait = async {
        loop {
            match peer.stream.recv().await {
                Some(PresenceEvent::Update(PresenceUpdate::Leave { connection_id, .. }))
                    if connection_id == id =>
                {
                    return;
                }
                Some(_) => {}
                None => panic!("presence stream ended while waiting for a leave"),
            }
        }
    };
    tokio::time::timeout(UI_TIMEOUT, wait)
        .await
        .expect("timed out waiting for the app to leave");
}

/// The tray's menu, driven through the `tray_menu` command: the tray icon
/// itself cannot be clicked under Xvfb (no desktop there shows a tray), so
/// this runs the handler its clicks run.
#[test]
fn the_tray_menu_changes_what_a_peer_sees_and_quits_cleanly() {
    let out = output_dir("the_tray_menu_changes_what_a_peer_sees_and_quits_cleanly");
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();
    let server = StandaloneServer::start(&["--addr", "127.0.0.1:0"]);
    let url = server.url();
    let rt = runtime();
    let bob = json!({"userId": "bob", "username": "Bob", "status": ""});
    let mut bob = rt.block_on(Peer::join_room(&url, ROOM, ClientOptions::default(), bob));
    let app = driver.launch_with(&["--server", &url]).unwrap();
    app.wait_connection("online").unwrap();
    app.fill("#status", "reviewing").unwrap();
    app.click("#update").unwrap();
    let mine = |s: &Value| {
        s["userId"]
            .as_str()
            .is_some_and(|id| id.starts_with("user-"))
    };
    rt.block_on(bob.wait_state("my status", |s| mine(s) && s["status"] == "reviewing"));

    for (item, availability, shown) in [
        ("status-busy", "busy", "busy"),
        ("status-dnd", "dnd", "do not disturb"),
        ("status-away", "away", "away"),
    ] {
        app.tray_menu(item).unwrap();
        let seen = rt.block_on(bob.wait_state(availability, |s| {
            mine(s) && s["availability"] == availability
        }));
        assert_eq!(seen["status"], "reviewing", "the status text stays");
        app.wait_rows(shown, |rows| {
            rows.iter().any(|r| r.you && r.availability == shown)
        })
        .unwrap();
        assert_eq!(app.value("#availability").unwrap(), availability);
        if item == "status-dnd" {
            app.screenshot("01-do-not-disturb-from-the-tray").unwrap();
        }
    }
    app.tray_menu("status-available").unwrap();
    rt.block_on(bob.wait_state("available again", |s| {
        mine(s) && s.get("availability").is_none() && s["status"] == "reviewing"
    }));
    app.wait_rows("no availability word", |rows| {
        rows.iter().any(|r| r.you && r.availability.is_empty())
    })
    .unwrap();
    let err = app.tray_menu("status-asleep").unwrap_err();
    assert!(err.contains("Availability must be one of"), "{err}");

    // Quit: the app leaves the room, and is gone.
    let connection = app
        .js("return document.querySelector('#connection').dataset.status")
        .unwrap();
    assert_eq!(connection, "online");
    let me = rt.block_on(async {
        let states = bob.client.get_presence_state(ROOM).await.unwrap();
        states
            .states
            .iter()
            .find(|(_, s)| mine(s))
            .map(|(id, _)| id.clone())
            .expect("my connection")
    });
    // Asked for after the script has answered: the app is gone right after.
    app.js(
        "setTimeout(() => window.__TAURI__.core.invoke('tray_menu', {id: 'tray-quit'}), 100); \
         return true",
    )
    .unwrap();
    rt.block_on(wait_leave(&mut bob, &me));
}

/// Automatic away through its seam: the app reads its idle time from a
/// file here (`MESH_PRESENCE_IDLE_FILE`), so a test does not wait minutes.
#[test]
fn automatic_away_marks_me_for_peers_and_back_keeping_what_i_chose() {
    let out = output_dir("automatic_away_marks_me_for_peers_and_back_keeping_what_i_chose");
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    let url = app.server_url().unwrap();
    let rt = runtime();
    let bob = json!({"userId": "bob", "username": "Bob", "status": ""});
    let mut bob = rt.block_on(Peer::join(&url, bob));

    app.fill("#status", "deep in review").unwrap();
    app.js("document.getElementById('availability').value = 'busy'")
        .unwrap();
    app.click("#update").unwrap();
    let mine = |s: &Value| {
        s["userId"]
            .as_str()
            .is_some_and(|id| id.starts_with("user-"))
    };
    rt.block_on(bob.wait_state("busy, by hand", |s| {
        mine(s) && s["availability"] == "busy" && s["status"] == "deep in review"
    }));

    // Eleven minutes without input (the default is ten).
    let went_idle = mesh_protocol::now_millis() - 11 * 60_000;
    fs::write(driver.idle_file(), (11 * 60_000).to_string()).unwrap();
    let away =
        rt.block_on(bob.wait_state("the away marker", |s| mine(s) && s["idleSince"].is_u64()));
    let since = away["idleSince"].as_u64().unwrap();
    assert!(
        since.abs_diff(went_idle) < 30_000,
        "idle since {since}, went idle about {went_idle}"
    );
    assert_eq!(away["status"], "deep in review", "my status stays");
    assert_eq!(away["availability"], "busy", "what I chose stays");
    app.wait_rows("away on my row", |rows| {
        rows.iter()
            .any(|r| r.you && r.availability.starts_with("away since "))
    })
    .unwrap();
    app.screenshot("01-away-while-idle").unwrap();

    // Back: the marker goes, the rest is as I left it.
    fs::write(driver.idle_file(), "0").unwrap();
    let back = rt.block_on(bob.wait_state("back", |s| {
        mine(s) && s.get("idleSince").is_none() && s["status"] == "deep in review"
    }));
    assert_eq!(back["availability"], "busy");
    app.wait_rows("busy again on my row", |rows| {
        rows.iter().any(|r| r.you && r.availability == "busy")
    })
    .unwrap();
    app.screenshot("02-back").unwrap();
    app.quit().unwrap();
}

/// The names, times and statuses under "Left recently".
fn last_seen(app: &mesh_presence_e2e::app::App) -> Result<Vec<Value>, String> {
    let v = app.js("if (document.getElementById('last-seen').hidden) return [];
         return Array.from(document.querySelectorAll('#last-seen-list li')).map(li => ({
           name: li.querySelector('.name').textContent,
           ago: li.querySelector('.left-ago').textContent,
           status: li.querySelector('.last-status').textContent }))")?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

#[test]
fn who_left_stays_under_last_seen_across_a_restart_until_cleared() {
    let out = output_dir("who_left_stays_under_last_seen_across_a_restart_until_cleared");
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();
    let server = StandaloneServer::start(&["--addr", "127.0.0.1:0"]);
    let url = server.url();
    let rt = runtime();
    let app = driver.launch_with(&["--server", &url]).unwrap();
    app.wait_connection("online").unwrap();
    let bob = json!({"userId": "bob", "username": "Bob", "status": "off to the dentist"});
    let bob = rt.block_on(Peer::join(&url, bob));
    let carol = json!({"userId": "carol", "username": "Carol", "status": "here"});
    let _carol = rt.block_on(Peer::join(&url, carol));
    app.wait_rows("Bob and Carol", |rows| rows.len() == 3)
        .unwrap();

    rt.block_on(bob.client.close());
    let seen = wait_for("Bob under last seen", UI_TIMEOUT, || {
        let seen = last_seen(&app)?;
        Ok((seen.len() == 1).then_some(seen))
    })
    .unwrap();
    assert_eq!(seen[0]["name"], "Bob");
    assert_eq!(seen[0]["ago"], "left just now");
    assert_eq!(seen[0]["status"], "off to the dentist", "his last status");
    let rows = app.rows().unwrap();
    assert_eq!(rows.len(), 2, "present: Carol and me: {rows:?}");
    let dimmed = app
        .js("return Number(getComputedStyle(document.getElementById('last-seen')).opacity)")
        .unwrap();
    assert!(dimmed.as_f64().unwrap() < 1.0, "dimmed: {dimmed}");
    app.screenshot("01-bob-left").unwrap();
    app.quit().unwrap();

    // A restart remembers him.
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    let seen = wait_for("Bob under last seen after a restart", UI_TIMEOUT, || {
        let seen = last_seen(&app)?;
        Ok((seen.len() == 1).then_some(seen))
    })
    .unwrap();
    assert_eq!(seen[0]["name"], "Bob");
    app.screenshot("02-after-a-restart").unwrap();

    // Settings → Clear last seen forgets him.
    app.click("#open-settings").unwrap();
    app.screenshot("03-settings").unwrap();
    app.click("#clear-last-seen").unwrap();
    app.click("#settings-cancel").unwrap();
    wait_for("last seen cleared", UI_TIMEOUT, || {
        Ok(last_seen(&app)?.is_empty().then_some(()))
    })
    .unwrap();
    app.quit().unwrap();
}

/// The notifications the app announced, through their seam: each is a JSON
/// line in a file (`MESH_PRESENCE_NOTIFY_LOG`) instead of on the desktop.
fn notifications(driver: &Driver) -> Vec<Value> {
    fs::read_to_string(driver.notify_log())
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

/// Waits until the app has announced someone named `name`, and returns
/// every notification so far.
fn wait_notification(driver: &Driver, name: &str) -> Vec<Value> {
    wait_for(&format!("a notification about {name}"), UI_TIMEOUT, || {
        let all = notifications(driver);
        let found = all
            .iter()
            .any(|n| n["title"] == format!("{name} is online in {ROOM}"));
        Ok(found.then_some(all))
    })
    .unwrap()
}

#[test]
fn a_starred_peer_who_comes_back_is_announced_once_and_stays_starred() {
    let out = output_dir("a_starred_peer_who_comes_back_is_announced_once_and_stays_starred");
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();
    let server = StandaloneServer::start(&["--addr", "127.0.0.1:0"]);
    let url = server.url();
    let rt = runtime();
    let bob = json!({"userId": "bob", "username": "Bob", "status": "reviewing"});
    let carol = json!({"userId": "carol", "username": "Carol", "status": "here"});
    let bob_peer = rt.block_on(Peer::join(&url, bob.clone()));
    let carol_peer = rt.block_on(Peer::join(&url, carol.clone()));
    let app = driver.launch_with(&["--server", &url]).unwrap();
    app.wait_connection("online").unwrap();
    app.wait_rows("Bob and Carol", |rows| rows.len() == 3)
        .unwrap();

    // A star on every row but mine; a click stars Bob, then Carol.
    let stars = app
        .js(
            "return Array.from(document.querySelectorAll('.user-row:not([hidden])'))
               .map(r => ({id: r.dataset.userId, star: !r.querySelector('.star').hidden}))",
        )
        .unwrap();
    for row in stars.as_array().unwrap() {
        let mine = !["bob", "carol"].contains(&row["id"].as_str().unwrap());
        assert_eq!(row["star"], !mine, "{stars}");
    }
    app.click(r#".user-row[data-user-id="bob"] .star"#).unwrap();
    app.wait_rows("Bob starred", |rows| {
        rows.iter().any(|r| r.name == "Bob" && r.starred)
            && rows.iter().all(|r| r.name == "Bob" || !r.starred)
    })
    .unwrap();
    app.screenshot("01-bob-starred").unwrap();
    app.click(r#".user-row[data-user-id="carol"] .star"#)
        .unwrap();
    app.wait_rows("Carol starred", |rows| {
        rows.iter().any(|r| r.name == "Carol" && r.starred)
    })
    .unwrap();

    // A restart remembers the stars, and its first list announces no one.
    app.quit().unwrap();
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    app.wait_rows("the stars after a restart", |rows| {
        rows.len() == 3 && rows.iter().filter(|r| r.starred).count() == 2
    })
    .unwrap();

    // Two windows: two connections see whoever comes.
    app.click("#new-window").unwrap();
    app.wait_rows("me with 2 tabs", |rows| {
        rows.iter().any(|r| r.you && r.tabs == "2 tabs")
    })
    .unwrap();

    // Bob leaves (under last seen) and comes back: one notification.
    rt.block_on(bob_peer.client.close());
    app.wait_rows("Bob gone", |rows| rows.len() == 2).unwrap();
    let bob_peer = rt.block_on(Peer::join(&url, bob.clone()));
    let shown = wait_notification(&driver, "Bob");
    assert_eq!(shown[0]["userId"], "bob");
    assert_eq!(shown[0]["body"], "reviewing");
    app.switch_to_other_window().unwrap();
    app.wait_rows("Bob back in the second window", |rows| {
        rows.iter().any(|r| r.name == "Bob" && r.starred)
    })
    .unwrap();
    app.switch_to_other_window().unwrap();

    // He flaps: gone and back again within the minute, nothing more.
    rt.block_on(bob_peer.client.close());
    app.wait_rows("Bob gone again", |rows| rows.len() == 2)
        .unwrap();
    let _bob_peer = rt.block_on(Peer::join(&url, bob));
    app.wait_rows("Bob back again", |rows| rows.len() == 3)
        .unwrap();

    // Carol, after him, leaves and comes back: her notification is the
    // next and last line, so nothing about Bob was left on its way.
    rt.block_on(carol_peer.client.close());
    app.wait_rows("Carol gone", |rows| rows.len() == 2).unwrap();
    let _carol_peer = rt.block_on(Peer::join(&url, carol));
    let shown = wait_notification(&driver, "Carol");
    let titles: Vec<&str> = shown.iter().map(|n| n["title"].as_str().unwrap()).collect();
    assert_eq!(
        titles,
        [
            format!("Bob is online in {ROOM}"),
            format!("Carol is online in {ROOM}")
        ],
        "one per person coming online, not one per window or per flap"
    );
    app.wait_rows("both still starred", |rows| {
        rows.len() == 3 && rows.iter().filter(|r| r.starred).count() == 2
    })
    .unwrap();
    app.screenshot("02-announced-once-still-starred").unwrap();

    // The setting: on, and available (the seam stands in for the desktop).
    let setting = notify_setting(&app);
    assert_eq!(setting["on"], true, "{setting}");
    assert_eq!(setting["disabled"], false, "{setting}");
    assert!(
        setting["help"].as_str().unwrap().contains("Do not disturb"),
        "{setting}"
    );
    app.screenshot("03-settings").unwrap();
    app.click("#settings-cancel").unwrap();
    app.quit().unwrap();
}

/// A desktop notification service on the session bus (the freedesktop
/// interface a desktop's notification daemon serves): it hands the test
/// the title, body and actions of each notification it is asked to show.
struct NotificationService(std::sync::Mutex<std::sync::mpsc::Sender<Shown>>);

/// A notification's title, body and actions (key, label, key, label, ...).
type Shown = (String, String, Vec<String>);

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl NotificationService {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        _app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        _hints: std::collections::HashMap<String, zbus::zvariant::OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let _ = self.0.lock().unwrap().send((summary, body, actions));
        1
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into(), "actions".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "test".into(),
            "mesh-presence".into(),
            "1".into(),
            "1.2".into(),
        )
    }

    fn close_notification(&self, _id: u32) {}
}

const NOTIFICATIONS: &str = "org.freedesktop.Notifications";

/// Whether the session bus has a notification service, or could start one.
fn bus_offers_notifications(bus: &zbus::blocking::Connection) -> bool {
    let dbus = zbus::blocking::fdo::DBusProxy::new(bus).unwrap();
    let owned = dbus
        .name_has_owner(NOTIFICATIONS.try_into().unwrap())
        .unwrap();
    owned
        || dbus
            .list_activatable_names()
            .unwrap()
            .iter()
            .any(|n| n.as_str() == NOTIFICATIONS)
}

/// The settings panel's notification switch: whether it is on and
/// enabled, and its help text, once the panel is filled in.
fn notify_setting(app: &mesh_presence_e2e::app::App) -> Value {
    app.click("#open-settings").unwrap();
    let setting = wait_for("the settings filled in", UI_TIMEOUT, || {
        let setting = app.js("const s = document.getElementById('setting-notify');
             return {on: s.checked, disabled: s.disabled,
                     help: document.getElementById('setting-notify-help').textContent}")?;
        Ok((setting["help"] != "").then_some(setting))
    })
    .unwrap();
    app.js("document.getElementById('setting-notify').scrollIntoView()")
        .unwrap();
    setting
}

/// The real path, without the seam: the app asks the desktop's
/// notification service (over D-Bus, through Tauri's notification plugin),
/// and where there is none, Settings says so.
#[test]
fn notifications_go_to_the_desktops_service_and_without_one_settings_says_so() {
    let out =
        output_dir("notifications_go_to_the_desktops_service_and_without_one_settings_says_so");
    let bus = zbus::blocking::Connection::session()
        .expect("run under a D-Bus session (scripts/e2e.sh does)");
    assert!(
        !bus_offers_notifications(&bus),
        "this test needs a session bus without a notification service (scripts/e2e.sh starts a bare one)"
    );
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start_with_desktop_notifications(data.path(), &out).unwrap();
    let server = StandaloneServer::start(&["--addr", "127.0.0.1:0"]);
    let url = server.url();
    let rt = runtime();
    let bob = json!({"userId": "bob", "username": "Bob", "status": "reviewing"});
    let bob_peer = rt.block_on(Peer::join(&url, bob.clone()));

    // No service: the switch is greyed out, and says why.
    let app = driver.launch_with(&["--server", &url]).unwrap();
    app.wait_connection("online").unwrap();
    let setting = notify_setting(&app);
    assert_eq!(setting["disabled"], true, "{setting}");
    assert_eq!(
        setting["help"], "No notification service runs on this desktop.",
        "{setting}"
    );
    app.screenshot("01-no-notification-service").unwrap();
    app.click("#settings-cancel").unwrap();
    // Starring works all the same.
    app.click(r#".user-row[data-user-id="bob"] .star"#).unwrap();
    app.wait_rows("Bob starred", |rows| {
        rows.iter().any(|r| r.name == "Bob" && r.starred)
    })
    .unwrap();
    app.quit().unwrap();

    // A service appears (the desktop's daemon): the app, started again,
    // shows Bob's coming back there.
    let (tx, shown) = std::sync::mpsc::channel();
    let service = zbus::blocking::connection::Builder::session()
        .unwrap()
        .name(NOTIFICATIONS)
        .unwrap()
        .serve_at(
            "/org/freedesktop/Notifications",
            NotificationService(tx.into()),
        )
        .unwrap()
        .build()
        .unwrap();
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    let setting = notify_setting(&app);
    assert_eq!(setting["disabled"], false, "{setting}");
    assert_eq!(setting["on"], true, "{setting}");
    app.click("#settings-cancel").unwrap();
    app.wait_rows("Bob, starred", |rows| {
        rows.iter().any(|r| r.name == "Bob" && r.starred)
    })
    .unwrap();
    rt.block_on(bob_peer.client.close());
    app.wait_rows("Bob gone", |rows| rows.len() == 1).unwrap();
    let _bob_peer = rt.block_on(Peer::join(&url, bob));
    let (title, body, actions) = shown
        .recv_timeout(UI_TIMEOUT)
        .expect("a notification at the desktop's service");
    assert_eq!(title, format!("Bob is online in {ROOM}"));
    assert_eq!(body, "reviewing");

    // It can be clicked (the "default" action), and a click brings the
    // app up. (Under Xvfb a shown window looks like any other, so the app's
    // log says it handled the click.)
    assert!(actions.iter().any(|a| a == "default"), "{actions:?}");
    service
        .emit_signal(
            None::<()>,
            "/org/freedesktop/Notifications",
            NOTIFICATIONS,
            "ActionInvoked",
            &(1u32, "default"),
        )
        .unwrap();
    wait_for("the click handled", UI_TIMEOUT, || {
        let log = fs::read_to_string(out.join("app.log")).unwrap_or_default();
        Ok(log.contains("notification clicked").then_some(()))
    })
    .unwrap();
    assert!(
        !driver.notify_log().exists(),
        "not written to the seam's file"
    );
    app.quit().unwrap();
}
