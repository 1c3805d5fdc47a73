//! Every client call against our own server, on real loopback sockets.

mod support;

use mesh_client::{
    ClientError, ClientEvent, ClientOptions, ErrorCode, MeshClient, PresenceEvent, PresenceStream,
    PresenceUpdate, Status, Strategy,
};
use mesh_server::{RunningServer, Server, TrackOptions};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn builder(addr: SocketAddr) -> mesh_server::ServerBuilder {
    Server::builder()
        .addr(addr)
        .ping_interval(Duration::from_secs(1))
        .latency_interval(Duration::from_millis(300))
        .track_presence("^(lobby|doc:.*)$", TrackOptions::default())
        .metadata_from_query(true)
}

async fn start_server() -> RunningServer {
    builder("127.0.0.1:0".parse().unwrap())
        .bind()
        .await
        .unwrap()
}

async fn client_as(server: &RunningServer, user: &str) -> MeshClient {
    let url = format!("{}/?userId={user}&username={user}", server.url());
    MeshClient::connect(&url, fast_options()).await.unwrap()
}

fn id(client: &MeshClient) -> String {
    client.connection_id().expect("connected")
}

async fn next_update(stream: &mut PresenceStream) -> PresenceUpdate {
    match within("a presence update", stream.recv()).await {
        Some(PresenceEvent::Update(update)) => update,
        other => panic!("expected an update, got {other:?}"),
    }
}

#[tokio::test]
async fn join_and_leave_rooms() {
    let server = start_server().await;
    let (alice, bob) = (
        client_as(&server, "alice").await,
        client_as(&server, "bob").await,
    );
    let joined = alice.join_room("lobby").await.unwrap();
    assert!(joined.success);
    assert_eq!(joined.present.len(), 1);
    assert_eq!(joined.present[0].id, id(&alice));
    assert_eq!(joined.present[0].metadata["userId"], "alice");
    let joined = bob.join_room("lobby").await.unwrap();
    assert_eq!(joined.present.len(), 2, "present includes the joiner");
    assert!(alice.leave_room("lobby").await.unwrap());
    assert_eq!(
        server.handle().room_members("lobby").await.unwrap(),
        vec![id(&bob)]
    );
}

#[tokio::test]
async fn presence_snapshot_then_updates_in_order() {
    let server = start_server().await;
    let (watcher, peer) = (client_as(&server, "w").await, client_as(&server, "p").await);
    peer.join_room("lobby").await.unwrap();
    assert!(peer
        .publish_presence_state("lobby", json!({"status": "here"}), None, false)
        .await
        .unwrap());
    let (snapshot, mut stream) = watcher.subscribe_presence("lobby").await.unwrap();
    assert!(snapshot.success);
    assert_eq!(snapshot.present.len(), 1);
    assert_eq!(snapshot.present[0].metadata["userId"], "p");
    assert_eq!(snapshot.states[&id(&peer)], json!({"status": "here"}));

    let late = client_as(&server, "late").await;
    late.join_room("lobby").await.unwrap();
    late.publish_presence_state("lobby", json!({"status": "typing"}), None, false)
        .await
        .unwrap();
    assert!(late.clear_presence_state("lobby").await.unwrap());
    late.leave_room("lobby").await.unwrap();

    let late_id = id(&late);
    match next_update(&mut stream).await {
        PresenceUpdate::Join {
            connection_id,
            room_name,
            ..
        } => {
            assert_eq!(
                (connection_id.as_str(), room_name.as_str()),
                (late_id.as_str(), "lobby")
            );
        }
        other => panic!("expected join, got {other:?}"),
    }
    match next_update(&mut stream).await {
        PresenceUpdate::State { state, .. } => assert_eq!(state, Some(json!({"status": "typing"}))),
        other => panic!("expected state, got {other:?}"),
    }
    match next_update(&mut stream).await {
        PresenceUpdate::State { state, .. } => assert_eq!(state, None, "cleared"),
        other => panic!("expected cleared state, got {other:?}"),
    }
    assert!(matches!(
        next_update(&mut stream).await,
        PresenceUpdate::Leave { .. }
    ));

    let now = watcher.get_presence_state("lobby").await.unwrap();
    assert!(now.success);
    assert_eq!(now.present, vec![id(&peer)]);
}

#[tokio::test]
async fn expiring_and_silent_states() {
    let server = start_server().await;
    let (watcher, peer) = (client_as(&server, "w").await, client_as(&server, "p").await);
    peer.join_room("lobby").await.unwrap();
    let (_, mut stream) = watcher.subscribe_presence("lobby").await.unwrap();

    assert!(peer
        .publish_presence_state("lobby", json!({"n": 1}), Some(150), false)
        .await
        .unwrap());
    match next_update(&mut stream).await {
        PresenceUpdate::State { state, .. } => assert_eq!(state, Some(json!({"n": 1}))),
        other => panic!("{other:?}"),
    }
    match next_update(&mut stream).await {
        PresenceUpdate::State { state, .. } => assert_eq!(state, None, "expired"),
        other => panic!("{other:?}"),
    }

    assert!(peer
        .publish_presence_state("lobby", json!({"n": 2}), None, true)
        .await
        .unwrap());
    let stored = watcher.get_presence_state("lobby").await.unwrap();
    assert_eq!(
        stored.states[&id(&peer)],
        json!({"n": 2}),
        "silent states are stored"
    );
    peer.publish_presence_state("lobby", json!({"n": 3}), None, false)
        .await
        .unwrap();
    match next_update(&mut stream).await {
        PresenceUpdate::State { state, .. } => assert_eq!(
            state,
            Some(json!({"n": 3})),
            "the silent one was not pushed"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn untracked_rooms_and_unsubscribe() {
    let server = start_server().await;
    let client = client_as(&server, "a").await;
    let (reply, mut refused) = client.subscribe_presence("not-tracked").await.unwrap();
    assert!(!reply.success);
    assert_eq!(within("refused stream end", refused.recv()).await, None);
    client.join_room("not-tracked").await.unwrap();
    assert!(!client
        .publish_presence_state("not-tracked", json!({"a": 1}), None, false)
        .await
        .unwrap());

    let (_, mut stream) = client.subscribe_presence("lobby").await.unwrap();
    assert!(client.unsubscribe_presence("lobby").await.unwrap());
    assert_eq!(within("stream end", stream.recv()).await, None);
}

#[tokio::test]
async fn connection_metadata_is_read_written_and_cached() {
    let server = start_server().await;
    let (me, peer) = (
        client_as(&server, "me").await,
        client_as(&server, "peer").await,
    );
    assert_eq!(
        me.get_my_connection_metadata().await.unwrap(),
        json!({"userId": "me", "username": "me"})
    );
    assert!(me
        .set_my_connection_metadata(json!({"status": "busy"}), Strategy::Merge)
        .await
        .unwrap());
    assert_eq!(
        me.get_my_connection_metadata().await.unwrap(),
        json!({"userId": "me", "username": "me", "status": "busy"})
    );
    assert!(me
        .set_my_connection_metadata(json!({"only": 1}), Strategy::Replace)
        .await
        .unwrap());
    assert_eq!(
        me.get_my_connection_metadata().await.unwrap(),
        json!({"only": 1})
    );

    // Our server answers only for connections sharing a room.
    assert_eq!(
        me.get_connection_metadata(&id(&peer)).await.unwrap(),
        Value::Null
    );
    me.join_room("lobby").await.unwrap();
    peer.join_room("lobby").await.unwrap();
    let first = me.get_connection_metadata(&id(&peer)).await.unwrap();
    assert_eq!(first["userId"], "peer");

    // Changed on the server: the cached answer stands until we leave a room.
    server
        .handle()
        .set_metadata(&id(&peer), json!({"userId": "renamed"}), Strategy::Replace)
        .await
        .unwrap();
    assert_eq!(me.get_connection_metadata(&id(&peer)).await.unwrap(), first);
    me.leave_room("lobby").await.unwrap();
    me.join_room("lobby").await.unwrap();
    assert_eq!(
        me.get_connection_metadata(&id(&peer)).await.unwrap()["userId"],
        "renamed"
    );
}

#[tokio::test]
async fn batch_metadata_lookups() {
    let server = start_server().await;
    let me = client_as(&server, "me").await;
    me.join_room("lobby").await.unwrap();
    let mut peers = Vec::new();
    for n in 0..5 {
        let peer = client_as(&server, &format!("u{n}")).await;
        peer.join_room("lobby").await.unwrap();
        peers.push(peer);
    }
    let mut ids: Vec<String> = peers.iter().map(id).collect();
    ids.push(ids[0].clone()); // duplicates are looked up once
    let all = me.get_connection_metadata_many(&ids).await.unwrap();
    assert_eq!(all.len(), 5);
    for (n, peer) in peers.iter().enumerate() {
        assert_eq!(all[&id(peer)]["userId"], format!("u{n}"));
    }
}

#[tokio::test]
async fn room_metadata() {
    let server = start_server().await;
    let client = client_as(&server, "a").await;
    assert_eq!(
        client.get_room_metadata("doc:1").await.unwrap(),
        Value::Null
    );
    server
        .handle()
        .set_room_metadata("doc:1", json!({"title": "Plan"}), Strategy::Replace)
        .await
        .unwrap();
    assert_eq!(
        client.get_room_metadata("doc:1").await.unwrap(),
        json!({"title": "Plan"})
    );
}

#[tokio::test]
async fn server_errors_are_typed() {
    let server = start_server().await;
    let client = client_as(&server, "a").await;
    assert_eq!(
        client.request("mesh/noop", json!({})).await,
        Ok(json!(true))
    );
    let unknown = client
        .request("no/such-command", json!({}))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::NotFound));
    let bad_room = client.join_room("").await.unwrap_err();
    assert_eq!(bad_room.code(), Some(ErrorCode::Invalid));
    let wrong_shape = client
        .request("mesh/join-room", json!({"room": "lobby"}))
        .await
        .unwrap_err();
    assert_eq!(wrong_shape.code(), Some(ErrorCode::Invalid));
    client.join_room("lobby").await.unwrap();
    let huge = json!({"blob": "x".repeat(mesh_protocol::DEFAULT_MAX_STATE_BYTES + 1)});
    let too_large = client
        .publish_presence_state("lobby", huge, None, false)
        .await
        .unwrap_err();
    assert_eq!(too_large.code(), Some(ErrorCode::TooLarge));
    // None of it hurt the connection.
    assert!(client.join_room("doc:2").await.unwrap().success);
}

#[tokio::test]
async fn heartbeat_and_latency_keep_the_link() {
    let server = start_server().await;
    let options = ClientOptions {
        ping_timeout: Duration::from_secs(2),
        ..fast_options()
    };
    let client = MeshClient::connect(&server.url(), options).await.unwrap();
    let mut events = client.events();
    let latency = within("latency", async {
        loop {
            if let Ok(ClientEvent::Latency(ms)) = events.recv().await {
                return ms;
            }
        }
    })
    .await;
    assert!(latency < 5_000);
    // Several ping intervals later the client has answered every ping.
    let mut status = client.status();
    let _ = tokio::time::timeout(Duration::from_millis(2_500), status.changed()).await;
    assert_eq!(*status.borrow(), Status::Online);
    assert_eq!(server.handle().connection_count(), 1);
}

#[tokio::test]
async fn a_server_restart_restores_the_session() {
    let counter = Arc::new(AtomicU64::new(0));
    let counting = |server: mesh_server::ServerBuilder, counter: Arc<AtomicU64>| {
        server.expose_command("test/count", move |_| {
            let counter = counter.clone();
            async move { Ok(json!(counter.fetch_add(1, Ordering::SeqCst) + 1)) }
        })
    };
    let first = counting(builder("127.0.0.1:0".parse().unwrap()), counter.clone())
        .bind()
        .await
        .unwrap();
    let addr = first.local_addr();
    let client = MeshClient::connect(&first.url(), fast_options())
        .await
        .unwrap();
    let old_id = id(&client);
    client.join_room("lobby").await.unwrap();
    let (_, mut stream) = client.subscribe_presence("lobby").await.unwrap();
    client
        .publish_presence_state("lobby", json!({"v": 1}), None, false)
        .await
        .unwrap();
    assert!(matches!(
        next_update(&mut stream).await,
        PresenceUpdate::State { .. }
    ));

    let mut events = client.events();
    first.shutdown().await;
    assert_eq!(
        next_event(&mut events, "disconnect").await,
        ClientEvent::Disconnected
    );
    // Made while the server is down: must be sent once, after the restore.
    let queued = tokio::spawn({
        let client = client.clone();
        async move { client.request("test/count", json!({})).await }
    });

    let second = counting(builder(addr), counter.clone())
        .bind()
        .await
        .unwrap();
    let new_id = match next_event(&mut events, "reconnect").await {
        ClientEvent::Reconnected { id } => id,
        other => panic!("expected Reconnected, got {other:?}"),
    };
    assert_ne!(new_id, old_id);
    assert_eq!(client.connection_id(), Some(new_id.clone()));
    // The fresh snapshot was delivered before Reconnected was emitted.
    let mut resync = None;
    while let Some(event) = stream.try_recv() {
        if let PresenceEvent::Resync {
            room,
            present,
            states,
        } = event
        {
            resync = Some((room, present, states));
        }
    }
    let (room, present, states) = resync.expect("a resync before Reconnected");
    assert_eq!(room, "lobby");
    assert_eq!(present, vec![new_id.clone()], "rejoined under the new id");
    assert!(states.is_empty(), "the new server holds no state yet");
    assert_eq!(server_members(&second, "lobby").await, vec![new_id.clone()]);

    assert_eq!(within("queued", queued).await.unwrap(), Ok(json!(1)));
    assert_eq!(
        client.request("test/count", json!({})).await,
        Ok(json!(2)),
        "sent exactly once"
    );
    // Resubscribed: updates flow again on the same stream.
    client
        .publish_presence_state("lobby", json!({"v": 2}), None, false)
        .await
        .unwrap();
    match next_update(&mut stream).await {
        PresenceUpdate::State {
            connection_id,
            state,
            ..
        } => {
            assert_eq!(connection_id, new_id);
            assert_eq!(state, Some(json!({"v": 2})));
        }
        other => panic!("{other:?}"),
    }
}

async fn server_members(server: &RunningServer, room: &str) -> Vec<String> {
    server.handle().room_members(room).await.unwrap()
}

#[tokio::test]
async fn reconnect_failed_when_the_server_stays_down() {
    let server = start_server().await;
    let options = ClientOptions {
        max_reconnect_attempts: Some(2),
        ..fast_options()
    };
    let client = MeshClient::connect(&server.url(), options).await.unwrap();
    let mut events = client.events();
    server.shutdown().await;
    expect_gave_up(&mut events, &client).await;
    assert_eq!(
        client.join_room("lobby").await.unwrap_err(),
        ClientError::Offline
    );
}

#[tokio::test]
async fn close_leaves_the_server_clean() {
    let (gone_tx, mut gone) = tokio::sync::mpsc::unbounded_channel();
    let server = builder("127.0.0.1:0".parse().unwrap())
        .on_disconnection(move |info| {
            let _ = gone_tx.send(info.id);
            async {}
        })
        .bind()
        .await
        .unwrap();
    let client = client_as(&server, "a").await;
    let me = id(&client);
    client.join_room("lobby").await.unwrap();
    client.close().await;
    assert_eq!(*client.status().borrow(), Status::Offline);
    assert_eq!(client.connection_id(), None);
    assert_eq!(
        client.request("mesh/noop", json!({})).await,
        Err(ClientError::Closed)
    );
    assert_eq!(within("server cleanup", gone.recv()).await, Some(me));
    assert!(server_members(&server, "lobby").await.is_empty());
}
