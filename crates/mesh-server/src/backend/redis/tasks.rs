//! The two background tasks of a Redis backend instance.
//!
//! * The **listener** owns the pub/sub connection: it delivers other
//!   instances' updates to the local subscribers, and reconnects with
//!   backoff when the connection drops (flagging a resync).
//! * The **maintainer** heartbeats, sweeps dead instances, claims due
//!   expiries, and resynchronises after an outage. While Redis is away it
//!   retries with backoff and logs once when the outage starts and once
//!   when it ends.
//!
//! Both hold only a weak reference to the backend and stop when it is
//! dropped.

use super::mirror::{LocalConn, Pending};
use super::{scripts, Inner};
use crate::backend::{BackendError, BackendResult};
use futures_util::StreamExt;
use mesh_protocol::PresenceUpdate;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// Longest pause between two attempts to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Most expiries claimed by one script run.
const PURGE_BATCH: u32 = 500;
/// How long a swept instance's marker stays, in seconds.
const SWEPT_MARKER_TTL_S: u64 = 3600;

/// Starts both tasks; returns once the listener is subscribed, so that no
/// update published after the backend is built can be missed.
pub(super) async fn spawn(
    inner: &Arc<Inner>,
    stopped: watch::Receiver<()>,
    outgoing: mpsc::UnboundedReceiver<PresenceUpdate>,
) -> BackendResult<()> {
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(listen(
        Arc::downgrade(inner),
        inner.client.clone(),
        inner.keys.updates_channel(),
        inner.instance.clone(),
        inner.config.response_timeout,
        stopped.clone(),
        ready_tx,
    ));
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(BackendError::Other("redis listener ended".into())),
    }
    tokio::spawn(maintain(Arc::downgrade(inner), stopped));
    tokio::spawn(publish(Arc::downgrade(inner), outgoing));
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

async fn listen(
    inner: Weak<Inner>,
    client: ::redis::Client,
    channel: String,
    instance: String,
    timeout: Duration,
    mut stopped: watch::Receiver<()>,
    ready: oneshot::Sender<BackendResult<()>>,
) {
    let mut ready = Some(ready);
    let mut backoff = MIN_BACKOFF;
    let mut down = false;
    loop {
        let attempt = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(pubsub)) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                } else {
                    tracing::info!(%instance, "redis pub/sub reconnected");
                    // Updates sent meanwhile are lost to us, and Redis may
                    // have restarted empty.
                    if let Some(inner) = inner.upgrade() {
                        inner.needs_resync.store(true, Ordering::Relaxed);
                    }
                }
                if let Some(inner) = inner.upgrade() {
                    inner.subscribed.store(true, Ordering::Relaxed);
                }
                down = false;
                backoff = MIN_BACKOFF;
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        _ = stop_requested(&mut stopped) => return,
                        msg = messages.next() => match msg {
                            Some(msg) => {
                                let Some(inner) = inner.upgrade() else { return };
                                on_message(&inner, &instance, msg.get_payload_bytes());
                            }
                            None => break,
                        },
                    }
                }
                tracing::warn!(%instance, "redis pub/sub connection lost; reconnecting");
                if let Some(inner) = inner.upgrade() {
                    inner.subscribed.store(false, Ordering::Relaxed);
                    inner.needs_resync.store(true, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(super::unavailable(&e)));
                    return;
                }
                if !down {
                    tracing::warn!(%instance, error = %e, "redis pub/sub unavailable; retrying");
                    down = true;
                }
            }
            Err(_) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(BackendError::Unavailable(
                        "redis: timed out subscribing".into(),
                    )));
                    return;
                }
                if !down {
                    tracing::warn!(%instance, "redis pub/sub timed out; retrying");
                    down = true;
                }
            }
        }
        if inner.strong_count() == 0 {
            return;
        }
        tokio::select! {
            _ = stop_requested(&mut stopped) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One pub/sub message: `origin|update-json`. Our own are skipped (we
/// delivered them when publishing); malformed ones are logged and dropped.
fn on_message(inner: &Inner, instance: &str, payload: &[u8]) {
    let Ok(text) = std::str::from_utf8(payload) else {
        tracing::warn!("ignoring a non-UTF-8 message on the updates channel");
        return;
    };
    let Some((origin, json)) = text.split_once('|') else {
        tracing::warn!("ignoring a malformed message on the updates channel");
        return;
    };
    if origin == instance {
        return;
    }
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
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let poll = strong.config.expiry_poll;
        let round = async {
            if strong.needs_resync.swap(false, Ordering::Relaxed) {
                if let Err(e) = resync(&strong, registration_lost).await {
                    strong.needs_resync.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                registration_lost = false;
            }
            if Instant::now() >= next_heartbeat {
                if strong.heartbeat().await? {
                    tracing::warn!(instance = %strong.instance, "this instance was not registered in redis; resynchronising");
                    registration_lost = true;
                    strong.needs_resync.store(true, Ordering::Relaxed);
                    return Ok(Duration::ZERO);
                }
                sweep(&strong).await?;
                next_heartbeat = Instant::now() + strong.config.heartbeat_interval;
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
                wait.min(poll)
            }
            Err(e) => {
                if !outage {
                    tracing::warn!(instance = %strong.instance, error = %e, "redis unavailable; keeping local connections and retrying");
                    outage = true;
                }
                strong.needs_resync.store(true, Ordering::Relaxed);
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
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

/// Sweeps instances that stopped heartbeating.
async fn sweep(inner: &Inner) -> BackendResult<()> {
    let dead_after = inner.config.dead_after.as_millis().to_string();
    let marker_ttl = SWEPT_MARKER_TTL_S.to_string();
    let inv = inner.invocation(
        &scripts::SWEEP,
        &[&inner.instance, &dead_after, &marker_ttl],
    );
    let swept: Vec<String> = inner.run(&inv).await?;
    for dead in swept {
        tracing::info!(instance = %inner.instance, %dead, "swept a dead instance and its connections");
    }
    Ok(())
}

/// Claims due expiries; returns how long until the next one.
async fn purge(inner: &Inner) -> BackendResult<Duration> {
    let batch = PURGE_BATCH.to_string();
    let inv = inner.invocation(&scripts::PURGE, &[&batch]);
    let (claimed, wait): (u32, i64) = inner.run(&inv).await?;
    if claimed >= PURGE_BATCH {
        return Ok(Duration::ZERO);
    }
    Ok(match u64::try_from(wait) {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => inner.config.expiry_poll,
    })
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
            "redis pub/sub not connected yet".into(),
        ));
    }
    let mut getdel = ::redis::cmd("GETDEL");
    getdel.arg(inner.keys.instance_swept(&inner.instance));
    let swept: Option<String> = inner.query(&getdel).await?;
    let lost = inner.heartbeat().await? || registration_lost;
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
        inner
            .run::<i64>(&inner.invocation(&scripts::DROP_CONNECTION, &[gone]))
            .await?;
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
    let inv = match item {
        Pending::Leave { room, conn } => inner.invocation(&scripts::LEAVE, &[room, conn]),
        Pending::Absent { room, conn } => inner.invocation(&scripts::MARK_ABSENT, &[room, conn]),
        Pending::ClearState { room, conn } => {
            inner.invocation(&scripts::CLEAR_STATE, &[room, conn])
        }
        Pending::Drop { conn } => inner.invocation(&scripts::DROP_CONNECTION, &[conn]),
    };
    inner.run::<i64>(&inv).await.map(|_| ())
}
