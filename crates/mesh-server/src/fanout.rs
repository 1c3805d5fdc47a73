//! Outgoing messages: each connection's bounded outbox, and the local
//! subscriber registry that turns one presence update into one encoded
//! frame shared by every subscriber.

use crate::backend::UpdateSink;
use mesh_protocol::PresenceUpdate;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The sending side of a connection's outgoing queue.
///
/// The queue is bounded in bytes, not messages: pushes are never awaited
/// (a fan-out must not wait for its slowest subscriber), so a push that
/// would exceed the bound is dropped and the connection is flagged as a
/// slow consumer, which its task then closes.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Message>,
    shared: Arc<OutboxState>,
}

pub(crate) struct OutboxState {
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    overflow: Notify,
}

impl OutboxState {
    /// The writer reports bytes that left the queue.
    pub(crate) fn drained(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Resolves once the queue has overflowed.
    pub(crate) async fn overflowed(&self) {
        if self.overflowed.load(Ordering::Acquire) {
            return;
        }
        self.overflow.notified().await;
    }
}

impl Outbox {
    /// A new outbox bounded to `limit` queued bytes, and its receiving side.
    pub(crate) fn new(limit: usize) -> (Self, mpsc::UnboundedReceiver<Message>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(OutboxState {
            queued: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            overflow: Notify::new(),
        });
        (Outbox { tx, shared }, rx)
    }

    pub(crate) fn state(&self) -> Arc<OutboxState> {
        self.shared.clone()
    }

    /// Queues a message; `false` if the connection is gone or too far
    /// behind (it is then flagged for closing).
    pub(crate) fn push(&self, msg: Message) -> bool {
        if self.shared.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let len = msg.len();
        let before = self.shared.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > self.shared.limit {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            self.shared.overflowed.store(true, Ordering::Release);
            self.shared.overflow.notify_one();
            return false;
        }
        if self.tx.send(msg).is_err() {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Queues a text frame.
    pub(crate) fn push_text(&self, text: String) -> bool {
        self.push(Message::Text(text.into()))
    }
}

/// This instance's presence subscribers, by room. The backend delivers
/// every update here; the update is encoded once and the same bytes are
/// queued to each local subscriber of its room.
#[derive(Default)]
pub(crate) struct Subscribers {
    rooms: RwLock<HashMap<String, HashMap<String, Outbox>>>,
    /// Set when the server shuts down: nothing more is delivered here.
    closed: AtomicBool,
}

impl Subscribers {
    /// Stops local delivery for good (the server is shutting down). Every
    /// local subscriber is being closed too: hearing the others leave one
    /// by one first would only make each client's list empty out before its
    /// own socket closes, and then flicker back when the room reconnects.
    /// Other instances still hear the leaves through the backend.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.rooms
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Subscribes a connection; `false` if it already was.
    pub(crate) fn add(&self, room: &str, conn: &str, outbox: Outbox) -> bool {
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        rooms
            .entry(room.to_string())
            .or_default()
            .insert(conn.to_string(), outbox)
            .is_none()
    }

    /// Unsubscribes a connection; `false` if it was not subscribed.
    pub(crate) fn remove(&self, room: &str, conn: &str) -> bool {
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        let Some(subs) = rooms.get_mut(room) else {
            return false;
        };
        let removed = subs.remove(conn).is_some();
        if subs.is_empty() {
            rooms.remove(room);
        }
        removed
    }
}

impl UpdateSink for Subscribers {
    fn deliver(&self, update: &PresenceUpdate) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        let Some(subs) = rooms.get(update.room_name()) else {
            return;
        };
        // Encoded once; each clone below shares the same bytes.
        let text = Utf8Bytes::from(update.to_frame_text());
        for outbox in subs.values() {
            outbox.push(Message::Text(text.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outbox_overflow_flags_the_connection() {
        let (outbox, mut rx) = Outbox::new(10);
        assert!(outbox.push_text("12345".into()));
        assert!(!outbox.push_text("1234567".into()));
        // Flagged: later pushes are refused even if they would fit.
        assert!(!outbox.push_text("1".into()));
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            outbox.state().overflowed(),
        )
        .await
        .unwrap();
        assert_eq!(rx.recv().await.unwrap().len(), 5);
    }

    #[tokio::test]
    async fn one_encoding_shared_by_all_subscribers() {
        let subs = Subscribers::default();
        let (a, mut ra) = Outbox::new(1 << 20);
        let (b, mut rb) = Outbox::new(1 << 20);
        subs.add("r", "a", a);
        subs.add("r", "b", b);
        subs.deliver(&PresenceUpdate::Join {
            connection_id: "x".into(),
            room_name: "r".into(),
            timestamp: 1,
        });
        let (Message::Text(ta), Message::Text(tb)) =
            (ra.recv().await.unwrap(), rb.recv().await.unwrap())
        else {
            panic!("text frames expected");
        };
        assert_eq!(ta, tb);
        // Same allocation, not two encodings.
        assert_eq!(ta.as_str().as_ptr(), tb.as_str().as_ptr());
        assert!(subs.remove("r", "a"));
        assert!(!subs.remove("r", "a"));
    }
}
