//! The app in its real window: built binary, tauri-driver, WebKitWebDriver,
//! under Xvfb. Each test gets its own app data directory and embedded-server
//! port, and saves a screenshot per step in `test-output/e2e/<test>/`.
//!
//! Run with `scripts/test.sh` (or `xvfb-run -a cargo test -p
//! mesh-presence-e2e --features e2e -- --test-threads=1` after building the app).

use std::net::SocketAddr;
use std::time::Duration;

use mesh_client::{ClientOptions, MeshClient, PresenceEvent, PresenceStream, PresenceUpdate};
use mesh_presence_e2e::app::{output_dir, Driver};
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
    let mut bob = rt.block_on(Peer::join(
        &url,
        json!({"userId": "bob", "username": "Bob", "status": "reviewing"}),
    ));
    let rows = app
        .wait_rows("Bob with his status", |rows| {
            rows.iter()
                .any(|r| r.name == "Bob" && r.status == "reviewing" && !r.you)
        })
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(app.text("#count").unwrap(), "2");
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
    app.wait_rows("my first status", |rows| {
        rows.len() == 1 && rows[0].status == "said in the first window"
    })
    .unwrap();
    let me = app.rows().unwrap()[0].id.clone();

    app.click("#new-window").unwrap();
    app.wait_rows("me with 2 tabs", |rows| {
        rows.len() == 1 && rows[0].tabs == "2 tabs"
    })
    .unwrap();
    app.switch_to_new_window().unwrap();
    app.wait_connection("online").unwrap();
    app.fill("#status", "said in the second window").unwrap();
    app.click("#update").unwrap();
    app.wait_rows("the second window shows it", |rows| {
        rows.len() == 1 && rows[0].you && rows[0].status == "said in the second window"
    })
    .unwrap();
    app.screenshot("01-second-window").unwrap();

    // Newcomers, again and again (the server lists members in any order):
    // each sees the new status, and both windows hold it on the server.
    let url = app.server_url().unwrap();
    let rt = runtime();
    for _ in 0..5 {
        let states = rt.block_on(async {
            let client = MeshClient::connect(&url, ClientOptions::default())
                .await
                .expect("newcomer connects");
            let (reply, _stream) = client.subscribe_presence(ROOM).await.expect("subscribes");
            client.close().await;
            reply.states
        });
        let mine: Vec<&Value> = states.values().filter(|s| s["userId"] == me.as_str()).collect();
        assert_eq!(mine.len(), 2, "one state per window: {states:?}");
        let latest = mine
            .iter()
            .max_by_key(|s| s["changedAt"].as_u64())
            .unwrap();
        assert_eq!(latest["status"], "said in the second window", "{states:?}");
    }
    wait_for("both windows holding the new status", UI_TIMEOUT, || {
        let states = rt.block_on(async {
            let client = MeshClient::connect(&url, ClientOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let reply = client.get_presence_state(ROOM).await.map_err(|e| e.to_string());
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
    app.quit().unwrap();
}
