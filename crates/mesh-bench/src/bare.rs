//! The yardstick: a bare fan-out server that speaks just enough of the
//! protocol for the burst (assign an id, subscribe, join, publish) with
//! unbounded queues, no limits, no backend and no snapshots. What it
//! reaches on a machine is the most fan-out one can hope for there.

use futures_util::{SinkExt, StreamExt};
use mesh_protocol::command;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Subscribers = Arc<Mutex<Vec<mpsc::UnboundedSender<Message>>>>;

/// Serves on `addr` until the process is stopped.
pub async fn serve(addr: &str) -> Result<(), crate::BoxError> {
    let listener = TcpListener::bind(addr).await?;
    let subscribers = Subscribers::default();
    let ids = Arc::new(AtomicU64::new(1));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let id = format!("bare-{:x}", ids.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(connection(stream, id, subscribers.clone()));
    }
}

fn fan_out(subscribers: &Subscribers, payload: Value) {
    let text = Utf8Bytes::from(
        json!({ "command": command::PRESENCE_UPDATE, "payload": payload }).to_string(),
    );
    let subscribers = subscribers.lock().unwrap_or_else(|p| p.into_inner());
    for tx in subscribers.iter() {
        let _ = tx.send(Message::Text(text.clone()));
    }
}

async fn connection(stream: TcpStream, id: String, subscribers: Subscribers) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(msg) = rx.try_recv() {
                if sink.feed(msg).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let push = |value: Value| {
        let _ = tx.send(Message::Text(value.to_string().into()));
    };
    push(json!({ "command": command::ASSIGN_ID, "payload": id }));
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let command = frame["command"].as_str().unwrap_or_default();
        let room = frame["payload"]["roomName"].clone();
        let reply = match command {
            command::SUBSCRIBE_PRESENCE => {
                subscribers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(tx.clone());
                json!({ "success": true, "present": [], "states": {} })
            }
            command::JOIN_ROOM => {
                fan_out(
                    &subscribers,
                    json!({ "type": "join", "connectionId": id, "roomName": room, "timestamp": 0 }),
                );
                json!({ "success": true, "present": [] })
            }
            command::PUBLISH_PRESENCE_STATE => {
                fan_out(
                    &subscribers,
                    json!({ "type": "state", "connectionId": id, "roomName": room,
                            "state": frame["payload"]["state"], "timestamp": 0 }),
                );
                json!(true)
            }
            _ => continue,
        };
        push(json!({ "id": frame["id"], "command": command, "payload": reply }));
    }
    writer.abort();
}
