//! An async client for Mesh servers, and user-level presence on top of it.
//!
//! [`MeshClient`] is a cheap, cloneable handle to one connection. A single
//! task owns the WebSocket; handles send it requests through a channel and
//! get replies through oneshots. The task answers heartbeats, reconnects
//! with backoff when the link dies, and restores the session: it rejoins
//! rooms, resubscribes presence, delivers a fresh snapshot to every
//! presence stream, and only then sends the requests made while offline.
//!
//! ```no_run
//! use mesh_client::{ClientOptions, MeshClient, PresenceEvent};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), mesh_client::ClientError> {
//! let client = MeshClient::connect("ws://127.0.0.1:3000", ClientOptions::default()).await?;
//! client.join_room("lobby").await?;
//! let (snapshot, mut updates) = client.subscribe_presence("lobby").await?;
//! println!("{} present", snapshot.present.len());
//! client
//!     .publish_presence_state("lobby", json!({"status": "online"}), None, false)
//!     .await?;
//! while let Some(event) = updates.recv().await {
//!     match event {
//!         PresenceEvent::Update(update) => println!("{update:?}"),
//!         // After a reconnect: rebuild the room from this snapshot.
//!         PresenceEvent::Resync { present, .. } => println!("{} present", present.len()),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The crate is laid out as follows:
//!
//! * [`client`]: the [`MeshClient`] handle and its typed API.
//! * `connection`: the task that owns the socket.
//! * [`incoming`]: classifying server frames (no I/O).
//! * `requests`: the table of requests awaiting replies.
//! * `metadata_cache`: the bounded metadata cache with shared lookups.
//! * [`backoff`]: reconnect delays.
//! * [`events`], [`options`], [`error`]: the types the API speaks in.
//! * [`presence`]: groups connections into users (sans-I/O engine) and the
//!   unified `Presence` helper that keeps your own state across reconnects.

#![warn(missing_docs)]

pub mod backoff;
pub mod client;
mod connection;
pub mod error;
pub mod events;
pub mod incoming;
mod metadata_cache;
pub mod options;
pub mod presence;
mod requests;

pub use client::MeshClient;
pub use error::{ClientError, LinkLoss};
pub use events::{ClientEvent, PresenceEvent, PresenceStream, Status};
pub use mesh_protocol::payload::{
    JoinRoomReply, Member, PresenceStateReply, SubscribePresenceReply,
};
pub use mesh_protocol::{ErrorCode, ErrorPayload, PresenceUpdate, Strategy};
pub use options::{ClientOptions, Token};
