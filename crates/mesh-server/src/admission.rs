//! Which new TCP connections are let in: a limit on connections open at
//! once, in total and per IP address, counted from accept to cleanup; and
//! the accept loop's back-off when accepting itself fails.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// File descriptors kept for everything but client sockets: the listener,
/// the runtime's epoll and wakers, Redis connections, logs.
const RESERVED_FDS: u64 = 32;
/// Refusals being written at once; past that a refused socket is just
/// closed, so that refusing cannot itself use up descriptors.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// The counts of open connections, shared by the accept loop and every
/// connection task.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
    refusing: AtomicUsize,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The server has `max_connections` open.
    Server,
    /// This address has `max_connections_per_ip` open.
    Address,
}

impl Full {
    /// The body of the `503` answer.
    pub(crate) fn body(self) -> &'static str {
        match self {
            Full::Server => "server full: too many connections\n",
            Full::Address => "too many connections from this address\n",
        }
    }
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        open.total -= 1;
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A refusal in flight; dropping it ends it.
#[derive(Debug)]
pub(crate) struct Refusal(Arc<Admission>);

impl Drop for Refusal {
    fn drop(&mut self) {
        self.0.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// Limits of `max_total` connections (0 = none) and `max_per_ip` per
    /// address (0 = none).
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Admission {
            max_total: if max_total == 0 {
                usize::MAX
            } else {
                max_total
            },
            max_per_ip: if max_per_ip == 0 {
                usize::MAX
            } else {
                max_per_ip
            },
            open: Mutex::new(Open::default()),
            refusing: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection from `ip`, if there is one.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let ip = ip.to_canonical();
        let mut open = self.lock();
        if open.total >= self.max_total {
            return Err(Full::Server);
        }
        let from_ip = open.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_ip {
            return Err(Full::Address);
        }
        *from_ip += 1;
        open.total += 1;
        Ok(Slot {
            admission: self.clone(),
            ip,
        })
    }

    /// Whether another refusal may be answered politely (`None`: too many
    /// are being answered already; just close the socket).
    pub(crate) fn start_refusal(self: &Arc<Self>) -> Option<Refusal> {
        let before = self.refusing.fetch_add(1, Ordering::AcqRel);
        let refusal = Refusal(self.clone());
        (before < MAX_REFUSALS_IN_FLIGHT).then_some(refusal)
    }
}

/// `wanted`, lowered so that that many client sockets fit in the process's
/// file-descriptor limit; with the limit it found, when it had to lower it.
pub(crate) fn fit_fd_limit(wanted: usize) -> (usize, Option<u64>) {
    let Some(limit) = fd_limit() else {
        return (wanted, None);
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    if wanted == 0 || wanted > room {
        (room.max(1), Some(limit))
    } else {
        (wanted, None)
    }
}

/// The soft limit on open file descriptors, if there is one.
fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the soft file-descriptor limit to the hard one, as a server
/// expecting many connections should; returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            limit.current = limit.maximum;
            let _ = setrlimit(Resource::Nofile, limit);
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Exponential back-off for a failing `accept` (usually: out of file
/// descriptors), as tokio's mini-redis does: retrying at once would spin
/// and flood the log while nothing can change.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    delay: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// The next wait: 5 ms, doubling up to 1 s.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = match self.delay {
            None => Self::FIRST,
            Some(d) => (d * 2).min(Self::MAX),
        };
        self.delay = Some(delay);
        delay
    }

    /// An accept succeeded: start again from the shortest wait.
    pub(crate) fn reset(&mut self) {
        self.delay = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_total_and_per_address() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = admission.admit(a).unwrap();
        let _a2 = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Full::Address);
        let _b1 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Full::Server);
        drop(a1);
        let _a3 = admission.admit(a).unwrap();
        // An IPv4-mapped IPv6 address is the same address.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(admission.admit(mapped).unwrap_err(), Full::Server);
    }

    #[test]
    fn backoff_doubles_up_to_a_second() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(5));
        assert_eq!(delays[1], Duration::from_millis(10));
        assert_eq!(delays[9], Duration::from_secs(1));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(5));
    }
}
