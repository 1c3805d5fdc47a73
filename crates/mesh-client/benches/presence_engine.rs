//! Throughput of the presence grouping engine, and the same work done the
//! way the JavaScript deduped presence handler does it (a scan of all
//! connections per state update and a copy of the whole group map per
//! event), for comparison. And what the `Presence` driver does per
//! emission in a changing 5,000-person room: the user list rebuilt whole
//! (as it was) against the list patched with the engine's changes.
//!
//! Run: `cargo bench -p mesh-client --bench presence_engine`
//!
//! With `PRESENCE_BENCH_CPU=1` the benchmark measures the benchmarking
//! thread's CPU time instead of wall time: on a busy shared machine, time
//! spent waiting for a core is then not counted as engine time.

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BatchSize, Criterion, Throughput};
use mesh_client::presence::{KeySource, PresenceEngine, User, UsersDiff};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::watch;

/// Connections in the room: two tabs per user.
const CONNS: usize = 10_000;

fn conn_id(i: usize) -> String {
    format!("conn-{i:06}")
}

fn user_of(i: usize) -> String {
    format!("user-{:06}", i / 2)
}

fn state_for(i: usize, n: usize) -> Value {
    json!({"userId": user_of(i), "status": "online", "n": n})
}

fn by_user_id() -> KeySource {
    KeySource::state_field("userId")
}

/// A snapshot of `n` connections, each with a state.
fn snapshot(n: usize) -> (Vec<String>, Map<String, Value>) {
    let present: Vec<String> = (0..n).map(conn_id).collect();
    let states = (0..n).map(|i| (conn_id(i), state_for(i, 0))).collect();
    (present, states)
}

/// A stream of state updates for random-looking connections.
fn state_stream(n_conns: usize, len: usize) -> Vec<(String, Value)> {
    (0..len)
        .map(|k| {
            let i = (k * 7919) % n_conns;
            (conn_id(i), state_for(i, k))
        })
        .collect()
}

fn seeded_engine(n: usize) -> PresenceEngine {
    let (present, states) = snapshot(n);
    let mut engine = PresenceEngine::new(by_user_id());
    engine.reset(&present, states);
    engine.take_events();
    engine
}

fn engine_benches<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("engine");
    group.measurement_time(Duration::from_secs(4));

    // Updates per iteration: few enough that the batch, decoded just
    // before, is still in cache, as a batch read off a socket would be.
    const UPDATES: usize = 2_000;
    group.throughput(Throughput::Elements(UPDATES as u64));
    let mut engine = seeded_engine(CONNS);
    // The server's clock only moves forward: every update is later than
    // the ones of earlier iterations too, as it would be in a live room.
    let mut clock = 2;
    group.bench_function("state_updates_10k_conns", |b| {
        b.iter_batched(
            || state_stream(CONNS, UPDATES),
            |updates| {
                for (conn, state) in updates {
                    clock += 1;
                    engine.set_state(&conn, Some(state), clock);
                }
                black_box(engine.take_events().len())
            },
            BatchSize::PerIteration,
        )
    });

    // Churn: every connection of a fresh room joins, publishes, and leaves.
    const CHURN: usize = 10_000;
    group.throughput(Throughput::Elements(3 * CHURN as u64));
    group.bench_function("join_state_leave", |b| {
        b.iter_batched(
            || {
                let engine = seeded_engine(1_000);
                let conns: Vec<(String, Value)> = (CONNS..CONNS + CHURN)
                    .map(|i| (conn_id(i), state_for(i, 1)))
                    .collect();
                (engine, conns)
            },
            |(mut engine, conns)| {
                for (conn, _) in &conns {
                    engine.join(conn, 2);
                }
                for (conn, state) in conns.iter().map(|(c, s)| (c, s.clone())) {
                    engine.set_state(conn, Some(state), 3);
                }
                for (conn, _) in &conns {
                    engine.leave(conn);
                }
                black_box(engine.take_events().len())
            },
            BatchSize::PerIteration,
        )
    });

    group.throughput(Throughput::Elements(CONNS as u64));
    group.bench_function("seed_10k_from_snapshot", |b| {
        let (present, states) = snapshot(CONNS);
        b.iter_batched(
            || (PresenceEngine::new(by_user_id()), states.clone()),
            |(mut engine, states)| {
                engine.reset(&present, states);
                black_box(engine.user_count())
            },
            BatchSize::PerIteration,
        )
    });

    group.bench_function("users_list_10k_conns", |b| {
        let engine = seeded_engine(CONNS);
        b.iter(|| black_box(engine.users().len()))
    });
    group.finish();
}

/// How an emission brings the `users()` list up to date.
#[derive(Clone, Copy, PartialEq)]
enum List {
    /// Built whole from the engine and replaced (as it was).
    Rebuilt,
    /// Patched in place with the engine's changes.
    Patched,
    /// Not at all: the floor, what the diffs alone cost.
    Untouched,
}

/// One emission of the driver's: the diff for a [`Presence::diffs`]
/// subscriber (one copy, as sent), then the `users()` list.
///
/// [`Presence::diffs`]: mesh_client::presence::Presence::diffs
fn emit(engine: &mut PresenceEngine, users: &watch::Sender<Vec<User>>, list: List) -> usize {
    let changes = (list == List::Patched).then(|| engine.take_changes());
    let events = engine.take_events();
    let diff = UsersDiff::from_events(engine, &events);
    black_box(diff.clone());
    match (list, changes) {
        (List::Rebuilt, _) => {
            users.send_replace(engine.users());
        }
        (_, Some(changes)) => users.send_modify(|users| changes.apply_to_list(users)),
        (_, None) => {}
    }
    events.len()
}

fn emission_benches<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("emission");
    group.measurement_time(Duration::from_secs(4));
    // A frame's worth of a room where 1,000 people change a second (~50
    // at one emission per 16 ms, rounded up), applied then emitted.
    const CHANGES: usize = 50;
    group.throughput(Throughput::Elements(CHANGES as u64));
    for (name, list, held) in [
        ("diffs_only_5k_users", List::Untouched, false),
        ("rebuilt_5k_users", List::Rebuilt, false),
        ("rebuilt_5k_users_list_held", List::Rebuilt, true),
        ("patched_5k_users", List::Patched, false),
        ("patched_5k_users_list_held", List::Patched, true),
    ] {
        let mut engine = seeded_engine(CONNS);
        let mut first = Vec::new();
        engine.take_changes().apply_to_list(&mut first);
        let (users, rx) = watch::channel(first);
        // Someone holds the list (a tray's head count), or nobody does.
        let _held = held.then_some(rx);
        let mut clock = 2;
        group.bench_function(name, |b| {
            b.iter_batched(
                || state_stream(CONNS, CHANGES),
                |updates| {
                    for (conn, state) in updates {
                        clock += 1;
                        engine.set_state(&conn, Some(state), clock);
                    }
                    black_box(emit(&mut engine, &users, list))
                },
                BatchSize::PerIteration,
            )
        });
        if list != List::Untouched {
            assert_eq!(
                *users.borrow(),
                engine.users(),
                "{name}: the list is current"
            );
        }
    }
    group.finish();
}

/// The JavaScript handler's approach, re-implemented faithfully: groups in
/// a map of shared mutable objects, a state update finds its connection's
/// group by scanning every connection, and every event hands the listener a
/// fresh copy of the group map (a shallow copy, as `new Map(groups)` is).
mod js_like {
    use super::*;

    pub struct Group {
        pub members: HashSet<String>,
        pub state: Option<Value>,
        pub representative: Option<String>,
        pub timestamp: u64,
    }

    pub type Groups = HashMap<String, Rc<RefCell<Group>>>;

    #[derive(Default)]
    pub struct Handler {
        groups: Groups,
        /// Connection -> its latest state, in insertion order like a JS Map.
        conns: Vec<(String, Option<Value>)>,
        pub emitted: usize,
    }

    impl Handler {
        fn emit(&mut self) {
            let copy: Groups = self.groups.clone();
            self.emitted += copy.len();
            black_box(copy);
        }

        pub fn join(&mut self, conn: &str) {
            if !self.conns.iter().any(|(c, _)| c == conn) {
                self.conns.push((conn.to_string(), None));
            }
            self.emit();
        }

        pub fn state(&mut self, conn: &str, state: Value, ts: u64) {
            let key = state["userId"].as_str().unwrap_or(conn).to_string();
            // Scan all connections to find this one and to collect the
            // members that share its key.
            let mut members = HashSet::new();
            for (c, s) in self.conns.iter_mut() {
                if c == conn {
                    *s = Some(state.clone());
                }
                let k = s.as_ref().and_then(|s| s["userId"].as_str());
                if k == Some(key.as_str()) {
                    members.insert(c.clone());
                }
            }
            let group = self.groups.entry(key).or_insert_with(|| {
                Rc::new(RefCell::new(Group {
                    members: HashSet::new(),
                    state: None,
                    representative: None,
                    timestamp: 0,
                }))
            });
            {
                let mut g = group.borrow_mut();
                g.members = members;
                g.state = Some(state);
                g.representative = Some(conn.to_string());
                g.timestamp = ts;
            }
            self.emit();
        }
    }
}

fn js_like_benches<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("js_like");
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(10);
    const UPDATES: usize = 300;
    group.throughput(Throughput::Elements(UPDATES as u64));
    let mut handler = js_like::Handler::default();
    for (i, (conn, state)) in state_stream(CONNS, CONNS).into_iter().enumerate() {
        handler.join(&conn);
        handler.state(&conn, state, i as u64);
    }
    group.bench_function("state_updates_10k_conns", |b| {
        b.iter_batched(
            || state_stream(CONNS, UPDATES),
            |updates| {
                for (ts, (conn, state)) in updates.into_iter().enumerate() {
                    handler.state(&conn, state, ts as u64);
                }
                black_box(handler.emitted)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Criterion measurement: CPU time of the benchmarking thread.
struct ThreadCpuTime;

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_nanos()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_nanos().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNanos
    }
}

/// Formats CPU nanoseconds like wall time, marked as CPU time.
struct CpuNanos;

impl ValueFormatter for CpuNanos {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e-3, "µs cpu")
        } else if typical < 1e9 {
            (1e-6, "ms cpu")
        } else {
            (1e-9, "s cpu")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let per_iter = match *t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n,
        } as f64;
        // Elements per CPU second, in millions.
        values
            .iter_mut()
            .for_each(|v| *v = per_iter * 1e9 / *v / 1e6);
        "M/s cpu"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn main() {
    if std::env::var_os("PRESENCE_BENCH_CPU").is_some() {
        let mut c = Criterion::default()
            .with_measurement(ThreadCpuTime)
            .configure_from_args();
        engine_benches(&mut c);
        emission_benches(&mut c);
        js_like_benches(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default().configure_from_args();
        engine_benches(&mut c);
        emission_benches(&mut c);
        js_like_benches(&mut c);
        c.final_summary();
    }
}
