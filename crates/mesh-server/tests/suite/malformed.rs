//! Bad input: malformed frames get clear errors, and a flood of them
//! closes only the socket that sent it.

use crate::common::{error_code, watcher_and_member, BackendKind, Peer, WAIT};
use mesh_protocol::{command, PresenceUpdate};
use serde_json::json;

async fn malformed_frames_get_clear_errors(kind: BackendKind) {
    let server = kind
        .serve_every_room_with(|b| b.max_frame_bytes(4096).max_state_bytes(1024))
        .await;
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
    let (mut a, mut b) = watcher_and_member(&server.url(), "r").await;

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

suite!(
    malformed_frames_get_clear_errors,
    garbage_flood_closes_only_that_socket,
);
