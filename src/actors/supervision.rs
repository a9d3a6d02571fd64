//! Restart strategy of our supervisors. ractor reports failures but restarts nothing;
//! this is the policy: one_for_one restarts with an intensity limit (at most
//! `max_restarts` within `window`, else escalate, as in Erlang/OTP) and exponential
//! backoff so that a child failing on start does not spin.

use super::telemetry::{self, Lifecycle, TelemetryMsg};
use crate::config::SupervisionSettings;
use crate::domain::backoff;
use ractor::{ActorProcessingErr, ActorRef};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartDecision {
    /// Restart the child after this delay.
    Restart { after: Duration },
    /// Too many restarts in the window: the supervisor gives up and fails itself.
    Escalate,
}

#[derive(Debug, Clone)]
pub(crate) struct RestartIntensity {
    max_restarts: usize,
    window: Duration,
    backoff_base: Duration,
    backoff_max: Duration,
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    pub fn new(settings: &SupervisionSettings) -> Self {
        Self {
            max_restarts: settings.max_restarts as usize,
            window: Duration::from_secs(settings.window_secs),
            backoff_base: Duration::from_millis(settings.backoff_base_ms),
            backoff_max: Duration::from_millis(settings.backoff_max_ms),
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now` and decides what to do about it.
    pub(crate) fn on_failure(&mut self, now: Instant) -> RestartDecision {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max_restarts {
            return RestartDecision::Escalate;
        }
        let failures = u32::try_from(self.recent.len() + 1).unwrap_or(u32::MAX);
        let after = backoff::exponential(failures, self.backoff_base, self.backoff_max);
        self.recent.push_back(now);
        RestartDecision::Restart { after }
    }
}

/// What a one_for_one supervisor does when its child `child` failed: records the
/// failure, then, as `intensity` decides, either has `restart` schedule the restart
/// after the backoff, or records the escalation and fails itself with `escalation`.
pub(crate) fn on_child_failure(
    intensity: &mut RestartIntensity,
    telemetry: &ActorRef<TelemetryMsg>,
    child: &str,
    failure: Option<String>,
    escalation: String,
    restart: impl FnOnce(Duration),
) -> Result<(), ActorProcessingErr> {
    telemetry::lifecycle(telemetry, child, Lifecycle::Failed, failure);
    match intensity.on_failure(Instant::now()) {
        RestartDecision::Restart { after } => {
            telemetry::lifecycle(
                telemetry,
                child,
                Lifecycle::Restarting,
                Some(format!("in {after:?}")),
            );
            restart(after);
            Ok(())
        }
        RestartDecision::Escalate => {
            telemetry::lifecycle(
                telemetry,
                child,
                Lifecycle::Escalated,
                Some(escalation.clone()),
            );
            Err(escalation.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartIntensity {
        RestartIntensity::new(&SupervisionSettings {
            max_restarts: 5,
            window_secs: 10,
            backoff_base_ms: 50,
            backoff_max_ms: 2000,
        })
    }

    #[test]
    fn five_restarts_in_ten_seconds_then_escalate() {
        let mut p = policy();
        let t0 = Instant::now();
        let delays: Vec<_> = (0..5)
            .map(|i| p.on_failure(t0 + Duration::from_secs(i)))
            .collect();
        assert_eq!(
            delays,
            [50, 100, 200, 400, 800].map(|ms| RestartDecision::Restart {
                after: Duration::from_millis(ms)
            })
        );
        assert_eq!(
            p.on_failure(t0 + Duration::from_secs(5)),
            RestartDecision::Escalate
        );
    }

    #[test]
    fn old_failures_fall_out_of_the_window() {
        let mut p = policy();
        let t0 = Instant::now();
        for i in 0..5 {
            p.on_failure(t0 + Duration::from_millis(i));
        }
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            p.on_failure(later),
            RestartDecision::Restart {
                after: Duration::from_millis(50)
            }
        );
    }
}
