//! The Bus port: how work moves between actors, possibly on different nodes.
//!
//! Three flows, named after the RabbitMQ topology of DESIGN section 8:
//! step requests to the adapters (`order_exchange`), commands and step results to the
//! node that owns an order (`orders.shard.<n>`), and order updates to every node's
//! notifier (`events_exchange`). Consumers receive `Delivery`s and must `ack` only once
//! the effect is persisted; the bridges in `actors::bridge` turn them into actor
//! messages, which makes the bus a mailbox source.

pub mod amqp;
pub mod local;

use crate::domain::{
    Location, Operation, OperationOutcome, OrderEvent, OrderId, PackageDetails, System, UserId,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the message bus is unavailable: {0}")]
    Unavailable(String),
    #[error("the message bus refused the message: {0}")]
    Rejected(String),
}

/// A call the order saga asks an adapter to make. Carries what every protocol needs,
/// so an adapter on any node can serve it without reading the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRequest {
    pub order_id: OrderId,
    pub customer_id: UserId,
    pub operation: Operation,
    /// Distinguishes a retry from the call it replaces, so late replies are dropped.
    pub attempt: u32,
    pub pickup: Location,
    pub delivery: Location,
    pub package: PackageDetails,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_id: Option<String>,
}

impl StepRequest {
    pub fn idempotency_key(&self) -> String {
        self.operation.idempotency_key(&self.order_id)
    }
}

/// How an adapter answered a step request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum StepReply {
    /// Success or business refusal: final for this operation.
    Settled { outcome: OperationOutcome },
    /// Worth retrying later (timeout, outage, open circuit).
    Transient { reason: String },
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

/// What travels beside a message's body (AMQP headers): when it was posted, and the
/// W3C `traceparent` of the span that posted it, so its trace goes on wherever the
/// message is handled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Envelope {
    pub posted_at: Option<DateTime<Utc>>,
    pub traceparent: Option<String>,
}

impl Envelope {
    /// The envelope of a message posted now, from within the current span.
    pub fn here() -> Self {
        Self {
            posted_at: Some(Utc::now()),
            traceparent: crate::observability::current_traceparent(),
        }
    }

    /// How long the message was on its way (`None` if unknown, or if the poster's
    /// clock is ahead of ours).
    pub fn waited(&self) -> Option<std::time::Duration> {
        (Utc::now() - self.posted_at?).to_std().ok()
    }
}

pub struct Delivery<T> {
    pub message: T,
    pub ack: Option<Box<dyn Acknowledge>>,
    pub envelope: Envelope,
}

impl<T> Delivery<T> {
    pub fn unacknowledged(message: T) -> Self {
        Self {
            message,
            ack: None,
            envelope: Envelope::default(),
        }
    }

    pub async fn ack(self) -> Result<(), BusError> {
        match self.ack {
            Some(ack) => ack.ack().await,
            None => Ok(()),
        }
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

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), BusError>;
    async fn send_step(&self, request: StepRequest) -> Result<(), BusError>;
    async fn send_to_order(&self, command: OrderCommand) -> Result<(), BusError>;
    async fn publish_update(&self, event: OrderEvent) -> Result<(), BusError>;

    /// Step requests for one external system; adapters on every node share them.
    async fn step_requests(&self, system: System) -> Result<Inbox<StepRequest>, BusError>;
    /// Commands for the orders this node owns.
    async fn order_commands(&self) -> Result<Inbox<OrderCommand>, BusError>;
    /// Every order update, whichever node made it.
    async fn order_updates(&self) -> Result<Inbox<OrderEvent>, BusError>;

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

pub type SharedBus = Arc<dyn Bus>;
