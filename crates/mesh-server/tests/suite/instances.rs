//! Instances: a graceful shutdown, and several instances sharing one
//! backend.

use crate::common::{assert_update, BackendKind, Peer, WAIT};
use mesh_protocol::{command, PresenceUpdate};
use mesh_server::TrackOptions;
use serde_json::json;
use tokio::sync::mpsc;

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
    let metadata = a.metadata_of(&b.id).await;
    assert_eq!(metadata, json!({"name": "Bo"}));
    let b_id = b.id.clone();
    two.shutdown().await;
    assert_update(&a.next_update().await, "leave", &b_id, "r");
    one.shutdown().await;
}

suite!(graceful_shutdown_cleans_up, instances_share_presence);
