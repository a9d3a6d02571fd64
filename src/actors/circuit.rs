//! Circuit breaker per external system (seed 001: opens after 3 consecutive failures,
//! half-open after 30 s). Pure: the adapter actor feeds it outcomes and the time, and
//! schedules the probe timers it asks for.
//!
//! Everything about the circuit, including which probe timer is the live one, is this
//! one type. Each opening is numbered; the adapter's timer carries the number, and a
//! timer of an earlier opening (one an operator's `recover` made moot) is ignored. So
//! every opening gets its own probe, however openings and recoveries interleave.

use super::control::CircuitState;
use std::time::{Duration, Instant};

/// Where the circuit is, with what each state needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    /// No call goes out until `since + open_for`, or until the probe timer of this
    /// `opening` fires.
    Open {
        since: Instant,
        opening: u64,
    },
    /// One call (the probe) may go out; its outcome closes or reopens the circuit.
    HalfOpen {
        probe_in_flight: bool,
    },
}

/// Ask the adapter to deliver `ProbeDue { opening }` to the breaker after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeTimer {
    pub(crate) opening: u64,
    pub(crate) after: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    phase: Phase,
    consecutive_failures: u32,
    /// Number of the latest opening; the live probe timer carries it.
    openings: u64,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold,
            open_for,
            phase: Phase::Closed,
            consecutive_failures: 0,
            openings: 0,
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        match self.phase {
            Phase::Closed => CircuitState::Closed,
            Phase::Open { .. } => CircuitState::Open,
            Phase::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// May a call go out now? When half-open, exactly one probe is let through.
    pub(crate) fn try_acquire(&mut self, now: Instant) -> bool {
        if let Phase::Open { since, .. } = self.phase
            && now.duration_since(since) >= self.open_for
        {
            self.phase = Phase::HalfOpen {
                probe_in_flight: false,
            };
        }
        match self.phase {
            Phase::Closed => true,
            Phase::Open { .. }
            | Phase::HalfOpen {
                probe_in_flight: true,
            } => false,
            Phase::HalfOpen {
                probe_in_flight: false,
            } => {
                self.phase = Phase::HalfOpen {
                    probe_in_flight: true,
                };
                true
            }
        }
    }

    /// The probe timer of `opening` fired: half-open, unless that opening is over.
    pub(crate) fn probe_due(&mut self, opening: u64) {
        if matches!(self.phase, Phase::Open { opening: o, .. } if o == opening) {
            self.phase = Phase::HalfOpen {
                probe_in_flight: false,
            };
        }
    }

    /// A call let through by `try_acquire` was not made after all (its order had moved
    /// on): when it was the probe, the next call may probe instead.
    pub(crate) fn call_skipped(&mut self) {
        if let Phase::HalfOpen {
            probe_in_flight: true,
        } = self.phase
        {
            self.phase = Phase::HalfOpen {
                probe_in_flight: false,
            };
        }
    }

    /// Returns true when this outcome closed a circuit that was not closed.
    pub(crate) fn on_success(&mut self) -> bool {
        let reopened = self.phase != Phase::Closed;
        self.reset();
        reopened
    }

    /// A failed call. Returns the probe timer to schedule when it opened the circuit.
    pub(crate) fn on_failure(&mut self, now: Instant) -> Option<ProbeTimer> {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let should_open = match self.phase {
            Phase::Closed => self.consecutive_failures >= self.threshold,
            Phase::HalfOpen { .. } => true,
            // A call let out before the circuit opened; the opening stands.
            Phase::Open { .. } => false,
        };
        should_open.then(|| self.open(now))
    }

    fn open(&mut self, now: Instant) -> ProbeTimer {
        self.openings += 1;
        self.phase = Phase::Open {
            since: now,
            opening: self.openings,
        };
        ProbeTimer {
            opening: self.openings,
            after: self.open_for,
        }
    }

    /// A new incarnation of the adapter starts with no timers: the probe timer the
    /// circuit needs now, if it is not closed. A probe that was in flight belonged to
    /// the old incarnation and its outcome is lost, so another may go.
    pub(crate) fn resume(&mut self, now: Instant) -> Option<ProbeTimer> {
        match self.phase {
            Phase::Closed => None,
            Phase::Open { since, opening } => Some(ProbeTimer {
                opening,
                after: self.open_for.saturating_sub(now.duration_since(since)),
            }),
            Phase::HalfOpen { .. } => {
                self.phase = Phase::HalfOpen {
                    probe_in_flight: false,
                };
                Some(ProbeTimer {
                    opening: self.openings,
                    after: Duration::ZERO,
                })
            }
        }
    }

    /// Operator override (`POST /api/services/{svc}/recover`): closed, and whatever
    /// probe timer is pending is moot.
    pub(crate) fn reset(&mut self) {
        self.phase = Phase::Closed;
        self.consecutive_failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(30);

    fn opened(threshold: u32, t0: Instant) -> (CircuitBreaker, ProbeTimer) {
        let mut cb = CircuitBreaker::new(threshold, OPEN_FOR);
        for _ in 1..threshold {
            assert_eq!(cb.on_failure(t0), None);
        }
        let timer = cb.on_failure(t0).expect("the threshold opens the circuit");
        (cb, timer)
    }

    #[test]
    fn closed_lets_calls_through_and_a_success_resets_the_failure_count() {
        let mut cb = CircuitBreaker::new(3, OPEN_FOR);
        let t0 = Instant::now();
        assert!(cb.try_acquire(t0));
        cb.on_failure(t0);
        cb.on_failure(t0);
        assert!(!cb.on_success(), "it was closed already");
        assert_eq!(cb.on_failure(t0), None);
        assert_eq!(cb.state(), CircuitState::Closed);
        assert_eq!(cb.consecutive_failures(), 1);
    }

    #[test]
    fn opens_after_threshold_and_asks_for_a_probe_timer() {
        let t0 = Instant::now();
        let (mut cb, timer) = opened(3, t0);
        assert_eq!(cb.state(), CircuitState::Open);
        assert_eq!(timer.after, OPEN_FOR);
        assert!(!cb.try_acquire(t0 + Duration::from_secs(29)));
        // A late failure of a call that left before the opening opens nothing new.
        assert_eq!(cb.on_failure(t0), None);
    }

    #[test]
    fn half_opens_after_the_open_time_with_exactly_one_probe() {
        let t0 = Instant::now();
        let (mut cb, _) = opened(3, t0);
        let later = t0 + OPEN_FOR;
        assert!(cb.try_acquire(later));
        assert_eq!(cb.state(), CircuitState::HalfOpen);
        assert!(!cb.try_acquire(later), "only one probe at a time");
        assert!(cb.on_success());
        assert_eq!(cb.state(), CircuitState::Closed);
        assert!(cb.try_acquire(later));
    }

    #[test]
    fn the_probe_timer_half_opens_the_circuit() {
        let t0 = Instant::now();
        let (mut cb, timer) = opened(1, t0);
        cb.probe_due(timer.opening);
        assert_eq!(cb.state(), CircuitState::HalfOpen);
        assert!(cb.try_acquire(t0));
    }

    #[test]
    fn a_failed_probe_reopens_and_asks_for_a_new_timer() {
        let t0 = Instant::now();
        let (mut cb, first) = opened(1, t0);
        cb.probe_due(first.opening);
        assert!(cb.try_acquire(t0));
        let second = cb.on_failure(t0).expect("a failed probe reopens");
        assert_ne!(second.opening, first.opening);
        assert_eq!(cb.state(), CircuitState::Open);
        assert!(!cb.try_acquire(t0));
        cb.probe_due(first.opening);
        assert_eq!(cb.state(), CircuitState::Open, "the old timer is moot");
        cb.probe_due(second.opening);
        assert_eq!(cb.state(), CircuitState::HalfOpen);
    }

    #[test]
    fn a_skipped_probe_lets_the_next_call_probe() {
        let t0 = Instant::now();
        let (mut cb, timer) = opened(1, t0);
        cb.probe_due(timer.opening);
        assert!(cb.try_acquire(t0));
        cb.call_skipped();
        assert!(cb.try_acquire(t0), "the skipped probe left its slot");
        assert!(!cb.try_acquire(t0));
    }

    /// The bug of issue 9 item 4: recover during an outage, the system fails again,
    /// and the new opening must get a probe of its own.
    #[test]
    fn recover_during_an_outage_then_reopening_gets_its_own_probe() {
        let t0 = Instant::now();
        let (mut cb, first) = opened(2, t0);
        cb.reset();
        assert_eq!(cb.state(), CircuitState::Closed);
        assert_eq!(cb.consecutive_failures(), 0);
        assert!(cb.try_acquire(t0));
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(cb.on_failure(t1), None);
        let second = cb
            .on_failure(t1)
            .expect("the new opening schedules a probe");
        // The timer of the first opening fires: it must not half-open the new one.
        cb.probe_due(first.opening);
        assert_eq!(cb.state(), CircuitState::Open);
        cb.probe_due(second.opening);
        assert_eq!(cb.state(), CircuitState::HalfOpen);
        assert!(cb.try_acquire(t1));
        assert!(cb.on_success());
    }

    #[test]
    fn recover_while_half_open_closes_and_the_old_probe_is_harmless() {
        let t0 = Instant::now();
        let (mut cb, timer) = opened(2, t0);
        cb.probe_due(timer.opening);
        assert!(cb.try_acquire(t0), "the probe goes out");
        cb.reset();
        assert_eq!(cb.state(), CircuitState::Closed);
        assert!(cb.try_acquire(t0), "closed: everything goes");
        // The probe sent before the recovery fails late: one failure, still closed.
        assert_eq!(cb.on_failure(t0), None);
        assert_eq!(cb.state(), CircuitState::Closed);
        // The failure after it reaches the threshold again: a fresh opening and timer.
        let next = cb.on_failure(t0).expect("reopens");
        assert!(next.opening > timer.opening);
    }

    #[test]
    fn a_restarted_adapter_resumes_the_pending_probe() {
        let t0 = Instant::now();
        let mut closed = CircuitBreaker::new(1, OPEN_FOR);
        assert_eq!(closed.resume(t0), None);

        let (mut cb, timer) = opened(1, t0);
        let resumed = cb.resume(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(resumed.opening, timer.opening);
        assert_eq!(resumed.after, Duration::from_secs(20));

        cb.probe_due(timer.opening);
        assert!(cb.try_acquire(t0), "a probe left with the old incarnation");
        let resumed = cb.resume(t0).unwrap();
        assert_eq!(resumed.after, Duration::ZERO);
        assert!(cb.try_acquire(t0), "its outcome is lost: another may probe");
    }
}
