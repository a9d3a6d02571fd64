//! The one backoff formula of the runtime, for saga steps, outages of the store or
//! the bus, supervised restarts and reconnects to the broker alike: the wait doubles
//! with every consecutive failure up to a cap, and jitter spreads the waits of
//! callers that failed together.

use std::time::Duration;

/// The wait after `failures` consecutive failures: `base` after the first, doubling
/// with each further one (`base * 2^(failures-1)`, the exponent capped at 16), never
/// more than `max`.
pub(crate) fn exponential(failures: u32, base: Duration, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    base.saturating_mul(2u32.saturating_pow(exponent)).min(max)
}

/// Spreads a delay over [delay/2, delay], so that callers failing together (a
/// system going down under load, nodes losing the broker) do not all come back in
/// the same instant.
pub(crate) fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(100));
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
    }

    #[test]
    fn the_wait_doubles_and_caps() {
        let (base, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<_> = (1..=6)
            .map(|failures| exponential(failures, base, max).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(exponential(0, base, max), base);
        assert_eq!(exponential(u32::MAX, base, Duration::MAX), base * 65_536);
    }
}
