//! Liveness: heartbeats, presence TTL, vanished sockets and latency
//! measurement.

use crate::common::{assert_update, BackendKind, Peer};
use mesh_protocol::{command, PresenceUpdate};
use mesh_server::TrackOptions;
use serde_json::json;
use std::time::{Duration, Instant};

async fn presence_ttl_lapses_without_pongs(kind: BackendKind) {
    let server = kind
        .serve_with(|b| {
            b.ping_interval(Duration::from_millis(100)).track_presence(
                "r",
                TrackOptions {
                    ttl: Some(Duration::from_millis(400)),
                    guard: None,
                },
            )
        })
        .await;
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
        .serve_every_room_with(|b| b.ping_interval(interval).max_missed_pongs(1))
        .await;
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

async fn latency_is_measured(kind: BackendKind) {
    let server = kind
        .serve_with(|b| b.latency_interval(Duration::from_millis(100)))
        .await;
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

async fn reading_client_is_not_unresponsive(kind: BackendKind) {
    let interval = Duration::from_millis(100);
    let server = kind
        .serve_every_room_with(|b| b.ping_interval(interval).max_missed_pongs(1))
        .await;
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

/// Publishes `n` states of about 4 KiB to room `r` from `publisher`, as
/// fast as the server takes them: a backlog for the room's subscribers.
async fn publish_backlog(publisher: &mut Peer, n: u64) {
    let blob = "b".repeat(4096);
    for i in 1..=n {
        let state = json!({ "n": i, "blob": blob });
        assert_eq!(publisher.publish("r", state).await, true);
    }
}

/// A backlog small enough to sit whole in the socket buffers, where the
/// server cannot watch it drain, read far slower than the pong deadline
/// allows: the pong behind it is late, not missing.
async fn slow_reader_behind_a_buffered_backlog_stays(kind: BackendKind) {
    let interval = Duration::from_millis(100);
    let server = kind
        .serve_every_room_with(|b| b.ping_interval(interval).max_missed_pongs(1))
        .await;
    let mut reader = Peer::connect(&server.url()).await;
    reader.subscribe("r").await;
    reader.join("r").await;
    let n = 24;
    // The publisher leaves once done: it reads nothing while `reader`
    // reads, and would rightly be taken for gone if it stayed.
    let mut publisher = Peer::connect(&server.url()).await;
    publisher.join("r").await;
    publish_backlog(&mut publisher, n).await;
    drop(publisher);
    // About 100 KiB, read at 25 updates a second: ten pings' worth of
    // time, each ping answered only once the reader reaches it. At the
    // slowest counted rate (16 KiB/s) it would take about six seconds.
    let started = Instant::now();
    let mut seen = 0;
    while seen < n {
        if let PresenceUpdate::State { state: Some(s), .. } = reader.next_update().await {
            seen = s["n"].as_u64().expect("n");
            // The pace of a slow reader, not a wait for anything.
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    assert!(started.elapsed() > interval * 8, "the reading was not slow");
    // Still connected, and still present to the others.
    reader.sync().await;
    let mut observer = Peer::connect(&server.url()).await;
    let snap = observer
        .request(command::GET_PRESENCE_STATE, json!({"roomName": "r"}))
        .await;
    assert_eq!(snap["present"], json!([reader.id]));
    server.shutdown().await;
}

/// The same backlog, but the reader stops reading: it is closed once the
/// slowest counted reader would have read what preceded the ping.
async fn stalled_reader_behind_a_buffered_backlog_is_closed(kind: BackendKind) {
    let interval = Duration::from_millis(100);
    // 1 MiB/s: the ~100 KiB backlog excuses about a tenth of a second.
    let server = kind
        .serve_every_room_with(|b| {
            b.ping_interval(interval)
                .max_missed_pongs(1)
                .min_read_rate(1 << 20)
        })
        .await;
    let mut publisher = Peer::connect(&server.url()).await;
    publisher.subscribe("r").await;
    let mut stalled = Peer::connect(&server.url()).await;
    stalled.subscribe("r").await;
    stalled.join("r").await;
    assert_update(&publisher.next_update().await, "join", &stalled.id, "r");
    publisher.join("r").await;
    let stalled_since = Instant::now();
    publish_backlog(&mut publisher, 24).await;
    // From here `stalled` reads nothing.
    loop {
        match publisher.next_update().await {
            PresenceUpdate::Leave { connection_id, .. } if connection_id == stalled.id => break,
            _ => {}
        }
    }
    let took = stalled_since.elapsed();
    // A ping within an interval, its grace, the backlog's tenth of a
    // second, plus slack for a busy machine.
    assert!(
        took < interval * 3 + Duration::from_secs(2),
        "took {took:?}"
    );
    let (_, frame) = stalled.updates_until_closed().await;
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001));
    server.shutdown().await;
}

suite!(
    slow_reader_behind_a_buffered_backlog_stays,
    stalled_reader_behind_a_buffered_backlog_is_closed,
    presence_ttl_lapses_without_pongs,
    silent_peer_is_closed_by_heartbeat,
    dropped_socket_leaves,
    latency_is_measured,
    reading_client_is_not_unresponsive,
);
