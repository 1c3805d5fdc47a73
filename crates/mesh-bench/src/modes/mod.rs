//! The benchmark's modes, and the figures they share.

mod burst;
mod idle;
mod steady;

pub use burst::{burst, scale};
pub use idle::idle;
pub use steady::steady;

use std::time::Instant;

/// Microseconds since `epoch`, the clock every benchmark state carries.
fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// The `p` quantile of sorted microseconds, in ms.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Prints the latency quantiles of sorted microseconds.
fn print_latency(sorted: &[u64]) {
    println!(
        "state latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(sorted, 0.50),
        percentile(sorted, 0.99),
        percentile(sorted, 1.0)
    );
}
