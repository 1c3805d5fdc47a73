//! Limits: rooms per connection, frame size, request rate, slow
//! consumers, big snapshots, room members and reply size.

use crate::common::{assert_update, error_code, metric, scrape, BackendKind, Peer};
use mesh_protocol::{command, PresenceUpdate};
use serde_json::json;
use std::time::Duration;

async fn rooms_per_connection_limit(kind: BackendKind) {
    let server = kind
        .serve_every_room_with(|b| b.max_rooms_per_connection(2))
        .await;
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
        .serve_every_room_with(|b| b.max_frame_bytes(1024))
        .await;
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
    let server = kind.serve_with(|b| b.max_requests_per_second(5)).await;
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
        .serve_every_room_with(|b| b.max_queued_bytes(64 * 1024))
        .await;
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
        .serve_every_room_with(|b| b.ping_interval(Duration::from_secs(30)))
        .await;
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
    let server = kind.serve_every_room_with(|b| b.max_room_members(3)).await;
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
        .serve_with(|b| {
            b.max_room_members(2)
                .max_state_bytes(100)
                .expose_command("app/huge", |_req| async move {
                    Ok(json!({ "data": "x".repeat(1 << 20) }))
                })
        })
        .await;
    let mut a = Peer::connect(&server.url()).await;
    let reply = a.request("app/huge", json!({})).await;
    assert_eq!(error_code(&reply).as_deref(), Some("ETOOLARGE"), "{reply}");
    // The connection stays.
    a.sync().await;
    server.shutdown().await;
}

suite!(
    rooms_per_connection_limit,
    oversized_frame_beyond_hard_limit_closes,
    request_rate_is_limited,
    slow_consumer_is_dropped,
    big_snapshots_reach_a_newcomer,
    room_member_limit,
    reply_too_large_to_send_is_refused,
);
