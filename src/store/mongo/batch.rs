//! Group commit for a database reached over the network: concurrent callers' requests
//! of one kind travel to the server together, many to a round trip.
//!
//! A batcher is one task fed by a bounded queue. It takes the first request that
//! arrives, waits for one of its `in_flight` slots, then sweeps up whatever else is
//! queued by then (at most `max_batch`) and runs the lot as one call. A lone request
//! therefore leaves at once; under load, requests pile up behind the calls in flight
//! and the next call carries them all, so the server sees fewer, larger calls exactly
//! when it is busiest.
//!
//! The task ends when every handle to the batcher is dropped and the queue is empty;
//! calls already running finish (each is bounded by its `run` function's timeout).

use super::StoreError;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

type Reply<Out> = oneshot::Sender<Result<Out, StoreError>>;

/// Queue slots per in-flight call: enough to fill the next batch while one runs.
const QUEUE_PER_CALL: usize = 2;

pub(crate) struct Batcher<In, Out> {
    queue: mpsc::Sender<(In, Reply<Out>)>,
}

impl<In, Out> Batcher<In, Out>
where
    In: Send + 'static,
    Out: Send + 'static,
{
    /// Starts the batcher's task. `run` gets a batch and must answer with one result
    /// per request, in the same order.
    pub(crate) fn spawn<F, Fut>(max_batch: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<In>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<Out, StoreError>>> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let in_flight = in_flight.max(1);
        let (queue, mut requests) =
            mpsc::channel::<(In, Reply<Out>)>(max_batch * in_flight * QUEUE_PER_CALL);
        let slots = Arc::new(Semaphore::new(in_flight));
        let run = Arc::new(run);
        tokio::spawn(async move {
            while let Some(first) = requests.recv().await {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match requests.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                let run = Arc::clone(&run);
                tokio::spawn(async move {
                    let (inputs, replies): (Vec<In>, Vec<_>) = batch.into_iter().unzip();
                    let count = inputs.len();
                    let mut results = run(inputs).await.into_iter();
                    for reply in replies {
                        let result = results.next().unwrap_or_else(|| {
                            Err(StoreError::Corrupt(format!(
                                "a batch of {count} requests got fewer results"
                            )))
                        });
                        // The caller may have given up waiting (its own timeout).
                        let _ = reply.send(result);
                    }
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// Queues `request` and waits for its result.
    pub(crate) async fn submit(&self, request: In) -> Result<Out, StoreError> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send((request, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        result
            .await
            .map_err(|_| StoreError::Unavailable("a batched call was abandoned".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn a_lone_request_leaves_at_once_and_gets_its_own_result() {
        let batcher = Batcher::spawn(8, 1, |inputs: Vec<u32>| async move {
            inputs.into_iter().map(|n| Ok(n * 2)).collect()
        });
        assert_eq!(batcher.submit(21).await.unwrap(), 42);
    }

    #[tokio::test]
    async fn requests_queued_behind_a_busy_call_travel_together() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (release, gate) = tokio::sync::watch::channel(false);
        let seen = Arc::clone(&sizes);
        let batcher = Arc::new(Batcher::spawn(100, 1, move |inputs: Vec<u32>| {
            let seen = Arc::clone(&seen);
            let mut gate = gate.clone();
            async move {
                seen.lock().unwrap().push(inputs.len());
                let _ = gate.wait_for(|open| *open).await;
                inputs.into_iter().map(Ok).collect()
            }
        }));
        let first = tokio::spawn({
            let batcher = Arc::clone(&batcher);
            async move { batcher.submit(0).await }
        });
        settle_until(|| sizes.lock().unwrap().len() == 1).await;
        let rest: Vec<_> = (1..=10)
            .map(|n| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { batcher.submit(n).await })
            })
            .collect();
        // The batcher holds request 1 while it waits for the busy slot; 2..=10 queue.
        let capacity = batcher.queue.max_capacity();
        settle_until(|| batcher.queue.capacity() == capacity - 9).await;
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 0);
        for (n, call) in (1..=10).zip(rest) {
            assert_eq!(call.await.unwrap().unwrap(), n);
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1, 10]);
    }

    /// Lets the other tasks run until `condition` holds (the runtime is single-threaded,
    /// so this needs no clock).
    async fn settle_until(condition: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if condition() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition never held");
    }

    #[tokio::test]
    async fn each_request_gets_its_own_error() {
        let batcher = Batcher::spawn(8, 2, |inputs: Vec<u32>| async move {
            inputs
                .into_iter()
                .map(|n| {
                    if n % 2 == 0 {
                        Ok(n)
                    } else {
                        Err(StoreError::VersionConflict {
                            expected: u64::from(n),
                        })
                    }
                })
                .collect()
        });
        assert_eq!(batcher.submit(2).await.unwrap(), 2);
        assert!(matches!(
            batcher.submit(3).await,
            Err(StoreError::VersionConflict { expected: 3 })
        ));
    }
}
