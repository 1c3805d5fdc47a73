//! The Redis backend: several server instances share rooms, presence,
//! states and metadata through one Redis, and presence updates fan out
//! between them over Redis pub/sub.
//!
//! How it holds together (the key layout is in `docs/redis.md`):
//!
//! * **Writes** that must be atomic run as Lua scripts (`scripts`), with
//!   Redis's own clock for every deadline.
//! * **Fan-out**: an instance delivers its own updates to its local
//!   subscribers directly, then publishes them on the room's channel tagged
//!   with its id. Instances subscribe to a room's channel only while they
//!   have a local member or subscriber in it, and a new subscriber's
//!   snapshot is read only once the subscription is confirmed; every other
//!   instance delivers what it receives, so each instance delivers each
//!   update exactly once.
//! * **Expiry**: every presence TTL and state expiry sits in one sorted set
//!   (the cluster's timer wheel). Every instance polls it; a script claims
//!   due entries with `ZREM`, so each expiry is announced by exactly one
//!   instance, even when the instance that wrote it is gone.
//! * **Liveness**: each instance heartbeats into a sorted set; an instance
//!   silent for `dead_after` is swept by a survivor, which removes its
//!   connections and announces their leaves.
//! * **Outages**: this instance keeps a [`mirror`] of what it wrote for its
//!   own connections. While Redis is away, local connections keep working
//!   for what needs no Redis, removals and updates are queued, and the
//!   maintenance task retries with backoff; when Redis answers again it
//!   re-registers the instance, writes the mirror back, replays the queue
//!   and drops connections that closed meanwhile.

mod conn;
mod keys;
mod mirror;
mod scripts;
mod tasks;

use super::{check_len, Backend, BackendError, BackendResult, BackendStats, UpdateSink};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::{FromRedisValue, IntoConnectionInfo, ProtocolVersion, RedisError, ScriptInvocation};
use async_trait::async_trait;
use conn::Conn;
use keys::Keys;
use mesh_protocol::{PresenceUpdate, Strategy};
use mirror::{LocalConn, Mirror, Pending};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Where the Redis backend connects and how it paces its background work.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://HOST:PORT/DB` (or `rediss://`, `unix://`).
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://HOST:PORT`). When not
    /// empty, the backend runs on that cluster and `url` is unused.
    pub cluster_nodes: Vec<String>,
    /// Prepended to every key and channel; instances sharing a prefix form
    /// one cluster. Default `mesh-presence:`.
    pub prefix: String,
    /// How often this instance proves it is alive. Default 1 s.
    pub heartbeat_interval: Duration,
    /// How long an instance may miss heartbeats before a survivor sweeps
    /// its connections. Default 5 s, so a crashed instance's users leave
    /// within `dead_after + heartbeat_interval` (6 s).
    pub dead_after: Duration,
    /// Longest wait between two looks at the expiry set. Default 100 ms:
    /// the worst lateness of an expiry whose writer is gone.
    pub expiry_poll: Duration,
    /// How long one Redis request may take before it counts as failed.
    /// Default 3 s.
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// The defaults, for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            cluster_nodes: Vec::new(),
            prefix: "mesh-presence:".into(),
            heartbeat_interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            expiry_poll: Duration::from_millis(100),
            response_timeout: Duration::from_secs(3),
        }
    }

    /// The defaults, on the Redis Cluster reached through these seed nodes.
    pub fn cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisConfig {
            cluster_nodes: nodes.into_iter().map(Into::into).collect(),
            ..RedisConfig::new("")
        }
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Checks the settings and the URL without connecting, so that a
    /// mistake is reported before a service starts rather than as a
    /// connection failure.
    pub fn validate(&self) -> BackendResult<()> {
        if self.heartbeat_interval.is_zero()
            || self.expiry_poll.is_zero()
            || self.dead_after <= self.heartbeat_interval
        {
            return Err(BackendError::Other(
                "redis: intervals must be positive and dead_after longer than the heartbeat".into(),
            ));
        }
        if self.prefix.contains(['{', '}']) {
            return Err(BackendError::Other(
                "redis: the key prefix may not contain { or } (they delimit hash tags)".into(),
            ));
        }
        if self.cluster_nodes.is_empty() {
            self.url
                .as_str()
                .into_connection_info()
                .map_err(|e| BackendError::Other(format!("redis url {:?}: {e}", self.url)))?;
        }
        Ok(())
    }
}

impl From<&str> for RedisConfig {
    fn from(url: &str) -> Self {
        RedisConfig::new(url)
    }
}

impl From<String> for RedisConfig {
    fn from(url: String) -> Self {
        RedisConfig::new(url)
    }
}

/// Rooms, presence, states and metadata in Redis, shared by every server
/// instance using the same Redis and prefix. See the module docs.
///
/// One `RedisBackend` is one instance of the cluster: give each server its
/// own (clones share one instance). Its background tasks stop when the last
/// clone is dropped.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
    /// Dropped with the last clone; stops the background tasks.
    _stop: Arc<watch::Sender<()>>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("instance", &self.inner.instance)
            .field("prefix", &self.inner.keys.prefix)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) instance: String,
    pub(crate) config: RedisConfig,
    pub(crate) keys: Keys,
    pub(crate) conn: Conn,
    /// `PUBLISH`, or `SPUBLISH` on a cluster.
    pub(crate) publish_command: &'static str,
    /// Rooms this instance has local interest in, so subscribes to.
    pub(crate) watched: Mutex<HashMap<String, Watched>>,
    /// (Un)subscriptions, in order, to the subscriber task.
    pub(crate) subscriptions: mpsc::UnboundedSender<tasks::Subscription>,
    pub(crate) sinks: RwLock<Vec<Arc<dyn UpdateSink>>>,
    pub(crate) mirror: Mutex<Mirror>,
    /// Set when Redis may have lost or missed what this instance wrote;
    /// the maintenance task then resynchronises.
    pub(crate) needs_resync: AtomicBool,
    /// Whether the pub/sub subscriptions are in place right now. A resync
    /// restores them first, so that after a resync no update from others
    /// can be missed.
    pub(crate) subscribed: AtomicBool,
    /// Counts completed resynchronisations, for whoever wants to know.
    pub(crate) resyncs: watch::Sender<u64>,
    /// Updates for the other instances, in order, to the publisher task.
    pub(crate) outgoing: mpsc::UnboundedSender<PresenceUpdate>,
    /// Updates received from other instances.
    pub(crate) received: AtomicU64,
    /// Failed Redis requests.
    pub(crate) errors: AtomicU64,
}

impl RedisBackend {
    /// Connects with the default settings.
    pub async fn connect(url: &str) -> BackendResult<Self> {
        Self::with_config(RedisConfig::new(url)).await
    }

    /// Connects, registers this instance and starts the background tasks
    /// (pub/sub listener; heartbeat, sweep and expiry). Fails when Redis
    /// cannot be reached now; later outages are survived.
    pub async fn with_config(config: RedisConfig) -> BackendResult<Self> {
        config.validate()?;
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let conn = if config.cluster_nodes.is_empty() {
            connect_single(&config, push_tx).await?
        } else {
            connect_cluster(&config, push_tx).await?
        };
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let (subscriptions, subscriptions_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            instance: format!("{:016x}", rand::random::<u64>()),
            keys: Keys {
                prefix: config.prefix.clone(),
            },
            publish_command: conn.publish_command(),
            config,
            conn,
            watched: Mutex::new(HashMap::new()),
            subscriptions,
            sinks: RwLock::new(Vec::new()),
            mirror: Mutex::new(Mirror::default()),
            needs_resync: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            resyncs: watch::Sender::new(0),
            outgoing,
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        inner.heartbeat().await?;
        let (stop, stopped) = watch::channel(());
        tasks::spawn(&inner, stopped, outgoing_rx, push_rx, subscriptions_rx);
        tracing::info!(instance = %inner.instance, prefix = %inner.keys.prefix, "redis backend ready");
        Ok(RedisBackend {
            inner,
            _stop: Arc::new(stop),
        })
    }

    /// This instance's id in the cluster registry.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance
    }

    /// How many times this instance resynchronised with Redis after an
    /// outage; `changed()` on the receiver waits for the next one.
    pub fn resyncs(&self) -> watch::Receiver<u64> {
        self.inner.resyncs.subscribe()
    }
}

/// One room this instance subscribes to.
pub(crate) struct Watched {
    /// Local members and subscribers.
    count: usize,
    /// `true` once the subscription is confirmed.
    pub(crate) ready: watch::Sender<bool>,
}

/// Connects to a single Redis.
async fn connect_single(
    config: &RedisConfig,
    pushes: mpsc::UnboundedSender<::redis::PushInfo>,
) -> BackendResult<Conn> {
    let bad_url = |e: RedisError| BackendError::Other(format!("redis url {:?}: {e}", config.url));
    // RESP3, so that pub/sub messages arrive on the command connection
    // as pushes and channels can be (un)subscribed as interest changes.
    let info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(bad_url)?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = ::redis::Client::open(info.set_redis_settings(settings)).map_err(bad_url)?;
    let manager_config = ConnectionManagerConfig::new()
        .set_push_sender(pushes)
        .set_response_timeout(Some(config.response_timeout))
        .set_connection_timeout(Some(config.response_timeout))
        // Fail fast while Redis is away: requests get a clear error at
        // once instead of waiting through many reconnect attempts; the
        // maintenance task keeps retrying with its own backoff.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500));
    let manager = ConnectionManager::new_with_config(client, manager_config)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(Conn::Single(manager))
}

/// Connects to a Redis Cluster through its seed nodes.
async fn connect_cluster(
    config: &RedisConfig,
    pushes: mpsc::UnboundedSender<::redis::PushInfo>,
) -> BackendResult<Conn> {
    let client = ClusterClient::builder(config.cluster_nodes.clone())
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(pushes)
        .response_timeout(config.response_timeout)
        .connection_timeout(config.response_timeout)
        // As on a single server: fail fast, the maintenance task retries.
        .retries(1)
        .build()
        .map_err(|e| {
            BackendError::Other(format!("redis cluster {:?}: {e}", config.cluster_nodes))
        })?;
    let conn = client
        .get_async_connection()
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(Conn::Cluster(conn))
}

/// A Redis error as a backend error; connection trouble is `Unavailable`.
fn unavailable(e: &RedisError) -> BackendError {
    if is_outage(e) {
        BackendError::Unavailable(format!("redis: {e}"))
    } else {
        BackendError::Other(format!("redis: {e}"))
    }
}

fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ::redis::ErrorKind::ClusterConnectionNotFound
                | ::redis::ErrorKind::Server(::redis::ServerErrorKind::MasterDown)
        )
}

fn millis(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

impl Inner {
    pub(crate) fn mirror(&self) -> MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Maps a failure, flagging a resync when Redis is unreachable.
    pub(crate) fn fail(&self, e: RedisError) -> BackendError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let err = unavailable(&e);
        if matches!(err, BackendError::Unavailable(_)) {
            self.needs_resync.store(true, Ordering::Relaxed);
        }
        err
    }

    /// Runs a script; the prefix is already its first argument.
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> BackendResult<T> {
        let mut conn = self.conn.clone();
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))
    }

    /// Runs one plain command.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &::redis::Cmd) -> BackendResult<T> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.map_err(|e| self.fail(e))
    }

    /// A room script on `room`'s bucket, with `args` after the room.
    pub(crate) fn room_invocation<'a>(
        &self,
        script: &'a ::redis::Script,
        room: &str,
        args: &[&str],
    ) -> ScriptInvocation<'a> {
        let mut inv = self.bucket_invocation(script, keys::bucket(room));
        inv.arg(room);
        for arg in args {
            inv.arg(*arg);
        }
        inv
    }

    /// A room script on one bucket, without arguments of its own yet.
    pub(crate) fn bucket_invocation<'a>(
        &self,
        script: &'a ::redis::Script,
        bucket: u32,
    ) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.keys.expiry(bucket))
            .arg(&self.keys.prefix)
            .arg(bucket)
            .arg(self.publish_command);
        inv
    }

    /// An instance-registry script with `args`.
    pub(crate) fn registry_invocation<'a>(
        &self,
        script: &'a ::redis::Script,
        args: &[&str],
    ) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.keys.instances()).key(self.keys.sweeping());
        for arg in args {
            inv.arg(*arg);
        }
        inv
    }

    /// Records that `conn` lives on this instance.
    pub(crate) async fn register(&self, conn: &str) -> BackendResult<()> {
        let mut cmd = ::redis::cmd("SADD");
        cmd.arg(self.keys.instance_connections(&self.instance))
            .arg(conn);
        self.query::<i64>(&cmd).await.map(|_| ())
    }

    /// Adds `conn` to `room`; `true` if it was not a member. The
    /// connection's side first, so that a drop always finds the room.
    pub(crate) async fn join(&self, room: &str, conn: &str) -> BackendResult<bool> {
        let mut cmd = ::redis::cmd("SADD");
        cmd.arg(self.keys.connection_rooms(conn)).arg(room);
        self.query::<i64>(&cmd).await?;
        let mut cmd = ::redis::cmd("SADD");
        cmd.arg(self.keys.room(room)).arg(conn);
        Ok(self.query::<i64>(&cmd).await? == 1)
    }

    /// Takes `conn` out of `room`; `true` if it was a member.
    pub(crate) async fn leave(&self, room: &str, conn: &str) -> BackendResult<bool> {
        let mut cmd = ::redis::cmd("SREM");
        cmd.arg(self.keys.room(room)).arg(conn);
        let removed = self.query::<i64>(&cmd).await? == 1;
        let mut cmd = ::redis::cmd("SREM");
        cmd.arg(self.keys.connection_rooms(conn)).arg(room);
        self.query::<i64>(&cmd).await?;
        Ok(removed)
    }

    /// Forgets a connection that is gone (closed, or its instance `owner`
    /// died): it leaves every room, with a `leave` where it was present,
    /// and its metadata and registration go. Each step is idempotent and
    /// the connection's room list goes last, so a drop cut short can be
    /// run again.
    pub(crate) async fn drop_connection(&self, conn: &str, owner: &str) -> BackendResult<()> {
        let mut cmd = ::redis::cmd("SMEMBERS");
        cmd.arg(self.keys.connection_rooms(conn));
        let rooms: Vec<String> = self.query(&cmd).await?;
        for room in &rooms {
            self.run::<i64>(&self.room_invocation(&scripts::DROP_MEMBER, room, &[conn]))
                .await?;
        }
        let mut cmd = ::redis::cmd("HDEL");
        cmd.arg(self.keys.metadata(conn)).arg(conn);
        self.query::<i64>(&cmd).await?;
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(self.keys.connection_rooms(conn));
        self.query::<i64>(&cmd).await?;
        let mut cmd = ::redis::cmd("SREM");
        cmd.arg(self.keys.instance_connections(owner)).arg(conn);
        self.query::<i64>(&cmd).await.map(|_| ())
    }

    /// Registers (or re-registers) this instance: the time since its
    /// previous heartbeat, `None` if it was not registered.
    pub(crate) async fn heartbeat(&self) -> BackendResult<Option<Duration>> {
        let inv = self.registry_invocation(&scripts::HEARTBEAT, &[&self.instance]);
        let gap: i64 = self.run(&inv).await?;
        if gap == -2 {
            // Swept as dead and the sweep is still running: wait for it to
            // finish before writing anything back.
            return Err(BackendError::Unavailable(
                "redis: this instance is being swept as dead; waiting".into(),
            ));
        }
        Ok(u64::try_from(gap).ok().map(Duration::from_millis))
    }

    /// Hands an update to this instance's subscribers.
    pub(crate) fn deliver_local(&self, update: &PresenceUpdate) {
        let sinks = self.sinks.read().unwrap_or_else(|p| p.into_inner());
        for sink in sinks.iter() {
            sink.deliver(update);
        }
    }

    /// Sends updates to the other instances only, each on its room's
    /// channel: one pipeline per room (in order), all at once.
    pub(crate) async fn publish_remote(&self, updates: &[PresenceUpdate]) -> BackendResult<()> {
        let mut pipes: HashMap<&str, ::redis::Pipeline> = HashMap::new();
        for update in updates {
            let json = serde_json::to_string(update)
                .map_err(|e| BackendError::Other(format!("encoding an update: {e}")))?;
            pipes
                .entry(update.room_name())
                .or_insert_with(::redis::pipe)
                .cmd(self.publish_command)
                .arg(self.keys.room_channel(update.room_name()))
                .arg(format!("{}|{json}", self.instance))
                .ignore();
        }
        let sends = pipes.values().map(|pipe| {
            let mut conn = self.conn.clone();
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        for result in futures_util::future::join_all(sends).await {
            result.map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Writes one local connection to Redis; see [`tasks`] for when.
    pub(crate) async fn write_conn(
        &self,
        conn: &str,
        local: &LocalConn,
        announce: bool,
    ) -> BackendResult<Vec<PresenceUpdate>> {
        let mut updates = Vec::new();
        let now = Instant::now();
        self.register(conn).await?;
        if let Some(metadata) = &local.metadata {
            let mut cmd = ::redis::cmd("HSET");
            cmd.arg(self.keys.metadata(conn))
                .arg(conn)
                .arg(metadata.to_string());
            self.query::<i64>(&cmd).await?;
        }
        for room in &local.rooms {
            self.join(room, conn).await?;
        }
        for (room, ttl) in &local.present {
            let ttl = millis(*ttl).to_string();
            let added: i64 = self
                .run(&self.room_invocation(&scripts::MARK_PRESENT, room, &[conn, &ttl]))
                .await?;
            if added == 1 && announce {
                updates.push(PresenceUpdate::Join {
                    connection_id: conn.to_string(),
                    room_name: room.clone(),
                    timestamp: mesh_protocol::now_millis(),
                });
                if let Some((state, _)) = local.states.get(room) {
                    updates.push(PresenceUpdate::State {
                        connection_id: conn.to_string(),
                        room_name: room.clone(),
                        state: Some(state.clone()),
                        timestamp: mesh_protocol::now_millis(),
                    });
                }
            }
        }
        for (room, (state, expires)) in &local.states {
            let left = match expires {
                Some(at) if *at <= now => continue,
                Some(at) => Some(*at - now),
                None => None,
            };
            let ms = millis(left).to_string();
            self.run::<i64>(&self.room_invocation(
                &scripts::SET_STATE,
                room,
                &[conn, &state.to_string(), &ms],
            ))
            .await?;
        }
        Ok(updates)
    }

    /// Combines a value with one field of a metadata hash without losing a
    /// concurrent writer's change (compare-and-set, retried).
    /// Nothing is written when the result would be over `max_bytes`.
    async fn merge_field(
        &self,
        hash: &str,
        field: &str,
        value: Value,
        strategy: Strategy,
        max_bytes: Option<usize>,
    ) -> BackendResult<Value> {
        if matches!(strategy, Strategy::Replace) {
            let text = value.to_string();
            check_len(text.len(), max_bytes)?;
            let mut cmd = ::redis::cmd("HSET");
            cmd.arg(hash).arg(field).arg(text);
            self.query::<i64>(&cmd).await?;
            return Ok(value);
        }
        for _ in 0..32 {
            let mut get = ::redis::cmd("HGET");
            get.arg(hash).arg(field);
            let old_text: Option<String> = self.query(&get).await?;
            let old = old_text
                .as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok());
            let new = strategy.apply(old, value.clone());
            let new_text = new.to_string();
            check_len(new_text.len(), max_bytes)?;
            let had = if old_text.is_some() { "1" } else { "0" };
            let mut inv = scripts::COMPARE_AND_SET.prepare_invoke();
            inv.key(hash)
                .arg(field)
                .arg(had)
                .arg(old_text.as_deref().unwrap_or(""))
                .arg(&new_text);
            let written: i64 = self.run(&inv).await?;
            if written == 1 {
                return Ok(new);
            }
        }
        Err(BackendError::Other(
            "metadata changed concurrently too often; try again".into(),
        ))
    }
}

fn parse_json(text: &str, what: &str) -> Option<Value> {
    match serde_json::from_str(text) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unreadable {what} in redis");
            None
        }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    async fn attach(&self, sink: Arc<dyn UpdateSink>) -> BackendResult<()> {
        self.inner
            .sinks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(sink);
        Ok(())
    }

    async fn watch_room(&self, room: &str) -> BackendResult<()> {
        let inner = &self.inner;
        let mut ready = {
            let mut watched = inner.watched.lock().unwrap_or_else(|p| p.into_inner());
            match watched.get_mut(room) {
                Some(w) => {
                    w.count += 1;
                    w.ready.subscribe()
                }
                None => {
                    let (ready, rx) = watch::channel(false);
                    // Sent under the lock, so that the subscriber task sees
                    // every room's subscribes and unsubscribes in order.
                    let _ = inner.subscriptions.send(tasks::Subscription::Subscribe {
                        room: room.to_string(),
                        ready: ready.clone(),
                    });
                    watched.insert(room.to_string(), Watched { count: 1, ready });
                    rx
                }
            }
        };
        let confirmed = tokio::time::timeout(inner.config.response_timeout, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        if confirmed {
            Ok(())
        } else {
            Err(BackendError::Unavailable(format!(
                "redis: could not subscribe to room {room:?}"
            )))
        }
    }

    fn unwatch_room(&self, room: &str) {
        let inner = &self.inner;
        let mut watched = inner.watched.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = watched.get_mut(room) else {
            return;
        };
        w.count -= 1;
        if w.count == 0 {
            watched.remove(room);
            let _ = inner.subscriptions.send(tasks::Subscription::Unsubscribe {
                room: room.to_string(),
            });
        }
    }

    async fn publish(&self, update: PresenceUpdate) -> BackendResult<()> {
        let inner = &self.inner;
        inner.deliver_local(&update);
        // The publisher task sends it on, batching with others; the caller
        // does not wait for Redis.
        if let Err(unsent) = inner.outgoing.send(update) {
            inner.mirror().defer_update(unsent.0);
        }
        Ok(())
    }

    async fn connection_opened(&self, conn: &str) -> BackendResult<()> {
        let inner = &self.inner;
        inner
            .mirror()
            .conns
            .insert(conn.to_string(), LocalConn::default());
        match inner.register(conn).await {
            // The resync registers it once Redis is back.
            Ok(_) | Err(BackendError::Unavailable(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn join_room(&self, room: &str, conn: &str) -> BackendResult<bool> {
        let inner = &self.inner;
        let added = inner.join(room, conn).await?;
        if let Some(local) = inner.mirror().conn(conn) {
            local.rooms.insert(room.to_string());
        }
        Ok(added)
    }

    async fn leave_room(&self, room: &str, conn: &str) -> BackendResult<bool> {
        let inner = &self.inner;
        let was_local = inner
            .mirror()
            .conn(conn)
            .map(|local| local.rooms.remove(room));
        match inner.leave(room, conn).await {
            // After Redis lost its data, the mirror still knows.
            Ok(removed) => Ok(removed || was_local == Some(true)),
            Err(BackendError::Unavailable(_)) if was_local.is_some() => {
                inner.mirror().defer(Pending::Leave {
                    room: room.to_string(),
                    conn: conn.to_string(),
                });
                Ok(was_local.unwrap_or(false))
            }
            Err(e) => Err(e),
        }
    }

    async fn room_members(&self, room: &str) -> BackendResult<Vec<String>> {
        let mut cmd = ::redis::cmd("SMEMBERS");
        cmd.arg(self.inner.keys.room(room));
        self.inner.query(&cmd).await
    }

    async fn connection_rooms(&self, conn: &str) -> BackendResult<Vec<String>> {
        let mut cmd = ::redis::cmd("SMEMBERS");
        cmd.arg(self.inner.keys.connection_rooms(conn));
        self.inner.query(&cmd).await
    }

    async fn mark_present(
        &self,
        room: &str,
        conn: &str,
        ttl: Option<Duration>,
    ) -> BackendResult<bool> {
        let inner = &self.inner;
        let ms = millis(ttl).to_string();
        let added: i64 = inner
            .run(&inner.room_invocation(&scripts::MARK_PRESENT, room, &[conn, &ms]))
            .await?;
        if let Some(local) = inner.mirror().conn(conn) {
            local.present.insert(room.to_string(), ttl);
        }
        Ok(added == 1)
    }

    async fn refresh_presence(&self, room: &str, conn: &str, ttl: Duration) -> BackendResult<bool> {
        let inner = &self.inner;
        let ms = millis(Some(ttl)).to_string();
        let present: i64 = inner
            .run(&inner.room_invocation(&scripts::REFRESH, room, &[conn, &ms]))
            .await?;
        if present == 0 {
            // Lapsed: someone announced the leave; forget it here too so a
            // resync does not bring it back.
            if let Some(local) = inner.mirror().conn(conn) {
                local.present.remove(room);
                local.states.remove(room);
            }
        }
        Ok(present == 1)
    }

    async fn mark_absent(&self, room: &str, conn: &str) -> BackendResult<bool> {
        let inner = &self.inner;
        let was_local = inner.mirror().conn(conn).map(|local| {
            local.states.remove(room);
            local.present.remove(room).is_some()
        });
        match inner
            .run::<i64>(&inner.room_invocation(&scripts::MARK_ABSENT, room, &[conn]))
            .await
        {
            Ok(was) => Ok(was == 1 || was_local == Some(true)),
            Err(BackendError::Unavailable(_)) if was_local.is_some() => {
                inner.mirror().defer(Pending::Absent {
                    room: room.to_string(),
                    conn: conn.to_string(),
                });
                Ok(was_local.unwrap_or(false))
            }
            Err(e) => Err(e),
        }
    }

    async fn present(&self, room: &str) -> BackendResult<Vec<String>> {
        let mut cmd = ::redis::cmd("SMEMBERS");
        cmd.arg(self.inner.keys.present(room));
        self.inner.query(&cmd).await
    }

    async fn set_state(
        &self,
        room: &str,
        conn: &str,
        state: Value,
        expire_after: Option<Duration>,
    ) -> BackendResult<bool> {
        let inner = &self.inner;
        let ms = millis(expire_after).to_string();
        let text = state.to_string();
        let stored: i64 = inner
            .run(&inner.room_invocation(&scripts::SET_STATE, room, &[conn, &text, &ms]))
            .await?;
        if stored == 1 {
            if let Some(local) = inner.mirror().conn(conn) {
                let expires = expire_after.map(|d| Instant::now() + d);
                local.states.insert(room.to_string(), (state, expires));
            }
        }
        Ok(stored == 1)
    }

    async fn clear_state(&self, room: &str, conn: &str) -> BackendResult<bool> {
        let inner = &self.inner;
        let was_local = inner
            .mirror()
            .conn(conn)
            .map(|local| local.states.remove(room).is_some());
        match inner
            .run::<i64>(&inner.room_invocation(&scripts::CLEAR_STATE, room, &[conn]))
            .await
        {
            Ok(was) => Ok(was == 1 || was_local == Some(true)),
            Err(BackendError::Unavailable(_)) if was_local.is_some() => {
                inner.mirror().defer(Pending::ClearState {
                    room: room.to_string(),
                    conn: conn.to_string(),
                });
                Ok(was_local.unwrap_or(false))
            }
            Err(e) => Err(e),
        }
    }

    async fn states(&self, room: &str) -> BackendResult<Map<String, Value>> {
        let mut cmd = ::redis::cmd("HGETALL");
        cmd.arg(self.inner.keys.states(room));
        let raw: Vec<(String, String)> = self.inner.query(&cmd).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(conn, text)| parse_json(&text, "state").map(|v| (conn, v)))
            .collect())
    }

    async fn set_metadata(
        &self,
        conn: &str,
        value: Value,
        strategy: Strategy,
        max_bytes: Option<usize>,
    ) -> BackendResult<Value> {
        let inner = &self.inner;
        let stored = inner
            .merge_field(&inner.keys.metadata(conn), conn, value, strategy, max_bytes)
            .await?;
        if let Some(local) = inner.mirror().conn(conn) {
            local.metadata = Some(stored.clone());
        }
        Ok(stored)
    }

    async fn get_metadata(&self, conn: &str) -> BackendResult<Option<Value>> {
        let mut cmd = ::redis::cmd("HGET");
        cmd.arg(self.inner.keys.metadata(conn)).arg(conn);
        let text: Option<String> = self.inner.query(&cmd).await?;
        Ok(text.and_then(|t| parse_json(&t, "metadata")))
    }

    async fn get_metadata_many(&self, conns: &[String]) -> BackendResult<Vec<Option<Value>>> {
        if conns.is_empty() {
            return Ok(Vec::new());
        }
        // One HMGET per metadata bucket, all at once.
        let inner = &self.inner;
        let mut by_bucket: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, conn) in conns.iter().enumerate() {
            by_bucket
                .entry(inner.keys.metadata(conn))
                .or_default()
                .push(i);
        }
        let reads = by_bucket.iter().map(|(hash, indices)| async move {
            let mut cmd = ::redis::cmd("HMGET");
            cmd.arg(hash);
            for &i in indices {
                cmd.arg(&conns[i]);
            }
            let texts: Vec<Option<String>> = inner.query(&cmd).await?;
            Ok::<_, BackendError>((indices, texts))
        });
        let mut out = vec![None; conns.len()];
        for read in futures_util::future::join_all(reads).await {
            let (indices, texts) = read?;
            for (&i, text) in indices.iter().zip(texts) {
                out[i] = text.and_then(|t| parse_json(&t, "metadata"));
            }
        }
        Ok(out)
    }

    /// The server calls this when one of its connections closed (after it
    /// left its rooms), so for a local connection it forgets the connection
    /// entirely, including its registration on this instance.
    async fn remove_metadata(&self, conn: &str) -> BackendResult<()> {
        let inner = &self.inner;
        let was_local = inner.mirror().conns.remove(conn).is_some();
        if !was_local {
            let mut cmd = ::redis::cmd("HDEL");
            cmd.arg(inner.keys.metadata(conn)).arg(conn);
            return inner.query::<i64>(&cmd).await.map(|_| ());
        }
        match inner.drop_connection(conn, &inner.instance).await {
            Ok(_) => Ok(()),
            Err(BackendError::Unavailable(_)) => {
                inner.mirror().defer(Pending::Drop {
                    conn: conn.to_string(),
                });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn set_room_metadata(
        &self,
        room: &str,
        value: Value,
        strategy: Strategy,
    ) -> BackendResult<Value> {
        let inner = &self.inner;
        inner
            .merge_field(&inner.keys.room_metadata(room), room, value, strategy, None)
            .await
    }

    async fn get_room_metadata(&self, room: &str) -> BackendResult<Option<Value>> {
        let mut cmd = ::redis::cmd("HGET");
        cmd.arg(self.inner.keys.room_metadata(room)).arg(room);
        let text: Option<String> = self.inner.query(&cmd).await?;
        Ok(text.and_then(|t| parse_json(&t, "room metadata")))
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            messages_received: self.inner.received.load(Ordering::Relaxed),
            errors: self.inner.errors.load(Ordering::Relaxed),
        }
    }
}
