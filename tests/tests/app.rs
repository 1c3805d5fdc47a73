//! The app in its real window: built binary, tauri-driver, WebKitWebDriver,
//! under Xvfb. Each test gets its own app data directory and embedded-server
//! port, and saves a screenshot per step in `test-output/e2e/<test>/`.
//!
//! Run with `scripts/test.sh` (or `xvfb-run -a cargo test -p
//! mesh-presence-e2e --features e2e -- --test-threads=1` after building the app).

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_client::presence::{GroupKey, MemoryStore, Presence};
use mesh_client::{ClientOptions, MeshClient, PresenceEvent, PresenceStream, PresenceUpdate};
use mesh_presence_e2e::app::{output_dir, store_dir, Driver};
use mesh_presence_e2e::{wait_for, UI_TIMEOUT};
use mesh_server::{RunningServer, Server, TrackOptions};
use serde_json::{json, Value};

const ROOM: &str = "general";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A server like the standalone one, with short heartbeats so a dead link is
/// noticed quickly.
async fn start_server(addr: SocketAddr) -> RunningServer {
    Server::builder()
        .addr(addr)
        .ping_interval(Duration::from_millis(500))
        .latency_interval(Duration::from_millis(500))
        .track_presence(".*", TrackOptions::default())
        .bind()
        .await
        .expect("server binds")
}

/// Another user, played by our Rust client.
struct Peer {
    client: MeshClient,
    stream: PresenceStream,
    /// States already there when the peer subscribed.
    snapshot: Vec<Value>,
}

impl Peer {
    async fn join(url: &str, state: Value) -> Peer {
        let client = MeshClient::connect(url, ClientOptions::default())
            .await
            .expect("peer connects");
        let (reply, stream) = client
            .subscribe_presence(ROOM)
            .await
            .expect("peer subscribes");
        assert!(reply.success, "room {ROOM} is tracked");
        client.join_room(ROOM).await.expect("peer joins");
        assert!(client
            .publish_presence_state(ROOM, state, None, false)
            .await
            .expect("peer publishes"));
        let snapshot = reply.states.values().cloned().collect();
        Peer {
            client,
            stream,
            snapshot,
        }
    }

    /// Waits for a state (present at subscription, or updated since) that
    /// satisfies `check`.
    async fn wait_state(&mut self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        if let Some(s) = self.snapshot.iter().find(|s| check(s)) {
            return s.clone();
        }
        let wait = async {
            loop {
                match self.stream.recv().await {
                    Some(PresenceEvent::Update(PresenceUpdate::State {
                        state: Some(s), ..
                    })) if check(&s) => {
                        return s;
                    }
                    Some(PresenceEvent::Resync { states, .. }) => {
                        if let Some(s) = states.values().find(|s| check(s)) {
                            return s.clone();
                        }
                    }
                    Some(_) => {}
                    None => panic!("presence stream ended while waiting for {what}"),
                }
            }
        };
        tokio::time::timeout(UI_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }
}

#[test]
fn starts_and_shows_its_user() {
    let out = output_dir("starts_and_shows_its_user");
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();
    let app = driver.launch().unwrap();

    app.wait_connection("online").unwrap();
    let rows = app
        .wait_rows("my own row", |rows| rows.len() == 1 && rows[0].you)
        .unwrap();
    assert!(rows[0].id.starts_with("user-"), "stable user id: {rows:?}");
    assert_eq!(
        rows[0].name,
        whoami::realname(),
        "named after the account, not the user id"
    );
    assert_eq!(app.value("#username").unwrap(), whoami::realname());
    assert_eq!(rows[0].tabs, "1 tab");
    assert_eq!(app.text("#count").unwrap(), "1");
    let url = app.server_url().unwrap();
    assert_eq!(url, format!("ws://127.0.0.1:{}", driver.embedded_port));
    assert!(app.text("#server-url").unwrap().ends_with("(embedded)"));
    app.screenshot("01-started").unwrap();
    app.quit().unwrap();
}

#[test]
fn another_user_appears_and_sees_my_status() {
    let out = output_dir("another_user_appears_and_sees_my_status");
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    app.wait_rows("my own row", |rows| rows.iter().any(|r| r.you))
        .unwrap();
    let url = app.server_url().unwrap();

    let rt = runtime();
    let long = "reviewing the presence pull request, then lunch; back around two";
    let mut bob = rt.block_on(Peer::join(
        &url,
        json!({"userId": "bob", "username": "Bob", "status": long}),
    ));
    let rows = app
        .wait_rows("Bob with his status", |rows| {
            rows.iter()
                .any(|r| r.name == "Bob" && r.status == long && !r.you)
        })
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(app.text("#count").unwrap(), "2");
    // A long status gets the row's free width, and all of it on hover.
    let shown = app
        .js(
            r#"const row = document.querySelector('.user-row[data-user-id="bob"]');
               const status = row.querySelector('.user-status');
               return {title: status.title, width: status.clientWidth, row: row.clientWidth};"#,
        )
        .unwrap();
    assert_eq!(shown["title"], long);
    let (width, row) = (
        shown["width"].as_f64().unwrap(),
        shown["row"].as_f64().unwrap(),
    );
    assert!(
        width > row * 0.6,
        "the status has {width} px of a {row} px row"
    );
    app.screenshot("01-bob-appears").unwrap();

    app.fill("#username", "Ada").unwrap();
    app.fill("#status", "typing in the window").unwrap();
    app.click("#update").unwrap();
    let seen = rt.block_on(bob.wait_state("Ada's status at Bob", |s| {
        s["status"] == "typing in the window"
    }));
    assert_eq!(seen["username"], "Ada");
    assert!(seen["userId"].as_str().unwrap().starts_with("user-"));
    app.wait_rows("my new status in my window", |rows| {
        rows.iter()
            .any(|r| r.you && r.name == "Ada" && r.status == "typing in the window")
    })
    .unwrap();
    app.screenshot("02-status-sent").unwrap();

    // A short-lived status shows its remaining time.
    app.js("document.getElementById('expire').value = '30000'")
        .unwrap();
    app.fill("#status", "back in 30").unwrap();
    app.click("#update").unwrap();
    let rows = app
        .wait_rows("a countdown on my row", |rows| {
            rows.iter()
                .any(|r| r.you && r.status == "back in 30" && r.expiry.ends_with("s left"))
        })
        .unwrap();
    assert!(rows.iter().any(|r| r.you));
    app.screenshot("03-short-lived-status").unwrap();

    // Bob leaves: his row goes.
    rt.block_on(bob.client.close());
    app.wait_rows("Bob gone", |rows| rows.len() == 1 && rows[0].you)
        .unwrap();
    app.screenshot("04-bob-left").unwrap();
    app.quit().unwrap();
}

#[test]
fn external_server_restart_reconnects_and_restores() {
    let out = output_dir("external_server_restart_reconnects_and_restores");
    let data = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = rt.block_on(start_server("127.0.0.1:0".parse().unwrap()));
    let addr = server.local_addr();
    let url = server.url();

    let driver = Driver::start(data.path(), &out).unwrap();
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();

    // A bad URL is refused with a message naming the problem.
    app.click("#open-settings").unwrap();
    app.fill("#setting-server", "http://127.0.0.1:1").unwrap();
    app.click("#settings-save").unwrap();
    let message = wait_for("the URL error", UI_TIMEOUT, || {
        let text = app.text("#settings-error")?;
        Ok((!text.is_empty()).then_some(text))
    })
    .unwrap();
    assert!(message.contains("ws:// or wss://"), "{message}");
    app.screenshot("01-bad-url").unwrap();

    app.fill("#setting-server", &url).unwrap();
    app.click("#settings-save").unwrap();
    wait_for("the app on the external server", UI_TIMEOUT, || {
        let shown = app.server_url()?;
        Ok((shown == url && app.connection()? == "online").then_some(()))
    })
    .unwrap();
    app.fill("#status", "before the restart").unwrap();
    app.click("#update").unwrap();
    app.wait_rows("my status", |rows| {
        rows.len() == 1 && rows[0].you && rows[0].status == "before the restart"
    })
    .unwrap();
    app.screenshot("02-online-external").unwrap();

    rt.block_on(server.shutdown());
    app.wait_connection("reconnecting").unwrap();
    let text = app.text("#connection-text").unwrap();
    assert!(text.starts_with("Reconnecting (attempt "), "{text}");
    app.screenshot("03-reconnecting").unwrap();

    let server = rt.block_on(start_server(addr));
    app.wait_connection("online").unwrap();
    app.wait_rows("my restored status", |rows| {
        rows.len() == 1 && rows[0].you && rows[0].status == "before the restart"
    })
    .unwrap();
    // The restored state reached the new server, not just my window.
    let mut peer = rt.block_on(Peer::join(
        &url,
        json!({"userId": "carol", "username": "Carol"}),
    ));
    rt.block_on(peer.wait_state("my state on the restarted server", |s| {
        s["status"] == "before the restart"
    }));
    app.wait_rows("Carol and me", |rows| rows.len() == 2)
        .unwrap();
    app.screenshot("04-restored").unwrap();
    app.quit().unwrap();
    rt.block_on(server.shutdown());
}

#[test]
fn restart_restores_name_and_status() {
    let out = output_dir("restart_restores_name_and_status");
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();

    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    app.fill("#username", "Grace").unwrap();
    app.fill("#status", "compiling").unwrap();
    app.click("#update").unwrap();
    let before = app
        .wait_rows("my name and status", |rows| {
            rows.iter()
                .any(|r| r.you && r.name == "Grace" && r.status == "compiling")
        })
        .unwrap();
    app.screenshot("01-before-restart").unwrap();
    app.quit().unwrap();

    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    let after = app
        .wait_rows("my name and status after the restart", |rows| {
            rows.iter()
                .any(|r| r.you && r.name == "Grace" && r.status == "compiling")
        })
        .unwrap();
    assert_eq!(after[0].id, before[0].id, "same user id after a restart");
    assert_eq!(app.value("#username").unwrap(), "Grace");
    assert_eq!(app.value("#status").unwrap(), "compiling");
    app.screenshot("02-after-restart").unwrap();
    app.quit().unwrap();
}

#[test]
fn second_window_shows_me_once_with_two_tabs() {
    let out = output_dir("second_window_shows_me_once_with_two_tabs");
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    app.wait_rows("my row", |rows| rows.len() == 1 && rows[0].tabs == "1 tab")
        .unwrap();

    app.click("#new-window").unwrap();
    let rows = app
        .wait_rows("me once, with 2 tabs", |rows| {
            rows.len() == 1 && rows[0].you && rows[0].tabs == "2 tabs"
        })
        .unwrap();
    assert_eq!(app.text("#count").unwrap(), "1", "{rows:?}");
    app.screenshot("01-two-windows").unwrap();
    app.quit().unwrap();
}

/// Everything the page's list holds, as the backend sent it.
const USERS_JS: &str = "return Array.from(list.users.values())";

#[test]
fn an_expired_status_keeps_me_in_one_row() {
    let out = output_dir("an_expired_status_keeps_me_in_one_row");
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    let me = app
        .wait_rows("my own row", |rows| rows.len() == 1 && rows[0].you)
        .unwrap()
        .remove(0);
    let url = app.server_url().unwrap();

    // Bob groups the room into people, as any Presence user does.
    let rt = runtime();
    let bob = rt.block_on(async {
        let client = MeshClient::connect(&url, ClientOptions::default())
            .await
            .expect("Bob connects");
        let bob = Presence::new(
            client,
            ROOM,
            "bob",
            GroupKey::state_field("userId"),
            Arc::new(MemoryStore::new()),
        )
        .await
        .expect("Bob's presence");
        bob.publish(json!({"userId": "bob", "username": "Bob"}))
            .await
            .expect("Bob publishes");
        bob
    });

    // A 2-second status (the menu's shortest is 30 s; the page takes any).
    app.js("const e = document.getElementById('expire'); e.add(new Option('In 2 seconds', '2000')); e.value = '2000';")
        .unwrap();
    app.fill("#status", "back in 2").unwrap();
    app.click("#update").unwrap();
    app.wait_rows("my short-lived status", |rows| {
        rows.iter().any(|r| r.you && r.status == "back in 2")
    })
    .unwrap();
    app.screenshot("01-short-lived-status").unwrap();

    // Bob sees it run out: one row for me, my name, no status.
    let mut users = bob.users();
    let seen = rt.block_on(async {
        let wait = async {
            loop {
                {
                    let list = users.borrow_and_update();
                    let mine = list.iter().find(|u| *u.id == *me.id);
                    let cleared = mine
                        .and_then(|u| u.state.as_ref())
                        .is_some_and(|s| s["status"] == "" && s.get("expiresAt").is_none());
                    if cleared {
                        return list.clone();
                    }
                }
                users.changed().await.expect("Bob's list goes on");
            }
        };
        tokio::time::timeout(UI_TIMEOUT, wait)
            .await
            .expect("Bob sees my status cleared")
    });
    let ids: Vec<&str> = seen.iter().map(|u| &*u.id).collect();
    assert_eq!(ids, ["bob", me.id.as_str()], "one row each: {seen:?}");
    let mine = &seen[1];
    assert_eq!(mine.tab_count, 1);
    assert_eq!(mine.state.as_ref().unwrap()["username"], me.name.as_str());

    // My window got the same cleared state: still one row, still me.
    wait_for("my cleared state in my window", UI_TIMEOUT, || {
        let users = app.js(USERS_JS)?;
        let users = users.as_array().cloned().unwrap_or_default();
        let mine: Vec<&Value> = users.iter().filter(|u| u["id"] != "bob").collect();
        let done = mine.len() == 1
            && mine[0]["id"] == me.id.as_str()
            && mine[0]["you"] == true
            && mine[0]["status"] == ""
            && mine[0]["expiresAt"].is_null();
        if done {
            Ok(Some(()))
        } else {
            Err(format!("{users:?}"))
        }
    })
    .unwrap();
    // And draws it: Bob, and one row for me, with my name and no status.
    app.wait_rows("Bob and me, my status gone", |rows| {
        let mine: Vec<_> = rows.iter().filter(|r| r.you).collect();
        rows.len() == 2
            && mine.len() == 1
            && mine[0].id == me.id
            && mine[0].name == me.name
            && mine[0].status == "idle"
            && mine[0].expiry.is_empty()
    })
    .unwrap();
    app.screenshot("02-status-ran-out").unwrap();
    rt.block_on(async { drop(bob) });
    app.quit().unwrap();
}

#[test]
fn a_damaged_store_is_kept_and_reported_once() {
    let out = output_dir("a_damaged_store_is_kept_and_reported_once");
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();
    // A store cut short by a crash mid-write (as a non-atomic save could
    // leave it), and with a server URL that is not valid.
    let dir = store_dir(data.path());
    fs::create_dir_all(&dir).unwrap();
    let damaged = r#"{
  "settings": {"serverUrl": "ws://256.1.1.1", "room": "design", "displayName": "Grace"},
  "user-state:design": {"userId": "user-e2erecov1", "username": "Grace", "status": "writing"},
  "userId": "user-e2e"#;
    fs::write(dir.join("mesh-presence.json"), damaged).unwrap();

    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    let rows = app
        .wait_rows("me, as I was", |rows| {
            rows.len() == 1 && rows[0].you && rows[0].status == "writing"
        })
        .unwrap();
    assert_eq!(rows[0].id, "user-e2erecov1", "the user id is recovered");
    assert_eq!(rows[0].name, "Grace");
    assert_eq!(app.text("#room-name").unwrap(), "design");
    assert!(
        app.text("#server-url").unwrap().ends_with("(embedded)"),
        "a bad server URL falls back to the embedded server"
    );

    // The damaged file is kept, byte for byte, beside the new one.
    let backups = backups_in(&dir);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(fs::read_to_string(&backups[0]).unwrap(), damaged);
    let store: Value =
        serde_json::from_slice(&fs::read(dir.join("mesh-presence.json")).unwrap()).unwrap();
    assert_eq!(store["userId"], "user-e2erecov1");

    let notices = wait_for("the notices", UI_TIMEOUT, || {
        let v = app.js("return Array.from(document.querySelectorAll('#notices .notice')).map(n => n.textContent)")?;
        let notices: Vec<String> = v
            .as_array()
            .map(|a| a.iter().filter_map(|n| n.as_str().map(String::from)).collect())
            .unwrap_or_default();
        Ok((notices.len() >= 2).then_some(notices))
    })
    .unwrap();
    assert_eq!(notices.len(), 2, "{notices:?}");
    let backup = backups[0].display().to_string();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("damaged") && n.contains(&backup)),
        "{notices:?}"
    );
    assert!(
        notices.iter().any(|n| n.contains("ws://256.1.1.1")),
        "{notices:?}"
    );
    app.screenshot("01-recovered").unwrap();

    // A second window is not told again.
    app.click("#new-window").unwrap();
    app.wait_rows("me with 2 tabs", |rows| {
        rows.len() == 1 && rows[0].tabs == "2 tabs"
    })
    .unwrap();
    app.quit().unwrap();

    // Nor is the next start: the store is sound now, and no new backup
    // appears. (The bad server URL is still there to fix.)
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    app.wait_rows("me again", |rows| {
        rows.len() == 1 && rows[0].id == "user-e2erecov1"
    })
    .unwrap();
    let texts = app
        .js("return Array.from(document.querySelectorAll('#notices .notice')).map(n => n.textContent)")
        .unwrap();
    let texts = texts.as_array().cloned().unwrap_or_default();
    assert!(
        texts
            .iter()
            .all(|t| !t.as_str().unwrap_or_default().contains("damaged")),
        "{texts:?}"
    );
    assert_eq!(backups_in(&dir).len(), 1);
    app.screenshot("02-next-start").unwrap();
    app.quit().unwrap();
}

/// The backups of damaged store files in `dir`.
fn backups_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("mesh-presence.damaged-"))
        })
        .collect();
    found.sort();
    found
}
