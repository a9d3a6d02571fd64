//! The RabbitMQ bus (DESIGN sections 8 and 9), for running several nodes.
//!
//! Step requests go through `order_exchange` to one quorum queue per external system;
//! order commands go straight to the quorum queue of the order's shard, where
//! single-active-consumer lets the broker pick the one node that owns the shard;
//! updates go through the topic `events_exchange` to a private queue per subscriber.
//! Every publish is persistent and waits for the broker's confirm. Work deliveries
//! are acknowledged by whoever persists their effect; a rejected one comes back after
//! a backoff, and after `DELIVERY_RETRIES` more deliveries the broker moves it to
//! its queue's dead-letter queue (malformed messages go there at once).

mod consume;
mod dead_letters;
mod envelope;
mod link;
mod topology;

use self::consume::{Acking, Subscription};
use self::link::{Link, Outgoing};
use self::topology::Names;
use super::{Bus, BusError, DeadLetter, Inbox, OrderCommand, StepRequest};
use crate::config::BusSettings;
use crate::domain::{OrderEvent, System};
use async_trait::async_trait;
use lapin::BasicProperties;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use self::topology::DELIVERY_RETRIES;

/// AMQP delivery mode of messages written to disk.
const PERSISTENT: u8 = 2;

pub struct AmqpBus {
    link: Arc<Link>,
    shards: u32,
    prefetch: u16,
    update_subscriptions: AtomicU32,
    /// Stops the connection supervisor and every consumer when the bus is dropped.
    shutdown: CancellationToken,
}

impl AmqpBus {
    /// Connects to `settings.rabbitmq_url` and declares the topology; fails if the
    /// broker cannot be reached now. Afterwards, lost connections are re-established
    /// in the background for as long as the bus lives, and open inboxes resume.
    /// `node_id` names this node's updates queue, so it must be unique per live node.
    pub async fn connect(settings: &BusSettings, node_id: &str) -> Result<Self, BusError> {
        let names = Arc::new(Names::new(&settings.namespace, node_id, settings.shards)?);
        let shutdown = CancellationToken::new();
        let link = Link::start(
            &settings.rabbitmq_url,
            format!("swiftlogistics {node_id}"),
            names,
            Duration::from_secs(settings.timeout_secs.max(1)),
            shutdown.clone(),
        )
        .await?;
        Ok(Self {
            link,
            shards: settings.shards.max(1),
            prefetch: settings.prefetch.max(1),
            update_subscriptions: AtomicU32::new(0),
            shutdown,
        })
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &impl Serialize,
        mandatory: bool,
    ) -> Result<(), BusError> {
        let body = serde_json::to_vec(message)
            .map_err(|e| BusError::Rejected(format!("unserialisable message: {e}")))?;
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_headers(envelope::headers(&super::Envelope::here()));
        self.link
            .publish(Outgoing {
                exchange,
                routing_key,
                body: &body,
                properties,
                mandatory,
            })
            .await
    }

    async fn work_inbox<T>(&self, queues: Vec<String>) -> Result<Inbox<T>, BusError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        consume::inbox(
            self.link.clone(),
            Subscription {
                queues,
                private_queue: None,
                acking: Acking::ByReceiver,
                prefetch: self.prefetch,
            },
        )
        .await
    }
}

impl Drop for AmqpBus {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `order.created` for an order's first event, `order.status.<STATUS>` after that.
fn update_routing_key(event: &OrderEvent) -> String {
    if event.seq <= 1 {
        "order.created".to_owned()
    } else {
        format!("order.status.{}", event.status.as_str())
    }
}

#[async_trait]
impl Bus for AmqpBus {
    async fn ping(&self) -> Result<(), BusError> {
        if self.link.is_connected() {
            Ok(())
        } else {
            Err(BusError::Unavailable("not connected to RabbitMQ".into()))
        }
    }

    async fn send_step(&self, request: StepRequest) -> Result<(), BusError> {
        let system = request.operation.system();
        let exchange = self.link.names().order_exchange.clone();
        self.publish(&exchange, system.as_str(), &request, true)
            .await
    }

    async fn send_to_order(&self, command: OrderCommand) -> Result<(), BusError> {
        let shard = command.order_id().shard(self.shards);
        let queue = self.link.names().shard_queue(shard).name.clone();
        // The default exchange routes by queue name.
        self.publish("", &queue, &command, true).await
    }

    async fn publish_update(&self, event: OrderEvent) -> Result<(), BusError> {
        let exchange = self.link.names().events_exchange.clone();
        // Not mandatory: an update nobody subscribes to is nobody's loss.
        self.publish(&exchange, &update_routing_key(&event), &event, false)
            .await
    }

    async fn step_requests(&self, system: System) -> Result<Inbox<StepRequest>, BusError> {
        let queue = self.link.names().step_queue(system).name.clone();
        self.work_inbox(vec![queue]).await
    }

    /// Consumes every shard; the broker makes this node the active consumer of the
    /// shards nobody else holds, and hands them over when their owner goes.
    async fn order_commands(&self) -> Result<Inbox<OrderCommand>, BusError> {
        let queues = self
            .link
            .names()
            .shard_queues()
            .iter()
            .map(|q| q.name.clone())
            .collect();
        self.work_inbox(queues).await
    }

    async fn order_updates(&self) -> Result<Inbox<OrderEvent>, BusError> {
        let subscription = self.update_subscriptions.fetch_add(1, Ordering::Relaxed);
        let queue = self.link.names().events_queue(subscription);
        consume::inbox(
            self.link.clone(),
            Subscription {
                queues: vec![queue.clone()],
                private_queue: Some(queue),
                acking: Acking::OnReceipt,
                prefetch: self.prefetch,
            },
        )
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        dead_letters::list(&self.link, limit).await
    }

    async fn redrive(&self, queue: &str) -> Result<usize, BusError> {
        dead_letters::redrive(&self.link, queue).await
    }

    async fn dead_letter_depths(&self) -> Result<Vec<(String, u64)>, BusError> {
        dead_letters::depths(&self.link).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OrderId, OrderStatus, UserId};
    use chrono::Utc;

    fn event(seq: u64, status: OrderStatus) -> OrderEvent {
        OrderEvent {
            order_id: OrderId::generate(Utc::now()),
            customer_id: UserId::generate(),
            seq,
            status,
            message: String::new(),
            timestamp: Utc::now(),
            data: serde_json::Value::Null,
        }
    }

    #[test]
    fn updates_are_routed_by_what_happened() {
        assert_eq!(
            update_routing_key(&event(1, OrderStatus::Received)),
            "order.created"
        );
        assert_eq!(
            update_routing_key(&event(4, OrderStatus::RouteOptimized)),
            "order.status.ROUTE_OPTIMIZED"
        );
    }
}
