//! The commands, invoked through Tauri's IPC on a mock runtime (no window
//! system needed), against real Mesh servers on 127.0.0.1.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_client::{ClientEvent, ClientOptions, MeshClient, PresenceEvent, PresenceUpdate};
use mesh_presence_app::events;
use mesh_presence_app::notify::{Notification, Sink};
use mesh_presence_app::settings::Settings;
use mesh_presence_app::state::AppState;
use mesh_presence_app::store::{AppStore, KeyValue, MemoryKeyValue};
use mesh_server::{RunningServer, Server, TrackOptions};
use serde_json::{json, Value};
use tauri::ipc::{CallbackFn, InvokeBody};
use tauri::test::{
    get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime, INVOKE_KEY,
};
use tauri::webview::InvokeRequest;
use tauri::{App, Emitter, EventId, Listener, Manager, WebviewWindow, WebviewWindowBuilder};

const WAIT: Duration = Duration::from_secs(20);

struct Harness {
    _app: App<MockRuntime>,
    window: WebviewWindow<MockRuntime>,
    rt: tokio::runtime::Runtime,
}

/// The payload [`Harness::listen`] sends to check that its listener is in
/// place; the listeners it adds never pass it on.
const PROBE: &str = "\"test-probe\"";

/// An event with a do-nothing listener from the start: emitting it makes
/// Tauri add the listeners it put aside (see [`Harness::listen`]).
const FLUSH: &str = "test://flush";

impl Harness {
    /// An app with an in-memory store whose embedded server starts at `port`.
    fn new(embedded_port: u16) -> Harness {
        Harness::with_store(embedded_port, Arc::new(MemoryKeyValue::default()))
    }

    /// An app over `kv`, as it finds it at start.
    fn with_store(embedded_port: u16, kv: Arc<MemoryKeyValue>) -> Harness {
        let app = mesh_presence_app::builder(mock_builder())
            .build(mock_context(noop_assets()))
            .expect("mock app");
        let store = AppStore::new(kv);
        app.manage(AppState::new(store, embedded_port).expect("state"));
        let window = WebviewWindowBuilder::new(&app, "main", Default::default())
            .build()
            .expect("mock window");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        // Added before anything emits, so never put aside.
        window.listen(FLUSH, |_| {});
        Harness {
            _app: app,
            window,
            rt,
        }
    }

    /// Calls `handler` with the payload of each `event` the window gets,
    /// from when this returns. Tauri puts aside a listener added while
    /// another thread emits (as the session's tasks do all the time), and
    /// adds it only after an emit that ran some listener: a test could wait
    /// for events its listener never gets. So this emits a probe until the
    /// listener has seen it, each time after an emit that makes Tauri add
    /// what it put aside.
    fn listen(&self, event: &str, handler: impl Fn(&str) + Send + 'static) -> EventId {
        let ready = Arc::new(AtomicBool::new(false));
        let seen = ready.clone();
        let id = self.window.listen(event, move |e| {
            if e.payload() == PROBE {
                seen.store(true, Ordering::SeqCst);
            } else {
                handler(e.payload());
            }
        });
        let probe: Value = serde_json::from_str(PROBE).expect("probe");
        while !ready.load(Ordering::SeqCst) {
            let label = self.window.label();
            self.window.emit_to(label, FLUSH, ()).expect("emit");
            self.window.emit_to(label, event, &probe).expect("emit");
            std::thread::yield_now();
        }
        id
    }

    fn invoke(&self, cmd: &str, args: Value) -> Result<Value, Value> {
        let request = InvokeRequest {
            cmd: cmd.into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: "tauri://localhost".parse().expect("url"),
            body: InvokeBody::Json(args),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        };
        get_ipc_response(&self.window, request)
            .map(|body| body.deserialize::<Value>().expect("json reply"))
    }

    fn server(&self) -> RunningServer {
        self.rt.block_on(async {
            Server::builder()
                .addr("127.0.0.1:0".parse().expect("addr"))
                .track_presence(".*", TrackOptions::default())
                .bind()
                .await
                .expect("server")
        })
    }

    /// Saves settings naming `url`, which reconnects the window in the
    /// background.
    fn save_server(&self, url: &str) {
        let view = self
            .invoke(
                "set_settings",
                json!({"settings": {"serverUrl": url, "room": "general", "displayName": "Ada"}}),
            )
            .expect("settings saved");
        assert_eq!(view["serverUrl"], url);
    }

    /// [`Harness::save_server`], and waits until that background reconnect
    /// is online, so that it cannot replace a session the test starts.
    fn use_server(&self, url: &str) {
        self.use_settings(url, || self.save_server(url));
    }

    /// Saves settings naming `url` and presenting `token`, and waits until
    /// the window is online there.
    fn use_server_with_token(&self, url: &str, token: &str) {
        self.use_settings(url, || {
            let settings = json!({"serverUrl": url, "room": "general", "displayName": "Ada",
                "token": token});
            let view = self
                .invoke("set_settings", json!({ "settings": settings }))
                .expect("settings saved");
            assert_eq!(view["token"], token);
        });
    }

    /// Runs `save` (which saves settings naming `url`), and waits until the
    /// window is online there.
    fn use_settings(&self, url: &str, save: impl FnOnce()) {
        let (tx, rx) = std::sync::mpsc::channel();
        let id = self.listen(events::STATUS, move |payload| {
            let _ = tx.send(serde_json::from_str::<Value>(payload).expect("json"));
        });
        save();
        loop {
            let status = rx.recv_timeout(WAIT).expect("the window goes online");
            if status["status"] == "online" && status["serverUrl"] == url {
                break;
            }
        }
        self.window.unlisten(id);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `presence://users` payload: the window, sent as a JSON string (see
/// `events::emit_users`).
fn users_event(payload: &str) -> Value {
    let json: String = serde_json::from_str(payload).expect("a JSON string");
    serde_json::from_str(&json).expect("a users window")
}

#[test]
fn settings_start_with_defaults_and_refuse_bad_urls() {
    let h = Harness::new(free_port());
    let view = h.invoke("get_settings", json!({})).unwrap();
    assert_eq!(view["serverUrl"], Value::Null);
    assert_eq!(view["room"], "general");
    let user_id = view["userId"].as_str().unwrap().to_string();
    assert!(user_id.starts_with("user-"));

    let err = h
        .invoke(
            "set_settings",
            json!({"settings": {"serverUrl": "http://example.com", "room": "general", "displayName": ""}}),
        )
        .unwrap_err();
    assert_eq!(err["code"], "EINVALID");
    assert!(
        err["message"].as_str().unwrap().contains("ws:// or wss://"),
        "{err}"
    );
    // Nothing was saved.
    assert_eq!(
        h.invoke("get_settings", json!({})).unwrap()["serverUrl"],
        Value::Null
    );

    let err = h
        .invoke("set_settings", json!({"settings": {"room": ""}}))
        .unwrap_err();
    assert!(
        err["message"].as_str().unwrap().starts_with("Room"),
        "{err}"
    );

    // A wrong payload shape is refused by the IPC layer, not a panic.
    assert!(h.invoke("set_settings", json!({"settings": 5})).is_err());

    let saved = h
        .invoke(
            "set_settings",
            json!({"settings": {"serverUrl": "wss://mesh.example.com", "room": "design", "displayName": " Ada "}}),
        )
        .unwrap();
    assert_eq!(saved["displayName"], "Ada");
    let view = h.invoke("get_settings", json!({})).unwrap();
    assert_eq!(view["room"], "design");
    assert_eq!(view["userId"], user_id.as_str(), "the user id is stable");
}

#[test]
fn a_bad_saved_server_url_falls_back_to_the_embedded_server_and_keeps_the_rest() {
    let kv = Arc::new(MemoryKeyValue::default());
    let stored = json!({"serverUrl": "ws://256.1.1.1", "room": "design", "displayName": "Ada"});
    kv.set("settings", stored).unwrap();
    let h = Harness::with_store(free_port(), kv);

    let view = h.invoke("get_settings", json!({})).unwrap();
    assert_eq!(view["serverUrl"], Value::Null);
    assert_eq!(view["room"], "design");
    assert_eq!(view["displayName"], "Ada");
    let notices = h.invoke("take_notices", json!({})).unwrap();
    let notices = notices.as_array().unwrap();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let notice = notices[0].as_str().unwrap();
    assert!(
        notice.contains("ws://256.1.1.1") && notice.contains("embedded server"),
        "{notice}"
    );
    assert_eq!(
        h.invoke("take_notices", json!({})).unwrap(),
        json!([]),
        "told once"
    );

    let status = h.invoke("connect", json!({})).unwrap();
    assert_eq!(status["status"], "online");
    assert_eq!(status["embedded"], true);
    assert_eq!(status["room"], "design");
}

#[test]
fn commands_before_connecting_say_so() {
    let h = Harness::new(free_port());
    let err = h
        .invoke(
            "publish",
            json!({"state": {"username": "Ada", "status": "x"}}),
        )
        .unwrap_err();
    assert_eq!(err["code"], "EOFFLINE");
    assert_eq!(
        h.invoke("clear_status", json!({})).unwrap_err()["code"],
        "EOFFLINE"
    );
    assert_eq!(h.invoke("read", json!({})).unwrap(), Value::Null);
}

#[test]
fn connect_publish_clear_and_read_reach_a_real_server() {
    let h = Harness::new(free_port());
    let server = h.server();
    h.use_server(&server.url());
    let me = h.invoke("get_settings", json!({})).unwrap()["userId"].clone();

    let status = h.invoke("connect", json!({})).unwrap();
    assert_eq!(status["status"], "online");
    assert_eq!(status["embedded"], false);
    assert_eq!(status["serverUrl"], server.url().as_str());
    assert!(status["connectionId"].is_string());

    let (peer, mut stream) = h.rt.block_on(async {
        let peer = MeshClient::connect(&server.url(), ClientOptions::default())
            .await
            .unwrap();
        let (reply, stream) = peer.subscribe_presence("general").await.unwrap();
        // Right after connect, the app has already published who we are.
        let mine = reply.states.values().find(|s| s["userId"] == me).cloned();
        assert_eq!(mine.map(|s| s["username"].clone()), Some(json!("Ada")));
        (peer, stream)
    });

    let published = h
        .invoke(
            "publish",
            json!({"state": {"username": "Ada", "status": "reviewing"}, "expireAfter": 60000}),
        )
        .unwrap();
    assert_eq!(
        published["userId"], me,
        "the app sets the user id, not the page"
    );
    assert!(published["expiresAt"].as_u64().is_some());
    let seen =
        h.rt.block_on(next_state(&mut stream, |s| s["status"] == "reviewing"));
    assert_eq!(seen["userId"], me);

    assert_eq!(h.invoke("read", json!({})).unwrap()["status"], "reviewing");

    let cleared = h.invoke("clear_status", json!({})).unwrap();
    assert_eq!(cleared["status"], "");
    assert_eq!(cleared["username"], "Ada", "clear keeps the name");
    h.rt.block_on(next_state(&mut stream, |s| {
        s["status"] == "" && s["userId"] == me
    }));

    // Connecting again to the same place keeps the connection.
    let again = h.invoke("connect", json!({})).unwrap();
    assert_eq!(again["connectionId"], status["connectionId"]);

    h.rt.block_on(async {
        peer.close().await;
        server.shutdown().await;
    });
}

#[test]
fn a_short_lived_status_is_cleared_when_it_runs_out() {
    let h = Harness::new(free_port());
    let server = h.server();
    h.use_server(&server.url());
    let me = h.invoke("get_settings", json!({})).unwrap()["userId"].clone();
    h.invoke("connect", json!({})).unwrap();
    let (peer, mut stream) = h.rt.block_on(async {
        let peer = MeshClient::connect(&server.url(), ClientOptions::default())
            .await
            .unwrap();
        let (_, stream) = peer.subscribe_presence("general").await.unwrap();
        (peer, stream)
    });
    h.invoke(
        "publish",
        json!({"state": {"username": "Ada", "status": "brb"}, "expireAfter": 300}),
    )
    .unwrap();
    h.rt.block_on(next_state(&mut stream, |s| s["status"] == "brb"));
    // The app clears the status itself; who you are (and so the row) stays.
    let cleared =
        h.rt.block_on(next_state(&mut stream, |s| s["status"] == ""));
    assert_eq!(cleared["userId"], me, "an empty userId would split you off");
    assert_eq!(cleared["username"], "Ada");
    assert!(cleared.get("expiresAt").is_none());
    assert_eq!(h.invoke("read", json!({})).unwrap()["status"], "");
    h.rt.block_on(async {
        peer.close().await;
        server.shutdown().await;
    });
}

#[test]
fn saved_state_is_published_once_already_corrected() {
    // As the app was left: a short-lived status that ran out since.
    let kv = Arc::new(MemoryKeyValue::default());
    let store = AppStore::new(kv.clone());
    let me = store.user_id().unwrap();
    let stale = json!({"userId": me, "username": "Ada", "status": "back in 5", "expiresAt": 1_000});
    store.save_last_state("general", &stale).unwrap();
    let h = Harness::with_store(free_port(), kv);
    let server = h.server();
    let settings = Settings {
        server_url: Some(server.url()),
        room: "general".into(),
        display_name: "Ada".into(),
        token: None,
        ..Settings::default()
    };
    store.save_settings(&settings).unwrap();

    let (peer, mut stream) = h.rt.block_on(async {
        let peer = MeshClient::connect(&server.url(), ClientOptions::default())
            .await
            .unwrap();
        let (_, stream) = peer.subscribe_presence("general").await.unwrap();
        (peer, stream)
    });
    let status = h.invoke("connect", json!({})).unwrap();
    let conn = status["connectionId"].as_str().unwrap().to_string();
    // A later publish marks the end of what the start published.
    h.invoke(
        "publish",
        json!({"state": {"username": "Ada", "status": "marker"}}),
    )
    .unwrap();
    let at_start = h.rt.block_on(async {
        let mut seen = Vec::new();
        loop {
            let (from, state) = next_update(&mut stream).await;
            if from != conn {
                continue;
            }
            if state["status"] == "marker" {
                return seen;
            }
            seen.push(state);
        }
    });
    assert_eq!(
        at_start,
        // Changed when it ran out, not now: a change made since on another
        // device still wins over it.
        vec![json!({"userId": me, "username": "Ada", "status": "", "changedAt": 1_000})],
        "one publish at start, the expired status already gone"
    );
    h.rt.block_on(async {
        peer.close().await;
        server.shutdown().await;
    });
}

#[test]
fn status_events_are_sent_only_when_something_changed() {
    let h = Harness::new(free_port());
    // Latency measured every 20 ms: on loopback, mostly the same figure.
    let server = h.rt.block_on(async {
        Server::builder()
            .addr("127.0.0.1:0".parse().expect("addr"))
            .latency_interval(Duration::from_millis(20))
            .track_presence(".*", TrackOptions::default())
            .bind()
            .await
            .expect("server")
    });
    h.use_server(&server.url());
    let (tx, rx) = std::sync::mpsc::channel();
    h.listen(events::STATUS, move |payload| {
        let _ = tx.send(serde_json::from_str::<Value>(payload).expect("json"));
    });
    h.invoke("connect", json!({})).unwrap();
    // Another client on the same server gets its latency pushes on the same
    // schedule: once it has had ten, so has the app.
    h.rt.block_on(async {
        let clock = MeshClient::connect(&server.url(), ClientOptions::default())
            .await
            .unwrap();
        let mut events = clock.events();
        let mut pushes = 0;
        while pushes < 10 {
            if let Ok(ClientEvent::Latency(_)) = events.recv().await {
                pushes += 1;
            }
        }
        clock.close().await;
    });
    let sent: Vec<Value> = rx.try_iter().collect();
    assert!(
        sent.iter()
            .any(|s| s["status"] == "online" && s["latencyMs"].is_u64()),
        "{sent:?}"
    );
    for pair in sent.windows(2) {
        assert_ne!(pair[0], pair[1], "an event that changed nothing: {sent:?}");
    }
    h.rt.block_on(server.shutdown());
}

#[test]
fn publish_refuses_bad_input() {
    let h = Harness::new(free_port());
    let server = h.server();
    h.use_server(&server.url());
    h.invoke("connect", json!({})).unwrap();
    let long = "x".repeat(500);
    let err = h
        .invoke(
            "publish",
            json!({"state": {"username": "Ada", "status": long}}),
        )
        .unwrap_err();
    assert_eq!(err["code"], "EINVALID");
    let err = h
        .invoke(
            "publish",
            json!({"state": {"username": "Ada", "status": "x"}, "expireAfter": 0}),
        )
        .unwrap_err();
    assert_eq!(err["code"], "EINVALID");
    assert!(h
        .invoke("publish", json!({"state": "not an object"}))
        .is_err());
    h.rt.block_on(server.shutdown());
}

#[test]
fn a_mesh_error_code_reaches_the_page_as_the_server_sent_it() {
    let h = Harness::new(free_port());
    // A server whose state limit is smaller than any state the app sends:
    // it answers every publish with `ETOOLARGE`.
    let server = h.rt.block_on(async {
        Server::builder()
            .addr("127.0.0.1:0".parse().expect("addr"))
            .track_presence(".*", TrackOptions::default())
            .max_state_bytes(16)
            .bind()
            .await
            .expect("server")
    });
    h.use_server(&server.url());
    h.invoke("connect", json!({})).unwrap();
    let err = h
        .invoke(
            "publish",
            json!({"state": {"username": "Ada", "status": "here"}}),
        )
        .unwrap_err();
    assert_eq!(err["code"], "ETOOLARGE", "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(message.starts_with("Could not publish your state"), "{err}");
    assert!(
        !message.contains("ETOOLARGE"),
        "the code is not repeated: {err}"
    );
    // So does the clear, which publishes too.
    let err = h.invoke("clear_status", json!({})).unwrap_err();
    assert_eq!(err["code"], "ETOOLARGE", "{err}");
    h.rt.block_on(server.shutdown());
}

#[test]
fn an_unreachable_server_is_reported_not_hung_on() {
    let h = Harness::new(free_port());
    // A port nobody listens on.
    let url = format!("ws://127.0.0.1:{}", free_port());
    h.save_server(&url);
    let err = h.invoke("connect", json!({})).unwrap_err();
    assert_eq!(err["code"], "EOFFLINE");
    assert!(err["message"].as_str().unwrap().contains(&url), "{err}");
}

#[test]
fn embedded_server_takes_the_next_port_when_the_first_is_busy() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let h = Harness::new(port);
    let status = h.invoke("connect", json!({})).unwrap();
    assert_eq!(status["status"], "online");
    assert_eq!(status["embedded"], true);
    let url = status["serverUrl"].as_str().unwrap();
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    assert_ne!(url, format!("ws://127.0.0.1:{port}"));
    drop(busy);
}

/// The next state set in the room: who set it, and the state.
async fn next_update(stream: &mut mesh_client::PresenceStream) -> (String, Value) {
    let wait = async {
        loop {
            match stream.recv().await {
                Some(PresenceEvent::Update(PresenceUpdate::State {
                    connection_id,
                    state: Some(s),
                    ..
                })) => return (connection_id, s),
                Some(_) => {}
                None => panic!("presence stream ended"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("state update in time")
}

async fn next_state(
    stream: &mut mesh_client::PresenceStream,
    check: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let (_, state) = next_update(stream).await;
        if check(&state) {
            return state;
        }
    }
}

/// A server that attests identity itself, as an embedder might: its
/// `on_connection` hook looks the bearer session up and puts the verified
/// `userId` and `username` in the connection's metadata, but, unlike
/// `--auth-secret-file`, lets a state claim any `userId`.
fn attesting_server(h: &Harness) -> RunningServer {
    h.rt.block_on(async {
        Server::builder()
            .addr("127.0.0.1:0".parse().expect("addr"))
            .track_presence(".*", TrackOptions::default())
            .on_connection(|info| async move {
                let who = match info.header("authorization") {
                    Some("Bearer s-ada") => Some(("ada", "Ada (verified)")),
                    Some("Bearer s-mallory") => Some(("mallory", "Mallory (verified)")),
                    _ => None,
                };
                if let Some((id, name)) = who {
                    let metadata = json!({"userId": id, "username": name});
                    info.set_metadata(metadata).await.expect("metadata set");
                }
                Ok(())
            })
            .bind()
            .await
            .expect("server")
    })
}

/// The rows the window was sent, by id, once `done` holds for them. The
/// page never asked for a window of its own, so events bring the list's
/// first rows: the whole of a small room.
fn wait_rows(
    rx: &std::sync::mpsc::Receiver<Value>,
    done: impl Fn(&HashMap<String, Value>) -> bool,
) -> HashMap<String, Value> {
    let mut rows = HashMap::new();
    loop {
        let event = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("rows: {rows:?}"));
        if let Some(sent) = event["rows"].as_array() {
            assert_eq!(event["start"], 0, "{event}");
            rows = sent
                .iter()
                .map(|row| (row["id"].as_str().expect("id").to_string(), row.clone()))
                .collect();
        }
        if done(&rows) {
            return rows;
        }
    }
}

#[test]
fn attested_identity_groups_by_it_names_rows_and_marks_impostors() {
    let h = Harness::new(free_port());
    let server = attesting_server(&h);
    let (tx, rx) = std::sync::mpsc::channel();
    h.listen(events::USERS, move |payload| {
        let _ = tx.send(users_event(payload));
    });
    h.use_server_with_token(&server.url(), "s-ada");

    let with_session = |session: Option<&str>| ClientOptions {
        token: session.map(mesh_client::Token::new),
        ..ClientOptions::default()
    };
    let (_peers, _stream) = h.rt.block_on(async {
        let watcher = MeshClient::connect(&server.url(), with_session(None))
            .await
            .unwrap();
        let (reply, stream) = watcher.subscribe_presence("general").await.unwrap();
        // The app published under the id the server attests, not its own.
        let mine: Vec<_> = reply.states.values().map(|s| s["userId"].clone()).collect();
        assert_eq!(mine, [json!("ada")]);
        // Mallory, verified as herself, claims to be Ada in her state; an
        // anonymous connection claims to be Ada too.
        let mut peers = vec![watcher];
        for session in [Some("s-mallory"), None] {
            let peer = MeshClient::connect(&server.url(), with_session(session))
                .await
                .unwrap();
            peer.join_room("general").await.unwrap();
            let claim = json!({"userId": "ada", "username": "Ada", "status": "it is me"});
            assert!(peer
                .publish_presence_state("general", claim, None, false)
                .await
                .unwrap());
            peers.push(peer);
        }
        (peers, stream)
    });

    let rows = wait_rows(&rx, |rows| {
        rows.len() == 3 && rows.values().filter(|r| r["status"] == "it is me").count() == 2
    });
    // Me: my verified id and name, one tab: nobody was merged into my row.
    let me = &rows["ada"];
    assert_eq!(me["you"], true, "{rows:?}");
    assert_eq!(me["username"], "Ada (verified)");
    assert_eq!(me["tabCount"], 1);
    assert_eq!(me["unverified"], false);
    // Mallory: her own row, under her verified name, marked.
    let mallory = &rows["mallory"];
    assert_eq!(mallory["username"], "Mallory (verified)");
    assert_eq!(mallory["status"], "it is me");
    assert_eq!(mallory["unverified"], true);
    // The anonymous one: a row of its own, marked.
    let anonymous: Vec<_> = rows
        .iter()
        .filter(|(id, _)| !["ada", "mallory"].contains(&id.as_str()))
        .collect();
    assert_eq!(anonymous.len(), 1, "{rows:?}");
    assert_eq!(anonymous[0].1["unverified"], true);
    assert_eq!(anonymous[0].1["you"], false);

    h.rt.block_on(server.shutdown());
}

#[test]
fn the_page_gets_a_window_of_the_sorted_list_and_news_of_it() {
    let h = Harness::new(free_port());
    let server = h.server();
    let err = h
        .invoke("users_window", json!({"start": 0, "end": 10}))
        .unwrap_err();
    assert_eq!(err["code"], "EOFFLINE");
    h.use_server(&server.url());
    let (tx, rx) = std::sync::mpsc::channel();
    h.listen(events::USERS, move |payload| {
        let _ = tx.send(users_event(payload));
    });
    // On a timeout, say what the list holds: a missing row and a stalled
    // list fail differently.
    let next_event = || {
        rx.recv_timeout(WAIT).unwrap_or_else(|e| {
            let window = h.invoke("users_window", json!({"start": 0, "end": 40}));
            panic!("no users event ({e}); the list now: {window:?}")
        })
    };

    // Thirty peers join, last name first; the list sorts them (me first).
    let peers: Vec<MeshClient> = h.rt.block_on(async {
        let mut peers = Vec::new();
        for i in (0..30).rev() {
            peers.push(peer(&server.url(), &format!("p{i}"), &format!("Peer {i:02}")).await);
        }
        peers
    });
    while next_event()["count"] != 31 {}

    let names = |w: &Value| -> Vec<String> {
        w["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["username"].as_str().unwrap().to_string())
            .collect()
    };
    let window = h
        .invoke("users_window", json!({"start": 10, "end": 15}))
        .unwrap();
    assert_eq!(window["count"], 31);
    assert_eq!(window["start"], 10);
    assert_eq!(
        names(&window),
        ["Peer 09", "Peer 10", "Peer 11", "Peer 12", "Peer 13"]
    );
    let first = h
        .invoke("users_window", json!({"start": 0, "end": 1}))
        .unwrap();
    assert_eq!(first["rows"][0]["you"], true, "you come first");
    let asked = h
        .invoke("users_window", json!({"start": 10, "end": 15}))
        .unwrap()["version"]
        .as_u64()
        .unwrap();

    // Peer 25 (out of the window), then Peer 11 (in it) change: the page
    // hears of the second, and no later event brings rows outside its window.
    h.rt.block_on(async {
        for (peer, i) in [(&peers[4], 25), (&peers[18], 11)] {
            let state = json!({"userId": format!("p{i}"), "username": format!("Peer {i:02}"), "status": "changed"});
            peer.publish_presence_state("general", state, None, false)
                .await
                .unwrap();
        }
    });
    loop {
        let event = next_event();
        // An event worked out before the request may still be on its way.
        if event["version"].as_u64().unwrap() <= asked {
            continue;
        }
        assert_eq!(event["count"], 31, "{event}");
        if event["rows"].is_null() {
            continue;
        }
        assert_eq!(event["start"], 10, "{event}");
        assert_eq!(event["rows"].as_array().unwrap().len(), 5, "{event}");
        if event["rows"][2]["status"] == "changed" {
            break;
        }
    }
    let window = h
        .invoke("users_window", json!({"start": 20, "end": 31}))
        .unwrap();
    let p25 = &window["rows"][6];
    assert_eq!(
        (&p25["username"], &p25["status"]),
        (&json!("Peer 25"), &json!("changed"))
    );

    // A window that ends before it starts, or is too large, is refused.
    for (start, end) in [(5, 2), (0, 100_000)] {
        let err = h
            .invoke("users_window", json!({"start": start, "end": end}))
            .unwrap_err();
        assert_eq!(err["code"], "EINVALID", "{err}");
    }
    h.rt.block_on(async {
        for peer in peers {
            peer.close().await;
        }
        server.shutdown().await;
    });
}

/// A notification sink that hands what it is given to the test.
struct Recorder(std::sync::Mutex<std::sync::mpsc::Sender<Notification>>);

impl Sink for Recorder {
    fn show(&self, notification: &Notification) -> Result<(), String> {
        let _ = self.0.lock().unwrap().send(notification.clone());
        Ok(())
    }
}

/// A peer in `general` of the server at `url`.
async fn peer(url: &str, id: &str, name: &str) -> MeshClient {
    let peer = MeshClient::connect(url, ClientOptions::default())
        .await
        .unwrap();
    peer.join_room("general").await.unwrap();
    let state = json!({"userId": id, "username": name, "status": "back"});
    assert!(peer
        .publish_presence_state("general", state, None, false)
        .await
        .unwrap());
    peer
}

#[test]
fn a_star_marks_the_row_is_saved_and_announces_the_person_once_when_back() {
    let kv = Arc::new(MemoryKeyValue::default());
    let h = Harness::with_store(free_port(), kv.clone());
    let (shown_tx, shown) = std::sync::mpsc::channel();
    h.window
        .state::<AppState>()
        .notifier()
        .set_sink(Ok(Box::new(Recorder(shown_tx.into()))));
    let server = h.server();
    let url = server.url();
    let (tx, rx) = std::sync::mpsc::channel();
    h.listen(events::USERS, move |payload| {
        let _ = tx.send(users_event(payload));
    });
    h.use_server(&url);
    let bob = h.rt.block_on(peer(&url, "bob", "Bob"));
    let rows = wait_rows(&rx, |rows| rows.contains_key("bob"));
    assert_eq!(rows["bob"]["starred"], false);
    let me = rows.values().find(|r| r["you"] == true).unwrap()["id"].clone();

    // Bad input: a clear error, nothing saved.
    let long = "x".repeat(257);
    for (user_id, says) in [
        ("", "is needed"),
        (long.as_str(), "at most 256 bytes"),
        (me.as_str().unwrap(), "cannot star yourself"),
    ] {
        let err = h
            .invoke("set_starred", json!({"userId": user_id, "starred": true}))
            .unwrap_err();
        assert_eq!(err["code"], "EINVALID", "{err}");
        assert!(err["message"].as_str().unwrap().contains(says), "{err}");
    }
    let err = h
        .invoke("set_starred", json!({"userId": "bob"}))
        .unwrap_err();
    assert!(err.to_string().contains("starred"), "{err}");
    assert_eq!(kv.get("starred"), None);

    // Starred: the row says so, and the store keeps it.
    h.invoke("set_starred", json!({"userId": "bob", "starred": true}))
        .unwrap();
    wait_rows(&rx, |rows| {
        rows.get("bob").is_some_and(|b| b["starred"] == true)
    });
    assert_eq!(kv.get("starred"), Some(json!(["bob"])));
    assert!(
        shown.try_recv().is_err(),
        "starring someone present is not news"
    );

    // Bob leaves and comes back: one notification. Carol, unstarred, comes
    // too: none for her.
    h.rt.block_on(bob.close());
    wait_rows(&rx, |rows| !rows.contains_key("bob"));
    let (bob, carol) = h.rt.block_on(async {
        (
            peer(&url, "bob", "Bob").await,
            peer(&url, "carol", "Carol").await,
        )
    });
    let n = shown.recv_timeout(WAIT).expect("a notification");
    assert_eq!(n.user_id, "bob");
    assert_eq!(n.title, "Bob is online in general");
    assert_eq!(n.body, "back");

    // Back again within the minute: nothing more. Carol, starred now,
    // leaves and comes back: she is announced, and the only one.
    h.invoke("set_starred", json!({"userId": "carol", "starred": true}))
        .unwrap();
    h.rt.block_on(async {
        bob.close().await;
        carol.close().await;
    });
    wait_rows(&rx, |rows| rows.len() == 1);
    let _back = h.rt.block_on(async {
        let bob = peer(&url, "bob", "Bob").await;
        (bob, peer(&url, "carol", "Carol").await)
    });
    let n = shown.recv_timeout(WAIT).expect("Carol's notification");
    assert_eq!(n.user_id, "carol", "Bob was announced a moment ago");
    let rows = wait_rows(&rx, |rows| rows.len() == 3);
    assert_eq!(rows["bob"]["starred"], true);
    assert!(shown.try_recv().is_err());

    // Unstarred: the row says so at once.
    h.invoke("set_starred", json!({"userId": "bob", "starred": false}))
        .unwrap();
    wait_rows(&rx, |rows| rows["bob"]["starred"] == false);
    assert_eq!(kv.get("starred"), Some(json!(["carol"])));
    h.rt.block_on(server.shutdown());
}

#[test]
fn last_seen_reaches_the_page_at_most_once_a_second_while_a_room_empties() {
    let kv = Arc::new(MemoryKeyValue::default());
    let h = Harness::with_store(free_port(), kv.clone());
    let server = h.server();
    h.use_server(&server.url());
    let (tx, rx) = std::sync::mpsc::channel();
    h.listen(events::LAST_SEEN, move |payload| {
        let entries = serde_json::from_str::<Value>(payload).expect("json");
        let _ = tx.send((std::time::Instant::now(), entries));
    });
    let (users_tx, users_rx) = std::sync::mpsc::channel();
    h.listen(events::USERS, move |payload| {
        let _ = users_tx.send(users_event(payload));
    });

    let peers: Vec<MeshClient> = h.rt.block_on(async {
        let mut peers = Vec::new();
        for i in 0..40 {
            peers.push(peer(&server.url(), &format!("p{i}"), &format!("Peer {i:02}")).await);
        }
        peers
    });
    while users_rx.recv_timeout(WAIT).expect("a users event")["count"] != 41 {}

    // They leave one after another, each departure a frame of its own: the
    // next leaves once the page has seen the last one go.
    for (i, peer) in peers.into_iter().enumerate() {
        h.rt.block_on(peer.close());
        while users_rx.recv_timeout(WAIT).expect("a users event")["count"] != 40 - i {}
    }
    let mut received = Vec::new();
    loop {
        let (at, entries) = rx.recv_timeout(WAIT).expect("a last-seen event");
        let n = entries.as_array().expect("a list").len();
        received.push(at);
        if n == 40 {
            break;
        }
    }
    // The first event went with the first list; every later one waited its
    // turn, however many frames the departures took.
    for pair in received.windows(2).skip(1) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(500),
            "last seen sent {gap:?} after the one before"
        );
    }
    // Nothing was lost by the pacing: everyone is in the store too.
    let stored = kv
        .get(&mesh_presence_app::last_seen::key("general"))
        .expect("last seen stored");
    assert_eq!(stored.as_array().map(Vec::len), Some(40), "{stored}");
    h.rt.block_on(server.shutdown());
}

/// The harness's own guarantee, which every test here relies on: Tauri
/// loses about a third of the listeners added while another thread emits
/// (measured: 88 of 300 without `Harness::listen`'s probe).
#[test]
fn a_listener_added_while_events_fly_hears_the_next_ones() {
    let h = Harness::new(free_port());
    for round in 0..100 {
        let event = format!("test://busy-{round}");
        let stop = Arc::new(AtomicBool::new(false));
        let emitter = {
            let (stop, window, event) = (stop.clone(), h.window.clone(), event.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    window.emit_to("main", &event, round).expect("emit");
                }
            })
        };
        let (tx, rx) = std::sync::mpsc::channel();
        h.listen(&event, move |payload| {
            let _ = tx.send(payload.to_string());
        });
        let heard = rx.recv_timeout(WAIT);
        stop.store(true, Ordering::SeqCst);
        emitter.join().expect("emitter");
        assert_eq!(
            heard.as_deref(),
            Ok(round.to_string().as_str()),
            "round {round}"
        );
    }
}
