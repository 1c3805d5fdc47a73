//! Server settings and limits.

use crate::auth::Auth;
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
    /// Most bytes of pushes (presence updates, pings) queued to one
    /// connection; a consumer whose backlog grows past this is disconnected
    /// rather than buffered without bound. Replies to the connection's own
    /// requests do not count: one is sent whatever its size, and while more
    /// than this many reply bytes wait, the connection's next requests are
    /// not read.
    pub max_queued_bytes: usize,
    /// Most members in one room; a join past it gets `ETOOLARGE`. This
    /// bounds the largest snapshot a room can produce (see
    /// [`Limits::max_reply_bytes`]).
    pub max_room_members: usize,
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
            max_room_members: DEFAULT_MAX_ROOM_MEMBERS,
            max_bad_frames: 100,
            max_control_frames: 100,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_requests_per_second: 0,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Default of [`Limits::max_room_members`]. Hosted presence services cap
/// presence channels at 100 (Pusher) or 200 (Ably) members; presence is
/// most useful in big rooms (a company-wide channel, a live event), and a
/// 10,000-member room is well within what one instance serves, while still
/// bounding a full room's snapshot to a known size.
pub const DEFAULT_MAX_ROOM_MEMBERS: usize = 10_000;

impl Limits {
    /// The largest reply the server sends: a snapshot of a full room in
    /// which every member has metadata and a state of the largest size
    /// allowed, plus room for the envelope. Anything larger (a custom
    /// command's answer, say) is refused with `ETOOLARGE`.
    pub fn max_reply_bytes(&self) -> usize {
        // Per member: its id, metadata and state, and the JSON around them.
        let per_member = self.max_state_bytes.saturating_mul(2).saturating_add(256);
        self.max_room_members
            .saturating_mul(per_member)
            .saturating_add(self.max_frame_bytes)
    }

    /// The tungstenite settings a server with these limits gives every
    /// connection.
    pub fn websocket_config(&self) -> WebSocketConfig {
        let write_buffer = 8 * 1024;
        // Small buffers keep idle connections cheap; tungstenite's own size
        // limits sit above ours so that we can answer `ETOOLARGE` ourselves.
        // tungstenite writes only frames of its own (pongs, the echo of a
        // close), and they go straight to the connection's outbox, where
        // they count against the push budget like any other push. Its write
        // buffer is bounded anyway (its default is not), so that nothing
        // it does can pile up pongs.
        WebSocketConfig::default()
            // Requests are small: a 1 KiB read buffer per idle connection
            // instead of 4, at the cost of more reads for a rare large one.
            .read_buffer_size(1024)
            .write_buffer_size(write_buffer)
            .max_write_buffer_size(write_buffer + 64 * 1024)
            .max_message_size(Some(self.max_frame_bytes.saturating_mul(4)))
            .max_frame_size(Some(self.max_frame_bytes.saturating_mul(4)))
    }
}

/// The default slowest reader: about a slow mobile link (128 kbit/s).
pub(crate) const DEFAULT_MIN_READ_RATE: u64 = 16 * 1024;

/// Everything a running server was configured with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) ping_interval: Duration,
    pub(crate) max_missed_pongs: u32,
    /// The slowest reading, in bytes per second, that still counts as
    /// reading when a pong is late; 0 counts none.
    pub(crate) min_read_rate: u64,
    pub(crate) latency_interval: Duration,
    pub(crate) metadata_from_query: bool,
    pub(crate) open_metadata: bool,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) limits: Limits,
    /// Token verification; `None` leaves the server open.
    pub(crate) auth: Option<Auth>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ping_interval: Duration::from_secs(30),
            max_missed_pongs: 1,
            min_read_rate: DEFAULT_MIN_READ_RATE,
            latency_interval: Duration::from_secs(5),
            metadata_from_query: false,
            open_metadata: false,
            allowed_origins: Vec::new(),
            limits: Limits::default(),
            auth: None,
        }
    }
}

impl Config {
    /// See [`Limits::max_reply_bytes`].
    pub(crate) fn max_reply_bytes(&self) -> usize {
        self.limits.max_reply_bytes()
    }

    /// How long a connection may go without a pong before it is closed:
    /// one interval per tolerated missed pong, plus the one in flight.
    pub(crate) fn liveness_window(&self) -> Duration {
        self.ping_interval * (self.max_missed_pongs + 1)
    }

    /// How long after a ping is written its pong is due, when nothing
    /// sent before the ping is left to read: one interval per tolerated
    /// missed pong (at least one), so that a silent peer is gone within
    /// [`Config::liveness_window`] of its last pong.
    pub(crate) fn pong_grace(&self) -> Duration {
        self.ping_interval * self.max_missed_pongs.max(1)
    }

    /// How long a reader at the slowest counted rate takes to read `bytes`
    /// (`None` when no rate counts).
    pub(crate) fn time_to_read(&self, bytes: u64) -> Option<Duration> {
        (self.min_read_rate > 0)
            .then(|| Duration::from_secs_f64(bytes as f64 / self.min_read_rate as f64))
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
