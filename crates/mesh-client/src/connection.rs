//! The task that owns the socket.
//!
//! Exactly one task reads and writes the WebSocket. Handles talk to it
//! through a channel of [`Command`]s; each request carries a oneshot for
//! its reply. The task answers heartbeats, routes replies and presence
//! updates, watches for a dead link, and on loss reconnects and restores
//! the session (rooms, presence subscriptions, snapshots) before it sends
//! the requests that were queued while offline.

use crate::backoff::backoff_delay;
use crate::error::{ClientError, LinkLoss};
use crate::events::{ClientEvent, PresenceEvent, Status};
use crate::incoming::{self, Incoming};
use crate::metadata_cache::MetadataCache;
use crate::options::ClientOptions;
use crate::requests::{Effect, Outgoing, Pending, RequestTable};
use futures_util::future::{BoxFuture, Shared as SharedFuture};
use futures_util::{SinkExt, StreamExt};
use mesh_protocol::command;
use mesh_protocol::payload::PresenceStateReply;
use mesh_protocol::Frame;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};

/// The socket type: plain TCP for `ws://`, TLS for `wss://`.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A metadata lookup that several callers can await.
pub(crate) type Lookup = SharedFuture<BoxFuture<'static, Result<Value, ClientError>>>;

/// How often abandoned requests are swept from the request table.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How long a graceful close waits for the server to confirm.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What a handle asks of the connection task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a request (or queue it while offline).
    Request(Outgoing),
    /// Close the connection for good; acknowledged once done.
    Close(oneshot::Sender<()>),
}

/// State read by handles without a round trip to the task. Locks are held
/// for a few instructions and never across an `.await`.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The current connection id; `None` while disconnected.
    pub connection_id: Mutex<Option<String>>,
    /// Other connections' metadata.
    pub metadata: Mutex<MetadataCache<Lookup>>,
}

/// Locks a mutex, ignoring poisoning: the data behind ours stays consistent
/// even if a holder panicked, since every critical section is one update.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens a socket to `url` and waits for `mesh/assign-id`.
pub(crate) async fn open(url: &str, options: &ClientOptions) -> Result<(Ws, String), ClientError> {
    let max = options.max_frame_bytes;
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut request = url
        .into_client_request()
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    if let Some(token) = &options.token {
        let value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ClientError::Connect("the token is not a valid header value".into()))?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let handshake = async {
        // Nagle off: frames are small and latency matters more than packing.
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .map_err(|e| match e {
                WsError::Http(response) if response.status() == StatusCode::UNAUTHORIZED => {
                    ClientError::Unauthorized
                }
                e => ClientError::Connect(e.to_string()),
            })?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match incoming::parse(text.as_str(), max) {
                    Ok(Incoming::AssignId(id)) => return Ok((ws, id)),
                    Ok(Incoming::Ping) => send_push(&mut ws, command::PONG)
                        .await
                        .map_err(|e| ClientError::Connect(e.to_string()))?,
                    Ok(other) => debug!(?other, "frame before the connection id, ignored"),
                    Err(e) => warn!(error = %e, "unusable frame from server, ignored"),
                },
                Some(Ok(Message::Close(_))) | None => {
                    return Err(ClientError::Connect(
                        "server closed before assigning a connection id".into(),
                    ))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ClientError::Connect(e.to_string())),
            }
        }
    };
    timeout(options.connect_timeout, handshake)
        .await
        .map_err(|_| ClientError::Connect("no connection id within the connect timeout".into()))?
}

/// Sends a push (no id, empty payload), such as `pong`.
async fn send_push(ws: &mut Ws, name: &str) -> Result<(), WsError> {
    ws.send(Message::text(Frame::push(name, json!({})).encode()))
        .await
}

/// Why serving a connection stopped.
enum Exit {
    /// The link is gone (and how); reconnect if allowed.
    Lost(LinkLoss),
    /// Close for good: asked by `close()` (with its ack) or because every
    /// handle was dropped (`None`).
    Close(Option<oneshot::Sender<()>>),
}

/// The connection task's state.
pub(crate) struct Connection {
    url: String,
    options: ClientOptions,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<Status>,
    events: broadcast::Sender<ClientEvent>,
    shared: Arc<Shared>,
    requests: RequestTable,
    /// Requests made while offline, sent once the session is restored.
    offline: VecDeque<Outgoing>,
    /// Rooms to rejoin after a reconnect.
    rooms: BTreeSet<String>,
    /// Presence subscriptions, to route updates and to resubscribe.
    ///
    /// The channels are unbounded on purpose: this task must never wait on
    /// a slow consumer (it would stop answering pings and lose the link),
    /// and dropping an update would silently corrupt the consumer's view of
    /// the room. Update rates are bounded by the server's fan-out, and a
    /// consumer that stops reading should drop its stream, which ends the
    /// routing.
    subscriptions: BTreeMap<String, mpsc::UnboundedSender<PresenceEvent>>,
    last_ping: Instant,
}

impl Connection {
    /// The task for an already opened socket.
    pub fn new(
        url: String,
        options: ClientOptions,
        commands: mpsc::Receiver<Command>,
        status: watch::Sender<Status>,
        events: broadcast::Sender<ClientEvent>,
        shared: Arc<Shared>,
    ) -> Self {
        Connection {
            url,
            options,
            commands,
            status,
            events,
            shared,
            requests: RequestTable::default(),
            offline: VecDeque::new(),
            rooms: BTreeSet::new(),
            subscriptions: BTreeMap::new(),
            last_ping: Instant::now(),
        }
    }

    /// Serves `ws`, reconnecting as configured, until closed or given up.
    pub async fn run(mut self, mut ws: Ws) {
        loop {
            match self.serve(&mut ws).await {
                Exit::Close(ack) => {
                    close_gracefully(&mut ws).await;
                    self.finish(ClientError::Closed, ack);
                    return;
                }
                Exit::Lost(how) => {
                    drop(ws);
                    self.on_lost(how);
                    if !self.options.reconnect {
                        return self.stay_offline().await;
                    }
                    match self.reconnect().await {
                        Ok(Some(new_ws)) => ws = new_ws,
                        Ok(None) => {
                            let _ = self.events.send(ClientEvent::ReconnectFailed);
                            return self.stay_offline().await;
                        }
                        Err(ack) => return self.finish(ClientError::Closed, ack),
                    }
                }
            }
        }
    }

    /// Reads frames and commands until the link is lost or closing is asked.
    async fn serve(&mut self, ws: &mut Ws) -> Exit {
        // Requests queued while offline go first, exactly once.
        while let Some(out) = self.offline.pop_front() {
            if let Err(e) = self.send(ws, out).await {
                return Exit::Lost(LinkLoss::Reset(e.to_string()));
            }
        }
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the dead link, re-armed lazily when it fires, rather
        // than a new timer per frame: pings move `last_ping` forward only.
        let dead_after = self.options.dead_link_after();
        let dead_link = sleep_until(self.last_ping + dead_after);
        tokio::pin!(dead_link);
        loop {
            tokio::select! {
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Err(e) = self.on_text(ws, text.as_str()).await {
                            warn!(error = %e, "write failed");
                            return Exit::Lost(LinkLoss::Reset(e.to_string()));
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        info!(?frame, "server closed the connection");
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        return Exit::Lost(LinkLoss::Closed { code, reason });
                    }
                    // Binary frames are not part of the protocol; WebSocket
                    // pings are answered by tungstenite itself.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        warn!(error = %e, "connection failed");
                        return Exit::Lost(LinkLoss::Reset(e.to_string()));
                    }
                    None => return Exit::Lost(LinkLoss::Reset("the stream ended".into())),
                },
                command = self.commands.recv() => match command {
                    Some(Command::Request(out)) => {
                        if let Err(e) = self.send(ws, out).await {
                            warn!(error = %e, "write failed");
                            return Exit::Lost(LinkLoss::Reset(e.to_string()));
                        }
                    }
                    Some(Command::Close(ack)) => return Exit::Close(Some(ack)),
                    None => return Exit::Close(None),
                },
                _ = &mut dead_link => {
                    let dead_at = self.last_ping + dead_after;
                    if dead_at <= Instant::now() {
                        warn!("no ping from the server in time; the link is dead");
                        return Exit::Lost(LinkLoss::Silent);
                    }
                    dead_link.as_mut().reset(dead_at);
                }
                _ = housekeeping.tick() => self.requests.purge_abandoned(),
            }
        }
    }

    /// Handles one text frame; an unusable frame is logged and dropped.
    async fn on_text(&mut self, ws: &mut Ws, text: &str) -> Result<(), WsError> {
        match incoming::parse(text, self.options.max_frame_bytes) {
            Ok(frame) => self.handle(ws, frame).await,
            Err(e) => {
                warn!(error = %e, "unusable frame from server, ignored");
                Ok(())
            }
        }
    }

    async fn handle(&mut self, ws: &mut Ws, frame: Incoming) -> Result<(), WsError> {
        match frame {
            Incoming::Reply {
                id,
                command,
                payload,
            } => match self.requests.take(id, &command) {
                Some(pending) => self.complete(pending, payload),
                None => debug!(id, command, "reply to no request in flight, ignored"),
            },
            Incoming::Ping => {
                self.last_ping = Instant::now();
                send_push(ws, command::PONG).await?;
            }
            Incoming::LatencyRequest => send_push(ws, command::LATENCY_RESPONSE).await?,
            Incoming::Latency(ms) => {
                let _ = self.events.send(ClientEvent::Latency(ms));
            }
            Incoming::AssignId(id) => *lock(&self.shared.connection_id) = Some(id),
            Incoming::Presence(update) => {
                let room = update.room_name().to_string();
                if let Some(tx) = self.subscriptions.get(&room) {
                    if tx.send(PresenceEvent::Update(update)).is_err() {
                        // The consumer dropped its stream.
                        self.subscriptions.remove(&room);
                    }
                }
            }
            Incoming::Ignored(command) => debug!(command, "push ignored"),
        }
        Ok(())
    }

    /// Sends a request, remembering it until its reply arrives.
    async fn send(&mut self, ws: &mut Ws, out: Outgoing) -> Result<(), WsError> {
        if out.reply.is_closed() {
            // The caller timed out while the request was queued.
            return Ok(());
        }
        let id = self.requests.next_id();
        let text = Frame::request(id, out.command.as_str(), out.payload).encode();
        if let Effect::Subscribe(room, tx) = &out.effect {
            // Route from now on: updates may arrive before the reply.
            self.subscriptions.insert(room.clone(), tx.clone());
        }
        self.requests.insert(
            id,
            Pending {
                command: out.command,
                effect: out.effect,
                reply: out.reply,
            },
        );
        ws.send(Message::text(text)).await
    }

    /// Delivers a reply and remembers what it changed.
    fn complete(&mut self, pending: Pending, payload: Value) {
        let result = match mesh_protocol::ErrorPayload::from_reply(&payload) {
            Some(error) => Err(ClientError::Server(error)),
            None => Ok(payload),
        };
        let answered = result.is_ok();
        let success = result
            .as_ref()
            .is_ok_and(|v| v.get("success").and_then(Value::as_bool) == Some(true));
        match pending.effect {
            Effect::None => {}
            Effect::Join(room) => {
                if success {
                    self.rooms.insert(room);
                }
            }
            Effect::Leave(room) => {
                if answered {
                    self.rooms.remove(&room);
                    lock(&self.shared.metadata).clear();
                }
            }
            Effect::Subscribe(room, tx) => {
                let current = self.subscriptions.get(&room);
                if !success && current.is_some_and(|c| c.same_channel(&tx)) {
                    // Refused: end the stream the caller is about to get.
                    self.subscriptions.remove(&room);
                }
            }
            Effect::Unsubscribe(room) => {
                if answered {
                    self.subscriptions.remove(&room);
                }
            }
            Effect::SetMetadata => {
                if answered {
                    let me = lock(&self.shared.connection_id).clone();
                    if let Some(me) = me {
                        lock(&self.shared.metadata).remove(&me);
                    }
                }
            }
            Effect::Token(token) => {
                if success {
                    self.options.token = Some(token);
                    // Our metadata now carries the new token's identity.
                    let me = lock(&self.shared.connection_id).clone();
                    if let Some(me) = me {
                        lock(&self.shared.metadata).remove(&me);
                    }
                }
            }
        }
        let _ = pending.reply.send(result);
    }

    /// Forgets the old connection; the requests in flight fail with `how`.
    fn on_lost(&mut self, how: LinkLoss) {
        *lock(&self.shared.connection_id) = None;
        lock(&self.shared.metadata).clear();
        self.requests.fail_all(ClientError::ConnectionLost(how));
        let _ = self.events.send(ClientEvent::Disconnected);
    }

    /// Tries to reconnect and restore the session. `Ok(None)` when the
    /// attempts are exhausted, `Err` when closing was asked meanwhile.
    async fn reconnect(&mut self) -> Result<Option<Ws>, Option<oneshot::Sender<()>>> {
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            if self
                .options
                .max_reconnect_attempts
                .is_some_and(|max| attempt > max)
            {
                warn!(attempts = attempt - 1, "giving up reconnecting");
                return Ok(None);
            }
            self.status.send_replace(Status::Reconnecting { attempt });
            let delay = backoff_delay(
                attempt,
                self.options.reconnect_interval,
                self.options.max_reconnect_interval,
                rand::random::<f64>(),
            );
            self.while_offline(sleep(delay)).await?;
            let (url, options) = (self.url.clone(), self.options.clone());
            let opened = self
                .while_offline(async move { open(&url, &options).await })
                .await?;
            let (mut ws, id) = match opened {
                Ok(opened) => opened,
                Err(ClientError::Unauthorized) => {
                    warn!("the server refused the token; not reconnecting");
                    let _ = self.events.send(ClientEvent::Unauthorized);
                    return Ok(None);
                }
                Err(e) => {
                    debug!(attempt, error = %e, "reconnect attempt failed");
                    continue;
                }
            };
            match self.restore(&mut ws, &id).await {
                Ok(()) => {
                    info!(attempt, id, "reconnected");
                    self.status.send_replace(Status::Online);
                    let _ = self.events.send(ClientEvent::Reconnected { id });
                    return Ok(Some(ws));
                }
                Err(e) => {
                    debug!(attempt, error = %e, "restoring the session failed");
                    self.on_lost_quietly();
                }
            }
        }
    }

    /// Like [`Connection::on_lost`] for a connection that never went online.
    fn on_lost_quietly(&mut self) {
        *lock(&self.shared.connection_id) = None;
        lock(&self.shared.metadata).clear();
    }

    /// Runs `fut` while queueing the requests that arrive meanwhile.
    async fn while_offline<F: Future>(
        &mut self,
        fut: F,
    ) -> Result<F::Output, Option<oneshot::Sender<()>>> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                command = self.commands.recv() => match command {
                    Some(Command::Request(out)) => self.enqueue(out),
                    Some(Command::Close(ack)) => return Err(Some(ack)),
                    None => return Err(None),
                },
            }
        }
    }

    /// Holds a request until the session is restored.
    fn enqueue(&mut self, out: Outgoing) {
        self.offline.retain(|o| !o.reply.is_closed());
        if self.offline.len() >= self.options.max_offline_queue {
            let _ = out.reply.send(Err(ClientError::Offline));
        } else {
            self.offline.push_back(out);
        }
    }

    /// Rejoins rooms, resubscribes presence and delivers a fresh snapshot
    /// of every subscribed room, on a new connection with id `id`.
    async fn restore(&mut self, ws: &mut Ws, id: &str) -> Result<(), WsError> {
        self.last_ping = Instant::now();
        *lock(&self.shared.connection_id) = Some(id.to_string());
        lock(&self.shared.metadata).clear();
        for room in self.rooms.clone() {
            let reply = self.call(ws, command::JOIN_ROOM, &room).await?;
            if !succeeded(&reply) {
                warn!(room, ?reply, "rejoining refused; the room is dropped");
                self.rooms.remove(&room);
            }
        }
        let rooms: Vec<String> = self.subscriptions.keys().cloned().collect();
        for room in &rooms {
            let reply = self.call(ws, command::SUBSCRIBE_PRESENCE, room).await?;
            if !succeeded(&reply) {
                warn!(room, ?reply, "resubscribing refused; the stream ends");
                self.subscriptions.remove(room);
            }
        }
        for room in &rooms {
            if !self.subscriptions.contains_key(room) {
                continue;
            }
            let reply = self.call(ws, command::GET_PRESENCE_STATE, room).await?;
            match serde_json::from_value::<PresenceStateReply>(reply) {
                Ok(snapshot) => {
                    let resync = PresenceEvent::Resync {
                        room: room.clone(),
                        present: snapshot.present,
                        states: snapshot.states,
                    };
                    if let Some(tx) = self.subscriptions.get(room) {
                        if tx.send(resync).is_err() {
                            self.subscriptions.remove(room);
                        }
                    }
                }
                Err(e) => warn!(room, error = %e, "presence snapshot unreadable"),
            }
        }
        Ok(())
    }

    /// One request during restore: sends it and reads frames (handling
    /// pings and routing presence) until its reply arrives.
    async fn call(&mut self, ws: &mut Ws, name: &str, room: &str) -> Result<Value, WsError> {
        let id = self.requests.next_id();
        let frame = Frame::request(id, name, json!({ "roomName": room }));
        ws.send(Message::text(frame.encode())).await?;
        let deadline = Instant::now() + self.options.request_timeout;
        loop {
            let message = timeout_at(deadline, ws.next())
                .await
                .map_err(|_| WsError::Io(std::io::ErrorKind::TimedOut.into()))?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    match incoming::parse(text.as_str(), self.options.max_frame_bytes) {
                        Ok(Incoming::Reply {
                            id: got,
                            command,
                            payload,
                        }) if got == id && command == name => return Ok(payload),
                        Ok(other) => self.handle(ws, other).await?,
                        Err(e) => warn!(error = %e, "unusable frame from server, ignored"),
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Err(WsError::ConnectionClosed),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            }
        }
    }

    /// Offline for good: every request fails with `Offline` until the last
    /// handle is dropped or `close()` is called.
    async fn stay_offline(mut self) {
        self.status.send_replace(Status::Offline);
        for out in self.offline.drain(..) {
            let _ = out.reply.send(Err(ClientError::Offline));
        }
        // Ending the streams tells presence consumers nothing more comes.
        self.subscriptions.clear();
        while let Some(command) = self.commands.recv().await {
            match command {
                Command::Request(out) => {
                    let _ = out.reply.send(Err(ClientError::Offline));
                }
                Command::Close(ack) => return self.finish(ClientError::Closed, Some(ack)),
            }
        }
    }

    /// Ends the task: fails what is left and acknowledges the close.
    fn finish(mut self, error: ClientError, ack: Option<oneshot::Sender<()>>) {
        self.status.send_replace(Status::Offline);
        *lock(&self.shared.connection_id) = None;
        self.requests.fail_all(error.clone());
        for out in self.offline.drain(..) {
            let _ = out.reply.send(Err(error.clone()));
        }
        self.subscriptions.clear();
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }
}

/// Whether a reply says `{"success": true}`.
fn succeeded(reply: &Value) -> bool {
    reply.get("success").and_then(Value::as_bool) == Some(true)
}

/// Sends a close frame and waits briefly for the server's, so that it sees
/// a clean close rather than a dropped socket.
async fn close_gracefully(ws: &mut Ws) {
    let _ = timeout(CLOSE_GRACE, async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}
