//! Connection options, with the defaults a Mesh user expects.

use std::fmt;
use std::time::Duration;

/// How a [`crate::MeshClient`] connects, keeps its link alive and reconnects.
///
/// Build one with struct update syntax:
/// `ClientOptions { request_timeout: Duration::from_secs(5), ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Expected time between two server pings (30 s). The link counts as
    /// dead after `ping_timeout * (max_missed_pings + 1)` without a ping.
    pub ping_timeout: Duration,
    /// Pings that may go missing before the link counts as dead (1).
    pub max_missed_pings: u32,
    /// Reconnect after the link is lost (true).
    pub reconnect: bool,
    /// Delay before the first reconnect attempt (2 s); later attempts back
    /// off exponentially, with jitter, up to `max_reconnect_interval`.
    pub reconnect_interval: Duration,
    /// Cap of the reconnect backoff (30 s).
    pub max_reconnect_interval: Duration,
    /// Give up after this many failed attempts; `None` retries forever.
    pub max_reconnect_attempts: Option<u32>,
    /// Time a request may wait for its reply, queued time included (30 s).
    pub request_timeout: Duration,
    /// Time to open the socket and receive the connection id (10 s).
    pub connect_timeout: Duration,
    /// Largest frame accepted from the server (16 MiB); larger ones are dropped.
    pub max_frame_bytes: usize,
    /// Most requests held while offline (1024); more fail with `Offline`.
    pub max_offline_queue: usize,
    /// Most connection metadata entries cached (1024).
    pub metadata_cache_capacity: usize,
    /// A signed token for servers with authentication, sent as
    /// `Authorization: Bearer` on every (re)connect; `None` (the default)
    /// sends none. A token in the URL (`?token=`) works too.
    pub token: Option<Token>,
}

/// A bearer token. Its `Debug` form never shows it, so options can be
/// logged. Serializes as the plain string, for settings files.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    /// Wraps a token as given by whoever issued it.
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into().trim().to_string())
    }

    /// The token itself, to send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ping_timeout: Duration::from_secs(30),
            max_missed_pings: 1,
            reconnect: true,
            reconnect_interval: Duration::from_secs(2),
            max_reconnect_interval: Duration::from_secs(30),
            max_reconnect_attempts: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_frame_bytes: 16 * 1024 * 1024,
            max_offline_queue: 1024,
            metadata_cache_capacity: 1024,
            token: None,
        }
    }
}

impl ClientOptions {
    /// How long the link may go without a ping before it counts as dead.
    pub fn dead_link_after(&self) -> Duration {
        self.ping_timeout
            .saturating_mul(self.max_missed_pings.saturating_add(1))
    }
}
