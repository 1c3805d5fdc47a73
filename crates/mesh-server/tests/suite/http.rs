//! HTTP beside the WebSocket: the origin allow-list, `GET /healthz`
//! and `GET /metrics`.

use crate::common::{http_get, metric, scrape, BackendKind, Peer};
use serde_json::json;

async fn origin_allow_list_and_healthz(kind: BackendKind) {
    let server = kind
        .serve_with(|b| b.allow_origins(["http://app.example"]))
        .await;
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

    let response = http_get(server.local_addr(), "/healthz").await;
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
