//! Bridges: bus consumers that turn deliveries into actor messages, making the bus a
//! mailbox source. The acknowledgement travels with the message, so whoever persists
//! the effect acknowledges it.

use super::adapter::AdapterMsg;
use super::cluster::{ClusterMsg, ShardNote};
use super::orders::OrdersMsg;
use super::shards::Lease;
use super::telemetry::MailboxGauge;
use super::{Acker, Context};
use crate::bus::{ClusterMessage, Delivery, Inbox, ShardEvent, ShardFeed, StepRequest};
use crate::domain::System;
use futures::StreamExt;
use ractor::ActorRef;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a bridge looks again for an adapter that is being restarted.
const ADAPTER_LOOKUP_INTERVAL: Duration = Duration::from_millis(20);

/// Feeds step requests for `system` to whichever incarnation of its adapter is live.
pub fn spawn_step_bridge(
    context: Arc<Context>,
    system: System,
    mut inbox: Inbox<StepRequest>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = inbox.next() => match next {
                    Some(delivery) => delivery,
                    None => return,
                },
            };
            let Delivery { message, ack } = delivery;
            let mut pending = Some(AdapterMsg::Execute {
                request: Box::new(message),
                ack: Acker::from(ack),
            });
            while let Some(message) = pending.take() {
                match context.adapters.live(system) {
                    Some(adapter) => {
                        let mailbox = context.adapters.core(system).map(|c| c.mailbox.clone());
                        mailbox.as_ref().map(MailboxGauge::queued);
                        if let Err(ractor::MessagingErr::SendErr(message)) = adapter.cast(message) {
                            mailbox.as_ref().map(MailboxGauge::taken);
                            pending = Some(message);
                        }
                    }
                    None => pending = Some(message),
                }
                if pending.is_some() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(ADAPTER_LOOKUP_INTERVAL) => {}
                    }
                }
            }
        }
    })
}

/// Feeds the shard consumers' news: ownership changes go into the shard table at
/// once (so that fenced actors see them before anything else of theirs runs) and on
/// to the cluster keeper; commands go to the orders supervisor with their lease.
pub fn spawn_shard_bridge(
    context: Arc<Context>,
    orders: ActorRef<OrdersMsg>,
    keeper: ActorRef<ClusterMsg>,
    mailbox: MailboxGauge,
    mut feed: ShardFeed,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = feed.next() => match next {
                    Some(event) => event,
                    None => return,
                },
            };
            let note = match event {
                ShardEvent::Gained { shard, epoch } => {
                    let lease = Lease { shard, epoch };
                    context.shards.gain(lease);
                    ShardNote::Gained(lease)
                }
                ShardEvent::Lost { shard, epoch } => {
                    let lease = Lease { shard, epoch };
                    context.shards.revoke(lease);
                    ShardNote::Ended(lease)
                }
                ShardEvent::Command {
                    shard,
                    epoch,
                    delivery,
                } => {
                    let Delivery { message, ack } = delivery;
                    mailbox.queued();
                    let command = OrdersMsg::Command {
                        command: message,
                        lease: Lease { shard, epoch },
                        ack: Acker::from(ack),
                    };
                    if orders.cast(command).is_err() {
                        mailbox.taken();
                        tracing::warn!("orders supervisor gone; bridge stops");
                        return;
                    }
                    continue;
                }
            };
            if keeper.cast(ClusterMsg::Shard(note)).is_err() {
                tracing::warn!("cluster keeper gone; bridge stops");
                return;
            }
        }
    })
}

/// Feeds what the nodes broadcast to the cluster keeper.
pub fn spawn_cluster_bridge(
    keeper: ActorRef<ClusterMsg>,
    mut inbox: Inbox<ClusterMessage>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = inbox.next() => match next {
                    Some(delivery) => delivery,
                    None => return,
                },
            };
            if keeper.cast(ClusterMsg::Heard(delivery.message)).is_err() {
                return;
            }
        }
    })
}
