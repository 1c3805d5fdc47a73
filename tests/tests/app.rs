//! The app in its real window: built binary, tauri-driver, WebKitWebDriver,
//! under Xvfb. Each test gets its own app data directory and embedded-server
//! port, and saves a screenshot per step in `test-output/e2e/<test>/`.
//!
//! Run with `scripts/test.sh` (or `xvfb-run -a cargo test -p
//! mesh-presence-e2e --features e2e -- --test-threads=1` after building the app).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_client::presence::{GroupKey, MemoryStore, Presence};
use mesh_client::{
    ClientOptions, MeshClient, PresenceEvent, PresenceStream, PresenceUpdate, Token,
};
use mesh_presence_e2e::app::{output_dir, server_binary, store_dir, Driver};
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
        Peer::join_with(url, ClientOptions::default(), state).await
    }

    async fn join_with(url: &str, options: ClientOptions, state: Value) -> Peer {
        Peer::join_room(url, ROOM, options, state).await
    }

    async fn join_room(url: &str, room: &str, options: ClientOptions, state: Value) -> Peer {
        let client = MeshClient::connect(url, options)
            .await
            .expect("peer connects");
        let (reply, stream) = client
            .subscribe_presence(room)
            .await
            .expect("peer subscribes");
        assert!(reply.success, "room {room} is tracked");
        client.join_room(room).await.expect("peer joins");
        assert!(client
            .publish_presence_state(room, state, None, false)
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
    // The page's JavaScript heap is told to collect early (js_heap.rs): the
    // web process must have inherited the setting from the app.
    let envs = web_process_environments();
    assert!(!envs.is_empty(), "the app's WebKit web process is running");
    for env in &envs {
        assert!(
            env.iter().any(|v| v == "JSC_largeHeapSize=8388608"),
            "the web process runs with the app's heap threshold: {:?}",
            env.iter()
                .filter(|v| v.starts_with("JSC_"))
                .collect::<Vec<_>>()
        );
    }
    app.screenshot("01-started").unwrap();
    app.quit().unwrap();
}

/// The environment of every WebKit web process started by the app binary
/// under test, read from /proc.
fn web_process_environments() -> Vec<Vec<String>> {
    let app = mesh_presence_e2e::app::app_binary()
        .canonicalize()
        .expect("app binary");
    let exe = |pid: &str| fs::read_link(format!("/proc/{pid}/exe")).ok();
    let parent = |pid: &str| -> Option<String> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The field after the state, counted after the ")" that ends the name.
        Some(
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .to_string(),
        )
    };
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|pid| pid.parse::<u32>().is_ok())
        .filter(|pid| exe(pid).is_some_and(|p| p.ends_with("WebKitWebProcess")))
        .filter(|pid| parent(pid).is_some_and(|ppid| exe(&ppid) == Some(app.clone())))
        .filter_map(|pid| fs::read(format!("/proc/{pid}/environ")).ok())
        .map(|raw| {
            raw.split(|&b| b == 0)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .collect()
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

#[test]
fn status_changed_in_the_second_window_is_what_a_newcomer_sees() {
    let out = output_dir("status_changed_in_the_second_window_is_what_a_newcomer_sees");
    let data = tempfile::tempdir().unwrap();
    let driver = Driver::start(data.path(), &out).unwrap();
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    app.fill("#status", "said in the first window").unwrap();
    app.click("#update").unwrap();
    let me = app
        .wait_rows("my first status", |rows| {
            rows.len() == 1 && rows[0].status == "said in the first window"
        })
        .unwrap()
        .remove(0)
        .id;

    app.click("#new-window").unwrap();
    app.wait_rows("me with 2 tabs", |rows| {
        rows.len() == 1 && rows[0].tabs == "2 tabs"
    })
    .unwrap();
    app.switch_to_other_window().unwrap();
    app.wait_connection("online").unwrap();
    app.fill("#status", "said in the second window").unwrap();
    app.click("#update").unwrap();
    app.wait_rows("the second window shows it", |rows| {
        rows.len() == 1 && rows[0].you && rows[0].status == "said in the second window"
    })
    .unwrap();
    app.screenshot("01-second-window").unwrap();

    // Newcomers, again and again (the server lists members in any order):
    // the list each one builds from its snapshot shows me once, with both
    // windows and the new status.
    let url = app.server_url().unwrap();
    let rt = runtime();
    for round in 0..5 {
        let users = rt.block_on(async {
            let client = MeshClient::connect(&url, ClientOptions::default())
                .await
                .expect("newcomer connects");
            let newcomer = Presence::new(
                client.clone(),
                ROOM,
                "newcomer",
                GroupKey::state_field("userId"),
                Arc::new(MemoryStore::new()),
            )
            .await
            .expect("newcomer's presence");
            let users = newcomer.users().borrow().clone();
            drop(newcomer);
            client.close().await;
            users
        });
        let row = users.iter().find(|u| *u.id == *me);
        let row = row.unwrap_or_else(|| panic!("round {round}: my row: {users:?}"));
        assert_eq!(row.tab_count, 2, "round {round}: {users:?}");
        assert_eq!(
            row.state.as_ref().map(|s| &s["status"]),
            Some(&json!("said in the second window")),
            "round {round}: {users:?}"
        );
    }
    // And the first window took the change over: both connections hold it.
    wait_for("both windows holding the new status", UI_TIMEOUT, || {
        let states = rt.block_on(async {
            let client = MeshClient::connect(&url, ClientOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let reply = client
                .get_presence_state(ROOM)
                .await
                .map_err(|e| e.to_string());
            client.close().await;
            reply
        })?;
        let held = states
            .states
            .values()
            .filter(|s| s["userId"] == me.as_str() && s["status"] == "said in the second window")
            .count();
        Ok((held == 2).then_some(()))
    })
    .unwrap();
    // And shows it: back in the first window, one row, the new status.
    app.switch_to_other_window().unwrap();
    app.wait_rows("the first window shows it too", |rows| {
        rows.len() == 1 && rows[0].you && rows[0].status == "said in the second window"
    })
    .unwrap();
    app.quit().unwrap();
}

/// The rows the page's list holds (its window of the list), as the backend
/// sent them.
const USERS_JS: &str = "return list.rows";

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

/// Forwards every TCP connection to `target` and counts them: how often a
/// client tried to connect, whatever the server answered.
async fn counting_proxy(target: SocketAddr) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (format!("ws://{addr}"), count)
}

/// The standalone `mesh-server`, started as an operator would; killed on drop.
struct StandaloneServer {
    child: Child,
    addr: SocketAddr,
}

impl StandaloneServer {
    fn start(args: &[&str]) -> StandaloneServer {
        let mut child = Command::new(server_binary())
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("mesh-server starts (scripts/e2e.sh builds it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // The "ready" line names the address it bound.
        let addr = loop {
            let line = lines.next().expect("server log ended early").unwrap();
            if let Some(at) = line.find("ws://") {
                let rest = &line[at + "ws://".len()..];
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                break rest[..end].parse().expect("an address in the ready line");
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        StandaloneServer { child, addr }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for StandaloneServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mesh-server token --secret-file SECRET ARGS...`: a token, as the README's
/// worked example mints them.
fn mint(secret: &Path, args: &[&str]) -> String {
    let output = Command::new(server_binary())
        .arg("token")
        .arg("--secret-file")
        .arg(secret)
        .args(args)
        .output()
        .expect("mesh-server token runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The README's worked example, with the app as Ada and a client as Bob.
#[test]
fn auth_server_shows_verified_names_and_refuses_bad_tokens() {
    let out = output_dir("auth_server_shows_verified_names_and_refuses_bad_tokens");
    let data = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let secret = keys.path().join("mesh.secret");
    // As `head -c 32 /dev/urandom | base64` leaves it: a trailing newline.
    fs::write(&secret, "c2VjcmV0IG9ubHkgdGhlIG9wZXJhdG9yIGtub3dzCg==\n").unwrap();
    let ada_token = mint(
        &secret,
        &[
            "--sub",
            "ada",
            "--name",
            "Ada L.",
            "--rooms",
            "general,doc:*",
        ],
    );
    let bob_token = mint(
        &secret,
        &[
            "--sub", "bob", "--name", "Bob", "--rooms", "general", "--ttl", "7d",
        ],
    );
    let secret_arg = secret.to_str().unwrap();
    let server =
        StandaloneServer::start(&["--addr", "127.0.0.1:0", "--auth-secret-file", secret_arg]);
    let rt = runtime();
    // The app goes through a proxy that counts its connection attempts.
    let (url, attempts) = rt.block_on(counting_proxy(server.addr));

    let driver = Driver::start(data.path(), &out).unwrap();
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    app.click("#open-settings").unwrap();
    app.fill("#setting-server", &url).unwrap();
    app.fill("#setting-token", &ada_token).unwrap();
    app.click("#settings-save").unwrap();
    // The server's word for who I am: its id and name, not the name in
    // Settings (the account's name by default).
    let rows = app
        .wait_rows("my verified row", |rows| {
            rows.iter()
                .any(|r| r.you && r.id == "ada" && r.name == "Ada L.")
        })
        .unwrap();
    assert!(rows.iter().all(|r| !r.unverified), "{rows:?}");
    assert_eq!(app.connection().unwrap(), "online");

    // Bob, with his own token, shows under his verified name, whatever his
    // state says; he sees my state under my verified id.
    let bob_options = ClientOptions {
        token: Some(Token::new(bob_token)),
        ..ClientOptions::default()
    };
    let mut bob = rt.block_on(Peer::join_with(
        &server.url(),
        bob_options,
        json!({"userId": "bob", "username": "Robert", "status": "reviewing"}),
    ));
    app.wait_rows("Bob's verified name and status", |rows| {
        rows.len() == 2
            && rows.iter().any(|r| {
                r.id == "bob" && r.name == "Bob" && r.status == "reviewing" && !r.unverified
            })
    })
    .unwrap();
    rt.block_on(bob.wait_state("my state under my verified id", |s| s["userId"] == "ada"));
    app.fill("#status", "verified").unwrap();
    app.click("#update").unwrap();
    rt.block_on(bob.wait_state("my new status", |s| {
        s["userId"] == "ada" && s["status"] == "verified"
    }));
    app.screenshot("01-verified").unwrap();

    // The store file holds the token, for its owner only.
    let store_file = store_dir(data.path()).join("mesh-presence.json");
    assert!(fs::read_to_string(&store_file)
        .unwrap()
        .contains(&ada_token));
    let mode = fs::metadata(&store_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", store_file.display());

    let refused = |what: &str| {
        let message = wait_for(what, UI_TIMEOUT, || {
            let shown = app.js("return !document.getElementById('error').hidden")? == json!(true);
            let text = app.text("#error-text")?;
            Ok((shown && text.contains("refused your token")).then_some(text))
        })
        .unwrap();
        assert!(message.contains("Settings → Token"), "{message}");
        app.wait_connection("offline").unwrap();
    };

    // A bad token: a clear message, offline, and one attempt: the app does
    // not try again on its own. Proving an absence takes a wait.
    let before = attempts.load(Ordering::SeqCst);
    app.click("#open-settings").unwrap();
    app.fill("#setting-token", "not-a-token").unwrap();
    app.click("#settings-save").unwrap();
    refused("the bad token's message");
    app.screenshot("02-bad-token").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(attempts.load(Ordering::SeqCst) - before, 1, "no retries");

    // A token that runs out while connected: the server closes the
    // connection, the client's one reconnect is refused, and the app says
    // so and stays offline instead of retrying.
    app.click("#error-dismiss").unwrap();
    let short_token = mint(
        &secret,
        &["--sub", "ada", "--name", "Ada L.", "--ttl", "5s"],
    );
    let before = attempts.load(Ordering::SeqCst);
    app.click("#open-settings").unwrap();
    app.fill("#setting-token", &short_token).unwrap();
    app.click("#settings-save").unwrap();
    refused("the expired token's message");
    app.screenshot("03-expired-token").unwrap();
    let at_message = attempts.load(Ordering::SeqCst);
    // The connection and the refused reconnect (only the refusal, if the
    // token ran out before the app connected on a slow machine).
    assert!(at_message - before <= 2, "{} attempts", at_message - before);
    // Longer than the client's second reconnect delay (2 to 4 s): a client
    // that went on retrying would have by now.
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(attempts.load(Ordering::SeqCst), at_message, "no retries");
    app.quit().unwrap();
    drop(driver);

    // Nothing the app logged shows a token.
    let log = fs::read_to_string(out.join("app.log")).unwrap();
    assert!(log.contains("mesh_presence_app"), "the app's log is there");
    for token in [&ada_token, &short_token] {
        assert!(!log.contains(token.as_str()), "the token is never logged");
    }
    drop(server);
}

/// How many people the large-room test puts in the room: many screens of
/// rows, so that the page's window is a small part of the list.
const LARGE_ROOM: usize = 1000;

/// The name of person `i` of the large room; zero-padded, so that the list
/// (sorted by name) has them in the order of `i`.
fn person(i: usize) -> String {
    format!("Person {i:04}")
}

/// Waits until every row in view of `#user-list` is drawn, and each one is
/// `expected[position - 1]` (name, status) — the right person in the right
/// place. Returns the rows.
fn wait_right_people(
    app: &mesh_presence_e2e::app::App,
    what: &str,
    expected: &[(String, String)],
) -> Vec<mesh_presence_e2e::app::Row> {
    wait_for(what, UI_TIMEOUT, || {
        let view = app.js(
            "const b = document.getElementById('user-list'); return [b.scrollTop, b.clientHeight];",
        )?;
        let (top, height) = (
            view[0].as_f64().unwrap_or(0.0),
            view[1].as_f64().unwrap_or(0.0),
        );
        // Rows are 48 px high; positions count from 1.
        let first = (top / 48.0).floor() as usize + 1;
        let last = (((top + height) / 48.0).ceil() as usize).min(expected.len());
        let rows = app.rows()?;
        for position in first..=last {
            let Some(row) = rows.iter().find(|r| r.position == position) else {
                return Err(format!("no row at {position} ({first}..={last}): {rows:?}"));
            };
            let (name, status) = &expected[position - 1];
            if (&row.name, &row.status) != (name, status) {
                return Err(format!("at {position}: {row:?}, want {name} / {status}"));
            }
        }
        for row in &rows {
            let (name, status) = &expected[row.position - 1];
            if (&row.name, &row.status) != (name, status) {
                return Err(format!(
                    "drawn at {}: {row:?}, want {name} / {status}",
                    row.position
                ));
            }
        }
        Ok(Some(rows))
    })
    .unwrap()
}

#[test]
fn a_large_room_shows_the_right_people_after_scrolling() {
    let out = output_dir("a_large_room_shows_the_right_people_after_scrolling");
    let data = tempfile::tempdir().unwrap();
    let rt = runtime();
    // Everyone connects from 127.0.0.1.
    let server = rt.block_on(async {
        Server::builder()
            .addr("127.0.0.1:0".parse().unwrap())
            .max_connections_per_ip(0)
            .track_presence(".*", TrackOptions::default())
            .bind()
            .await
            .expect("server binds")
    });
    let url = server.url();
    let driver = Driver::start(data.path(), &out).unwrap();
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    app.use_server(&url, UI_TIMEOUT).unwrap();
    app.fill("#username", "Ada").unwrap();
    app.click("#update").unwrap();
    app.wait_rows("my row", |rows| {
        rows.iter().any(|r| r.you && r.name == "Ada")
    })
    .unwrap();

    // The room fills in an order unlike the list's.
    let clients: Vec<MeshClient> = rt.block_on(async {
        let mut clients = Vec::with_capacity(LARGE_ROOM);
        let order: Vec<usize> = (0..LARGE_ROOM).map(|k| k * 7 % LARGE_ROOM).collect();
        for chunk in order.chunks(100) {
            let joins = chunk.iter().map(|&i| {
                let url = url.clone();
                async move {
                    let c = MeshClient::connect(&url, ClientOptions::default()).await?;
                    c.join_room(ROOM).await?;
                    let state = json!({"userId": format!("p{i}"), "username": person(i), "status": format!("status {i}")});
                    c.publish_presence_state(ROOM, state, None, false).await?;
                    Ok::<_, mesh_client::ClientError>((i, c))
                }
            });
            let mut joined = futures_util::future::join_all(joins).await;
            clients.extend(joined.drain(..).map(|r| r.expect("a person joins")));
        }
        clients.sort_by_key(|(i, _)| *i);
        clients.into_iter().map(|(_, c)| c).collect()
    });
    let mut expected: Vec<(String, String)> = vec![("Ada".into(), "idle".into())];
    expected.extend((0..LARGE_ROOM).map(|i| (person(i), format!("status {i}"))));
    app.wait_count(expected.len(), UI_TIMEOUT).unwrap();

    let top = wait_right_people(&app, "the top of the list", &expected);
    assert_eq!(top[0].position, 1);
    assert!(top.iter().any(|r| r.you && r.position == 1));
    app.screenshot("01-top").unwrap();

    // The middle, then the bottom, as a user would get there.
    app.js("document.getElementById('user-list').scrollTop = 500 * 48")
        .unwrap();
    let middle = wait_right_people(&app, "the middle of the list", &expected);
    assert!(middle.iter().any(|r| r.name == person(499)), "{middle:?}");
    app.screenshot("02-middle").unwrap();
    app.js("const b = document.getElementById('user-list'); b.scrollTop = b.scrollHeight")
        .unwrap();
    let bottom = wait_right_people(&app, "the bottom of the list", &expected);
    assert!(bottom.iter().any(|r| r.position == expected.len()));
    app.screenshot("03-bottom").unwrap();

    // The page holds a window of rows around what it shows, not the room.
    let held = app
        .js("return [list.rows.length, document.querySelectorAll('.user-row').length]")
        .unwrap();
    let (rows, elements) = (held[0].as_u64().unwrap(), held[1].as_u64().unwrap());
    assert!(
        rows <= 200,
        "the page holds {rows} rows of {}",
        expected.len()
    );
    assert!(elements <= 60, "the page has {elements} row elements");

    // While it stays there: someone in view changes, someone above leaves.
    let last = LARGE_ROOM - 1;
    rt.block_on(clients[last].publish_presence_state(
        ROOM,
        json!({"userId": format!("p{last}"), "username": person(last), "status": "changed at the bottom"}),
        None,
        false,
    ))
    .unwrap();
    expected.last_mut().unwrap().1 = "changed at the bottom".into();
    wait_right_people(&app, "a change in view", &expected);
    rt.block_on(clients[5].close());
    expected.remove(1 + 5);
    let bottom = wait_right_people(&app, "the list after someone above left", &expected);
    assert!(bottom
        .iter()
        .any(|r| r.position == expected.len() && r.name == person(last)));
    assert_eq!(app.text("#count").unwrap(), expected.len().to_string());
    app.screenshot("04-after-changes").unwrap();

    app.quit().unwrap();
    rt.block_on(async {
        for c in clients {
            c.close().await;
        }
        server.shutdown().await;
    });
}

/// Opening rooms from outside, the tray's menu, automatic away.
#[path = "app/desktop.rs"]
mod desktop;
