//! User-level presence: one row per person, not per connection.
//!
//! Mesh tracks presence per connection, so a person with three tabs is three
//! members. This module folds them into users:
//!
//! * [`engine`]: the grouping engine, plain data with no I/O and no clock.
//!   Fed joins, leaves, states and snapshots, it keeps one group per user
//!   and emits user-level events, in O(1) amortized per update.
//! * [`Presence`]: the engine wired to a [`MeshClient`](crate::MeshClient)
//!   (what `createPresence` is in JavaScript): joins the room, keeps the user
//!   list current, saves your state in a [`StateStore`] and republishes it
//!   after a restart or reconnect, and keeps the tabs of one user in step.
//!   The handle is in `unified`; the task that owns its engine, reads the
//!   room and emits the user list is in `driver`.
//! * [`UsersDiff`]: the user list as changes ([`Presence::diffs`]): the
//!   full list first, then who came, changed or left per emission, built
//!   from the users the engine touched (module `diff`).
//! * [`GroupKey`]: how connections are told apart: by metadata (looked up,
//!   cached), by your own async resolver, or by a field of the state.
//! * [`store`]: the [`StateStore`] trait, with [`MemoryStore`] and
//!   [`FileStore`].
//! * [`CHANGED_AT`]: every state says when its owner changed it, so that
//!   "latest" means the latest change, not the latest packet.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mesh_client::presence::{FileStore, GroupKey, Presence};
//! use mesh_client::{ClientOptions, MeshClient};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = MeshClient::connect("ws://127.0.0.1:3000", ClientOptions::default()).await?;
//! let presence = Presence::new(
//!     client,
//!     "general",
//!     "user-state:general",
//!     GroupKey::state_field("userId"),
//!     Arc::new(FileStore::new("presence.json")),
//! )
//! .await?;
//! presence
//!     .publish(json!({"userId": "u-1", "username": "Alice", "status": "online"}))
//!     .await?;
//! let mut users = presence.users();
//! while users.changed().await.is_ok() {
//!     for user in users.borrow().iter() {
//!         println!("{}: {:?} ({} tabs)", user.id, user.state, user.tab_count);
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod changed_at;
mod diff;
mod driver;
pub mod engine;
mod group_key;
pub mod store;
mod unified;

pub use changed_at::{changed_at, CHANGED_AT};
pub use diff::{UserDiffs, UsersDiff, DIFF_BUFFER};
pub use engine::{
    Change, KeySource, Latest, PresenceEngine, StateKey, StateKeyFn, User, UserEvent,
};
pub use group_key::{GroupKey, MetadataKeyFn, ResolveFn, ResolveFuture};
pub use store::{FileStore, MemoryStore, StateStore, StoreError};
pub use unified::{Presence, PresenceError, PresenceOptions};
