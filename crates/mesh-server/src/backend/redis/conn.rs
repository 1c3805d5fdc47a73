//! The one connection an instance keeps to Redis: to a single server
//! (redis-rs's `ConnectionManager`) or to a Redis Cluster (redis-rs's
//! cluster connection, which routes each command to the node owning its
//! slot and follows resharding and failover). Both speak RESP3, so pub/sub
//! messages arrive on the same connection as pushes.
//!
//! The rest of the backend runs the same commands and scripts on either;
//! only the pub/sub flavour differs: plain channels on a single server
//! (`PUBLISH`/`SUBSCRIBE`, any Redis ≥ 6), sharded channels on a cluster
//! (`SPUBLISH`/`SSUBSCRIBE`, Redis ≥ 7), which live on the node of their
//! slot instead of being broadcast to every node.

use ::redis::aio::{ConnectionLike, ConnectionManager};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A connection to a single Redis or to a Redis Cluster. Cheap to clone:
/// clones share one connection (one per node on a cluster).
#[derive(Clone)]
pub(crate) enum Conn {
    /// One Redis server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl Conn {
    /// The command that publishes on a room channel, from Rust or a script.
    pub(crate) fn publish_command(&self) -> &'static str {
        match self {
            Conn::Single(_) => "PUBLISH",
            Conn::Cluster(_) => "SPUBLISH",
        }
    }

    /// Subscribes to a room channel; returns once Redis confirmed it.
    pub(crate) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    /// Unsubscribes from a room channel.
    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.unsubscribe(channel).await,
            Conn::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
