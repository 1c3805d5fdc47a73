//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod proxy;
pub mod room;

use futures_util::{SinkExt, StreamExt};
use mesh_client::{ClientError, ClientEvent, ClientOptions, MeshClient, Status};
use mesh_protocol::Frame;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Generous: the machine is small and shared; waits end early on success.
pub const WAIT: Duration = Duration::from_secs(15);

/// Options with short intervals so that tests run fast.
pub fn fast_options() -> ClientOptions {
    ClientOptions {
        reconnect_interval: Duration::from_millis(50),
        max_reconnect_interval: Duration::from_millis(200),
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

/// Awaits `fut`, failing the test after [`WAIT`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Asserts the client went offline for good: its status says so, and a
/// request fails at once with [`ClientError::Offline`].
pub async fn assert_offline_for_good(client: &MeshClient) {
    let mut status = client.status();
    within("offline", status.wait_for(|s| *s == Status::Offline))
        .await
        .unwrap();
    assert_eq!(
        client.request("mesh/noop", json!({})).await,
        Err(ClientError::Offline)
    );
}

/// Asserts the client's next events (latency reports skipped), in order;
/// each is named for the failure message.
pub async fn expect_events(
    events: &mut broadcast::Receiver<ClientEvent>,
    expected: &[(&str, ClientEvent)],
) {
    for (what, event) in expected {
        assert_eq!(&next_event(events, what).await, event);
    }
}

/// Asserts the client lost its connection and gave up reconnecting: its
/// next events are a disconnect and a give-up, and it is offline now.
pub async fn expect_gave_up(events: &mut broadcast::Receiver<ClientEvent>, client: &MeshClient) {
    expect_events(
        events,
        &[
            ("disconnect", ClientEvent::Disconnected),
            ("give up", ClientEvent::ReconnectFailed),
        ],
    )
    .await;
    assert_eq!(*client.status().borrow(), Status::Offline);
}

/// Waits for the first event matching `pred`, skipping latency reports.
pub async fn next_event(events: &mut broadcast::Receiver<ClientEvent>, what: &str) -> ClientEvent {
    within(what, async {
        loop {
            match events.recv().await {
                Ok(ClientEvent::Latency(_)) => continue,
                Ok(event) => return event,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("event channel closed: {e}"),
            }
        }
    })
    .await
}

/// A scripted WebSocket server: each accepted connection is handed to the
/// test as a [`Peer`] to drive by hand, so that it can misbehave on cue.
pub struct ScriptedServer {
    pub url: String,
    peers: mpsc::UnboundedReceiver<Peer>,
    accept: JoinHandle<()>,
}

impl ScriptedServer {
    pub async fn start() -> ScriptedServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let (tx, peers) = mpsc::unbounded_channel();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                    if tx.send(Peer { ws }).is_err() {
                        return;
                    }
                }
            }
        });
        ScriptedServer { url, peers, accept }
    }

    /// The next connection the client opens.
    pub async fn next_peer(&mut self) -> Peer {
        within("a connection", self.peers.recv())
            .await
            .expect("accept loop ended")
    }

    /// Stops listening: further connection attempts are refused.
    pub async fn stop_listening(&mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
    }
}

/// The server side of one connection.
pub struct Peer {
    pub ws: WebSocketStream<TcpStream>,
}

impl Peer {
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws.send(Message::text(text.into())).await.unwrap();
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    /// Sends `mesh/assign-id`.
    pub async fn assign(&mut self, id: &str) {
        self.send_json(json!({"command": "mesh/assign-id", "payload": id}))
            .await;
    }

    /// The next text frame from the client; `None` once it is gone.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(Frame::decode(text.as_str(), 1 << 20).unwrap())
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next request (a frame with an id), skipping pushes such as pong.
    pub async fn recv_request(&mut self) -> Frame {
        within("a request", async {
            loop {
                let frame = self.recv().await.expect("client went away");
                if frame.id.is_some() {
                    return frame;
                }
            }
        })
        .await
    }

    /// Answers the next request with `payload`; the request.
    pub async fn answer(&mut self, payload: Value) -> Frame {
        let request = self.recv_request().await;
        self.reply(&request, payload).await;
        request
    }

    /// Answers `request` with `payload`.
    pub async fn reply(&mut self, request: &Frame, payload: Value) {
        self.send_json(json!({"id": request.id, "command": request.command, "payload": payload}))
            .await;
    }

    /// Answers every request with `answer(frame)`, until the client leaves.
    pub fn serve(mut self, answer: fn(&Frame) -> Value) -> JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(frame) = self.recv().await {
                if frame.id.is_some() {
                    let payload = answer(&frame);
                    self.reply(&frame, payload).await;
                }
            }
        })
    }
}

/// What a well-behaved server would answer, for scripted peers.
pub fn standard_answer(frame: &Frame) -> Value {
    match frame.command.as_str() {
        "mesh/join-room" => json!({"success": true, "present": []}),
        "mesh/subscribe-presence" => json!({"success": true, "present": [], "states": {}}),
        "mesh/get-presence-state" => {
            json!({"success": true, "present": ["x"], "states": {"x": {"s": 1}}})
        }
        _ => json!(true),
    }
}
