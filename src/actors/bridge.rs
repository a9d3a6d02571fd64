//! Bridges: bus consumers that turn deliveries into actor messages, making the bus a
//! mailbox source. The acknowledgement travels with the message, so whoever persists
//! the effect acknowledges it.

use super::Context;
use super::adapter::AdapterMsg;
use super::cluster::{ClusterMsg, ShardNote};
use super::control::ActorKind;
use super::orders::OrdersMsg;
use super::shards::Lease;
use super::telemetry::{self, ActorInfo, MailboxGauge};
use crate::bus::Acker;
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
pub(crate) fn spawn_step_bridge(
    context: Arc<Context>,
    system: System,
    mut inbox: Inbox<StepRequest>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let bridge = gauge(&context, &format!("bridge-{}", system.as_str()));
    tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = inbox.next() => match next {
                    Some(delivery) => delivery,
                    None => return,
                },
            };
            let Delivery {
                message,
                ack,
                envelope,
            } = delivery;
            bridge.received(envelope.waited());
            let trace = envelope.traceparent;
            let mut pending = Some((Box::new(message), Acker::from(ack)));
            while let Some((request, ack)) = pending.take() {
                match (context.adapters.live(system), context.adapters.core(system)) {
                    (Some(adapter), Some(core)) => {
                        let posted = core.mailbox.post();
                        let message = AdapterMsg::Execute {
                            request,
                            ack,
                            posted,
                            trace: trace.clone(),
                        };
                        if let Err(ractor::MessagingErr::SendErr(message)) = adapter.cast(message) {
                            core.mailbox.unpost();
                            if let AdapterMsg::Execute { request, ack, .. } = message {
                                pending = Some((request, ack));
                            }
                        }
                    }
                    _ => pending = Some((request, ack)),
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
pub(crate) fn spawn_shard_bridge(
    context: Arc<Context>,
    orders: ActorRef<OrdersMsg>,
    keeper: ActorRef<ClusterMsg>,
    mailbox: MailboxGauge,
    bridge: MailboxGauge,
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
                    let Delivery {
                        message,
                        ack,
                        envelope,
                    } = delivery;
                    bridge.received(envelope.waited());
                    let command = OrdersMsg::Command {
                        command: message,
                        lease: Lease { shard, epoch },
                        ack: Acker::from(ack),
                        posted: mailbox.post(),
                        trace: envelope.traceparent,
                    };
                    if orders.cast(command).is_err() {
                        mailbox.unpost();
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
pub(crate) fn spawn_cluster_bridge(
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

/// The figures of one bridge (family `bridges`), registered under the root: what
/// it takes from the bus per second.
pub(crate) fn gauge(context: &Context, name: &str) -> MailboxGauge {
    let gauge = MailboxGauge::new("bridges", name, context.settings.telemetry.mailbox_timing);
    telemetry::register(
        &context.telemetry,
        ActorInfo {
            name: name.to_owned(),
            kind: ActorKind::Bridge,
            parent: Some(super::root::NAME.into()),
            mailbox: Some(gauge.clone()),
            family: None,
        },
    );
    gauge
}
