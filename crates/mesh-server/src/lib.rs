//! A Mesh presence server: rooms, per-connection presence with states,
//! connection metadata, and heartbeats, over the Mesh WebSocket protocol
//! (see `mesh-protocol`). It accepts any Mesh client.
//!
//! ```no_run
//! use mesh_server::{Server, TrackOptions};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .addr("127.0.0.1:0".parse()?)
//!     .track_presence(".*", TrackOptions { ttl: Some(Duration::from_secs(60)), guard: None })
//!     .on_connection(|conn| async move {
//!         // Look the user up from the handshake and attach who they are.
//!         if let Some(user) = conn.query("userId").map(str::to_string) {
//!             let _ = conn
//!                 .set_metadata(serde_json::json!({ "userId": user, "role": "member" }))
//!                 .await;
//!         }
//!         Ok(())
//!     })
//!     .bind()
//!     .await?;
//! println!("listening on {}", server.url());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! Layout, in the order a connection meets it:
//!
//! * [`server`]: the running server and its [`ServerHandle`]; its
//!   `builder` module holds the [`ServerBuilder`] that configures one.
//! * `admission`: connection limits (total, per address) and the accept
//!   loop's back-off.
//! * [`auth`]: signed tokens, the identity they attest, the rooms they open.
//! * `handshake`: HTTP request head, `GET /healthz`, `GET /metrics`,
//!   `Origin` check, upgrade.
//! * `connection`: the task that owns a socket: heartbeat, frames, cleanup.
//! * `commands`: one function per built-in command.
//! * `outbox`: the write path: each connection's queue of encoded frames
//!   (bounded for pushes) and the writer task that drains it.
//! * `fanout`: the subscriber registry that encodes each presence update
//!   once for all local subscribers.
//! * `interest`: the rooms this instance has someone in, which are the
//!   only rooms whose updates it receives from other instances.
//! * [`backend`]: the [`Backend`] trait, the [`MemoryBackend`], and the
//!   [`RedisBackend`] that lets several instances share presence.
//! * [`tracking`]: tracked-room patterns, presence TTL and guards.
//! * `metrics`: the Prometheus metrics behind `GET /metrics`.
//! * [`hooks`]: what embedders plug in (connection hooks, custom commands).

#![warn(missing_docs)]

mod admission;
pub mod auth;
pub mod backend;
mod commands;
mod config;
mod connection;
mod error;
mod fanout;
mod feed;
mod handshake;
pub mod hooks;
mod interest;
mod metrics;
mod outbox;
pub mod server;
pub mod tracking;

pub use admission::raise_fd_limit;
pub use auth::{Auth, Claims};
pub use backend::{
    Backend, BackendError, BackendStats, MemoryBackend, RedisBackend, RedisConfig, UpdateSink,
};
pub use config::{Limits, DEFAULT_MAX_ROOM_MEMBERS};
pub use error::ServerError;
pub use hooks::{CommandRequest, ConnectionInfo, DisconnectInfo, Refusal};
pub use server::{RunningServer, Server, ServerBuilder, ServerHandle};
pub use tracking::{Guard, GuardRequest, TrackOptions};
