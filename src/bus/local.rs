//! The in-process bus of the embedded default: bounded channels, so a flood of work
//! waits for room instead of growing memory. Nothing here survives a crash, and
//! nothing needs to: every order's state is in the store and is resumed from there.

use super::{
    Bus, BusError, ClusterMessage, DeadLetter, Delivery, Envelope, Inbox, Listeners, OrderCommand,
    ShardEvent, ShardFeed, StepRequest, next_epoch,
};
use crate::domain::{OrderEvent, System};
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};

/// Queued messages per flow before senders wait.
const QUEUE_CAPACITY: usize = 65_536;
/// Updates a slow subscriber may fall behind before it misses some (the notifier
/// then replays from the event log).
const UPDATE_BUFFER: usize = 16_384;

struct Queue<T> {
    sender: mpsc::Sender<(T, Envelope)>,
    receiver: Mutex<Option<mpsc::Receiver<(T, Envelope)>>>,
}

impl<T: Send + 'static> Queue<T> {
    fn new() -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    async fn send(&self, message: T) -> Result<(), BusError> {
        self.sender
            .send((message, Envelope::here()))
            .await
            .map_err(|_| BusError::Unavailable("no consumer for this queue any more".into()))
    }

    /// In-process queues have one consumer: the first caller takes the receiver.
    fn take(&self, name: &str) -> Result<Inbox<T>, BusError> {
        let receiver = self
            .receiver
            .lock()
            .map_err(|_| BusError::Unavailable("queue lock poisoned".into()))?
            .take()
            .ok_or_else(|| BusError::Rejected(format!("queue {name} already has its consumer")))?;
        Ok(ReceiverStream::new(receiver)
            .map(|(message, envelope)| Delivery {
                message,
                ack: None,
                envelope,
            })
            .boxed())
    }
}

/// Cluster messages a subscriber may fall behind (heartbeats are replaced by the
/// next anyway).
const CLUSTER_BUFFER: usize = 64;

/// A node on its own: it owns every shard, for good, and hears only itself.
pub(crate) struct LocalBus {
    /// One step queue per system of `System::ALL`.
    steps: HashMap<System, Queue<StepRequest>>,
    orders: Queue<OrderCommand>,
    /// Shared rather than copied: a broadcast receiver clones what it takes, which
    /// for an `Arc` is a reference, not the event.
    updates: broadcast::Sender<Arc<OrderEvent>>,
    /// Whether anyone follows `updates`.
    listeners: Listeners,
    cluster: broadcast::Sender<ClusterMessage>,
    shards: u32,
}

impl LocalBus {
    pub(crate) fn new(shards: u32, listeners: Listeners) -> Self {
        Self {
            steps: System::ALL
                .into_iter()
                .map(|system| (system, Queue::new()))
                .collect(),
            orders: Queue::new(),
            updates: broadcast::channel(UPDATE_BUFFER).0,
            listeners,
            cluster: broadcast::channel(CLUSTER_BUFFER).0,
            shards: shards.max(1),
        }
    }

    fn steps(&self, system: System) -> Result<&Queue<StepRequest>, BusError> {
        self.steps
            .get(&system)
            .ok_or_else(|| BusError::Rejected(format!("no step queue for {}", system.as_str())))
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn send_step(&self, request: StepRequest) -> Result<(), BusError> {
        self.steps(request.operation.system())?.send(request).await
    }

    async fn send_to_order(&self, command: OrderCommand) -> Result<(), BusError> {
        self.orders.send(command).await
    }

    async fn publish_update(&self, event: Arc<OrderEvent>) -> Result<(), BusError> {
        // Nobody watching is not an error.
        if !self.listeners.none() {
            let _ = self.updates.send(event);
        }
        Ok(())
    }

    async fn step_requests(&self, system: System) -> Result<Inbox<StepRequest>, BusError> {
        self.steps(system)?.take(system.as_str())
    }

    fn shard_count(&self) -> u32 {
        self.shards
    }

    /// Every shard is gained at once and never lost.
    async fn order_shards(&self) -> Result<ShardFeed, BusError> {
        let commands = self.orders.take("orders")?;
        let shards = self.shards;
        let epochs: Vec<u64> = (0..shards).map(|_| next_epoch()).collect();
        let gained: Vec<ShardEvent> = epochs
            .iter()
            .enumerate()
            .map(|(shard, &epoch)| ShardEvent::Gained {
                shard: shard as u32,
                epoch,
            })
            .collect();
        let commands = commands.map(move |delivery| {
            let shard = delivery.message.order_id().shard(shards);
            ShardEvent::Command {
                shard,
                epoch: epochs[shard as usize],
                delivery,
            }
        });
        Ok(futures::stream::iter(gained).chain(commands).boxed())
    }

    /// Nobody else could take the shard; the node keeps consuming it.
    async fn release_shard(&self, _shard: u32, _rejoin: bool) -> Result<(), BusError> {
        Ok(())
    }

    async fn stop_standing_by(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn probe_shard(&self, _shard: u32) -> Result<(), BusError> {
        Ok(())
    }

    async fn broadcast(&self, message: ClusterMessage) -> Result<(), BusError> {
        let _ = self.cluster.send(message);
        Ok(())
    }

    async fn cluster_messages(&self) -> Result<Inbox<ClusterMessage>, BusError> {
        Ok(BroadcastStream::new(self.cluster.subscribe())
            .filter_map(|message| futures::future::ready(message.ok()))
            .map(Delivery::unacknowledged)
            .boxed())
    }

    async fn order_updates(&self) -> Result<Inbox<Arc<OrderEvent>>, BusError> {
        // A subscriber that lagged skips what it missed; sessions notice the gap in
        // `seq` and replay it from the event log.
        Ok(BroadcastStream::new(self.updates.subscribe())
            .filter_map(|update| futures::future::ready(update.ok()))
            .map(Delivery::unacknowledged)
            .boxed())
    }

    /// In-process deliveries are never rejected to a dead-letter queue: a failed
    /// order is resumed from the store instead.
    async fn dead_letters(&self, _limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        Ok(Vec::new())
    }

    /// No queue of this bus has dead letters: every name is unknown.
    async fn redrive(&self, queue: &str) -> Result<usize, BusError> {
        Err(BusError::NoSuchQueue(queue.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::validated_event;

    fn update(seq: u64) -> Arc<OrderEvent> {
        Arc::new(validated_event("ORD-A", "usr_alice", seq))
    }

    #[tokio::test]
    async fn updates_are_published_only_while_a_session_listens() {
        let listeners = Listeners::default();
        let bus = LocalBus::new(1, listeners.clone());
        let mut updates = bus.order_updates().await.expect("subscribe");
        bus.publish_update(update(1)).await.expect("publish");
        listeners.join();
        bus.publish_update(update(2)).await.expect("publish");
        listeners.join();
        listeners.leave();
        bus.publish_update(update(3)).await.expect("publish");
        listeners.leave();
        bus.publish_update(update(4)).await.expect("publish");
        listeners.join();
        bus.publish_update(update(5)).await.expect("publish");
        drop(bus);
        let mut seen = Vec::new();
        while let Some(delivery) = updates.next().await {
            seen.push(delivery.message.seq);
        }
        assert_eq!(seen, [2, 3, 5]);
    }
}
