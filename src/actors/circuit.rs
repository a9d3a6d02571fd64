//! Circuit breaker per external system (seed 001: opens after 3 consecutive failures,
//! half-open after 30 s). Pure: the adapter actor feeds it outcomes and the time.

use super::control::CircuitState;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    state: CircuitState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold,
            open_for,
            state: CircuitState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            probe_in_flight: false,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn open_for(&self) -> Duration {
        self.open_for
    }

    /// May a call go out now? When half-open, exactly one probe is let through.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        if self.state == CircuitState::Open
            && self
                .opened_at
                .is_some_and(|t| now.duration_since(t) >= self.open_for)
        {
            self.state = CircuitState::HalfOpen;
        }
        match self.state {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen if self.probe_in_flight => false,
            CircuitState::HalfOpen => {
                self.probe_in_flight = true;
                true
            }
        }
    }

    /// Returns true when this outcome closed a circuit that was not closed.
    pub fn on_success(&mut self) -> bool {
        let reopened = self.state != CircuitState::Closed;
        self.reset();
        reopened
    }

    /// Returns true when this failure opened the circuit.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.probe_in_flight = false;
        let should_open = self.state == CircuitState::HalfOpen
            || (self.state == CircuitState::Closed && self.consecutive_failures >= self.threshold);
        if should_open {
            self.state = CircuitState::Open;
            self.opened_at = Some(now);
        }
        should_open
    }

    /// Operator override (`POST /api/services/{svc}/recover`).
    pub fn reset(&mut self) {
        self.state = CircuitState::Closed;
        self.consecutive_failures = 0;
        self.opened_at = None;
        self.probe_in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_half_opens_with_one_probe() {
        let mut cb = CircuitBreaker::new(3, Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(!cb.on_failure(t0));
        assert!(!cb.on_failure(t0));
        assert!(cb.on_failure(t0));
        assert_eq!(cb.state(), CircuitState::Open);
        assert!(!cb.try_acquire(t0 + Duration::from_secs(29)));
        let later = t0 + Duration::from_secs(30);
        assert!(cb.try_acquire(later));
        assert_eq!(cb.state(), CircuitState::HalfOpen);
        assert!(!cb.try_acquire(later), "only one probe at a time");
        assert!(cb.on_success());
        assert_eq!(cb.state(), CircuitState::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let mut cb = CircuitBreaker::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        cb.on_failure(t0);
        let t1 = t0 + Duration::from_secs(1);
        assert!(cb.try_acquire(t1));
        assert!(cb.on_failure(t1));
        assert!(!cb.try_acquire(t1));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut cb = CircuitBreaker::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        cb.on_failure(t0);
        cb.on_failure(t0);
        assert!(!cb.on_success());
        cb.on_failure(t0);
        assert_eq!(cb.state(), CircuitState::Closed);
    }
}
