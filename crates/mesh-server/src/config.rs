//! Server settings and limits.

use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bounds that protect the server from a single connection.
///
/// Going over one gets the request a clear error (or, for the last two,
/// closes that connection) and disturbs nothing else. Start from
/// `Limits::default()` and change fields; more limits may be added.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame accepted, in bytes; a larger request is answered with
    /// `ETOOLARGE`. Frames over four times this close the connection (1009).
    pub max_frame_bytes: usize,
    /// Largest presence state or metadata value, in bytes of JSON.
    pub max_state_bytes: usize,
    /// Most rooms one connection may be in (and, separately, subscribed to).
    pub max_rooms_per_connection: usize,
    /// Most bytes queued to one connection; a consumer that falls this far
    /// behind is disconnected rather than buffered without bound.
    pub max_queued_bytes: usize,
    /// Frames that are not a Mesh envelope tolerated per minute; past that
    /// the connection is closed with 1008.
    pub max_bad_frames: u32,
    /// Control frames the server did not ask for (WebSocket pings and
    /// pongs, Mesh pongs and latency answers beyond those answering the
    /// server's own) tolerated per minute; past that the connection is
    /// closed with 1008. Answering a ping costs the server a write, so a
    /// flood of them must end.
    pub max_control_frames: u32,
    /// Most connections open at once, handshakes included; more are
    /// refused with `503` before the upgrade. Lowered at start-up to fit
    /// the process's file-descriptor limit.
    pub max_connections: usize,
    /// Most connections open at once from one IP address (`503` past it);
    /// 0 means no per-address limit. Behind a reverse proxy every client
    /// has the proxy's address: raise it or set 0 there.
    pub max_connections_per_ip: usize,
    /// Requests one connection may make per second (bursts up to this many
    /// are fine); past it they are answered with `ERATELIMIT`. 0 (the
    /// default) means unlimited.
    pub max_requests_per_second: u32,
    /// Time allowed for the HTTP handshake.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: mesh_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_state_bytes: mesh_protocol::DEFAULT_MAX_STATE_BYTES,
            max_rooms_per_connection: mesh_protocol::DEFAULT_MAX_ROOMS_PER_CONNECTION,
            max_queued_bytes: 1024 * 1024,
            max_bad_frames: 100,
            max_control_frames: 100,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_requests_per_second: 0,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The tungstenite settings a server with these limits gives every
    /// connection.
    pub fn websocket_config(&self) -> WebSocketConfig {
        let write_buffer = 8 * 1024;
        // Small buffers keep idle connections cheap; tungstenite's own size
        // limits sit above ours so that we can answer `ETOOLARGE` ourselves.
        // Its outgoing buffer is bounded too (its default is not), so that
        // the pongs it queues by itself for a peer that never reads stop
        // piling up. The bound fits any message we queue (none is over the
        // outbox bound) plus the pongs the control-frame budget lets
        // through; past it, the writer stops and the connection ends as a
        // slow consumer.
        WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(write_buffer)
            .max_write_buffer_size(self.max_queued_bytes.max(write_buffer) + 64 * 1024)
            .max_message_size(Some(self.max_frame_bytes.saturating_mul(4)))
            .max_frame_size(Some(self.max_frame_bytes.saturating_mul(4)))
    }
}

/// Everything a running server was configured with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) ping_interval: Duration,
    pub(crate) max_missed_pongs: u32,
    pub(crate) latency_interval: Duration,
    pub(crate) metadata_from_query: bool,
    pub(crate) open_metadata: bool,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ping_interval: Duration::from_secs(30),
            max_missed_pongs: 1,
            latency_interval: Duration::from_secs(5),
            metadata_from_query: false,
            open_metadata: false,
            allowed_origins: Vec::new(),
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// How long a connection may go without a pong before it is closed:
    /// one interval per tolerated missed pong, plus the one in flight.
    pub(crate) fn liveness_window(&self) -> Duration {
        self.ping_interval * (self.max_missed_pongs + 1)
    }

    /// Whether a request with these `Origin` headers may connect.
    /// Requests without one (non-browser clients) always may; with an
    /// allow-list, more than one is refused, since which one a check
    /// reads would decide who gets in.
    pub(crate) fn origin_allowed(&self, origins: &[&str]) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        match origins {
            [] => true,
            [origin] => self
                .allowed_origins
                .iter()
                .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin)),
            _ => false,
        }
    }
}
