//! HTTP beside the WebSocket: the origin allow-list, `GET /healthz`
//! and `GET /metrics`.

use crate::common::{metric, scrape, BackendKind, Peer, WAIT};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

suite!(origin_allow_list_and_healthz, metrics_are_served);
