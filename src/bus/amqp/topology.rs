//! Names and declarations of the RabbitMQ topology (DESIGN section 8).
//!
//! Everything is declared at every (re)connect: declarations are idempotent, and
//! re-declaring makes a broker that lost its definitions whole again.
//!
//! On a RabbitMQ cluster every durable queue is a quorum queue, replicated on
//! `initial_group_size` brokers, with its leader placed by the broker on the least
//! loaded one (`x-queue-leader-locator: balanced`), so losing one broker loses no
//! queue and leaves no broker with every leader.

use super::BusError;
use super::link::{unavailable, within};
use crate::domain::System;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};
use std::time::Duration;

/// Redeliveries after a handler rejected a message; one more rejection and the
/// broker dead-letters it (quorum queues count deliveries themselves).
pub const DELIVERY_RETRIES: u64 = 3;

/// Longest namespace and node id accepted, so that every derived name stays within
/// AMQP's 255-byte limit for queue and exchange names.
const MAX_NAMESPACE_LEN: usize = 64;
const MAX_NODE_ID_LEN: usize = 64;

/// A queue whose messages are work (step requests, order commands): quorum, with a
/// dead-letter queue behind it.
#[derive(Debug, Clone)]
pub(super) struct WorkQueue {
    /// The name without the namespace, as operators and `redrive` use it.
    pub(crate) logical: String,
    /// The name on the broker.
    pub(crate) name: String,
    /// Where the broker puts what this queue gives up on.
    pub(crate) dead_letters: String,
}

/// How quorum queues are spread over the brokers of a RabbitMQ cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Replication {
    /// Brokers holding a replica of each new quorum queue (capped by the broker at
    /// the cluster's size); 0 leaves it to the broker (every cluster member).
    pub(crate) initial_group_size: u32,
}

/// Every exchange and queue name of one namespace.
#[derive(Debug, Clone)]
pub(super) struct Names {
    prefix: String,
    pub(crate) order_exchange: String,
    /// Seed 000's event catalogue, for consumers outside the runtime.
    pub(crate) events_exchange: String,
    /// Our own order updates, to every node's notifier (kept apart from the
    /// catalogue so that each exchange carries one message format).
    pub(crate) updates_exchange: String,
    /// Fanout of cluster messages (heartbeats, operator commands) to every node.
    pub(crate) cluster_exchange: String,
    pub(crate) dead_letter_exchange: String,
    /// Step queues in `System::ALL` order, then the shard queues in shard order.
    work: Vec<WorkQueue>,
    node_id: String,
}

impl Names {
    pub fn new(namespace: &str, node_id: &str, shards: u32) -> Result<Self, BusError> {
        let safe = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if namespace.len() > MAX_NAMESPACE_LEN || !safe(namespace) {
            return Err(BusError::Unavailable(format!(
                "bus.namespace must be at most {MAX_NAMESPACE_LEN} characters of A-Z a-z 0-9 - _ ."
            )));
        }
        if node_id.is_empty() || node_id.len() > MAX_NODE_ID_LEN || !safe(node_id) {
            return Err(BusError::Unavailable(format!(
                "the node id must be 1 to {MAX_NODE_ID_LEN} characters of A-Z a-z 0-9 - _ ."
            )));
        }
        let prefix = if namespace.is_empty() {
            String::new()
        } else {
            format!("{namespace}.")
        };
        let work_queue = |logical: String| {
            let name = format!("{prefix}{logical}");
            WorkQueue {
                dead_letters: format!("{name}.dlq"),
                name,
                logical,
            }
        };
        let work = System::ALL
            .iter()
            .map(|system| work_queue(format!("{}_order_queue", system.as_str())))
            .chain((0..shards.max(1)).map(|n| work_queue(format!("orders.shard.{n}"))))
            .collect();
        Ok(Self {
            order_exchange: format!("{prefix}order_exchange"),
            events_exchange: format!("{prefix}events_exchange"),
            updates_exchange: format!("{prefix}order_updates"),
            cluster_exchange: format!("{prefix}cluster_exchange"),
            dead_letter_exchange: format!("{prefix}dlx"),
            work,
            node_id: node_id.to_owned(),
            prefix,
        })
    }

    pub(crate) fn step_queue(&self, system: System) -> &WorkQueue {
        let index = System::ALL
            .iter()
            .position(|s| *s == system)
            .unwrap_or_default();
        &self.work[index]
    }

    pub(crate) fn shard_queues(&self) -> &[WorkQueue] {
        &self.work[System::ALL.len()..]
    }

    pub(crate) fn shard_queue(&self, shard: u32) -> &WorkQueue {
        let shards = self.shard_queues();
        &shards[shard as usize % shards.len()]
    }

    pub(crate) fn work_queues(&self) -> &[WorkQueue] {
        &self.work
    }

    /// The work queue an operator means by `queue`: its logical name, its broker
    /// name, or either with the `.dlq` suffix.
    pub(crate) fn resolve(&self, queue: &str) -> Option<&WorkQueue> {
        let queue = queue.strip_suffix(".dlq").unwrap_or(queue);
        let logical = queue.strip_prefix(self.prefix.as_str()).unwrap_or(queue);
        self.work.iter().find(|w| w.logical == logical)
    }

    /// The queue of one `order_updates` subscription: the first is `events.<node>`,
    /// later ones on the same node get a suffix so that each sees every update.
    pub(crate) fn events_queue(&self, subscription: u32) -> String {
        match subscription {
            0 => format!("{}events.{}", self.prefix, self.node_id),
            n => format!("{}events.{}.{n}", self.prefix, self.node_id),
        }
    }

    /// This node's queue of cluster messages.
    pub(crate) fn cluster_queue(&self) -> String {
        format!("{}cluster.{}", self.prefix, self.node_id)
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The arguments every durable queue of ours starts with.
fn quorum(replication: Replication) -> Vec<(&'static str, AMQPValue)> {
    let mut arguments = vec![
        ("x-queue-type", text("quorum")),
        ("x-queue-leader-locator", text("balanced")),
    ];
    if replication.initial_group_size > 0 {
        arguments.push((
            "x-quorum-initial-group-size",
            AMQPValue::LongLongInt(i64::from(replication.initial_group_size)),
        ));
    }
    arguments
}

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

/// Declares on one channel, each step under the bus's time limit (a whole topology
/// of many new quorum queues may take longer than one step is allowed).
struct Declarer<'a> {
    connection: &'a Connection,
    channel: Channel,
    limit: Duration,
}

impl Declarer<'_> {
    async fn exchange(&self, exchange: &str, kind: ExchangeKind) -> Result<(), BusError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        within(
            self.limit,
            "declaring an exchange",
            self.channel
                .exchange_declare(exchange.into(), kind, durable, FieldTable::default()),
        )
        .await
    }

    async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<(), BusError> {
        within(
            self.limit,
            "binding a queue",
            self.channel.queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    }

    /// Declares a durable queue. One that already exists with other arguments
    /// (declared by an earlier version: a classic dead-letter queue, a quorum queue
    /// without leader locator or group size) is kept as it is, with a warning: the
    /// broker never changes a queue's arguments, and refusing to start would stop a
    /// cluster at its first upgrade. README ("Broker cluster") says how to migrate.
    async fn queue(
        &mut self,
        queue: &str,
        arguments: &[(&str, AMQPValue)],
    ) -> Result<(), BusError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let declared = tokio::time::timeout(
            self.limit,
            self.channel
                .queue_declare(queue.into(), durable, table(arguments)),
        )
        .await;
        match declared {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) if is_precondition_failed(&error) => {
                // The refusal closed the channel; the queue must at least exist.
                self.channel = within(
                    self.limit,
                    "opening a channel",
                    self.connection.create_channel(),
                )
                .await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                within(
                    self.limit,
                    "looking up a queue",
                    self.channel
                        .queue_declare(queue.into(), passive, FieldTable::default()),
                )
                .await?;
                tracing::warn!(queue, %error, "queue kept with the arguments it was declared with");
                Ok(())
            }
            Ok(Err(error)) => Err(unavailable("declaring a queue", error)),
            Err(_) => Err(BusError::Unavailable(format!(
                "declaring queue {queue}: no answer from the broker within {:?}",
                self.limit
            ))),
        }
    }
}

/// Declares exchanges, work queues, dead-letter queues and their bindings.
pub(super) async fn declare(
    connection: &Connection,
    names: &Names,
    replication: Replication,
    limit: Duration,
) -> Result<(), BusError> {
    let channel = within(limit, "opening a channel", connection.create_channel()).await?;
    let mut declarer = Declarer {
        connection,
        channel,
        limit,
    };
    for (exchange, kind) in [
        (&names.order_exchange, ExchangeKind::Direct),
        (&names.events_exchange, ExchangeKind::Topic),
        (&names.updates_exchange, ExchangeKind::Topic),
        (&names.cluster_exchange, ExchangeKind::Fanout),
        (&names.dead_letter_exchange, ExchangeKind::Direct),
    ] {
        declarer.exchange(exchange, kind).await?;
    }
    for (index, work) in names.work_queues().iter().enumerate() {
        // Quorum like the work itself, so dead letters survive losing a broker.
        // Listing them redelivers them, which raises their `x-delivery-count`; the
        // attempts a dead letter shows come from its `x-death` history instead.
        declarer
            .queue(&work.dead_letters, &quorum(replication))
            .await?;
        declarer
            .bind(&work.dead_letters, &names.dead_letter_exchange, &work.name)
            .await?;
        let mut arguments = quorum(replication);
        arguments.extend([
            ("x-dead-letter-exchange", text(&names.dead_letter_exchange)),
            ("x-dead-letter-routing-key", text(&work.name)),
            // At-least-once dead-lettering: the broker keeps a message until the
            // dead-letter queue has confirmed it (needs reject-publish overflow).
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(DELIVERY_RETRIES as i64),
            ),
        ]);
        let is_shard = index >= System::ALL.len();
        if is_shard {
            // The broker, not our code, picks the one node that owns a shard.
            arguments.push(("x-single-active-consumer", AMQPValue::Boolean(true)));
        }
        declarer.queue(&work.name, &arguments).await?;
        if !is_shard {
            declarer
                .bind(
                    &work.name,
                    &names.order_exchange,
                    System::ALL[index].as_str(),
                )
                .await?;
        }
    }
    // Best effort: the channel goes with the connection anyway.
    let _ = within(
        limit,
        "closing a channel",
        declarer.channel.close(200, "OK".into()),
    )
    .await;
    Ok(())
}

/// A queue of this node's own, bound to a fanout or topic exchange.
#[derive(Debug, Clone)]
pub(super) struct PrivateQueue {
    pub(crate) name: String,
    pub(crate) exchange: String,
    pub(crate) binding: String,
    /// Milliseconds after which an unread message is dropped (a stale heartbeat says
    /// nothing the next one does not).
    pub(crate) message_ttl_ms: Option<i64>,
}

/// Declares one of this node's private queues (an `order_updates` subscription, the
/// cluster messages). It lives and dies with the connection: updates missed while it
/// is gone are replayed from the event log by whoever needs them, and heartbeats are
/// sent again every second.
pub(super) async fn declare_private_queue(
    channel: &Channel,
    queue: &PrivateQueue,
) -> lapin::Result<()> {
    let mut arguments = vec![("x-queue-type", text("classic"))];
    if let Some(ttl) = queue.message_ttl_ms {
        arguments.push(("x-message-ttl", AMQPValue::LongLongInt(ttl)));
    }
    channel
        .queue_declare(
            queue.name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            table(&arguments),
        )
        .await?;
    channel
        .queue_bind(
            queue.name.as_str().into(),
            queue.exchange.as_str().into(),
            queue.binding.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_namespace() {
        let names = Names::new("t1", "node-a", 2).unwrap();
        assert_eq!(names.order_exchange, "t1.order_exchange");
        assert_eq!(names.step_queue(System::Wms).name, "t1.wms_order_queue");
        assert_eq!(names.step_queue(System::Wms).logical, "wms_order_queue");
        assert_eq!(names.shard_queue(1).name, "t1.orders.shard.1");
        assert_eq!(names.shard_queue(1).dead_letters, "t1.orders.shard.1.dlq");
        assert_eq!(names.events_queue(0), "t1.events.node-a");
        assert_eq!(names.events_queue(2), "t1.events.node-a.2");
        let bare = Names::new("", "n", 1).unwrap();
        assert_eq!(bare.step_queue(System::Cms).name, "cms_order_queue");
        assert_eq!(bare.dead_letter_exchange, "dlx");
    }

    #[test]
    fn operators_may_name_a_queue_any_way_they_see_it() {
        let names = Names::new("t1", "n", 2).unwrap();
        for spelling in [
            "orders.shard.1",
            "t1.orders.shard.1",
            "orders.shard.1.dlq",
            "t1.orders.shard.1.dlq",
        ] {
            assert_eq!(
                names.resolve(spelling).map(|w| w.name.as_str()),
                Some("t1.orders.shard.1"),
                "{spelling}"
            );
        }
        assert!(names.resolve("orders.shard.2").is_none());
        assert!(names.resolve("events.n").is_none());
    }

    #[test]
    fn names_that_could_overflow_or_confuse_the_broker_are_refused() {
        assert!(Names::new(&"x".repeat(65), "n", 1).is_err());
        assert!(Names::new("a b", "n", 1).is_err());
        assert!(Names::new("ok", "", 1).is_err());
        assert!(Names::new("ok", "n/1", 1).is_err());
    }
}
