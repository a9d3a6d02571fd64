//! One actor per live order: the saga orchestrator of DESIGN section 4.
//!
//! The actor decides nothing: `domain::runner::Runner` says what to do next and the
//! actor executes it (reads and writes through the store, sends through the bus,
//! timers, acknowledgements, admission, telling the router it rests), feeding each
//! result back. What is left here is what a pure function cannot do: IO, tracing
//! spans and metrics.
//!
//! Deliveries are acknowledged only once their effect is persisted: while the store is
//! down their acknowledgements are held (which also holds back the broker through the
//! prefetch window), and a fatal error hands them back to the broker.
//!
//! The actor works under its shard's lease and is fenced by it: before each write and
//! each send it checks that this node still holds the shard under the same epoch,
//! requests carry the epoch, and the runner drops replies to another epoch's
//! requests. An actor that finds itself fenced stops at once; the shard's new owner
//! resumes the order.

use super::Context;
use super::orders::{OrdersMsg, Resting};
use super::shards::Lease;
use super::timer::PendingTimer;
use crate::bus::Acker;
use crate::bus::{BusError, StepReply};
use crate::domain::backoff::jittered;
use crate::domain::runner::{
    Effect, Event, NO_REPLY, NextTimer, OrderActorView, Runner, RunnerPolicy, StepInFlight, Timer,
    TimerKind,
};
use crate::domain::saga;
use crate::domain::{Operation, OperationOutcome, OrderId, SagaInput};
use crate::service::{KeptChanging, announce, commit_with_retry};
use crate::store::StoreError;
use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Backoff while the store or the bus is unavailable.
const OUTAGE_BACKOFF_BASE: Duration = Duration::from_millis(100);
const OUTAGE_BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(crate) enum OrderMsg {
    /// Reload from the store and drive on.
    Wake { ack: Acker, trace: Option<String> },
    StepResult {
        operation: Operation,
        attempt: u32,
        epoch: u64,
        reply: StepReply,
        ack: Acker,
        trace: Option<String>,
    },
    /// A timer the runner started fired.
    Timer(Timer),
    /// The store or the bus failed; try again what could not be done.
    OutageOver,
    /// What the actor is doing, for `GET /api/telemetry/orders/{id}`.
    Inspect(RpcReplyPort<OrderActorView>),
}

pub(crate) struct OrderActorArgs {
    pub(crate) order_id: OrderId,
    pub(crate) lease: Lease,
    pub(crate) policy: Arc<RunnerPolicy>,
    pub(crate) context: Arc<Context>,
    pub(crate) router: ActorRef<OrdersMsg>,
}

/// The runners' policy, from the node's settings (one for all of its order actors).
pub(crate) fn runner_policy(settings: &crate::config::Settings) -> RunnerPolicy {
    RunnerPolicy {
        max_attempts: settings.saga.max_attempts,
        backoff_base: Duration::from_millis(settings.saga.backoff_base_ms),
        backoff_max: Duration::from_millis(settings.saga.backoff_max_ms),
        watchdog: Duration::from_secs(settings.saga.step_watchdog_secs),
        outage_backoff_base: OUTAGE_BACKOFF_BASE,
        outage_backoff_max: OUTAGE_BACKOFF_MAX,
    }
}

/// Why an effect could not be executed.
#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    KeptChanging(#[from] KeptChanging),
    /// This node no longer holds the order's shard under the actor's lease.
    #[error("the shard is no longer held under this actor's lease")]
    Fenced,
}

impl OrderError {
    /// What the runner makes of it: outages are waited out, nothing is lost meanwhile.
    fn into_event(self) -> Result<Event, Fenced> {
        match self {
            Self::Fenced => Err(Fenced),
            Self::Store(StoreError::Unavailable(_)) | Self::Bus(_) => {
                tracing::warn!(error = %self, "cannot proceed now; will retry");
                Ok(Event::Unavailable)
            }
            other => Ok(Event::Failed(other.to_string())),
        }
    }
}

/// The actor found itself fenced: it stops without acting.
struct Fenced;

pub(crate) struct OrderState {
    lease: Lease,
    runner: Runner,
    /// Acknowledgements of deliveries whose effect is not persisted yet.
    held: Vec<Acker>,
    /// Pending timer, aborted as soon as it is moot so that tens of thousands of
    /// orders do not leave as many sleeping tasks behind.
    timer: PendingTimer<OrderMsg>,
    /// What the pending timer is and when it fires.
    next_timer: Option<NextTimer>,
    /// The trace span of the order's processing, from the command that started it
    /// (a child of the `traceparent` it came with: intake's request) until the order
    /// leaves processing; every step span hangs under it.
    span: tracing::Span,
    /// The span of the step in flight, closed when its reply settles it.
    step_span: Option<tracing::Span>,
    context: Arc<Context>,
    router: ActorRef<OrdersMsg>,
}

pub(crate) struct OrderActor;

impl Actor for OrderActor {
    type Msg = OrderMsg;
    type State = OrderState;
    type Arguments = OrderActorArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: OrderActorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Loading happens with the first message, not here: the router awaits
        // pre_start, and must never wait on the store.
        Ok(OrderState {
            lease: args.lease,
            runner: Runner::new(args.order_id, args.lease.epoch, args.policy),
            held: Vec::new(),
            timer: PendingTimer::new(),
            next_timer: None,
            span: tracing::Span::none(),
            step_span: None,
            context: args.context,
            router: args.router,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Boxed: the actor's task is as large as its largest await, and a resting
        // actor should not carry the acknowledgements' futures inline.
        Box::pin(state.stopped()).await;
        Ok(())
    }

    fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send {
        // Boxed whole, message included: the actor's task holds what it awaits
        // inline, and a resting actor should carry no more than a pointer for it.
        Box::pin(async move {
            if state.span.is_none() {
                let trace = match &message {
                    OrderMsg::Wake { trace, .. } | OrderMsg::StepResult { trace, .. } => {
                        trace.as_deref()
                    }
                    _ => None,
                };
                let node = &state.context.node_id;
                state.span = crate::observability::order_span(state.runner.order_id(), node, trace);
            }
            let span = state.span.clone();
            state.handle(&myself, message).instrument(span).await
        })
    }
}

impl OrderState {
    async fn handle(
        &mut self,
        myself: &ActorRef<OrderMsg>,
        message: OrderMsg,
    ) -> Result<(), ActorProcessingErr> {
        let event = match message {
            OrderMsg::Wake { ack, .. } => {
                self.held.push(ack);
                Event::Woken
            }
            OrderMsg::StepResult {
                operation,
                attempt,
                epoch,
                reply,
                ack,
                ..
            } => {
                self.held.push(ack);
                Event::Replied {
                    operation,
                    attempt,
                    epoch,
                    reply,
                }
            }
            OrderMsg::Timer(timer) => Event::TimerFired(timer),
            OrderMsg::OutageOver => Event::OutageOver,
            OrderMsg::Inspect(reply) => {
                let _ = reply.send(self.view());
                return Ok(());
            }
        };
        let mut next = Some(event);
        while let Some(event) = next.take() {
            for effect in self.runner.handle(event) {
                match self.execute(myself, effect).await {
                    Ok(Some(result)) => next = Some(result),
                    Ok(None) => {}
                    Err(Stop::Fenced) => {
                        tracing::info!(
                            shard = self.lease.shard,
                            "shard handed over; order actor stops without acting"
                        );
                        myself.stop(Some("fenced".into()));
                        return Ok(());
                    }
                    Err(Stop::Failed(reason)) => {
                        for ack in self.held.drain(..) {
                            ack.reject(&reason).await;
                        }
                        return Err(reason.into());
                    }
                }
            }
        }
        Ok(())
    }

    /// What stopping leaves behind: the admission slot back, held deliveries
    /// settled with the broker (the timer goes with the state).
    async fn stopped(&mut self) {
        if self.runner.admitted() {
            self.context.admission.leave();
        }
        if self.fenced() {
            // The shard moved on: its new owner resumes the order from the store, so
            // what this actor held has nothing left to do (and the broker no reason
            // to count a failed delivery).
            for ack in self.held.drain(..) {
                ack.ack().await;
            }
            return;
        }
        // Anything still held goes back to the broker for another attempt.
        for ack in self.held.drain(..) {
            ack.reject("order actor stopped before persisting").await;
        }
    }

    /// Executes one effect; the result, for those that have one, is the runner's
    /// next event.
    async fn execute(
        &mut self,
        myself: &ActorRef<OrderMsg>,
        effect: Effect,
    ) -> Result<Option<Event>, Stop> {
        match effect {
            Effect::Load => {
                let id = self.runner.order_id();
                let loaded = match self.context.store.order(id).await {
                    Ok(order) => {
                        if order.is_none() {
                            tracing::warn!("woken for an order that does not exist");
                        }
                        Event::Loaded(order)
                    }
                    Err(error) => OrderError::from(error).into_event()?,
                };
                return Ok(Some(loaded));
            }
            Effect::Persist { operation, outcome } => {
                return Ok(Some(self.persist(operation, outcome).await?));
            }
            Effect::Announce(events) => announce(&self.context.bus, events).await,
            Effect::Send(request) => {
                if self.fenced() {
                    return Err(Stop::Fenced);
                }
                let span = crate::observability::step_span(request.operation, request.attempt);
                let sent = self
                    .context
                    .bus
                    .send_step(*request)
                    .instrument(span.clone())
                    .await;
                return Ok(Some(match sent {
                    Ok(()) => {
                        self.step_span = Some(span);
                        Event::Sent
                    }
                    Err(error) => OrderError::from(error).into_event()?,
                }));
            }
            Effect::StepOver { operation, failure } => {
                let span = self.step_span.take();
                if let Some(reason) = failure {
                    if reason == NO_REPLY {
                        tracing::warn!(operation = operation.name(), "no reply in time");
                    }
                    if let Some(span) = &span {
                        crate::observability::step_failed(span, &reason);
                    }
                    metrics::counter!("swift_step_retries_total", "system" => operation.system().as_str())
                        .increment(1);
                }
            }
            Effect::StartTimer { timer, after } => {
                let after = match timer {
                    Timer::Backoff { .. } => jittered(after),
                    Timer::Watchdog { .. } => after,
                };
                self.next_timer = next_timer(timer.kind(), after);
                self.timer
                    .set(myself, after, move || OrderMsg::Timer(timer));
            }
            Effect::CancelTimer => self.cancel_timer(),
            Effect::RetryAfterOutage { after } => {
                myself.send_after(jittered(after), || OrderMsg::OutageOver);
            }
            Effect::Acknowledge => {
                // Taken rather than drained: a resting actor keeps no buffer.
                for ack in std::mem::take(&mut self.held) {
                    ack.ack().await;
                }
            }
            Effect::Admit => self.context.admission.enter(),
            Effect::LeaveAdmission => self.context.admission.leave(),
            Effect::ProcessingOver => {
                // A later command (cancel, delivery) starts another trace under its
                // own request.
                self.span = tracing::Span::none();
            }
            Effect::Rest { received } => {
                // A resting actor holds no timer: the router checks all of them.
                self.cancel_timer();
                let after = self.context.settings.orders.passivate_after_secs;
                self.next_timer = next_timer(TimerKind::IdleCheck, Duration::from_secs(after));
                let resting = Resting {
                    order_id: self.runner.order_id().clone(),
                    actor: myself.get_id(),
                    received,
                };
                let _ = self.router.cast(OrdersMsg::Resting(resting));
            }
            Effect::Stop { reason } => myself.stop(reason),
            Effect::Fail(reason) => return Err(Stop::Failed(reason)),
        }
        Ok(None)
    }

    /// Applies a settled outcome to the stored order, re-deciding on a fresher one
    /// when another writer got there first; the lease is checked before each write.
    async fn persist(
        &mut self,
        operation: Operation,
        outcome: OperationOutcome,
    ) -> Result<Event, Stop> {
        let Some(order) = self.runner.order() else {
            return Ok(Event::Unavailable);
        };
        if let OperationOutcome::Exhausted { reason } = &outcome {
            tracing::warn!(operation = operation.name(), %reason, "retry budget exhausted");
        }
        let lease = self.lease;
        let shards = &self.context.shards;
        let decide = |order: &crate::domain::Order| {
            if !shards.holds(lease) {
                return Err(OrderError::Fenced);
            }
            let input = SagaInput::Outcome(operation, outcome.clone());
            // A stale or conflicting outcome changes nothing: the order moved on.
            Ok(saga::decide(order, input, Utc::now()).ok())
        };
        let context = &self.context;
        match commit_with_retry(context.store.as_ref(), &context.node_id, order, decide).await {
            Ok(committed) => Ok(Event::Persisted {
                order: committed.order,
                events: committed.events,
            }),
            Err(error) => error.into_event().map_err(|Fenced| Stop::Fenced),
        }
    }

    /// True once this node no longer holds the shard under the actor's lease.
    fn fenced(&self) -> bool {
        !self.context.shards.holds(self.lease)
    }

    fn cancel_timer(&mut self) {
        self.timer.cancel();
        self.next_timer = None;
    }

    fn view(&self) -> OrderActorView {
        OrderActorView {
            phase: self.runner.activity(),
            in_flight: self
                .runner
                .in_flight()
                .map(|(operation, attempt)| StepInFlight {
                    operation: operation.name().to_owned(),
                    attempt,
                }),
            attempts: self.runner.attempts(),
            next_timer: self.next_timer.clone(),
        }
    }
}

/// A timer as telemetry shows it; none when `after` is beyond any date (a setting
/// meaning "never").
fn next_timer(kind: TimerKind, after: Duration) -> Option<NextTimer> {
    let delay = chrono::TimeDelta::from_std(after).ok()?;
    let due_at = Utc::now().checked_add_signed(delay)?;
    Some(NextTimer { kind, due_at })
}

/// Why the actor stops handling a message.
enum Stop {
    Fenced,
    Failed(String),
}

impl From<Fenced> for Stop {
    fn from(_: Fenced) -> Self {
        Self::Fenced
    }
}
