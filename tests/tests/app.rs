//! The app in its real window: built binary, tauri-driver, WebKitWebDriver,
//! under Xvfb. Each test gets its own app data directory and embedded-server
//! port, and saves a screenshot per step in `test-output/e2e/<test>/`.
//!
//! Run with `scripts/test.sh` (or `xvfb-run -a cargo test -p
//! mesh-presence-e2e --features e2e -- --test-threads=1` after building the app).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_client::{
    ClientOptions, MeshClient, PresenceEvent, PresenceStream, PresenceUpdate, Token,
};
use mesh_presence_e2e::app::{output_dir, Driver};
use mesh_presence_e2e::{wait_for, UI_TIMEOUT};
use mesh_server::auth::sign_hs256;
use mesh_server::{Auth, RunningServer, Server, TrackOptions};
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
        let client = MeshClient::connect(url, options)
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

#[test]
fn auth_server_shows_verified_names_and_refuses_bad_tokens() {
    let out = output_dir("auth_server_shows_verified_names_and_refuses_bad_tokens");
    let data = tempfile::tempdir().unwrap();
    let secret = b"a secret only the server and its operator know";
    let rt = runtime();
    let server = rt.block_on(async {
        Server::builder()
            .addr("127.0.0.1:0".parse().unwrap())
            .ping_interval(Duration::from_millis(500))
            .track_presence(".*", TrackOptions::default())
            .auth(Auth::hs256(secret).unwrap())
            .bind()
            .await
            .expect("server binds")
    });
    let (url, attempts) = rt.block_on(counting_proxy(server.local_addr()));
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = |sub: &str, name: &str| {
        sign_hs256(secret, &json!({"sub": sub, "name": name, "exp": exp})).unwrap()
    };
    let ada_token = token("ada", "Ada (verified)");

    let driver = Driver::start(data.path(), &out).unwrap();
    let app = driver.launch().unwrap();
    app.wait_connection("online").unwrap();
    app.click("#open-settings").unwrap();
    app.fill("#setting-server", &url).unwrap();
    app.fill("#setting-token", &ada_token).unwrap();
    app.click("#settings-save").unwrap();
    // The server's word for who I am: its id and name, whatever I typed.
    let rows = app
        .wait_rows("my verified row", |rows| {
            rows.iter()
                .any(|r| r.you && r.id == "ada" && r.name == "Ada (verified)")
        })
        .unwrap();
    assert!(rows.iter().all(|r| !r.unverified), "{rows:?}");
    assert_eq!(app.connection().unwrap(), "online");

    // Bob, with his own token, shows under his verified name.
    let bob_options = ClientOptions {
        token: Some(Token::new(token("bob", "Bob (verified)"))),
        ..ClientOptions::default()
    };
    let _bob = rt.block_on(Peer::join_with(
        &server.url(),
        bob_options,
        json!({"userId": "bob", "username": "Robert", "status": "reviewing"}),
    ));
    app.wait_rows("Bob's verified name and status", |rows| {
        rows.iter().any(|r| {
            r.id == "bob" && r.name == "Bob (verified)" && r.status == "reviewing" && !r.unverified
        })
    })
    .unwrap();
    app.screenshot("01-verified").unwrap();

    // The store keeps the token for its owner only, and no log shows it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file = data
            .path()
            .join("data/dev.meshpresence.app/mesh-presence.json");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }

    // A bad token: a clear message, offline, and no retry storm.
    let before = attempts.load(Ordering::SeqCst);
    app.click("#open-settings").unwrap();
    app.fill("#setting-token", "not-a-token").unwrap();
    app.click("#settings-save").unwrap();
    let message = wait_for("the token error", UI_TIMEOUT, || {
        let shown = app.js("return !document.getElementById('error').hidden")? == json!(true);
        let text = app.text("#error-text")?;
        Ok((shown && text.contains("refused your token")).then_some(text))
    })
    .unwrap();
    assert!(message.contains("Settings"), "{message}");
    app.wait_connection("offline").unwrap();
    app.screenshot("02-bad-token").unwrap();
    // Longer than the client's first reconnect delay (2 s): a client that
    // retried would have by now. Proving an absence takes a wait.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        attempts.load(Ordering::SeqCst) - before,
        1,
        "one attempt, no retries"
    );
    app.quit().unwrap();
    drop(driver);
    let log = std::fs::read_to_string(out.join("driver.log")).unwrap();
    assert!(!log.contains(&ada_token), "the token is never logged");
    rt.block_on(server.shutdown());
}
