//! One consumer per order shard, each on its own channel, so that a channel error
//! costs one shard, not all of them (DESIGN section 9).
//!
//! Every node consumes every shard queue; single active consumer lets the broker
//! make one of them active and keep the others waiting. AMQP does not tell a waiting
//! consumer that it became active, so a consumer learns it from its first delivery:
//! a command, or a probe sent to the queue for that purpose. From then until its
//! channel ends it reports commands under one epoch, then the end of the ownership,
//! however it ended (released, broker cancel, channel or connection loss).

use super::consume::BrokerAck;
use super::link::{Link, Session, backoff, unavailable, within};
use super::{Outgoing, PERSISTENT};
use crate::bus::{BusError, Delivery, OrderCommand, ShardEvent, next_epoch};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The AMQP message type of a probe.
const PROBE: &str = "shard-probe";
/// How often a consumer looks at its channel and connection besides its deliveries:
/// a cut connection must count as a lost shard within this.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// What the node asks of one shard's consumer.
pub(super) enum Control {
    /// End the consumer (and so the ownership, if active); consume again as a
    /// standby when `rejoin`, else stop for good.
    Release {
        rejoin: bool,
        done: oneshot::Sender<()>,
    },
    /// Stop for good if only standing by; an active consumer carries on until
    /// released.
    StopStandingBy,
}

/// How one subscription ended.
enum Ended {
    Released {
        rejoin: bool,
        was_active: bool,
        /// Told once the end of the ownership is reported.
        done: Option<oneshot::Sender<()>>,
    },
    /// Shutdown, or nobody listens any more.
    Stopped,
    Failed(BusError),
}

pub(super) struct ShardConsumer {
    pub(crate) link: Arc<Link>,
    pub(crate) shard: u32,
    pub(crate) queue: String,
    pub(crate) prefetch: u16,
    pub(crate) events: mpsc::Sender<ShardEvent>,
    pub(crate) control: mpsc::Receiver<Control>,
    /// Told once the first subscription is in place.
    pub(crate) subscribed: Option<oneshot::Sender<()>>,
}

/// Publishes a probe to `queue`: whoever is active on it receives it.
pub(super) async fn probe(link: &Link, queue: &str) -> Result<(), BusError> {
    let properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_type(PROBE.into());
    link.publish(Outgoing {
        exchange: "",
        routing_key: queue,
        body: b"{}",
        properties,
        mandatory: true,
    })
    .await
}

impl ShardConsumer {
    pub async fn run(mut self) {
        let mut failures = 0u32;
        let mut standing_by = true;
        loop {
            let session = tokio::select! {
                _ = self.link.shutdown.cancelled() => return,
                _ = self.events.closed() => return,
                session = self.link.session() => match session {
                    Ok(session) => session,
                    Err(_) => return,
                },
            };
            match self.subscribe(&session, &mut standing_by).await {
                Ended::Released {
                    rejoin, was_active, ..
                } => {
                    failures = 0;
                    if was_active {
                        // The broker made the next waiting consumer active; tell it.
                        if let Err(error) = probe(&self.link, &self.queue).await {
                            tracing::warn!(shard = self.shard, %error, "could not probe a released shard; the next heartbeat does");
                        }
                    }
                    if !rejoin || !standing_by {
                        return;
                    }
                }
                Ended::Stopped => return,
                Ended::Failed(_) if !standing_by => return,
                Ended::Failed(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(shard = self.shard, %error, "shard consumer interrupted; consuming again as a standby");
                    tokio::select! {
                        _ = self.link.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff(failures)) => {}
                    }
                }
            }
        }
    }

    async fn subscribe(&mut self, session: &Session, standing_by: &mut bool) -> Ended {
        let limit = self.link.limit;
        let channel = match within(
            limit,
            "opening a shard channel",
            session.connection.create_channel(),
        )
        .await
        {
            Ok(channel) => channel,
            Err(error) => return Ended::Failed(error),
        };
        let mut epoch = None;
        let ended = self
            .consume(session, &channel, &mut epoch, standing_by)
            .await;
        if let Some(epoch) = epoch {
            // However it ended, the node must stop the shard's actors at once.
            let lost = ShardEvent::Lost {
                shard: self.shard,
                epoch,
            };
            let _ = self.events.send(lost).await;
        }
        if channel.status().connected() {
            // Returns what we hold unacknowledged to the queue now, to the next owner.
            let _ = within(limit, "closing a channel", channel.close(200, "OK".into())).await;
        }
        let mut ended = ended;
        if let Ended::Released { done, .. } = &mut ended
            && let Some(done) = done.take()
        {
            let _ = done.send(());
        }
        ended
    }

    async fn consume(
        &mut self,
        session: &Session,
        channel: &Channel,
        epoch: &mut Option<u64>,
        standing_by: &mut bool,
    ) -> Ended {
        let limit = self.link.limit;
        let prefetch = BasicQosOptions::default();
        if let Err(error) = within(
            limit,
            "setting the prefetch",
            channel.basic_qos(self.prefetch.max(1), prefetch),
        )
        .await
        {
            return Ended::Failed(error);
        }
        let consumer = within(
            limit,
            "starting a shard consumer",
            channel.basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await;
        let mut consumer = match consumer {
            Ok(consumer) => consumer,
            Err(error) => return Ended::Failed(error),
        };
        if let Some(subscribed) = self.subscribed.take() {
            let _ = subscribed.send(());
        }
        let mut health = tokio::time::interval(HEALTH_CHECK_INTERVAL);
        loop {
            let next = tokio::select! {
                _ = self.link.shutdown.cancelled() => return Ended::Stopped,
                _ = self.events.closed() => return Ended::Stopped,
                control = self.control.recv() => match control {
                    Some(Control::Release { rejoin, done }) => {
                        if channel.status().connected() {
                            let _ = within(limit, "closing a shard channel", channel.close(200, "OK".into())).await;
                        }
                        return Ended::Released { rejoin, was_active: epoch.is_some(), done: Some(done) };
                    }
                    Some(Control::StopStandingBy) => {
                        *standing_by = false;
                        if epoch.is_none() {
                            return Ended::Released { rejoin: false, was_active: false, done: None };
                        }
                        continue;
                    }
                    None => return Ended::Stopped,
                },
                _ = health.tick() => {
                    if !session.connection.status().connected() || !channel.status().connected() {
                        return Ended::Failed(BusError::Unavailable("the shard's channel or connection is gone".into()));
                    }
                    continue;
                }
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Ended::Failed(unavailable("consuming a shard", error)),
                None => {
                    return Ended::Failed(BusError::Unavailable(
                        "the broker cancelled the shard's consumer".into(),
                    ));
                }
            };
            let current = match *epoch {
                Some(current) => current,
                None => {
                    let current = next_epoch();
                    *epoch = Some(current);
                    let gained = ShardEvent::Gained {
                        shard: self.shard,
                        epoch: current,
                    };
                    if self.events.send(gained).await.is_err() {
                        return Ended::Stopped;
                    }
                    current
                }
            };
            if delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some(PROBE) {
                let ack = BrokerAck::new(delivery, limit);
                if let Err(error) = crate::bus::Acknowledge::ack(Box::new(ack)).await {
                    return Ended::Failed(error);
                }
                continue;
            }
            let message = match serde_json::from_slice::<OrderCommand>(&delivery.data) {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(queue = %self.queue, %error, "malformed order command; dead-lettered without reaching an actor");
                    let dropped = BasicNackOptions {
                        multiple: false,
                        requeue: false,
                    };
                    if let Err(error) =
                        within(limit, "dead-lettering", delivery.acker.nack(dropped)).await
                    {
                        return Ended::Failed(error);
                    }
                    continue;
                }
            };
            let command = ShardEvent::Command {
                shard: self.shard,
                epoch: current,
                delivery: Delivery {
                    message,
                    envelope: super::envelope::read(&delivery.properties),
                    ack: Some(Box::new(BrokerAck::new(delivery, limit))),
                },
            };
            if self.events.send(command).await.is_err() {
                return Ended::Stopped;
            }
        }
    }
}
