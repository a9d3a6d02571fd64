//! One actor per live order: the saga orchestrator of DESIGN section 4.
//!
//! The actor only executes what `domain::saga::decide` says. It owns the things a pure
//! function cannot: which call is in flight, retries with backoff, the watchdog for
//! replies that never come, persistence (compare-and-set, reloading when someone else
//! wrote), riding out store and bus outages, and passivation when it is waiting on
//! nobody.
//!
//! Deliveries are acknowledged only once their effect is persisted: while the store is
//! down their acknowledgements are held (which also holds back the broker through the
//! prefetch window), and a fatal error hands them back to the broker.
//!
//! The actor works under its shard's lease and is fenced by it: before each effect it
//! checks that this node still holds the shard under the same epoch, requests carry
//! the epoch, and replies to another epoch's requests are dropped. An actor that
//! finds itself fenced stops at once; the shard's new owner resumes the order.

use super::Context;
use super::orders::OrdersMsg;
use super::shards::Lease;
use crate::bus::Acker;
use crate::bus::{BusError, StepReply, StepRequest};
use crate::domain::backoff::{exponential, jittered};
use crate::domain::saga::{self, SagaRejection};
use crate::domain::{Operation, OperationOutcome, Order, OrderId, SagaInput};
use crate::service::commit;
use crate::store::StoreError;
use chrono::Utc;
use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Times a reply is re-decided on a freshly loaded order after losing a
/// compare-and-set race before the actor gives up on it.
const MAX_CAS_ATTEMPTS: usize = 8;
/// Backoff while the store or the bus is unavailable.
const OUTAGE_BACKOFF_BASE: Duration = Duration::from_millis(100);
const OUTAGE_BACKOFF_MAX: Duration = Duration::from_secs(5);

pub enum OrderMsg {
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
    /// The backoff after a transient failure of a step is over.
    RetryDue { operation: Operation },
    /// No reply came for this attempt in time.
    Watchdog { operation: Operation, attempt: u32 },
    /// Nothing happened for a while: maybe stop to free memory.
    IdleCheck { generation: u64 },
    /// The store or the bus failed; try again what could not be done.
    Retry,
    /// What the actor is doing, for `GET /api/telemetry/orders/{id}`.
    Inspect(RpcReplyPort<OrderActorView>),
}

/// An order actor as telemetry shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderActorView {
    /// awaiting_reply, backing_off, persisting, outage_retry, idle or ready.
    pub phase: &'static str,
    pub in_flight: Option<StepInFlight>,
    /// Failed attempts of the step the order waits on.
    pub attempts: u32,
    pub next_timer: Option<NextTimer>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepInFlight {
    pub operation: &'static str,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NextTimer {
    /// watchdog, idle_check or retry_backoff.
    pub kind: &'static str,
    pub due_at: chrono::DateTime<Utc>,
}

pub struct OrderActorArgs {
    pub order_id: OrderId,
    pub lease: Lease,
    pub context: Arc<Context>,
    pub router: ActorRef<OrdersMsg>,
}

/// Why the actor could not do its work now.
#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("{0}")]
    Fatal(String),
    /// This node no longer holds the order's shard under the actor's lease.
    #[error("the shard is no longer held under this actor's lease")]
    Fenced,
}

impl OrderError {
    /// Outages are waited out; nothing is lost meanwhile.
    fn is_transient(&self) -> bool {
        matches!(self, Self::Store(StoreError::Unavailable(_)) | Self::Bus(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    operation: Operation,
    attempt: u32,
}

pub struct OrderState {
    order_id: OrderId,
    lease: Lease,
    order: Option<Order>,
    in_flight: Option<InFlight>,
    /// Attempts made for the operation the order waits on (reset when it settles).
    attempts: u32,
    /// Last attempt number used, so every request is distinguishable.
    last_attempt: u32,
    backing_off: bool,
    /// A settled outcome not persisted yet (the store was down): kept until it is.
    pending: Option<(Operation, OperationOutcome)>,
    /// Acknowledgements of deliveries whose effect is not persisted yet.
    held: Vec<Acker>,
    /// Consecutive store or bus failures, for the outage backoff.
    failures: u32,
    retry_scheduled: bool,
    /// Whether this actor holds one of the node's admission slots.
    admitted: bool,
    /// Messages received from the router, for the passivation handshake.
    received: u64,
    /// Bumped on every message; an idle check for an older generation is moot.
    generation: u64,
    /// Pending timer (watchdog or idle check), aborted as soon as it is moot so that
    /// tens of thousands of orders do not leave as many sleeping tasks behind.
    timer: Option<JoinHandle<Result<(), MessagingErr<OrderMsg>>>>,
    /// What the pending timer (or the step backoff) is and when it fires.
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

pub struct OrderActor;

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
            order_id: args.order_id,
            lease: args.lease,
            order: None,
            in_flight: None,
            attempts: 0,
            last_attempt: 0,
            backing_off: false,
            pending: None,
            held: Vec::new(),
            failures: 0,
            retry_scheduled: false,
            admitted: false,
            received: 0,
            generation: 0,
            timer: None,
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
        state.release_admission();
        state.cancel_timer();
        if state.fenced() {
            // The shard moved on: its new owner resumes the order from the store, so
            // what this actor held has nothing left to do (and the broker no reason
            // to count a failed delivery).
            for ack in state.held.drain(..) {
                ack.ack().await;
            }
            return Ok(());
        }
        // Anything still held goes back to the broker for another attempt.
        for ack in state.held.drain(..) {
            ack.reject("order actor stopped before persisting").await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.generation += 1;
        if state.span.is_none() {
            let trace = match &message {
                OrderMsg::Wake { trace, .. } | OrderMsg::StepResult { trace, .. } => {
                    trace.as_deref()
                }
                _ => None,
            };
            let node = &state.context.node_id;
            state.span = crate::observability::order_span(&state.order_id, node, trace);
        }
        let span = state.span.clone();
        Box::pin(state.handle(&myself, message).instrument(span)).await
    }
}

impl OrderState {
    async fn handle(
        &mut self,
        myself: &ActorRef<OrderMsg>,
        message: OrderMsg,
    ) -> Result<(), ActorProcessingErr> {
        match self.process(myself, message).await {
            Ok(()) => {
                self.failures = 0;
                for ack in self.held.drain(..) {
                    ack.ack().await;
                }
                Ok(())
            }
            Err(OrderError::Fenced) => {
                tracing::info!(
                    shard = self.lease.shard,
                    "shard handed over; order actor stops without acting"
                );
                myself.stop(Some("fenced".into()));
                Ok(())
            }
            Err(error) if error.is_transient() => {
                self.failures += 1;
                let delay = jittered(exponential(
                    self.failures,
                    OUTAGE_BACKOFF_BASE,
                    OUTAGE_BACKOFF_MAX,
                ));
                tracing::warn!(%error, ?delay, "cannot proceed now; will retry");
                if !self.retry_scheduled {
                    self.retry_scheduled = true;
                    myself.send_after(delay, || OrderMsg::Retry);
                }
                Ok(())
            }
            Err(error) => {
                for ack in self.held.drain(..) {
                    ack.reject(&error.to_string()).await;
                }
                Err(error.into())
            }
        }
    }

    async fn process(
        &mut self,
        myself: &ActorRef<OrderMsg>,
        message: OrderMsg,
    ) -> Result<(), OrderError> {
        match message {
            OrderMsg::Wake { ack, .. } => {
                self.received += 1;
                self.held.push(ack);
                self.reload().await?;
            }
            OrderMsg::StepResult {
                operation,
                attempt,
                epoch,
                reply,
                ack,
                ..
            } => {
                self.received += 1;
                self.held.push(ack);
                if !from_this_ownership(self.lease, epoch) {
                    tracing::debug!(
                        operation = operation.name(),
                        attempt,
                        epoch,
                        "late reply to another ownership's request; dropped"
                    );
                    return Ok(());
                }
                if self.order.is_none() {
                    self.reload().await?;
                }
                self.on_reply(myself, operation, attempt, reply);
            }
            OrderMsg::RetryDue { operation } => {
                if self.backing_off && self.next_operation() == Some(operation) {
                    self.backing_off = false;
                }
            }
            OrderMsg::Watchdog { operation, attempt } => {
                if self.in_flight == Some(InFlight { operation, attempt }) {
                    tracing::warn!(operation = operation.name(), attempt, "no reply in time");
                    let reason = "no reply within the step watchdog".to_owned();
                    self.on_reply(myself, operation, attempt, StepReply::Transient { reason });
                }
            }
            OrderMsg::Retry => {
                self.retry_scheduled = false;
                self.reload().await?;
            }
            OrderMsg::Inspect(reply) => {
                let _ = reply.send(self.view());
                return Ok(());
            }
            OrderMsg::IdleCheck { generation } => {
                if generation + 1 == self.generation && self.is_quiet() {
                    let _ = self.router.cast(OrdersMsg::Passivate {
                        order_id: self.order_id.clone(),
                        received: self.received,
                    });
                }
                return Ok(());
            }
        }
        self.persist_pending().await?;
        self.drive(myself).await
    }

    /// True once this node no longer holds the shard under the actor's lease.
    fn fenced(&self) -> bool {
        !self.context.shards.holds(self.lease)
    }

    /// Checked right before every effect.
    fn ensure_lease(&self) -> Result<(), OrderError> {
        if self.fenced() {
            Err(OrderError::Fenced)
        } else {
            Ok(())
        }
    }

    fn next_operation(&self) -> Option<Operation> {
        self.order.as_ref().and_then(saga::next_operation)
    }

    fn is_quiet(&self) -> bool {
        self.in_flight.is_none()
            && !self.backing_off
            && self.pending.is_none()
            && self.held.is_empty()
            && self.next_operation().is_none()
    }

    async fn reload(&mut self) -> Result<(), OrderError> {
        let order = self.context.store.order(&self.order_id).await?;
        if order.is_none() {
            tracing::warn!("woken for an order that does not exist");
        }
        self.order = order;
        Ok(())
    }

    /// Classifies a reply; an outcome to persist is left in `pending`.
    fn on_reply(
        &mut self,
        myself: &ActorRef<OrderMsg>,
        operation: Operation,
        attempt: u32,
        reply: StepReply,
    ) {
        let expected = self.next_operation() == Some(operation);
        match reply {
            // A settled reply is good whichever attempt it answers: the calls are
            // idempotent, so all attempts share one outcome.
            StepReply::Settled { outcome } => {
                if self.in_flight.is_some_and(|f| f.operation == operation) {
                    self.in_flight = None;
                    self.cancel_timer();
                    self.step_span = None;
                }
                if expected {
                    self.attempts = 0;
                    self.backing_off = false;
                    self.pending = Some((operation, outcome));
                }
            }
            StepReply::Transient { reason } => {
                if self.in_flight != Some(InFlight { operation, attempt }) {
                    return;
                }
                self.in_flight = None;
                self.cancel_timer();
                if let Some(span) = self.step_span.take() {
                    crate::observability::step_failed(&span, &reason);
                }
                if !expected {
                    return;
                }
                self.attempts += 1;
                metrics::counter!("swift_step_retries_total", "system" => operation.system().as_str())
                    .increment(1);
                if self.attempts >= self.context.settings.saga.max_attempts {
                    tracing::warn!(operation = operation.name(), %reason, "retry budget exhausted");
                    self.attempts = 0;
                    self.pending = Some((operation, OperationOutcome::Exhausted { reason }));
                } else {
                    let saga = &self.context.settings.saga;
                    let delay = jittered(exponential(
                        self.attempts,
                        Duration::from_millis(saga.backoff_base_ms),
                        Duration::from_millis(saga.backoff_max_ms),
                    ));
                    tracing::debug!(operation = operation.name(), %reason, ?delay, "retrying later");
                    self.backing_off = true;
                    self.note_timer("retry_backoff", delay);
                    myself.send_after(delay, move || OrderMsg::RetryDue { operation });
                }
            }
        }
    }

    async fn persist_pending(&mut self) -> Result<(), OrderError> {
        if let Some((operation, outcome)) = self.pending.clone() {
            self.settle(operation, outcome).await?;
            self.pending = None;
        }
        Ok(())
    }

    /// Applies an outcome to the order and persists it, re-deciding on the stored
    /// order whenever another writer got there first.
    async fn settle(
        &mut self,
        operation: Operation,
        outcome: OperationOutcome,
    ) -> Result<(), OrderError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(order) = &self.order else {
                return Ok(());
            };
            let input = SagaInput::Outcome(operation, outcome.clone());
            let decision = match saga::decide(order, input, Utc::now()) {
                Ok(decision) => decision,
                Err(SagaRejection::Stale | SagaRejection::Conflict(_)) => return Ok(()),
            };
            self.ensure_lease()?;
            let context = &self.context;
            match commit(&context.store, &context.bus, &context.node_id, &decision).await {
                Ok(()) => {
                    self.order = Some(decision.order);
                    return Ok(());
                }
                Err(StoreError::VersionConflict { .. }) => self.reload().await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(OrderError::Fatal(format!(
            "order {} kept changing under us",
            self.order_id
        )))
    }

    /// Starts whatever the order waits on, or stops/passivates when it waits on nothing.
    async fn drive(&mut self, myself: &ActorRef<OrderMsg>) -> Result<(), OrderError> {
        let Some(status) = self.order.as_ref().map(|o| o.status) else {
            myself.stop(Some("order not found".into()));
            return Ok(());
        };
        if status.is_processing() {
            if !self.admitted {
                self.admitted = true;
                self.context.admission.enter();
            }
        } else {
            self.release_admission();
            // Processing is over: the order's span ends with this message; a later
            // command (cancel, delivery) starts another under its own request.
            self.span = tracing::Span::none();
        }
        if status.is_terminal() {
            myself.stop(None);
            return Ok(());
        }
        match self.next_operation() {
            Some(operation) if self.in_flight.is_none() && !self.backing_off => {
                self.issue(myself, operation).await?;
            }
            Some(_) => {}
            None => {
                let generation = self.generation;
                let after = Duration::from_secs(self.context.settings.orders.passivate_after_secs);
                self.cancel_timer();
                self.note_timer("idle_check", after);
                self.timer =
                    Some(myself.send_after(after, move || OrderMsg::IdleCheck { generation }));
            }
        }
        Ok(())
    }

    async fn issue(
        &mut self,
        myself: &ActorRef<OrderMsg>,
        operation: Operation,
    ) -> Result<(), OrderError> {
        let Some(order) = &self.order else {
            return Ok(());
        };
        self.last_attempt += 1;
        let attempt = self.last_attempt;
        let request = StepRequest {
            order_id: order.order_id.clone(),
            customer_id: order.customer_id.clone(),
            operation,
            attempt,
            epoch: self.lease.epoch,
            pickup: order.pickup_location.clone(),
            delivery: order.delivery_address.clone(),
            package: order.package_details.clone(),
            route_id: order.route.as_ref().and_then(|r| r.route_id.clone()),
        };
        self.ensure_lease()?;
        let span = crate::observability::step_span(operation, attempt);
        self.context
            .bus
            .send_step(request)
            .instrument(span.clone())
            .await?;
        self.step_span = Some(span);
        self.in_flight = Some(InFlight { operation, attempt });
        let watchdog = Duration::from_secs(self.context.settings.saga.step_watchdog_secs);
        self.cancel_timer();
        self.note_timer("watchdog", watchdog);
        self.timer =
            Some(myself.send_after(watchdog, move || OrderMsg::Watchdog { operation, attempt }));
        Ok(())
    }

    fn cancel_timer(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        self.next_timer = None;
    }

    fn note_timer(&mut self, kind: &'static str, after: Duration) {
        self.next_timer = chrono::TimeDelta::from_std(after)
            .ok()
            .map(|after| NextTimer {
                kind,
                due_at: Utc::now() + after,
            });
    }

    fn view(&self) -> OrderActorView {
        let phase = if self.pending.is_some() {
            "persisting"
        } else if self.in_flight.is_some() {
            "awaiting_reply"
        } else if self.backing_off {
            "backing_off"
        } else if self.retry_scheduled {
            "outage_retry"
        } else if self.next_operation().is_none() {
            "idle"
        } else {
            "ready"
        };
        OrderActorView {
            phase,
            in_flight: self.in_flight.map(|f| StepInFlight {
                operation: f.operation.name(),
                attempt: f.attempt,
            }),
            attempts: self.attempts,
            next_timer: self.next_timer.clone(),
        }
    }

    fn release_admission(&mut self) {
        if self.admitted {
            self.admitted = false;
            self.context.admission.leave();
        }
    }
}

/// Whether a step reply answers a request made under this actor's lease. Attempt
/// numbers start again with every owner, so without the epoch a late reply to the
/// previous owner's attempt 1 would pass for an answer to this owner's attempt 1.
fn from_this_ownership(lease: Lease, reply_epoch: u64) -> bool {
    reply_epoch == lease.epoch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_replies_to_this_ownerships_requests_count() {
        let lease = Lease {
            shard: 3,
            epoch: 0x1234_0000_0002,
        };
        assert!(from_this_ownership(lease, 0x1234_0000_0002));
        assert!(
            !from_this_ownership(lease, 0x1234_0000_0001),
            "an earlier ownership on this node"
        );
        assert!(
            !from_this_ownership(lease, 0x9876_0000_0002),
            "another node's ownership"
        );
        assert!(!from_this_ownership(lease, 0), "a reply with no epoch");
    }
}
