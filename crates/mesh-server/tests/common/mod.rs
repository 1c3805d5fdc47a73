//! Shared pieces of the integration tests: which backend to run against,
//! and a small raw-WebSocket Mesh peer that speaks the protocol by hand.

#![allow(dead_code, unused_macros)]

pub mod redis;

use futures_util::{SinkExt, StreamExt};
use mesh_protocol::{command, Frame, PresenceUpdate};
use mesh_server::{Backend, MemoryBackend, RunningServer, ServerBuilder, TrackOptions};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any test waits for an event before failing. Generous, because
/// the suite must pass on a slow, busy machine; the protocol intervals in
/// the tests are short, so passing runs stay fast.
pub const WAIT: Duration = Duration::from_secs(10);

/// The backends the suite runs against. A new backend adds a variant here
/// and one line in the `suite!` macro below.
#[derive(Debug, Clone, Copy)]
pub enum BackendKind {
    /// The in-memory backend.
    Memory,
    /// The Redis backend, on the tests' Redis under a fresh key prefix.
    Redis,
    /// The Redis backend on the tests' three-node Redis Cluster.
    RedisCluster,
}

impl BackendKind {
    /// A fresh, empty backend.
    pub async fn backend(self) -> Arc<dyn Backend> {
        match self {
            BackendKind::Memory => Arc::new(MemoryBackend::new()),
            BackendKind::Redis => Arc::new(redis::backend(&redis::unique_prefix()).await),
            BackendKind::RedisCluster => {
                Arc::new(redis::cluster_backend(&redis::unique_prefix()).await)
            }
        }
    }

    /// Two handles on one shared store, as two server instances of a
    /// cluster would have.
    pub async fn cluster_pair(self) -> (Arc<dyn Backend>, Arc<dyn Backend>) {
        match self {
            BackendKind::Memory => {
                let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
                (b.clone(), b)
            }
            BackendKind::Redis => {
                let prefix = redis::unique_prefix();
                (
                    Arc::new(redis::backend(&prefix).await),
                    Arc::new(redis::backend(&prefix).await),
                )
            }
            BackendKind::RedisCluster => {
                let prefix = redis::unique_prefix();
                (
                    Arc::new(redis::cluster_backend(&prefix).await),
                    Arc::new(redis::cluster_backend(&prefix).await),
                )
            }
        }
    }

    /// A server builder on an ephemeral port with this backend and a fast
    /// heartbeat; rooms are tracked as each test says.
    pub async fn builder(self) -> ServerBuilder {
        builder_on(self.backend().await)
            .ping_interval(Duration::from_millis(200))
            // Peers answer pings only while a test reads from them; a wide
            // window keeps an idle peer from being dropped on a busy machine.
            .max_missed_pongs(300)
    }

    /// A running server from [`BackendKind::builder`] that tracks presence
    /// in every room, the setup most tests need.
    pub async fn serve_every_room(self) -> RunningServer {
        self.serve_every_room_with(|b| b).await
    }

    /// [`BackendKind::serve_every_room`], with the rest of the
    /// configuration (limits, hooks...) made by `configure`.
    pub async fn serve_every_room_with(
        self,
        configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> RunningServer {
        self.serve_with(|b| configure(b.track_presence(".*", TrackOptions::default())))
            .await
    }

    /// A running server from [`BackendKind::builder`], configured by
    /// `configure` alone: no room is tracked unless it says so.
    pub async fn serve_with(
        self,
        configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> RunningServer {
        configure(self.builder().await).bind().await.unwrap()
    }
}

/// A server builder on `backend`, on a free port of 127.0.0.1.
pub fn builder_on(backend: Arc<dyn Backend>) -> ServerBuilder {
    mesh_server::Server::builder()
        .addr("127.0.0.1:0".parse().unwrap())
        .backend(backend)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A Mesh peer over a raw WebSocket, for tests.
pub struct Peer {
    ws: Ws,
    /// The id the server assigned.
    pub id: String,
    next_id: u64,
    /// Frames received but not consumed yet.
    backlog: VecDeque<Frame>,
    /// Answer `ping` with `pong` while reading (on by default).
    pub auto_pong: bool,
}

impl Peer {
    /// Connects and waits for `mesh/assign-id`.
    pub async fn connect(url: &str) -> Peer {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Peer::from_stream(ws).await
    }

    /// Wraps an opened WebSocket and waits for `mesh/assign-id`.
    pub async fn from_stream(ws: Ws) -> Peer {
        let mut peer = Peer {
            ws,
            id: String::new(),
            next_id: 1,
            backlog: VecDeque::new(),
            auto_pong: true,
        };
        let frame = peer.next_push(command::ASSIGN_ID).await;
        peer.id = frame.payload.as_str().expect("id is a string").to_string();
        peer
    }

    /// Reads the next frame from the socket (answering pings if asked);
    /// `None` once the socket is closed.
    async fn read(&mut self) -> Option<Frame> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")?;
            match msg {
                Ok(Message::Text(text)) => {
                    let frame = Frame::decode(&text, usize::MAX).expect("server sent a bad frame");
                    if frame.command == command::PING && self.auto_pong {
                        self.send(Frame::push(command::PONG, json!({}))).await;
                        continue;
                    }
                    return Some(frame);
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: Frame) {
        self.send_text(frame.encode()).await;
    }

    /// Sends raw text, whatever it is.
    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send failed");
    }

    /// Sends a request and returns the reply payload. Pushes that arrive
    /// meanwhile are kept for `next_push`.
    pub async fn request(&mut self, cmd: &str, payload: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(Frame::request(id, cmd, payload)).await;
        self.reply_to(id, cmd).await
    }

    /// Waits for the reply to request `id`.
    pub async fn reply_to(&mut self, id: u64, cmd: &str) -> Value {
        loop {
            let frame = self.read().await.expect("socket closed before the reply");
            if frame.id == Some(id) {
                assert_eq!(frame.command, cmd, "reply carries the request's command");
                return frame.payload;
            }
            self.backlog.push_back(frame);
        }
    }

    /// The next push with this command (earlier pushes of other commands
    /// stay in the backlog).
    pub async fn next_push(&mut self, cmd: &str) -> Frame {
        if let Some(pos) = self.backlog.iter().position(|f| f.command == cmd) {
            return self.backlog.remove(pos).unwrap();
        }
        loop {
            let frame = self
                .read()
                .await
                .unwrap_or_else(|| panic!("socket closed while waiting for {cmd}"));
            if frame.command == cmd {
                return frame;
            }
            self.backlog.push_back(frame);
        }
    }

    /// The next presence update.
    pub async fn next_update(&mut self) -> PresenceUpdate {
        let frame = self.next_push(command::PRESENCE_UPDATE).await;
        serde_json::from_value(frame.payload).expect("presence update shape")
    }

    /// Presence updates received so far and not consumed.
    pub fn pending_updates(&self) -> usize {
        self.backlog
            .iter()
            .filter(|f| f.command == command::PRESENCE_UPDATE)
            .count()
    }

    /// A `mesh/noop` round trip: everything the server queued to us before
    /// answering it has arrived afterwards.
    pub async fn sync(&mut self) {
        assert_eq!(self.request(command::NOOP, json!({})).await, json!(true));
    }

    /// Waits for the server to close the socket; the close frame, if any.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match msg {
                Some(Ok(Message::Close(frame))) => return frame,
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Waits for the server to close the socket; the presence updates that
    /// arrived first, and the close frame, if any.
    pub async fn updates_until_closed(&mut self) -> (Vec<PresenceUpdate>, Option<CloseFrame>) {
        let mut updates = Vec::new();
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match msg {
                Some(Ok(Message::Close(frame))) => return (updates, frame),
                None | Some(Err(_)) => return (updates, None),
                Some(Ok(Message::Text(text))) => {
                    let frame = Frame::decode(text.as_str(), 1 << 20).expect("a Mesh frame");
                    if frame.command == command::PRESENCE_UPDATE {
                        updates.push(serde_json::from_value(frame.payload).expect("an update"));
                    }
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Joins a room; the reply payload.
    pub async fn join(&mut self, room: &str) -> Value {
        self.request(command::JOIN_ROOM, json!({ "roomName": room }))
            .await
    }

    /// Subscribes to a room's presence; the reply payload.
    pub async fn subscribe(&mut self, room: &str) -> Value {
        self.request(command::SUBSCRIBE_PRESENCE, json!({ "roomName": room }))
            .await
    }

    /// This connection's metadata (`null` when it has none).
    pub async fn my_metadata(&mut self) -> Value {
        self.request(command::GET_MY_CONNECTION_METADATA, json!({}))
            .await["metadata"]
            .take()
    }

    /// Another connection's metadata, as the server lets this one see it.
    pub async fn metadata_of(&mut self, id: &str) -> Value {
        self.request(
            command::GET_CONNECTION_METADATA,
            json!({ "connectionId": id }),
        )
        .await["metadata"]
            .take()
    }

    /// Publishes a state; the reply payload.
    pub async fn publish(&mut self, room: &str, state: Value) -> Value {
        self.request(
            command::PUBLISH_PRESENCE_STATE,
            json!({ "roomName": room, "state": state }),
        )
        .await
    }

    /// The underlying stream, to misbehave with.
    pub fn into_inner(self) -> Ws {
        self.ws
    }
}

/// Two peers on `url`: a watcher subscribed to `room`'s presence, and a
/// member who joined it; the watcher has seen the join.
pub async fn watcher_and_member(url: &str, room: &str) -> (Peer, Peer) {
    let mut watcher = Peer::connect(url).await;
    let mut member = Peer::connect(url).await;
    watcher.subscribe(room).await;
    member.join(room).await;
    assert_update(&watcher.next_update().await, "join", &member.id, room);
    (watcher, member)
}

/// A server process a test started; killed when dropped, so that a failing
/// test leaves none behind.
pub struct ServerProcess(pub std::process::Child);

impl std::ops::Deref for ServerProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the `mesh-server` binary (of the crate under test) with `args`,
/// logging at info, and waits (up to [`WAIT`]) for the URL it logs once it
/// listens. The log keeps being drained so that the server never blocks
/// on it.
pub async fn spawn_binary(binary: &str, args: &[&str]) -> (ServerProcess, String) {
    use std::io::{BufRead, BufReader};
    let mut command = std::process::Command::new(binary);
    command
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped());
    let started = tokio::task::spawn_blocking(move || {
        let mut child = ServerProcess(command.spawn().expect("server binary starts"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("log ended early").unwrap();
            if let Some(start) = line.find("ws://") {
                let rest = &line[start..];
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                break rest[..end].to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        (child, url)
    });
    tokio::time::timeout(WAIT, started)
        .await
        .expect("the server did not report its address")
        .unwrap()
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Asserts the update is a join/leave/state of `conn` in `room`.
pub fn assert_update(update: &PresenceUpdate, kind: &str, conn: &str, room: &str) {
    let actual = match update {
        PresenceUpdate::Join { .. } => "join",
        PresenceUpdate::Leave { .. } => "leave",
        PresenceUpdate::State { .. } => "state",
    };
    assert_eq!(actual, kind, "update kind of {update:?}");
    assert_eq!(update.connection_id(), conn);
    assert_eq!(update.room_name(), room);
}

/// `GET /metrics` from the server at `addr`: the response body.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let response = http_get(addr, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("content-type: text/plain; version=0.0.4"),
        "{response}"
    );
    let (_, body) = response.split_once("\r\n\r\n").expect("a body");
    body.to_string()
}

/// The whole response (status line, headers, body) to `GET path` over a
/// plain TCP connection, which the server closes after answering.
pub async fn http_get(addr: impl tokio::net::ToSocketAddrs, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.expect("connect for HTTP");
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("send the request");
    let mut response = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut response))
        .await
        .expect("timed out reading the response")
        .expect("read the response");
    response
}

/// The value of an unlabelled metric in a `/metrics` body.
pub fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The error code of a reply payload, if it is an error.
pub fn error_code(reply: &Value) -> Option<String> {
    reply
        .get("code")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// One `#[tokio::test]` per test for one backend, in a module named after it.
macro_rules! for_backend {
    ($kind:ident, $module:ident, [$($test:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::BackendKind::$kind).await;
                }
            )*
        }
    };
}

/// The whole suite of a test file, once per backend. Another backend is
/// one more line.
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        for_backend!(Memory, memory, [$($test),*]);
        for_backend!(Redis, redis, [$($test),*]);
        for_backend!(RedisCluster, redis_cluster, [$($test),*]);
    };
}
