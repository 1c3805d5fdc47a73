//! The local subscriber registry: turns one presence update into one
//! encoded frame shared by every subscriber on this instance.

use crate::backend::UpdateSink;
use crate::outbox::{framed_text, Kind, Outbox, Outgoing};
use mesh_protocol::PresenceUpdate;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// This instance's presence subscribers, by room. The backend delivers
/// every update here; the update is encoded once and the same bytes are
/// queued to each local subscriber of its room.
pub(crate) struct Subscribers {
    rooms: RwLock<HashMap<String, HashMap<String, Outbox>>>,
    /// Bumped once per fan-out by the number of subscribers reached.
    deliveries: IntCounter,
    /// Set when the server shuts down: nothing more is delivered here.
    closed: AtomicBool,
}

impl Subscribers {
    /// An empty registry counting its deliveries in `deliveries`.
    pub(crate) fn new(deliveries: IntCounter) -> Self {
        Subscribers {
            rooms: RwLock::default(),
            deliveries,
            closed: AtomicBool::new(false),
        }
    }

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
        // Encoded and framed once; each clone below shares the same bytes.
        let frame = framed_text(&update.to_frame_text());
        for outbox in subs.values() {
            outbox.push(Outgoing::shared(Kind::Push, frame.clone()));
        }
        self.deliveries.inc_by(subs.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_encoding_shared_by_all_subscribers() {
        let subs = Subscribers::new(crate::metrics::deliveries_counter());
        let (a, b) = (Outbox::new(1 << 20), Outbox::new(1 << 20));
        subs.add("r", "a", a.clone());
        subs.add("r", "b", b.clone());
        subs.deliver(&PresenceUpdate::Join {
            connection_id: "x".into(),
            room_name: "r".into(),
            timestamp: 1,
        });
        let (fa, fb) = (a.take_one().await, b.take_one().await);
        // Same allocation, not two encodings.
        assert_eq!(fa.first_part().as_ptr(), fb.first_part().as_ptr());
        assert!(subs.remove("r", "a"));
        assert!(!subs.remove("r", "a"));
    }
}
