//! Rooms and presence: joining, publishing, clearing and leaving, what
//! subscribers see of it, and what the server refuses.

use crate::common::{assert_update, error_code, watcher_and_member, BackendKind, Peer};
use mesh_protocol::{command, PresenceUpdate};
use mesh_server::{Guard, TrackOptions};
use serde_json::json;

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
        .serve_with(|b| b.track_presence("lobby", TrackOptions::default()))
        .await;
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
        .serve_with(|b| {
            b.track_presence("open", TrackOptions::default())
                .track_presence(
                    "staff",
                    TrackOptions {
                        ttl: None,
                        guard: Some(guard),
                    },
                )
        })
        .await;
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
        .serve_with(|b| b.track_presence("r", TrackOptions::default()))
        .await;
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
    let (mut a, mut b) = watcher_and_member(&server.url(), "doc").await;

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
    let (mut a, mut b) = watcher_and_member(&server.url(), "r").await;
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

suite!(
    basic_commands,
    join_state_leave_are_seen,
    refusals,
    unsubscribed_peer_gets_nothing,
    state_expiry_sends_one_null,
    silent_state_is_stored_not_pushed,
);
