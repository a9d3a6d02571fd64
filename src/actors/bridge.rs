//! Bridges: bus consumers that turn deliveries into actor messages, making the bus a
//! mailbox source. The acknowledgement travels with the message, so whoever persists
//! the effect acknowledges it.

use super::adapter::AdapterMsg;
use super::orders::OrdersMsg;
use super::telemetry::{self, ActorInfo, MailboxGauge};
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

/// Feeds order commands to the orders supervisor.
pub fn spawn_order_bridge(
    orders: ActorRef<OrdersMsg>,
    mailbox: MailboxGauge,
    bridge: MailboxGauge,
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
            let Delivery {
                message,
                ack,
                envelope,
            } = delivery;
            bridge.received(envelope.waited());
            let command = OrdersMsg::Command {
                command: message,
                ack: Acker::from(ack),
                posted: mailbox.post(),
                trace: envelope.traceparent,
            };
            if orders.cast(command).is_err() {
                mailbox.unpost();
                tracing::warn!("orders supervisor gone; bridge stops");
                return;
            }
        }
    })
}

/// The figures of one bridge (family `bridges`), registered under the root: what
/// it takes from the bus per second.
pub fn gauge(context: &Context, name: &str) -> MailboxGauge {
    let gauge = MailboxGauge::new("bridges", name, context.settings.telemetry.mailbox_timing);
    telemetry::register(
        &context.telemetry,
        ActorInfo {
            name: name.to_owned(),
            kind: "bridge",
            parent: Some(super::root::NAME.into()),
            mailbox: Some(gauge.clone()),
            family: None,
        },
    );
    gauge
}
