//! The `orders` supervisor: one OrderActor per live order, spawned on demand when a
//! command arrives, stopped when the order is terminal or idle, and restarted from the
//! store when it fails (one_for_one, a few times per order).
//!
//! All commands for an order pass through here, which makes passivation race-free:
//! the actor offers to stop with the number of messages it has seen, and the router
//! stops it only if it has routed no more than that.

use super::order::{OrderActor, OrderActorArgs, OrderMsg};
use super::telemetry::{self, ActorInfo, FamilySize, Lifecycle, MailboxGauge, Posted};
use super::{Acker, Context};
use crate::bus::OrderCommand;
use crate::domain::OrderId;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;

pub const NAME: &str = "orders";
/// Failures of one order's actor before the router stops restarting it.
const MAX_ORDER_RESTARTS: u32 = 3;

pub enum OrdersMsg {
    Command {
        command: OrderCommand,
        ack: Acker,
        posted: Posted,
        /// The `traceparent` the command was posted with.
        trace: Option<String>,
    },
    Passivate {
        order_id: OrderId,
        received: u64,
    },
    /// The live actor of an order, if there is one (for telemetry: the caller asks
    /// the actor itself, so the router never waits on it).
    Inspect(OrderId, RpcReplyPort<Option<ActorRef<OrderMsg>>>),
}

struct LiveOrder {
    actor: ActorRef<OrderMsg>,
    routed: u64,
}

pub struct OrdersState {
    context: Arc<Context>,
    live: HashMap<OrderId, LiveOrder>,
    by_actor: HashMap<ActorId, OrderId>,
    failures: HashMap<OrderId, u32>,
    mailbox: MailboxGauge,
    family: FamilySize,
}

pub struct OrdersArgs {
    pub context: Arc<Context>,
    pub mailbox: MailboxGauge,
    pub parent: String,
}

pub struct OrdersSupervisor;

impl Actor for OrdersSupervisor {
    type Msg = OrdersMsg;
    type State = OrdersState;
    type Arguments = OrdersArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: OrdersArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let family = FamilySize::default();
        telemetry::register(
            &args.context.telemetry,
            ActorInfo {
                name: NAME.into(),
                kind: "supervisor",
                parent: Some(args.parent),
                mailbox: Some(args.mailbox.clone()),
                family: Some(family.clone()),
            },
        );
        Ok(OrdersState {
            context: args.context,
            live: HashMap::new(),
            by_actor: HashMap::new(),
            failures: HashMap::new(),
            mailbox: args.mailbox,
            family,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            OrdersMsg::Command {
                command,
                ack,
                posted,
                trace,
            } => {
                state.mailbox.took(posted);
                state.route(&myself, command, ack, trace).await
            }
            OrdersMsg::Passivate { order_id, received } => {
                if state
                    .live
                    .get(&order_id)
                    .is_some_and(|l| l.routed == received)
                    && let Some(live) = state.live.remove(&order_id)
                {
                    // Nothing can be in its mailbox: every message it was sent came
                    // through here and it has seen them all. Later commands spawn a
                    // fresh actor.
                    state.family.left();
                    live.actor.stop(Some("passivated".into()));
                }
                Ok(())
            }
            OrdersMsg::Inspect(order_id, reply) => {
                let _ = reply.send(state.live.get(&order_id).map(|l| l.actor.clone()));
                Ok(())
            }
        }
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(order_id) = state.by_actor.remove(&cell.get_id()) {
                    state.forget(&order_id, cell.get_id());
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(order_id) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                state.forget(&order_id, cell.get_id());
                let failures = state.failures.entry(order_id.clone()).or_default();
                *failures += 1;
                tracing::error!(%order_id, %error, failures = *failures, "order actor failed");
                let failures = *failures;
                let actor = format!("order-{order_id}");
                let telemetry = state.context.telemetry.clone();
                telemetry::lifecycle(
                    &telemetry,
                    &actor,
                    Lifecycle::Failed,
                    Some(error.to_string()),
                );
                if failures <= MAX_ORDER_RESTARTS {
                    // Rebuilt from the store: whatever it had persisted is where it resumes.
                    let wake = OrderCommand::Wake { order_id };
                    state.route(&myself, wake, Acker::none(), None).await?;
                    telemetry::lifecycle(&telemetry, &actor, Lifecycle::Restarted, None);
                } else {
                    let detail = format!("gave up after {failures} failures");
                    telemetry::lifecycle(&telemetry, &actor, Lifecycle::Stopped, Some(detail));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl OrdersState {
    /// Drops the entry of an actor that ended, unless a newer actor already took
    /// its place.
    fn forget(&mut self, order_id: &OrderId, actor: ActorId) {
        if self
            .live
            .get(order_id)
            .is_some_and(|l| l.actor.get_id() == actor)
        {
            self.live.remove(order_id);
            self.family.left();
        }
    }

    async fn route(
        &mut self,
        myself: &ActorRef<OrdersMsg>,
        command: OrderCommand,
        ack: Acker,
        trace: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        let order_id = command.order_id().clone();
        let message = match command {
            OrderCommand::Wake { .. } => OrderMsg::Wake { ack, trace },
            OrderCommand::StepResult {
                operation,
                attempt,
                reply,
                ..
            } => OrderMsg::StepResult {
                operation,
                attempt,
                reply,
                ack,
                trace,
            },
        };
        let live = match self.live.get_mut(&order_id) {
            Some(live) => live,
            None => {
                let args = OrderActorArgs {
                    order_id: order_id.clone(),
                    context: self.context.clone(),
                    router: myself.clone(),
                };
                let (actor, _) =
                    Actor::spawn_linked(None, OrderActor, args, myself.get_cell()).await?;
                self.by_actor.insert(actor.get_id(), order_id.clone());
                self.family.joined();
                self.live
                    .entry(order_id.clone())
                    .or_insert(LiveOrder { actor, routed: 0 })
            }
        };
        live.routed += 1;
        if let Err(e) = live.actor.cast(message) {
            // The actor is stopping; the message is lost with it, but the order is
            // not: the store has its state and the next command revives it.
            tracing::debug!(%order_id, error = %e, "order actor gone before delivery");
        }
        Ok(())
    }
}
