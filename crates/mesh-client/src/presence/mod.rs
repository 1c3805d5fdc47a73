//! User-level presence: one row per person, not per connection.

pub mod engine;

pub use engine::{Change, KeySource, PresenceEngine, StateKeyFn, User, UserEvent};
