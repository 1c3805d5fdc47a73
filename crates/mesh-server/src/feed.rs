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
//! A range holds its first frame itself; a frame after it stays in the feed
//! while some range still needs it: a range that grows registers where its
//! feed part starts, and frames below the lowest registered start are
//! dropped. Ranges are bounded by the connection's push budget, so a feed
//! holds at most about one budget of frames per room.

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
    /// The frame being handed out to the subscribers: kept even before any
    /// range has registered for it (a writer that lets go of a range may
    /// trim meanwhile).
    handing_out: Option<u64>,
}

impl Frames {
    fn next(&self) -> u64 {
        self.base + self.frames.len() as u64
    }

    /// Drops the frames no range can still need.
    fn trim(&mut self) {
        let keep_from = self
            .starts
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next())
            .min(self.handing_out.unwrap_or(u64::MAX));
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

    /// Appends a framed update; returns its sequence number. The frame is
    /// kept at least until [`Feed::handed_out`]. One update at a time.
    pub(crate) fn append(&self, frame: Bytes) -> u64 {
        let mut f = self.frames();
        let seq = f.next();
        f.frames.push_back(frame);
        f.handing_out = Some(seq);
        seq
    }

    /// The last appended update was handed to every subscriber: drops
    /// the frames nobody needs, so that a feed nobody is behind on stays
    /// empty.
    pub(crate) fn handed_out(&self) {
        let mut f = self.frames();
        f.handing_out = None;
        f.trim();
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
///
/// The first frame is held by the range itself, so the common case of a
/// connection that keeps up (a range of one frame, written before the next
/// update) never takes the feed's lock to read or to let go. Only when the
/// range grows does it register with the feed, which then keeps the frames
/// after the first until the range is dropped.
pub(crate) struct Range {
    feed: Arc<Feed>,
    from: u64,
    to: u64,
    first: Bytes,
    /// Registered with the feed as needing `from + 1..`.
    registered: bool,
}

impl Range {
    /// The single frame `seq` of `feed`, whose bytes are `frame`.
    pub(crate) fn one(feed: &Arc<Feed>, seq: u64, frame: Bytes) -> Self {
        Range {
            feed: feed.clone(),
            from: seq,
            to: seq + 1,
            first: frame,
            registered: false,
        }
    }

    /// Takes in frame `seq` if it directly follows this range in the same
    /// feed. Called before the feed is next trimmed, so the frame is there.
    pub(crate) fn extend(&mut self, feed: &Arc<Feed>, seq: u64) -> bool {
        let follows = Arc::ptr_eq(&self.feed, feed) && seq == self.to;
        if follows {
            if !self.registered {
                *self.feed.frames().starts.entry(seq).or_default() += 1;
                self.registered = true;
            }
            self.to += 1;
        }
        follows
    }

    /// The range's first frame.
    pub(crate) fn first(&self) -> &Bytes {
        &self.first
    }

    /// The feed and the bounds of the frames after the first, for the
    /// writer.
    pub(crate) fn rest(&self) -> (&Feed, u64, u64) {
        (&self.feed, self.from + 1, self.to)
    }
}

impl Drop for Range {
    fn drop(&mut self) {
        if !self.registered {
            return;
        }
        let start = self.from + 1;
        let mut f = self.feed.frames();
        if let Some(n) = f.starts.get_mut(&start) {
            *n -= 1;
            if *n == 0 {
                f.starts.remove(&start);
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
        let a = Bytes::from_static(b"a");
        let s0 = feed.append(a.clone());
        let mut r = Range::one(&feed, s0, a);
        // A range of one frame holds it itself: the feed keeps nothing.
        feed.handed_out();
        assert_eq!(feed.frames().frames.len(), 0);
        assert_eq!(r.first().as_ref(), b"a");
        let s1 = feed.append(Bytes::from_static(b"b"));
        assert!(r.extend(&feed, s1));
        let s2 = feed.append(Bytes::from_static(b"c"));
        assert!(r.extend(&feed, s2));
        // Not contiguous: a later frame starts a range of its own.
        assert!(!r.extend(&feed, s2 + 5));
        feed.handed_out();
        let (f, from, to) = r.rest();
        assert_eq!(f.get(from, to, 10), vec!["b", "c"]);
        assert_eq!(f.get(from, to, 1), vec!["b"]);
        drop(r);
        // Nobody needs them any more.
        assert_eq!(feed.frames().frames.len(), 0);
        let s3 = feed.append(Bytes::from_static(b"d"));
        assert_eq!(s3, 3, "sequence numbers keep counting");
        feed.handed_out();
        assert_eq!(feed.frames().frames.len(), 0);
    }
}
