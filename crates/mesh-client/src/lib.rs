//! An async client for Mesh servers, and user-level presence on top of it.
//!
//! * [`presence`]: groups connections into users (sans-I/O engine) and the
//!   unified `Presence` helper that keeps your own state across reconnects.

pub mod presence;
