//! Running and stopping a server, and the handle embedders use to act on
//! it. Configuring one is [`builder`]'s.

mod builder;

pub use builder::{Server, ServerBuilder};

use crate::admission::{Admission, Backoff};
use crate::backend::Backend;
use crate::config::Config;
use crate::connection;
use crate::error::ServerError;
use crate::fanout::Subscribers;
use crate::hooks::{CommandHandler, ConnectHook, DisconnectHook};
use crate::interest::Interest;
use crate::metrics::Metrics;
use crate::tracking::Tracker;
use mesh_protocol::payload::Member;
use mesh_protocol::{PresenceUpdate, Strategy};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// State shared by every task of one server instance.
pub(crate) struct Shared {
    pub(crate) instance_id: String,
    next_id: AtomicU64,
    pub(crate) connections: Arc<AtomicUsize>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) metrics: Metrics,
    pub(crate) interest: Arc<Interest>,
    pub(crate) config: Config,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) subscribers: Arc<Subscribers>,
    pub(crate) tracker: Tracker,
    pub(crate) on_connection: Option<ConnectHook>,
    pub(crate) on_disconnection: Option<DisconnectHook>,
    pub(crate) commands: HashMap<String, CommandHandler>,
}

impl Shared {
    /// A connection id unique across every instance sharing the backend.
    pub(crate) fn new_connection_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.instance_id)
    }
}

/// Resolves once the server is told to stop, or its [`RunningServer`] was
/// dropped.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn accept_loop(
    listener: TcpListener,
    handle: ServerHandle,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff.reset();
                accepted
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of
                // spinning, and keep serving the connections we have.
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "accept failed");
                tokio::select! {
                    _ = stopped(&mut shutdown) => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        let admission = &handle.shared.admission;
        match admission.admit(peer.ip()) {
            Ok(slot) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection::serve(
                    stream,
                    peer,
                    handle.clone(),
                    shutdown.clone(),
                    (slot, done.clone()),
                ));
            }
            Err(full) => {
                tracing::debug!(%peer, ?full, "connection refused: over the limit");
                if let Some(refusal) = admission.start_refusal() {
                    tokio::spawn(connection::refuse(stream, full, refusal));
                }
            }
        }
    }
}

/// A server serving in the background. Dropping it stops the server
/// without waiting; [`RunningServer::shutdown`] stops it gracefully.
pub struct RunningServer {
    handle: ServerHandle,
    local_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    accept: JoinHandle<()>,
    done_rx: mpsc::Receiver<()>,
}

impl fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The WebSocket URL of the server, `ws://IP:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.local_addr)
    }

    /// A handle to act on the server.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Stops accepting, closes every connection with `1001 Going Away`,
    /// and returns once each one is cleaned up (left its rooms, metadata
    /// removed, `on_disconnection` run). The clients of this instance hear
    /// no presence updates from then on (not each other leaving); clients
    /// of other instances sharing the backend do.
    pub async fn shutdown(mut self) {
        self.handle.shared.subscribers.close();
        let _ = self.shutdown_tx.send(true);
        let _ = (&mut self.accept).await;
        // Every connection task holds a sender; `None` means all are done.
        while self.done_rx.recv().await.is_some() {}
        tracing::info!(local_addr = %self.local_addr, "mesh server stopped");
    }
}

/// A cheap, cloneable handle to a running server, for embedders: set and
/// read metadata, look at rooms and presence.
#[derive(Clone)]
pub struct ServerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("instance_id", &self.shared.instance_id)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// This instance's id; connection ids start with it.
    pub fn instance_id(&self) -> &str {
        &self.shared.instance_id
    }

    /// Connections currently open on this instance.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// The backend this server uses.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.shared.backend.clone()
    }

    /// Combines `value` with a connection's metadata; returns the result.
    /// The embedder is trusted: no size limit applies here.
    pub async fn set_metadata(
        &self,
        connection_id: &str,
        value: Value,
        strategy: Strategy,
    ) -> Result<Value, ServerError> {
        Ok(self
            .shared
            .backend
            .set_metadata(connection_id, value, strategy, None)
            .await?)
    }

    /// A connection's metadata; `None` when it has none or is unknown.
    pub async fn get_metadata(&self, connection_id: &str) -> Result<Option<Value>, ServerError> {
        Ok(self.shared.backend.get_metadata(connection_id).await?)
    }

    /// Every member of a room (ids).
    pub async fn room_members(&self, room: &str) -> Result<Vec<String>, ServerError> {
        Ok(self.shared.backend.room_members(room).await?)
    }

    /// The connections present in a tracked room, with their metadata.
    pub async fn present_members(&self, room: &str) -> Result<Vec<Member>, ServerError> {
        let ids = self.shared.backend.present(room).await?;
        self.with_metadata(ids).await
    }

    /// The presence states of a room, by connection id.
    pub async fn presence_states(&self, room: &str) -> Result<Map<String, Value>, ServerError> {
        Ok(self.shared.backend.states(room).await?)
    }

    /// Combines `value` with a room's metadata; returns the result.
    pub async fn set_room_metadata(
        &self,
        room: &str,
        value: Value,
        strategy: Strategy,
    ) -> Result<Value, ServerError> {
        Ok(self
            .shared
            .backend
            .set_room_metadata(room, value, strategy)
            .await?)
    }

    /// A room's metadata; `None` when it has none.
    pub async fn get_room_metadata(&self, room: &str) -> Result<Option<Value>, ServerError> {
        Ok(self.shared.backend.get_room_metadata(room).await?)
    }

    /// Whether `room` matches a tracked pattern.
    pub fn is_tracked(&self, room: &str) -> bool {
        self.shared.tracker.lookup(room).is_some()
    }

    /// Attaches metadata to ids: `[{id, metadata}]`.
    pub(crate) async fn with_metadata(&self, ids: Vec<String>) -> Result<Vec<Member>, ServerError> {
        let metadata = self.shared.backend.get_metadata_many(&ids).await?;
        Ok(ids
            .into_iter()
            .zip(metadata)
            .map(|(id, metadata)| Member {
                id,
                metadata: metadata.unwrap_or(Value::Null),
            })
            .collect())
    }

    /// One more local member or subscriber in `room`; returns once the
    /// backend delivers the room's updates to this instance, so that a
    /// snapshot read afterwards cannot miss an update.
    pub(crate) async fn interest_gained(&self, room: &str) -> Result<(), ServerError> {
        self.shared.interest.add(room);
        Ok(self.shared.backend.watch_room(room).await?)
    }

    /// One fewer local member or subscriber in `room`.
    pub(crate) fn interest_lost(&self, room: &str) {
        self.shared.interest.remove(room);
        self.shared.backend.unwatch_room(room);
    }

    /// Publishes a presence update through the backend.
    pub(crate) async fn publish(&self, update: PresenceUpdate) -> Result<(), ServerError> {
        Ok(self.shared.backend.publish(update).await?)
    }
}
