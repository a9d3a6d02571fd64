//! A WebSocket session's outbox: the bounded queue the notifier fills with
//! `try_send` and the session drains.
//!
//! A node holds tens of thousands of sessions that are idle most of the time, so an
//! empty outbox must cost next to nothing. A tokio channel costs about 800 bytes
//! however empty it is (its state is padded to cache lines, and its first block of
//! slots is allocated up front); this one is a mutex-guarded `VecDeque`, allocated as
//! updates arrive and let go again once a burst has been drained, and a waker:
//! about a hundred bytes while empty.

use futures::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

/// Queue capacity above which a drained queue gives its memory back.
const KEPT_WHEN_EMPTY: usize = 16;

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    /// The session's task, woken when an update arrives or the sender goes.
    receiver: AtomicWaker,
}

struct Queue<T> {
    items: VecDeque<T>,
    capacity: usize,
    sender_gone: bool,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    /// Nothing panics while holding the lock, so a poisoned one is still coherent.
    fn queue(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The notifier's side.
pub(crate) struct Sender<T>(Arc<Shared<T>>);

/// The session's side.
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

/// Why `try_send` did not queue an item.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `capacity` items are waiting: the receiver is not keeping up.
    Full,
    /// The receiver is gone.
    Closed,
}

/// An outbox holding at most `capacity` (at least 1) unread items.
pub(crate) fn outbox<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            sender_gone: false,
            receiver_gone: false,
        }),
        receiver: AtomicWaker::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<T> Sender<T> {
    /// Queues `item` without waiting.
    pub(crate) fn try_send(&self, item: T) -> Result<(), Refused> {
        let mut queue = self.0.queue();
        if queue.receiver_gone {
            return Err(Refused::Closed);
        }
        if queue.items.len() >= queue.capacity {
            return Err(Refused::Full);
        }
        queue.items.push_back(item);
        drop(queue);
        self.0.receiver.wake();
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.queue().sender_gone = true;
        self.0.receiver.wake();
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once the queue is empty and the sender gone.
    /// Cancel-safe: an item is only taken when this returns it.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // Registered before looking, so an item queued in between still wakes us.
        self.0.receiver.register(cx.waker());
        let mut queue = self.0.queue();
        if let Some(item) = queue.items.pop_front() {
            if queue.items.is_empty() && queue.items.capacity() > KEPT_WHEN_EMPTY {
                queue.items = VecDeque::new();
            }
            return Poll::Ready(Some(item));
        }
        if queue.sender_gone {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut queue = self.0.queue();
        queue.receiver_gone = true;
        queue.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next<T>(receiver: &mut Receiver<T>) -> Option<T> {
        tokio::time::timeout(Duration::from_secs(5), receiver.recv())
            .await
            .expect("an answer in time")
    }

    #[tokio::test]
    async fn items_arrive_in_order_up_to_the_capacity() {
        let (sender, mut receiver) = outbox(2);
        assert_eq!(sender.try_send(1), Ok(()));
        assert_eq!(sender.try_send(2), Ok(()));
        assert_eq!(sender.try_send(3), Err(Refused::Full));
        assert_eq!(next(&mut receiver).await, Some(1));
        assert_eq!(sender.try_send(4), Ok(()));
        assert_eq!(next(&mut receiver).await, Some(2));
        assert_eq!(next(&mut receiver).await, Some(4));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_an_item_and_by_the_sender_leaving() {
        let (sender, mut receiver) = outbox(4);
        let waiting = tokio::spawn(async move {
            let first = next(&mut receiver).await;
            let second = next(&mut receiver).await;
            (first, second)
        });
        tokio::task::yield_now().await;
        assert_eq!(sender.try_send("update"), Ok(()));
        drop(sender);
        assert_eq!(waiting.await.unwrap(), (Some("update"), None));
    }

    #[tokio::test]
    async fn items_queued_before_the_sender_left_are_still_received() {
        let (sender, mut receiver) = outbox(4);
        sender.try_send(7).unwrap();
        drop(sender);
        assert_eq!(next(&mut receiver).await, Some(7));
        assert_eq!(next(&mut receiver).await, None);
    }

    #[test]
    fn sending_to_a_receiver_that_left_is_refused() {
        let (sender, receiver) = outbox(4);
        drop(receiver);
        assert_eq!(sender.try_send(1), Err(Refused::Closed));
    }

    #[tokio::test]
    async fn a_drained_burst_gives_its_memory_back() {
        let (sender, mut receiver) = outbox(256);
        for n in 0..100 {
            sender.try_send(n).unwrap();
        }
        for n in 0..100 {
            assert_eq!(next(&mut receiver).await, Some(n));
        }
        assert_eq!(receiver.0.queue().items.capacity(), 0);
    }
}
