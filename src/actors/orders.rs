//! The `orders` supervisor: one OrderActor per live order, spawned on demand when a
//! command arrives, stopped when the order is terminal or idle, and restarted from the
//! store when it fails (one_for_one, a few times per order).
//!
//! All commands for an order pass through here, which makes passivation race-free:
//! an actor whose order waits on nobody says it rests, with the number of messages it
//! has seen, and the router stops it later only if it has routed no more than that.
//! One idle check here covers every resting actor of the node, oldest first, so no
//! actor keeps a timer of its own while it rests.
//!
//! Every actor works under the lease of its order's shard. Commands received under a
//! lease that ended are dropped (the shard's new owner resumes the order from the
//! store), and releasing a shard stops all of its actors.

use super::Context;
use super::control::ActorKind;
use super::order::{OrderActor, OrderActorArgs, OrderMsg, runner_policy};
use super::shards::Lease;
use super::telemetry::{self, ActorInfo, FamilySize, Lifecycle, MailboxGauge, Posted};
use super::timer::PendingTimer;
use crate::bus::Acker;
use crate::bus::OrderCommand;
use crate::domain::OrderId;
use crate::domain::runner::RunnerPolicy;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const NAME: &str = "orders";
/// Failures of one order's actor before the router stops restarting it.
const MAX_ORDER_RESTARTS: u32 = 3;
/// How long a released shard's actors get to finish the message at hand, so that
/// their acknowledgements still reach the broker on the shard's channel. They are
/// fenced meanwhile (nothing they do after the check takes effect), so waiting
/// longer would only delay the hand-over: under load a message at hand waits on a
/// busy store, and what is not acknowledged in time is redelivered to the next
/// owner, which handles it idempotently.
const STOP_WAIT: Duration = Duration::from_millis(500);

pub(crate) enum OrdersMsg {
    Command {
        command: OrderCommand,
        lease: Lease,
        ack: Acker,
        posted: Posted,
        /// The `traceparent` the command was posted with.
        trace: Option<String>,
    },
    /// The actor's order waits on nobody now: it is passivated once it has rested
    /// for `orders.passivate_after_secs`, or early when more actors rest than the
    /// router keeps.
    Resting(Resting),
    /// Passivates the actors that have rested long enough (sent by the router to
    /// itself, when the longest at rest is due).
    IdleCheck,
    /// The live actor of an order, if there is one (for telemetry: the caller asks
    /// the actor itself, so the router never waits on it).
    Inspect(OrderId, RpcReplyPort<Option<ActorRef<OrderMsg>>>),
    /// Stops every actor working under the lease; replies once they have stopped.
    Release {
        lease: Lease,
        reply: RpcReplyPort<()>,
    },
    /// Live order actors per shard.
    Census(RpcReplyPort<BTreeMap<u32, u64>>),
}

/// An actor at rest, and how many messages it had seen then: it may be stopped only
/// while no message routed to it since is on its way.
pub(crate) struct Resting {
    pub(crate) order_id: OrderId,
    pub(crate) actor: ActorId,
    pub(crate) received: u64,
}

struct LiveOrder {
    actor: ActorRef<OrderMsg>,
    routed: u64,
    lease: Lease,
}

pub(crate) struct OrdersState {
    context: Arc<Context>,
    /// What every order actor's runner works by.
    policy: Arc<RunnerPolicy>,
    live: HashMap<OrderId, LiveOrder>,
    by_actor: HashMap<ActorId, OrderId>,
    failures: HashMap<OrderId, u32>,
    /// Actors that came to rest and when, longest at rest first; an entry whose
    /// actor moved on since is dropped when it is reached.
    resting: VecDeque<(Instant, Resting)>,
    /// Resting actors kept before the longest at rest are passivated.
    max_resting: usize,
    /// How long an actor rests before it is passivated.
    passivate_after: Duration,
    /// The timer of the idle check that is due (one at a time, for the longest at
    /// rest).
    idle_check: PendingTimer<OrdersMsg>,
    mailbox: MailboxGauge,
    family: FamilySize,
}

pub(crate) struct OrdersArgs {
    pub(crate) context: Arc<Context>,
    pub(crate) mailbox: MailboxGauge,
    pub(crate) parent: String,
}

pub(crate) struct OrdersSupervisor;

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
                kind: ActorKind::Supervisor,
                parent: Some(args.parent),
                mailbox: Some(args.mailbox.clone()),
                family: Some(family.clone()),
            },
        );
        Ok(OrdersState {
            policy: Arc::new(runner_policy(&args.context.settings)),
            live: HashMap::new(),
            by_actor: HashMap::new(),
            failures: HashMap::new(),
            resting: VecDeque::new(),
            max_resting: args.context.settings.orders.max_idle_actors,
            passivate_after: Duration::from_secs(args.context.settings.orders.passivate_after_secs),
            idle_check: PendingTimer::new(),
            mailbox: args.mailbox,
            family,
            context: args.context,
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
                lease,
                ack,
                posted,
                trace,
            } => {
                state.mailbox.took(posted);
                state.route(&myself, command, lease, ack, trace).await
            }
            OrdersMsg::Release { lease, reply } => {
                state.release(lease, reply);
                Ok(())
            }
            OrdersMsg::Census(reply) => {
                let mut census = BTreeMap::new();
                for live in state.live.values() {
                    *census.entry(live.lease.shard).or_default() += 1;
                }
                let _ = reply.send(census);
                Ok(())
            }
            OrdersMsg::Resting(resting) => {
                state.resting.push_back((Instant::now(), resting));
                while state.resting.len() > state.max_resting {
                    if let Some((_, longest)) = state.resting.pop_front() {
                        state.passivate(longest);
                    }
                }
                state.schedule_idle_check(&myself);
                Ok(())
            }
            OrdersMsg::IdleCheck => {
                state.idle_check.fired();
                let now = Instant::now();
                while let Some((since, _)) = state.resting.front()
                    && now.saturating_duration_since(*since) >= state.passivate_after
                {
                    if let Some((_, resting)) = state.resting.pop_front() {
                        state.passivate(resting);
                    }
                }
                state.schedule_idle_check(&myself);
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
                let shard = order_id.shard(state.context.shards.shards());
                if failures <= MAX_ORDER_RESTARTS
                    && let Some(lease) = state.context.shards.lease(shard)
                {
                    // Rebuilt from the store: whatever it had persisted is where it resumes.
                    let wake = OrderCommand::Wake { order_id };
                    state
                        .route(&myself, wake, lease, Acker::none(), None)
                        .await?;
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
    /// Sets the idle check for when the longest at rest is due, unless one is set.
    fn schedule_idle_check(&mut self, myself: &ActorRef<OrdersMsg>) {
        if self.idle_check.is_pending() {
            return;
        }
        let Some((since, _)) = self.resting.front() else {
            return;
        };
        // Beyond any instant (a setting meaning "never"): no check is due.
        let Some(due) = since.checked_add(self.passivate_after) else {
            return;
        };
        self.idle_check.set(
            myself,
            due.saturating_duration_since(Instant::now()),
            || OrdersMsg::IdleCheck,
        );
    }

    /// Stops a resting actor unless a message was routed to it since it came to rest
    /// (or another actor took its place): nothing can be in its mailbox then, since
    /// every message it was sent came through here and it has seen them all. Later
    /// commands spawn a fresh actor.
    fn passivate(&mut self, resting: Resting) {
        let Resting {
            order_id,
            actor,
            received,
        } = resting;
        if self
            .live
            .get(&order_id)
            .is_some_and(|l| l.actor.get_id() == actor && l.routed == received)
            && let Some(live) = self.live.remove(&order_id)
        {
            self.family.left();
            live.actor.stop(Some("passivated".into()));
        }
    }

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

    /// Stops the lease's actors at once and replies when they are gone (or after
    /// `STOP_WAIT`), without holding up the routing of other shards meanwhile.
    fn release(&mut self, lease: Lease, reply: RpcReplyPort<()>) {
        let shard = lease.shard;
        let leaving: Vec<OrderId> = self
            .live
            .iter()
            .filter(|(_, live)| live.lease == lease)
            .map(|(id, _)| id.clone())
            .collect();
        let mut stopping = Vec::with_capacity(leaving.len());
        for order_id in leaving {
            if let Some(live) = self.live.remove(&order_id) {
                self.family.left();
                stopping.push(live.actor);
            }
        }
        if !stopping.is_empty() {
            tracing::info!(
                shard,
                actors = stopping.len(),
                "stopping the actors of a shard this node no longer owns"
            );
        }
        tokio::spawn(async move {
            let stops = stopping.into_iter().map(|actor| async move {
                actor
                    .stop_and_wait(Some("shard handed over".into()), Some(STOP_WAIT))
                    .await
            });
            futures::future::join_all(stops).await;
            let _ = reply.send(());
        });
    }

    async fn route(
        &mut self,
        myself: &ActorRef<OrdersMsg>,
        command: OrderCommand,
        lease: Lease,
        ack: Acker,
        trace: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        let order_id = command.order_id().clone();
        if !self.context.shards.holds(lease) {
            // Received before the shard moved on: its new owner resumes the order from
            // the store, so the command has nothing left to do here.
            tracing::debug!(%order_id, shard = lease.shard, "command for a shard no longer held; dropped");
            // Not awaited here: the router must not wait on the broker.
            tokio::spawn(ack.ack());
            return Ok(());
        }
        if self.live.get(&order_id).is_some_and(|l| l.lease != lease)
            && let Some(stale) = self.live.remove(&order_id)
        {
            // Left from an earlier ownership of the shard whose release is on its way.
            self.family.left();
            stale.actor.stop(Some("shard handed over".into()));
        }
        let message = match command {
            OrderCommand::Wake { .. } => OrderMsg::Wake { ack, trace },
            OrderCommand::StepResult {
                operation,
                attempt,
                epoch,
                reply,
                ..
            } => OrderMsg::StepResult {
                operation,
                attempt,
                epoch,
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
                    lease,
                    policy: self.policy.clone(),
                    context: self.context.clone(),
                    router: myself.clone(),
                };
                let (actor, _) =
                    Actor::spawn_linked(None, OrderActor, args, myself.get_cell()).await?;
                self.by_actor.insert(actor.get_id(), order_id.clone());
                self.family.joined();
                self.live.entry(order_id.clone()).or_insert(LiveOrder {
                    actor,
                    routed: 0,
                    lease,
                })
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

/// What the live actor of an order on this node is doing; `Ok(None)` when no actor
/// is live for it here, `Err` when the actors did not answer within `timeout_ms`.
pub(crate) async fn inspect(
    orders: &ActorRef<OrdersMsg>,
    order_id: &OrderId,
    timeout_ms: u64,
) -> Result<Option<crate::domain::runner::OrderActorView>, String> {
    let actor = ractor::call_t!(orders, OrdersMsg::Inspect, timeout_ms, order_id.clone())
        .map_err(|e| e.to_string())?;
    let Some(actor) = actor else { return Ok(None) };
    // The actor may stop between the two questions: then none is live.
    Ok(ractor::call_t!(actor, super::order::OrderMsg::Inspect, timeout_ms).ok())
}
