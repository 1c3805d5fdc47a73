//! The local subscriber registry: turns one presence update into one
//! encoded frame shared by every subscriber on this instance.

use crate::backend::UpdateSink;
use crate::feed::Feed;
use crate::outbox::{framed_text, Outbox};
use mesh_protocol::PresenceUpdate;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// This instance's presence subscribers, by room. The backend delivers
/// every update here; the update is encoded once into the room's feed and
/// each local subscriber of the room is handed its place in that feed.
pub(crate) struct Subscribers {
    rooms: RwLock<HashMap<String, Room>>,
    /// Bumped once per fan-out by the number of subscribers reached.
    deliveries: IntCounter,
    /// Set when the server shuts down: nothing more is delivered here.
    closed: AtomicBool,
}

/// One room's local subscribers and the feed they read.
#[derive(Default)]
struct Room {
    feed: Arc<Feed>,
    subs: HashMap<String, Outbox>,
    /// Held while an update is appended and handed out: the feed keeps one
    /// update in hand at a time, and every subscriber gets the room's
    /// updates in the same order.
    delivering: Mutex<()>,
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
            .subs
            .insert(conn.to_string(), outbox)
            .is_none()
    }

    /// Unsubscribes a connection; `false` if it was not subscribed.
    pub(crate) fn remove(&self, room: &str, conn: &str) -> bool {
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        let Some(r) = rooms.get_mut(room) else {
            return false;
        };
        let removed = r.subs.remove(conn).is_some();
        if r.subs.is_empty() {
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
        let Some(room) = rooms.get(update.room_name()) else {
            return;
        };
        // Encoded and framed once, and kept once, in the room's feed.
        let frame = framed_text(&update.to_frame_text());
        let _one_at_a_time = room
            .delivering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seq = room.feed.append(frame.clone());
        for outbox in room.subs.values() {
            outbox.push_feed(&room.feed, seq, &frame);
        }
        room.feed.handed_out();
        self.deliveries.inc_by(room.subs.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outgoing;

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
        subs.deliver(&PresenceUpdate::Leave {
            connection_id: "x".into(),
            room_name: "r".into(),
            timestamp: 2,
        });
        let (fa, fb) = (a.take_one().await, b.take_one().await);
        let (fa, fb) = (fa.buffers(), fb.buffers());
        // Both updates in one queue entry each, and the same allocations,
        // not two encodings.
        assert_eq!(fa.len(), 2);
        assert_eq!(fa[0].as_ptr(), fb[0].as_ptr());
        assert_eq!(fa[1].as_ptr(), fb[1].as_ptr());
        assert!(subs.remove("r", "a"));
        assert!(!subs.remove("r", "a"));
    }

    /// Updates delivered to one room from several threads at once, while
    /// a subscriber keeps taking and letting go of what it was given (as
    /// its writer does): every subscriber gets every update once, all in
    /// the same order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_updates_reach_everyone_once_in_one_order() {
        const PER_THREAD: u64 = 2_000;
        let subs = Arc::new(Subscribers::new(crate::metrics::deliveries_counter()));
        let outboxes: Vec<Outbox> = (0..3).map(|_| Outbox::new(1 << 30)).collect();
        for (i, outbox) in outboxes.iter().enumerate() {
            subs.add("r", &format!("c{i}"), outbox.clone());
        }
        // The first subscriber drains as it goes; the others fall behind.
        let eager = outboxes[0].clone();
        let total = 2 * PER_THREAD as usize;
        let drain = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < total {
                for item in eager.take_all().await {
                    got.extend(item.buffers());
                }
            }
            got
        });
        let senders: Vec<_> = (0..2u64)
            .map(|t| {
                let subs = subs.clone();
                std::thread::spawn(move || {
                    for n in 0..PER_THREAD {
                        subs.deliver(&PresenceUpdate::Join {
                            connection_id: format!("t{t}"),
                            room_name: "r".into(),
                            timestamp: n,
                        });
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.join().unwrap();
        }
        let mut lists = vec![drain.await.unwrap()];
        for outbox in &outboxes[1..] {
            lists.push(
                outbox
                    .take_all()
                    .await
                    .iter()
                    .flat_map(Outgoing::buffers)
                    .collect(),
            );
        }
        for list in &lists {
            assert_eq!(list.len(), total);
            let distinct: std::collections::HashSet<&[u8]> =
                list.iter().map(|b| b.as_ref()).collect();
            assert_eq!(distinct.len(), total, "an update twice, or another's bytes");
            assert!(list == &lists[0], "one order for everyone");
        }
    }
}
