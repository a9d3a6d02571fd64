//! The order runner: what one order's actor does next, as a pure state machine.
//!
//! [`Runner::handle`] takes an [`Event`] (a message to the actor, or the result of an
//! effect it asked for) and returns the [`Effect`]s to execute, as values: read the
//! order, persist a step's outcome, send a step request, start or cancel a timer,
//! acknowledge, announce, rest (for the router to passivate), stop. The actor
//! (`actors/order.rs`) executes them and feeds each result back; it decides nothing
//! itself. The saga decides what an outcome does to the order (`saga::decide`); the
//! runner decides how the order gets there: which call is in flight, retries with
//! backoff, the watchdog for replies that never come, riding out store and bus
//! outages, coming to rest.
//!
//! At most one effect that yields a result ([`Effect::Load`], [`Effect::Persist`],
//! [`Effect::Send`]) is returned per event, always last: its result is the next
//! event. [`Effect::Acknowledge`] ends a chain that went through, so deliveries are
//! acknowledged only once their effect is persisted; a chain cut short by an outage
//! keeps them held until the retry goes through.

use super::backoff;
use super::saga::{self, Operation, OperationOutcome};
use super::{Order, OrderEvent, OrderId};
use crate::domain::{StepReply, StepRequest};
use std::sync::Arc;
use std::time::Duration;

/// Why no reply counts as a transient failure of the step.
pub(crate) const NO_REPLY: &str = "no reply within the step watchdog";

/// The retry, watchdog, passivation and outage policy of every order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RunnerPolicy {
    /// Attempts of one operation before its outcome counts as unknown (exhausted).
    pub(crate) max_attempts: u32,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    /// How long a step request may go unanswered before it counts as failed.
    pub(crate) watchdog: Duration,
    pub(crate) outage_backoff_base: Duration,
    pub(crate) outage_backoff_max: Duration,
}

/// What the order's step is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Nothing is in flight: the next operation, if any, is issued now.
    Ready,
    /// The step request is being handed to the bus.
    Sending { operation: Operation, attempt: u32 },
    /// The step request is out; the watchdog runs.
    AwaitingReply { operation: Operation, attempt: u32 },
    /// The step failed transiently; it is tried again when the backoff is over.
    BackingOff { operation: Operation },
    /// A settled outcome waits to be persisted (kept while the store is down).
    /// Boxed: a phase is part of every live actor, and this one is brief.
    Persisting {
        operation: Operation,
        outcome: Box<OperationOutcome>,
    },
    /// The order waits on no system: the actor may passivate.
    Idle,
    /// The order is terminal, or does not exist: the actor stops.
    Stopped,
}

/// What an order's actor is doing, as telemetry shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Activity {
    Ready,
    AwaitingReply,
    BackingOff,
    Persisting,
    /// Waiting out a store or bus outage.
    OutageRetry,
    Idle,
    Stopped,
}

impl Phase {
    fn activity(&self) -> Activity {
        match self {
            Self::Ready => Activity::Ready,
            Self::Sending { .. } | Self::AwaitingReply { .. } => Activity::AwaitingReply,
            Self::BackingOff { .. } => Activity::BackingOff,
            Self::Persisting { .. } => Activity::Persisting,
            Self::Idle => Activity::Idle,
            Self::Stopped => Activity::Stopped,
        }
    }
}

/// Timers the runner starts; each carries what makes a late firing recognisable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    Watchdog { operation: Operation, attempt: u32 },
    Backoff { operation: Operation },
}

/// The kinds of [`Timer`], as telemetry shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TimerKind {
    Watchdog,
    RetryBackoff,
    /// The router's check of a resting actor: it passivates the actor then unless a
    /// message came since (one check for all of a node's actors, not a timer each).
    IdleCheck,
}

impl Timer {
    pub(crate) fn kind(self) -> TimerKind {
        match self {
            Self::Watchdog { .. } => TimerKind::Watchdog,
            Self::Backoff { .. } => TimerKind::RetryBackoff,
        }
    }
}

/// What happens to the runner.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// A command: read the order again and drive it on (intake, a change made
    /// elsewhere, a restart, a shard take-over).
    Woken,
    /// A system answered a step request made under ownership `epoch`.
    Replied {
        operation: Operation,
        attempt: u32,
        epoch: u64,
        reply: StepReply,
    },
    TimerFired(Timer),
    /// The backoff after a store or bus outage is over.
    OutageOver,
    /// Result of [`Effect::Load`].
    Loaded(Option<Arc<Order>>),
    /// Result of [`Effect::Persist`]: the order as stored now, and the events that
    /// were committed (none when the outcome turned out stale on a fresher order).
    Persisted {
        order: Arc<Order>,
        events: Vec<Arc<OrderEvent>>,
    },
    /// Result of [`Effect::Send`].
    Sent,
    /// The last effect failed because the store or the bus is unavailable.
    Unavailable,
    /// The last effect failed for good (the order kept changing under us).
    Failed(String),
}

/// What the actor must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Read the order from the store; answer with [`Event::Loaded`].
    Load,
    /// Apply the outcome to the stored order with compare-and-set, re-deciding on a
    /// fresher order when another writer got there first; answer with
    /// [`Event::Persisted`].
    Persist {
        operation: Operation,
        outcome: OperationOutcome,
    },
    /// Publish committed events to subscribers.
    Announce(Vec<Arc<OrderEvent>>),
    /// Hand a step request to the bus; answer with [`Event::Sent`].
    Send(Box<StepRequest>),
    /// The step in flight is over (`failure` says why when it failed).
    StepOver {
        operation: Operation,
        failure: Option<String>,
    },
    /// Start `timer`, replacing the pending one.
    StartTimer {
        timer: Timer,
        after: Duration,
    },
    CancelTimer,
    /// Try again what the outage stopped, after `after` (spread by the actor).
    RetryAfterOutage {
        after: Duration,
    },
    /// Acknowledge every delivery held so far: its effect is persisted.
    Acknowledge,
    /// Take one of the node's admission slots (the order is processing).
    Admit,
    /// Give the admission slot back.
    LeaveAdmission,
    /// Processing is over (the order's trace ends here).
    ProcessingOver,
    /// The order waits on nobody now: tell the router, which passivates the actor
    /// once it has rested for `orders.passivate_after_secs`, or earlier when more
    /// actors rest than it keeps (bounded memory under any order rate). `received`
    /// is how many messages the actor has seen, so that the router can tell whether
    /// one is still on its way: then the actor is not at rest any more.
    Rest {
        received: u64,
    },
    /// Stop the actor, handing held deliveries back.
    Stop {
        reason: Option<String>,
    },
    /// Stop the actor with an error, handing held deliveries back.
    Fail(String),
}

/// An order actor as telemetry shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OrderActorView {
    pub(crate) phase: Activity,
    pub(crate) in_flight: Option<StepInFlight>,
    /// Failed attempts of the step the order waits on.
    pub(crate) attempts: u32,
    pub(crate) next_timer: Option<NextTimer>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StepInFlight {
    pub(crate) operation: String,
    pub(crate) attempt: u32,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NextTimer {
    pub(crate) kind: TimerKind,
    pub(crate) due_at: chrono::DateTime<chrono::Utc>,
}

/// One order's runner: the last known order and what its step is doing.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    order_id: OrderId,
    /// The shard ownership this runner works under.
    epoch: u64,
    /// Shared by every runner of the node.
    policy: Arc<RunnerPolicy>,
    /// The order as last read or committed; shared (with a store's cache of recent
    /// orders, for one), never changed in place.
    order: Option<Arc<Order>>,
    phase: Phase,
    /// The order must be read before anything else is done.
    stale: bool,
    /// A reply that came before the order was read (boxed: rare, and a runner is
    /// part of every live actor).
    deferred: Option<Box<Event>>,
    /// Failed attempts of the operation the order waits on.
    attempts: u32,
    /// Last attempt number used, so that every request is distinguishable.
    last_attempt: u32,
    /// Consecutive store or bus failures, for the outage backoff.
    outage_failures: u32,
    outage_retry: bool,
    admitted: bool,
    /// Messages routed to this actor, for the passivation handshake.
    received: u64,
}

impl Runner {
    pub fn new(order_id: OrderId, epoch: u64, policy: Arc<RunnerPolicy>) -> Self {
        Self {
            order_id,
            epoch,
            policy,
            order: None,
            phase: Phase::Ready,
            stale: true,
            deferred: None,
            attempts: 0,
            last_attempt: 0,
            outage_failures: 0,
            outage_retry: false,
            admitted: false,
            received: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn order(&self) -> Option<&Arc<Order>> {
        self.order.as_ref()
    }

    /// Failed attempts of the step the order waits on.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether the runner holds an admission slot (given back when the actor stops).
    pub(crate) fn admitted(&self) -> bool {
        self.admitted
    }

    /// What the runner does, as telemetry shows it.
    pub(crate) fn activity(&self) -> Activity {
        if self.outage_retry && !matches!(self.phase, Phase::Persisting { .. }) {
            Activity::OutageRetry
        } else {
            self.phase.activity()
        }
    }

    pub(crate) fn handle(&mut self, event: Event) -> Vec<Effect> {
        let mut effects = Vec::new();
        if self.phase == Phase::Stopped {
            return effects;
        }
        match event {
            Event::Woken => {
                self.received += 1;
                self.stale = true;
            }
            replied @ Event::Replied { .. } => {
                self.received += 1;
                if self.order.is_none() {
                    self.stale = true;
                    self.deferred = Some(Box::new(replied));
                } else if let Event::Replied {
                    operation,
                    attempt,
                    epoch,
                    reply,
                } = replied
                {
                    self.on_reply(&mut effects, operation, attempt, epoch, reply);
                }
            }
            Event::TimerFired(timer) => match timer {
                Timer::Watchdog { operation, attempt } => {
                    if self.phase != (Phase::AwaitingReply { operation, attempt }) {
                        return effects;
                    }
                    let reason = NO_REPLY.to_owned();
                    let reply = StepReply::Transient { reason };
                    self.on_reply(&mut effects, operation, attempt, self.epoch, reply);
                }
                Timer::Backoff { operation } => {
                    if self.phase != (Phase::BackingOff { operation }) {
                        return effects;
                    }
                    self.phase = Phase::Ready;
                }
            },
            Event::OutageOver => {
                self.outage_retry = false;
                self.stale = true;
            }
            Event::Loaded(None) => {
                self.phase = Phase::Stopped;
                effects.push(Effect::Stop {
                    reason: Some("order not found".into()),
                });
                return effects;
            }
            Event::Loaded(Some(order)) => {
                self.order = Some(order);
                self.stale = false;
                if let Some(deferred) = self.deferred.take()
                    && let Event::Replied {
                        operation,
                        attempt,
                        epoch,
                        reply,
                    } = *deferred
                {
                    self.on_reply(&mut effects, operation, attempt, epoch, reply);
                }
            }
            Event::Persisted { order, events } => {
                self.order = Some(order);
                if matches!(self.phase, Phase::Persisting { .. }) {
                    self.phase = Phase::Ready;
                }
                if !events.is_empty() {
                    effects.push(Effect::Announce(events));
                }
            }
            Event::Sent => {
                if let Phase::Sending { operation, attempt } = self.phase {
                    self.phase = Phase::AwaitingReply { operation, attempt };
                    effects.push(Effect::StartTimer {
                        timer: Timer::Watchdog { operation, attempt },
                        after: self.policy.watchdog,
                    });
                }
            }
            Event::Unavailable => {
                if let Phase::Sending { .. } = self.phase {
                    self.phase = Phase::Ready;
                }
                self.outage_failures = self.outage_failures.saturating_add(1);
                if !self.outage_retry {
                    self.outage_retry = true;
                    let after = backoff::exponential(
                        self.outage_failures,
                        self.policy.outage_backoff_base,
                        self.policy.outage_backoff_max,
                    );
                    effects.push(Effect::RetryAfterOutage { after });
                }
                return effects;
            }
            Event::Failed(reason) => {
                self.phase = Phase::Stopped;
                effects.push(Effect::Fail(reason));
                return effects;
            }
        }
        self.proceed(&mut effects);
        effects
    }

    fn next_operation(&self) -> Option<Operation> {
        self.order.as_deref().and_then(saga::next_operation)
    }

    fn on_reply(
        &mut self,
        effects: &mut Vec<Effect>,
        operation: Operation,
        attempt: u32,
        epoch: u64,
        reply: StepReply,
    ) {
        // Attempt numbers start again with every owner of the shard: without the
        // epoch a late reply to the previous owner's attempt 1 would pass for an
        // answer to this owner's attempt 1.
        if epoch != self.epoch {
            return;
        }
        let expected = self.next_operation() == Some(operation);
        let in_flight = match self.phase {
            Phase::AwaitingReply {
                operation: o,
                attempt: a,
            } => Some((o, a)),
            _ => None,
        };
        match reply {
            // A settled reply counts whichever attempt it answers: the calls are
            // idempotent, so every attempt shares one outcome.
            StepReply::Settled { outcome } => {
                if in_flight.is_some_and(|(o, _)| o == operation) {
                    effects.push(Effect::CancelTimer);
                    effects.push(Effect::StepOver {
                        operation,
                        failure: None,
                    });
                    self.phase = Phase::Ready;
                }
                if expected && !matches!(self.phase, Phase::Persisting { .. }) {
                    self.attempts = 0;
                    self.phase = Phase::Persisting {
                        operation,
                        outcome: Box::new(outcome),
                    };
                }
            }
            StepReply::Transient { reason } => {
                if in_flight != Some((operation, attempt)) {
                    return;
                }
                effects.push(Effect::CancelTimer);
                effects.push(Effect::StepOver {
                    operation,
                    failure: Some(reason.clone()),
                });
                self.phase = Phase::Ready;
                if !expected {
                    return;
                }
                self.attempts += 1;
                if self.attempts >= self.policy.max_attempts {
                    self.attempts = 0;
                    let outcome = OperationOutcome::Exhausted { reason };
                    self.phase = Phase::Persisting {
                        operation,
                        outcome: Box::new(outcome),
                    };
                } else {
                    let after = backoff::exponential(
                        self.attempts,
                        self.policy.backoff_base,
                        self.policy.backoff_max,
                    );
                    self.phase = Phase::BackingOff { operation };
                    effects.push(Effect::StartTimer {
                        timer: Timer::Backoff { operation },
                        after,
                    });
                }
            }
        }
    }

    /// Asks for what the order needs next: read it, persist an outcome, issue its
    /// next step; or, when nothing is left to do for now, acknowledges.
    fn proceed(&mut self, effects: &mut Vec<Effect>) {
        if self.outage_retry {
            // Everything waits for the retry after the outage.
            return;
        }
        if self.stale {
            effects.push(Effect::Load);
            return;
        }
        if let Phase::Persisting { operation, outcome } = &self.phase {
            effects.push(Effect::Persist {
                operation: *operation,
                outcome: OperationOutcome::clone(outcome),
            });
            return;
        }
        if matches!(self.phase, Phase::Sending { .. }) {
            return;
        }
        let Some(order) = &self.order else {
            return;
        };
        let status = order.status;
        if status.is_processing() {
            if !self.admitted {
                self.admitted = true;
                effects.push(Effect::Admit);
            }
        } else {
            if self.admitted {
                self.admitted = false;
                effects.push(Effect::LeaveAdmission);
            }
            effects.push(Effect::ProcessingOver);
        }
        if status.is_terminal() {
            self.settled(effects);
            self.phase = Phase::Stopped;
            effects.push(Effect::CancelTimer);
            effects.push(Effect::Stop { reason: None });
            return;
        }
        match self.next_operation() {
            Some(operation) if matches!(self.phase, Phase::Ready | Phase::Idle) => {
                // Acknowledged once the request is out (`Event::Sent`).
                self.last_attempt += 1;
                let attempt = self.last_attempt;
                effects.push(Effect::CancelTimer);
                effects.push(Effect::Send(Box::new(
                    self.request(order, operation, attempt),
                )));
                self.phase = Phase::Sending { operation, attempt };
            }
            Some(_) => self.settled(effects),
            None => {
                self.settled(effects);
                self.phase = Phase::Idle;
                // Whatever comes next reads the order again (a command marks it
                // stale, a reply finds it missing), so a resting actor keeps none.
                self.order = None;
                effects.push(Effect::Rest {
                    received: self.received,
                });
            }
        }
    }

    /// The chain of effects went through: what it was asked for is done.
    fn settled(&mut self, effects: &mut Vec<Effect>) {
        self.outage_failures = 0;
        effects.push(Effect::Acknowledge);
    }

    fn request(&self, order: &Order, operation: Operation, attempt: u32) -> StepRequest {
        StepRequest {
            order_id: order.order_id.clone(),
            customer_id: order.customer_id.clone(),
            operation,
            attempt,
            epoch: self.epoch,
            pickup: order.pickup_location.clone(),
            delivery: order.delivery_address.clone(),
            package: order.package_details.clone(),
            route_id: order.route.as_ref().and_then(|r| r.route_id.clone()),
        }
    }

    pub fn order_id(&self) -> &OrderId {
        &self.order_id
    }

    /// The step request out, if any: its operation and attempt.
    pub fn in_flight(&self) -> Option<(Operation, u32)> {
        match self.phase {
            Phase::Sending { operation, attempt } | Phase::AwaitingReply { operation, attempt } => {
                Some((operation, attempt))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderStatus;
    use crate::domain::fixtures::{now, received, success};
    use crate::domain::saga::{SagaInput, decide};

    const EPOCH: u64 = 7;
    const BASE: Duration = Duration::from_millis(100);

    fn policy() -> Arc<RunnerPolicy> {
        Arc::new(RunnerPolicy {
            max_attempts: 3,
            backoff_base: BASE,
            backoff_max: Duration::from_millis(250),
            watchdog: Duration::from_secs(30),
            outage_backoff_base: Duration::from_millis(10),
            outage_backoff_max: Duration::from_millis(40),
        })
    }

    /// A runner that read `order` and sent its next step (attempt 1).
    fn sent(order: &Order) -> Runner {
        let mut runner = Runner::new(order.order_id.clone(), EPOCH, policy());
        assert_eq!(runner.handle(Event::Woken), [Effect::Load]);
        runner.handle(Event::Loaded(Some(Arc::new(order.clone()))));
        runner.handle(Event::Sent);
        runner
    }

    fn sends(effects: &[Effect]) -> Vec<(Operation, u32)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send(request) => Some((request.operation, request.attempt)),
                _ => None,
            })
            .collect()
    }

    fn reply(operation: Operation, attempt: u32, reply: StepReply) -> Event {
        Event::Replied {
            operation,
            attempt,
            epoch: EPOCH,
            reply,
        }
    }

    fn settled(operation: Operation, attempt: u32) -> Event {
        let outcome = success(operation);
        reply(operation, attempt, StepReply::Settled { outcome })
    }

    fn transient(operation: Operation, attempt: u32) -> Event {
        let reason = "connection refused".to_owned();
        reply(operation, attempt, StepReply::Transient { reason })
    }

    /// What the store makes of a persisted outcome.
    fn persisted(order: &Order, operation: Operation, outcome: OperationOutcome) -> Event {
        let decision = decide(order, SagaInput::Outcome(operation, outcome), now()).unwrap();
        Event::Persisted {
            order: Arc::new(decision.order),
            events: decision.events.into_iter().map(Arc::new).collect(),
        }
    }

    #[test]
    fn a_fresh_order_is_read_then_its_first_step_sent_and_acknowledged_once_out() {
        let order = received("ORD-1");
        let mut runner = Runner::new(order.order_id.clone(), EPOCH, policy());
        assert_eq!(runner.handle(Event::Woken), [Effect::Load]);
        let effects = runner.handle(Event::Loaded(Some(Arc::new(order))));
        assert_eq!(effects[0], Effect::Admit);
        assert_eq!(sends(&effects), [(Operation::ValidateCustomer, 1)]);
        assert!(
            !effects.contains(&Effect::Acknowledge),
            "not before it is out"
        );
        let effects = runner.handle(Event::Sent);
        assert_eq!(
            effects,
            [
                Effect::StartTimer {
                    timer: Timer::Watchdog {
                        operation: Operation::ValidateCustomer,
                        attempt: 1
                    },
                    after: policy().watchdog,
                },
                Effect::Acknowledge
            ]
        );
        assert_eq!(runner.activity(), Activity::AwaitingReply);
    }

    #[test]
    fn a_settled_reply_is_persisted_then_the_next_step_sent() {
        let order = received("ORD-1");
        let mut runner = sent(&order);
        let effects = runner.handle(settled(Operation::ValidateCustomer, 1));
        let persist = Effect::Persist {
            operation: Operation::ValidateCustomer,
            outcome: success(Operation::ValidateCustomer),
        };
        assert_eq!(effects.last(), Some(&persist));
        assert!(
            !effects.contains(&Effect::Acknowledge),
            "held until persisted"
        );
        let effects = runner.handle(persisted(
            &order,
            Operation::ValidateCustomer,
            success(Operation::ValidateCustomer),
        ));
        assert!(matches!(effects[0], Effect::Announce(ref events) if events.len() == 1));
        assert_eq!(sends(&effects), [(Operation::ReserveInventory, 2)]);
    }

    #[test]
    fn transient_failures_back_off_exponentially_then_exhaust_the_budget() {
        let order = received("ORD-1");
        let mut runner = sent(&order);
        let op = Operation::ValidateCustomer;
        let effects = runner.handle(transient(op, 1));
        assert!(effects.contains(&Effect::StartTimer {
            timer: Timer::Backoff { operation: op },
            after: BASE,
        }));
        assert!(
            sends(&effects).is_empty(),
            "nothing before the backoff is over"
        );
        assert_eq!(runner.activity(), Activity::BackingOff);
        assert_eq!(runner.attempts(), 1);
        let effects = runner.handle(Event::TimerFired(Timer::Backoff { operation: op }));
        assert_eq!(sends(&effects), [(op, 2)]);
        runner.handle(Event::Sent);
        let effects = runner.handle(transient(op, 2));
        assert!(effects.contains(&Effect::StartTimer {
            timer: Timer::Backoff { operation: op },
            after: BASE * 2,
        }));
        runner.handle(Event::TimerFired(Timer::Backoff { operation: op }));
        runner.handle(Event::Sent);
        // The third failure exhausts the budget of 3: the outcome is unknown.
        let effects = runner.handle(transient(op, 3));
        assert_eq!(
            effects.last(),
            Some(&Effect::Persist {
                operation: op,
                outcome: OperationOutcome::Exhausted {
                    reason: "connection refused".into()
                },
            })
        );
        assert_eq!(runner.attempts(), 0);
    }

    #[test]
    fn the_watchdog_counts_a_missing_reply_as_a_transient_failure() {
        let order = received("ORD-1");
        let mut runner = sent(&order);
        let op = Operation::ValidateCustomer;
        let stale = Timer::Watchdog {
            operation: op,
            attempt: 9,
        };
        assert!(runner.handle(Event::TimerFired(stale)).is_empty());
        let current = Timer::Watchdog {
            operation: op,
            attempt: 1,
        };
        let effects = runner.handle(Event::TimerFired(current));
        assert!(effects.contains(&Effect::StepOver {
            operation: op,
            failure: Some(NO_REPLY.into()),
        }));
        assert_eq!(runner.phase(), &Phase::BackingOff { operation: op });
        // The reply to the timed-out attempt comes late: a transient one is moot...
        let effects = runner.handle(transient(op, 1));
        assert_eq!(effects, [Effect::Acknowledge]);
        // ...a settled one counts, whichever attempt it answers.
        let effects = runner.handle(settled(op, 1));
        assert!(matches!(effects.last(), Some(Effect::Persist { .. })));
    }

    #[test]
    fn replies_to_another_ownerships_requests_are_dropped() {
        let order = received("ORD-1");
        let mut runner = sent(&order);
        for epoch in [EPOCH - 1, EPOCH + 1, 0] {
            let effects = runner.handle(Event::Replied {
                operation: Operation::ValidateCustomer,
                attempt: 1,
                epoch,
                reply: StepReply::Settled {
                    outcome: success(Operation::ValidateCustomer),
                },
            });
            assert_eq!(effects, [Effect::Acknowledge], "epoch {epoch}");
        }
        assert_eq!(runner.activity(), Activity::AwaitingReply);
    }

    #[test]
    fn a_cancel_during_a_step_waits_for_its_reply_then_compensates() {
        let order = received("ORD-1");
        let validated = decide(
            &order,
            SagaInput::Outcome(
                Operation::ValidateCustomer,
                success(Operation::ValidateCustomer),
            ),
            now(),
        )
        .unwrap()
        .order;
        let mut runner = sent(&validated);
        // Cancelled over HTTP while the reservation is out.
        let cancelled = decide(&validated, SagaInput::Cancel, now()).unwrap().order;
        assert_eq!(runner.handle(Event::Woken), [Effect::Load]);
        let effects = runner.handle(Event::Loaded(Some(Arc::new(cancelled.clone()))));
        assert!(sends(&effects).is_empty(), "the reservation is still out");
        // The reservation took effect: it is undone, not persisted as a success.
        let effects = runner.handle(settled(Operation::ReserveInventory, 1));
        assert!(!effects.iter().any(|e| matches!(e, Effect::Persist { .. })));
        let next = crate::domain::saga::next_operation(&cancelled).unwrap();
        assert!(next.is_compensation());
        assert_eq!(sends(&effects), [(next, 2)]);
    }

    #[test]
    fn a_conflicting_write_drives_on_from_the_order_as_stored() {
        let order = received("ORD-1");
        let mut runner = sent(&order);
        runner.handle(settled(Operation::ValidateCustomer, 1));
        // Someone cancelled first: the outcome was stale on the stored order.
        let cancelled = decide(&order, SagaInput::Cancel, now()).unwrap().order;
        let effects = runner.handle(Event::Persisted {
            order: Arc::new(cancelled.clone()),
            events: Vec::new(),
        });
        assert!(!effects.iter().any(|e| matches!(e, Effect::Announce(_))));
        match crate::domain::saga::next_operation(&cancelled) {
            Some(undo) => assert_eq!(sends(&effects), [(undo, 2)]),
            None => assert_eq!(effects.last(), Some(&Effect::Stop { reason: None })),
        }
    }

    #[test]
    fn a_store_outage_holds_acknowledgements_until_the_retry_goes_through() {
        let order = received("ORD-1");
        let mut runner = sent(&order);
        let op = Operation::ValidateCustomer;
        runner.handle(settled(op, 1));
        let effects = runner.handle(Event::Unavailable);
        assert_eq!(
            effects,
            [Effect::RetryAfterOutage {
                after: Duration::from_millis(10)
            }]
        );
        assert_eq!(runner.activity(), Activity::Persisting);
        // A command meanwhile waits for the retry; nothing is acknowledged.
        assert!(runner.handle(Event::Woken).is_empty());
        assert_eq!(runner.handle(Event::OutageOver), [Effect::Load]);
        // Still down: the next retry waits longer.
        let effects = runner.handle(Event::Unavailable);
        assert_eq!(
            effects,
            [Effect::RetryAfterOutage {
                after: Duration::from_millis(20)
            }]
        );
        runner.handle(Event::OutageOver);
        let effects = runner.handle(Event::Loaded(Some(Arc::new(order.clone()))));
        assert!(matches!(effects.last(), Some(Effect::Persist { .. })));
        let effects = runner.handle(persisted(&order, op, success(op)));
        assert_eq!(sends(&effects), [(Operation::ReserveInventory, 2)]);
        let effects = runner.handle(Event::Sent);
        assert_eq!(effects.last(), Some(&Effect::Acknowledge));
    }

    #[test]
    fn an_order_waiting_on_nobody_rests_counting_the_messages_it_has_seen() {
        let mut order = received("ORD-1");
        for op in [
            Operation::ValidateCustomer,
            Operation::ReserveInventory,
            Operation::OptimizeRoute,
        ] {
            order = decide(&order, SagaInput::Outcome(op, success(op)), now())
                .unwrap()
                .order;
        }
        assert_eq!(order.status, OrderStatus::ReadyForDelivery);
        let mut runner = Runner::new(order.order_id.clone(), EPOCH, policy());
        runner.handle(Event::Woken);
        let effects = runner.handle(Event::Loaded(Some(Arc::new(order.clone()))));
        assert!(effects.contains(&Effect::ProcessingOver) && !runner.admitted());
        // At rest: the router hears of it (and passivates the actor later unless a
        // message came since), and the actor keeps no copy of the order.
        assert_eq!(effects.last(), Some(&Effect::Rest { received: 1 }));
        assert!(runner.order().is_none());
        // A late timer is not a message: the router's count still holds.
        let late = Timer::Watchdog {
            operation: Operation::OptimizeRoute,
            attempt: 1,
        };
        assert_eq!(runner.handle(Event::TimerFired(late)), []);
        // A message: the actor reads the order again and rests anew, having seen two.
        assert_eq!(runner.handle(Event::Woken), [Effect::Load]);
        let effects = runner.handle(Event::Loaded(Some(Arc::new(order))));
        assert_eq!(effects.last(), Some(&Effect::Rest { received: 2 }));
    }

    #[test]
    fn a_terminal_order_stops_its_actor_and_frees_its_slot() {
        let order = received("ORD-1");
        let mut runner = sent(&order);
        assert!(runner.admitted());
        // Cancelled before the customer check took effect: nothing to undo.
        let cancelled = decide(&order, SagaInput::Cancel, now()).unwrap().order;
        assert_eq!(cancelled.status, OrderStatus::Cancelled);
        runner.handle(Event::Woken);
        let effects = runner.handle(Event::Loaded(Some(Arc::new(cancelled))));
        assert!(effects.contains(&Effect::LeaveAdmission));
        assert!(effects.contains(&Effect::Acknowledge));
        assert_eq!(effects.last(), Some(&Effect::Stop { reason: None }));
        assert!(!runner.admitted());
        let late = runner.handle(settled(Operation::ValidateCustomer, 1));
        assert!(late.is_empty(), "stopped for good");
    }
}
