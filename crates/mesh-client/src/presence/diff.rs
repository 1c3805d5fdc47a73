//! What changed in a room's user list: [`UsersDiff`], and [`UserDiffs`],
//! the stream of them a [`Presence`](super::Presence) hands out.
//!
//! As Phoenix Presence sends `presence_state` then `presence_diff`, a
//! subscriber gets the whole list first ([`UsersDiff::Full`]), then per
//! emission only the users who came or changed and the ids of those who
//! left ([`UsersDiff::Changed`]). The changes come from the engine's own
//! record of the users it touched, so a 5,000-person room where ten people
//! changed costs ten users, not a walk over five thousand.
//!
//! A subscriber that falls behind (its buffer of [`DIFF_BUFFER`] diffs is
//! full) loses no change: the diffs it missed are replaced by one full
//! list, sent as soon as it has room again.

use super::engine::{PresenceEngine, User, UserEvent};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// How many diffs a subscriber may have waiting before it is sent a full
/// list instead (about a second of emissions at one per frame).
pub const DIFF_BUFFER: usize = 64;

/// A change of the user list.
#[derive(Debug, Clone, PartialEq)]
pub enum UsersDiff {
    /// The whole list, sorted by user id: the first diff of a subscription,
    /// and after a resync (a reconnect) or falling behind. It replaces
    /// whatever the subscriber had.
    Full(Vec<User>),
    /// What changed since the previous diff: every change a row can show
    /// (state, its time, tabs, members). Which connection sent a state
    /// ([`User::representative`], bookkeeping for tab sync) is not a change
    /// of its own, so a copy's may lag behind the engine's.
    Changed {
        /// Users who appeared or changed, sorted by id, as they are now.
        upserted: Vec<User>,
        /// Ids of users who left, sorted.
        removed: Vec<Arc<str>>,
    },
}

impl UsersDiff {
    /// The diff made by `events` (taken from `engine` with
    /// [`PresenceEngine::take_events`]): each user they touched, as the
    /// engine has them now, or removed when gone. `None` when there were no
    /// events. Costs one lookup per touched user.
    pub fn from_events(engine: &PresenceEngine, events: &[UserEvent]) -> Option<UsersDiff> {
        if events.is_empty() {
            return None;
        }
        let mut touched: Vec<&Arc<str>> = events.iter().map(UserEvent::id).collect();
        touched.sort_unstable();
        touched.dedup();
        let mut upserted = Vec::new();
        let mut removed = Vec::new();
        for id in touched {
            match engine.user(id) {
                Some(user) => upserted.push(user),
                None => removed.push(id.clone()),
            }
        }
        Some(UsersDiff::Changed { upserted, removed })
    }

    /// Applies the diff to a list sorted by id, as
    /// [`Presence::users`](super::Presence::users) is, in place: it costs the
    /// users it names (and one pass over the list when some come or go),
    /// not a new list.
    pub fn apply_to_list(self, users: &mut Vec<User>) {
        let (upserted, removed) = match self {
            UsersDiff::Full(list) => {
                *users = list;
                return;
            }
            UsersDiff::Changed { upserted, removed } => (upserted, removed),
        };
        let mut arriving = Vec::new();
        for user in upserted {
            match users.binary_search_by(|u| u.id.cmp(&user.id)) {
                Ok(at) => users[at] = user,
                Err(_) => arriving.push(user),
            }
        }
        if !removed.is_empty() {
            // Both sorted: one walk.
            let mut gone = removed.iter().peekable();
            users.retain(|user| {
                while gone.next_if(|id| **id < user.id).is_some() {}
                gone.next_if(|id| **id == user.id).is_none()
            });
        }
        match arriving.len() {
            0 => {}
            1 => {
                let user = arriving.remove(0);
                let at = users.partition_point(|u| u.id < user.id);
                users.insert(at, user);
            }
            // Two sorted runs: the stable sort merges them in one pass.
            _ => {
                users.append(&mut arriving);
                users.sort_by(|a, b| a.id.cmp(&b.id));
            }
        }
    }

    /// Whether this diff changes nothing.
    pub fn is_empty(&self) -> bool {
        matches!(self, UsersDiff::Changed { upserted, removed } if upserted.is_empty() && removed.is_empty())
    }

    /// Applies the diff to a list kept by id.
    pub fn apply_to(self, users: &mut BTreeMap<Arc<str>, User>) {
        match self {
            UsersDiff::Full(list) => {
                *users = list.into_iter().map(|u| (u.id.clone(), u)).collect();
            }
            UsersDiff::Changed { upserted, removed } => {
                for id in removed {
                    users.remove(&id);
                }
                for user in upserted {
                    users.insert(user.id.clone(), user);
                }
            }
        }
    }
}

/// The diffs of a [`Presence`](super::Presence)'s user list, from
/// [`Presence::diffs`](super::Presence::diffs): a full list first, then
/// changes, one per emission.
#[derive(Debug)]
pub struct UserDiffs {
    rx: mpsc::Receiver<UsersDiff>,
}

impl UserDiffs {
    pub(super) fn new(rx: mpsc::Receiver<UsersDiff>) -> Self {
        UserDiffs { rx }
    }

    /// The next diff; `None` once the presence has stopped.
    pub async fn recv(&mut self) -> Option<UsersDiff> {
        self.rx.recv().await
    }

    /// The next diff if one is waiting (to merge a burst into one frame).
    pub fn try_recv(&mut self) -> Option<UsersDiff> {
        self.rx.try_recv().ok()
    }
}

/// The driver's side of one [`UserDiffs`].
#[derive(Debug)]
pub(super) struct DiffSubscriber {
    tx: mpsc::Sender<UsersDiff>,
    /// It missed a diff: the next thing it gets is a full list.
    behind: bool,
}

impl DiffSubscriber {
    /// A subscriber that is sent `first`, the full list, at once.
    pub(super) fn new(tx: mpsc::Sender<UsersDiff>, first: Vec<User>) -> Option<Self> {
        let mut subscriber = DiffSubscriber { tx, behind: false };
        subscriber
            .send(UsersDiff::Full(first))
            .then_some(subscriber)
    }

    /// Whether it waits for a full list.
    pub(super) fn behind(&self) -> bool {
        self.behind
    }

    /// Sends `diff`, or remembers that it must be sent a full list when its
    /// buffer is full. `false` when the subscriber is gone.
    pub(super) fn send(&mut self, diff: UsersDiff) -> bool {
        match self.tx.try_send(diff) {
            Ok(()) => {
                self.behind = false;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.behind = true;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
