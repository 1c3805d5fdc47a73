//! Which rooms this instance has local interest in: rooms where one of its
//! connections is a member or a presence subscriber. The backend is told as
//! interest comes and goes, so that an instance receives a room's updates
//! from the other instances only while someone here may want them.

use std::collections::HashMap;
use std::sync::Mutex;

/// Local members and subscribers per room (a connection that is both
/// counts twice).
#[derive(Default)]
pub(crate) struct Interest {
    rooms: Mutex<HashMap<String, usize>>,
}

impl Interest {
    /// One more local member or subscriber in `room`.
    pub(crate) fn add(&self, room: &str) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        *rooms.entry(room.to_string()).or_default() += 1;
    }

    /// One fewer local member or subscriber in `room`.
    pub(crate) fn remove(&self, room: &str) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = rooms.get_mut(room) {
            *n -= 1;
            if *n == 0 {
                rooms.remove(room);
            }
        }
    }

    /// Rooms with local interest.
    pub(crate) fn room_count(&self) -> usize {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_count_while_anyone_is_interested() {
        let interest = Interest::default();
        interest.add("a");
        interest.add("a");
        interest.add("b");
        assert_eq!(interest.room_count(), 2);
        interest.remove("a");
        assert_eq!(interest.room_count(), 2);
        interest.remove("a");
        interest.remove("zzz");
        assert_eq!(interest.room_count(), 1);
    }
}
