//! The benchmark's own client: raw frames over a WebSocket, reading only
//! what it measures, so that the load generator costs as little as it can.

use crate::args::Args;
use crate::{BoxError, PHASE_TIMEOUT};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use mesh_protocol::command;
use serde::Deserialize;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames a client classifies before it lets the other clients read.
const EVENTS_PER_TURN: u32 = 32;

/// One benchmark connection.
pub struct Client {
    tx: SplitSink<Ws, Message>,
    rx: SplitStream<Ws>,
    next_id: u64,
    /// Frames read while waiting at a barrier, for `next_event`.
    early: VecDeque<Utf8Bytes>,
    /// Frames classified by `next_event`, to give way now and then.
    events: u32,
}

/// What the benchmark reads out of each frame; everything else is skipped.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(borrow)]
    command: &'a str,
    #[serde(default)]
    payload: IncomingPayload,
}

/// The fields of a presence update; any other payload (a string id, a
/// number, `true`) reads as empty.
#[derive(Default)]
struct IncomingPayload {
    kind: Option<String>,
    state: Option<BenchState>,
}

impl<'de> Deserialize<'de> for IncomingPayload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IncomingPayload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any payload")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = IncomingPayload::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "type" => out.kind = map.next_value()?,
                        // `null` (cleared) reads as no state; the room is
                        // the benchmark's own, so any other state is ours.
                        "state" => out.state = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IncomingPayload::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(IncomingPayload::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// The state every benchmark client publishes: who, which one, and when
/// (microseconds since the benchmark's epoch; every client shares it).
#[derive(Deserialize, Clone, Copy)]
pub struct BenchState {
    /// The client's index.
    pub c: u32,
    /// The state's number, per client.
    pub s: u32,
    /// When it was published.
    pub t: u64,
}

/// What one frame was, for the benchmark.
pub enum Event {
    /// A reply to one of our requests.
    Reply,
    /// Someone joined the room.
    Join,
    /// A benchmark state.
    State(BenchState),
    /// Anything else.
    Other,
}

impl Client {
    /// Connects, and returns once the server assigned an id.
    pub async fn connect(url: &str) -> Result<Self, BoxError> {
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
        let (tx, rx) = ws.split();
        let mut client = Client {
            tx,
            rx,
            next_id: 1,
            early: VecDeque::new(),
            events: 0,
        };
        // Connected means: the id was assigned.
        loop {
            let text = client.recv_text().await?;
            let frame: Incoming<'_> = serde_json::from_str(&text)?;
            if frame.command == command::ASSIGN_ID {
                return Ok(client);
            }
        }
    }

    async fn recv_text(&mut self) -> Result<Utf8Bytes, BoxError> {
        loop {
            match tokio::time::timeout(PHASE_TIMEOUT, self.rx.next()).await {
                Err(_) => return Err("timed out waiting for the server".into()),
                Ok(None) => return Err("server closed the connection".into()),
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(Some(Ok(Message::Text(text)))) => return Ok(text),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Waits at `barrier` while still reading: pings are answered and other
    /// frames kept for `next_event`. A client that stopped reading while it
    /// waits would answer no ping, and a server with a short ping interval
    /// would rightly close it.
    pub async fn wait_reading(&mut self, barrier: &Barrier) -> Result<(), BoxError> {
        let wait = barrier.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                biased;
                _ = &mut wait => return Ok(()),
                // `next` is cancel-safe: a frame is either read or left.
                msg = self.rx.next() => match msg {
                    None => return Err("server closed the connection".into()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Text(text))) => {
                        let frame: Incoming<'_> = serde_json::from_str(&text)?;
                        if frame.command == command::PING && frame.id.is_none() {
                            self.send(json!({"command": command::PONG, "payload": {}}).to_string())
                                .await?;
                        } else {
                            self.early.push_back(text);
                        }
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// Reads one frame and classifies it; answers pings.
    pub async fn next_event(&mut self) -> Result<Event, BoxError> {
        // Thousands of clients share a few threads here. One that drained
        // its whole backlog in one go would leave the others unread for
        // seconds, and a server with a short ping interval would rightly
        // take them for gone; so each reads a little, then gives way, as
        // clients on machines of their own would all be reading at once.
        self.events = self.events.wrapping_add(1);
        if self.events.is_multiple_of(EVENTS_PER_TURN) {
            tokio::task::yield_now().await;
        }
        let text = match self.early.pop_front() {
            Some(text) => text,
            None => self.recv_text().await?,
        };
        let frame: Incoming<'_> = serde_json::from_str(&text)?;
        Ok(match frame.command {
            _ if frame.id.is_some() => Event::Reply,
            command::PING => {
                self.send(json!({"command": command::PONG, "payload": {}}).to_string())
                    .await?;
                Event::Other
            }
            command::PRESENCE_UPDATE => match frame.payload.kind.as_deref() {
                Some("join") => Event::Join,
                Some("state") => match frame.payload.state {
                    Some(state) => Event::State(state),
                    None => Event::Other,
                },
                _ => Event::Other,
            },
            _ => Event::Other,
        })
    }

    async fn send(&mut self, text: String) -> Result<(), BoxError> {
        self.tx.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Sends a request without waiting for its reply.
    pub async fn send_request(
        &mut self,
        command: &str,
        payload: serde_json::Value,
    ) -> Result<(), BoxError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"id": id, "command": command, "payload": payload}).to_string())
            .await
    }

    /// Sends a request and waits for its reply (other frames are dropped).
    pub async fn request(
        &mut self,
        command: &str,
        payload: serde_json::Value,
    ) -> Result<(), BoxError> {
        self.send_request(command, payload).await?;
        loop {
            if let Event::Reply = self.next_event().await? {
                return Ok(());
            }
        }
    }
}

/// Opens `n` clients, `concurrency` at a time; returns them and how long
/// it took.
pub async fn connect_all(args: &Args, n: usize) -> Result<(Vec<Client>, Duration), BoxError> {
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    let urls: Vec<&String> = std::iter::once(&args.url).chain(&args.also_url).collect();
    for i in 0..n {
        let url = urls[i % urls.len()].clone();
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            Client::connect(&url).await
        }));
    }
    let mut clients = Vec::with_capacity(n);
    for task in tasks {
        clients.push(task.await??);
    }
    Ok((clients, started.elapsed()))
}
