//! Bridges: bus consumers that turn deliveries into actor messages, making the bus a
//! mailbox source. The acknowledgement travels with the message, so whoever persists
//! the effect acknowledges it.

use super::adapter::AdapterMsg;
use super::orders::OrdersMsg;
use super::telemetry::MailboxGauge;
use super::{Acker, Context};
use crate::bus::{Delivery, Inbox, OrderCommand, StepRequest};
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

/// Feeds order commands to the orders supervisor.
pub fn spawn_order_bridge(
    orders: ActorRef<OrdersMsg>,
    mailbox: MailboxGauge,
    mut inbox: Inbox<OrderCommand>,
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
            mailbox.queued();
            let command = OrdersMsg::Command {
                command: message,
                ack: Acker::from(ack),
            };
            if orders.cast(command).is_err() {
                mailbox.taken();
                tracing::warn!("orders supervisor gone; bridge stops");
                return;
            }
        }
    })
}
