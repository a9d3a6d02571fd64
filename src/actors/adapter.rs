//! An adapter actor per external system (cms, wms, ros).
//!
//! The actor never awaits a remote call: each call runs in its own task, bounded by a
//! semaphore and a timeout, and sends its result straight to the order through the
//! bus before telling the actor how it went. So a panicking adapter loses no call in
//! flight, and a slow system never blocks the mailbox.
//!
//! Circuit state and the requests parked while the circuit is open live in an
//! `AdapterCore` owned by the supervisor, so they survive a restart of the actor.
//! A parked request is checked against its order's persisted state before it goes
//! out (see `parked`).

use super::Context;
use super::circuit::{CircuitBreaker, ProbeTimer};
use super::control::{CircuitState, ServiceHealth};
use super::parked::{self, ParkedQueue};
use super::telemetry::{MailboxGauge, Posted};
use crate::bus::Acker;
use crate::bus::{OrderCommand, StepReply, StepRequest};
use crate::config::Settings;
use crate::domain::{OperationOutcome, System};
use crate::protocols::{CallError, SystemClient};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::Instrument;

/// Requests parked on an open circuit beyond which new ones are answered "retry
/// later" at once. Admission bounds it anyway; this is the second fence.
const MAX_PARKED: usize = 100_000;

pub(crate) enum AdapterMsg {
    Execute {
        request: Box<StepRequest>,
        ack: Acker,
        posted: Posted,
        /// The `traceparent` of the order step that asked for the call.
        trace: Option<String>,
    },
    Completed {
        failure: Option<CallError>,
        latency: Duration,
        posted: Posted,
    },
    /// The probe timer of the circuit's `opening`-th opening fired.
    ProbeDue {
        opening: u64,
    },
    /// A call the circuit let through was not made: its order had moved on.
    Skipped,
    Recover(RpcReplyPort<ServiceHealth>),
    /// Fault injection for supervision drills: the actor panics on purpose.
    InjectPanic,
}

/// Everything of an adapter that outlives one incarnation of its actor.
pub(crate) struct AdapterCore {
    pub(crate) system: System,
    pub(crate) client: Arc<dyn SystemClient>,
    pub(crate) mailbox: MailboxGauge,
    timeout: Duration,
    permits: Arc<Semaphore>,
    in_flight: Arc<AtomicUsize>,
    inner: Mutex<CoreState>,
}

struct CoreState {
    breaker: CircuitBreaker,
    parked: ParkedQueue,
    total_calls: u64,
    total_failures: u64,
    /// Kept typed; rendered only for the health view.
    last_error: Option<CallError>,
    last_latency: Option<Duration>,
}

impl AdapterCore {
    pub fn new(system: System, client: Arc<dyn SystemClient>, settings: &Settings) -> Self {
        let limits = settings.call_limits(system);
        Self {
            system,
            client,
            mailbox: MailboxGauge::new(
                "adapters",
                super::adapters::actor_name(system),
                settings.telemetry.mailbox_timing,
            ),
            timeout: Duration::from_millis(limits.timeout_ms),
            permits: Arc::new(Semaphore::new(limits.concurrency)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            inner: Mutex::new(CoreState {
                breaker: CircuitBreaker::new(
                    settings.circuit.failure_threshold,
                    Duration::from_secs(settings.circuit.open_secs),
                ),
                parked: ParkedQueue::default(),
                total_calls: 0,
                total_failures: 0,
                last_error: None,
                last_latency: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CoreState> {
        // A poisoned lock only means a previous incarnation panicked mid-update; the
        // counters are still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn health(&self) -> ServiceHealth {
        let inner = self.lock();
        ServiceHealth {
            service: self.system,
            circuit: inner.breaker.state(),
            consecutive_failures: inner.breaker.consecutive_failures(),
            total_failures: inner.total_failures,
            total_calls: inner.total_calls,
            last_error: inner.last_error.as_ref().map(ToString::to_string),
            last_latency_ms: inner.last_latency.map(|d| d.as_secs_f64() * 1000.0),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            waiting: inner.parked.len(),
            contract: self.client.contract(),
        }
    }
}

pub(crate) struct AdapterArgs {
    pub(crate) core: Arc<AdapterCore>,
    pub(crate) context: Arc<Context>,
}

pub(crate) struct AdapterState {
    core: Arc<AdapterCore>,
    context: Arc<Context>,
    /// The circuit state last exported, to count transitions.
    circuit: CircuitState,
}

pub(crate) struct Adapter;

impl Actor for Adapter {
    type Msg = AdapterMsg;
    type State = AdapterState;
    type Arguments = AdapterArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: AdapterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let circuit = args.core.lock().breaker.state();
        Ok(AdapterState {
            core: args.core,
            context: args.context,
            circuit,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A previous incarnation may have left an open circuit; its timers died with it.
        let timer = state.core.lock().breaker.resume(Instant::now());
        if let Some(timer) = timer {
            schedule_probe(&myself, timer);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AdapterMsg::Execute {
                request,
                ack,
                posted,
                trace,
            } => {
                state.core.mailbox.took(posted);
                state.admit(&myself, request, ack, trace);
            }
            AdapterMsg::Completed {
                failure,
                latency,
                posted,
            } => {
                state.core.mailbox.took(posted);
                state.completed(&myself, failure, latency);
            }
            AdapterMsg::ProbeDue { opening } => {
                state.core.lock().breaker.probe_due(opening);
                state.release_parked(&myself);
            }
            AdapterMsg::Skipped => {
                state.core.lock().breaker.call_skipped();
                state.release_parked(&myself);
            }
            AdapterMsg::Recover(reply) => {
                state.core.lock().breaker.reset();
                tracing::info!(
                    system = state.core.system.as_str(),
                    "circuit closed by an operator"
                );
                state.release_parked(&myself);
                let _ = reply.send(state.core.health());
            }
            AdapterMsg::InjectPanic => {
                panic!(
                    "fault injected into the {} adapter",
                    state.core.system.as_str()
                )
            }
        }
        state.export_circuit_metric();
        Ok(())
    }
}

impl AdapterState {
    /// `trace` is the `traceparent` of the order step asking for the call: the call's
    /// span joins the order's trace, now or when a parked call goes.
    fn admit(
        &self,
        myself: &ActorRef<AdapterMsg>,
        request: Box<StepRequest>,
        ack: Acker,
        trace: Option<String>,
    ) {
        let mut inner = self.core.lock();
        if inner.breaker.try_acquire(Instant::now()) {
            drop(inner);
            let span = crate::observability::call_span(&request, trace.as_deref());
            self.dispatch(myself, request, ack, Parked::No, span);
        } else if inner.parked.len() < MAX_PARKED {
            inner.parked.push(request, ack, trace);
        } else {
            drop(inner);
            let span = crate::observability::call_span(&request, trace.as_deref());
            let reply = StepReply::Transient {
                reason: format!("{} circuit is open", self.core.system.as_str()),
            };
            count_outcome(self.core.system, &request, "circuit_open");
            self.answer_now(request, reply, ack, span);
        }
    }

    /// Lets parked requests go as far as the circuit allows: all of them when closed,
    /// one probe when half-open. Superseded attempts are dropped on the way.
    fn release_parked(&self, myself: &ActorRef<AdapterMsg>) {
        loop {
            let mut inner = self.core.lock();
            if inner.parked.is_empty() || !inner.breaker.try_acquire(Instant::now()) {
                return;
            }
            let Some((request, ack, trace, current)) = inner.parked.pop() else {
                return;
            };
            if let Err(moot) = current {
                inner.breaker.call_skipped();
                drop(inner);
                drop_parked(&request, &moot, ack);
                continue;
            }
            drop(inner);
            let span = crate::observability::call_span(&request, trace.as_deref());
            self.dispatch(myself, request, ack, Parked::Yes, span);
        }
    }

    fn completed(
        &self,
        myself: &ActorRef<AdapterMsg>,
        failure: Option<CallError>,
        latency: Duration,
    ) {
        let mut inner = self.core.lock();
        inner.total_calls += 1;
        inner.last_latency = Some(latency);
        let release = match failure {
            None => {
                let closed = inner.breaker.on_success();
                if closed {
                    tracing::info!(system = self.core.system.as_str(), "circuit closed again");
                }
                closed
            }
            Some(error) => {
                inner.total_failures += 1;
                inner.last_error = Some(error);
                if let Some(timer) = inner.breaker.on_failure(Instant::now()) {
                    tracing::warn!(system = self.core.system.as_str(), "circuit opened");
                    schedule_probe(myself, timer);
                }
                false
            }
        };
        drop(inner);
        if release {
            self.release_parked(myself);
        }
    }

    fn dispatch(
        &self,
        myself: &ActorRef<AdapterMsg>,
        request: Box<StepRequest>,
        ack: Acker,
        parked: Parked,
        span: tracing::Span,
    ) {
        let core = self.core.clone();
        let context = self.context.clone();
        let bus = self.context.bus.clone();
        let myself = myself.clone();
        core.in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let Ok(_permit) = core.permits.clone().acquire_owned().await else {
                return;
            };
            if parked == Parked::Yes
                && let Err(skip) = still_wanted(&context, &request).await
            {
                core.in_flight.fetch_sub(1, Ordering::Relaxed);
                match skip {
                    Skip::Moot(moot) => drop_parked(&request, &moot, ack),
                    Skip::Unchecked(reply) => send_reply(&bus, &request, reply, ack).await,
                }
                let _ = myself.cast(AdapterMsg::Skipped);
                return;
            }
            let started = Instant::now();
            let result =
                match tokio::time::timeout(core.timeout, core.client.execute(&request)).await {
                    Ok(result) => result,
                    Err(_) => Err(CallError::Timeout(
                        u64::try_from(core.timeout.as_millis()).unwrap_or(u64::MAX),
                    )),
                };
            let latency = started.elapsed();
            core.in_flight.fetch_sub(1, Ordering::Relaxed);
            metrics::histogram!("swift_step_duration_seconds",
                "system" => core.system.as_str(), "operation" => request.operation.name())
            .record(latency.as_secs_f64());
            count_outcome(core.system, &request, outcome_kind(&result));
            let failure = result.as_ref().err().cloned();
            let error = failure.as_ref().map(ToString::to_string);
            crate::observability::call_outcome(outcome_kind(&result), error.as_deref());
            if let Some(error) = &error {
                tracing::warn!(order_id = %request.order_id, operation = request.operation.name(), %error, "call failed");
            }
            // The customer reads fixed domain words; what the system said is here.
            if let Ok(OperationOutcome::Refused { reason }) = &result {
                tracing::info!(order_id = %request.order_id, operation = request.operation.name(), %reason, "refused by the system");
            }
            let reply = crate::protocols::step_reply(result);
            send_reply(&bus, &request, reply, ack).await;
            let posted = core.mailbox.post();
            if myself
                .cast(AdapterMsg::Completed {
                    failure,
                    latency,
                    posted,
                })
                .is_err()
            {
                core.mailbox.unpost();
            }
        }.instrument(span));
    }

    fn answer_now(
        &self,
        request: Box<StepRequest>,
        reply: StepReply,
        ack: Acker,
        span: tracing::Span,
    ) {
        let bus = self.context.bus.clone();
        tokio::spawn(async move { send_reply(&bus, &request, reply, ack).await }.instrument(span));
    }

    /// Exports the circuit state after every message, and counts a transition when
    /// it changed (the breaker only changes state inside this actor's handlers).
    fn export_circuit_metric(&mut self) {
        let state = self.core.lock().breaker.state();
        let system = self.core.system.as_str();
        if state != self.circuit {
            self.circuit = state;
            metrics::counter!("swift_circuit_transitions_total",
                "system" => system, "to" => circuit_label(state))
            .increment(1);
        }
        let value = match state {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        };
        metrics::gauge!("swift_circuit_state", "system" => system).set(value);
    }
}

fn circuit_label(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::HalfOpen => "half_open",
        CircuitState::Open => "open",
    }
}

/// How a call ended, for `swift_step_outcomes_total`: a business refusal is an
/// answer, not a failure of the system.
fn outcome_kind(result: &Result<OperationOutcome, CallError>) -> &'static str {
    match result {
        Ok(OperationOutcome::Refused { .. }) => "refusal",
        Ok(_) => "success",
        Err(CallError::Timeout(_)) => "timeout",
        Err(CallError::Connection(_)) => "transport",
        Err(CallError::Remote(_)) => "remote",
        Err(CallError::Malformed(_)) => "malformed",
    }
}

fn count_outcome(system: System, request: &StepRequest, kind: &'static str) {
    metrics::counter!("swift_step_outcomes_total",
        "system" => system.as_str(), "operation" => request.operation.name(), "outcome" => kind)
    .increment(1);
}

fn schedule_probe(myself: &ActorRef<AdapterMsg>, timer: ProbeTimer) {
    let opening = timer.opening;
    myself.send_after(timer.after, move || AdapterMsg::ProbeDue { opening });
}

/// Whether a request comes from the parked queue, and so must be checked first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parked {
    Yes,
    No,
}

/// Why a parked request is not sent after all.
enum Skip {
    Moot(parked::Moot),
    /// The order could not be read: its owner is told to try again later, so it
    /// decides on its own state rather than this adapter guessing.
    Unchecked(StepReply),
}

/// One store read: is the parked request's order still waiting on it?
async fn still_wanted(context: &Context, request: &StepRequest) -> Result<(), Skip> {
    match context.store.order(&request.order_id).await {
        Ok(order) => parked::verdict(request, order.as_deref()).map_err(Skip::Moot),
        Err(error) => {
            tracing::warn!(order_id = %request.order_id, operation = request.operation.name(),
                %error, "cannot check a parked request against its order");
            Err(Skip::Unchecked(StepReply::Transient {
                reason: "the order could not be checked before the call".into(),
            }))
        }
    }
}

/// A dropped request is acknowledged: nobody waits on it, and redelivery would only
/// park it again.
fn drop_parked(request: &StepRequest, moot: &parked::Moot, ack: Acker) {
    tracing::info!(order_id = %request.order_id, operation = request.operation.name(),
        attempt = request.attempt, reason = %moot, "parked request dropped, not sent");
    metrics::counter!("swift_parked_dropped_total", "system" => request.operation.system().as_str())
        .increment(1);
    tokio::spawn(ack.ack());
}

/// The step's result goes to the order's owner; the request is acknowledged only
/// once that is done, so a crash in between redelivers the request, not loses it.
async fn send_reply(
    bus: &crate::bus::SharedBus,
    request: &StepRequest,
    reply: StepReply,
    ack: Acker,
) {
    let command = OrderCommand::StepResult {
        order_id: request.order_id.clone(),
        operation: request.operation,
        attempt: request.attempt,
        epoch: request.epoch,
        reply,
    };
    match bus.send_to_order(command).await {
        Ok(()) => ack.ack().await,
        Err(e) => {
            tracing::error!(order_id = %request.order_id, error = %e, "step result not delivered");
            ack.reject(&e.to_string()).await;
        }
    }
}
