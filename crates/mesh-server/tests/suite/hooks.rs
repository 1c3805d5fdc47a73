//! What embedders plug in: connection hooks, custom commands, room
//! metadata, and a handler whose caller vanishes.

use crate::common::{assert_update, error_code, BackendKind, Peer, WAIT};
use mesh_protocol::{command, Strategy};
use mesh_server::{DisconnectInfo, Refusal};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::mpsc;

async fn connection_hooks(kind: BackendKind) {
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<DisconnectInfo>();
    let server = kind
        .serve_every_room_with(|b| {
            b.metadata_from_query(true)
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
        })
        .await;
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
    let mine = alice.my_metadata().await;
    assert_eq!(
        mine,
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
        .serve_with(|b| {
            b.expose_command("app/echo", |req| async move {
                if req.payload.get("fail").is_some() {
                    return Err(mesh_protocol::ErrorPayload::new(
                        mesh_protocol::ErrorCode::Forbidden,
                        "not today",
                    ));
                }
                Ok(json!({ "from": req.connection_id, "echo": req.payload }))
            })
        })
        .await;
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
        .serve_every_room_with(|b| {
            b.expose_command("app/slow", move |_req| {
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
        })
        .await;
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

suite!(
    connection_hooks,
    custom_commands_and_room_metadata,
    peer_vanishing_mid_request_is_cleaned_up,
);
