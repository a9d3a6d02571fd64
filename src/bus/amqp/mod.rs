//! The RabbitMQ bus (DESIGN sections 8 and 9), for running several nodes.
//!
//! Step requests go through `order_exchange` to one quorum queue per external system;
//! order commands go straight to the quorum queue of the order's shard, where
//! single-active-consumer lets the broker pick the one node that owns the shard;
//! updates go through the topic exchange `order_updates` to a private queue per
//! subscriber, and, in seed 000's format, to `events_exchange` for consumers outside
//! the runtime (see `bus::catalogue`).
//! Every publish is persistent and waits for the broker's confirm. Work deliveries
//! are acknowledged by whoever persists their effect; a rejected one comes back after
//! a backoff, and after `DELIVERY_RETRIES` more deliveries the broker moves it to
//! its queue's dead-letter queue (malformed messages go there at once).

mod consume;
mod dead_letters;
mod envelope;
mod link;
mod shards;
mod topology;

use self::consume::{Acking, Subscription};
use self::link::{Link, Outgoing};
use self::shards::{Control, ShardConsumer};
use self::topology::{Names, PrivateQueue, Replication};
use super::catalogue::catalogue_event;
use super::{
    Bus, BusError, ClusterMessage, DeadLetter, Inbox, OrderCommand, ShardFeed, StepRequest,
};
use crate::config::BusSettings;
use crate::domain::{OrderEvent, System};
use async_trait::async_trait;
use futures::StreamExt;
use lapin::BasicProperties;
use serde::Serialize;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use self::topology::DELIVERY_RETRIES;

/// AMQP delivery mode of messages written to disk.
const PERSISTENT: u8 = 2;
/// Shard events buffered between the shard consumers and the node.
const SHARD_EVENTS: usize = 1024;
/// Milliseconds an unread cluster message lives in a node's queue.
const CLUSTER_MESSAGE_TTL_MS: i64 = 5_000;

pub struct AmqpBus {
    link: Arc<Link>,
    shards: u32,
    prefetch: u16,
    update_subscriptions: AtomicU32,
    /// How to reach each shard's consumer, once `order_shards` started them.
    shard_controls: Mutex<Vec<mpsc::Sender<Control>>>,
    /// Stops the connection supervisor and every consumer when the bus is dropped.
    shutdown: CancellationToken,
}

impl AmqpBus {
    /// Connects to one of the brokers of `settings.rabbitmq_url` (a comma-separated
    /// list) and declares the topology; fails if no broker can be reached now. Afterwards, lost connections are re-established
    /// in the background for as long as the bus lives, and open inboxes resume.
    /// `node_id` names this node's updates queue, so it must be unique per live node.
    pub async fn connect(settings: &BusSettings, node_id: &str) -> Result<Self, BusError> {
        let names = Arc::new(Names::new(&settings.namespace, node_id, settings.shards)?);
        let shutdown = CancellationToken::new();
        let link = Link::start(
            &settings.rabbitmq_url,
            format!("swiftlogistics {node_id}"),
            names,
            Replication {
                initial_group_size: settings.quorum_initial_group_size,
            },
            Duration::from_secs(settings.timeout_secs.max(1)),
            shutdown.clone(),
        )
        .await?;
        Ok(Self {
            link,
            shards: settings.shards.max(1),
            prefetch: settings.prefetch.max(1),
            update_subscriptions: AtomicU32::new(0),
            shard_controls: Mutex::default(),
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
        self.publish_with(exchange, routing_key, message, mandatory, persistent_json())
            .await
    }

    async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &impl Serialize,
        mandatory: bool,
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        let body = serde_json::to_vec(message)
            .map_err(|e| BusError::Rejected(format!("unserialisable message: {e}")))?;
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

impl AmqpBus {
    /// Consumes a queue of this node's own, acknowledged on receipt.
    async fn private_inbox<T>(&self, queue: PrivateQueue) -> Result<Inbox<T>, BusError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        consume::inbox(
            self.link.clone(),
            Subscription {
                queues: vec![queue.name.clone()],
                private_queue: Some(queue),
                acking: Acking::OnReceipt,
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

/// Every message we publish: persistent JSON, stamped with when it was posted and
/// the trace it belongs to (headers read back by the consuming side's telemetry).
fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
        .with_headers(envelope::headers(&super::Envelope::here()))
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

    /// To the nodes' notifiers and, as seed 000's catalogue event, to
    /// `events_exchange`; both after the transition is persisted (callers announce
    /// only durable events), both confirmed before the next event of the order goes.
    async fn publish_update(&self, event: Arc<OrderEvent>) -> Result<(), BusError> {
        let names = self.link.names();
        let seed = catalogue_event(&event);
        let properties = persistent_json()
            .with_type(seed.kind.into())
            .with_message_id(seed.message_id(&event).into());
        let routing_key = update_routing_key(&event);
        // Not mandatory: an update nobody subscribes to is nobody's loss.
        let (ours, theirs) = tokio::join!(
            self.publish(&names.updates_exchange, &routing_key, &*event, false),
            self.publish_with(
                &names.events_exchange,
                &seed.routing_key,
                &seed,
                false,
                properties
            ),
        );
        ours.and(theirs)
    }

    async fn step_requests(&self, system: System) -> Result<Inbox<StepRequest>, BusError> {
        let queue = self.link.names().step_queue(system).name.clone();
        self.work_inbox(vec![queue]).await
    }

    fn shard_count(&self) -> u32 {
        self.shards
    }

    /// Starts one consumer per shard, each on its own channel, and returns once the
    /// broker has registered them all (active or waiting).
    async fn order_shards(&self) -> Result<ShardFeed, BusError> {
        let (events, feed) = mpsc::channel(SHARD_EVENTS);
        let mut controls = Vec::new();
        let mut subscribed = Vec::new();
        for (shard, queue) in self.link.names().shard_queues().iter().enumerate() {
            let (control, orders) = mpsc::channel(4);
            let (done, registered) = oneshot::channel();
            controls.push(control);
            subscribed.push(registered);
            tokio::spawn(
                ShardConsumer {
                    link: self.link.clone(),
                    shard: shard as u32,
                    queue: queue.name.clone(),
                    prefetch: self.prefetch,
                    events: events.clone(),
                    control: orders,
                    subscribed: Some(done),
                }
                .run(),
            );
        }
        if let Ok(mut current) = self.shard_controls.lock() {
            *current = controls;
        }
        let limit = self.link.limit;
        let all = futures::future::join_all(subscribed);
        match tokio::time::timeout(limit, all).await {
            Ok(results) if results.iter().all(Result::is_ok) => {
                Ok(ReceiverStream::new(feed).boxed())
            }
            Ok(_) => Err(BusError::Unavailable("the bus is shut down".into())),
            Err(_) => Err(BusError::Unavailable(format!(
                "could not subscribe to every shard within {limit:?}"
            ))),
        }
    }

    async fn release_shard(&self, shard: u32, rejoin: bool) -> Result<(), BusError> {
        let control = self
            .shard_controls
            .lock()
            .ok()
            .and_then(|controls| controls.get(shard as usize).cloned())
            .ok_or_else(|| BusError::Rejected(format!("no consumer for shard {shard}")))?;
        let (done, released) = oneshot::channel();
        if control
            .send(Control::Release { rejoin, done })
            .await
            .is_err()
        {
            // The consumer has ended already: nothing is held.
            return Ok(());
        }
        match tokio::time::timeout(self.link.limit, released).await {
            Ok(_) => Ok(()),
            Err(_) => Err(BusError::Unavailable(format!(
                "shard {shard} was not released within {:?}",
                self.link.limit
            ))),
        }
    }

    async fn stop_standing_by(&self) -> Result<(), BusError> {
        let controls = self
            .shard_controls
            .lock()
            .map(|controls| controls.clone())
            .unwrap_or_default();
        for control in controls {
            let _ = control.send(Control::StopStandingBy).await;
        }
        Ok(())
    }

    async fn probe_shard(&self, shard: u32) -> Result<(), BusError> {
        let queue = self.link.names().shard_queue(shard).name.clone();
        shards::probe(&self.link, &queue).await
    }

    async fn broadcast(&self, message: ClusterMessage) -> Result<(), BusError> {
        let exchange = self.link.names().cluster_exchange.clone();
        self.publish(&exchange, "", &message, false).await
    }

    async fn cluster_messages(&self) -> Result<Inbox<ClusterMessage>, BusError> {
        let names = self.link.names();
        let queue = PrivateQueue {
            name: names.cluster_queue(),
            exchange: names.cluster_exchange.clone(),
            binding: String::new(),
            message_ttl_ms: Some(CLUSTER_MESSAGE_TTL_MS),
        };
        self.private_inbox(queue).await
    }

    async fn order_updates(&self) -> Result<Inbox<Arc<OrderEvent>>, BusError> {
        let subscription = self.update_subscriptions.fetch_add(1, Ordering::Relaxed);
        let names = self.link.names();
        let queue = PrivateQueue {
            name: names.events_queue(subscription),
            exchange: names.updates_exchange.clone(),
            binding: "order.#".into(),
            message_ttl_ms: None,
        };
        self.private_inbox(queue).await
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
