//! Consumers. Each `Inbox` is fed by one task that consumes on whatever session is
//! live: when the connection drops it waits for the next one and consumes again, so
//! the stream its caller holds stays open across broker restarts.

use super::dead_letters::delivery_count;
use super::envelope;
use super::link::{Link, Session, backoff, unavailable, within};
use super::topology::{self, DELIVERY_RETRIES, PrivateQueue};
use crate::bus::{Acknowledge, BusError, Delivery, Inbox};
use async_trait::async_trait;
use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Acker, Channel};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

/// First retry delay after a rejection; doubled for every earlier delivery.
const RETRY_BASE: Duration = Duration::from_millis(100);

/// Who acknowledges a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acking {
    /// The receiver, once it has persisted the effect (work queues).
    ByReceiver,
    /// The bus, as soon as the message is in the inbox (order updates: a missed one
    /// is replayed from the event log, so holding it on the broker buys nothing).
    OnReceipt,
}

pub(super) struct Subscription {
    pub(crate) queues: Vec<String>,
    /// An exclusive queue to declare and bind on each session before consuming it.
    pub(crate) private_queue: Option<PrivateQueue>,
    pub(crate) acking: Acking,
    pub(crate) prefetch: u16,
}

impl Subscription {
    fn describe(&self) -> String {
        self.queues.join(",")
    }
}

/// Delay before a rejected delivery goes back to its queue: 100 ms, doubled for each
/// earlier delivery of the same message.
pub(super) fn retry_delay(deliveries_before: u64) -> Duration {
    RETRY_BASE.saturating_mul(1u32 << deliveries_before.min(10))
}

/// Returns once the broker has accepted the consumer (and bound the private queue),
/// so that everything published after this returns reaches the inbox.
pub(super) async fn inbox<T>(
    link: Arc<Link>,
    subscription: Subscription,
) -> Result<Inbox<T>, BusError>
where
    T: DeserializeOwned + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(usize::from(subscription.prefetch.max(1)));
    let (ready, consuming) = oneshot::channel();
    let limit = link.limit;
    tokio::spawn(feed(link, subscription, sender, ready));
    match tokio::time::timeout(limit, consuming).await {
        Ok(Ok(())) => Ok(ReceiverStream::new(receiver).boxed()),
        // Dropping the receiver stops the feeding task.
        Ok(Err(_)) => Err(BusError::Unavailable("the bus is shut down".into())),
        Err(_) => Err(BusError::Unavailable(format!(
            "could not start consuming within {limit:?}"
        ))),
    }
}

/// Ends when the inbox is dropped or the bus shuts down.
async fn feed<T>(
    link: Arc<Link>,
    subscription: Subscription,
    sender: mpsc::Sender<Delivery<T>>,
    ready: oneshot::Sender<()>,
) where
    T: DeserializeOwned + Send + 'static,
{
    let mut failures = 0u32;
    let mut ready = Some(ready);
    loop {
        let session = tokio::select! {
            _ = link.shutdown.cancelled() => return,
            _ = sender.closed() => return,
            session = link.session() => match session {
                Ok(session) => session,
                Err(_) => return,
            },
        };
        let mut started = Started {
            failures: &mut failures,
            ready: &mut ready,
        };
        match consume(&link, &session, &subscription, &sender, &mut started).await {
            Ok(()) => return,
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(queues = %subscription.describe(), %error, "consumer interrupted; consuming again");
                tokio::select! {
                    _ = link.shutdown.cancelled() => return,
                    _ = sender.closed() => return,
                    _ = tokio::time::sleep(backoff(failures)) => {}
                }
            }
        }
    }
}

/// What a consumer does once the broker has accepted it.
struct Started<'a> {
    failures: &'a mut u32,
    ready: &'a mut Option<oneshot::Sender<()>>,
}

impl Started<'_> {
    fn consuming(&mut self) {
        *self.failures = 0;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
    }
}

/// Consumes on one session. `Ok` means stop for good (inbox dropped or shutdown);
/// `Err` means the session or channel failed and the caller should start over.
async fn consume<T>(
    link: &Link,
    session: &Session,
    subscription: &Subscription,
    sender: &mpsc::Sender<Delivery<T>>,
    started: &mut Started<'_>,
) -> Result<(), BusError>
where
    T: DeserializeOwned + Send + 'static,
{
    let channel = within(
        link.limit,
        "opening a consumer channel",
        session.connection.create_channel(),
    )
    .await?;
    let result = consume_on(link, &channel, subscription, sender, started).await;
    if channel.status().connected() {
        // Returns what we hold unacknowledged to the queue now, not at disconnect.
        let _ = within(
            link.limit,
            "closing a channel",
            channel.close(200, "OK".into()),
        )
        .await;
    }
    result
}

async fn consume_on<T>(
    link: &Link,
    channel: &Channel,
    subscription: &Subscription,
    sender: &mpsc::Sender<Delivery<T>>,
    started: &mut Started<'_>,
) -> Result<(), BusError>
where
    T: DeserializeOwned + Send + 'static,
{
    let limit = link.limit;
    within(
        limit,
        "setting the prefetch",
        channel.basic_qos(subscription.prefetch.max(1), BasicQosOptions::default()),
    )
    .await?;
    if let Some(queue) = &subscription.private_queue {
        within(
            limit,
            "declaring a private queue",
            topology::declare_private_queue(channel, queue),
        )
        .await?;
    }
    let mut consumers: Vec<BoxStream<'static, Option<lapin::Result<lapin::message::Delivery>>>> =
        Vec::new();
    for queue in &subscription.queues {
        let consumer = within(
            limit,
            "starting a consumer",
            channel.basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        // A `None` marks the end of one consumer (the broker cancelled it), which
        // `select_all` would otherwise swallow while the others go on.
        consumers.push(
            consumer
                .map(Some)
                .chain(stream::once(async { None }))
                .boxed(),
        );
    }
    started.consuming();
    let mut deliveries = stream::select_all(consumers);
    let mut receipts = Receipts::new(subscription.prefetch);
    loop {
        let next = match deliveries.next().now_or_never() {
            Some(next) => next,
            None => {
                // Nothing waiting: a good moment to acknowledge what was received.
                receipts.flush(channel, limit).await?;
                tokio::select! {
                    _ = link.shutdown.cancelled() => return Ok(()),
                    _ = sender.closed() => return Ok(()),
                    next = deliveries.next() => next,
                }
            }
        };
        let delivery = match next {
            Some(Some(Ok(delivery))) => delivery,
            Some(Some(Err(error))) => return Err(unavailable("consuming", error)),
            Some(None) | None => {
                return Err(BusError::Unavailable(
                    "the broker cancelled a consumer".into(),
                ));
            }
        };
        let message = match serde_json::from_slice::<T>(&delivery.data) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(
                    queues = %subscription.describe(),
                    routing_key = %delivery.routing_key,
                    %error,
                    "malformed message; dead-lettered without reaching an actor"
                );
                match subscription.acking {
                    Acking::ByReceiver => {
                        metrics::counter!("swift_dead_lettered_messages_total", "reason" => "malformed")
                            .increment(1);
                        let dropped = BasicNackOptions {
                            multiple: false,
                            requeue: false,
                        };
                        within(limit, "dead-lettering", delivery.acker.nack(dropped)).await?;
                    }
                    Acking::OnReceipt => receipts.received(delivery.delivery_tag),
                }
                continue;
            }
        };
        let handed = match subscription.acking {
            Acking::ByReceiver => Delivery {
                message,
                envelope: envelope::read(&delivery.properties),
                ack: Some(Box::new(BrokerAck::new(delivery, limit))),
            },
            Acking::OnReceipt => {
                receipts.received(delivery.delivery_tag);
                Delivery {
                    message,
                    ack: None,
                    envelope: envelope::read(&delivery.properties),
                }
            }
        };
        tokio::select! {
            _ = link.shutdown.cancelled() => return Ok(()),
            sent = sender.send(handed) => if sent.is_err() {
                return Ok(());
            },
        }
        if receipts.due() {
            receipts.flush(channel, limit).await?;
        }
    }
}

/// Deliveries acknowledged on receipt, acknowledged together with `multiple` (one
/// frame per batch instead of per message).
struct Receipts {
    last_tag: Option<u64>,
    count: usize,
    batch: usize,
}

impl Receipts {
    fn new(prefetch: u16) -> Self {
        Self {
            last_tag: None,
            count: 0,
            batch: usize::from(prefetch / 2).max(1),
        }
    }

    fn received(&mut self, tag: u64) {
        self.last_tag = Some(tag);
        self.count += 1;
    }

    fn due(&self) -> bool {
        self.count >= self.batch
    }

    async fn flush(&mut self, channel: &Channel, limit: Duration) -> Result<(), BusError> {
        let Some(tag) = self.last_tag.take() else {
            return Ok(());
        };
        self.count = 0;
        within(
            limit,
            "acknowledging updates",
            channel.basic_ack(tag, BasicAckOptions { multiple: true }),
        )
        .await
    }
}

/// The acknowledgement of one work delivery, held by whoever persists its effect.
pub(super) struct BrokerAck {
    acker: Acker,
    /// Earlier deliveries of this message (the quorum queue's `x-delivery-count`).
    deliveries_before: u64,
    limit: Duration,
}

impl BrokerAck {
    pub(super) fn new(delivery: lapin::message::Delivery, limit: Duration) -> Self {
        Self {
            deliveries_before: delivery_count(&delivery.properties),
            acker: delivery.acker,
            limit,
        }
    }
}

fn settled(outcome: bool) -> Result<(), BusError> {
    if outcome {
        Ok(())
    } else {
        Err(BusError::Unavailable(
            "the delivery's channel is gone; the broker delivers the message again".into(),
        ))
    }
}

#[async_trait]
impl Acknowledge for BrokerAck {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        settled(
            within(
                self.limit,
                "acknowledging a delivery",
                self.acker.ack(BasicAckOptions::default()),
            )
            .await?,
        )
    }

    /// Returns the message to its queue after a backoff. The quorum queue counts the
    /// returns and dead-letters the message once they pass `DELIVERY_RETRIES`.
    async fn reject(self: Box<Self>, reason: &str) -> Result<(), BusError> {
        let again = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        let attempt = self.deliveries_before + 1;
        if self.deliveries_before >= DELIVERY_RETRIES {
            tracing::warn!(
                reason,
                attempt,
                "delivery failed its last attempt; the broker dead-letters it"
            );
            metrics::counter!("swift_dead_lettered_messages_total", "reason" => "delivery_limit")
                .increment(1);
            let outcome = within(self.limit, "returning a delivery", self.acker.nack(again));
            return settled(outcome.await?);
        }
        let delay = retry_delay(self.deliveries_before);
        tracing::info!(
            reason,
            attempt,
            ?delay,
            "delivery failed; retrying after backoff"
        );
        // Holding the message (unacknowledged) during the delay keeps it from being
        // redelivered at once; the delay is bounded, so the task needs no shutdown.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            match within(self.limit, "returning a delivery", self.acker.nack(again)).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!("channel gone before the retry; the broker redelivers anyway");
                }
                Err(error) => tracing::warn!(%error, "could not return a failed delivery"),
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_per_delivery() {
        assert_eq!(retry_delay(0), Duration::from_millis(100));
        assert_eq!(retry_delay(1), Duration::from_millis(200));
        assert_eq!(retry_delay(3), Duration::from_millis(800));
        assert_eq!(retry_delay(u64::MAX), retry_delay(10));
    }
}
