//! The server's behaviour over real sockets on 127.0.0.1, run once per
//! backend. Each test is an `async fn(BackendKind)`; the `suite!` macro at
//! the bottom turns every one into a `#[tokio::test]` per backend.

#[macro_use]
mod common;

use common::{assert_update, error_code, metric, scrape, BackendKind, Peer, WAIT};
use mesh_protocol::{command, PresenceUpdate, Strategy};
use mesh_server::{DisconnectInfo, Guard, Refusal, TrackOptions};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

async fn basic_commands(kind: BackendKind) {
    let server = kind.serve_every_room().await;
    let mut a = Peer::connect(&server.url()).await;
    assert!(a.id.starts_with(server.handle().instance_id()));
    assert_eq!(a.request(command::NOOP, json!({})).await, json!(true));

    let reply = a.request("no/such-command", json!({})).await;
    assert_eq!(error_code(&reply).as_deref(), Some("ENOTFOUND"));
    assert_eq!(reply["name"], "CommandError");

    // Ids are unique per connection.
    let b = Peer::connect(&server.url()).await;
    assert_ne!(a.id, b.id);
    server.shutdown().await;
}

async fn join_state_leave_are_seen(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .track_presence("lobby", TrackOptions::default())
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;
    let mut b = Peer::connect(&server.url()).await;

    let reply = a.join("lobby").await;
    assert_eq!(reply["success"], true);
    assert_eq!(reply["present"], json!([{ "id": a.id, "metadata": null }]));
    let reply = a.subscribe("lobby").await;
    assert_eq!(reply["success"], true);
    assert_eq!(reply["present"][0]["id"], a.id.as_str());

    let reply = b.join("lobby").await;
    let ids: Vec<&str> = reply["present"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&a.id.as_str()) && ids.contains(&b.id.as_str()));
    assert_update(&a.next_update().await, "join", &b.id, "lobby");

    // States pass through as they are, the clients' `changedAt` included.
    let typing = json!({"status": "typing", "changedAt": 1_764_130_000_123u64});
    assert_eq!(b.publish("lobby", typing.clone()).await, json!(true));
    let update = a.next_update().await;
    assert_update(&update, "state", &b.id, "lobby");
    let PresenceUpdate::State {
        state, timestamp, ..
    } = update
    else {
        unreachable!()
    };
    assert_eq!(state, Some(typing.clone()));
    assert!(timestamp > 1_600_000_000_000, "timestamp is epoch millis");

    let snapshot = a
        .request(command::GET_PRESENCE_STATE, json!({"roomName": "lobby"}))
        .await;
    assert_eq!(snapshot["success"], true);
    let mut present: Vec<String> = serde_json::from_value(snapshot["present"].clone()).unwrap();
    present.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(present, expected);
    assert_eq!(snapshot["states"][&b.id], typing);
    let subscribed = a.subscribe("lobby").await;
    assert_eq!(subscribed["states"][&b.id], typing);

    assert_eq!(
        b.request(command::CLEAR_PRESENCE_STATE, json!({"roomName": "lobby"}))
            .await,
        json!(true)
    );
    let update = a.next_update().await;
    assert!(matches!(update, PresenceUpdate::State { state: None, .. }));
    assert_eq!(
        b.request(command::CLEAR_PRESENCE_STATE, json!({"roomName": "lobby"}))
            .await,
        json!(false),
        "nothing left to clear"
    );

    let reply = b
        .request(command::LEAVE_ROOM, json!({"roomName": "lobby"}))
        .await;
    assert_eq!(reply, json!({"success": true}));
    assert_update(&a.next_update().await, "leave", &b.id, "lobby");
    let reply = b
        .request(command::LEAVE_ROOM, json!({"roomName": "lobby"}))
        .await;
    assert_eq!(reply, json!({"success": false}), "not in the room any more");
    server.shutdown().await;
}

async fn refusals(kind: BackendKind) {
    let guard = Guard::sync(|req| req.metadata["role"] == "admin");
    let server = kind
        .builder()
        .await
        .track_presence("open", TrackOptions::default())
        .track_presence(
            "staff",
            TrackOptions {
                ttl: None,
                guard: Some(guard),
            },
        )
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;

    // Untracked room: join works, presence does not.
    assert_eq!(a.join("plain").await["success"], true);
    assert_eq!(
        a.subscribe("plain").await,
        json!({"success": false, "present": []})
    );
    assert_eq!(a.publish("plain", json!({"x": 1})).await, json!(false));
    let snap = a
        .request(command::GET_PRESENCE_STATE, json!({"roomName": "plain"}))
        .await;
    assert_eq!(snap["success"], false);

    // Tracked room the sender is not in.
    assert_eq!(a.publish("open", json!({"x": 1})).await, json!(false));
    // Missing state.
    a.join("open").await;
    let reply = a
        .request(command::PUBLISH_PRESENCE_STATE, json!({"roomName": "open"}))
        .await;
    assert_eq!(reply, json!(false));
    // Unsubscribing from something never subscribed.
    let reply = a
        .request(command::UNSUBSCRIBE_PRESENCE, json!({"roomName": "open"}))
        .await;
    assert_eq!(reply, json!(false));
    assert_eq!(a.subscribe("open").await["success"], true);
    let reply = a
        .request(command::UNSUBSCRIBE_PRESENCE, json!({"roomName": "open"}))
        .await;
    assert_eq!(reply, json!(true));

    // Guarded room: refused until the metadata says admin.
    a.join("staff").await;
    assert_eq!(a.subscribe("staff").await["success"], false);
    assert_eq!(a.publish("staff", json!({"x": 1})).await, json!(false));
    a.request(
        command::SET_MY_CONNECTION_METADATA,
        json!({"metadata": {"role": "admin"}}),
    )
    .await;
    assert_eq!(a.subscribe("staff").await["success"], true);
    assert_eq!(a.publish("staff", json!({"x": 1})).await, json!(true));
    server.shutdown().await;
}

async fn unsubscribed_peer_gets_nothing(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .track_presence("r", TrackOptions::default())
        .bind()
        .await
        .unwrap();
    let url = server.url();
    let (mut a, mut b, mut c) = (
        Peer::connect(&url).await,
        Peer::connect(&url).await,
        Peer::connect(&url).await,
    );
    a.subscribe("r").await;
    c.subscribe("r").await;
    a.request(command::UNSUBSCRIBE_PRESENCE, json!({"roomName": "r"}))
        .await;
    b.join("r").await;
    b.publish("r", json!({"n": 1})).await;
    assert_update(&c.next_update().await, "join", &b.id, "r");
    assert_update(&c.next_update().await, "state", &b.id, "r");
    a.sync().await;
    assert_eq!(a.pending_updates(), 0);
    server.shutdown().await;
}

async fn state_expiry_sends_one_null(kind: BackendKind) {
    let server = kind.serve_every_room().await;
    let mut a = Peer::connect(&server.url()).await;
    let mut b = Peer::connect(&server.url()).await;
    a.subscribe("doc").await;
    b.join("doc").await;
    assert_update(&a.next_update().await, "join", &b.id, "doc");

    for round in 0..2 {
        let reply = b
            .request(
                command::PUBLISH_PRESENCE_STATE,
                json!({"roomName": "doc", "state": {"round": round}, "expireAfter": 150}),
            )
            .await;
        assert_eq!(reply, json!(true));
        let update = a.next_update().await;
        assert!(
            matches!(&update, PresenceUpdate::State { state: Some(s), .. } if s["round"] == round),
            "round {round}: {update:?}"
        );
        // The next update is the expiry; a duplicate null from the first
        // round would show up here in the second.
        let update = a.next_update().await;
        assert!(
            matches!(&update, PresenceUpdate::State { state: None, .. }),
            "round {round}: {update:?}"
        );
    }
    let snap = a
        .request(command::GET_PRESENCE_STATE, json!({"roomName": "doc"}))
        .await;
    assert_eq!(snap["states"], json!({}));
    a.sync().await;
    assert_eq!(a.pending_updates(), 0);
    server.shutdown().await;
}

async fn silent_state_is_stored_not_pushed(kind: BackendKind) {
    let server = kind.serve_every_room().await;
    let mut a = Peer::connect(&server.url()).await;
    let mut b = Peer::connect(&server.url()).await;
    a.subscribe("r").await;
    b.join("r").await;
    assert_update(&a.next_update().await, "join", &b.id, "r");
    let reply = b
        .request(
            command::PUBLISH_PRESENCE_STATE,
            json!({"roomName": "r", "state": {"quiet": true}, "silent": true}),
        )
        .await;
    assert_eq!(reply, json!(true));
    let snap = a
        .request(command::GET_PRESENCE_STATE, json!({"roomName": "r"}))
        .await;
    assert_eq!(snap["states"][&b.id], json!({"quiet": true}));
    b.publish("r", json!({"loud": true})).await;
    // The first update after the silent one is the loud one.
    let update = a.next_update().await;
    assert!(
        matches!(&update, PresenceUpdate::State { state: Some(s), .. } if s["loud"] == true),
        "{update:?}"
    );
    server.shutdown().await;
}

async fn presence_ttl_lapses_without_pongs(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .ping_interval(Duration::from_millis(100))
        .track_presence(
            "r",
            TrackOptions {
                ttl: Some(Duration::from_millis(400)),
                guard: None,
            },
        )
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;
    a.subscribe("r").await;
    a.join("r").await;
    let mut quiet = Peer::connect(&server.url()).await;
    quiet.auto_pong = false;
    quiet.join("r").await;
    assert_update(&a.next_update().await, "join", &a.id, "r");
    assert_update(&a.next_update().await, "join", &quiet.id, "r");
    // `a` answers pings while it waits, so only `quiet` lapses.
    assert_update(&a.next_update().await, "leave", &quiet.id, "r");
    let snap = a
        .request(command::GET_PRESENCE_STATE, json!({"roomName": "r"}))
        .await;
    assert_eq!(snap["present"], json!([a.id]));
    // The connection itself is still open: only its presence lapsed, and
    // joining again brings it back.
    quiet.sync().await;
    assert_eq!(quiet.publish("r", json!({"x": 1})).await, json!(false));
    quiet.join("r").await;
    assert_update(&a.next_update().await, "join", &quiet.id, "r");
    // Joining again while present announces nothing: the next update `a`
    // sees is `quiet` lapsing again, not a join of its own.
    a.join("r").await;
    assert_update(&a.next_update().await, "leave", &quiet.id, "r");
    server.shutdown().await;
}

async fn silent_peer_is_closed_by_heartbeat(kind: BackendKind) {
    let interval = Duration::from_millis(150);
    let server = kind
        .builder()
        .await
        .ping_interval(interval)
        .max_missed_pongs(1)
        .track_presence(".*", TrackOptions::default())
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;
    a.subscribe("r").await;
    let mut dead = Peer::connect(&server.url()).await;
    dead.auto_pong = false;
    dead.join("r").await;
    // From here `dead` stays silent (its socket open, nothing read or sent).
    let silent_since = Instant::now();
    assert_update(&a.next_update().await, "join", &dead.id, "r");
    assert_update(&a.next_update().await, "leave", &dead.id, "r");
    let took = silent_since.elapsed();
    // Closed within ping interval x (max missed pongs + 1), plus slack for
    // a busy machine.
    assert!(
        took < interval * 2 + Duration::from_secs(2),
        "took {took:?}"
    );
    let frame = dead.closed().await;
    assert_eq!(
        frame.map(|f| u16::from(f.code)),
        Some(1001),
        "closed as going away"
    );
    server.shutdown().await;
}

async fn dropped_socket_leaves(kind: BackendKind) {
    let server = kind.serve_every_room().await;
    let mut a = Peer::connect(&server.url()).await;
    a.subscribe("r").await;
    let mut gone = Peer::connect(&server.url()).await;
    gone.join("r").await;
    gone.publish("r", json!({"s": 1})).await;
    let gone_id = gone.id.clone();
    // No close frame: the TCP connection just goes away.
    drop(gone.into_inner());
    assert_update(&a.next_update().await, "join", &gone_id, "r");
    assert_update(&a.next_update().await, "state", &gone_id, "r");
    assert_update(&a.next_update().await, "leave", &gone_id, "r");
    let snap = a
        .request(command::GET_PRESENCE_STATE, json!({"roomName": "r"}))
        .await;
    assert_eq!(snap["states"], json!({}), "state deleted with the member");
    server.shutdown().await;
}

async fn malformed_frames_get_clear_errors(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .max_frame_bytes(4096)
        .max_state_bytes(1024)
        .track_presence(".*", TrackOptions::default())
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;
    a.join("r").await;

    // Garbage without an id is not answered.
    a.send_text("not json".into()).await;
    a.send_text("[1, 2, 3]".into()).await;
    a.send_text(r#"{"payload": {}}"#.into()).await;
    a.sync().await;
    assert!(a.pending_updates() == 0);

    // Wrong payload shapes with an id get EINVALID.
    let reply = a.request(command::JOIN_ROOM, json!({"room": "r"})).await;
    assert_eq!(error_code(&reply).as_deref(), Some("EINVALID"));
    let reply = a.request(command::JOIN_ROOM, json!({"roomName": ""})).await;
    assert_eq!(error_code(&reply).as_deref(), Some("EINVALID"));
    let reply = a.publish("r", json!("not an object")).await;
    assert_eq!(error_code(&reply).as_deref(), Some("EINVALID"));
    let reply = a
        .request(command::SET_MY_CONNECTION_METADATA, json!({}))
        .await;
    assert_eq!(error_code(&reply).as_deref(), Some("EINVALID"));
    // An id but no command.
    a.send_text(r#"{"id": 77, "payload": {}}"#.into()).await;
    let reply = a.reply_to(77, "").await;
    assert_eq!(error_code(&reply).as_deref(), Some("EINVALID"));

    // Too large: the frame, and a state within a small enough frame.
    let big = "x".repeat(5000);
    let reply = a.request(command::NOOP, json!({ "padding": big })).await;
    assert_eq!(error_code(&reply).as_deref(), Some("ETOOLARGE"));
    let reply = a.publish("r", json!({ "blob": "y".repeat(2000) })).await;
    assert_eq!(error_code(&reply).as_deref(), Some("ETOOLARGE"));
    let reply = a
        .request(
            command::SET_MY_CONNECTION_METADATA,
            json!({"metadata": {"blob": "y".repeat(2000)}}),
        )
        .await;
    assert_eq!(error_code(&reply).as_deref(), Some("ETOOLARGE"));

    // Nothing was lost: the connection still works and kept its room.
    a.sync().await;
    assert_eq!(a.publish("r", json!({"ok": true})).await, json!(true));
    server.shutdown().await;
}

async fn garbage_flood_closes_only_that_socket(kind: BackendKind) {
    let server = kind.serve_every_room().await;
    let mut a = Peer::connect(&server.url()).await;
    let mut b = Peer::connect(&server.url()).await;
    a.subscribe("r").await;
    b.join("r").await;
    assert_update(&a.next_update().await, "join", &b.id, "r");

    let flooder = Peer::connect(&server.url()).await;
    let flood = tokio::spawn(async move {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut tx, mut rx) = flooder.into_inner().split();
        let writer = async move {
            let mut sent = 0;
            for i in 0..10_000 {
                if tx
                    .send(Message::Text(format!("garbage {i}").into()))
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            sent
        };
        let reader = async move {
            while let Some(msg) = rx.next().await {
                if let Ok(Message::Close(frame)) = msg {
                    return frame.map(|f| u16::from(f.code));
                }
            }
            None
        };
        let (sent, close) = tokio::join!(writer, reader);
        (sent, close)
    });

    for n in 0..50 {
        assert_eq!(b.publish("r", json!({ "n": n })).await, json!(true));
        let update = a.next_update().await;
        assert!(
            matches!(&update, PresenceUpdate::State { state: Some(s), .. } if s["n"] == n),
            "{update:?}"
        );
    }
    let (sent, close) = tokio::time::timeout(WAIT, flood).await.unwrap().unwrap();
    assert_eq!(close, Some(1008), "policy violation close");
    assert!(sent > 100, "flood was under way ({sent} sent)");
    a.sync().await;
    b.sync().await;
    server.shutdown().await;
}

async fn metadata_strategies_and_privacy(kind: BackendKind) {
    let server = kind.serve_every_room().await;
    let mut a = Peer::connect(&server.url()).await;
    let mut b = Peer::connect(&server.url()).await;
    let set = |metadata: Value, strategy: &str| json!({"metadata": metadata, "options": {"strategy": strategy}});

    let mine = a
        .request(command::GET_MY_CONNECTION_METADATA, json!({}))
        .await;
    assert_eq!(mine, json!({"metadata": null}), "unset is null");
    let base = json!({"name": "Ada", "prefs": {"theme": "dark", "lang": "en"}, "tags": [1, 2]});
    let reply = a
        .request(command::SET_MY_CONNECTION_METADATA, set(base, "replace"))
        .await;
    assert_eq!(reply, json!({"success": true}));
    a.request(
        command::SET_MY_CONNECTION_METADATA,
        set(
            json!({"prefs": {"theme": "light"}, "tags": [3]}),
            "deepMerge",
        ),
    )
    .await;
    let mine = a
        .request(command::GET_MY_CONNECTION_METADATA, json!({}))
        .await;
    assert_eq!(
        mine["metadata"],
        json!({"name": "Ada", "prefs": {"theme": "light", "lang": "en"}, "tags": [3]})
    );
    a.request(
        command::SET_MY_CONNECTION_METADATA,
        set(json!({"prefs": {"size": 2}}), "merge"),
    )
    .await;
    let mine = a
        .request(command::GET_MY_CONNECTION_METADATA, json!({}))
        .await;
    assert_eq!(
        mine["metadata"],
        json!({"name": "Ada", "prefs": {"size": 2}, "tags": [3]})
    );
    a.request(
        command::SET_MY_CONNECTION_METADATA,
        json!({"metadata": {"only": true}}),
    )
    .await;
    let expected = json!({"only": true});

    let ask = json!({"connectionId": a.id});
    // No shared room: b learns nothing, not even that `a` exists.
    let reply = b
        .request(command::GET_CONNECTION_METADATA, ask.clone())
        .await;
    assert_eq!(reply, json!({"metadata": null}));
    // Sharing a room, or watching its presence, lets b see a's metadata.
    a.join("team").await;
    b.subscribe("team").await;
    let reply = b
        .request(command::GET_CONNECTION_METADATA, ask.clone())
        .await;
    assert_eq!(reply["metadata"], expected);
    b.request(command::UNSUBSCRIBE_PRESENCE, json!({"roomName": "team"}))
        .await;
    b.join("team").await;
    let reply = b
        .request(command::GET_CONNECTION_METADATA, ask.clone())
        .await;
    assert_eq!(reply["metadata"], expected);
    // Unknown connections are null, never an error.
    let reply = b
        .request(
            command::GET_CONNECTION_METADATA,
            json!({"connectionId": "nobody"}),
        )
        .await;
    assert_eq!(reply, json!({"metadata": null}));
    server.shutdown().await;

    // Open metadata: anyone may ask.
    let server = kind
        .builder()
        .await
        .open_metadata(true)
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;
    let mut b = Peer::connect(&server.url()).await;
    a.request(
        command::SET_MY_CONNECTION_METADATA,
        json!({"metadata": {"open": 1}}),
    )
    .await;
    let reply = b
        .request(
            command::GET_CONNECTION_METADATA,
            json!({"connectionId": a.id}),
        )
        .await;
    assert_eq!(reply["metadata"], json!({"open": 1}));
    server.shutdown().await;
}

async fn connection_hooks(kind: BackendKind) {
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<DisconnectInfo>();
    let server = kind
        .builder()
        .await
        .metadata_from_query(true)
        .track_presence(".*", TrackOptions::default())
        .on_connection(|conn| async move {
            if conn.query("token") == Some("bad") {
                return Err(Refusal::unauthorized("bad token"));
            }
            assert_eq!(conn.path, "/mesh");
            // The query metadata is already attached; add to it.
            if let Some(agent) = conn.header("x-client") {
                conn.server
                    .set_metadata(&conn.id, json!({ "client": agent }), Strategy::Merge)
                    .await
                    .unwrap();
            }
            Ok(())
        })
        .on_disconnection(move |info| {
            let tx = gone_tx.clone();
            async move {
                let _ = tx.send(info);
            }
        })
        .bind()
        .await
        .unwrap();
    let base = format!("{}/mesh", server.url());

    let refused = tokio_tungstenite::connect_async(format!("{base}?token=bad")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("expected a 401 refusal, got {other:?}"),
    }

    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{base}?userId=u1&username=Alice%20L"
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("x-client", "desktop".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut alice = Peer::from_stream(ws).await;
    let mine = alice
        .request(command::GET_MY_CONNECTION_METADATA, json!({}))
        .await;
    assert_eq!(
        mine["metadata"],
        json!({"userId": "u1", "username": "Alice L", "client": "desktop"})
    );
    let reply = alice.join("lobby").await;
    assert_eq!(reply["present"][0]["metadata"]["userId"], "u1");

    let alice_id = alice.id.clone();
    drop(alice.into_inner());
    let info = tokio::time::timeout(WAIT, gone_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.id, alice_id);
    assert_eq!(info.metadata.unwrap()["username"], "Alice L");
    let handle = server.handle();
    assert_eq!(handle.get_metadata(&alice_id).await.unwrap(), None);
    assert!(handle.room_members("lobby").await.unwrap().is_empty());
    server.shutdown().await;
}

async fn custom_commands_and_room_metadata(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .expose_command("app/echo", |req| async move {
            if req.payload.get("fail").is_some() {
                return Err(mesh_protocol::ErrorPayload::new(
                    mesh_protocol::ErrorCode::Forbidden,
                    "not today",
                ));
            }
            Ok(json!({ "from": req.connection_id, "echo": req.payload }))
        })
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;
    let reply = a.request("app/echo", json!({"hi": 1})).await;
    assert_eq!(reply, json!({"from": a.id, "echo": {"hi": 1}}));
    let reply = a.request("app/echo", json!({"fail": true})).await;
    assert_eq!(error_code(&reply).as_deref(), Some("EFORBIDDEN"));

    let handle = server.handle();
    handle
        .set_room_metadata("lobby", json!({"topic": "hello"}), Strategy::Replace)
        .await
        .unwrap();
    let reply = a
        .request(command::GET_ROOM_METADATA, json!({"roomName": "lobby"}))
        .await;
    assert_eq!(reply, json!({"metadata": {"topic": "hello"}}));
    let reply = a
        .request(command::GET_ROOM_METADATA, json!({"roomName": "elsewhere"}))
        .await;
    assert_eq!(reply, json!({"metadata": null}));
    server.shutdown().await;

    let clash = kind
        .builder()
        .await
        .expose_command("mesh/join-room", |_req| async { Ok(json!(null)) })
        .bind()
        .await;
    assert!(clash.is_err(), "built-in commands cannot be replaced");
}

async fn peer_vanishing_mid_request_is_cleaned_up(kind: BackendKind) {
    let release = Arc::new(tokio::sync::Notify::new());
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<String>();
    let handler_release = release.clone();
    let server = kind
        .builder()
        .await
        .track_presence(".*", TrackOptions::default())
        .expose_command("app/slow", move |_req| {
            let release = handler_release.clone();
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                release.notified().await;
                Ok(json!("late"))
            }
        })
        .on_disconnection(move |info| {
            let tx = gone_tx.clone();
            async move {
                let _ = tx.send(info.id);
            }
        })
        .bind()
        .await
        .unwrap();
    let mut watcher = Peer::connect(&server.url()).await;
    watcher.subscribe("r").await;
    let mut vanishing = Peer::connect(&server.url()).await;
    vanishing.join("r").await;
    let id = vanishing.id.clone();
    vanishing
        .send(mesh_protocol::Frame::request(1, "app/slow", json!({})))
        .await;
    tokio::time::timeout(WAIT, started_rx.recv()).await.unwrap();
    drop(vanishing.into_inner());
    // Others are served while the handler is stuck.
    watcher.sync().await;
    release.notify_one();
    assert_update(&watcher.next_update().await, "join", &id, "r");
    assert_update(&watcher.next_update().await, "leave", &id, "r");
    let gone = tokio::time::timeout(WAIT, gone_rx.recv()).await.unwrap();
    assert_eq!(gone.as_deref(), Some(id.as_str()));
    assert!(server.handle().room_members("r").await.unwrap().is_empty());

    // A handler that never finishes does not hold up shutdown.
    let mut stuck = Peer::connect(&server.url()).await;
    stuck
        .send(mesh_protocol::Frame::request(1, "app/slow", json!({})))
        .await;
    tokio::time::timeout(WAIT, started_rx.recv()).await.unwrap();
    tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    let reply = stuck.reply_to(1, "app/slow").await;
    assert_eq!(error_code(&reply).as_deref(), Some("ESERVER"));
}

async fn latency_is_measured(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .latency_interval(Duration::from_millis(100))
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;
    a.next_push(command::LATENCY_REQUEST).await;
    a.send(mesh_protocol::Frame::push(
        command::LATENCY_RESPONSE,
        json!({}),
    ))
    .await;
    let latency = a.next_push(command::LATENCY).await;
    let ms = latency
        .payload
        .as_u64()
        .expect("latency is whole milliseconds");
    assert!(ms < 10_000, "{ms}");
    server.shutdown().await;
}

async fn rooms_per_connection_limit(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .max_rooms_per_connection(2)
        .track_presence(".*", TrackOptions::default())
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;
    assert_eq!(a.join("one").await["success"], true);
    assert_eq!(a.join("two").await["success"], true);
    let reply = a.join("three").await;
    assert_eq!(error_code(&reply).as_deref(), Some("ETOOLARGE"));
    // Rejoining a room it is in is fine; leaving makes room.
    assert_eq!(a.join("two").await["success"], true);
    a.request(command::LEAVE_ROOM, json!({"roomName": "one"}))
        .await;
    assert_eq!(a.join("three").await["success"], true);
    let mut rooms = server
        .handle()
        .backend()
        .connection_rooms(&a.id)
        .await
        .unwrap();
    rooms.sort();
    assert_eq!(rooms, vec!["three", "two"]);
    server.shutdown().await;
}

async fn oversized_frame_beyond_hard_limit_closes(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .max_frame_bytes(1024)
        .track_presence(".*", TrackOptions::default())
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;
    a.subscribe("r").await;
    let mut big = Peer::connect(&server.url()).await;
    big.join("r").await;
    assert_update(&a.next_update().await, "join", &big.id, "r");
    // Over four times the frame limit the server does not even read it.
    big.send_text("x".repeat(10 * 1024)).await;
    let frame = big.closed().await;
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1009));
    assert_update(&a.next_update().await, "leave", &big.id, "r");
    a.sync().await;
    server.shutdown().await;
}

async fn request_rate_is_limited(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .max_requests_per_second(5)
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;
    // Sent back to back, far faster than 5 per second.
    for id in 1..=20 {
        a.send(mesh_protocol::Frame::request(id, command::NOOP, json!({})))
            .await;
    }
    let mut limited = 0;
    for id in 1..=20 {
        let reply = a.reply_to(id, command::NOOP).await;
        if id <= 5 {
            assert_eq!(reply, json!(true), "the burst allowance is honoured");
        } else if error_code(&reply).as_deref() == Some("ERATELIMIT") {
            limited += 1;
        }
    }
    assert!(
        limited >= 10,
        "only {limited} of 15 over the limit were refused"
    );
    server.shutdown().await;
}

async fn slow_consumer_is_dropped(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .max_queued_bytes(64 * 1024)
        .track_presence(".*", TrackOptions::default())
        .bind()
        .await
        .unwrap();
    let mut watcher = Peer::connect(&server.url()).await;
    let mut publisher = Peer::connect(&server.url()).await;
    let mut slow = Peer::connect(&server.url()).await;
    watcher.subscribe("r").await;
    slow.subscribe("r").await;
    slow.join("r").await;
    publisher.join("r").await;
    let slow_id = slow.id.clone();
    assert_update(&watcher.next_update().await, "join", &slow_id, "r");
    assert_update(&watcher.next_update().await, "join", &publisher.id, "r");
    // `slow` never reads again. Push until the server gives up on it; the
    // socket buffers absorb a few megabytes first.
    let blob = "z".repeat(8 * 1024);
    let mut dropped = false;
    for n in 0..5_000 {
        assert_eq!(
            publisher
                .publish("r", json!({ "n": n, "blob": blob }))
                .await,
            json!(true)
        );
        match watcher.next_update().await {
            PresenceUpdate::State { .. } => {}
            update => {
                assert_update(&update, "leave", &slow_id, "r");
                dropped = true;
                break;
            }
        }
    }
    assert!(dropped, "the slow consumer was never dropped");
    let metrics = scrape(server.local_addr()).await;
    assert_eq!(metric(&metrics, "mesh_slow_consumers_dropped_total"), 1);
    assert!(!server
        .handle()
        .room_members("r")
        .await
        .unwrap()
        .contains(&slow_id));
    drop(slow);
    server.shutdown().await;
}

async fn big_snapshots_reach_a_newcomer(kind: BackendKind) {
    // Default limits: 1 MiB of queued pushes, 16 KiB per state or metadata.
    // The members never read after setting up: pings far apart keep them.
    let server = kind
        .builder()
        .await
        .ping_interval(Duration::from_secs(30))
        .track_presence(".*", TrackOptions::default())
        .bind()
        .await
        .unwrap();
    let url = server.url();
    let blob = "m".repeat(16_000);
    // Everyone joins first, so that the join replies stay small.
    let mut members = Vec::new();
    for _ in 0..70 {
        let mut p = Peer::connect(&url).await;
        p.join("big").await;
        members.push(p);
    }
    for (i, p) in members.iter_mut().enumerate() {
        let reply = p
            .request(
                command::SET_MY_CONNECTION_METADATA,
                json!({ "metadata": { "n": i, "blob": blob } }),
            )
            .await;
        assert_eq!(reply["success"], true, "{reply}");
        assert_eq!(
            p.publish("big", json!({ "n": i, "blob": blob })).await,
            true
        );
    }
    // Each snapshot is over 1 MiB: members with their metadata, and their
    // states. The newcomer is reading, so it gets them whole.
    let mut newcomer = Peer::connect(&url).await;
    let joined = newcomer.join("big").await;
    assert_eq!(joined["present"].as_array().unwrap().len(), 71);
    let subscribed = newcomer.subscribe("big").await;
    assert_eq!(subscribed["success"], true);
    let present = subscribed["present"].as_array().unwrap();
    assert_eq!(present.len(), 71);
    assert!(present
        .iter()
        .filter(|m| m["id"] != newcomer.id.as_str())
        .all(|m| m["metadata"]["blob"] == blob.as_str()));
    let states = subscribed["states"].as_object().unwrap();
    assert_eq!(states.len(), 70);
    for m in &members {
        assert_eq!(states[&m.id]["blob"], blob.as_str());
    }
    // And the connection stays: updates keep coming.
    assert_eq!(
        members[0].publish("big", json!({ "n": "again" })).await,
        true
    );
    loop {
        if let PresenceUpdate::State { state, .. } = newcomer.next_update().await {
            if state == Some(json!({ "n": "again" })) {
                break;
            }
        }
    }
    server.shutdown().await;
}

async fn room_member_limit(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .max_room_members(3)
        .track_presence(".*", TrackOptions::default())
        .bind()
        .await
        .unwrap();
    let mut peers = Vec::new();
    for _ in 0..3 {
        let mut p = Peer::connect(&server.url()).await;
        assert_eq!(p.join("r").await["success"], true);
        peers.push(p);
    }
    let mut late = Peer::connect(&server.url()).await;
    let reply = late.join("r").await;
    assert_eq!(error_code(&reply).as_deref(), Some("ETOOLARGE"), "{reply}");
    assert!(!server
        .handle()
        .room_members("r")
        .await
        .unwrap()
        .contains(&late.id));
    // Refused, not dropped: other rooms work, and a place that frees up
    // can be taken.
    assert_eq!(late.join("other").await["success"], true);
    peers.pop();
    let leaving = peers.len();
    let mut last = Peer::connect(&server.url()).await;
    assert_eq!(
        last.join("r").await["success"],
        true,
        "after {leaving} stay"
    );
    server.shutdown().await;
}

async fn reply_too_large_to_send_is_refused(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .max_room_members(2)
        .max_state_bytes(100)
        .expose_command("app/huge", |_req| async move {
            Ok(json!({ "data": "x".repeat(1 << 20) }))
        })
        .bind()
        .await
        .unwrap();
    let mut a = Peer::connect(&server.url()).await;
    let reply = a.request("app/huge", json!({})).await;
    assert_eq!(error_code(&reply).as_deref(), Some("ETOOLARGE"), "{reply}");
    // The connection stays.
    a.sync().await;
    server.shutdown().await;
}

async fn reading_client_is_not_unresponsive(kind: BackendKind) {
    let interval = Duration::from_millis(100);
    let server = kind
        .builder()
        .await
        .ping_interval(interval)
        .max_missed_pongs(1)
        .track_presence(".*", TrackOptions::default())
        .bind()
        .await
        .unwrap();
    let mut publisher = Peer::connect(&server.url()).await;
    publisher.join("r").await;
    let mut reader = Peer::connect(&server.url()).await;
    // Never answers a ping, as if every one of them were stuck behind a
    // long backlog, but reads everything it is sent.
    reader.auto_pong = false;
    reader.subscribe("r").await;
    let blob = "b".repeat(4096);
    let started = Instant::now();
    let mut n = 0;
    // Ten liveness windows.
    while started.elapsed() < interval * 20 {
        n += 1;
        assert_eq!(
            publisher
                .publish("r", json!({ "n": n, "blob": blob }))
                .await,
            true
        );
        loop {
            match reader.next_update().await {
                PresenceUpdate::State { state: Some(s), .. } if s["n"] == n => break,
                _ => {}
            }
        }
    }
    reader.sync().await;
    server.shutdown().await;
}

async fn origin_allow_list_and_healthz(kind: BackendKind) {
    let server = kind
        .builder()
        .await
        .allow_origins(["http://app.example"])
        .bind()
        .await
        .unwrap();
    let with_origin = |origin: &str| {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                server.url(),
            )
            .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    match tokio_tungstenite::connect_async(with_origin("http://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let (ws, _) = tokio_tungstenite::connect_async(with_origin("http://app.example"))
        .await
        .unwrap();
    Peer::from_stream(ws).await.sync().await;
    // Non-browser clients send no Origin and are let in.
    Peer::connect(&server.url()).await.sync().await;

    let mut tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    server.shutdown().await;
}

async fn metrics_are_served(kind: BackendKind) {
    let server = kind.serve_every_room().await;
    let before = scrape(server.local_addr()).await;
    for name in [
        "mesh_connections",
        "mesh_rooms",
        "mesh_deliveries_total",
        "mesh_slow_consumers_dropped_total",
        "mesh_backend_messages_received_total",
        "mesh_backend_errors_total",
    ] {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{before}"
        );
    }
    assert_eq!(metric(&before, "mesh_connections"), 0);
    assert_eq!(metric(&before, "mesh_rooms"), 0);

    let mut a = Peer::connect(&server.url()).await;
    let mut b = Peer::connect(&server.url()).await;
    a.subscribe("m1").await;
    b.subscribe("m1").await;
    a.join("m1").await;
    b.join("m2").await;
    b.publish("m2", json!({"x": 1})).await;
    a.publish("m1", json!({"x": 1})).await;
    // a's join reached a and b, b's join in m2 reached nobody, a's state
    // reached a and b.
    for peer in [&mut a, &mut b] {
        peer.next_update().await;
        peer.next_update().await;
    }
    let after = scrape(server.local_addr()).await;
    assert_eq!(metric(&after, "mesh_connections"), 2);
    assert_eq!(metric(&after, "mesh_rooms"), 2);
    assert_eq!(
        metric(&after, "mesh_deliveries_total") - metric(&before, "mesh_deliveries_total"),
        4
    );
    drop(a);
    drop(b);
    server.shutdown().await;
}

async fn graceful_shutdown_cleans_up(kind: BackendKind) {
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<String>();
    let backend = kind.backend().await;
    let server = mesh_server::Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .backend(backend.clone())
        .track_presence(".*", TrackOptions::default())
        .on_disconnection(move |info| {
            let tx = gone_tx.clone();
            async move {
                let _ = tx.send(info.id);
            }
        })
        .bind()
        .await
        .unwrap();
    let mut peers = Vec::new();
    for i in 0..5 {
        let mut p = Peer::connect(&server.url()).await;
        p.subscribe("r").await;
        p.join("r").await;
        p.request(
            command::SET_MY_CONNECTION_METADATA,
            json!({"metadata": {"i": i}}),
        )
        .await;
        peers.push(p);
    }
    let ids: Vec<String> = peers.iter().map(|p| p.id.clone()).collect();
    let (addr, url) = (server.local_addr(), server.url());
    let instance = server.handle().instance_id().to_string();
    tokio::time::timeout(WAIT, server.shutdown()).await.unwrap();
    // Everything is cleaned up by the time shutdown returns.
    assert!(backend.room_members("r").await.unwrap().is_empty());
    assert!(backend.present("r").await.unwrap().is_empty());
    for id in &ids {
        assert_eq!(backend.get_metadata(id).await.unwrap(), None);
    }
    let mut gone = Vec::new();
    while let Ok(id) = gone_rx.try_recv() {
        gone.push(id);
    }
    gone.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(gone, expected);
    for mut p in peers {
        // Nobody is heard leaving: the whole room is going away together,
        // and a client's list must not empty out before it reconnects.
        let (updates, frame) = p.updates_until_closed().await;
        assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001));
        assert!(
            !updates
                .iter()
                .any(|u| matches!(u, PresenceUpdate::Leave { .. })),
            "{updates:?}"
        );
    }
    // No longer listening. On a busy machine the freed port may already be
    // another process's: whoever answers there now is not this server.
    if tokio::net::TcpStream::connect(addr).await.is_ok() {
        if let Ok(Ok((ws, _))) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url)).await
        {
            let other = Peer::from_stream(ws).await;
            assert!(!other.id.starts_with(&instance), "still listening");
        }
    }
}

async fn instances_share_presence(kind: BackendKind) {
    let (b1, b2) = kind.cluster_pair().await;
    let build = |backend| {
        mesh_server::Server::builder()
            .addr("127.0.0.1:0".parse().unwrap())
            .backend(backend)
            .track_presence(".*", TrackOptions::default())
            .bind()
    };
    let one = build(b1).await.unwrap();
    let two = build(b2).await.unwrap();
    assert_ne!(one.handle().instance_id(), two.handle().instance_id());
    let mut a = Peer::connect(&one.url()).await;
    let mut b = Peer::connect(&two.url()).await;
    a.subscribe("r").await;
    a.join("r").await;
    b.join("r").await;
    assert_update(&a.next_update().await, "join", &a.id, "r");
    assert_update(&a.next_update().await, "join", &b.id, "r");
    b.publish("r", json!({"where": "two"})).await;
    assert_update(&a.next_update().await, "state", &b.id, "r");
    // Sharing a room across instances also opens metadata.
    b.request(
        command::SET_MY_CONNECTION_METADATA,
        json!({"metadata": {"name": "Bo"}}),
    )
    .await;
    let reply = a
        .request(
            command::GET_CONNECTION_METADATA,
            json!({"connectionId": b.id}),
        )
        .await;
    assert_eq!(reply["metadata"], json!({"name": "Bo"}));
    let b_id = b.id.clone();
    two.shutdown().await;
    assert_update(&a.next_update().await, "leave", &b_id, "r");
    one.shutdown().await;
}

suite!(
    basic_commands,
    join_state_leave_are_seen,
    refusals,
    unsubscribed_peer_gets_nothing,
    state_expiry_sends_one_null,
    silent_state_is_stored_not_pushed,
    presence_ttl_lapses_without_pongs,
    silent_peer_is_closed_by_heartbeat,
    dropped_socket_leaves,
    malformed_frames_get_clear_errors,
    garbage_flood_closes_only_that_socket,
    metadata_strategies_and_privacy,
    connection_hooks,
    custom_commands_and_room_metadata,
    latency_is_measured,
    peer_vanishing_mid_request_is_cleaned_up,
    rooms_per_connection_limit,
    slow_consumer_is_dropped,
    big_snapshots_reach_a_newcomer,
    room_member_limit,
    reply_too_large_to_send_is_refused,
    reading_client_is_not_unresponsive,
    oversized_frame_beyond_hard_limit_closes,
    request_rate_is_limited,
    origin_allow_list_and_healthz,
    metrics_are_served,
    graceful_shutdown_cleans_up,
    instances_share_presence,
);
