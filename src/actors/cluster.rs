//! The node's part in the cluster (DESIGN section 9): it announces itself, listens
//! to the others, and lets go of the shards it should not own so that every node
//! holds an even share. It never takes a shard: the broker makes the next waiting
//! consumer active, and this node learns of a gain from its shard consumers.
//!
//! It also resumes the orders of every shard gained (at once, from the store),
//! sweeps its shards for orders nobody drove for a while, hands everything over when
//! the node drains, and answers for the cluster view.

use super::Context;
use super::control::ActorKind;
use super::orders::{OrdersMsg, inspect};
use super::shards::Lease;
use super::telemetry::{self, ActorInfo, Posted};
use crate::bus::Acker;
use crate::bus::{ClusterMessage, OrderActorLocation, OrderCommand};
use crate::domain::cluster::{CircuitReport, Membership, NodeReport};
use crate::domain::{OrderId, System};
use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(crate) const NAME: &str = "cluster";
/// Longest wait for the orders supervisor to stop a released shard's actors.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a census of the live actors may take before the last one is reported.
const CENSUS_TIMEOUT: Duration = Duration::from_millis(300);
/// Gains arriving together are resumed with one read of the store.
const RESUME_BATCH_DELAY: Duration = Duration::from_millis(20);
const RESUME_RETRY: Duration = Duration::from_secs(1);
/// How long the actors have to say what they are doing.
const LOCATE_TIMEOUT_MS: u64 = 500;
/// How long a lookup sent to the other nodes is remembered.
const LOCATE_PATIENCE: Duration = Duration::from_secs(5);

/// A change in what this node holds, as its shard consumers saw it (the shard table
/// is already updated when this arrives).
pub(crate) enum ShardNote {
    Gained(Lease),
    Ended(Lease),
}

pub(crate) enum ClusterMsg {
    Shard(ShardNote),
    Heard(ClusterMessage),
    Tick,
    Yielded {
        lease: Lease,
    },
    ResumeDue,
    ResumeFailed {
        leases: Vec<Lease>,
    },
    /// Hand every shard over and take none; replies once none is held.
    Drain(RpcReplyPort<()>),
    View(RpcReplyPort<ClusterView>),
    /// Where an order's actor runs and what it is doing, asked of the node holding
    /// its shard (this one, or another over the cluster exchange).
    Locate {
        order_id: OrderId,
        reply: RpcReplyPort<Result<OrderActorLocation, String>>,
    },
}

/// One node as `GET /api/cluster` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeView {
    #[serde(flatten)]
    pub(crate) report: NodeReport,
    /// Milliseconds since its last heartbeat reached the node answering.
    pub(crate) last_heard_ms_ago: u64,
    /// The node answering.
    pub(crate) this_node: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub(crate) node_id: String,
    pub(crate) shards: u32,
    /// Nodes among which the shards are being spread now.
    pub(crate) sharing: Vec<String>,
    pub(crate) nodes: Vec<NodeView>,
}

pub(crate) struct ClusterArgs {
    pub(crate) context: Arc<Context>,
    pub(crate) orders: ActorRef<OrdersMsg>,
    pub(crate) incarnation: String,
}

pub(crate) struct ClusterState {
    context: Arc<Context>,
    orders: ActorRef<OrdersMsg>,
    incarnation: String,
    membership: Membership,
    leaving: bool,
    /// Shards being handed over, with the lease they are handed over from.
    yielding: BTreeMap<u32, Lease>,
    /// Leases handed over whose end the shard consumers have not reported yet.
    handed_over: HashSet<Lease>,
    to_resume: Vec<Lease>,
    resume_scheduled: bool,
    drained: Vec<RpcReplyPort<()>>,
    census: BTreeMap<u32, u64>,
    last_sweep: Instant,
    /// Until a node has listened for one membership timeout, it does not know who
    /// claims what and sends no probes.
    listening_until: Instant,
    /// Set while a heartbeat (and its probes) is being published: while the broker
    /// is unreachable a publish waits, and the keeper must not.
    publishing: Arc<AtomicBool>,
    /// Lookups of order actors sent to the other nodes, by request number.
    locating: HashMap<u64, (Instant, RpcReplyPort<Result<OrderActorLocation, String>>)>,
    next_request: u64,
}

pub(crate) struct ClusterKeeper;

impl Actor for ClusterKeeper {
    type Msg = ClusterMsg;
    type State = ClusterState;
    type Arguments = ClusterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ClusterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let context = args.context;
        telemetry::register(
            &context.telemetry,
            ActorInfo {
                name: NAME.into(),
                kind: ActorKind::Cluster,
                parent: Some(super::root::NAME.into()),
                mailbox: None,
                family: None,
            },
        );
        let settings = &context.settings.cluster;
        let interval = Duration::from_millis(settings.heartbeat_ms.max(10));
        let timeout = interval.saturating_mul(settings.missed_heartbeats.max(1));
        myself.send_interval(interval, || ClusterMsg::Tick);
        Ok(ClusterState {
            membership: Membership::new(&context.node_id, timeout),
            context,
            orders: args.orders,
            incarnation: args.incarnation,
            leaving: false,
            yielding: BTreeMap::new(),
            handed_over: HashSet::new(),
            to_resume: Vec::new(),
            resume_scheduled: false,
            drained: Vec::new(),
            census: BTreeMap::new(),
            last_sweep: Instant::now(),
            listening_until: Instant::now() + timeout,
            publishing: Arc::default(),
            locating: HashMap::new(),
            next_request: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ClusterMsg::Shard(ShardNote::Gained(lease)) => state.gained(&myself, lease),
            ClusterMsg::Shard(ShardNote::Ended(lease)) => state.ended(lease),
            ClusterMsg::Heard(message) => state.heard(message),
            ClusterMsg::Tick => state.tick(&myself).await,
            ClusterMsg::Yielded { lease } => {
                if state.yielding.get(&lease.shard) == Some(&lease) {
                    state.yielding.remove(&lease.shard);
                }
                state.balance(&myself);
                state.answer_drain();
            }
            ClusterMsg::ResumeDue => state.resume(&myself),
            ClusterMsg::ResumeFailed { leases } => {
                state.to_resume.extend(leases);
                if !state.resume_scheduled {
                    state.resume_scheduled = true;
                    myself.send_after(RESUME_RETRY, || ClusterMsg::ResumeDue);
                }
            }
            ClusterMsg::Drain(reply) => {
                tracing::info!(node = %state.context.node_id, "draining: handing every shard over");
                state.leaving = true;
                state.drained.push(reply);
                state.announce(Vec::new());
                let bus = state.context.bus.clone();
                tokio::spawn(async move {
                    if let Err(error) = bus.stop_standing_by().await {
                        tracing::warn!(%error, "could not stop standing by on the shards");
                    }
                });
                state.balance(&myself);
                state.answer_drain();
            }
            ClusterMsg::View(reply) => {
                let _ = reply.send(state.view());
            }
            ClusterMsg::Locate { order_id, reply } => state.locate(order_id, reply),
        }
        Ok(())
    }
}

impl ClusterState {
    fn me(&self) -> &str {
        &self.context.node_id
    }

    fn gained(&mut self, myself: &ActorRef<ClusterMsg>, lease: Lease) {
        tracing::info!(node = %self.me(), shard = lease.shard, "became the active consumer of a shard");
        metrics::counter!("swift_shard_gains_total").increment(1);
        if self.yielding.contains_key(&lease.shard) {
            // Regained while the hand-over is still on its way: decided once it is done.
            return;
        }
        if !self.keeps(lease.shard) {
            self.hand_over(myself, lease);
            return;
        }
        self.to_resume.push(lease);
        if !self.resume_scheduled {
            self.resume_scheduled = true;
            myself.send_after(RESUME_BATCH_DELAY, || ClusterMsg::ResumeDue);
        }
    }

    /// The shard's ownership ended without this node handing it over (or as part of
    /// it): its actors must stop now.
    fn ended(&mut self, lease: Lease) {
        if self.handed_over.remove(&lease) {
            return;
        }
        tracing::warn!(node = %self.me(), shard = lease.shard, "lost a shard; stopping its order actors");
        metrics::counter!("swift_shard_losses_total").increment(1);
        let orders = self.orders.clone();
        tokio::spawn(async move {
            let timeout = RELEASE_TIMEOUT.as_millis() as u64;
            let release = |reply| OrdersMsg::Release { lease, reply };
            if let Err(error) = ractor::call_t!(orders, release, timeout) {
                tracing::warn!(shard = lease.shard, %error, "the actors of a lost shard did not all stop in time");
            }
        });
    }

    fn heard(&mut self, message: ClusterMessage) {
        match message {
            ClusterMessage::Heartbeat { report } => {
                if report.node_id == self.me() {
                    if report.incarnation != self.incarnation {
                        tracing::error!(node = %self.me(), "another process announces this node's id; give every node its own cluster.node_id");
                    }
                    return;
                }
                if self.membership.heard(report, Instant::now()) {
                    tracing::info!(node = %self.me(), sharing = ?self.membership.sharing(self.leaving, Instant::now()), "cluster membership changed");
                }
            }
            ClusterMessage::RecoverCircuit { service, from } => {
                if from != self.me() {
                    self.recover_locally(service, from);
                }
            }
            ClusterMessage::InspectOrder {
                request,
                asked_by,
                order_id,
            } => {
                if asked_by != self.me() && self.holds_shard_of(&order_id) {
                    let (orders, bus, node) = (
                        self.orders.clone(),
                        self.context.bus.clone(),
                        self.me().to_owned(),
                    );
                    tokio::spawn(async move {
                        let Ok(actor) = inspect(&orders, &order_id, LOCATE_TIMEOUT_MS).await else {
                            return;
                        };
                        let found = OrderActorLocation { node, actor };
                        let answer = ClusterMessage::InspectedOrder {
                            request,
                            asked_by,
                            found,
                        };
                        if let Err(error) = bus.broadcast(answer).await {
                            tracing::warn!(%error, "could not answer an order lookup");
                        }
                    });
                }
            }
            ClusterMessage::InspectedOrder {
                request,
                asked_by,
                found,
            } => {
                if asked_by == self.me()
                    && let Some((_, reply)) = self.locating.remove(&request)
                {
                    let _ = reply.send(Ok(found));
                }
            }
        }
    }

    fn holds_shard_of(&self, order_id: &OrderId) -> bool {
        let shard = order_id.shard(self.context.shards.shards());
        self.context.shards.held().iter().any(|l| l.shard == shard)
    }

    /// Answers from this node when it holds the order's shard, else asks the others;
    /// the node holding the shard answers (nobody answers while it moves).
    fn locate(
        &mut self,
        order_id: OrderId,
        reply: RpcReplyPort<Result<OrderActorLocation, String>>,
    ) {
        if self.holds_shard_of(&order_id) {
            let (orders, node) = (self.orders.clone(), self.me().to_owned());
            tokio::spawn(async move {
                let found = inspect(&orders, &order_id, LOCATE_TIMEOUT_MS)
                    .await
                    .map(|actor| OrderActorLocation { node, actor });
                let _ = reply.send(found);
            });
            return;
        }
        let now = Instant::now();
        self.locating
            .retain(|_, (asked, _)| now.duration_since(*asked) < LOCATE_PATIENCE);
        self.next_request += 1;
        let request = self.next_request;
        self.locating.insert(request, (now, reply));
        let ask = ClusterMessage::InspectOrder {
            request,
            asked_by: self.me().to_owned(),
            order_id,
        };
        let bus = self.context.bus.clone();
        tokio::spawn(async move {
            if let Err(error) = bus.broadcast(ask).await {
                tracing::warn!(%error, "could not ask the cluster about an order");
            }
        });
    }

    fn recover_locally(&self, system: System, from: String) {
        let Some(adapter) = self.context.adapters.live(system) else {
            return;
        };
        tokio::spawn(async move {
            let recover = crate::actors::adapter::AdapterMsg::Recover;
            match ractor::call_t!(adapter, recover, 2000) {
                Ok(_) => {
                    tracing::info!(service = system.as_str(), %from, "circuit closed at another node's request")
                }
                Err(error) => {
                    tracing::warn!(service = system.as_str(), %error, "could not close the circuit")
                }
            }
        });
    }

    async fn tick(&mut self, myself: &ActorRef<ClusterMsg>) {
        let timeout = CENSUS_TIMEOUT.as_millis() as u64;
        if let Ok(census) = ractor::call_t!(self.orders, OrdersMsg::Census, timeout) {
            self.census = census;
        }
        let now = Instant::now();
        for gone in self.membership.expire(now) {
            tracing::warn!(node = %self.me(), %gone, "node not heard from; counted out");
        }
        let probes = if self.leaving || now < self.listening_until {
            Vec::new()
        } else {
            self.unclaimed(now)
        };
        self.announce(probes);
        self.balance(myself);
        let sweep = Duration::from_secs(self.context.settings.orders.resume_sweep_secs.max(1));
        if now.duration_since(self.last_sweep) >= sweep {
            self.last_sweep = now;
            self.sweep(sweep);
        }
        let held = self.context.shards.held().len();
        metrics::gauge!("swift_shards_owned", "node" => self.me().to_owned()).set(held as f64);
    }

    fn report(&self) -> NodeReport {
        let circuits = System::ALL
            .into_iter()
            .filter_map(|s| self.context.adapters.core(s))
            .map(|core| CircuitReport {
                service: core.system,
                circuit: core.health().circuit,
            })
            .collect();
        NodeReport {
            node_id: self.me().to_owned(),
            incarnation: self.incarnation.clone(),
            leaving: self.leaving,
            shards: self.context.shards.held().iter().map(|l| l.shard).collect(),
            order_actors: self.census.values().sum(),
            order_actors_by_shard: self.census.clone(),
            in_flight: self.context.admission.in_flight() as u64,
            circuits,
            sent_at: Utc::now(),
        }
    }

    /// Sends this node's heartbeat, then a probe to each of `probes`, in the
    /// background; skipped while the previous one is still on its way.
    fn announce(&mut self, probes: Vec<u32>) {
        let report = self.report();
        self.membership.heard(report.clone(), Instant::now());
        if self.publishing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (bus, publishing) = (self.context.bus.clone(), self.publishing.clone());
        tokio::spawn(async move {
            if let Err(error) = bus.broadcast(ClusterMessage::Heartbeat { report }).await {
                tracing::warn!(%error, "heartbeat not sent");
            }
            for shard in probes {
                if let Err(error) = bus.probe_shard(shard).await {
                    tracing::warn!(shard, %error, "could not probe an unclaimed shard");
                }
            }
            publishing.store(false, Ordering::SeqCst);
        });
    }

    /// Shards nobody claims: they may have an active consumer that does not know it
    /// yet (its predecessor died with nothing queued), which a probe tells.
    fn unclaimed(&self, now: Instant) -> Vec<u32> {
        let mut claimed = self.membership.claimed_elsewhere(now);
        claimed.extend(self.context.shards.held().iter().map(|l| l.shard));
        claimed.extend(self.yielding.keys().copied());
        (0..self.context.shards.shards())
            .filter(|shard| !claimed.contains(shard))
            .collect()
    }

    fn sharing(&self) -> BTreeSet<String> {
        self.membership.sharing(self.leaving, Instant::now())
    }

    fn keeps(&self, shard: u32) -> bool {
        let shards = self.context.shards.shards();
        self.membership
            .keeps(shard, shards, self.leaving, Instant::now())
    }

    /// Hands over every held shard this node should not keep.
    fn balance(&mut self, myself: &ActorRef<ClusterMsg>) {
        for lease in self.context.shards.held() {
            if !self.keeps(lease.shard) && !self.yielding.contains_key(&lease.shard) {
                self.hand_over(myself, lease);
            }
        }
    }

    /// Stops the shard's actors first, then ends its consumer (which wakes the next
    /// standby); waits again as a standby unless draining.
    fn hand_over(&mut self, myself: &ActorRef<ClusterMsg>, lease: Lease) {
        if !self.context.shards.revoke(lease) {
            return;
        }
        tracing::info!(node = %self.me(), shard = lease.shard, "handing a shard over");
        metrics::counter!("swift_shard_handovers_total").increment(1);
        self.yielding.insert(lease.shard, lease);
        self.handed_over.insert(lease);
        let (orders, bus, keeper) = (
            self.orders.clone(),
            self.context.bus.clone(),
            myself.clone(),
        );
        let rejoin = !self.leaving;
        tokio::spawn(async move {
            let timeout = RELEASE_TIMEOUT.as_millis() as u64;
            let release = |reply| OrdersMsg::Release { lease, reply };
            if let Err(error) = ractor::call_t!(orders, release, timeout) {
                tracing::warn!(shard = lease.shard, %error, "the actors of a released shard did not all stop in time");
            }
            if let Err(error) = bus.release_shard(lease.shard, rejoin).await {
                tracing::warn!(shard = lease.shard, %error, "could not release a shard's consumer");
            }
            let _ = keeper.cast(ClusterMsg::Yielded { lease });
        });
    }

    fn answer_drain(&mut self) {
        if self.leaving && self.yielding.is_empty() && self.context.shards.held().is_empty() {
            for reply in self.drained.drain(..) {
                let _ = reply.send(());
            }
        }
    }

    /// Wakes every unfinished order of the shards gained since the last resume.
    fn resume(&mut self, myself: &ActorRef<ClusterMsg>) {
        self.resume_scheduled = false;
        let leases = std::mem::take(&mut self.to_resume);
        if leases.is_empty() {
            return;
        }
        let (context, orders, keeper) = (self.context.clone(), self.orders.clone(), myself.clone());
        tokio::spawn(async move {
            match context.store.unfinished_orders(None).await {
                Ok(unfinished) => {
                    let woken = wake_held(&context, &orders, unfinished, |lease| {
                        leases.contains(&lease)
                    });
                    if woken > 0 {
                        tracing::info!(
                            orders = woken,
                            shards = leases.len(),
                            "resuming the unfinished orders of gained shards"
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the orders of gained shards; trying again");
                    let _ = keeper.cast(ClusterMsg::ResumeFailed { leases });
                }
            }
        });
    }

    /// Wakes the orders of held shards that nobody moved for a whole sweep interval:
    /// their wake-up may have been lost (a bus outage, a crash between store and bus).
    fn sweep(&self, every: Duration) {
        let (context, orders) = (self.context.clone(), self.orders.clone());
        tokio::spawn(async move {
            let unchanged_since = chrono::TimeDelta::from_std(every)
                .ok()
                .and_then(|every| Utc::now().checked_sub_signed(every));
            match context.store.unfinished_orders(unchanged_since).await {
                Ok(unfinished) => {
                    let woken = wake_held(&context, &orders, unfinished, |_| true);
                    if woken > 0 {
                        tracing::info!(
                            orders = woken,
                            "resume sweep woke orders nobody was driving"
                        );
                    }
                }
                Err(error) => tracing::warn!(%error, "resume sweep failed; trying again later"),
            }
        });
    }

    fn view(&self) -> ClusterView {
        let now = Instant::now();
        let mut nodes: Vec<NodeView> = self
            .membership
            .reports()
            .map(|(report, heard)| NodeView {
                this_node: report.node_id == self.me(),
                report: report.clone(),
                last_heard_ms_ago: now.saturating_duration_since(heard).as_millis() as u64,
            })
            .collect();
        nodes.sort_by(|a, b| a.report.node_id.cmp(&b.report.node_id));
        ClusterView {
            node_id: self.me().to_owned(),
            shards: self.context.shards.shards(),
            sharing: self.sharing().into_iter().collect(),
            nodes,
        }
    }
}

/// Wakes the orders among `unfinished` whose shard this node holds under a lease
/// `wanted` accepts; returns how many.
fn wake_held(
    context: &Context,
    orders: &ActorRef<OrdersMsg>,
    unfinished: Vec<OrderId>,
    wanted: impl Fn(Lease) -> bool,
) -> usize {
    let mut woken = 0;
    for order_id in unfinished {
        let shard = order_id.shard(context.shards.shards());
        let Some(lease) = context.shards.lease(shard).filter(|l| wanted(*l)) else {
            continue;
        };
        let command = OrderCommand::Wake { order_id };
        let wake = OrdersMsg::Command {
            command,
            lease,
            ack: Acker::none(),
            posted: Posted::uncounted(),
            trace: None,
        };
        if orders.cast(wake).is_err() {
            break;
        }
        woken += 1;
    }
    woken
}
