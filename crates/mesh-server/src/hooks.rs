//! What embedders plug in: the connection and disconnection hooks and
//! custom commands.

use crate::auth::Claims;
use crate::server::ServerHandle;
use crate::ServerError;
use mesh_protocol::{ErrorPayload, Strategy};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The handshake of a new connection, as the `on_connection` hook sees it.
///
/// The connection already has its id but has not been told yet: whatever
/// metadata the hook sets is in place before `mesh/assign-id` is sent.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The id the connection will get.
    pub id: String,
    /// The request path, without the query (`/` usually).
    pub path: String,
    /// Query parameters, percent-decoded; the last one wins on repeats.
    pub query: BTreeMap<String, String>,
    /// Request headers, names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The verified token's claims, on a server with authentication; their
    /// identity is already in the connection's metadata.
    pub claims: Option<Arc<Claims>>,
    /// The server, to set metadata or look things up.
    pub server: ServerHandle,
}

impl ConnectionInfo {
    /// A query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Replaces this connection's metadata, typically with the user found
    /// from a token in the query or a cookie.
    pub async fn set_metadata(&self, value: Value) -> Result<Value, ServerError> {
        self.server
            .set_metadata(&self.id, value, Strategy::Replace)
            .await
    }
}

/// The `on_connection` hook's answer when it turns a connection away: the
/// handshake gets this HTTP status instead of `101 Switching Protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status code (401, 403, ...).
    pub status: u16,
    /// Short reason, sent as the response body.
    pub reason: String,
}

impl Refusal {
    /// `401 Unauthorized`.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Refusal {
            status: 401,
            reason: reason.into(),
        }
    }

    /// `403 Forbidden`.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Refusal {
            status: 403,
            reason: reason.into(),
        }
    }
}

/// A closed connection, as the `on_disconnection` hook sees it.
#[derive(Debug, Clone)]
pub struct DisconnectInfo {
    /// The connection's id.
    pub id: String,
    /// Its metadata at the time it closed.
    pub metadata: Option<Value>,
}

/// A custom command's request, as its handler sees it.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    /// The connection that sent it.
    pub connection_id: String,
    /// The command name.
    pub command: String,
    /// The request payload.
    pub payload: Value,
    /// The server, to look things up or act.
    pub server: ServerHandle,
}

pub(crate) type ConnectHook =
    Arc<dyn Fn(ConnectionInfo) -> BoxFuture<Result<(), Refusal>> + Send + Sync>;
pub(crate) type DisconnectHook = Arc<dyn Fn(DisconnectInfo) -> BoxFuture<()> + Send + Sync>;
pub(crate) type CommandHandler =
    Arc<dyn Fn(CommandRequest) -> BoxFuture<Result<Value, ErrorPayload>> + Send + Sync>;

pub(crate) fn connect_hook<F, Fut>(f: F) -> ConnectHook
where
    F: Fn(ConnectionInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Refusal>> + Send + 'static,
{
    Arc::new(move |info| Box::pin(f(info)))
}

pub(crate) fn disconnect_hook<F, Fut>(f: F) -> DisconnectHook
where
    F: Fn(DisconnectInfo) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |info| Box::pin(f(info)))
}

pub(crate) fn command_handler<F, Fut>(f: F) -> CommandHandler
where
    F: Fn(CommandRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, ErrorPayload>> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}
