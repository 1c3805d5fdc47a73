//! The background tasks of a Redis backend instance.
//!
//! * The **listener** delivers other instances' updates, which arrive as
//!   RESP3 pushes, to the local subscribers; a lost connection flags a
//!   resync.
//! * The **subscriber** subscribes to and unsubscribes from room channels
//!   as local interest comes and goes, one change at a time.
//! * The **publisher** sends this instance's updates to the others in
//!   pipelines.
//! * The **maintainer** heartbeats, sweeps dead instances, claims due
//!   expiries, and resynchronises after an outage. While Redis is away it
//!   retries with backoff and logs once when the outage starts and once
//!   when it ends.
//!
//! All hold only a weak reference to the backend and stop when it is
//! dropped.

use super::mirror::{LocalConn, Pending};
use super::{keys, scripts, Inner};
use crate::backend::{BackendError, BackendResult};
use ::redis::{PushInfo, PushKind, Value};
use mesh_protocol::PresenceUpdate;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Longest pause between two attempts to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Most expiries claimed by one script run.
const PURGE_BATCH: u32 = 500;
/// How long a swept instance's marker stays, in seconds.
const SWEPT_MARKER_TTL_S: u64 = 3600;

/// Starts the background tasks.
pub(super) fn spawn(
    inner: &Arc<Inner>,
    stopped: watch::Receiver<()>,
    outgoing: mpsc::UnboundedReceiver<PresenceUpdate>,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    subscriptions: mpsc::UnboundedReceiver<Subscription>,
) {
    inner.subscribed.store(true, Ordering::Relaxed);
    tokio::spawn(listen(Arc::downgrade(inner), pushes, stopped.clone()));
    tokio::spawn(subscribe(Arc::downgrade(inner), subscriptions));
    tokio::spawn(maintain(Arc::downgrade(inner), stopped));
    tokio::spawn(publish(Arc::downgrade(inner), outgoing));
}

/// A change to this instance's room subscriptions.
pub(crate) enum Subscription {
    /// Interest in `room` started: subscribe, then tell `ready`.
    Subscribe {
        room: String,
        ready: watch::Sender<bool>,
    },
    /// Interest in `room` ended.
    Unsubscribe { room: String },
    /// The connection was lost: subscribe to every watched room again,
    /// retrying until Redis answers.
    Restore,
}

/// Owns the subscribing: one change at a time, in the order interest
/// changed, so that a room's subscribe and unsubscribe never overtake each
/// other. Ends when the backend is gone.
async fn subscribe(inner: Weak<Inner>, mut changes: mpsc::UnboundedReceiver<Subscription>) {
    while let Some(change) = changes.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut conn = inner.conn.clone();
        match change {
            Subscription::Subscribe { room, ready } => {
                match conn.subscribe(&inner.keys.room_channel(&room)).await {
                    Ok(()) => {
                        ready.send_replace(true);
                    }
                    Err(e) => {
                        inner.subscribed.store(false, Ordering::Relaxed);
                        inner.needs_resync.store(true, Ordering::Relaxed);
                        inner.fail(e);
                        restore_until_done(&inner).await;
                    }
                }
            }
            Subscription::Unsubscribe { room } => {
                if let Err(e) = conn.unsubscribe(&inner.keys.room_channel(&room)).await {
                    tracing::debug!(error = %e, %room, "unsubscribe failed");
                }
            }
            Subscription::Restore => restore_until_done(&inner).await,
        }
    }
}

/// Restores the subscriptions, retrying while Redis is away. Prompt,
/// because updates other instances publish before it are lost to us (the
/// others wait `resync_delay` before replaying theirs).
async fn restore_until_done(inner: &Inner) {
    while !inner.subscribed.load(Ordering::Relaxed) {
        if restore(inner).await.is_ok() {
            return;
        }
        tokio::time::sleep(RESTORE_RETRY).await;
    }
}

/// Pause between two attempts to restore the subscriptions.
const RESTORE_RETRY: Duration = Duration::from_millis(100);

/// Subscribes again to every room this instance has interest in.
async fn restore(inner: &Inner) -> BackendResult<()> {
    let rooms: Vec<(String, watch::Sender<bool>)> = inner
        .watched
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(room, w)| (room.clone(), w.ready.clone()))
        .collect();
    // One channel per command (on a cluster, channels of different slots
    // cannot share one), many commands in flight at once.
    for chunk in rooms.chunks(256) {
        let subscribes = chunk.iter().map(|(room, _)| {
            let mut conn = inner.conn.clone();
            let channel = inner.keys.room_channel(room);
            async move { conn.subscribe(&channel).await }
        });
        for result in futures_util::future::join_all(subscribes).await {
            result.map_err(|e| inner.fail(e))?;
        }
        for (_, ready) in chunk {
            ready.send_replace(true);
        }
    }
    inner.subscribed.store(true, Ordering::Relaxed);
    Ok(())
}

/// Most updates sent in one pipeline.
const PUBLISH_BATCH: usize = 256;

/// Owns the sending of this instance's updates to the others: whatever is
/// queued goes out as one pipeline, in order. What Redis does not take
/// waits in the mirror for the next resync. Ends when the backend is gone
/// (its sender dropped).
async fn publish(inner: Weak<Inner>, mut outgoing: mpsc::UnboundedReceiver<PresenceUpdate>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while outgoing.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(e) = inner.publish_remote(&batch).await {
            tracing::debug!(error = %e, count = batch.len(), "updates queued until redis is back");
            let mut mirror = inner.mirror();
            for update in batch.drain(..) {
                mirror.defer_update(update);
            }
        }
        batch.clear();
    }
}

/// Resolves when the backend was dropped.
async fn stop_requested(stopped: &mut watch::Receiver<()>) {
    while stopped.changed().await.is_ok() {}
}

/// Delivers the room updates other instances publish, which arrive as
/// pushes on the command connection. A lost connection loses the
/// subscriptions and whatever was published meanwhile: the resync restores
/// both (see [`resync`]).
async fn listen(
    inner: Weak<Inner>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let push = tokio::select! {
            _ = stop_requested(&mut stopped) => return,
            push = pushes.recv() => match push {
                Some(push) => push,
                None => return,
            },
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(Value::BulkString(payload)) = push.data.get(1) {
                    on_message(&inner, &inner.instance, payload);
                }
            }
            PushKind::Disconnection => {
                if inner.subscribed.swap(false, Ordering::Relaxed) {
                    tracing::warn!(instance = %inner.instance, "redis connection lost; subscriptions are restored when it is back");
                }
                for w in inner
                    .watched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                {
                    w.ready.send_replace(false);
                }
                inner.needs_resync.store(true, Ordering::Relaxed);
                let _ = inner.subscriptions.send(Subscription::Restore);
            }
            _ => {}
        }
    }
}

/// One pub/sub message: `origin|update-json`. Our own are skipped (we
/// delivered them when publishing); malformed ones are logged and dropped.
fn on_message(inner: &Inner, instance: &str, payload: &[u8]) {
    let Ok(text) = std::str::from_utf8(payload) else {
        tracing::warn!("ignoring a non-UTF-8 message on an updates channel");
        return;
    };
    let Some((origin, json)) = text.split_once('|') else {
        tracing::warn!("ignoring a malformed message on an updates channel");
        return;
    };
    if origin == instance {
        return;
    }
    inner.received.fetch_add(1, Ordering::Relaxed);
    match serde_json::from_str::<PresenceUpdate>(json) {
        Ok(update) => inner.deliver_local(&update),
        Err(e) => tracing::warn!(error = %e, "ignoring an unreadable presence update"),
    }
}

async fn maintain(inner: Weak<Inner>, mut stopped: watch::Receiver<()>) {
    let mut next_heartbeat = Instant::now();
    let mut backoff = MIN_BACKOFF;
    let mut outage = false;
    // Set when a heartbeat found this instance unregistered: Redis lost its
    // data or a survivor swept us. The next resync tells which.
    let mut registration_lost = false;
    // When Redis answers again after an outage, the resync waits a moment
    // (see `resync_delay`); this is when it may run.
    let mut resync_at: Option<Instant> = None;
    // No sweeping before this: see `catch_up`.
    let mut quiet_until = Instant::now();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let config = &strong.config;
        let round = async {
            if Instant::now() >= next_heartbeat {
                match strong.heartbeat().await? {
                    None => {
                        tracing::warn!(instance = %strong.instance, "this instance was not registered in redis; resynchronising");
                        registration_lost = true;
                        strong.needs_resync.store(true, Ordering::Relaxed);
                    }
                    Some(gap) if gap > overdue_after(config) => {
                        // Redis or this instance was paused (or Redis was
                        // away): everyone's heartbeat looks old. Give the
                        // others time to write theirs before judging them.
                        tracing::info!(instance = %strong.instance, ?gap, "own heartbeat was overdue; not sweeping until the others caught up");
                        quiet_until = Instant::now() + catch_up(config);
                    }
                    Some(_) => {}
                }
                next_heartbeat = Instant::now() + config.heartbeat_interval;
            }
            if strong.needs_resync.load(Ordering::Relaxed) {
                let at = *resync_at.get_or_insert_with(|| Instant::now() + resync_delay(config));
                if Instant::now() < at {
                    return Ok(at - Instant::now());
                }
                strong.needs_resync.store(false, Ordering::Relaxed);
                if let Err(e) = resync(&strong, registration_lost).await {
                    strong.needs_resync.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                resync_at = None;
                registration_lost = false;
            }
            if Instant::now() >= quiet_until && !sweep(&strong).await? {
                tracing::info!(instance = %strong.instance, "own heartbeat was overdue at the sweep; not sweeping until the others caught up");
                quiet_until = Instant::now() + catch_up(config);
            }
            purge(&strong).await
        };
        let pause = match round.await {
            Ok(wait) => {
                if outage && !strong.needs_resync.load(Ordering::Relaxed) {
                    tracing::info!(instance = %strong.instance, "redis is back; instance resynchronised");
                    outage = false;
                }
                backoff = MIN_BACKOFF;
                wait.min(config.expiry_poll)
            }
            Err(e) => {
                if !outage {
                    tracing::warn!(instance = %strong.instance, error = %e, "redis unavailable; keeping local connections and retrying");
                    outage = true;
                }
                strong.needs_resync.store(true, Ordering::Relaxed);
                resync_at = None;
                let pause = backoff;
                // Never slower than the heartbeat, so that after an outage
                // every instance heartbeats again well within `catch_up`.
                backoff = (backoff * 2)
                    .min(MAX_BACKOFF)
                    .min(config.heartbeat_interval);
                pause
            }
        };
        drop(strong);
        tokio::select! {
            _ = stop_requested(&mut stopped) => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// How long an instance whose own heartbeat was overdue waits before it
/// sweeps anyone: as long as any instance gets to prove it is alive in
/// normal times, so that every live instance has written a heartbeat since
/// Redis (or this instance) resumed. They retry at least once a heartbeat
/// interval.
fn catch_up(config: &super::RedisConfig) -> Duration {
    config.dead_after
}

/// How long after Redis answers again an instance waits before it
/// resynchronises. Other instances lost their subscriptions in the same
/// outage and restore them within `RESTORE_RETRY`; waiting longer than that
/// means the updates this instance replays reach them.
fn resync_delay(config: &super::RedisConfig) -> Duration {
    config.heartbeat_interval.max(RESTORE_RETRY * 3)
}

/// Sweeps instances that stopped heartbeating; `false` when this
/// instance's own heartbeat was overdue, so nobody was judged.
///
/// The registry script claims each dead instance (for `SWEEP_CLAIM`, taken
/// over by another survivor should this one die meanwhile); then its
/// connections are dropped one by one, each drop idempotent, and the
/// instance is released.
async fn sweep(inner: &Inner) -> BackendResult<bool> {
    let dead_after = inner.config.dead_after.as_millis().to_string();
    let max_gap = overdue_after(&inner.config).as_millis().to_string();
    let claim = SWEEP_CLAIM.as_millis().to_string();
    let inv = inner.registry_invocation(
        &scripts::SWEEP,
        &[&inner.instance, &dead_after, &max_gap, &claim],
    );
    let swept: Vec<String> = inner.run(&inv).await?;
    if swept.first().map(String::as_str) != Some("ok") {
        return Ok(false);
    }
    for dead in &swept[1..] {
        let mut marker = ::redis::cmd("SET");
        marker
            .arg(inner.keys.instance_swept(dead))
            .arg("1")
            .arg("EX")
            .arg(SWEPT_MARKER_TTL_S);
        inner.query::<()>(&marker).await?;
        let mut members = ::redis::cmd("SMEMBERS");
        members.arg(inner.keys.instance_connections(dead));
        let conns: Vec<String> = inner.query(&members).await?;
        for conn in &conns {
            inner.drop_connection(conn, dead).await?;
        }
        let mut done = ::redis::cmd("ZREM");
        done.arg(inner.keys.sweeping()).arg(dead);
        inner.query::<i64>(&done).await?;
        tracing::info!(instance = %inner.instance, %dead, connections = conns.len(), "swept a dead instance and its connections");
    }
    Ok(true)
}

/// How long a survivor's claim on a dead instance lasts before another
/// survivor takes the sweep over.
const SWEEP_CLAIM: Duration = Duration::from_secs(30);

/// A heartbeat this much later than the previous one means Redis or this
/// instance was paused (or Redis was away).
fn overdue_after(config: &super::RedisConfig) -> Duration {
    config.heartbeat_interval * 2
}

/// Claims due expiries in every bucket (all at once); returns how long
/// until the next one.
async fn purge(inner: &Inner) -> BackendResult<Duration> {
    let batch = PURGE_BATCH.to_string();
    let runs = (0..keys::BUCKETS).map(|bucket| {
        let batch = &batch;
        async move {
            let mut inv = inner.bucket_invocation(&scripts::PURGE, bucket);
            inv.arg(batch);
            inner.run::<(u32, i64)>(&inv).await
        }
    });
    let mut next = inner.config.expiry_poll;
    for run in futures_util::future::join_all(runs).await {
        let (claimed, wait) = run?;
        if claimed >= PURGE_BATCH {
            next = Duration::ZERO;
        } else if let Ok(ms) = u64::try_from(wait) {
            next = next.min(Duration::from_millis(ms));
        }
    }
    Ok(next)
}

/// Brings Redis back in line with this instance after an outage: replays
/// removals made meanwhile, drops connections that closed, writes every
/// local connection again, and sends the updates other instances missed.
///
/// When presence had vanished while this instance stayed registered (it
/// lapsed) or after a survivor swept this instance, other instances were
/// told it left, so the restored presence is announced again. After Redis
/// lost everything nobody was told anything, and nothing is announced.
async fn resync(inner: &Inner, registration_lost: bool) -> BackendResult<()> {
    if !inner.subscribed.load(Ordering::Relaxed) {
        return Err(BackendError::Unavailable(
            "redis subscriptions not restored yet".into(),
        ));
    }
    let mut getdel = ::redis::cmd("GETDEL");
    getdel.arg(inner.keys.instance_swept(&inner.instance));
    let swept: Option<String> = inner.query(&getdel).await?;
    let lost = inner.heartbeat().await?.is_none() || registration_lost;
    let announce = swept.is_some() || !lost;

    let pending: Vec<Pending> = inner.mirror().pending.drain(..).collect();
    for (done, item) in pending.iter().enumerate() {
        if let Err(e) = replay(inner, item).await {
            let mut mirror = inner.mirror();
            for item in pending[done..].iter().rev() {
                mirror.pending.push_front(item.clone());
            }
            return Err(e);
        }
    }

    let mut members = ::redis::cmd("SMEMBERS");
    members.arg(inner.keys.instance_connections(&inner.instance));
    let registered: HashSet<String> = inner.query(&members).await?;
    let snapshot = inner.mirror().conns.clone();
    for gone in registered.iter().filter(|c| !snapshot.contains_key(*c)) {
        inner.drop_connection(gone, &inner.instance).await?;
    }

    let mut announcements = Vec::new();
    for (conn, local) in &snapshot {
        let mut written = local.clone();
        // The connection keeps working while we write; write again until
        // what we wrote is what it has (writes are idempotent), undoing
        // removals we raced with.
        for _ in 0..3 {
            announcements.extend(inner.write_conn(conn, &written, announce).await?);
            let current = inner.mirror().conns.get(conn).cloned();
            let Some(current) = current else {
                replay(inner, &Pending::Drop { conn: conn.clone() }).await?;
                break;
            };
            for removal in removals(conn, &written, &current) {
                replay(inner, &removal).await?;
            }
            if current == written {
                break;
            }
            written = current;
        }
    }

    let unsent: Vec<PresenceUpdate> = inner.mirror().unsent.drain(..).collect();
    for (done, chunk) in unsent.chunks(PUBLISH_BATCH).enumerate() {
        if let Err(e) = inner.publish_remote(chunk).await {
            let mut mirror = inner.mirror();
            for update in unsent[done * PUBLISH_BATCH..].iter().rev() {
                mirror.unsent.push_front(update.clone());
            }
            return Err(e);
        }
    }
    for update in &announcements {
        inner.deliver_local(update);
    }
    for chunk in announcements.chunks(PUBLISH_BATCH) {
        inner.publish_remote(chunk).await?;
    }
    tracing::info!(
        instance = %inner.instance,
        connections = snapshot.len(),
        replayed = pending.len() + unsent.len(),
        announced = announcements.len(),
        "resynchronised with redis"
    );
    inner.resyncs.send_modify(|n| *n += 1);
    Ok(())
}

/// What `before` had and `after` no longer has, as removals.
fn removals(conn: &str, before: &LocalConn, after: &LocalConn) -> Vec<Pending> {
    let mut out = Vec::new();
    let item = |room: &String| (room.clone(), conn.to_string());
    for room in before.rooms.difference(&after.rooms) {
        let (room, conn) = item(room);
        out.push(Pending::Leave { room, conn });
    }
    for room in before.present.keys() {
        if !after.present.contains_key(room) {
            let (room, conn) = item(room);
            out.push(Pending::Absent { room, conn });
        } else if before.states.contains_key(room) && !after.states.contains_key(room) {
            let (room, conn) = item(room);
            out.push(Pending::ClearState { room, conn });
        }
    }
    out
}

/// Applies one removal that could not reach Redis when it happened.
async fn replay(inner: &Inner, item: &Pending) -> BackendResult<()> {
    match item {
        Pending::Leave { room, conn } => inner.leave(room, conn).await.map(|_| ()),
        Pending::Absent { room, conn } => inner
            .run::<i64>(&inner.room_invocation(&scripts::MARK_ABSENT, room, &[conn]))
            .await
            .map(|_| ()),
        Pending::ClearState { room, conn } => inner
            .run::<i64>(&inner.room_invocation(&scripts::CLEAR_STATE, room, &[conn]))
            .await
            .map(|_| ()),
        Pending::Drop { conn } => inner.drop_connection(conn, &inner.instance).await,
    }
}
