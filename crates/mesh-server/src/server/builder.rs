//! [`ServerBuilder`]: a server's configuration, checked and turned into a
//! [`RunningServer`] by [`ServerBuilder::bind`].

use super::{accept_loop, RunningServer, ServerHandle, Shared};
use crate::admission::{fit_fd_limit, Admission};
use crate::auth::Auth;
use crate::backend::{Backend, MemoryBackend, RedisBackend, RedisConfig};
use crate::config::{Config, Limits};
use crate::connection;
use crate::error::ServerError;
use crate::fanout::Subscribers;
use crate::hooks::{
    command_handler, connect_hook, disconnect_hook, CommandHandler, CommandRequest, ConnectHook,
    ConnectionInfo, DisconnectHook, DisconnectInfo, Refusal,
};
use crate::interest::Interest;
use crate::metrics::Metrics;
use crate::tracking::{TrackOptions, Tracker};
use mesh_protocol::ErrorPayload;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Entry point: `Server::builder()`.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder with the defaults: `127.0.0.1:3000`, ping every 30 s,
    /// one missed pong tolerated, latency every 5 s, no tracked rooms, the
    /// memory backend.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }
}

/// Configures and starts a server. See the crate docs for an example.
pub struct ServerBuilder {
    addr: SocketAddr,
    config: Config,
    tracker: Tracker,
    errors: Vec<ServerError>,
    backend: Option<Arc<dyn Backend>>,
    redis: Option<RedisConfig>,
    on_connection: Option<ConnectHook>,
    on_disconnection: Option<DisconnectHook>,
    commands: HashMap<String, CommandHandler>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            config: Config::default(),
            tracker: Tracker::default(),
            errors: Vec::new(),
            backend: None,
            redis: None,
            on_connection: None,
            on_disconnection: None,
            commands: HashMap::new(),
        }
    }
}

impl fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("addr", &self.addr)
            .field("config", &self.config)
            .field("tracker", &self.tracker)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Address to listen on; port 0 picks a free port.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// How often the server pings each connection (default 30 s).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.config.ping_interval = interval;
        self
    }

    /// Consecutive pongs a connection may miss before it is closed
    /// (default 1): a silent peer is gone within
    /// `ping_interval * (max_missed_pongs + 1)`.
    pub fn max_missed_pongs(mut self, n: u32) -> Self {
        self.config.max_missed_pongs = n;
        self
    }

    /// The slowest reading, in bytes per second, that still counts as
    /// reading (default 16 KiB/s). A pong can only come after the client
    /// has read everything sent before its ping; when that was already in
    /// the socket's buffers, where the server cannot watch it drain, the
    /// pong may be late by the time this rate needs to read it. 0 allows
    /// no lateness: a pong is due one liveness window after its ping.
    pub fn min_read_rate(mut self, bytes_per_second: u64) -> Self {
        self.config.min_read_rate = bytes_per_second;
        self
    }

    /// How often the server measures each connection's round trip
    /// (default 5 s).
    pub fn latency_interval(mut self, interval: Duration) -> Self {
        self.config.latency_interval = interval;
        self
    }

    /// Tracks presence in rooms matching `pattern`: an exact room name, or
    /// (when it contains regex metacharacters) a regular expression that
    /// must match the whole name. The first matching pattern applies.
    pub fn track_presence(mut self, pattern: &str, options: TrackOptions) -> Self {
        if let Err(e) = self.tracker.add(pattern, options) {
            self.errors.push(e);
        }
        self
    }

    /// Attaches every URL query parameter to a new connection's metadata,
    /// as strings (`?userId=u1&username=Alice`). Meant for demos and tests.
    pub fn metadata_from_query(mut self, on: bool) -> Self {
        self.config.metadata_from_query = on;
        self
    }

    /// Lets `mesh/get-connection-metadata` answer about any connection. By
    /// default it answers only about connections sharing a room (joined or
    /// presence-subscribed) with the asker, and `null` otherwise.
    pub fn open_metadata(mut self, on: bool) -> Self {
        self.config.open_metadata = on;
        self
    }

    /// Browser origins allowed to connect (`*` for any). Empty (the
    /// default) allows every origin; requests without `Origin` are always
    /// allowed. Others get `403 Forbidden`.
    pub fn allow_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// Requires every connection to present a token that `auth` verifies
    /// (`?token=` or `Authorization: Bearer`); others get `401` before the
    /// upgrade. The token's claims become the connection's identity and
    /// decide which rooms it may join or watch (see [`crate::auth`]).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.config.auth = Some(auth);
        self
    }

    /// Replaces all limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Largest frame accepted, in bytes (default 64 KiB).
    pub fn max_frame_bytes(mut self, n: usize) -> Self {
        self.config.limits.max_frame_bytes = n;
        self
    }

    /// Largest presence state or metadata, in bytes (default 16 KiB).
    pub fn max_state_bytes(mut self, n: usize) -> Self {
        self.config.limits.max_state_bytes = n;
        self
    }

    /// Most rooms per connection (default 64).
    pub fn max_rooms_per_connection(mut self, n: usize) -> Self {
        self.config.limits.max_rooms_per_connection = n;
        self
    }

    /// Most bytes of pushes queued to one connection before it is dropped
    /// as a slow consumer (default 1 MiB). Replies to its own requests are
    /// not counted (see [`Limits::max_queued_bytes`]).
    pub fn max_queued_bytes(mut self, n: usize) -> Self {
        self.config.limits.max_queued_bytes = n;
        self
    }

    /// Most members in one room (default 10,000); a join past it is
    /// refused with `ETOOLARGE`.
    pub fn max_room_members(mut self, n: usize) -> Self {
        self.config.limits.max_room_members = n;
        self
    }

    /// Non-envelope frames tolerated per minute per connection (default 100).
    pub fn max_bad_frames(mut self, n: u32) -> Self {
        self.config.limits.max_bad_frames = n;
        self
    }

    /// Time a new connection has to send its HTTP request head (default
    /// 10 s); a slower one is closed.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.limits.handshake_timeout = timeout;
        self
    }

    /// Unrequested control frames (pings, pongs) tolerated per minute per
    /// connection before it is closed with 1008 (default 100).
    pub fn max_control_frames(mut self, n: u32) -> Self {
        self.config.limits.max_control_frames = n;
        self
    }

    /// Most connections open at once (default 10,000, lowered to fit the
    /// file-descriptor limit); more get `503`.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.limits.max_connections = n;
        self
    }

    /// Most connections open at once from one IP address, 0 for no limit
    /// (default 1,000); more get `503`.
    pub fn max_connections_per_ip(mut self, n: usize) -> Self {
        self.config.limits.max_connections_per_ip = n;
        self
    }

    /// Requests per second allowed per connection, 0 for no limit (the
    /// default). Over it, requests are answered with `ERATELIMIT`.
    pub fn max_requests_per_second(mut self, n: u32) -> Self {
        self.config.limits.max_requests_per_second = n;
        self
    }

    /// Uses `backend` instead of a fresh [`MemoryBackend`]; several
    /// servers sharing one backend behave as one cluster.
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Uses Redis (`redis://HOST:PORT/DB`, or a full [`RedisConfig`]) so
    /// that every server on the same Redis and key prefix shares rooms,
    /// presence and metadata. Connects in [`ServerBuilder::bind`]. An
    /// explicit [`ServerBuilder::backend`] takes precedence.
    pub fn redis(mut self, config: impl Into<RedisConfig>) -> Self {
        self.redis = Some(config.into());
        self
    }

    /// Runs `hook` for every new connection before it gets its id. The hook
    /// sees the handshake (path, query, headers), may set metadata (see
    /// [`ConnectionInfo::set_metadata`]), and may refuse the connection.
    pub fn on_connection<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(ConnectionInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Refusal>> + Send + 'static,
    {
        self.on_connection = Some(connect_hook(hook));
        self
    }

    /// Runs `hook` after a connection closed and was removed from every room.
    pub fn on_disconnection<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(DisconnectInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_disconnection = Some(disconnect_hook(hook));
        self
    }

    /// Adds a custom command. Its handler's `Ok` value is the reply payload;
    /// an `Err` is sent as an error reply. Built-in `mesh/` commands cannot
    /// be overridden.
    pub fn expose_command<F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(CommandRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, ErrorPayload>> + Send + 'static,
    {
        if connection::is_builtin(name) {
            self.errors.push(ServerError::Config(format!(
                "command {name:?} is built in and cannot be exposed"
            )));
        } else {
            self.commands
                .insert(name.to_string(), command_handler(handler));
        }
        self
    }

    /// Checks the configuration without binding or connecting to anything:
    /// the first mistake [`ServerBuilder::bind`] would report, found before
    /// a service starts (`mesh-server --check-config`).
    pub fn check(&self) -> Result<(), ServerError> {
        match self.errors.first() {
            Some(ServerError::Config(message)) => return Err(ServerError::Config(message.clone())),
            Some(other) => return Err(ServerError::Config(other.to_string())),
            None => {}
        }
        if self.config.ping_interval.is_zero() || self.config.latency_interval.is_zero() {
            return Err(ServerError::Config("intervals must be positive".into()));
        }
        let limits = &self.config.limits;
        for (name, value) in [
            ("max_frame_bytes", limits.max_frame_bytes),
            ("max_state_bytes", limits.max_state_bytes),
            ("max_rooms_per_connection", limits.max_rooms_per_connection),
            ("max_queued_bytes", limits.max_queued_bytes),
        ] {
            if value == 0 {
                return Err(ServerError::Config(format!("{name} must be positive")));
            }
        }
        if let (None, Some(redis)) = (&self.backend, &self.redis) {
            redis.validate()?;
        }
        Ok(())
    }

    /// Binds the address and starts serving in background tasks.
    pub async fn bind(mut self) -> Result<RunningServer, ServerError> {
        self.check()?;
        let backend: Arc<dyn Backend> = match (self.backend, self.redis) {
            (Some(b), _) => b,
            (None, Some(config)) => Arc::new(RedisBackend::with_config(config).await?),
            (None, None) => Arc::new(MemoryBackend::new()),
        };
        let listener = TcpListener::bind(self.addr).await?;
        let local_addr = listener.local_addr()?;
        let (max_connections, fd_limit) = fit_fd_limit(self.config.limits.max_connections);
        if let Some(fd_limit) = fd_limit {
            tracing::warn!(
                fd_limit,
                max_connections,
                "max connections lowered to fit the open-file limit; raise it with `ulimit -n` (LimitNOFILE= under systemd)"
            );
            self.config.limits.max_connections = max_connections;
        }
        let limits = &self.config.limits;
        let admission = Admission::new(limits.max_connections, limits.max_connections_per_ip);
        let ws_config = limits.websocket_config();
        let connections = Arc::new(AtomicUsize::new(0));
        let deliveries = crate::metrics::deliveries_counter();
        let subscribers = Arc::new(Subscribers::new(deliveries.clone()));
        let interest = Arc::new(Interest::default());
        let rooms = {
            let interest = interest.clone();
            Arc::new(move || interest.room_count())
        };
        let metrics = Metrics::new(backend.clone(), connections.clone(), rooms, deliveries);
        backend.attach(subscribers.clone()).await?;
        let shared = Arc::new(Shared {
            instance_id: new_instance_id(),
            next_id: AtomicU64::new(1),
            connections,
            admission,
            metrics,
            interest,
            config: self.config,
            ws_config,
            backend,
            subscribers,
            tracker: self.tracker,
            on_connection: self.on_connection,
            on_disconnection: self.on_disconnection,
            commands: self.commands,
        });
        let handle = ServerHandle { shared };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        let accept = tokio::spawn(accept_loop(listener, handle.clone(), shutdown_rx, done_tx));
        tracing::info!(%local_addr, instance = %handle.shared.instance_id, "mesh server listening");
        if handle.shared.config.auth.is_none() && !local_addr.ip().is_loopback() {
            tracing::warn!(
                %local_addr,
                "no authentication: anyone who can reach this address can join any room and \
                 claim any identity; configure token verification for a shared server"
            );
        }
        Ok(RunningServer {
            handle,
            local_addr,
            shutdown_tx,
            accept,
            done_rx,
        })
    }
}

fn new_instance_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}
