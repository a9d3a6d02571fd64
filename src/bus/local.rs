//! The in-process bus of the embedded default: bounded channels, so a flood of work
//! waits for room instead of growing memory. Nothing here survives a crash, and
//! nothing needs to: every order's state is in the store and is resumed from there.

use super::{Bus, BusError, DeadLetter, Delivery, Envelope, Inbox, OrderCommand, StepRequest};
use crate::domain::{OrderEvent, System};
use async_trait::async_trait;
use futures::StreamExt;
use std::sync::Mutex;
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

pub struct LocalBus {
    cms: Queue<StepRequest>,
    wms: Queue<StepRequest>,
    ros: Queue<StepRequest>,
    orders: Queue<OrderCommand>,
    updates: broadcast::Sender<OrderEvent>,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self {
            cms: Queue::new(),
            wms: Queue::new(),
            ros: Queue::new(),
            orders: Queue::new(),
            updates: broadcast::channel(UPDATE_BUFFER).0,
        }
    }
}

impl LocalBus {
    fn steps(&self, system: System) -> &Queue<StepRequest> {
        match system {
            System::Cms => &self.cms,
            System::Wms => &self.wms,
            System::Ros => &self.ros,
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    async fn send_step(&self, request: StepRequest) -> Result<(), BusError> {
        self.steps(request.operation.system()).send(request).await
    }

    async fn send_to_order(&self, command: OrderCommand) -> Result<(), BusError> {
        self.orders.send(command).await
    }

    async fn publish_update(&self, event: OrderEvent) -> Result<(), BusError> {
        // No subscriber is not an error: nobody is watching.
        let _ = self.updates.send(event);
        Ok(())
    }

    async fn step_requests(&self, system: System) -> Result<Inbox<StepRequest>, BusError> {
        self.steps(system).take(system.as_str())
    }

    async fn order_commands(&self) -> Result<Inbox<OrderCommand>, BusError> {
        self.orders.take("orders")
    }

    async fn order_updates(&self) -> Result<Inbox<OrderEvent>, BusError> {
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

    async fn redrive(&self, _queue: &str) -> Result<usize, BusError> {
        Ok(0)
    }
}
