//! Memory held per connection does not grow with the largest message it
//! was sent: after hundreds of subscribers each receive a room snapshot of
//! about 1 MB, the `mesh-server` process is back near its idle size.

mod common;

use common::{rss_kib, spawn_binary, Peer, WAIT};
use futures_util::{SinkExt, StreamExt};
use mesh_protocol::{command, Frame};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Subscribers that each receive the snapshot.
const SUBSCRIBERS: usize = 300;
/// Members with a state, and the size of each state: a 1 MB snapshot.
const MEMBERS: usize = 64;
const STATE_BYTES: usize = 16_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_a_big_room_cost_no_memory_once_served() {
    let (mut child, url) = spawn_binary(
        env!("CARGO_BIN_EXE_mesh-server"),
        &["--addr", "127.0.0.1:0", "--track", ".*"],
    )
    .await;
    let pid = child.id();

    let blob = "s".repeat(STATE_BYTES);
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        let mut p = Peer::connect(&url).await;
        p.join("big").await;
        assert_eq!(
            p.publish("big", json!({ "n": i, "blob": blob })).await,
            true
        );
        members.push(p);
    }
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        subscribers.push(Peer::connect(&url).await.into_inner());
    }
    let idle = rss_kib(pid);

    // Every subscriber asks at once and reads its reply whole.
    let request = Frame::request(1, command::SUBSCRIBE_PRESENCE, json!({ "roomName": "big" }));
    let tasks: Vec<_> = subscribers
        .into_iter()
        .map(|mut ws| {
            let request = request.encode();
            tokio::spawn(async move {
                ws.send(Message::Text(request.into())).await.unwrap();
                loop {
                    let msg = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
                    if let Some(Ok(Message::Text(text))) = msg {
                        if text.starts_with(r#"{"id":1,"#) {
                            return (ws, text.len());
                        }
                    }
                }
            })
        })
        .collect();
    let mut subscribers = Vec::new();
    for task in tasks {
        let (ws, len) = task.await.unwrap();
        assert!(len > MEMBERS * STATE_BYTES, "a whole snapshot: {len} bytes");
        subscribers.push(ws);
    }
    // All served: the snapshots were written and let go. (Before, each
    // connection kept a write buffer the size of its largest message:
    // 300 MB here.)
    let served = rss_kib(pid);
    let grown = served.saturating_sub(idle) / 1024;
    eprintln!("server RSS: {idle} KiB idle, {served} KiB after {SUBSCRIBERS} snapshots");
    assert!(
        grown < 24,
        "server RSS {idle} KiB idle, {served} KiB after the snapshots: {grown} MiB more"
    );

    let _ = child.kill();
    let _ = child.wait();
    drop((members, subscribers));
}
