//! The server's Prometheus metrics, served as text at `GET /metrics` on the
//! server's own port.
//!
//! Counters on the hot path (deliveries) are `prometheus` counters: one
//! relaxed atomic add per fan-out, not per subscriber. Everything that is
//! already counted elsewhere (open connections, rooms, the backend's own
//! counters) is read when the metrics are scraped, so it costs nothing in
//! between.

use crate::backend::Backend;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounter, IntGauge, Opts, Registry, TextEncoder};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The counters the server bumps as it works, and the registry that
/// renders them with the values read at scrape time.
pub(crate) struct Metrics {
    registry: Registry,
    /// Connections closed because they fell too far behind.
    pub(crate) slow_consumers_dropped: IntCounter,
}

impl Metrics {
    /// Metrics of one server: `connections` is its open-connection count,
    /// `rooms` counts the rooms this instance has local interest in.
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        connections: Arc<AtomicUsize>,
        rooms: Arc<dyn Fn() -> usize + Send + Sync>,
        deliveries: IntCounter,
    ) -> Self {
        let registry = Registry::new();
        let slow_consumers_dropped = counter(
            "mesh_slow_consumers_dropped_total",
            "Connections closed because their outgoing queue overflowed.",
        );
        let scraped = Scraped {
            backend,
            connections,
            rooms,
            descs: vec![
                gauge("mesh_connections", CONNECTIONS_HELP).desc()[0].clone(),
                gauge("mesh_rooms", ROOMS_HELP).desc()[0].clone(),
                counter("mesh_backend_messages_received_total", RECEIVED_HELP).desc()[0].clone(),
                counter("mesh_backend_errors_total", ERRORS_HELP).desc()[0].clone(),
            ],
        };
        for collector in [
            Box::new(deliveries) as Box<dyn Collector>,
            Box::new(slow_consumers_dropped.clone()),
            Box::new(scraped),
        ] {
            // Names are fixed and distinct: registering cannot fail.
            let _ = registry.register(collector);
        }
        Metrics {
            registry,
            slow_consumers_dropped,
        }
    }

    /// Every metric in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail, and every family is well formed.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The counter of presence updates queued to local subscribers, made
/// before [`Metrics`] because the subscriber registry bumps it.
pub(crate) fn deliveries_counter() -> IntCounter {
    counter(
        "mesh_deliveries_total",
        "Presence updates queued to local subscribers (one per subscriber).",
    )
}

/// The content type of [`Metrics::render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const CONNECTIONS_HELP: &str = "WebSocket connections open on this instance.";
const ROOMS_HELP: &str = "Rooms with a member or presence subscriber on this instance.";
const RECEIVED_HELP: &str = "Presence updates received from other instances through the backend.";
const ERRORS_HELP: &str = "Failed backend operations.";

fn counter(name: &str, help: &str) -> IntCounter {
    // A valid, fixed name: this cannot fail.
    IntCounter::with_opts(Opts::new(name, help)).expect("valid metric name")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::with_opts(Opts::new(name, help)).expect("valid metric name")
}

/// The metrics whose values live elsewhere, read when scraped.
struct Scraped {
    backend: Arc<dyn Backend>,
    connections: Arc<AtomicUsize>,
    rooms: Arc<dyn Fn() -> usize + Send + Sync>,
    descs: Vec<Desc>,
}

impl Collector for Scraped {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = self.backend.stats();
        let connections = gauge("mesh_connections", CONNECTIONS_HELP);
        connections.set(clamp(self.connections.load(Ordering::Relaxed) as u64));
        let rooms = gauge("mesh_rooms", ROOMS_HELP);
        rooms.set(clamp((self.rooms)() as u64));
        let received = counter("mesh_backend_messages_received_total", RECEIVED_HELP);
        received.inc_by(stats.messages_received);
        let errors = counter("mesh_backend_errors_total", ERRORS_HELP);
        errors.inc_by(stats.errors);
        let mut families = connections.collect();
        families.extend(rooms.collect());
        families.extend(received.collect());
        families.extend(errors.collect());
        families
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
