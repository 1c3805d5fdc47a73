//! A room's feed: the framed presence updates of one room on this
//! instance, kept once for all of its local subscribers.
//!
//! Without it, a subscriber that is behind holds one queue entry per update
//! it has not been sent yet, so a join storm in an n-member room costs n²
//! entries. With it, the subscriber's outbox holds a *range* of the feed
//! (`from..to`), and a run of updates from the same room only moves the
//! range's end: a connection's backlog costs a few words, whatever its
//! length, and the updates themselves exist once.
//!
//! A frame stays in the feed while some range still starts at or before it:
//! each range registers its start, and frames below the lowest registered
//! start are dropped. Ranges are bounded by the connection's push budget,
//! so a feed holds at most about one budget of frames per room.

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The shared, ordered frames of one room's updates.
#[derive(Default)]
pub(crate) struct Feed(Mutex<Frames>);

#[derive(Default)]
struct Frames {
    /// Sequence number of `frames[0]`.
    base: u64,
    frames: VecDeque<Bytes>,
    /// How many ranges start at each sequence number.
    starts: BTreeMap<u64, usize>,
}

impl Frames {
    fn next(&self) -> u64 {
        self.base + self.frames.len() as u64
    }

    /// Drops the frames no range can still need.
    fn trim(&mut self) {
        let keep_from = self.starts.keys().next().copied().unwrap_or(self.next());
        while self.base < keep_from && self.frames.pop_front().is_some() {
            self.base += 1;
        }
        if self.frames.is_empty() {
            // Give back the memory a burst grew the queue to.
            self.frames = VecDeque::new();
        }
    }
}

impl Feed {
    fn frames(&self) -> MutexGuard<'_, Frames> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a framed update; returns its sequence number.
    pub(crate) fn append(&self, frame: Bytes) -> u64 {
        let mut f = self.frames();
        let seq = f.next();
        f.frames.push_back(frame);
        seq
    }

    /// Drops frames nobody needs; called after an update was handed to
    /// every subscriber, so that a feed nobody is behind on stays empty.
    pub(crate) fn trim(&self) {
        self.frames().trim();
    }

    /// The frames `from..to`, at most `max` of them.
    pub(crate) fn get(&self, from: u64, to: u64, max: usize) -> Vec<Bytes> {
        let f = self.frames();
        // A registered range's frames are never trimmed, so `from >= base`.
        let start = from.saturating_sub(f.base) as usize;
        let end = (to.saturating_sub(f.base) as usize).min(start.saturating_add(max));
        f.frames.range(start..end).cloned().collect()
    }
}

/// A run of one feed's frames queued for one connection: `from..to`.
/// Keeps those frames in the feed until it is dropped.
pub(crate) struct Range {
    feed: Arc<Feed>,
    from: u64,
    to: u64,
}

impl Range {
    /// The single frame `seq` of `feed`.
    pub(crate) fn one(feed: &Arc<Feed>, seq: u64) -> Self {
        let mut f = feed.frames();
        *f.starts.entry(seq).or_default() += 1;
        drop(f);
        Range {
            feed: feed.clone(),
            from: seq,
            to: seq + 1,
        }
    }

    /// Takes in frame `seq` if it directly follows this range in the same
    /// feed.
    pub(crate) fn extend(&mut self, feed: &Arc<Feed>, seq: u64) -> bool {
        let follows = Arc::ptr_eq(&self.feed, feed) && seq == self.to;
        if follows {
            self.to += 1;
        }
        follows
    }

    /// The feed and the bounds, for the writer.
    pub(crate) fn bounds(&self) -> (&Feed, u64, u64) {
        (&self.feed, self.from, self.to)
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        let mut f = self.feed.frames();
        if let Some(n) = f.starts.get_mut(&self.from) {
            *n -= 1;
            if *n == 0 {
                f.starts.remove(&self.from);
            }
        }
        f.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_live_as_long_as_a_range_needs_them() {
        let feed = Arc::new(Feed::default());
        let s0 = feed.append(Bytes::from_static(b"a"));
        let mut r = Range::one(&feed, s0);
        let s1 = feed.append(Bytes::from_static(b"b"));
        assert!(r.extend(&feed, s1));
        // Not contiguous: a later frame starts a range of its own.
        assert!(!r.extend(&feed, s1 + 5));
        feed.trim();
        assert_eq!(feed.get(s0, s1 + 1, 10), vec!["a", "b"]);
        assert_eq!(feed.get(s0, s1 + 1, 1), vec!["a"]);
        drop(r);
        // Nobody needs them any more.
        assert_eq!(feed.frames().frames.len(), 0);
        let s2 = feed.append(Bytes::from_static(b"c"));
        assert_eq!(s2, 2, "sequence numbers keep counting");
        feed.trim();
        assert_eq!(feed.frames().frames.len(), 0);
    }
}
