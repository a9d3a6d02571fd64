//! The Bus port: how work moves between actors, possibly on different nodes.
//!
//! Three flows, named after the RabbitMQ topology of DESIGN section 8:
//! step requests to the adapters (`order_exchange`), commands and step results to the
//! node that owns an order (`orders.shard.<n>`), and order updates to every node's
//! notifier (`events_exchange`). Consumers receive `Delivery`s and must `ack` only once
//! the effect is persisted; the bridges in `actors::bridge` turn them into actor
//! messages, which makes the bus a mailbox source.

pub mod amqp;
pub(crate) mod catalogue;
pub(crate) mod local;

use crate::domain::cluster::NodeReport;
use crate::domain::{Operation, OrderEvent, OrderId, System};
/// The saga's step messages are domain types; the bus carries them.
pub use crate::domain::{StepReply, StepRequest};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the message bus is unavailable: {0}")]
    Unavailable(String),
    #[error("the message bus refused the message: {0}")]
    Rejected(String),
    /// An operator named a queue the bus does not have.
    #[error("no queue named {0:?} has dead letters")]
    NoSuchQueue(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum OrderCommand {
    /// Load the order from the store and drive it on: after intake, after a change
    /// made elsewhere (cancel, delivery), after a restart or a shard take-over.
    Wake { order_id: OrderId },
    StepResult {
        order_id: OrderId,
        operation: Operation,
        attempt: u32,
        /// Echoes the request's `epoch`.
        #[serde(default)]
        epoch: u64,
        reply: StepReply,
    },
}

impl OrderCommand {
    pub fn order_id(&self) -> &OrderId {
        match self {
            Self::Wake { order_id } | Self::StepResult { order_id, .. } => order_id,
        }
    }
}

/// Acknowledgement handle of one delivery. Dropping it unacknowledged leaves the
/// message to the broker's redelivery.
#[async_trait]
pub trait Acknowledge: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// The handler failed: retry (up to the bus's limit) or dead-letter.
    async fn reject(self: Box<Self>, reason: &str) -> Result<(), BusError>;
}

/// The acknowledgement of the delivery a message came from, if it came from one
/// (the in-process bus and messages made up on this node have none). Handlers ack
/// best effort: if it fails the broker redelivers, and every handler is idempotent.
pub(crate) struct Acker(Option<Box<dyn Acknowledge>>);

impl Acker {
    pub(crate) fn none() -> Self {
        Self(None)
    }

    /// Acknowledges, and says whether the broker took it.
    pub(crate) async fn try_ack(self) -> Result<(), BusError> {
        match self.0 {
            Some(ack) => ack.ack().await,
            None => Ok(()),
        }
    }

    /// Acknowledges best effort: a failure is logged and left to redelivery.
    pub async fn ack(self) {
        if let Err(e) = self.try_ack().await {
            tracing::warn!(error = %e, "acknowledgement failed; the message will be redelivered");
        }
    }

    pub async fn reject(self, reason: &str) {
        if let Some(ack) = self.0
            && let Err(e) = ack.reject(reason).await
        {
            tracing::warn!(error = %e, "rejection failed; the message will be redelivered");
        }
    }
}

impl From<Option<Box<dyn Acknowledge>>> for Acker {
    fn from(ack: Option<Box<dyn Acknowledge>>) -> Self {
        Self(ack)
    }
}

/// What travels beside a message's body (AMQP headers): when it was posted, and the
/// W3C `traceparent` of the span that posted it, so its trace goes on wherever the
/// message is handled.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Envelope {
    pub(crate) posted_at: Option<DateTime<Utc>>,
    pub(crate) traceparent: Option<String>,
}

impl Envelope {
    /// The envelope of a message posted now, from within the current span.
    pub(crate) fn here() -> Self {
        Self {
            posted_at: Some(Utc::now()),
            traceparent: crate::observability::current_traceparent(),
        }
    }

    /// How long the message was on its way (`None` if unknown, or if the poster's
    /// clock is ahead of ours).
    pub(crate) fn waited(&self) -> Option<std::time::Duration> {
        (Utc::now() - self.posted_at?).to_std().ok()
    }
}

pub struct Delivery<T> {
    pub message: T,
    pub ack: Option<Box<dyn Acknowledge>>,
    pub(crate) envelope: Envelope,
}

impl<T> Delivery<T> {
    pub(crate) fn unacknowledged(message: T) -> Self {
        Self {
            message,
            ack: None,
            envelope: Envelope::default(),
        }
    }

    pub async fn ack(self) -> Result<(), BusError> {
        Acker::from(self.ack).try_ack().await
    }
}

pub type Inbox<T> = BoxStream<'static, Delivery<T>>;

/// A message the bus gave up on: its handler failed on every retry, or its body did
/// not parse. Kept on the broker for an operator to inspect and redrive.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The queue the message was dead-lettered from, as `redrive` takes it.
    pub queue: String,
    /// Why the broker dead-lettered it: `rejected` (malformed, or refused outright)
    /// or `delivery_limit` (retries exhausted).
    pub reason: String,
    /// Deliveries to a consumer before it was given up on.
    pub attempts: u64,
    /// The body as received (lossy UTF-8, possibly truncated for display).
    pub body: String,
    /// RFC 3339, when the broker recorded it.
    pub dead_lettered_at: Option<String>,
}

/// A new name for one ownership of one shard by this process: unique across the
/// cluster (random high half per process) and increasing within the process.
pub(crate) fn next_epoch() -> u64 {
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| u64::from(rand::random::<u32>() | 1) << 32);
    process | (COUNTER.fetch_add(1, Ordering::Relaxed) + 1) & 0xffff_ffff
}

/// The live-tracking sessions open on this node, counted for the in-process bus: its
/// order updates have no listener but this node's sessions, so while there are none
/// it publishes nothing, and an update nobody follows wakes neither the update
/// bridge nor the notifier (most orders are never watched live; under full load this
/// saves about a tenth of an order's CPU, BENCHMARKS.md). RabbitMQ's updates go to
/// every node, whose sessions this node cannot count, so that bus ignores it.
///
/// Nothing is missed by it: a session joins before it reads any order's event log,
/// and an update is published only after its event is committed. So an update that
/// found nobody listening was committed before the session joined, and the session's
/// read of the log shows it. The fences make that "before" hold across threads.
#[derive(Clone, Default)]
pub(crate) struct Listeners(Arc<AtomicUsize>);

impl Listeners {
    pub(crate) fn join(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    pub(crate) fn leave(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether nobody listens now, to an update whose event is committed.
    pub(crate) fn none(&self) -> bool {
        fence(Ordering::SeqCst);
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// What happens to this node's hold on the order shards. The broker decides who is
/// active on a shard; these events tell the node what it decided.
pub enum ShardEvent {
    /// This node became the shard's active consumer (its first delivery arrived).
    /// `epoch` names this ownership until it ends.
    Gained { shard: u32, epoch: u64 },
    /// The ownership ended: released, or the consumer was cancelled, or its channel
    /// or connection was lost (then the bus subscribes again as a standby by itself).
    Lost { shard: u32, epoch: u64 },
    /// A command for an order of the shard, received under `epoch`.
    Command {
        shard: u32,
        epoch: u64,
        delivery: Delivery<OrderCommand>,
    },
}

pub type ShardFeed = BoxStream<'static, ShardEvent>;

/// Messages between the nodes of a cluster, seen by every node (itself included).
/// Externally tagged: an internally tagged enum would buffer the report, and serde
/// cannot then read the shard numbers that key its maps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClusterMessage {
    Heartbeat {
        report: NodeReport,
    },
    /// An operator closed this system's circuit on one node: close it everywhere.
    RecoverCircuit {
        service: System,
        from: String,
    },
    /// `asked_by` looks up an order's actor: the node holding its shard answers.
    InspectOrder {
        request: u64,
        asked_by: String,
        order_id: OrderId,
    },
    InspectedOrder {
        request: u64,
        asked_by: String,
        found: OrderActorLocation,
    },
}

/// Where an order's actor runs and, if one is live, what it is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderActorLocation {
    pub(crate) node: String,
    pub(crate) actor: Option<crate::domain::runner::OrderActorView>,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), BusError>;
    async fn send_step(&self, request: StepRequest) -> Result<(), BusError>;
    async fn send_to_order(&self, command: OrderCommand) -> Result<(), BusError>;
    async fn publish_update(&self, event: Arc<OrderEvent>) -> Result<(), BusError>;

    /// Step requests for one external system; adapters on every node share them.
    async fn step_requests(&self, system: System) -> Result<Inbox<StepRequest>, BusError>;
    /// Number of order shards.
    fn shard_count(&self) -> u32;
    /// Subscribes to every order shard, as active consumer or standby as the broker
    /// decides; reports what it decides and the commands of the shards held.
    async fn order_shards(&self) -> Result<ShardFeed, BusError>;
    /// Gives up an active shard: ends its consumer (what it holds unacknowledged
    /// goes back to the queue, to the next consumer), wakes the next standby, and
    /// waits at the back as a standby again when `rejoin`.
    async fn release_shard(&self, shard: u32, rejoin: bool) -> Result<(), BusError>;
    /// Stops waiting as a standby on every shard this node is not active on
    /// (draining: the node takes no shard any more).
    async fn stop_standing_by(&self) -> Result<(), BusError>;
    /// Sends a probe to the shard's queue: its active consumer learns it is active,
    /// even when the shard has no work.
    async fn probe_shard(&self, shard: u32) -> Result<(), BusError>;
    /// Sends `message` to every node of the cluster, this one included.
    async fn broadcast(&self, message: ClusterMessage) -> Result<(), BusError>;
    /// What the nodes broadcast, from now on.
    async fn cluster_messages(&self) -> Result<Inbox<ClusterMessage>, BusError>;
    /// Every order update, whichever node made it.
    async fn order_updates(&self) -> Result<Inbox<Arc<OrderEvent>>, BusError>;

    /// Up to `limit` dead letters across every dead-letter queue, left in place.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BusError>;
    /// Moves every dead letter of `queue` back onto `queue`; returns how many moved.
    async fn redrive(&self, queue: &str) -> Result<usize, BusError>;
    /// Dead letters waiting per work queue (for `/metrics`); none on a bus that
    /// keeps no dead letters.
    async fn dead_letter_depths(&self) -> Result<Vec<(String, u64)>, BusError> {
        Ok(Vec::new())
    }
}

pub(crate) type SharedBus = Arc<dyn Bus>;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use std::collections::BTreeMap;

    #[test]
    fn a_heartbeat_reads_back_as_sent() {
        let report = NodeReport {
            node_id: "a".into(),
            incarnation: "1234abcd".into(),
            leaving: false,
            shards: vec![1, 4],
            order_actors: 3,
            order_actors_by_shard: BTreeMap::from([(1, 2), (4, 1)]),
            in_flight: 3,
            circuits: Vec::new(),
            sent_at: Utc::now(),
        };
        let message = ClusterMessage::Heartbeat { report };
        let wire = serde_json::to_vec(&message).unwrap();
        assert_eq!(
            serde_json::from_slice::<ClusterMessage>(&wire).unwrap(),
            message
        );
    }
}
