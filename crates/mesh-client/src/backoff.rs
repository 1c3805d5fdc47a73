//! Reconnect delays: exponential backoff with jitter, capped.
//!
//! Kept free of clocks and randomness so that it can be tested exactly; the
//! caller supplies the random fraction.

use std::time::Duration;

/// The delay before reconnect attempt `attempt` (1-based).
///
/// The nominal delay doubles from `base` each attempt up to `cap`; the
/// result is "equal jitter": half of the nominal delay plus `jitter` (a
/// fraction in `[0, 1)`) of the other half. Jitter spreads the reconnects of
/// many clients after a server restart, so they do not arrive as one wave.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let nominal = base.saturating_mul(1u32 << doublings).min(cap);
    let half = nominal / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_until_the_cap() {
        let top: Vec<_> = (1..=6).map(|a| backoff_delay(a, BASE, CAP, 1.0)).collect();
        let ms: Vec<u128> = top.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_spans_the_upper_half() {
        assert_eq!(backoff_delay(3, BASE, CAP, 0.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(3, BASE, CAP, 0.5), Duration::from_millis(300));
        // Out-of-range fractions are clamped, never negative or over nominal.
        assert_eq!(backoff_delay(3, BASE, CAP, 7.0), Duration::from_millis(400));
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        assert_eq!(backoff_delay(u32::MAX, BASE, CAP, 1.0), CAP);
        assert_eq!(backoff_delay(0, BASE, CAP, 1.0), BASE);
    }
}
