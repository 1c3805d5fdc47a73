//! The client against scripted servers: exact frame order on restore, and
//! servers that misbehave on cue (never answer, send garbage, vanish
//! without a close frame, stop pinging).

mod support;

use futures_util::SinkExt;
use mesh_client::{
    ClientError, ClientEvent, ClientOptions, ErrorCode, LinkLoss, MeshClient, PresenceEvent,
    PresenceStream, Status, SubscribePresenceReply,
};
use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use tokio::sync::broadcast;

/// Subscribes `client` to the presence of `lobby`, `peer` answering that
/// `present` are there.
async fn subscribe_lobby(
    client: &MeshClient,
    peer: &mut Peer,
    present: Value,
) -> (SubscribePresenceReply, PresenceStream) {
    let reply = json!({"success": true, "present": present, "states": {}});
    let (subscribed, _) = tokio::join!(client.subscribe_presence("lobby"), peer.answer(reply));
    subscribed.unwrap()
}

/// The client's next connection to `server` is assigned `id`, and the
/// client says it reconnected as `id`; the server side of it.
async fn reconnected_as(
    server: &mut ScriptedServer,
    events: &mut broadcast::Receiver<ClientEvent>,
    id: &str,
) -> Peer {
    let mut peer = server.next_peer().await;
    peer.assign(id).await;
    assert_eq!(
        next_event(events, "reconnect").await,
        ClientEvent::Reconnected { id: id.into() }
    );
    peer
}

/// Options under which a link without a ping for `ping_timeout` (one
/// missed ping) is dead.
fn dead_link_after(ping_timeout: Duration) -> ClientOptions {
    ClientOptions {
        ping_timeout,
        max_missed_pings: 1,
        ..fast_options()
    }
}

/// Connects a client to `server`, assigning `id` on the server side.
async fn connect(
    server: &mut ScriptedServer,
    id: &str,
    options: ClientOptions,
) -> (MeshClient, Peer) {
    let url = server.url.clone();
    let (client, peer) = tokio::join!(MeshClient::connect(&url, options), async {
        let mut peer = server.next_peer().await;
        peer.assign(id).await;
        peer
    });
    (client.expect("connect"), peer)
}

/// A client whose first connection ("first") vanished without a close
/// frame; it saw the disconnect. Returns it with its events.
async fn connected_then_dropped(
    server: &mut ScriptedServer,
) -> (MeshClient, broadcast::Receiver<ClientEvent>) {
    let (client, peer) = connect(server, "first", fast_options()).await;
    let mut events = client.events();
    drop(peer);
    assert_eq!(
        next_event(&mut events, "disconnect").await,
        ClientEvent::Disconnected
    );
    (client, events)
}

#[tokio::test]
async fn connect_resolves_with_the_assigned_id() {
    let mut server = ScriptedServer::start().await;
    let (client, _peer) = connect(&mut server, "conn-1", fast_options()).await;
    assert_eq!(client.connection_id().as_deref(), Some("conn-1"));
    assert_eq!(*client.status().borrow(), Status::Online);
}

#[tokio::test]
async fn connect_fails_cleanly_when_nothing_listens() {
    let mut server = ScriptedServer::start().await;
    let url = server.url.clone();
    server.stop_listening().await;
    let err = MeshClient::connect(&url, fast_options()).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_yields_etimeout() {
    let mut server = ScriptedServer::start().await;
    let (client, mut peer) = connect(&mut server, "a", fast_options()).await;
    let short = Duration::from_millis(300);
    let (result, seen) = tokio::join!(
        client.request_with_timeout("mesh/noop", json!({}), short),
        peer.recv_request()
    );
    let err = result.unwrap_err();
    assert_eq!(err, ClientError::Timeout);
    assert_eq!(err.code(), Some(ErrorCode::Timeout));
    assert_eq!(seen.command, "mesh/noop", "the request did go out");
    // The link itself is fine: a late answer is dropped, the next request works.
    peer.reply(&seen, json!(true)).await;
    let _server = peer.serve(standard_answer);
    assert_eq!(
        client.request("mesh/noop", json!({})).await,
        Ok(json!(true))
    );
}

#[tokio::test]
async fn error_payloads_become_typed_errors() {
    let mut server = ScriptedServer::start().await;
    let (client, mut peer) = connect(&mut server, "a", fast_options()).await;
    let error =
        json!({"error": "Command \"nope\" not found", "code": "ENOTFOUND", "name": "CommandError"});
    let (result, _) = tokio::join!(client.request("nope", json!({})), peer.answer(error));
    match result.unwrap_err() {
        ClientError::Server(payload) => {
            assert_eq!(payload.code, ErrorCode::NotFound);
            assert!(payload.error.contains("nope"));
        }
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn replies_of_the_wrong_shape_are_protocol_errors() {
    let mut server = ScriptedServer::start().await;
    let (client, mut peer) = connect(&mut server, "a", fast_options()).await;
    let (result, _) = tokio::join!(client.join_room("lobby"), peer.answer(json!("surprise")));
    assert!(
        matches!(result, Err(ClientError::Protocol(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn garbage_from_the_server_is_ignored() {
    let mut server = ScriptedServer::start().await;
    let (client, mut peer) = connect(&mut server, "a", fast_options()).await;
    let mut events = client.events();
    for garbage in [
        "not json",
        "[1,2,3]",
        "{\"payload\":{}}",
        "{\"id\":\"seven\",\"command\":\"mesh/noop\"}",
        "{\"id\":99999,\"command\":\"mesh/noop\",\"payload\":true}",
        "{\"command\":\"mesh/presence-update\",\"payload\":{\"type\":\"dance\"}}",
        "{\"command\":\"latency\",\"payload\":\"slow\"}",
    ] {
        peer.send_text(garbage).await;
    }
    peer.ws
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            0u8, 159, 146, 150,
        ]))
        .await
        .unwrap();
    let _server = peer.serve(standard_answer);
    // Still connected, and requests still work.
    assert_eq!(
        client.request("mesh/noop", json!({})).await,
        Ok(json!(true))
    );
    assert_eq!(*client.status().borrow(), Status::Online);
    assert!(events.try_recv().is_err(), "no lifecycle event expected");
}

#[tokio::test]
async fn pings_and_latency_requests_are_answered() {
    let mut server = ScriptedServer::start().await;
    let (client, mut peer) = connect(&mut server, "a", fast_options()).await;
    let mut events = client.events();
    peer.send_json(json!({"command": "ping", "payload": {}}))
        .await;
    let pong = within("pong", peer.recv()).await.unwrap();
    assert_eq!((pong.command.as_str(), pong.id), ("pong", None));
    peer.send_json(json!({"command": "latency:request", "payload": {}}))
        .await;
    let answer = within("latency response", peer.recv()).await.unwrap();
    assert_eq!(answer.command, "latency:response");
    peer.send_json(json!({"command": "latency", "payload": 42}))
        .await;
    let latency = within("latency event", events.recv()).await.unwrap();
    assert_eq!(latency, ClientEvent::Latency(42));
}

#[tokio::test]
async fn a_request_in_flight_when_the_link_drops_fails_with_connection_lost() {
    let mut server = ScriptedServer::start().await;
    let options = ClientOptions {
        reconnect: false,
        ..fast_options()
    };
    let (client, mut peer) = connect(&mut server, "a", options).await;
    let vanish = async move {
        peer.recv_request().await;
        // Drop the TCP stream without a close frame.
        drop(peer);
    };
    let (result, ()) = tokio::join!(client.request("mesh/noop", json!({})), vanish);
    assert!(
        matches!(result, Err(ClientError::ConnectionLost(LinkLoss::Reset(_)))),
        "{result:?}"
    );
    assert_offline_for_good(&client).await;
    assert_eq!(client.connection_id(), None);
}

#[tokio::test]
async fn a_close_without_close_frame_triggers_a_reconnect() {
    let mut server = ScriptedServer::start().await;
    let (client, mut events) = connected_then_dropped(&mut server).await;
    reconnected_as(&mut server, &mut events, "second").await;
    assert_eq!(client.connection_id().as_deref(), Some("second"));
    assert_eq!(*client.status().borrow(), Status::Online);
}

#[tokio::test]
async fn missing_pings_count_as_a_dead_link() {
    let mut server = ScriptedServer::start().await;
    let options = dead_link_after(Duration::from_millis(150));
    let (client, _silent_peer) = connect(&mut server, "first", options).await;
    let mut events = client.events();
    // The peer stays open but never pings: the client must give up on it.
    assert_eq!(
        next_event(&mut events, "disconnect").await,
        ClientEvent::Disconnected
    );
    reconnected_as(&mut server, &mut events, "second").await;
}

#[tokio::test]
async fn exhausted_attempts_end_in_reconnect_failed() {
    let mut server = ScriptedServer::start().await;
    let options = ClientOptions {
        max_reconnect_attempts: Some(3),
        ..fast_options()
    };
    let (client, peer) = connect(&mut server, "a", options).await;
    let mut events = client.events();
    let (_, stream) = {
        let serving = peer.serve(standard_answer);
        let sub = client.subscribe_presence("lobby").await.unwrap();
        server.stop_listening().await;
        serving.abort();
        sub
    };
    let mut stream = stream;
    expect_gave_up(&mut events, &client).await;
    assert_eq!(
        client.request("mesh/noop", json!({})).await,
        Err(ClientError::Offline)
    );
    assert_eq!(
        within("stream end", stream.recv()).await,
        None,
        "streams end on give-up"
    );
}

#[tokio::test]
async fn restore_order_then_queued_requests_exactly_once() {
    let mut server = ScriptedServer::start().await;
    let (client, first) = connect(&mut server, "first", fast_options()).await;
    let serving = first.serve(standard_answer);
    assert!(client.join_room("lobby").await.unwrap().success);
    let (reply, mut stream) = client.subscribe_presence("lobby").await.unwrap();
    assert!(reply.success);
    let mut events = client.events();
    serving.abort(); // the socket drops without a close frame
    assert_eq!(
        next_event(&mut events, "disconnect").await,
        ClientEvent::Disconnected
    );

    // Offline: this request must wait and be sent once, after the restore.
    let queued = tokio::spawn({
        let client = client.clone();
        async move { client.request("mesh/noop", json!({"n": 1})).await }
    });
    let mut second = server.next_peer().await;
    second.assign("second").await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let request = second.recv_request().await;
        seen.push(request.command.clone());
        let payload = standard_answer(&request);
        second.reply(&request, payload).await;
    }
    assert_eq!(
        seen,
        [
            "mesh/join-room",
            "mesh/subscribe-presence",
            "mesh/get-presence-state",
            "mesh/noop"
        ]
    );
    assert_eq!(
        within("queued reply", queued).await.unwrap(),
        Ok(json!(true))
    );
    assert_eq!(
        next_event(&mut events, "reconnect").await,
        ClientEvent::Reconnected {
            id: "second".into()
        }
    );
    // The snapshot was delivered before Reconnected was emitted.
    match stream.try_recv() {
        Some(PresenceEvent::Resync {
            room,
            present,
            states,
        }) => {
            assert_eq!(room, "lobby");
            assert_eq!(present, vec!["x".to_string()]);
            assert_eq!(states["x"], json!({"s": 1}));
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    // Nothing was sent twice: the next frame is this fresh request.
    let (fresh, request) = tokio::join!(
        client.request("mesh/noop", json!({"n": 2})),
        second.answer(json!("fresh"))
    );
    assert_eq!(request.payload, json!({"n": 2}));
    assert_eq!(fresh, Ok(json!("fresh")));
}

#[tokio::test]
async fn a_request_that_times_out_while_offline_is_never_sent() {
    let mut server = ScriptedServer::start().await;
    let (client, mut events) = connected_then_dropped(&mut server).await;
    // The next connection is accepted but gets its id only later.
    let mut second = server.next_peer().await;
    let short = Duration::from_millis(300);
    let stale = client
        .request_with_timeout("mesh/noop", json!({"stale": true}), short)
        .await;
    assert_eq!(stale, Err(ClientError::Timeout));
    second.assign("second").await;
    assert_eq!(
        next_event(&mut events, "reconnect").await,
        ClientEvent::Reconnected {
            id: "second".into()
        }
    );
    let (fresh, request) = tokio::join!(
        client.request("mesh/noop", json!({"fresh": true})),
        second.answer(json!(true))
    );
    let payload = request.payload;
    assert_eq!(fresh, Ok(json!(true)));
    assert_eq!(
        payload,
        json!({"fresh": true}),
        "the timed-out request must not be sent"
    );
}

#[tokio::test]
async fn presence_updates_arrive_once_and_in_order() {
    let mut server = ScriptedServer::start().await;
    let (client, mut peer) = connect(&mut server, "a", fast_options()).await;
    let present = json!([{"id": "a", "metadata": {"userId": "u1"}}]);
    let (reply, mut stream) = subscribe_lobby(&client, &mut peer, present).await;
    assert_eq!(reply.present[0].metadata, json!({"userId": "u1"}));
    let join = json!({"type": "join", "connectionId": "b", "roomName": "lobby", "timestamp": 1});
    let state = json!({"type": "state", "connectionId": "b", "roomName": "lobby", "state": {"s": "away"}, "timestamp": 2});
    let other_room =
        json!({"type": "join", "connectionId": "c", "roomName": "elsewhere", "timestamp": 3});
    peer.send_json(json!({"command": "mesh/presence-update", "payload": join}))
        .await;
    // The reference server's duplicate copy must be ignored.
    peer.send_json(json!({"command": "mesh/subscription-message",
        "payload": {"channel": "mesh:presence:updates:lobby", "message": join.to_string()}}))
        .await;
    peer.send_json(json!({"command": "mesh/presence-update", "payload": other_room}))
        .await;
    peer.send_json(json!({"command": "mesh/presence-update", "payload": state}))
        .await;
    let first = within("join", stream.recv()).await.unwrap();
    let second = within("state", stream.recv()).await.unwrap();
    assert_eq!(
        first,
        PresenceEvent::Update(serde_json::from_value(join).unwrap())
    );
    assert_eq!(
        second,
        PresenceEvent::Update(serde_json::from_value(state).unwrap())
    );
    // Sync point: once a reply has come back, every earlier push was routed.
    let _server = peer.serve(standard_answer);
    client.request("mesh/noop", json!({})).await.unwrap();
    assert_eq!(
        stream.try_recv(),
        None,
        "no duplicate, no other room's update"
    );
}

#[tokio::test]
async fn close_fails_pending_requests_and_ends_streams() {
    let mut server = ScriptedServer::start().await;
    let (client, mut peer) = connect(&mut server, "a", fast_options()).await;
    let (_, mut stream) = subscribe_lobby(&client, &mut peer, json!([])).await;
    // A request the peer never answers is pending when we close.
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.request("mesh/noop", json!({})).await }
    });
    peer.recv_request().await;
    let closing = async {
        // The peer sees a clean close frame, not a dropped socket.
        let message = within("close frame", futures_util::StreamExt::next(&mut peer.ws)).await;
        assert!(
            matches!(
                message,
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
            ),
            "{message:?}"
        );
    };
    tokio::join!(within("close", client.close()), closing);
    assert_eq!(
        within("pending", pending).await.unwrap(),
        Err(ClientError::Closed)
    );
    assert_eq!(within("stream end", stream.recv()).await, None);
    assert_eq!(*client.status().borrow(), Status::Offline);
    assert_eq!(
        client.request("mesh/noop", json!({})).await,
        Err(ClientError::Closed)
    );
}

#[tokio::test]
async fn concurrent_metadata_lookups_share_one_request() {
    let mut server = ScriptedServer::start().await;
    let (client, mut peer) = connect(&mut server, "a", fast_options()).await;
    let lookups = async {
        tokio::join!(
            client.get_connection_metadata("x"),
            client.get_connection_metadata("x"),
            client.get_connection_metadata("x"),
        )
    };
    let answer = async {
        let request = peer.recv_request().await;
        assert_eq!(request.command, "mesh/get-connection-metadata");
        assert_eq!(request.payload, json!({"connectionId": "x"}));
        peer.reply(&request, json!({"metadata": {"userId": "u"}}))
            .await;
        peer
    };
    let ((a, b, c), mut peer) = tokio::join!(lookups, answer);
    for got in [a, b, c] {
        assert_eq!(got, Ok(json!({"userId": "u"})));
    }
    // Cached now: the next lookup sends nothing; the next request on the
    // wire is this noop.
    assert_eq!(
        client.get_connection_metadata("x").await,
        Ok(json!({"userId": "u"}))
    );
    let (noop, request) = tokio::join!(
        client.request("mesh/noop", json!({})),
        peer.answer(json!(true))
    );
    assert_eq!(noop, Ok(json!(true)));
    assert_eq!(request.command, "mesh/noop");
}

#[tokio::test]
async fn wss_urls_are_supported() {
    // Nothing listens there; the point is that the scheme is understood
    // (TLS is compiled in) and the failure is a clean connect error.
    let err = MeshClient::connect("wss://127.0.0.1:1", fast_options())
        .await
        .unwrap_err();
    match err {
        ClientError::Connect(message) => {
            assert!(!message.contains("URL"), "scheme rejected: {message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn regular_pings_keep_the_link_past_the_dead_link_window() {
    let mut server = ScriptedServer::start().await;
    let options = dead_link_after(Duration::from_millis(500));
    let (client, mut peer) = connect(&mut server, "a", options).await;
    let mut events = client.events();
    // 2.5 s of pings every 100 ms: well past the 1 s dead-link window. The
    // sleep is the server's ping clock, not a synchronisation.
    for _ in 0..25 {
        peer.send_json(json!({"command": "ping", "payload": {}}))
            .await;
        let pong = within("pong", peer.recv())
            .await
            .expect("client still there");
        assert_eq!(pong.command, "pong");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        events.try_recv().is_err(),
        "the link must not have been dropped"
    );
    assert_eq!(*client.status().borrow(), Status::Online);
    // Silence now: the link is declared dead.
    assert_eq!(
        next_event(&mut events, "disconnect").await,
        ClientEvent::Disconnected
    );
}
