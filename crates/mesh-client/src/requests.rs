//! The table of requests sent and not yet answered.

use crate::error::ClientError;
use crate::events::PresenceEvent;
use serde_json::Value;
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// Where a request's result goes.
pub(crate) type ReplyTx = oneshot::Sender<Result<Value, ClientError>>;

/// What the connection task must remember when a request succeeds, so that
/// it can restore the session after a reconnect.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Nothing to remember.
    None,
    /// Remember the room as joined.
    Join(String),
    /// Forget the room (and the metadata cache, which depends on rooms).
    Leave(String),
    /// Deliver the room's presence updates to this sender.
    Subscribe(String, mpsc::UnboundedSender<PresenceEvent>),
    /// Stop delivering the room's presence updates.
    Unsubscribe(String),
    /// Our own metadata changed: drop its cache entry.
    SetMetadata,
    /// The server took a newer token: use it to reconnect from now on.
    Token(crate::options::Token),
}

/// A request as handed to the connection task.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub command: String,
    pub payload: Value,
    pub effect: Effect,
    pub reply: ReplyTx,
}

/// A request on the wire, waiting for its reply.
#[derive(Debug)]
pub(crate) struct Pending {
    pub command: String,
    pub effect: Effect,
    pub reply: ReplyTx,
}

/// Requests in flight, by id.
///
/// Ids are small integers, as the reference client uses; they only need to
/// be unique among the requests in flight on one connection.
#[derive(Debug, Default)]
pub(crate) struct RequestTable {
    next_id: u64,
    pending: HashMap<u64, Pending>,
}

impl RequestTable {
    /// A fresh id, not used by any request in flight.
    pub fn next_id(&mut self) -> u64 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if !self.pending.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// Records a sent request under `id`.
    pub fn insert(&mut self, id: u64, pending: Pending) {
        self.pending.insert(id, pending);
    }

    /// Takes the request a reply answers. A reply must repeat the request's
    /// command; one that does not is a stray and leaves the request waiting.
    pub fn take(&mut self, id: u64, command: &str) -> Option<Pending> {
        match self.pending.get(&id) {
            Some(p) if p.command == command => self.pending.remove(&id),
            _ => None,
        }
    }

    /// Forgets requests whose caller stopped waiting (timed out or dropped),
    /// so that a server that never answers cannot grow the table.
    pub fn purge_abandoned(&mut self) {
        self.pending.retain(|_, p| !p.reply.is_closed());
    }

    /// Fails every request in flight with `error`.
    pub fn fail_all(&mut self, error: ClientError) {
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(error.clone()));
        }
    }

    /// Number of requests in flight.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LinkLoss;
    use serde_json::json;

    fn pending(command: &str) -> (Pending, oneshot::Receiver<Result<Value, ClientError>>) {
        let (reply, rx) = oneshot::channel();
        let p = Pending {
            command: command.into(),
            effect: Effect::None,
            reply,
        };
        (p, rx)
    }

    #[test]
    fn replies_match_id_and_command() {
        let mut table = RequestTable::default();
        let (p, mut rx) = pending("mesh/noop");
        let id = table.next_id();
        table.insert(id, p);
        assert!(table.take(id, "mesh/join-room").is_none(), "wrong command");
        assert!(table.take(id + 1, "mesh/noop").is_none(), "wrong id");
        let p = table.take(id, "mesh/noop").expect("matching reply");
        p.reply.send(Ok(json!(true))).unwrap();
        assert_eq!(rx.try_recv().unwrap(), Ok(json!(true)));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn ids_skip_those_in_flight() {
        let mut table = RequestTable::default();
        let first = table.next_id();
        table.insert(first, pending("a").0);
        let second = table.next_id();
        assert_ne!(first, second);
        // Wrap around onto the id still in flight: it must be skipped.
        table.next_id = first - 1;
        assert_ne!(table.next_id(), first);
    }

    #[test]
    fn abandoned_requests_are_purged_and_the_rest_failed() {
        let mut table = RequestTable::default();
        let (gone, rx_gone) = pending("a");
        let (kept, mut rx_kept) = pending("b");
        let a = table.next_id();
        table.insert(a, gone);
        let b = table.next_id();
        table.insert(b, kept);
        drop(rx_gone);
        table.purge_abandoned();
        assert_eq!(table.len(), 1);
        table.fail_all(ClientError::ConnectionLost(LinkLoss::Silent));
        assert_eq!(
            rx_kept.try_recv().unwrap(),
            Err(ClientError::ConnectionLost(LinkLoss::Silent))
        );
        assert_eq!(table.len(), 0);
    }
}
