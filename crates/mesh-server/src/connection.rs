//! One connection: the handshake, then a task that reads and answers
//! frames, keeps the heartbeat, and cleans up when the socket goes.
//!
//! The connection task owns the reading half of the socket; a writer task
//! owns the writing half and drains the connection's [`Outbox`]. Replies
//! and presence pushes both go through the outbox, so they reach the client
//! in the order they were produced.
//!
//! A connection is alive while it answers pings, or while it is still
//! reading what we sent it: a ping stuck behind our own backlog to it is
//! our delay, not the client's.

use crate::admission::{self, Full};
use crate::auth::{self, Claims, IDENTITY_FIELDS};
use crate::commands::{self, Payload};
use crate::config::Config;
use crate::handshake::{self, Request};
use crate::hooks::{ConnectionInfo, DisconnectInfo};
use crate::outbox::{self, Kind, Outbox, Outgoing, ReadSide};
use crate::server::ServerHandle;
use crate::tracking::TrackOptions;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use mesh_protocol::{command, DecodeError, ErrorCode, ErrorPayload, Frame, Strategy};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The reading side of a connection's WebSocket; writes go through the
/// outbox.
type Socket = WebSocketStream<ReadSide>;

/// Longest we wait for a closing connection's last bytes to leave.
const WRITER_GRACE: Duration = Duration::from_secs(2);
/// Longest a refused connection may take to send its request head.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// The close reason of a connection whose token expired.
pub(crate) const TOKEN_EXPIRED: &str = "token expired";

/// Whether `name` is a command the server handles itself.
pub(crate) fn is_builtin(name: &str) -> bool {
    name.starts_with("mesh/")
        || [
            command::PING,
            command::PONG,
            command::LATENCY,
            command::LATENCY_REQUEST,
            command::LATENCY_RESPONSE,
        ]
        .contains(&name)
}

/// Answers a connection over a connection limit with `503` and closes it.
/// The request head is read (briefly) first: closing a socket with unread
/// input resets it, and the client would lose the answer.
pub(crate) async fn refuse(mut stream: TcpStream, full: Full, _refusal: admission::Refusal) {
    let _ = tokio::time::timeout(REFUSAL_GRACE, async {
        let _ = handshake::read_request(&mut stream, REFUSAL_GRACE).await;
        let _ = handshake::respond(&mut stream, 503, full.body()).await;
    })
    .await;
}

/// Serves one accepted TCP connection from handshake to cleanup. `_held`
/// (its place under the connection limits, and the sender graceful
/// shutdown waits on) is dropped when the connection is fully cleaned up.
pub(crate) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    server: ServerHandle,
    shutdown: watch::Receiver<bool>,
    _held: (admission::Slot, mpsc::Sender<()>),
) {
    let shared = &server.shared;
    let request = match Box::pin(handshake::read_request(
        &mut stream,
        shared.config.limits.handshake_timeout,
    ))
    .await
    {
        Ok(request) => request,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "handshake failed");
            return;
        }
    };
    let (head, key) = match request {
        Request::Plain { status, body } => {
            let _ = handshake::respond(&mut stream, status, body).await;
            return;
        }
        Request::Metrics => {
            let body = shared.metrics.render();
            let _ = handshake::respond_typed(&mut stream, 200, crate::metrics::CONTENT_TYPE, &body)
                .await;
            return;
        }
        Request::Upgrade { head, key } => (head, key),
    };
    let origins: Vec<&str> = head.headers_named("origin").collect();
    if !shared.config.origin_allowed(&origins) {
        tracing::info!(%peer, ?origins, "origin refused");
        let _ = handshake::respond(&mut stream, 403, "origin not allowed\n").await;
        return;
    }
    // The token is checked before anything is stored for the connection,
    // and a refusal says nothing more than 401.
    let claims = match &shared.config.auth {
        None => None,
        Some(auth) => {
            let token = auth::token_of(
                head.header("authorization"),
                head.query.get("token").map(String::as_str),
            );
            match token.map(|t| auth.verify(t)) {
                Some(Ok(claims)) => Some(Arc::new(claims)),
                refused => {
                    let reason = match refused {
                        Some(Err(e)) => e.to_string(),
                        _ => "no token".to_string(),
                    };
                    tracing::info!(%peer, %reason, "connection refused");
                    let _ = handshake::respond(&mut stream, 401, "unauthorized\n").await;
                    return;
                }
            }
        }
    };
    let id = shared.new_connection_id();
    if let Err(e) = shared.backend.connection_opened(&id).await {
        tracing::warn!(%peer, error = %e, "could not register the connection");
        let _ = handshake::respond(&mut stream, 503, "backend unavailable\n").await;
        return;
    }
    if let Some(metadata) = initial_metadata(&shared.config, &head.query, claims.as_deref()) {
        if let Err(e) = server.set_metadata(&id, metadata, Strategy::Replace).await {
            tracing::warn!(%peer, error = %e, "could not attach metadata");
            let _ = shared.backend.remove_metadata(&id).await;
            let _ = handshake::respond(&mut stream, 503, "backend unavailable\n").await;
            return;
        }
    }
    if let Some(hook) = &shared.on_connection {
        let info = ConnectionInfo {
            id: id.clone(),
            path: head.path.clone(),
            query: head.query.clone(),
            headers: head.headers.clone(),
            claims: claims.clone(),
            server: server.clone(),
        };
        if let Err(refusal) = hook(info).await {
            tracing::info!(%peer, status = refusal.status, reason = %refusal.reason, "connection refused by hook");
            let _ = shared.backend.remove_metadata(&id).await;
            let body = format!("{}\n", refusal.reason);
            let _ = handshake::respond(&mut stream, refusal.status, &body).await;
            return;
        }
    }
    if let Err(e) = handshake::accept_upgrade(&mut stream, &key).await {
        tracing::debug!(%peer, error = %e, "upgrade failed");
        let _ = shared.backend.remove_metadata(&id).await;
        return;
    }
    let (read, write) = stream.into_split();
    let outbox = Outbox::new(shared.config.limits.max_queued_bytes);
    let writer = tokio::spawn(outbox::write_loop(write, outbox.clone()));
    let socket = WebSocketStream::from_partially_read(
        ReadSide::new(read, outbox.clone()),
        // Moved out of a temporary, so the rest of the request head is
        // freed now rather than kept for the connection's lifetime.
        std::convert::identity(head).leftover,
        Role::Server,
        Some(shared.ws_config),
    )
    .await;
    Connection::new(id, server.clone(), outbox, claims, shutdown.clone())
        .run(socket, writer, peer, shutdown)
        .await;
}

/// What a new connection's metadata starts as: the URL query when the
/// server is configured so, and the token's claims over it. With tokens,
/// the query can neither carry the token into metadata nor set an
/// identity field.
fn initial_metadata(
    config: &Config,
    query: &BTreeMap<String, String>,
    claims: Option<&Claims>,
) -> Option<Value> {
    let mut metadata: Map<String, Value> = Map::new();
    if config.metadata_from_query {
        metadata.extend(
            query
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone()))),
        );
    }
    if let Some(claims) = claims {
        metadata.remove("token");
        for field in IDENTITY_FIELDS {
            metadata.remove(field);
        }
        if let Value::Object(attested) = claims.metadata() {
            metadata.extend(attested);
        }
    }
    (!metadata.is_empty()).then_some(Value::Object(metadata))
}

/// Why a connection ended. Each has its own close code and log reason,
/// so that an operator can tell a crash from an attack from a bad network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The peer sent a close frame, with this code if it gave one.
    PeerClosed(Option<CloseCode>),
    /// The TCP connection ended (or failed) without a close frame.
    PeerGone,
    /// The server is shutting down.
    Shutdown,
    /// Too many missed pongs.
    Unresponsive,
    /// Too many frames that were not a Mesh envelope.
    Garbage,
    /// Too many control frames the server did not ask for.
    ControlFlood,
    /// A frame that breaks the WebSocket protocol.
    ProtocolError,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// Its outgoing queue overflowed.
    SlowConsumer,
    /// A frame over the hard size limit.
    Oversized,
    /// Its token expired and no newer one came.
    TokenExpired,
}

impl Ending {
    /// What happened, for the log and the close frame.
    fn reason(self) -> &'static str {
        match self {
            Ending::PeerClosed(_) => "closed by the client",
            Ending::PeerGone => "gone without a close frame",
            Ending::Shutdown => "server shutting down",
            Ending::Unresponsive => "unresponsive: missed pongs",
            Ending::Garbage => "too many malformed frames",
            Ending::ControlFlood => "too many control frames",
            Ending::ProtocolError => "websocket protocol error",
            Ending::InvalidUtf8 => "text frame is not UTF-8",
            Ending::SlowConsumer => "slow consumer: outgoing queue full",
            Ending::Oversized => "frame too large",
            Ending::TokenExpired => TOKEN_EXPIRED,
        }
    }

    /// Whether the server, not the peer, decided to end the connection.
    fn by_server(self) -> bool {
        !matches!(
            self,
            Ending::PeerClosed(_) | Ending::PeerGone | Ending::Shutdown
        )
    }

    /// The close frame to send; `None` sends one without a code.
    fn close_frame(self) -> Option<CloseFrame> {
        let code = match self {
            // The answer to a close repeats its code (RFC 6455, 5.5.1).
            Ending::PeerClosed(Some(code)) if code.is_allowed() => {
                return Some(CloseFrame {
                    code,
                    reason: "".into(),
                })
            }
            Ending::PeerClosed(Some(_)) => CloseCode::Protocol,
            Ending::PeerClosed(None) | Ending::PeerGone | Ending::SlowConsumer => return None,
            Ending::Shutdown | Ending::Unresponsive => CloseCode::Away,
            Ending::Garbage | Ending::ControlFlood => CloseCode::Policy,
            Ending::ProtocolError => CloseCode::Protocol,
            Ending::InvalidUtf8 => CloseCode::Invalid,
            Ending::Oversized => CloseCode::Size,
            Ending::TokenExpired => CloseCode::Policy,
        };
        Some(CloseFrame {
            code,
            reason: self.reason().into(),
        })
    }

    /// How a read error ends the connection.
    fn of_read_error(e: &tokio_tungstenite::tungstenite::Error) -> Ending {
        use tokio_tungstenite::tungstenite::error::ProtocolError as P;
        use tokio_tungstenite::tungstenite::Error;
        match e {
            Error::Capacity(_) => Ending::Oversized,
            Error::Utf8(_) => Ending::InvalidUtf8,
            Error::Protocol(P::ResetWithoutClosingHandshake) => Ending::PeerGone,
            Error::Protocol(_) => Ending::ProtocolError,
            _ => Ending::PeerGone,
        }
    }
}

/// Counts events in one-minute windows against an allowance.
struct Allowance {
    limit: u32,
    count: u32,
    window_start: Instant,
}

impl Allowance {
    fn new(limit: u32, now: Instant) -> Self {
        Allowance {
            limit,
            count: 0,
            window_start: now,
        }
    }

    /// Counts one event; `true` once the allowance is exceeded.
    fn spend(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window_start) > Duration::from_secs(60) {
            self.window_start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count > self.limit
    }
}

/// The per-connection state the command handlers work on.
pub(crate) struct Connection {
    pub(crate) id: String,
    pub(crate) server: ServerHandle,
    pub(crate) outbox: Outbox,
    /// Joined rooms, with their tracking options when tracked.
    pub(crate) rooms: HashMap<String, Option<Arc<TrackOptions>>>,
    /// Rooms whose presence this connection is subscribed to.
    pub(crate) subscriptions: HashSet<String>,
    /// The verified token's claims, on a server with authentication.
    pub(crate) claims: Option<Arc<Claims>>,
    /// When the token expires and the connection is closed.
    pub(crate) token_expires: Option<Instant>,
    /// When the connection is considered dead without a pong.
    alive_until: Instant,
    latency_sent: Option<Instant>,
    /// Pings sent that no pong has answered yet (at most one: another
    /// ping behind an unanswered one would only wait behind it).
    pings_unanswered: u32,
    /// Pings sent so far.
    pings_sent: u64,
    /// How far into the stream the client has shown it read: the end of
    /// the last ping it answered.
    read_proven: u64,
    /// When this connection's presence TTLs were last pushed back.
    ttl_refreshed: Instant,
    bad_frames: Allowance,
    control_frames: Allowance,
    requests: RateLimiter,
    /// Lets long-running custom handlers give way to a shutdown.
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// A token bucket: `rate` requests per second, bursts up to `rate`.
struct RateLimiter {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    /// A limiter allowing `rate` requests per second; 0 allows everything.
    fn new(rate: u32, now: Instant) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            refilled: now,
        }
    }

    /// Takes one token; `false` when the bucket is empty.
    fn allow(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Connection {
    fn new(
        id: String,
        server: ServerHandle,
        outbox: Outbox,
        claims: Option<Arc<Claims>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let limits = &server.shared.config.limits;
        let now = Instant::now();
        let requests = RateLimiter::new(limits.max_requests_per_second, now);
        let bad_frames = Allowance::new(limits.max_bad_frames, now);
        let control_frames = Allowance::new(limits.max_control_frames, now);
        Connection {
            read_proven: 0,
            pings_sent: 0,
            alive_until: now + server.shared.config.liveness_window(),
            id,
            server,
            outbox,
            rooms: HashMap::new(),
            subscriptions: HashSet::new(),
            token_expires: claims.as_ref().map(|c| now + c.time_left()),
            claims,
            latency_sent: None,
            pings_unanswered: 0,
            ttl_refreshed: now,
            bad_frames,
            control_frames,
            shutdown,
            requests,
        }
    }

    async fn run(
        mut self,
        mut stream: Socket,
        mut writer: JoinHandle<()>,
        peer: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let shared = self.server.shared.clone();
        shared.connections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(id = %self.id, %peer, "connected");
        self.send(Frame::push(command::ASSIGN_ID, json!(self.id)));

        let ending = self.event_loop(&mut stream, &mut shutdown).await;
        if ending.by_server() {
            tracing::info!(id = %self.id, %peer, reason = ending.reason(), "connection closed by server");
        } else {
            tracing::debug!(id = %self.id, %peer, reason = ending.reason(), "connection closed");
        }

        // Stop receiving pushes, then end the writer: a slow consumer's
        // writer may be stuck on a full socket, so it is stopped outright;
        // otherwise the close frame is the last message it sends.
        for room in &self.subscriptions {
            shared.subscribers.remove(room, &self.id);
            self.server.interest_lost(room);
        }
        if ending == Ending::SlowConsumer {
            shared.metrics.slow_consumers_dropped.inc();
            writer.abort();
        } else {
            self.outbox
                .push(Outgoing::close(ending.close_frame().as_ref()));
        }
        Box::pin(self.cleanup()).await;
        if tokio::time::timeout(WRITER_GRACE, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        drop(stream);
        shared.connections.fetch_sub(1, Ordering::Relaxed);
    }

    async fn event_loop(
        &mut self,
        stream: &mut Socket,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ending {
        let outbox = self.outbox.clone();
        let config = self.server.shared.config.clone();
        let mut ping =
            tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut latency = tokio::time::interval_at(
            Instant::now() + config.latency_interval,
            config.latency_interval,
        );
        latency.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let deadline = tokio::time::sleep_until(self.alive_until);
        tokio::pin!(deadline);
        let expiry = tokio::time::sleep_until(self.token_expires.unwrap_or_else(far_future));
        tokio::pin!(expiry);

        loop {
            if deadline.deadline() != self.alive_until {
                deadline.as_mut().reset(self.alive_until);
            }
            // A refreshed token moves the expiry.
            if let Some(expires) = self.token_expires {
                if expiry.deadline() != expires {
                    expiry.as_mut().reset(expires);
                }
            }
            // While our replies to it pile up, read no more requests: a
            // client that asks without reading slows only itself.
            let backlogged = outbox.replies_backlogged();
            tokio::select! {
                biased;
                _ = crate::server::stopped(shutdown) => return Ending::Shutdown,
                _ = outbox.overflowed() => return Ending::SlowConsumer,
                _ = &mut deadline => {
                    if self.pong_excused_until() <= Instant::now() {
                        // Load may have kept this task from running while
                        // the pong already waited in the socket.
                        if let Some(ending) = self.on_ready_messages(stream).await {
                            return ending;
                        }
                    }
                    let until = self.pong_excused_until();
                    if until <= Instant::now() {
                        return Ending::Unresponsive;
                    }
                    self.alive_until = until;
                }
                _ = outbox.drained(), if backlogged => {}
                _ = &mut expiry, if self.token_expires.is_some() => return Ending::TokenExpired,
                _ = ping.tick(), if self.pings_unanswered == 0 => {
                    self.pings_unanswered = 1;
                    self.pings_sent += 1;
                    self.alive_until = Instant::now() + config.pong_grace();
                    self.heartbeat(Kind::Ping, Frame::push(command::PING, json!({})));
                }
                _ = latency.tick() => {
                    self.latency_sent = Some(Instant::now());
                    self.heartbeat(
                        Kind::Heartbeat,
                        Frame::push(command::LATENCY_REQUEST, json!({})),
                    );
                }
                msg = stream.next(), if !backlogged => {
                    if let Some(ending) = self.on_message(msg).await {
                        return ending;
                    }
                }
            }
        }
    }

    /// Handles what the socket gave; `Some` ends the connection.
    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Ending> {
        match msg {
            Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => self
                .bad_frames
                .spend(Instant::now())
                .then_some(Ending::Garbage),
            Some(Ok(Message::Close(frame))) => Some(Ending::PeerClosed(frame.map(|f| f.code))),
            None => Some(Ending::PeerGone),
            // We never ping at the WebSocket level, so every ping or pong
            // is unasked for. tungstenite answers pings; its pongs are
            // pushes to the outbox, within its budget.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => self
                .control_frames
                .spend(Instant::now())
                .then_some(Ending::ControlFlood),
            Some(Ok(Message::Frame(_))) => None,
            Some(Err(e)) => Some(Ending::of_read_error(&e)),
        }
    }

    /// Handles the frames already waiting in the socket, without waiting
    /// for more; `Some` ends the connection.
    async fn on_ready_messages(&mut self, stream: &mut Socket) -> Option<Ending> {
        while !self.outbox.replies_backlogged() {
            let msg = stream.next().now_or_never()?;
            if let Some(ending) = self.on_message(msg).await {
                return Some(ending);
            }
        }
        None
    }

    async fn on_text(&mut self, text: &str) -> Option<Ending> {
        let max = self.server.shared.config.limits.max_frame_bytes;
        match Frame::decode(text, max) {
            Ok(frame) => self.on_frame(frame).await,
            Err(DecodeError::TooLarge { id, len, max }) => {
                if id.is_some() {
                    let command = command_of(text);
                    let error = ErrorPayload::new(
                        ErrorCode::TooLarge,
                        format!("frame is {len} bytes; the limit is {max}"),
                    );
                    self.reply(Frame::error_reply(id, command, &error));
                }
                None
            }
            Err(e) => {
                if let Some(id) = e.request_id() {
                    let error = ErrorPayload::new(ErrorCode::Invalid, e.to_string());
                    let command = e.command().map_or_else(|| command_of(text), str::to_string);
                    self.reply(Frame::error_reply(Some(id), command, &error));
                }
                self.bad_frames
                    .spend(Instant::now())
                    .then_some(Ending::Garbage)
            }
        }
    }

    async fn on_frame(&mut self, frame: Frame) -> Option<Ending> {
        let Frame {
            id,
            command,
            payload,
        } = frame;
        match command.as_str() {
            command::PONG => {
                let asked = self.pings_unanswered > 0;
                self.pings_unanswered = self.pings_unanswered.saturating_sub(1);
                let answered = self.outbox.reading().last_ping;
                if let Some(ping) = answered.filter(|p| asked && p.seq == self.pings_sent) {
                    self.read_proven = ping.end;
                }
                if !asked && self.control_frames.spend(Instant::now()) {
                    return Some(Ending::ControlFlood);
                }
                Box::pin(self.on_pong()).await;
            }
            command::LATENCY_RESPONSE => match self.latency_sent.take() {
                Some(sent) => {
                    // Whole milliseconds, as the reference server sends them.
                    let ms = sent.elapsed().as_millis() as u64;
                    self.send(Frame::push(command::LATENCY, json!(ms)));
                }
                None if self.control_frames.spend(Instant::now()) => {
                    return Some(Ending::ControlFlood)
                }
                None => {}
            },
            _ => {
                let result = if self.requests.allow(Instant::now()) {
                    // Boxed: a command's state lives on the heap only while
                    // it runs, which keeps idle connections small.
                    Box::pin(commands::dispatch(self, &command, payload)).await
                } else {
                    Err(ErrorPayload::new(
                        ErrorCode::RateLimit,
                        "too many requests; slow down",
                    ))
                };
                if let Some(id) = id {
                    match result {
                        Ok(payload) => self.reply_with(id, command, payload),
                        Err(error) => self.reply(Frame::error_reply(Some(id), command, &error)),
                    }
                } else if let Err(error) = result {
                    tracing::debug!(id = %self.id, %command, %error, "fire-and-forget command failed");
                }
            }
        }
        None
    }

    /// Until when a missing pong is excused.
    ///
    /// A pong can only come after the client has read everything we sent
    /// before its ping, so a late one is not always a missing one:
    /// * While our writer keeps getting frames into the socket, the client
    ///   is reading (or its buffers have room).
    /// * While the ping still waits in our outbox, a writer that is merely
    ///   behind is behind on this server's account. The client is at fault
    ///   once a full socket has kept the writer waiting for a liveness
    ///   window, plus the time the slowest counted reader needs for what
    ///   sits in the socket buffers (everything written since its last
    ///   pong, at most): the kernel tells the writer of room only in large
    ///   steps, so a slow reader can look stalled for a while.
    /// * Once the ping is in the socket, what came before it may still sit
    ///   in socket buffers, where its reading cannot be watched: the pong
    ///   is due a grace period after the ping was written, plus the time
    ///   the slowest counted reader needs for what it had not yet shown
    ///   it read.
    fn pong_excused_until(&self) -> Instant {
        let config = &self.server.shared.config;
        let now = Instant::now();
        if self.pings_unanswered == 0 {
            // Nothing is owed; the next ping sets the next deadline.
            return now + config.liveness_window();
        }
        let reading = self.outbox.reading();
        let writing = reading.progress + config.liveness_window();
        let answerable = match reading.last_ping {
            Some(ping) if ping.seq == self.pings_sent => {
                let unread = ping.end.saturating_sub(self.read_proven);
                ping.at + config.pong_grace() + config.time_to_read(unread).unwrap_or_default()
            }
            _ => match reading.blocked_since {
                Some(since) => {
                    let unread = reading.written.saturating_sub(self.read_proven);
                    since
                        + config.liveness_window()
                        + config.time_to_read(unread).unwrap_or_default()
                }
                None => now + config.pong_grace(),
            },
        };
        writing.max(answerable)
    }

    /// A pong proves the connection alive and pushes back its presence
    /// TTLs. The TTLs are pushed back at most once per half of the shortest
    /// one, however often pongs come: each refresh is a backend write per
    /// room, and the pong rate is the client's to choose.
    async fn on_pong(&mut self) {
        let now = Instant::now();
        self.alive_until = now + self.server.shared.config.liveness_window();
        let shortest = self
            .rooms
            .values()
            .filter_map(|track| track.as_ref().and_then(|t| t.ttl))
            .min();
        let Some(shortest) = shortest else {
            return;
        };
        if now.duration_since(self.ttl_refreshed) < shortest / 2 {
            return;
        }
        self.ttl_refreshed = now;
        let backend = &self.server.shared.backend;
        for (room, track) in &self.rooms {
            if let Some(ttl) = track.as_ref().and_then(|t| t.ttl) {
                if let Err(e) = backend.refresh_presence(room, &self.id, ttl).await {
                    tracing::warn!(id = %self.id, %room, error = %e, "presence refresh failed");
                }
            }
        }
    }

    /// Queues a push to this connection.
    pub(crate) fn send(&self, frame: Frame) {
        self.outbox
            .push(Outgoing::text(Kind::Push, &frame.encode()));
    }

    /// Queues a ping or latency probe.
    fn heartbeat(&self, kind: Kind, frame: Frame) {
        self.outbox.push(Outgoing::text(kind, &frame.encode()));
    }

    /// Queues a reply to one of this connection's requests.
    fn reply(&self, frame: Frame) {
        self.outbox
            .push(Outgoing::text(Kind::Reply, &frame.encode()));
    }

    /// Queues the reply to request `id`: `payload` as it is, or, when it is
    /// larger than any reply may be, an `ETOOLARGE` error in its place.
    fn reply_with(&self, id: u64, command: String, payload: Payload) {
        let frame = match payload {
            Payload::Value(value) => Outgoing::text(
                Kind::Reply,
                &Frame::reply(Some(id), &command, value).encode(),
            ),
            // The envelope around a body shared with other askers.
            Payload::Shared(body) => {
                let head = Frame::reply(Some(id), &command, Value::Null).encode();
                // The payload is encoded last: `..."payload":null}`.
                let head = head.strip_suffix("null}").unwrap_or(&head);
                let mut parts = Vec::with_capacity(body.len() + 2);
                parts.push(Bytes::copy_from_slice(head.as_bytes()));
                parts.extend(body);
                parts.push(Bytes::from_static(b"}"));
                Outgoing::text_parts(Kind::Reply, &parts)
            }
        };
        let max = self.server.shared.config.max_reply_bytes();
        if frame.len() > max {
            let len = frame.len();
            tracing::info!(id = %self.id, %command, len, max, "reply too large to send");
            let error = ErrorPayload::new(
                ErrorCode::TooLarge,
                format!("the reply is {len} bytes; the limit is {max}"),
            );
            return self.reply(Frame::error_reply(Some(id), command, &error));
        }
        self.outbox.push(frame);
    }

    /// Leaves every room (announcing it where tracked), drops the
    /// connection's metadata and runs the disconnection hook.
    async fn cleanup(&mut self) {
        let shared = self.server.shared.clone();
        let backend = &shared.backend;
        for (room, track) in std::mem::take(&mut self.rooms) {
            if let Err(e) = commands::leave(&self.server, &self.id, &room, track.is_some()).await {
                tracing::warn!(id = %self.id, %room, error = %e, "leaving room on close failed");
            }
        }
        self.subscriptions.clear();
        let metadata = if shared.on_disconnection.is_some() {
            backend.get_metadata(&self.id).await.ok().flatten()
        } else {
            None
        };
        if let Err(e) = backend.remove_metadata(&self.id).await {
            tracing::warn!(id = %self.id, error = %e, "removing metadata failed");
        }
        if let Some(hook) = &shared.on_disconnection {
            hook(DisconnectInfo {
                id: self.id.clone(),
                metadata,
            })
            .await;
        }
    }
}

/// A deadline that never comes, for a timer that is not armed.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// The command of a frame we could not fully decode, for the error reply.
fn command_of(text: &str) -> String {
    #[derive(serde::Deserialize)]
    struct CommandOnly {
        #[serde(default)]
        command: Option<Value>,
    }
    serde_json::from_str::<CommandOnly>(text)
        .ok()
        .and_then(|c| c.command)
        .and_then(|c| c.as_str().map(str::to_string))
        .unwrap_or_default()
}
