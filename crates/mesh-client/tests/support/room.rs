//! A presence room on our own server, and the `Presence` tabs that use it.

use super::{fast_options, within};
use mesh_client::presence::{
    GroupKey, MemoryStore, Presence, PresenceOptions, StateStore, User, CHANGED_AT,
};
use mesh_client::MeshClient;
use mesh_server::{RunningServer, Server, TrackOptions};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The tracked room.
pub const ROOM: &str = "lobby";
/// Where each tab saves its state.
pub const KEY: &str = "user-state:lobby";

/// A server tracking [`ROOM`], taking metadata from the query string.
pub async fn start_server_at(addr: SocketAddr) -> RunningServer {
    Server::builder()
        .addr(addr)
        .ping_interval(Duration::from_millis(500))
        .track_presence("^lobby$", TrackOptions::default())
        .metadata_from_query(true)
        .bind()
        .await
        .unwrap()
}

/// [`start_server_at`] on a free port.
pub async fn start_server() -> RunningServer {
    start_server_at("127.0.0.1:0".parse().unwrap()).await
}

/// A client whose metadata says it is `user`.
pub async fn connect_as(server_url: &str, user: &str) -> MeshClient {
    let url = format!("{server_url}/?userId={user}");
    MeshClient::connect(&url, fast_options()).await.unwrap()
}

/// Presence options with short delays, so that tests run fast.
pub fn options() -> PresenceOptions {
    PresenceOptions {
        republish_jitter: Duration::from_millis(100),
        resolve_retry_after: Duration::from_millis(100),
        ..PresenceOptions::default()
    }
}

/// One tab: a connection of `user` with its own presence and store.
pub async fn tab(server: &RunningServer, user: &str, key: GroupKey) -> (MeshClient, Presence) {
    tab_with(server, user, key, Arc::new(MemoryStore::new()), options()).await
}

/// A tab with the given store and options.
pub async fn tab_with(
    server: &RunningServer,
    user: &str,
    key: GroupKey,
    store: Arc<dyn StateStore>,
    options: PresenceOptions,
) -> (MeshClient, Presence) {
    tab_at(&server.url(), user, key, store, options).await
}

/// A tab connected to `url` (a server, or a proxy in front of one).
pub async fn tab_at(
    url: &str,
    user: &str,
    key: GroupKey,
    store: Arc<dyn StateStore>,
    options: PresenceOptions,
) -> (MeshClient, Presence) {
    let client = connect_as(url, user).await;
    let presence = Presence::with_options(client.clone(), ROOM, KEY, key, store, options)
        .await
        .unwrap();
    (client, presence)
}

/// `state` without the `changedAt` that `Presence` adds, to compare it
/// with what a test published.
pub fn bare(state: Option<Value>) -> Option<Value> {
    state.map(|mut state| {
        if let Some(map) = state.as_object_mut() {
            map.remove(CHANGED_AT);
        }
        state
    })
}

/// Rows as (user id, tab count, state without its `changedAt`).
pub fn rows(users: &[User]) -> Vec<(String, usize, Option<Value>)> {
    users
        .iter()
        .map(|u| {
            (
                u.id.to_string(),
                u.tab_count,
                bare(u.state.as_deref().cloned()),
            )
        })
        .collect()
}

/// Waits until the user list satisfies `pred`; returns that list.
pub async fn wait_users(
    rx: &mut watch::Receiver<Vec<User>>,
    what: &str,
    pred: impl Fn(&[User]) -> bool,
) -> Vec<User> {
    within(what, async {
        loop {
            {
                let users = rx.borrow_and_update();
                if pred(&users) {
                    return users.clone();
                }
            }
            rx.changed().await.expect("presence stopped");
        }
    })
    .await
}

/// A predicate: exactly these users, in this order, with these tab counts.
pub fn tabs_are<'a>(expected: &'a [(&'a str, usize)]) -> impl Fn(&[User]) -> bool + 'a {
    move |users| {
        users.len() == expected.len()
            && users
                .iter()
                .zip(expected)
                .all(|(u, (id, tabs))| &*u.id == *id && u.tab_count == *tabs)
    }
}
